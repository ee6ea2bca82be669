"""PEMR PyTorch Lightning checkpoints -> Keras (spectrogram BN + FCN encoder; projector checked).

PEMR's ``ContrastiveLearning`` registers its ``Architecture`` both as
``encoder`` and inside ``model`` (the ``Framework``), so a checkpoint holds
``model.encoder.{spec_bn, layer1..4.{conv, bn}}.*`` (and the same under ``encoder.``),
``model.projector.{0,2}.weight``, the training-only mask-generation / predicting module
(``*.unitedmodule.*``: transformer, CLS/MASK embeddings, prediction head) and the loss's
BatchNorm (``criterion_B.bn.*``).

The Keras result is the ``FCN`` encoder (the inference artefact). The projector is
converted too and checked for parity, but not stored; the training-only parts are reported.
Parity, without torch: the float64 numpy FCN of :mod:`numpy_reference` on the same log-mel as
the Keras encoder, and end to end from audio with its float64 torchaudio-exact
``MelSpectrogram`` + ``AmplitudeToDB`` (the frontend PEMR trains with), under
``numpy_reference.parity_check``. ``torch_logmel`` (torch) stays for the tests.
"""

import numpy as np

from keras_clmr.conversion import numpy_reference
from keras_clmr.conversion.common import (
    ConversionError,
    KeyLedger,
    WeightSetter,
    require_torch,
    summarize_ledger,
    to_numpy,
)

BN_PARAMS = ("weight", "bias", "running_mean", "running_var")
DEFAULT_POOLS = ((2, 4), (2, 4), (2, 4), (4, 5))


def detect_pemr_format(state):
    """'pemr' when the keys are PEMR's (``*spec_bn.*`` / ``*layerN.conv.*``), else None."""
    if any(k.endswith("spec_bn.weight") for k in state):
        return "pemr"
    return None


def _prefix(state):
    for prefix in ("model.encoder.", "encoder.", ""):
        if f"{prefix}spec_bn.weight" in state:
            return prefix
    raise ConversionError(
        "Not a PEMR checkpoint: no spec_bn.weight under model.encoder., encoder. or the root."
    )


