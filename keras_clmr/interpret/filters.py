"""Filter spectra: what each convolution filter of an encoder responds to (the CLMR thesis method).

For every filter of a layer, gradient ascent on a random short waveform (729 samples, the
receptive field of SampleCNN's sixth layer) maximises the filter's mean activation; the
magnitude spectrum of the optimised waveform is one column of an image, and the columns are
sorted by the frequency of their peak. All filters of a layer are optimised at once, one batch
row per filter, so a layer costs one batched forward/backward pass per step.

Layer numbers follow the thesis: layer ``n`` is the n-th convolution, i.e. ``block_{n-1}`` of
:class:`~keras_clmr.models.SampleCNN` (layer 1 is the strided stem) and ``layer{n}`` of
:class:`~keras_clmr.models.FCN` (whose input spectrum is optimised through its log-mel
frontend). Names such as ``"block_3"`` are accepted too.

The activation maximised is the BatchNorm output, i.e. the ReLU's input: it has a gradient
everywhere, so no frame is left dead at a random start. The waveform is kept inside a ball of
RMS ``rms_limit`` (projected, normalised-gradient ascent), so the result converges instead of
growing without bound. A property worth knowing when reading the pictures: with a mean over
time, the optimum of a layer whose total stride is ``s`` is periodic with period ``s``, so its
spectrum lives on multiples of ``sample_rate / s``; for SampleCNN's stem (stride 3) that is
0 Hz and ``sample_rate / 3`` (7350 Hz at 22050 Hz; the thesis' "single band near 7.5 kHz").
"""

import dataclasses
import re

import numpy as np

DEFAULT_STEPS = 200
DEFAULT_LEARNING_RATE = 0.01
DEFAULT_RMS_LIMIT = 0.1


class FilterLayerError(ValueError):
    """The requested layer does not exist in the model or has no filters to visualise."""


class UnsupportedModelError(TypeError):
    """Filter spectra are defined only for SampleCNN and FCN encoders."""


@dataclasses.dataclass
class LayerSpectra:
    """One layer: ``spectra`` [filters, bins] in filter order; ``order`` sorts them by peak."""

    layer: int
    name: str
    spectra: np.ndarray
    peak_frequencies: np.ndarray
    order: np.ndarray
    waveforms: np.ndarray
    activations: np.ndarray


@dataclasses.dataclass
class FilterSpectra:
    """The result of :func:`filter_spectra`: per-layer spectra and the frequency axis (Hz)."""

    model_name: str
    sample_rate: int
    frequencies: np.ndarray
    layers: list
    path: str = None

    def __getitem__(self, layer):
        for entry in self.layers:
            if layer in (entry.layer, entry.name):
                return entry
        raise KeyError(layer)


@dataclasses.dataclass
class _Stage:
    number: int
    name: str
    filters: int
    forward: object  # waveform [B, T] -> pre-ReLU activations [B, ..., filters]


def _unwrap_encoder(model):
    """The encoder inside a tagger (``.backbone``) or pretrainer (``.encoder``); presets by name."""
    if isinstance(model, str):
        import keras_clmr

        model = keras_clmr.load_pretrained(model, task="embed")
    for attribute in ("backbone", "encoder"):
        inner = getattr(model, attribute, None)
        if inner is not None and hasattr(inner, "layers"):
            return _unwrap_encoder(inner)
    return model


def _sample_cnn_stages(encoder):
    from keras import layers, ops

    stack = list(encoder.stack)
    stages = []
    for index, layer in enumerate(stack):
        match = re.fullmatch(r"block_(\d+)_bn", layer.name)
        if not match or not isinstance(layer, layers.BatchNormalization):
            continue
        block = int(match.group(1))
        prefix = stack[: index + 1]

        def forward(waveform, prefix=prefix):
            x = ops.expand_dims(waveform, -1)
            for item in prefix:
                if isinstance(item, layers.BatchNormalization):
                    x = item(x, training=False)
                else:
                    x = item(x)
            return x

        filters = int(stack[index - 1].filters)
        stages.append(_Stage(block + 1, f"block_{block}", filters, forward))
    return stages


