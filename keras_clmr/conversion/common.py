"""Shared pieces of checkpoint conversion: safe loading, key accounting, layout mapping, parity."""

import hashlib
import io
import os
import pickle
import zipfile

import numpy as np

PARITY_TOLERANCE = 1e-4


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the keys or the problem."""


class UnsafeCheckpointError(ConversionError):
    """The checkpoint's pickle references code that is not on the allow-list (refused, not run)."""


class ParityError(ConversionError):
    """The converted Keras model does not reproduce the PyTorch reference."""


def _safe_globals():
    import argparse

    # The few non-tensor types Lightning checkpoints carry in ``hyper_parameters``. Lightning's
    # AttributeDict (a dict subclass) is read as a plain dict: nothing of Lightning is imported
    # or run, and torch's weights-only unpickler only fills plain dicts.
    attribute_dict_paths = (
        "pytorch_lightning.utilities.parsing.AttributeDict",
        "lightning.pytorch.utilities.parsing.AttributeDict",
        "lightning_fabric.utilities.data.AttributeDict",
        "lightning.fabric.utilities.data.AttributeDict",
    )
    return [(dict, path) for path in attribute_dict_paths] + [argparse.Namespace]


def require_torch():
    """Import torch (an optional dependency of conversion) with a helpful error."""
    try:
        import torch
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Checkpoint conversion needs PyTorch to read .pt/.ckpt files and to run the parity "
            "reference: pip install torch"
        ) from error
    return torch


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_source(path):
    """A readable binary stream of the torch file inside ``path`` (plain file or release .zip)."""
    if not zipfile.is_zipfile(path):
        return open(path, "rb"), os.path.basename(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if any(name.endswith("data.pkl") for name in names):
            return open(path, "rb"), os.path.basename(path)  # torch's own zip format
        members = [
            n
            for n in names
            if n.lower().endswith((".pt", ".pth", ".ckpt", ".tar")) and not n.startswith("__MACOSX")
        ]
        if len(members) != 1:
            raise ConversionError(
                f"{path}: a zip archive should hold exactly one .pt/.pth/.ckpt/.tar checkpoint, "
                f"found {members or names[:10]}. Extract the checkpoint and pass it as --source."
            )
        return io.BytesIO(archive.read(members[0])), members[0]


def load_torch_checkpoint(path):
    """Load a checkpoint without executing pickled code.

    Uses ``torch.load(weights_only=True)`` with an explicit allow-list for the types
    Lightning puts in ``hyper_parameters``. Returns ``(object, member_name)``; a pickle
    referencing anything else raises :class:`UnsafeCheckpointError`.
    """
    torch = require_torch()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(
            f"Checkpoint not found: {path}. Pass the .pt/.ckpt file or the release .zip."
        )
    stream, member = _open_source(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(stream, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"Refused to load {path}: its pickle references code outside the allow-list "
            f"(tensors, plain containers, Lightning's AttributeDict, argparse.Namespace), "
            f"so loading it could execute arbitrary code. "
            f"Details: {str(error).splitlines()[0]} If you trust the "
            f"file, re-save just its state_dict (torch.save(ckpt['state_dict'], 'clean.pt')) in an "
            f"isolated environment and convert that."
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
    finally:
        stream.close()
    return obj, member


def to_numpy_state_dict(state_dict):
    """{key: numpy array} from a torch state dict; non-tensor entries are an error."""
    torch = require_torch()
    out = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(
                f"State-dict entry {key!r} is a {type(value).__name__}, not a tensor."
            )
        out[str(key)] = value.detach().cpu().numpy()
    return out


def json_safe(value, depth=0):
    """A JSON-serialisable copy of checkpoint metadata (hyper-parameters and the like)."""
    if depth > 4:
        return repr(value)[:200]
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if hasattr(value, "__dict__") and type(value).__name__ == "Namespace":
        return json_safe(vars(value), depth + 1)
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value[:100]]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):
        listed = value.tolist()
        return (
            listed
            if not isinstance(listed, list) or len(listed) <= 100
            else f"<array of {len(listed)}>"
        )
    return repr(value)[:200]


class KeyLedger:
    """Accounts for every source key: used, ignored with a reason, or an error.

    ``take`` checks the shape and marks a key as used; ``ignore`` records a known key that
    the Keras model does not need (with the reason, for the report); ``finish`` raises
    naming any missing, mis-shaped or unexpected keys.
    """

    def __init__(self, state_dict, source="checkpoint"):
        self.state = state_dict
        self.source = source
        self.used = []
        self.ignored = {}
        self.missing = []
        self.misshaped = []

    def has(self, key):
        return key in self.state

    def take(self, key, shape=None):
        if key not in self.state:
            self.missing.append(key + (f" {list(shape)}" if shape is not None else ""))
            return None
        value = self.state[key]
        if shape is not None and tuple(value.shape) != tuple(shape):
            self.misshaped.append(f"{key}: expected {list(shape)}, got {list(value.shape)}")
            return None
        self.used.append(key)
        return value

    def ignore(self, key, reason):
        if key in self.state:
            self.ignored[key] = reason

    def unaccounted(self):
        seen = set(self.used) | set(self.ignored)
        return sorted(k for k in self.state if k not in seen)

    def finish(self):
        problems = []
        if self.missing:
            problems.append(f"missing keys: {', '.join(self.missing)}")
        if self.misshaped:
            problems.append(f"mis-shaped keys: {'; '.join(self.misshaped)}")
        extra = self.unaccounted()
        if extra:
            problems.append(f"unexpected keys: {', '.join(extra)}")
        if problems:
            raise ConversionError(
                f"{self.source} does not match the expected layout: " + " | ".join(problems)
            )
        return {"used": len(self.used), "ignored": dict(sorted(self.ignored.items()))}


def _reason_groups(ignored):
    groups = {}
    for key, reason in ignored.items():
        groups.setdefault(reason, []).append(key)
    return {
        reason: (keys if len(keys) <= 8 else keys[:8] + [f"... ({len(keys)} keys)"])
        for reason, keys in groups.items()
    }


def summarize_ledger(ledger_report):
    """Compact form of a ledger report for metadata.json (ignored keys grouped by reason)."""
    return {
        "used_keys": ledger_report["used"],
        "ignored_keys": _reason_groups(ledger_report["ignored"]),
    }


# ---- layout mapping (PyTorch -> Keras) ----


def conv1d_kernel(weight):
    """PyTorch Conv1d [out, in, k] -> Keras Conv1D [k, in, out]."""
    return np.transpose(weight, (2, 1, 0))


def conv2d_kernel(weight):
    """PyTorch Conv2d [out, in, kh, kw] -> Keras Conv2D [kh, kw, in, out]."""
    return np.transpose(weight, (2, 3, 1, 0))


def dense_kernel(weight):
    """PyTorch Linear [out, in] -> Keras Dense [in, out]."""
    return np.transpose(weight)


class WeightSetter:
    """Assigns Keras variables and checks at the end that every variable of a model was set."""

    def __init__(self, model):
        self.model = model
        self.assigned = set()

    def assign(self, variable, value, source_key):
        value = np.asarray(value)
        if tuple(variable.shape) != tuple(value.shape):
            raise ConversionError(
                f"{source_key}: mapped shape {list(value.shape)} does not fit Keras weight "
                f"{variable.path} {list(variable.shape)}."
            )
        variable.assign(value.astype(variable.dtype))
        self.assigned.add(id(variable))

    def conv1d(self, layer, weight, bias, key):
        self.assign(layer.kernel, conv1d_kernel(weight), key + ".weight")
        if bias is not None:
            self.assign(layer.bias, bias, key + ".bias")

    def conv2d(self, layer, weight, bias, key):
        self.assign(layer.kernel, conv2d_kernel(weight), key + ".weight")
        if bias is not None:
            self.assign(layer.bias, bias, key + ".bias")

    def dense(self, layer, weight, bias, key):
        self.assign(layer.kernel, dense_kernel(weight), key + ".weight")
        if bias is not None:
            self.assign(layer.bias, bias, key + ".bias")

    def batchnorm(self, layer, gamma, beta, mean, var, key):
        self.assign(layer.gamma, gamma, key + ".weight")
        self.assign(layer.beta, beta, key + ".bias")
        self.assign(layer.moving_mean, mean, key + ".running_mean")
        self.assign(layer.moving_variance, var, key + ".running_var")

    def finish(self):
        unset = [v.path for v in self.model.weights if id(v) not in self.assigned]
        if unset:
            raise ConversionError(f"Keras weights left unset by the conversion: {', '.join(unset)}")


# ---- parameter counts and parity ----


def _is_statistic(variable):
    name = variable.path.rsplit("/", 1)[-1]
    return name in ("moving_mean", "moving_variance")


def keras_parameter_counts(model):
    """(parameters, BatchNorm statistics) of a Keras model, regardless of trainability.

    These correspond to PyTorch's ``parameters()`` and float ``buffers()``.
    """
    params = int(sum(np.prod(v.shape) for v in model.weights if not _is_statistic(v)))
    stats = int(sum(np.prod(v.shape) for v in model.weights if _is_statistic(v)))
    return params, stats


def torch_parameter_counts(module):
    """(parameters, float buffers) of a torch module (BN running stats; not num_batches_tracked)."""
    params = int(sum(p.numel() for p in module.parameters()))
    buffers = int(sum(b.numel() for b in module.buffers() if b.is_floating_point()))
    return params, buffers


def compare_parameter_counts(keras_model, torch_module, what):
    """Raise unless Keras (parameters, BN statistics) equals torch (parameters, float buffers)."""
    k_train, k_frozen = keras_parameter_counts(keras_model)
    t_params, t_buffers = torch_parameter_counts(torch_module)
    if (k_train, k_frozen) != (t_params, t_buffers):
        raise ParityError(
            f"{what}: parameter counts differ: Keras {k_train:,} parameters + "
            f"{k_frozen:,} BN statistics, "
            f"PyTorch {t_params:,} parameters + {t_buffers:,} buffers."
        )
    return {
        "torch_parameters": t_params,
        "torch_buffers": t_buffers,
        "keras_parameters": k_train,
        "keras_bn_statistics": k_frozen,
    }


def max_abs_diff(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ParityError(f"Output shapes differ: Keras {a.shape}, reference {b.shape}.")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def check_parity(diffs, tolerance=PARITY_TOLERANCE, what="model"):
    """Raise :class:`ParityError` when any max-abs difference exceeds the tolerance."""
    bad = {name: d for name, d in diffs.items() if not (d <= tolerance)}
    if bad:
        raise ParityError(
            f"{what}: Keras and the reference differ by more than {tolerance:g}: {bad}"
        )


def to_numpy(tensor):
    """A backend tensor (TF, JAX, torch) as a float numpy array."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(tensor))
