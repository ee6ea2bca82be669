"""Official CLMR PyTorch checkpoints -> Keras (SampleCNN encoder, SimCLR projector, heads).

Families of the official CLMR releases:

* ``clmr-1.0``: release 1.0 ``clmr_checkpoint_1550.pt``: ``encoder.convN.{0,1}.*`` (N = 1..11)
  and ``projector.{0,2}.weight``;
* ``clmr-2.0``: release 2.0 ``clmr_checkpoint_10000.pt`` (also inside its .zip):
  ``encoder.sequential.i.{0,1}.*`` and ``projector.{0,2}.weight``;
* ``clmr-lightning``: master's Lightning ``.ckpt``: ``state_dict`` with ``model.encoder.*``
  and ``model.projector.*`` (the duplicate ``encoder.*`` is checked and reported);
* ``clmr-finetuner``: linear-evaluation heads ``0.weight [n, 512]`` / ``0.bias`` (MLP adds
  ``2.*``), with an optional ``model.`` prefix (release 1.0-l and Lightning).

Every conversion is checked without torch: the float64 numpy forward pass of the original
network (:mod:`numpy_reference`, on the source weights under their original names) must
agree with the Keras model under ``numpy_reference.parity_check`` (relative to the output
scale, equal parameter counts). The torch reference (:mod:`torch_reference`) stays for tests.
"""

import numpy as np

from keras_clmr.conversion import numpy_reference
from keras_clmr.conversion.common import (
    ConversionError,
    KeyLedger,
    WeightSetter,
    keras_parameter_counts,
    summarize_ledger,
    to_numpy,
)
from keras_clmr.data.datasets import MTAT_TAGS

REFERENCE_NAME = "keras_clmr.conversion.numpy_reference (float64 numpy, no torch)"
BN_PARAMS = ("weight", "bias", "running_mean", "running_var")

ENCODER_LAYOUTS = {
    # format: (encoder key prefix, module layout, projector prefix)
    "clmr-1.0": ("encoder.", "conv", "projector."),
    "clmr-2.0": ("encoder.", "sequential", "projector."),
    "clmr-lightning": ("model.encoder.", "sequential", "model.projector."),
}


def block_prefix(prefix, layout, index):
    """State-dict prefix of SampleCNN block ``index`` (0..10) in a given layout."""
    if layout == "sequential":
        return f"{prefix}sequential.{index}"
    return f"{prefix}conv{index + 1}"


def detect_clmr_format(state):
    """The CLMR family of a (flattened) state dict, or None."""
    keys = set(state)
    if any(k.startswith("model.encoder.sequential.") for k in keys):
        return "clmr-lightning"
    if any(k.startswith("encoder.sequential.") for k in keys):
        return "clmr-2.0"
    if any(k.startswith("encoder.conv1.") for k in keys):
        return "clmr-1.0"
    stripped = {k[len("model.") :] if k.startswith("model.") else k for k in keys}
    if "0.weight" in stripped and all(k.split(".")[0] in ("0", "2") for k in stripped):
        return "clmr-finetuner"
    return None


def infer_sample_cnn_config(state, prefix, layout):
    """(strides, channels) of a SampleCNN from its tensor shapes (kernel size = stride)."""
    channels, strides = [], []
    for i in range(11):
        key = f"{block_prefix(prefix, layout, i)}.0.weight"
        if key not in state:
            raise ConversionError(f"Cannot read the SampleCNN architecture: missing key {key}.")
        weight = state[key]
        if weight.ndim != 3:
            raise ConversionError(
                f"{key}: expected a Conv1d weight [out, in, k], got shape {list(weight.shape)}."
            )
        channels.append(int(weight.shape[0]))
        if 1 <= i <= 9:
            strides.append(int(weight.shape[2]))
    return tuple(strides), tuple(channels)


def sample_rate_for_strides(strides, default=22050):
    from keras_clmr.models.sample_cnn import STRIDES_BY_SAMPLE_RATE

    for rate, known in STRIDES_BY_SAMPLE_RATE.items():
        if tuple(known) == tuple(strides):
            return rate
    return default