def _fcn_stages(encoder):
    from keras import ops

    stages = []
    for position, (conv, *_) in enumerate(encoder.blocks):

        def forward(waveform, position=position):
            x = encoder.spec_bn(ops.expand_dims(encoder.frontend(waveform), -1), training=False)
            for i, (conv_i, bn_i, relu_i, pool_i) in enumerate(encoder.blocks[: position + 1]):
                x = bn_i(conv_i(x), training=False)
                if i < position:
                    x = pool_i(relu_i(x))
            return x

        stages.append(
            _Stage(position + 1, conv.name.rsplit("_conv", 1)[0], int(conv.filters), forward)
        )
    return stages


def _cpc_stages(encoder):
    """CPC's strided Conv1d blocks: layer n is ``conv_{n-1}`` before its ReLU (no norm)."""
    from keras import ops

    stack = list(encoder.stack)
    stages = []
    for index, layer in enumerate(stack):
        match = re.fullmatch(r"conv_(\d+)", layer.name)
        if not match:
            continue
        prefix = stack[: index + 1]

        def forward(waveform, prefix=prefix):
            x = ops.expand_dims(waveform, -1)
            for item in prefix:
                x = item(x)
            return x

        number = int(match.group(1)) + 1
        stages.append(_Stage(number, layer.name, int(layer.filters), forward))
    return stages


def _stages_of(encoder):
    from keras_clmr.models import FCN, SampleCNN
    from keras_clmr.models.cpc import CPCEncoder

    if isinstance(encoder, SampleCNN):
        return _sample_cnn_stages(encoder)
    if isinstance(encoder, FCN):
        return _fcn_stages(encoder)
    if isinstance(encoder, CPCEncoder):
        return _cpc_stages(encoder)
    raise UnsupportedModelError(
        f"filter_spectra supports SampleCNN (raw waveform), CPCEncoder (raw waveform) and FCN "
        f"(log-mel) encoders, or a tagger/"
        f"pretrainer wrapping one; got {type(encoder).__name__}. Musicnn's first layers are "
        "timbral/temporal filters of different shapes: not supported yet."
    )


def _select(stages, requested, model_name):
    available = ", ".join(f"{s.number} ({s.name})" for s in stages)
    selected = []
    for item in requested:
        found = (
            [s for s in stages if item == s.number or item == s.name]
            if not isinstance(item, bool)
            else []
        )
        if not found:
            raise FilterLayerError(
                f"{model_name} has no filter layer {item!r}; choose from layers {available} "
                "(numbers count convolutions from 1, names are the model's block names)."
            )
        if found[0].filters < 1:
            raise FilterLayerError(f"Layer {item!r} of {model_name} has no filters to visualise.")
        selected.append(found[0])
    if not selected:
        raise FilterLayerError(f"No layers requested; choose from {available}.")
    return selected


