"""Checkpoint conversion with proven parity: official CLMR / PEMR PyTorch weights and musicnn.

``convert_checkpoint(source, format="auto", finetuner=None)`` reads a checkpoint without torch
and without running pickled code (:mod:`readers`), maps every tensor into the matching Keras
model, runs the float64 numpy forward pass of the original network (:mod:`numpy_reference`)
on the same audio and returns ``(model, metadata)``; the conversion is refused unless
``max|keras - reference| <= 1e-4 * max(1, max|reference|)`` with equal parameter counts, and
metadata holds the figures for ``metadata.json``. torch is not needed (the torch reference in
:mod:`torch_reference` is for the tests).
"""

from keras_clmr.conversion.common import (
    PARITY_TOLERANCE,
    ConversionError,
    ParityError,
    UnsafeCheckpointError,
)
from keras_clmr.conversion.readers import (
    DEFAULT_MAX_BYTES,
    CheckpointSizeError,
    NotACheckpointError,
    read_state_dict,
)

FORMATS = ("auto", "clmr-1.0", "clmr-2.0", "clmr-lightning", "clmr-finetuner", "pemr", "cpc")


def read_checkpoint(path, max_bytes=DEFAULT_MAX_BYTES):
    """Safely read a checkpoint without torch: ``(numpy state dict, info)`` (see ``readers``)."""
    return read_state_dict(path, max_bytes=max_bytes)


def detect_format(state):
    """The checkpoint family of a numpy state dict (see ``FORMATS``)."""
    from keras_clmr.conversion.clmr import detect_clmr_format
    from keras_clmr.conversion.cpc import detect_cpc_format
    from keras_clmr.conversion.pemr import detect_pemr_format

    fmt = detect_cpc_format(state) or detect_pemr_format(state) or detect_clmr_format(state)
    if fmt is None:
        sample = ", ".join(sorted(state)[:8])
        raise ConversionError(
            f"Cannot tell the checkpoint family from its keys ({sample}, ...): pass --format "
            f"(one of {', '.join(FORMATS[1:])})."
        )
    return fmt


def convert_checkpoint(
    source,
    format="auto",
    finetuner=None,
    sample_rate=None,
    parity=True,
    tags=None,
    max_bytes=DEFAULT_MAX_BYTES,
):
    """Convert a CLMR/PEMR checkpoint (and optional fine-tuner head) to a Keras model.

    Args:
        source: path to a ``.pt``/``.ckpt`` file or a release ``.zip``.
        format: one of ``FORMATS``; ``"auto"`` reads it from the keys.
        finetuner: optional head checkpoint (``0.weight [n, 512]``...) to attach; the result
            is then a ``MusicTagger``.
        sample_rate: override the sample rate stored in the config (default: from the strides).
        parity: run the numpy reference and fail unless the parity gate passes.
        tags: tag names of the fine-tuner's outputs (default: the MTAT 50 for 50 outputs).
        max_bytes: refuse checkpoints that unpack to more than this.

    Returns:
        ``(model, metadata)``.
    """
    from keras_clmr.conversion import clmr, pemr
    from keras_clmr.models import encoder_of, is_tagger

    if format not in FORMATS:
        raise ConversionError(f"Unknown --format {format!r}; choose one of {', '.join(FORMATS)}.")
    state, info = read_checkpoint(source, max_bytes=max_bytes)
    fmt = detect_format(state) if format == "auto" else format
    label = f"{info['file']} ({fmt})"
    if fmt == "clmr-finetuner":
        raise ConversionError(
            f"{info['file']} is a fine-tuner head only: convert the encoder checkpoint with "
            f"--source and pass this file as --finetuner."
        )
    if fmt == "cpc":  # the original's modules/cpc layout (no CPC checkpoint was released)
        from keras_clmr.conversion.cpc import convert_cpc_checkpoint

        if finetuner is not None:
            raise ConversionError("--finetuner applies to CLMR checkpoints, not to CPC.")
        model, metadata = convert_cpc_checkpoint(
            state, sample_rate=sample_rate, parity=parity, source=label
        )
        return model, {"converted_from": info, **metadata}
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
        head_state, head_info = read_checkpoint(finetuner, max_bytes=max_bytes)
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
    "DEFAULT_MAX_BYTES",
    "FORMATS",
    "CheckpointSizeError",
    "NotACheckpointError",
    "PARITY_TOLERANCE",
    "ConversionError",
    "ParityError",
    "UnsafeCheckpointError",
    "convert_checkpoint",
    "detect_format",
    "read_checkpoint",
]
