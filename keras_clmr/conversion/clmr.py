"""Official CLMR PyTorch checkpoints -> Keras (SampleCNN encoder, SimCLR projector, fine-tuner heads).

Families (clmr_reference.md §1, §5):

* ``clmr-1.0``: release 1.0 ``clmr_checkpoint_1550.pt``: ``encoder.convN.{0,1}.*`` (N = 1..11)
  and ``projector.{0,2}.weight``;
* ``clmr-2.0``: release 2.0 ``clmr_checkpoint_10000.pt`` (also inside its .zip):
  ``encoder.sequential.i.{0,1}.*`` and ``projector.{0,2}.weight``;
* ``clmr-lightning``: master's Lightning ``.ckpt``: ``state_dict`` with ``model.encoder.*``
  and ``model.projector.*`` (the duplicate ``encoder.*`` is checked and reported);
* ``clmr-finetuner``: linear-evaluation heads ``0.weight [n, 512]`` / ``0.bias`` (MLP adds
  ``2.*``), with an optional ``model.`` prefix (release 1.0-l and Lightning).

Each conversion builds the same network in PyTorch (:mod:`torch_reference`), loads the
source weights into it strictly, and compares outputs with the Keras model.
"""

import numpy as np

from keras_clmr.conversion import torch_reference
from keras_clmr.conversion.common import (
    PARITY_TOLERANCE, ConversionError, KeyLedger, WeightSetter, check_parity, compare_parameter_counts,
    max_abs_diff, require_torch, summarize_ledger, to_numpy)
from keras_clmr.data.datasets import MTAT_TAGS

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
    stripped = {k[len("model."):] if k.startswith("model.") else k for k in keys}
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
            raise ConversionError(f"{key}: expected a Conv1d weight [out, in, k], got shape {list(weight.shape)}.")
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
        ledger.ignore(f"{src}.1.num_batches_tracked", "BatchNorm step counter (not used at inference)")
        if weight is None or bias is None or any(v is None for v in bn_values):
            continue
        setter.conv1d(conv, weight, bias, f"{src}.0")
        setter.batchnorm(bn, *bn_values, key=f"{src}.1")
        torch_state[f"sequential.{i}.0.weight"] = weight
        torch_state[f"sequential.{i}.0.bias"] = bias
        for name, value in zip(BN_PARAMS, bn_values):
            torch_state[f"sequential.{i}.1.{name}"] = value
    return torch_state


def _load_into(module, numpy_state):
    torch = require_torch()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in numpy_state.items()}
    result = module.load_state_dict(state, strict=False)
    # BN step counters are the only keys allowed to be absent from our numpy state.
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ConversionError(f"Reference load failed: missing {missing}, unexpected {result.unexpected_keys}")
    return module


def _parity_audio(input_samples, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    # Music-like amplitudes: a mix of tones and noise, peak well inside [-1, 1].
    t = np.arange(input_samples) / 22050.0
    tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) for f in (110.0, 220.0, 330.0, 523.0))
    audio = 0.1 * tones[None, :] + 0.1 * rng.standard_normal((batch, input_samples))
    return audio.astype(np.float32)


def convert_clmr(state, fmt, sample_rate=None, parity=True, source="checkpoint", parity_batch=2):
    """Convert a CLMR encoder(+projector) state dict; ``(model, metadata)`` (see ``convert_clmr_with_reference``)."""
    model, metadata, _ = convert_clmr_with_reference(state, fmt, sample_rate, parity, source, parity_batch)
    return model, metadata