def _take_sample_cnn(ledger, setter, encoder, prefix, layout):
    """Map the 11 blocks; returns the torch-layout state dict of the encoder (for the reference)."""
    torch_state = {}
    for i in range(11):
        conv = encoder.get_layer(f"block_{i}_conv")
        bn = encoder.get_layer(f"block_{i}_bn")
        k, c_in, c_out = conv.kernel.shape
        src = block_prefix(prefix, layout, i)
        weight = ledger.take(f"{src}.0.weight", (c_out, c_in, k))
        bias = ledger.take(f"{src}.0.bias", (c_out,))
        bn_values = [ledger.take(f"{src}.1.{name}", (c_out,)) for name in BN_PARAMS]
        ledger.ignore(
            f"{src}.1.num_batches_tracked", "BatchNorm step counter (not used at inference)"
        )
        if weight is None or bias is None or any(v is None for v in bn_values):
            continue
        setter.conv1d(conv, weight, bias, f"{src}.0")
        setter.batchnorm(bn, *bn_values, key=f"{src}.1")
        torch_state[f"sequential.{i}.0.weight"] = weight
        torch_state[f"sequential.{i}.0.bias"] = bias
        for name, value in zip(BN_PARAMS, bn_values):
            torch_state[f"sequential.{i}.1.{name}"] = value
    return torch_state


def parity_audio(input_samples, batch=2, seed=0, sample_rate=22050):
    """Fixed music-like clips [batch, input_samples]: tones + noise, peak well inside [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(input_samples) / float(sample_rate)
    tones = sum(
        np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) for f in (110.0, 220.0, 330.0, 523.0)
    )
    audio = 0.1 * tones[None, :] + 0.1 * rng.standard_normal((batch, input_samples))
    return audio.astype(np.float32)


def parity_figures(report, reference, inputs, counts):
    """metadata.json's parity block from a ``numpy_reference.parity_check`` report."""
    outputs = report["outputs"]
    return {
        "reference": reference,
        "inputs": inputs,
        "rule": report["rule"],
        "tolerance": report["tolerance"],
        "max_abs_diff": {name: o["max_abs_diff"] for name, o in outputs.items()},
        "relative_diff": {name: o["relative_diff"] for name, o in outputs.items()},
        "output_scale": {name: o["reference_max_abs"] for name, o in outputs.items()},
        "parameter_counts": counts,
        "passed": report["passed"],
    }


def parameter_counts(keras_model, state):
    """(figures for metadata, Keras (params, BN stats), reference (params, BN stats))."""
    keras_params, keras_stats = keras_parameter_counts(keras_model)
    ref_params, ref_stats = numpy_reference.state_parameter_counts(state)
    figures = {
        "reference_parameters": ref_params,
        "reference_bn_statistics": ref_stats,
        "keras_parameters": keras_params,
        "keras_bn_statistics": keras_stats,
    }
    return figures, (keras_params, keras_stats), (ref_params, ref_stats)


def convert_clmr(state, fmt, sample_rate=None, parity=True, source="checkpoint", parity_batch=2):
    """Convert a CLMR encoder(+projector) state dict; ``(model, metadata)``."""
    model, metadata, _ = convert_clmr_with_reference(
        state, fmt, sample_rate, parity, source, parity_batch
    )
    return model, metadata