def _gradient_function(objective):
    """``x -> (values [B], d sum(values) / dx)`` on the active Keras backend (the one switch).

    Rows are independent (BatchNorm runs in inference mode), so the gradient of the sum is the
    per-row gradient of each row's own objective.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(reduce_retracing=True)
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                values = objective(x)
                total = tf.reduce_sum(values)
            return values, tape.gradient(total, x)

        def run(x):
            values, gradient = step(tf.convert_to_tensor(x))
            return values.numpy(), gradient.numpy()

        return run
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def total(x):
            values = objective(x)
            return jnp.sum(values), values

        step = jax.jit(jax.value_and_grad(total, has_aux=True))

        def run(x):
            (_, values), gradient = step(jnp.asarray(x))
            return np.asarray(values), np.asarray(gradient)

        return run
    if backend == "torch":
        import torch

        def run(x):
            tensor = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
            values = objective(tensor)
            (gradient,) = torch.autograd.grad(values.sum(), tensor)
            return values.detach().cpu().numpy(), gradient.detach().cpu().numpy()

        return run
    raise UnsupportedModelError(
        f"filter_spectra has no gradient helper for the {backend!r} backend."
    )


def _optimise(stage, input_samples, steps, learning_rate, rms_limit, rng):
    """Projected normalised-gradient ascent, all filters of ``stage`` at once (row i = filter i)."""
    from keras import ops

    eye = ops.convert_to_tensor(np.eye(stage.filters, dtype=np.float32))

    def objective(x):
        activations = stage.forward(x)
        flat = ops.reshape(activations, (stage.filters, -1, stage.filters))
        own = ops.sum(flat * eye[:, None, :], axis=-1)  # row i keeps filter i: [F, frames]
        return ops.mean(own, axis=-1)

    gradient_of = _gradient_function(objective)
    x = (0.1 * rms_limit * rng.standard_normal((stage.filters, input_samples))).astype(np.float32)
    values = None
    for _ in range(int(steps)):
        values, gradient = gradient_of(x)
        if not np.all(np.isfinite(gradient)):
            raise FloatingPointError(
                f"Non-finite gradient while optimising {stage.name}; lower learning_rate."
            )
        norm = np.sqrt(np.mean(np.square(gradient), axis=1, keepdims=True))
        x = x + learning_rate * gradient / np.maximum(norm, 1e-12)
        rms = np.sqrt(np.mean(np.square(x), axis=1, keepdims=True))
        x = (x * np.minimum(1.0, rms_limit / np.maximum(rms, 1e-12))).astype(np.float32)
    if values is None:
        values, _ = gradient_of(x)
    return x, np.asarray(values, dtype=np.float64)


def _default_samples(encoder, selected):
    """729 samples for SampleCNN; for FCN, two frames at the deepest layer (>= 4 FFT sizes)."""
    blocks = getattr(encoder, "blocks", None)
    if blocks is None:
        return 729
    deepest = max(stage.number for stage in selected)
    frames = 2 * int(np.prod([pool[1] for pool in encoder.pools[: deepest - 1]]))
    return max(encoder.frontend.hop_length * frames, 4 * encoder.frontend.n_fft)


def _minimum_samples(stage, input_samples):
    from keras import ops

    try:
        shape = ops.shape(stage.forward(ops.zeros((1, input_samples))))
    except Exception as error:  # too short for a pooling or framing step
        raise FilterLayerError(
            f"input_samples={input_samples} is too short to reach {stage.name}; use more."
        ) from error
    if any(int(d) == 0 for d in shape[1:-1]):
        raise FilterLayerError(
            f"input_samples={input_samples} leaves no frames at {stage.name}; use more."
        )


def filter_spectra(
    encoder,
    layers=None,
    steps=DEFAULT_STEPS,
    learning_rate=DEFAULT_LEARNING_RATE,
    seed=0,
    input_samples=None,
    output=None,
    rms_limit=DEFAULT_RMS_LIMIT,
    model_name=None,
):
    """Spectra of waveforms that maximise each filter of ``layers`` (the CLMR thesis picture).

    Args:
        encoder: a SampleCNN or FCN, a tagger/pretrainer wrapping one, or a preset name.
        layers: layer numbers (1 = first convolution) or block names; default ``(1, 4, 6)``
            (the thesis' choice) for SampleCNN, every block for FCN.
        steps, learning_rate: gradient-ascent steps and step size (RMS of each normalised step).
        seed: seed of the random start waveforms (same seed, same result).
        input_samples: waveform length; default 729 for SampleCNN (the receptive field of its
            layer 6, as in the thesis), and for FCN the shortest input that leaves two frames
            at the deepest requested layer (at least four FFT lengths).
        output: a PNG path: one panel per layer, filters sorted by peak, log frequency in Hz.
        rms_limit: RMS radius of the ball the waveform is kept in.
        model_name: title of the picture (default: the model's name).

    Returns:
        :class:`FilterSpectra`; ``result[1].spectra`` is [filters, bins] for layer 1 and
        ``result.frequencies`` the bin frequencies in Hz.
    """
    encoder = _unwrap_encoder(encoder)
    name = model_name or getattr(encoder, "name", type(encoder).__name__)
    stages = _stages_of(encoder)
    if layers is None:
        layers = (1, 4, 6) if len(stages) >= 6 else tuple(s.number for s in stages)
    if isinstance(layers, (int, str)):
        layers = (layers,)
    selected = _select(stages, list(layers), name)
    if int(steps) < 0 or not learning_rate > 0 or not rms_limit > 0:
        raise ValueError(
            f"Need steps >= 0, learning_rate > 0, rms_limit > 0; got {steps}, {learning_rate}, "
            f"{rms_limit}."
        )
    if input_samples is None:
        input_samples = _default_samples(encoder, selected)
    input_samples = int(input_samples)
    sample_rate = int(getattr(encoder, "sample_rate", 22050))
    frequencies = np.fft.rfftfreq(input_samples, d=1.0 / sample_rate)
    results = []
    for position, stage in enumerate(selected):
        _minimum_samples(stage, input_samples)
        rng = np.random.default_rng([int(seed), position])
        waveforms, activations = _optimise(
            stage, input_samples, steps, learning_rate, rms_limit, rng
        )
        spectra = np.abs(np.fft.rfft(waveforms.astype(np.float64), axis=1))
        peaks = frequencies[np.argmax(spectra, axis=1)]
        order = np.argsort(peaks, kind="stable")
        results.append(
            LayerSpectra(stage.number, stage.name, spectra, peaks, order, waveforms, activations)
        )
    result = FilterSpectra(name, sample_rate, frequencies, results)
    if output is not None:
        result.path = plot_filter_spectra(result, output)
    return result


def plot_filter_spectra(result, path):
    """Write the sorted spectra of ``result`` as a PNG (atomically): one panel per layer."""
    from keras_clmr.interpret._plotting import pyplot, save_figure

    plt = pyplot()
    columns = len(result.layers)
    figure, axes = plt.subplots(1, columns, figsize=(4.2 * columns, 4.2), squeeze=False)
    edges, rows = _log_rows(result.frequencies)
    for axis, entry in zip(axes[0], result.layers):
        spectra = entry.spectra[entry.order]
        spectra = spectra / np.maximum(spectra.max(axis=1, keepdims=True), 1e-12)
        image = axis.pcolormesh(
            np.arange(len(entry.order) + 1),
            edges,
            rows(spectra).T,
            cmap="magma",
            vmin=0.0,
            vmax=1.0,
            shading="flat",
        )
        axis.set_yscale("log")
        axis.set_ylim(edges[0], edges[-1])
        axis.set_xlabel("filter (sorted by peak frequency)")
        at_zero = int(np.sum(entry.peak_frequencies == 0))
        if at_zero:  # their peak (0 Hz) is below the log axis: say so instead of hiding it
            axis.text(
                0.02,
                0.02,
                f"{at_zero} filter(s) peak at 0 Hz (left)",
                color="white",
                fontsize=7,
                transform=axis.transAxes,
            )
        axis.set_title(
            f"{result.model_name}: layer {entry.layer} ({entry.name}, {len(entry.order)} filters)",
            fontsize=9,
        )
    axes[0][0].set_ylabel("frequency (Hz)")
    figure.colorbar(image, ax=list(axes[0]), label="magnitude / filter max", shrink=0.8)
    return save_figure(figure, path)


def _log_rows(frequencies, count=256):
    """Log-spaced display rows over the non-zero bins: (edges, spectra [F, bins] -> [F, rows]).

    A row covering several bins shows their maximum (a one-bin peak stays visible); a row
    narrower than a bin shows the nearest bin. 0 Hz has no place on a log axis and is left out.
    """
    positive = frequencies[frequencies > 0]
    step = positive[1] - positive[0] if len(positive) > 1 else positive[0]
    edges = np.geomspace(positive[0] - step / 2, positive[-1] + step / 2, count + 1)
    bins = np.flatnonzero(frequencies > 0)
    owner = np.searchsorted(edges, frequencies[bins], side="right") - 1
    centres = np.sqrt(edges[1:] * edges[:-1])
    nearest = bins[np.clip(np.searchsorted(frequencies[bins], centres), 0, len(bins) - 1)]

    def rows(spectra):
        out = spectra[:, nearest].copy()
        for row in np.unique(owner):
            out[:, row] = spectra[:, bins[owner == row]].max(axis=1)
        return out

    return edges, rows
