"""Float64 numpy forward passes of the original networks, read from their own state dicts.

An independent check of a conversion that needs neither torch nor Keras: the weights are used
under their original PyTorch key names and layouts ([out, in, k] convolutions, [out, in]
linears, BatchNorm with running statistics), so a wrong mapping into Keras shows up as a
difference. Covered: CLMR's SampleCNN (every stride variant; release 1.0 ``convN`` and 2.0 /
master ``sequential.i`` layouts; optional supervised ``fc``), SimCLR's projector, the linear
and MLP fine-tuner heads, and PEMR's FCN with the log-mel frontend PEMR computes (torchaudio
``MelSpectrogram(n_fft=256, hop_length=128, n_mels=128)`` at its default 16 kHz filterbank,
then ``AmplitudeToDB``). :func:`parity_check` is the acceptance gate for conversions.
"""

import numpy as np

from keras_clmr.conversion.common import PARITY_TOLERANCE, ConversionError, ParityError

BN_EPSILON = 1e-5  # PyTorch's BatchNorm default, used by CLMR and PEMR
PEMR_POOLS = ((2, 4), (2, 4), (2, 4), (4, 5))
_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def _f64(state, key):
    if key not in state:
        raise ConversionError(f"Reference forward pass: missing key {key}.")
    return np.asarray(state[key], dtype=np.float64)


# ---- layers (channels-first, as PyTorch) ----


def conv1d(x, weight, bias=None, stride=1, padding=0):
    """PyTorch ``Conv1d`` (cross-correlation): x [B, C, T], weight [O, C, K] -> [B, O, L]."""
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    windows = np.lib.stride_tricks.sliding_window_view(x, weight.shape[2], axis=2)[:, :, ::stride]
    out = np.tensordot(windows, weight, axes=([1, 3], [1, 2]))  # [B, L, O]
    if bias is not None:
        out = out + bias
    return np.ascontiguousarray(out.transpose(0, 2, 1))


def conv2d(x, weight, bias=None, padding=1):
    """PyTorch ``Conv2d`` (stride 1): x [B, C, H, W], weight [O, C, KH, KW] -> [B, O, H', W']."""
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = np.lib.stride_tricks.sliding_window_view(x, weight.shape[2:], axis=(2, 3))
    out = np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3]))  # [B, H, W, O]
    if bias is not None:
        out = out + bias
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def batch_norm(x, gamma, beta, mean, var, eps=BN_EPSILON):
    """Inference-mode BatchNorm over axis 1 with running statistics."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = gamma / np.sqrt(var + eps)
    return (x - mean.reshape(shape)) * scale.reshape(shape) + beta.reshape(shape)


def relu(x):
    return np.maximum(x, 0.0)


def sigmoid(x):
    """Numerically stable logistic function (the tag probabilities)."""
    x = np.asarray(x, dtype=np.float64)
    small = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + small), small / (1.0 + small))


def max_pool1d(x, size):
    """``MaxPool1d(size, stride=size)`` (floor mode) over the last axis."""
    length = x.shape[-1] // size
    return x[..., : length * size].reshape(*x.shape[:-1], length, size).max(axis=-1)


def max_pool2d(x, pool):
    """``MaxPool2d(pool)`` (stride = pool, floor mode) over the last two axes."""
    kh, kw = pool
    h, w = x.shape[-2] // kh, x.shape[-1] // kw
    x = x[..., : h * kh, : w * kw].reshape(*x.shape[:-2], h, kh, w, kw)
    return x.max(axis=(-3, -1))


def _bn(state, key, x):
    return batch_norm(
        x,
        _f64(state, f"{key}.weight"),
        _f64(state, f"{key}.bias"),
        _f64(state, f"{key}.running_mean"),
        _f64(state, f"{key}.running_var"),
    )


# ---- CLMR ----


def sample_cnn_blocks(state, prefix=""):
    """The 11 block prefixes of a SampleCNN state dict (``sequential.i`` or 1.0's ``convN``)."""
    if f"{prefix}sequential.0.0.weight" in state:
        blocks = [f"{prefix}sequential.{i}" for i in range(11)]
    elif f"{prefix}conv1.0.weight" in state:
        blocks = [f"{prefix}conv{i + 1}" for i in range(11)]
    else:
        raise ConversionError(
            f"No SampleCNN under prefix {prefix!r}: expected {prefix}sequential.0.0.weight "
            f"or {prefix}conv1.0.weight."
        )
    missing = [b for b in blocks if f"{b}.0.weight" not in state]
    if missing:
        raise ConversionError(
            f"SampleCNN blocks missing from the state dict: {', '.join(missing)}."
        )
    return blocks


def sample_cnn_strides(state, prefix=""):
    """The strides of blocks 1..9 (their kernel size), which set the variant and input length."""
    return tuple(
        int(np.shape(state[f"{b}.0.weight"])[2]) for b in sample_cnn_blocks(state, prefix)[1:10]
    )


def sample_cnn(state, audio, prefix="", with_fc=True):
    """CLMR's SampleCNN on audio [B, T] (or [B, 1, T]): the flattened block-10 output [B, 512].

    Stem: Conv1d(k=3, stride=3) -> BN -> ReLU; blocks 1-9: Conv1d(k=s, pad=1) -> BN -> ReLU ->
    MaxPool(s); block 10: Conv1d(k=3, pad=1) -> BN -> ReLU; flatten. With ``with_fc`` and a
    ``{prefix}fc.weight`` (supervised models) the fc logits are returned instead.
    """
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, None, :]
    blocks = sample_cnn_blocks(state, prefix)
    for index, block in enumerate(blocks):
        weight = _f64(state, f"{block}.0.weight")
        bias = _f64(state, f"{block}.0.bias")
        kernel = weight.shape[2]
        if index == 0:
            x = conv1d(x, weight, bias, stride=kernel, padding=0)
        else:
            x = conv1d(x, weight, bias, stride=1, padding=1)
        x = relu(_bn(state, f"{block}.1", x))
        if 1 <= index <= 9:
            x = max_pool1d(x, kernel)
    h = x.reshape(x.shape[0], x.shape[1] * x.shape[2])
    if with_fc and f"{prefix}fc.weight" in state:
        return h @ _f64(state, f"{prefix}fc.weight").T + _f64(state, f"{prefix}fc.bias")
    return h