def convert_clmr_with_reference(
    state, fmt, sample_rate=None, parity=True, source="checkpoint", parity_batch=2
):
    """Convert a CLMR encoder(+projector) state dict (numpy) of family ``fmt``.

    Returns ``(model, metadata, reference)``: a ``keras_clmr.models.CLMR`` (encoder +
    projector) when the checkpoint has a projector, else the ``SampleCNN`` encoder; a supervised
    ``encoder.fc`` gives a ``MusicTagger``. ``reference`` is ``(encoder state, audio ->
    embedding)`` of the original network (float64 numpy), for checking a fine-tuner head.
    ``metadata`` holds the architecture read from the shapes, the key report and (``parity``)
    the measured figures.
    """
    from keras_clmr.models.clmr import CLMR
    from keras_clmr.models.sample_cnn import SampleCNN

    if fmt not in ENCODER_LAYOUTS:
        raise ConversionError(
            f"Unknown CLMR encoder format {fmt!r}; expected one of {sorted(ENCODER_LAYOUTS)}."
        )
    prefix, layout, proj_prefix = ENCODER_LAYOUTS[fmt]
    strides, channels = infer_sample_cnn_config(state, prefix, layout)
    rate = int(sample_rate or sample_rate_for_strides(strides))
    encoder = SampleCNN(strides=strides, channels=channels, sample_rate=rate, name="sample_cnn")
    if not encoder.built:
        encoder.build((None, encoder.input_samples))

    ledger = KeyLedger(state, source=source)
    if fmt == "clmr-lightning":
        # The Lightning module registers the encoder twice; keep model.encoder.* (as CLMR's
        # loader does) and check that the other copy is identical.
        for key in state:
            if key.startswith("encoder."):
                twin = "model." + key
                if twin in state and np.array_equal(state[twin], state[key]):
                    ledger.ignore(
                        key, "duplicate of model.encoder.* (same module registered twice)"
                    )

    has_projector = f"{proj_prefix}0.weight" in state
    has_fc = f"{prefix}fc.weight" in state
    embedding_dim = channels[-1]
    model = encoder
    projector = None
    head_state = None
    if has_projector:
        hidden = state[f"{proj_prefix}0.weight"].shape[0]
        if f"{proj_prefix}2.weight" not in state:
            raise ConversionError(
                f"{source}: {proj_prefix}0.weight present but missing key {proj_prefix}2.weight."
            )
        projection_dim = int(state[f"{proj_prefix}2.weight"].shape[0])
        model = CLMR(
            encoder=encoder, projection_dim=projection_dim, hidden_dim=int(hidden), name="clmr"
        )
        projector = model.projector
    elif has_fc:
        head_state = {
            "0.weight": ledger.take(f"{prefix}fc.weight"),
            "0.bias": ledger.take(f"{prefix}fc.bias"),
        }

    setter = WeightSetter(model if head_state is None else encoder)
    reference_state = _take_sample_cnn(ledger, setter, encoder, prefix, layout)
    if projector is not None:
        dense_0, dense_2 = projector.get_layer("dense_0"), projector.get_layer("dense_2")
        w0 = ledger.take(f"{proj_prefix}0.weight", (dense_0.units, embedding_dim))
        w2 = ledger.take(f"{proj_prefix}2.weight", (dense_2.units, dense_0.units))
        if w0 is not None and w2 is not None:
            setter.dense(dense_0, w0, None, f"{proj_prefix}0")
            setter.dense(dense_2, w2, None, f"{proj_prefix}2")
            reference_state["projector.0.weight"] = w0
            reference_state["projector.2.weight"] = w2
    report = ledger.finish()
    setter.finish()

    metadata = {
        "source_format": fmt,
        "architecture": {
            "family": "clmr",
            "backbone": "SampleCNN",
            "strides": list(strides),
            "channels": list(channels),
            "sample_rate": rate,
            "input_samples": encoder.input_samples,
            "embedding_dim": embedding_dim,
        },
        "keys": summarize_ledger(report),
    }
    if projector is not None:
        metadata["architecture"].update(
            projection_dim=model.projection_dim, projector_hidden_dim=model.hidden_dim
        )
    encoder_state = {k: v for k, v in reference_state.items() if k.startswith("sequential.")}

    def reference(audio):
        return numpy_reference.sample_cnn(encoder_state, audio)

    if head_state is not None:
        model, head_meta = attach_finetuner(
            encoder,
            head_state,
            parity=parity,
            source=source + " (encoder.fc)",
            encoder_reference=(encoder_state, reference),
            parity_batch=parity_batch,
        )
        metadata["finetuner"] = head_meta
        return model, metadata, (encoder_state, reference)

    if parity:
        metadata["parity"] = clmr_parity(
            model, reference_state, encoder, projector, batch=parity_batch
        )
    return model, metadata, (encoder_state, reference)


def clmr_parity(model, reference_state, encoder, projector, batch=2, seed=0):
    """Compare the Keras encoder (and projector) with the float64 numpy reference of the
    original network; raise ``ParityError`` unless ``numpy_reference.parity_check`` passes."""
    audio = parity_audio(encoder.input_samples, batch=batch, seed=seed)
    h_ref = numpy_reference.sample_cnn(reference_state, audio)
    h = to_numpy(encoder(audio, training=False))
    keras_out, reference_out = {"embedding": h}, {"embedding": h_ref}
    if projector is not None:
        keras_out["projection"] = to_numpy(projector(h, training=False))
        reference_out["projection"] = numpy_reference.projector(reference_state, h_ref)
    counts, keras_counts, reference_counts = parameter_counts(model, reference_state)
    report = numpy_reference.parity_check(
        keras_out, reference_out, keras_counts, reference_counts, what="CLMR conversion"
    )
    return parity_figures(
        report,
        REFERENCE_NAME,
        f"{batch} clips x {encoder.input_samples} samples (tones + noise, seed {seed})",
        counts,
    )