def torch_logmel(audio, n_fft=256, hop_length=128, n_mels=128, sample_rate=16000):
    """torchaudio ``MelSpectrogram(n_fft, hop, n_mels)`` + ``AmplitudeToDB()`` in plain torch.

    torchaudio's defaults: periodic Hann window, center=True with reflect padding, power 2,
    HTK mel scale without normalisation, f_max = sample_rate // 2; dB = 10 log10(max(x, 1e-10)).
    Returns numpy [B, n_mels, frames].
    """
    torch = require_torch()
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    spec = torch.stft(
        x,
        n_fft,
        hop_length=hop_length,
        win_length=n_fft,
        window=torch.hann_window(n_fft),
        center=True,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    power = spec.abs() ** 2  # [B, freqs, frames]
    n_freqs = n_fft // 2 + 1
    hz_to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    mel_to_hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_pts = torch.linspace(hz_to_mel(0.0), hz_to_mel(float(sample_rate // 2)), n_mels + 2)
    f_pts = mel_to_hz(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    fb = torch.clamp(
        torch.minimum(-slopes[:, :-2] / f_diff[:-1], slopes[:, 2:] / f_diff[1:]), min=0.0
    )
    mel = torch.matmul(power.transpose(-1, -2), fb).transpose(-1, -2)
    return (10.0 * torch.log10(torch.clamp(mel, min=1e-10))).numpy()


def convert_pemr(state, parity=True, source="checkpoint"):
    """Convert a PEMR state dict (numpy); ``(FCN encoder, metadata)``."""
    model, metadata, _ = convert_pemr_with_reference(state, parity=parity, source=source)
    return model, metadata


def convert_pemr_with_reference(state, parity=True, source="checkpoint", parity_batch=2):
    """Convert a PEMR state dict; ``(FCN, metadata, reference)`` where ``reference`` is an
    ``(FCN state, audio -> float64 embedding)`` pair for checking a fine-tuner head."""
    from keras_clmr.models.clmr import build_projector
    from keras_clmr.models.fcn import FCN

    prefix = _prefix(state)
    channels = []
    i = 1
    while f"{prefix}layer{i}.conv.weight" in state:
        weight = state[f"{prefix}layer{i}.conv.weight"]
        if weight.ndim != 4:
            raise ConversionError(
                f"{prefix}layer{i}.conv.weight: expected a Conv2d weight [out, in, 3, 3], "
                f"got {list(weight.shape)}."
            )
        channels.append(int(weight.shape[0]))
        i += 1
    if len(channels) != len(DEFAULT_POOLS):
        raise ConversionError(
            f"{source}: expected {len(DEFAULT_POOLS)} conv blocks layer1..layer4, found "
            f"{len(channels)} (missing key {prefix}layer{len(channels) + 1}.conv.weight?)."
        )
    encoder = FCN(channels=channels, pools=DEFAULT_POOLS, name="fcn")
    if not encoder.built:
        encoder.build((None, encoder.input_samples))

    ledger = KeyLedger(state, source=source)
    for key in state:
        if prefix == "model.encoder." and key.startswith("encoder."):
            twin = "model." + key
            if twin in state and np.array_equal(state[twin], state[key]):
                ledger.ignore(key, "duplicate of model.encoder.* (same module registered twice)")
        if ".unitedmodule." in key or key.startswith("unitedmodule."):
            ledger.ignore(
                key,
                "training-only mask generation / predicting module (transformer, CLS/MASK, "
                "prediction head); not part of the inference encoder",
            )
        if key.startswith("criterion_B."):
            ledger.ignore(key, "training-only BatchNorm of the Barlow-Twins-style loss")
        if key.endswith("num_batches_tracked"):
            ledger.ignore(key, "BatchNorm step counter (not used at inference)")

    setter = WeightSetter(encoder)
    reference_state = {}
    bn_values = [ledger.take(f"{prefix}spec_bn.{name}", (1,)) for name in BN_PARAMS]
    if all(v is not None for v in bn_values):
        setter.batchnorm(encoder.get_layer("spec_bn"), *bn_values, key=f"{prefix}spec_bn")
        reference_state.update({f"spec_bn.{n}": v for n, v in zip(BN_PARAMS, bn_values)})
    c_in = 1
    for i, c_out in enumerate(channels, start=1):
        src = f"{prefix}layer{i}"
        weight = ledger.take(f"{src}.conv.weight", (c_out, c_in, 3, 3))
        bias = ledger.take(f"{src}.conv.bias", (c_out,))
        values = [ledger.take(f"{src}.bn.{name}", (c_out,)) for name in BN_PARAMS]
        c_in = c_out
        if weight is None or bias is None or any(v is None for v in values):
            continue
        setter.conv2d(encoder.get_layer(f"layer{i}_conv"), weight, bias, f"{src}.conv")
        setter.batchnorm(encoder.get_layer(f"layer{i}_bn"), *values, key=f"{src}.bn")
        reference_state[f"layer{i}.conv.weight"] = weight
        reference_state[f"layer{i}.conv.bias"] = bias
        reference_state.update({f"layer{i}.bn.{n}": v for n, v in zip(BN_PARAMS, values)})

    projector = projector_state = None
    proj_prefix = "model.projector." if "model.projector.0.weight" in state else "projector."
    if f"{proj_prefix}0.weight" in state:
        hidden = int(state[f"{proj_prefix}0.weight"].shape[0])
        if f"{proj_prefix}2.weight" not in state:
            raise ConversionError(f"{source}: missing key {proj_prefix}2.weight.")
        projection_dim = int(state[f"{proj_prefix}2.weight"].shape[0])
        projector = build_projector(encoder.embedding_dim, hidden, projection_dim)
        w0 = ledger.take(f"{proj_prefix}0.weight", (hidden, encoder.embedding_dim))
        w2 = ledger.take(f"{proj_prefix}2.weight", (projection_dim, hidden))
        projector_setter = WeightSetter(projector)
        projector_state = {"projector.0.weight": w0, "projector.2.weight": w2}
        if w0 is not None and w2 is not None:
            projector_setter.dense(projector.get_layer("dense_0"), w0, None, f"{proj_prefix}0")
            projector_setter.dense(projector.get_layer("dense_2"), w2, None, f"{proj_prefix}2")
    report = ledger.finish()
    setter.finish()
    if projector is not None:
        projector_setter.finish()

    metadata = {
        "source_format": "pemr",
        "architecture": {
            "family": "pemr",
            "backbone": "FCN",
            "channels": channels,
            "pools": [list(p) for p in DEFAULT_POOLS],
            "sample_rate": encoder.sample_rate,
            "input_samples": encoder.input_samples,
            "embedding_dim": encoder.embedding_dim,
            "logmel": {"n_fft": 256, "hop_length": 128, "n_mels": 128, "mel_sample_rate": 16000},
        },
        "keys": summarize_ledger(report),
        "stored": "FCN encoder (spec_bn + 4 conv blocks); the projector is converted and "
        "checked, not stored",
    }
    if projector is not None:
        metadata["architecture"].update(projection_dim=projection_dim, projector_hidden_dim=hidden)

    fcn_state = dict(reference_state)

    def reference_embed(audio):
        return numpy_reference.pemr_embed(fcn_state, audio, prefix="")

    if parity:
        metadata["parity"] = _parity(
            encoder,
            projector,
            fcn_state,
            reference_embed,
            projector_state,
            batch=parity_batch,
        )
    return encoder, metadata, (fcn_state, reference_embed)


def _parity(encoder, projector, fcn_state, reference_embed, projector_state, batch=2, seed=0):
    """The Keras FCN (on its own log-mel, and end to end from audio) and projector against the
    float64 numpy reference of PEMR's network; ``ParityError`` unless the gate passes."""
    from keras_clmr.conversion.clmr import parameter_counts, parity_audio, parity_figures

    audio = parity_audio(
        encoder.input_samples, batch=batch, seed=seed, sample_rate=encoder.sample_rate
    )
    spectrogram = to_numpy(encoder.spectrogram(audio))
    h = to_numpy(encoder.embed_spectrogram(spectrogram, training=False))
    h_ref = numpy_reference.fcn(fcn_state, spectrogram)
    keras_out = {"embedding": h, "embedding_end_to_end": to_numpy(encoder(audio, training=False))}
    reference_out = {"embedding": h_ref, "embedding_end_to_end": reference_embed(audio)}
    counts, keras_counts, reference_counts = parameter_counts(encoder, fcn_state)
    if projector is not None:
        keras_out["projection"] = to_numpy(projector(h))
        reference_out["projection"] = numpy_reference.projector(projector_state, h_ref)
        projector_counts = parameter_counts(projector, projector_state)
        counts["projector"] = projector_counts[0]
        keras_counts = (keras_counts, projector_counts[1])
        reference_counts = (reference_counts, projector_counts[2])
        keras_counts = tuple(x for pair in keras_counts for x in pair)
        reference_counts = tuple(x for pair in reference_counts for x in pair)
    report = numpy_reference.parity_check(
        keras_out, reference_out, keras_counts, reference_counts, what="PEMR conversion"
    )
    return parity_figures(
        report,
        "keras_clmr.conversion.numpy_reference FCN (float64 numpy, no torch); end to end with "
        "its float64 torchaudio-exact MelSpectrogram + AmplitudeToDB",
        f"{batch} clips x {encoder.input_samples} samples (tones + noise, seed {seed}); "
        "'embedding' feeds the Keras log-mel to both",
        counts,
    )
