"""Checkpoint conversion with proven parity: official CLMR / PEMR PyTorch weights and musicnn.

``convert_checkpoint(source, format="auto", finetuner=None)`` reads a checkpoint safely
(``torch.load(weights_only=True)``), maps every tensor into the matching Keras model, runs
the PyTorch reference of the same network on the same inputs and returns
``(model, metadata)``; metadata holds the parity figures for ``metadata.json``.
torch is needed only here (an optional dependency).
"""

import os

from keras_clmr.conversion.common import (
    PARITY_TOLERANCE,
    ConversionError,
    ParityError,
    UnsafeCheckpointError,
    json_safe,
    load_torch_checkpoint,
    sha256_of,
    to_numpy_state_dict,
)

FORMATS = ("auto", "clmr-1.0", "clmr-2.0", "clmr-lightning", "clmr-finetuner", "pemr")


def read_checkpoint(path):
    """Safely read a checkpoint: ``(numpy state dict, info)``; info describes the file."""
    obj, member = load_torch_checkpoint(path)
    info = {"file": os.path.basename(os.fspath(path)), "sha256": sha256_of(path)}
    if member != info["file"]:
        info["member"] = member
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        info["container"] = "lightning"
        for key in ("pytorch-lightning_version", "epoch", "global_step"):
            if key in obj:
                info[key] = json_safe(obj[key])
        if "hyper_parameters" in obj:
            info["hyper_parameters"] = json_safe(obj["hyper_parameters"])
        state = obj["state_dict"]
    elif isinstance(obj, dict):
        info["container"] = "state_dict"
        state = obj
    else:
        raise ConversionError(
            f"{path}: expected a state dict or a Lightning checkpoint (a dict with 'state_dict'), "
            f"got a {type(obj).__name__}."
        )
    if state and all(str(k).startswith("module.") for k in state):
        # Saved from a DataParallel/DistributedDataParallel wrapper without unwrapping it.
        state = {str(k)[len("module.") :]: v for k, v in state.items()}
        info["stripped_prefix"] = "module."
    return to_numpy_state_dict(state), info


def detect_format(state):
    """The checkpoint family of a numpy state dict (see ``FORMATS``)."""
    from keras_clmr.conversion.clmr import detect_clmr_format
    from keras_clmr.conversion.pemr import detect_pemr_format

    fmt = detect_pemr_format(state) or detect_clmr_format(state)
    if fmt is None:
        sample = ", ".join(sorted(state)[:8])
        raise ConversionError(
            f"Cannot tell the checkpoint family from its keys ({sample}, ...): pass --format "
            f"(one of {', '.join(FORMATS[1:])})."
        )
    return fmt


def convert_checkpoint(
    source, format="auto", finetuner=None, sample_rate=None, parity=True, tags=None
):
    """Convert a CLMR/PEMR checkpoint (and optional fine-tuner head) to a Keras model.

    Args:
        source: path to a ``.pt``/``.ckpt`` file or a release ``.zip``.
        format: one of ``FORMATS``; ``"auto"`` reads it from the keys.
        finetuner: optional head checkpoint (``0.weight [n, 512]``...) to attach; the result
            is then a ``MusicTagger``.
        sample_rate: override the sample rate stored in the config (default: from the strides).
        parity: run the PyTorch reference and fail unless outputs agree within 1e-4.
        tags: tag names of the fine-tuner's outputs (default: the MTAT 50 for 50 outputs).

    Returns:
        ``(model, metadata)``.
    """
    from keras_clmr.conversion import clmr, pemr
    from keras_clmr.models import encoder_of, is_tagger

    if format not in FORMATS:
        raise ConversionError(f"Unknown --format {format!r}; choose one of {', '.join(FORMATS)}.")
    state, info = read_checkpoint(source)
    fmt = detect_format(state) if format == "auto" else format
    label = f"{info['file']} ({fmt})"
    if fmt == "clmr-finetuner":
        raise ConversionError(
            f"{info['file']} is a fine-tuner head only: convert the encoder checkpoint with "
            f"--source and pass this file as --finetuner."
        )
    if fmt == "pemr":
        model, metadata, reference = pemr.convert_pemr_with_reference(
            state, parity=parity, source=label
        )
    else:
        model, metadata, reference = clmr.convert_clmr_with_reference(
            state, fmt, sample_rate=sample_rate, parity=parity, source=label
        )
    metadata = {"converted_from": info, **metadata}
    if finetuner is not None:
        head_state, head_info = read_checkpoint(finetuner)
        if is_tagger(model):
            raise ConversionError(
                f"{info['file']} already carries a head (encoder.fc); --finetuner is not needed."
            )
        encoder = encoder_of(model)
        model, head_meta = clmr.attach_finetuner(
            encoder,
            head_state,
            parity=parity,
            tags=tags,
            source=f"{head_info['file']} (fine-tuner)",
            encoder_reference=reference,
        )
        metadata["finetuner"] = {"converted_from": head_info, **head_meta}
    return model, metadata


__all__ = [
    "FORMATS",
    "PARITY_TOLERANCE",
    "ConversionError",
    "ParityError",
    "UnsafeCheckpointError",
    "convert_checkpoint",
    "detect_format",
    "read_checkpoint",
]