def convert_clmr_with_reference(state, fmt, sample_rate=None, parity=True, source="checkpoint", parity_batch=2):
    """Convert a CLMR encoder(+projector) state dict (numpy) of family ``fmt``.

    Returns ``(model, metadata, torch_reference)``: a ``keras_clmr.models.CLMR`` (encoder + projector) when
    the checkpoint has a projector, else the ``SampleCNN`` encoder; a supervised ``encoder.fc``
    gives a ``MusicTagger``. ``metadata`` holds the architecture read from the shapes, the
    key report and (``parity=True``) the measured parity figures.
    """
    from keras_clmr.models.clmr import CLMR
    from keras_clmr.models.sample_cnn import SampleCNN

    if fmt not in ENCODER_LAYOUTS:
        raise ConversionError(f"Unknown CLMR encoder format {fmt!r}; expected one of {sorted(ENCODER_LAYOUTS)}.")
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
                    ledger.ignore(key, "duplicate of model.encoder.* (same module registered twice)")

    has_projector = f"{proj_prefix}0.weight" in state
    has_fc = f"{prefix}fc.weight" in state
    embedding_dim = channels[-1]
    model = encoder
    projector = None
    head_state = None
    if has_projector:
        hidden, n_in = state[f"{proj_prefix}0.weight"].shape
        if f"{proj_prefix}2.weight" not in state:
            raise ConversionError(f"{source}: {proj_prefix}0.weight present but missing key {proj_prefix}2.weight.")
        projection_dim = int(state[f"{proj_prefix}2.weight"].shape[0])
        model = CLMR(encoder=encoder, projection_dim=projection_dim, hidden_dim=int(hidden), name="clmr")
        projector = model.projector
    elif has_fc:
        head_state = {"0.weight": ledger.take(f"{prefix}fc.weight"), "0.bias": ledger.take(f"{prefix}fc.bias")}

    setter = WeightSetter(model if head_state is None else encoder)
    torch_state = _take_sample_cnn(ledger, setter, encoder, prefix, layout)
    if projector is not None:
        w0 = ledger.take(f"{proj_prefix}0.weight", (projector.get_layer("dense_0").units, embedding_dim))
        w2 = ledger.take(f"{proj_prefix}2.weight", (projector.get_layer("dense_2").units,
                                                      projector.get_layer("dense_0").units))
        if w0 is not None and w2 is not None:
            setter.dense(projector.get_layer("dense_0"), w0, None, f"{proj_prefix}0")
            setter.dense(projector.get_layer("dense_2"), w2, None, f"{proj_prefix}2")
    report = ledger.finish()
    setter.finish()

    metadata = {
        "source_format": fmt,
        "architecture": {"family": "clmr", "backbone": "SampleCNN", "strides": list(strides),
                         "channels": list(channels), "sample_rate": rate,
                         "input_samples": encoder.input_samples, "embedding_dim": embedding_dim},
        "keys": summarize_ledger(report),
    }
    if projector is not None:
        metadata["architecture"].update(projection_dim=model.projection_dim, projector_hidden_dim=model.hidden_dim)

    reference = torch_reference.sample_cnn(strides, channels, layout="sequential")
    _load_into(reference, torch_state)
    if projector is not None:
        reference = torch_reference.simclr(reference, embedding_dim, model.projection_dim, model.hidden_dim)
        _load_into(reference.projector, {"0.weight": w0, "2.weight": w2})

    if head_state is not None:
        model, head_meta = attach_finetuner(encoder, head_state, parity=parity, source=source + " (encoder.fc)",
                                            encoder_reference=reference, parity_batch=parity_batch)
        metadata["finetuner"] = head_meta
        return model, metadata, reference

    if parity:
        metadata["parity"] = clmr_parity(model, reference, encoder, projector, batch=parity_batch)
    return model, metadata, reference


def clmr_parity(model, reference, encoder, projector, batch=2, seed=0):
    """Compare the Keras encoder (and projector) with the PyTorch reference; raise on mismatch."""
    audio = _parity_audio(encoder.input_samples, batch=batch, seed=seed)
    outputs = torch_reference.run(reference, audio[:, None, :])
    h_ref, z_ref = outputs if isinstance(outputs, tuple) else (outputs, None)
    h = to_numpy(encoder(audio, training=False))
    diffs = {"embedding": max_abs_diff(h, h_ref)}
    if projector is not None:
        z = to_numpy(projector(h, training=False))
        diffs["projection"] = max_abs_diff(z, z_ref)
    counts = compare_parameter_counts(model, reference, "CLMR")
    counts["encoder"] = compare_parameter_counts(encoder, getattr(reference, "encoder", reference), "SampleCNN")
    check_parity(diffs, what="CLMR conversion")
    torch = require_torch()
    return {"reference": f"keras_clmr.conversion.torch_reference (PyTorch {torch.__version__})",
            "inputs": f"{batch} clips x {encoder.input_samples} samples (tones + noise, seed {seed})",
            "max_abs_diff": diffs, "tolerance": PARITY_TOLERANCE,
            "output_scale": {"embedding_max_abs": float(np.max(np.abs(h_ref)))},
            "parameter_counts": counts, "passed": True}


