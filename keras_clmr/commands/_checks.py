"""Argument checks at the edge: one table of flag rules shared by every absl command, the
argparse types of ``embed``/``tag``, and the one-line description of errors a user can cause.

``register(flag_values, command)`` attaches a validator to each flag of the table that the
command defines, so a bad value fails while the flags are parsed, with a message that names the
value and the valid range. Nothing here imports Keras or TensorFlow.
"""

import argparse
import errno
import math
import os

MAX_BATCH_SIZE = 65536
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384000
DISK_FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class CheckError(ValueError):
    """A value outside its valid range; the message names the value and the range."""


# ----------------------------------------------------------------------------- value checks


def integer(value, name, low=None, high=None):
    """``value`` as an int within [low, high]; CheckError naming ``name``, value and range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise CheckError(f"{name}={value!r} is not an integer.")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise CheckError(f"{name}={value} is out of range: {_range_text(low, high)}.")
    return value


def real(value, name, low=None, high=None, low_open=False, high_open=False):
    """``value`` as a finite float within its range (open or closed ends)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise CheckError(f"{name}={value!r} is not a number.") from None
    if not math.isfinite(value):
        raise CheckError(
            f"{name}={value} is not finite: {_range_text(low, high, low_open, high_open)}."
        )
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise CheckError(
            f"{name}={value:g} is out of range: {_range_text(low, high, low_open, high_open)}."
        )
    return value


def sample_rate(value, name="sample_rate"):
    """An audio rate in 1000..384000 Hz (below and above that is not music audio)."""
    return integer(value, name, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)


def writable_folder(path, name="output"):
    """``path`` can be created or written: its nearest existing ancestor is a writable folder.

    Remote paths (``gs://``, ``hf://``...) are left to their writer.
    """
    if path is None or "://" in str(path):
        return path
    if not str(path).strip():
        raise CheckError(f"{name} is empty: give a folder to write to.")
    probe = os.path.abspath(os.path.expanduser(str(path)))
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise CheckError(f"{name}={path} cannot be created: {probe} is a file, not a folder.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CheckError(
            f"{name}={path} is not writable (no write permission on {probe}): choose another "
            "folder."
        )
    return path


def _range_text(low, high, low_open=False, high_open=False):
    def text(number):
        return str(int(number)) if float(number).is_integer() else f"{number:g}"

    if low is not None and high is not None:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        return f"must be in {left}{text(low)}, {text(high)}{right}"
    if low is not None:
        return f"must be {'>' if low_open else '>='} {text(low)}"
    if high is not None:
        return f"must be {'<' if high_open else '<='} {text(high)}"
    return "must be finite"


# ----------------------------------------------------------------------------- absl flag rules


def _optional(check):
    return lambda value, name: None if value is None else check(value, name)


def _int(low=None, high=None):
    return _optional(lambda v, n: integer(v, n, low, high))


def _real(low=None, high=None, low_open=False, high_open=False):
    return _optional(lambda v, n: real(v, n, low, high, low_open, high_open))


def _int_list(count=None):
    def check(values, name):
        if values is None:
            return None
        numbers = []
        for item in values:
            try:
                numbers.append(int(str(item).strip()))
            except ValueError:
                raise CheckError(
                    f"{name}: {item!r} is not an integer ({','.join(values)})."
                ) from None
        if any(n < 1 for n in numbers):
            raise CheckError(f"{name}={','.join(values)}: every entry must be >= 1.")
        if count is not None and len(numbers) != count:
            raise CheckError(
                f"{name}={','.join(values)} has {len(numbers)} entries, needs {count}."
            )
        return numbers

    return check


def _folder(value, name):
    return None if value is None else writable_folder(value, name)


def _rate(value, name):
    return None if value is None else sample_rate(value, name)