def projector(state, h, prefix="projector."):
    """SimCLR's projector: Linear(bias=False) -> ReLU -> Linear(bias=False)."""
    hidden = relu(np.asarray(h, np.float64) @ _f64(state, f"{prefix}0.weight").T)
    return hidden @ _f64(state, f"{prefix}2.weight").T


def head(state, h, prefix=""):
    """A fine-tuner head, ``Sequential(Linear)`` or the MLP ``Linear -> ReLU -> Linear``: logits."""
    x = np.asarray(h, np.float64) @ _f64(state, f"{prefix}0.weight").T + _f64(
        state, f"{prefix}0.bias"
    )
    if f"{prefix}2.weight" in state:
        x = relu(x) @ _f64(state, f"{prefix}2.weight").T + _f64(state, f"{prefix}2.bias")
    return x


# ---- PEMR ----


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_fft=256, n_mels=128, sample_rate=16000):
    """torchaudio's ``melscale_fbanks`` (HTK, no norm, f_min 0, f_max sr // 2): [freqs, mels]."""
    n_freqs = n_fft // 2 + 1
    all_freqs = np.linspace(0.0, sample_rate // 2, n_freqs)
    m_pts = np.linspace(_hz_to_mel(0.0), _hz_to_mel(float(sample_rate // 2)), n_mels + 2)
    f_pts = _mel_to_hz(m_pts)
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down, up))


def pemr_logmel(audio, n_fft=256, hop_length=128, n_mels=128, sample_rate=16000):
    """PEMR's frontend: ``AmplitudeToDB()(MelSpectrogram(n_fft, hop, n_mels)(audio))`` in float64.

    As torchaudio computes it: periodic Hann window, centred frames with reflect padding, power
    2, the 16 kHz filterbank (PEMR does not pass its sample rate), 10 log10(max(x, 1e-10)).
    audio [B, T] -> [B, n_mels, 1 + T // hop_length].
    """
    x = np.asarray(audio, dtype=np.float64)
    pad = n_fft // 2
    x = np.pad(x, ((0, 0), (pad, pad)), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=1)[:, ::hop_length]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    power = np.abs(np.fft.rfft(frames * window, n=n_fft, axis=-1)) ** 2  # [B, frames, freqs]
    mel = power @ mel_filterbank(n_fft, n_mels, sample_rate)  # [B, frames, mels]
    return 10.0 * np.log10(np.maximum(mel, 1e-10)).transpose(0, 2, 1)


def fcn(state, logmel, prefix="", pools=PEMR_POOLS):
    """PEMR's FCN encoder on log-mel [B, mels, frames]: spec_bn, 4 x (conv 3x3 -> BN -> ReLU ->
    max-pool), flatten -> [B, 512]."""
    x = np.asarray(logmel, dtype=np.float64)[:, None]
    x = _bn(state, f"{prefix}spec_bn", x)
    for i, pool in enumerate(pools, start=1):
        block = f"{prefix}layer{i}"
        x = conv2d(
            x, _f64(state, f"{block}.conv.weight"), _f64(state, f"{block}.conv.bias"), padding=1
        )
        x = max_pool2d(relu(_bn(state, f"{block}.bn", x)), pool)
    return x.reshape(x.shape[0], -1)


def pemr_embed(state, audio, prefix="model.encoder.", pools=PEMR_POOLS):
    """PEMR's embedding of audio [B, T]: the log-mel frontend, then the FCN."""
    return fcn(state, pemr_logmel(audio), prefix=prefix, pools=pools)


# ---- counting and the gate ----


def state_parameter_counts(state, prefix=""):
    """(parameters, BatchNorm statistics) of the keys under ``prefix`` (step counters ignored).

    These match ``common.keras_parameter_counts`` of a correctly converted Keras model.
    """
    params = stats = 0
    for key, value in state.items():
        if not key.startswith(prefix) or key.endswith("num_batches_tracked"):
            continue
        size = int(np.prod(np.shape(value)))
        if key.endswith(("running_mean", "running_var")):
            stats += size
        else:
            params += size
    return params, stats


def _figures(keras_out, reference_out, tolerance):
    keras_out = np.asarray(keras_out, dtype=np.float64)
    reference_out = np.asarray(reference_out, dtype=np.float64)
    if keras_out.shape != reference_out.shape:
        raise ParityError(
            f"Output shapes differ: Keras {keras_out.shape}, reference {reference_out.shape}."
        )
    diff = float(np.max(np.abs(keras_out - reference_out))) if keras_out.size else 0.0
    if keras_out.size and not np.all(np.isfinite(keras_out - reference_out)):
        diff = float("nan")
    scale = float(np.max(np.abs(reference_out))) if reference_out.size else 0.0
    bound = tolerance * max(1.0, scale)
    return {
        "max_abs_diff": diff,
        "reference_max_abs": scale,
        "relative_diff": diff / max(1.0, scale),
        "bound": bound,
        "passed": bool(diff <= bound),
    }


def parity_check(
    keras_out,
    reference_out,
    n_params_keras,
    n_params_reference,
    tolerance=PARITY_TOLERANCE,
    what="conversion",
):
    """The conversion gate: ``max|keras - ref| <= tolerance * max(1, max|ref|)`` and equal counts.

    ``keras_out`` / ``reference_out`` are arrays or dicts of named arrays (same names). The
    parameter counts may be ints or tuples such as (parameters, BN statistics). Returns the
    figures for ``metadata.json`` (absolute and relative differences per output); raises
    :class:`ParityError` naming what failed.
    """
    if isinstance(reference_out, dict):
        if not isinstance(keras_out, dict) or set(keras_out) != set(reference_out):
            raise ParityError(
                f"{what}: outputs differ in names: Keras {sorted(keras_out)}, "
                f"reference {sorted(reference_out)}."
            )
        outputs = {
            name: _figures(keras_out[name], reference_out[name], tolerance)
            for name in reference_out
        }
    else:
        outputs = {"output": _figures(keras_out, reference_out, tolerance)}
    counts_equal = _plain_count(n_params_keras) == _plain_count(n_params_reference)
    report = {
        "rule": f"max|keras - reference| <= {tolerance:g} * max(1, max|reference|), "
        "equal parameter counts",
        "tolerance": tolerance,
        "outputs": outputs,
        "max_abs_diff": max(o["max_abs_diff"] for o in outputs.values()),
        "max_relative_diff": max(o["relative_diff"] for o in outputs.values()),
        "parameters": {
            "keras": _plain_count(n_params_keras),
            "reference": _plain_count(n_params_reference),
        },
        "passed": counts_equal and all(o["passed"] for o in outputs.values()),
    }
    problems = []
    if not counts_equal:
        problems.append(
            f"parameter counts differ: Keras {report['parameters']['keras']}, "
            f"reference {report['parameters']['reference']}"
        )
    for name, figures in outputs.items():
        if not figures["passed"]:
            problems.append(
                f"{name}: max|diff| {figures['max_abs_diff']:.3g} > bound {figures['bound']:.3g} "
                f"(max|reference| {figures['reference_max_abs']:.3g})"
            )
    if problems:
        error = ParityError(
            f"{what}: Keras does not reproduce the reference: "
            + "; ".join(problems)
            + ". The weights are mapped wrongly or the checkpoint is not the expected "
            "architecture; nothing was saved."
        )
        error.report = report
        raise error
    return report


def _plain_count(value):
    if isinstance(value, (tuple, list)):
        return [int(v) for v in value]
    return int(value)


__all__ = [
    "BN_EPSILON",
    "PEMR_POOLS",
    "batch_norm",
    "conv1d",
    "conv2d",
    "fcn",
    "head",
    "max_pool1d",
    "max_pool2d",
    "mel_filterbank",
    "parity_check",
    "pemr_embed",
    "pemr_logmel",
    "projector",
    "relu",
    "sample_cnn",
    "sample_cnn_blocks",
    "sample_cnn_strides",
    "sigmoid",
    "state_parameter_counts",
]