def finetuner_state(state, source="fine-tuner checkpoint"):
    """Normalise a fine-tuner state dict to ``0.*`` / ``2.*`` keys (strip ``model.``)."""
    out = {}
    for key, value in state.items():
        short = key[len("model."):] if key.startswith("model.") else key
        if short in out:
            raise ConversionError(f"{source}: key {key!r} appears twice (with and without 'model.').")
        out[short] = value
    return out


def attach_finetuner(encoder, head_state, parity=True, source="fine-tuner checkpoint", encoder_reference=None,
                     tags=None, parity_batch=2):
    """A ``MusicTagger`` of ``encoder`` + the head in ``head_state`` (``0.*``, optional ``2.*``).

    The head's shapes decide linear vs MLP and the number of tags. With ``parity``, the
    PyTorch head on ``encoder_reference`` (a torch module on [B, 1, T] audio, or a
    ``(module, audio -> embedding)`` pair) is compared with the Keras tagger's logits.
    """
    from keras_clmr.models.tagger import MusicTagger

    state = finetuner_state(head_state, source)
    if "0.weight" not in state:
        raise ConversionError(f"{source}: missing key 0.weight (expected Sequential(Linear) weights).")
    mlp = "2.weight" in state or "2.bias" in state
    w0 = state["0.weight"]
    if w0.ndim != 2:
        raise ConversionError(f"{source}: 0.weight should be a Linear weight [out, in], got {list(w0.shape)}.")
    embedding_dim = encoder.embedding_dim
    if w0.shape[1] != embedding_dim:
        raise ConversionError(f"{source}: mis-shaped key 0.weight {list(w0.shape)}: the head expects "
                              f"{w0.shape[1]} input features but the encoder gives {embedding_dim}.")
    hidden = int(w0.shape[0]) if mlp else 512
    num_classes = int(state["2.weight"].shape[0]) if mlp and "2.weight" in state else int(w0.shape[0])
    if tags is None and num_classes == len(MTAT_TAGS):
        tags = list(MTAT_TAGS)
    tagger = MusicTagger(encoder, num_classes=num_classes, head="mlp" if mlp else "linear", tags=tags,
                         hidden_dim=hidden, name="music_tagger")
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
        torch_state = {"0.weight": a, "0.bias": b, "2.weight": c, "2.bias": d}
    else:
        a = ledger.take("0.weight", (num_classes, embedding_dim))
        b = ledger.take("0.bias", (num_classes,))
        report = ledger.finish()
        setter.dense(logits_layer, a, b, "0")
        torch_state = {"0.weight": a, "0.bias": b}
    setter.finish()
    meta = {"head": "mlp" if mlp else "linear", "num_classes": num_classes, "hidden_dim": hidden if mlp else None,
            "tags": "MagnaTagATune 50 (musicnn-training order)" if tags == list(MTAT_TAGS) else tags,
            "keys": summarize_ledger(report)}
    if parity:
        if encoder_reference is None:
            raise ConversionError("Fine-tuner parity needs the PyTorch encoder reference.")
        if isinstance(encoder_reference, tuple):  # (torch encoder, audio -> torch embedding), e.g. PEMR
            torch_encoder, reference_embed = encoder_reference
        else:
            torch_encoder = getattr(encoder_reference, "encoder", encoder_reference)

            def reference_embed(batch):
                return torch_reference.run(torch_encoder, batch[:, None, :])
        head = _load_into(torch_reference.linear_head(embedding_dim, num_classes, mlp=mlp, hidden=hidden), torch_state)
        audio = _parity_audio(encoder.input_samples, batch=parity_batch)
        ref_logits = torch_reference.run(head, reference_embed(audio))
        logits = to_numpy(tagger.logits(audio, training=False))
        diffs = {"logits": max_abs_diff(logits, ref_logits)}
        torch = require_torch()
        full_ref = torch.nn.Sequential(torch_encoder, head)
        counts = compare_parameter_counts(tagger, full_ref, "CLMR tagger")
        check_parity(diffs, what="CLMR fine-tuner conversion")
        meta["parity"] = {"reference": f"keras_clmr.conversion.torch_reference (PyTorch {torch.__version__})",
                          "inputs": f"{parity_batch} clips x {encoder.input_samples} samples",
                          "max_abs_diff": diffs, "tolerance": PARITY_TOLERANCE,
                          "parameter_counts": counts, "passed": True}
    return tagger, meta