# Rules by flag name for every command; COMMAND_RULES refines them per command.
RULES = {
    "batch_size": _int(1, MAX_BATCH_SIZE),
    "epochs": _int(1, 1_000_000),
    "steps_per_epoch": _int(1),
    "learning_rate": _real(0, low_open=True),
    "weight_decay": _real(0),
    "momentum": _real(0, 1, high_open=True),
    "dropout": _real(0, 1, high_open=True),
    "temperature": _real(0, low_open=True),
    "projection_dim": _int(1, 1 << 16),
    "sample_rate": _rate,
    "mel_sample_rate": _rate,
    "channels": _int_list(),
    "strides": _int_list(),
    "segment_samples": _int(1),
    "keep_checkpoints": _int(1),
    "checkpoint_every_steps": _int(0),
    "demo_clips": _int(2, 100_000),
    "demo_seconds": _real(0, 3600, low_open=True),
    "mask_ratio": _real(0, 1, high_open=True),
    "pred_weight": _real(0),
    "neg_weight": _real(0),
    "offdiag_weight": _real(0),
    "transformer_layers": _int(1, 64),
    "transformer_heads": _int(1, 64),
    "warmup_epochs": _int(0),
    "logical_cpus": _int(0, 1024),
    "label_fraction": _real(0, 1, low_open=True),
    "patience": _int(0),
    "crops_per_clip": _int(1, 1024),
    "verbose": _int(0, 2),
    "workers": _int(1, 4096),
    "shard_mb": _int(1, 1 << 20),
    "clips_per_shard": _int(1),
    "opset": _int(7, 30),
    "atol": _real(0, low_open=True),
    "attempts": _int(1, 100),
    "output_dir": _folder,
    "output": _folder,
}
_SAMPLE_CNN = {"channels": _int_list(11), "strides": _int_list(9)}  # stem, 9 blocks, final
COMMAND_RULES = {"evaluate": _SAMPLE_CNN, "supervised": _SAMPLE_CNN, "cover": _SAMPLE_CNN}


def rules_for(command):
    return {**RULES, **COMMAND_RULES.get(command, {})}


def register(flag_values, command):
    """Attach the table's validators to the flags ``command`` defined on ``flag_values``."""
    from absl import flags

    for name, check in rules_for(command).items():
        if name not in flag_values:
            continue

        def checker(value, name=name, check=check):
            try:
                check(value, f"--{name}")
            except CheckError as error:
                raise flags.ValidationError(str(error)) from None
            return True

        flags.register_validator(name, checker, flag_values=flag_values)


# ----------------------------------------------------------------------------- argparse types


def argparse_type(check):
    """An argparse ``type=`` from a check: the message names the value and the range."""

    def parse(text):
        try:
            return check(text)
        except CheckError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _number(text, convert):
    try:
        return convert(text)
    except ValueError:
        raise CheckError(f"{text!r} is not a number.") from None


hop_seconds = argparse_type(
    lambda text: real(_number(text, float), "--hop", 0, 3600, low_open=True)
)
batch_size = argparse_type(
    lambda text: integer(_number(text, float), "--batch-size", 1, MAX_BATCH_SIZE)
)
top_k = argparse_type(lambda text: integer(_number(text, float), "--top-k", 1, 10_000))


# ----------------------------------------------------------------------------- user errors


def is_disk_full(error):
    """An OSError that means the disk (or quota) is full, whatever layer reported it."""
    while error is not None:
        if isinstance(error, OSError) and (
            error.errno in DISK_FULL_ERRNOS or "No space left" in str(error)
        ):
            return True
        error = error.__cause__ or error.__context__
    return False


def user_error_types():
    """The exception types a user causes with an input, a flag or the machine's state."""
    import importlib

    types = [
        CheckError,
        ValueError,
        LookupError,
        FileNotFoundError,
        FileExistsError,
        PermissionError,
        NotADirectoryError,
        IsADirectoryError,
    ]
    for module, name in (
        ("keras_clmr.pretraining", "CheckpointError"),
        ("keras_clmr.pretraining", "TrainingDivergedError"),
        ("keras_clmr.audio", "AudioError"),
        ("keras_clmr.presets.registry", "PresetError"),
        ("keras_clmr.export.signature", "ExportError"),
        ("keras_clmr.export.publish", "PublishError"),
        ("keras_clmr.download", "DownloadError"),
        ("keras_clmr._optional", "MissingExtraError"),
    ):
        try:
            types.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # a module being reworked must not break errors
            continue
    return tuple(types)


def describe(error):
    """(one-line message, exit status) for an error the user can act on, else None."""
    if is_disk_full(error):
        return (
            f"the disk is full ({error}). Free some space and run the command again: finished "
            "work (checkpoints, shards) is kept and resumed.",
            2,
        )
    if isinstance(error, user_error_types()):
        exit_status = getattr(error, "exit_status", 2)
        text = " ".join(str(error).split()) or type(error).__name__
        return text, exit_status
    return None