def finetuner_state(state, source="fine-tuner checkpoint"):
    """Normalise a fine-tuner state dict to ``0.*`` / ``2.*`` keys (strip ``model.``)."""
    out = {}
    for key, value in state.items():
        short = key[len("model.") :] if key.startswith("model.") else key
        if short in out:
            raise ConversionError(
                f"{source}: key {key!r} appears twice (with and without 'model.')."
            )
        out[short] = value
    return out


def attach_finetuner(
    encoder,
    head_state,
    parity=True,
    source="fine-tuner checkpoint",
    encoder_reference=None,
    tags=None,
    parity_batch=2,
):
    """A ``MusicTagger`` of ``encoder`` + the head in ``head_state`` (``0.*``, optional ``2.*``).

    The head's shapes decide linear vs MLP and the number of tags. With ``parity``,
    ``encoder_reference`` = ``(encoder state, audio -> float64 embedding)`` of the original
    encoder (from ``convert_*_with_reference``) feeds the numpy head, compared with the Keras
    tagger's logits (``numpy_reference.parity_check``).
    """
    from keras_clmr.models.tagger import MusicTagger

    state = finetuner_state(head_state, source)
    if "0.weight" not in state:
        raise ConversionError(
            f"{source}: missing key 0.weight (expected Sequential(Linear) weights)."
        )
    mlp = "2.weight" in state or "2.bias" in state
    w0 = state["0.weight"]
    if w0.ndim != 2:
        raise ConversionError(
            f"{source}: 0.weight should be a Linear weight [out, in], got {list(w0.shape)}."
        )
    embedding_dim = encoder.embedding_dim
    if w0.shape[1] != embedding_dim:
        raise ConversionError(
            f"{source}: mis-shaped key 0.weight {list(w0.shape)}: the head expects "
            f"{w0.shape[1]} input features but the encoder gives {embedding_dim}."
        )
    hidden = int(w0.shape[0]) if mlp else 512
    num_classes = (
        int(state["2.weight"].shape[0]) if mlp and "2.weight" in state else int(w0.shape[0])
    )
    if tags is None and num_classes == len(MTAT_TAGS):
        tags = list(MTAT_TAGS)
    tagger = MusicTagger(
        encoder,
        num_classes=num_classes,
        head="mlp" if mlp else "linear",
        tags=tags,
        hidden_dim=hidden,
        name="music_tagger",
    )
    tagger.build((None, encoder.input_samples))
    ledger = KeyLedger(state, source=source)
    setter = WeightSetter(tagger.head)
    logits_layer = tagger.head.get_layer("logits")
    if mlp:
        hidden_layer = tagger.head.get_layer("hidden")
        a = ledger.take("0.weight", (hidden, embedding_dim))
        b = ledger.take("0.bias", (hidden,))
        c = ledger.take("2.weight", (num_classes, hidden))
        d = ledger.take("2.bias", (num_classes,))
        report = ledger.finish()
        setter.dense(hidden_layer, a, b, "0")
        setter.dense(logits_layer, c, d, "2")
        head_weights = {"0.weight": a, "0.bias": b, "2.weight": c, "2.bias": d}
    else:
        a = ledger.take("0.weight", (num_classes, embedding_dim))
        b = ledger.take("0.bias", (num_classes,))
        report = ledger.finish()
        setter.dense(logits_layer, a, b, "0")
        head_weights = {"0.weight": a, "0.bias": b}
    setter.finish()
    meta = {
        "head": "mlp" if mlp else "linear",
        "num_classes": num_classes,
        "hidden_dim": hidden if mlp else None,
        "tags": "MagnaTagATune 50 (musicnn-training order)" if tags == list(MTAT_TAGS) else tags,
        "keys": summarize_ledger(report),
    }
    if parity:
        if encoder_reference is None:
            raise ConversionError("Fine-tuner parity needs the encoder's reference.")
        encoder_state, reference_embed = encoder_reference
        audio = parity_audio(encoder.input_samples, batch=parity_batch)
        reference_logits = numpy_reference.head(head_weights, reference_embed(audio))
        logits = to_numpy(tagger.logits(audio, training=False))
        full_state = {**encoder_state, **{f"head.{k}": v for k, v in head_weights.items()}}
        counts, keras_counts, reference_counts = parameter_counts(tagger, full_state)
        report = numpy_reference.parity_check(
            {"logits": logits},
            {"logits": reference_logits},
            keras_counts,
            reference_counts,
            what="CLMR fine-tuner conversion",
        )
        meta["parity"] = parity_figures(
            report,
            REFERENCE_NAME,
            f"{parity_batch} clips x {encoder.input_samples} samples (tones + noise, seed 0)",
            counts,
        )
    return tagger, meta
