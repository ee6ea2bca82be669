"""One-line inference on audio files and arrays: ``embed`` and ``tag``.

Audio is cut into windows of ``model.input_samples`` samples (59049 for CLMR) every
``hop`` seconds (default: one window, i.e. non-overlapping as in the CLMR evaluation;
a remainder shorter than a window is dropped). Windows are batched, across files when
many are given. Files that soundfile can read are streamed in blocks (soundfile block
reads + ``soxr.ResampleStream``), so an hour of audio never sits in memory: memory is
bounded by one block, one batch and the [T, D] outputs. Other formats go through
``keras_clmr.audio.load`` (ffmpeg) and are decoded whole.
"""

import dataclasses
import hashlib
import os
import warnings
import weakref

import keras
import numpy as np

from keras_clmr import audio as audio_lib
from keras_clmr.audio import AudioError, CorruptAudioError, EmptyAudioError
from keras_clmr.hub import _is_pretrainer, is_tagger, load_pretrained, model_attribute

DEFAULT_MODEL = "clmr-mtat"
DEFAULT_BLOCK_SECONDS = 30.0


class ClipTooShortError(AudioError):
    """A clip shorter than one model window while ``short="error"``."""


@dataclasses.dataclass
class Embeddings:
    """Embeddings [T, D] of one input, with window start ``times`` [T] in seconds."""

    embeddings: np.ndarray
    times: np.ndarray
    source: str
    sample_rate: int
    window_seconds: float
    hop_seconds: float
    duration: float
    padded: bool = False
    error: str = None


@dataclasses.dataclass
class TagResult:
    """Per-window ``probabilities`` [T, C], the clip-level mean [C], and the ``top`` (name, p) list."""

    probabilities: np.ndarray
    clip: np.ndarray
    tags: tuple
    top: list
    times: np.ndarray
    source: str
    sample_rate: int
    window_seconds: float
    hop_seconds: float
    duration: float
    padded: bool = False
    error: str = None


_LOADED = {}


def _resolve_model(model, task):
    if model is None:
        model = DEFAULT_MODEL
    if isinstance(model, (str, os.PathLike)):
        key = (os.fspath(model), task)
        if key not in _LOADED:
            _LOADED[key] = load_pretrained(model, task=task)
        model = _LOADED[key]
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a preset name, hf:// handle, folder or keras.Model, got {type(model).__name__}.")
    if task == "tag":
        if not is_tagger(model):
            raise ValueError(
                f"tag() needs a tagger (a model with .backbone and .tags, e.g. keras_clmr.models.MusicTagger), got "
                f"{type(model).__name__}; load one with load_pretrained(name, task='tag') or use embed().")
        return model, model
    if is_tagger(model):
        return model, model.backbone
    if _is_pretrainer(model):
        return model, model.encoder
    return model, model


def _padded_size(n, batch_size):
    # Pad a partial batch to the next power of two: few distinct shapes, so few retraces/recompiles.
    size = 1
    while size < n:
        size *= 2
    return min(size, batch_size)



# ------------------------------------------------------------------------------- engines
#
# engine="onnxruntime" runs a SampleCNN (or a MusicTagger on one) as an ONNX graph built here
# from the Keras weights, with each BatchNorm folded into its convolution. Same maths
# (checked against Keras to 1e-5 in the tests); ONNX Runtime fuses Conv+ReLU and is ~2-3x
# faster than eager frameworks on this memory-bound model. Other models use Keras.


def _np(variable):
    return np.asarray(variable.numpy())


def _sample_cnn_nodes(encoder, helper, numpy_helper, nodes, inits, x):
    from keras import layers

    from keras_clmr.models.sample_cnn import SampleCNN

    if type(encoder) is not SampleCNN:
        raise NotImplementedError(type(encoder).__name__)
    nodes.append(helper.make_node("Reshape", [x, "shape_b1t"], ["h0"]))
    inits.append(numpy_helper.from_array(np.array([0, 1, -1], np.int64), "shape_b1t"))
    current, pending_pad, conv, count = "h0", 0, None, 0
    for layer in encoder.stack:
        if isinstance(layer, layers.ZeroPadding1D):
            left, right = layer.padding
            if left != right:
                raise NotImplementedError("asymmetric padding")
            pending_pad = left
        elif isinstance(layer, layers.Conv1D):
            kernel = _np(layer.kernel).astype(np.float64)
            bias = _np(layer.bias).astype(np.float64)
            k, stride = layer.kernel_size[0], layer.strides[0]
            if layer.dilation_rate[0] != 1 or layer.groups != 1:
                raise NotImplementedError("dilation/groups")
            if layer.padding == "same":
                if stride != 1:
                    raise NotImplementedError("strided same padding")
                pads = [(k - 1) // 2, k - 1 - (k - 1) // 2]
            else:
                pads = [pending_pad, pending_pad]
            pending_pad = 0
            conv = dict(kernel=kernel, bias=bias, k=k, stride=stride, pads=pads)
        elif isinstance(layer, layers.BatchNormalization):
            gamma = _np(layer.gamma).astype(np.float64)
            beta = _np(layer.beta).astype(np.float64)
            mean = _np(layer.moving_mean).astype(np.float64)
            var = _np(layer.moving_variance).astype(np.float64)
            scale = gamma / np.sqrt(var + layer.epsilon)
            conv["kernel"] = conv["kernel"] * scale
            conv["bias"] = (conv["bias"] - mean) * scale + beta
        elif isinstance(layer, layers.ReLU):
            count += 1
            w, b = f"w{count}", f"b{count}"
            inits.append(numpy_helper.from_array(np.transpose(conv["kernel"], (2, 1, 0)).astype(np.float32), w))
            inits.append(numpy_helper.from_array(conv["bias"].astype(np.float32), b))
            nodes.append(helper.make_node("Conv", [current, w, b], [f"c{count}"], kernel_shape=[conv["k"]],
                                          strides=[conv["stride"]], pads=conv["pads"]))
            nodes.append(helper.make_node("Relu", [f"c{count}"], [f"r{count}"]))
            current = f"r{count}"
        elif isinstance(layer, layers.MaxPooling1D):
            pool, stride = layer.pool_size[0], layer.strides[0]
            if layer.padding != "valid":
                raise NotImplementedError("same pooling")
            nodes.append(helper.make_node("MaxPool", [current], [f"p{count}"], kernel_shape=[pool], strides=[stride]))
            current = f"p{count}"
        else:
            raise NotImplementedError(type(layer).__name__)
    nodes.append(helper.make_node("Flatten", [current], ["embedding"], axis=1))
    return "embedding"


def _head_nodes(tagger, helper, numpy_helper, nodes, inits, x):
    from keras import layers

    current = x
    for i, layer in enumerate(tagger.head.layers):
        if isinstance(layer, layers.Dropout):
            continue
        if isinstance(layer, layers.Dense):
            if layer.activation not in (keras.activations.linear, keras.activations.relu):
                raise NotImplementedError("dense activation")
            inits.append(numpy_helper.from_array(_np(layer.kernel).astype(np.float32), f"hw{i}"))
            inputs = [current, f"hw{i}"]
            if layer.use_bias:
                inits.append(numpy_helper.from_array(_np(layer.bias).astype(np.float32),
                                                     f"hb{i}"))
                inputs.append(f"hb{i}")
            nodes.append(helper.make_node("Gemm", inputs, [f"d{i}"]))
            current = f"d{i}"
            if layer.activation is keras.activations.relu:
                nodes.append(helper.make_node("Relu", [current], [f"dr{i}"]))
                current = f"dr{i}"
        elif isinstance(layer, layers.ReLU):
            nodes.append(helper.make_node("Relu", [current], [f"hr{i}"]))
            current = f"hr{i}"
        else:
            raise NotImplementedError(type(layer).__name__)
    if tagger.multi_label:
        nodes.append(helper.make_node("Sigmoid", [current], ["probabilities"]))
    else:
        nodes.append(helper.make_node("Softmax", [current], ["probabilities"], axis=-1))
    return "probabilities"


def onnx_predictor(net):
    """A callable [n, input_samples] -> numpy outputs running ``net`` in ONNX Runtime.

    Supports SampleCNN and a MusicTagger on a SampleCNN (float32); raises
    NotImplementedError for anything else.
    """
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    if getattr(net, "dtype_policy", None) is not None and net.dtype_policy.compute_dtype != "float32":
        raise NotImplementedError("float32 only")
    nodes, inits = [], []
    tagger = is_tagger(net)
    encoder = net.backbone if tagger else net
    out = _sample_cnn_nodes(encoder, helper, numpy_helper, nodes, inits, "audio")
    if tagger:
        out = _head_nodes(net, helper, numpy_helper, nodes, inits, out)
    graph = helper.make_graph(
        nodes, "keras_clmr", [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", None])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", None])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="keras_clmr")
    model.ir_version = 8
    onnx.checker.check_model(model)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"audio": batch})[0]


_ONNX_CACHE = {}


def _fingerprint(net):
    digest = hashlib.blake2b(digest_size=16)
    for weight in net.weights:
        digest.update(np.ascontiguousarray(_np(weight)).tobytes())
    return digest.hexdigest()


def _cached_onnx_predictor(net):
    # Rebuilt when the weights change (e.g. after more training), reused otherwise.
    key = id(net)
    fingerprint = _fingerprint(net)
    entry = _ONNX_CACHE.get(key)
    if entry is not None and entry[0]() is net and entry[1] == fingerprint:
        return entry[2]
    predictor = onnx_predictor(net)
    _ONNX_CACHE[key] = (weakref.ref(net), fingerprint, predictor)
    return predictor


def _predictor(net, engine):
    if engine not in ("auto", "keras", "onnxruntime"):
        raise ValueError(f"engine must be 'auto', 'keras' or 'onnxruntime', got {engine!r}.")
    if engine != "keras":
        try:
            return _cached_onnx_predictor(net), "onnxruntime"
        except (NotImplementedError, ImportError) as error:
            if engine == "onnxruntime":
                raise ValueError(f"engine='onnxruntime' does not support this model ({error}); "
                                 "use engine='keras'.") from error
    return (lambda batch: keras.ops.convert_to_numpy(net.predict_on_batch(batch))), "keras"


class _WindowStream:
    """Yields (start_sample, window) for one source; records duration and padding afterwards."""

    def __init__(self, source, sample_rate, window, hop, short, block_frames, source_rate=None):
        self.source = source
        self.sample_rate = sample_rate
        self.window = window
        self.hop = hop
        self.short = short
        self.block_frames = block_frames
        self.source_rate = source_rate
        self.name = _describe(source)
        self.total = 0
        self.padded = False

    def _array_blocks(self):
        data = np.asarray(self.source)
        if data.ndim == 2:
            data = data.mean(axis=1)
        elif data.ndim != 1:
            raise ValueError(f"Audio arrays must be [samples] or [samples, channels], got shape {data.shape}.")
        if not np.issubdtype(data.dtype, np.floating):
            raise ValueError(f"Audio arrays must be float in [-1, 1], got dtype {data.dtype}.")
        data = data.astype(np.float32, copy=False)
        if not np.all(np.isfinite(data)):
            raise CorruptAudioError(self.name, "contains non-finite (NaN or Inf) samples")
        if self.source_rate and self.source_rate != self.sample_rate:
            data = audio_lib.resample(data, self.source_rate, self.sample_rate)
        for start in range(0, len(data), self.block_frames):
            yield data[start:start + self.block_frames]

    def _file_blocks(self):
        import soundfile

        path = os.fspath(self.source)
        if not os.path.exists(path):
            raise audio_lib.AudioFileNotFoundError(path, "no such file; check the path")
        if os.path.isdir(path):
            raise AudioError(path, "is a directory, not an audio file")
        if os.path.getsize(path) == 0:
            raise EmptyAudioError(path, "the file is empty (0 bytes)")
        try:
            handle = soundfile.SoundFile(path)
        except Exception:  # not readable by libsndfile: ffmpeg fallback, decoded whole
            data = audio_lib.load(path, sample_rate=self.sample_rate)
            for start in range(0, len(data), self.block_frames):
                yield data[start:start + self.block_frames]
            return
        with handle:
            rate = handle.samplerate
            stream = None
            if rate != self.sample_rate:
                import soxr

                stream = soxr.ResampleStream(rate, self.sample_rate, 1, dtype="float32", quality="HQ")
            in_frames = max(1, int(round(self.block_frames * rate / self.sample_rate)))
            while True:
                try:
                    block = handle.read(in_frames, dtype="float32", always_2d=True)
                except Exception as error:
                    raise CorruptAudioError(path, f"could not be decoded ({error})") from error
                last = len(block) < in_frames
                block = block.mean(axis=1)
                if not np.all(np.isfinite(block)):
                    raise CorruptAudioError(path, "decodes to non-finite (NaN or Inf) samples")
                if stream is not None:
                    block = stream.resample_chunk(np.ascontiguousarray(block), last=last)
                if len(block):
                    yield np.clip(block, -1.0, 1.0)
                if last:
                    break

    def __iter__(self):
        blocks = self._array_blocks() if isinstance(self.source, np.ndarray) else self._file_blocks()
        window, hop = self.window, self.hop
        buffer = np.zeros(0, np.float32)
        buffer_start = next_start = emitted = 0
        for block in blocks:
            self.total += len(block)
            buffer = np.concatenate([buffer, block]) if len(buffer) else block
            while next_start + window <= buffer_start + len(buffer):
                offset = next_start - buffer_start
                yield next_start, buffer[offset:offset + window]
                emitted += 1
                next_start += hop
            drop = min(next_start - buffer_start, len(buffer))
            if drop > 0:
                buffer = buffer[drop:]
                buffer_start += drop
        if self.total == 0:
            raise EmptyAudioError(self.name, "decodes to zero samples")
        if emitted == 0:
            seconds = self.total / self.sample_rate
            message = (f"only {self.total} samples ({seconds:.2f} s at {self.sample_rate} Hz), shorter than one "
                       f"{window}-sample window ({window / self.sample_rate:.2f} s)")
            if self.short == "error":
                raise ClipTooShortError(self.name, message + "; pass short='pad' to zero-pad it")
            warnings.warn(f"{self.name}: {message}; zero-padded to one window.", stacklevel=4)
            self.padded = True
            yield 0, np.pad(buffer, (0, window - len(buffer)))


def _describe(source):
    if isinstance(source, np.ndarray):
        return f"<array {source.shape}>"
    return os.fspath(source)


def _run(sources, predict, *, sample_rate, window, hop, batch_size, short, on_error, block_frames,
         source_rate, progress):
    outputs = [[] for _ in sources]
    starts = [[] for _ in sources]
    streams = [None] * len(sources)
    errors = [None] * len(sources)
    batch = np.zeros((batch_size, window), np.float32)
    owners = []

    def flush():
        n = len(owners)
        size = _padded_size(n, batch_size)
        batch[n:size] = 0.0
        out = np.asarray(predict(batch[:size]))[:n]
        for row, owner in enumerate(owners):
            outputs[owner].append(out[row])
        owners.clear()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sources), unit="file", disable=progress is None)
    try:
        for i, source in enumerate(sources):
            stream = _WindowStream(source, sample_rate, window, hop, short, block_frames, source_rate)
            streams[i] = stream
            try:
                for start, chunk in stream:
                    batch[len(owners)] = chunk
                    owners.append(i)
                    starts[i].append(start)
                    if len(owners) == batch_size:
                        flush()
            except (AudioError, ValueError) as error:
                if on_error == "raise":
                    raise
                errors[i] = str(error)
            if bar is not None:
                bar.update(1)
        if owners:
            flush()
    finally:
        if bar is not None:
            bar.close()
    results = []
    for i in range(len(sources)):
        stream = streams[i]
        if errors[i] is not None:
            results.append((None, None, stream, errors[i]))
        else:
            results.append((np.stack(outputs[i]).astype(np.float32), np.asarray(starts[i]) / sample_rate,
                            stream, None))
    return results


def _prepare(audio_or_path, model, task, sample_rate, hop, batch_size, short, on_error, block_seconds,
             engine):
    single = not isinstance(audio_or_path, (list, tuple))
    sources = [audio_or_path] if single else list(audio_or_path)
    for source in sources:
        if not isinstance(source, (str, os.PathLike, np.ndarray)):
            raise TypeError(f"Inputs must be file paths or numpy arrays, got {type(source).__name__}.")
    if short not in ("pad", "error"):
        raise ValueError(f"short must be 'pad' or 'error', got {short!r}.")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    model, net = _resolve_model(model, task)
    window = model_attribute(model, "input_samples")
    rate = int(model_attribute(model, "sample_rate", audio_lib.DEFAULT_SAMPLE_RATE))
    if window is None:
        raise ValueError(f"{type(model).__name__} has no input_samples attribute; cannot window the audio.")
    hop_samples = window if hop is None else int(round(float(hop) * rate))
    if hop_samples < 1:
        raise ValueError(f"hop must be > 0 seconds, got {hop}.")
    block_frames = max(window, int(block_seconds * rate))
    predict, _ = _predictor(net, engine)
    return single, sources, model, net, predict, int(window), rate, hop_samples, block_frames


def embed(audio_or_path, model=None, *, sample_rate=None, hop=None, batch_size=32, short="pad",
          on_error="raise", block_seconds=DEFAULT_BLOCK_SECONDS, progress=False, engine="auto"):
    """Embeddings of one input or a list of inputs (file paths or float arrays).

    Args:
        audio_or_path: a path, a float array [T] / [T, C], or a list of them.
        model: a keras.Model (encoder, tagger or pretrainer), a preset name, an hf:// handle
            or a preset folder (default ``"clmr-mtat"``).
        sample_rate: the rate of array inputs (default: the model's rate). Files are
            resampled to the model's rate.
        hop: seconds between window starts (default: one window, no overlap).
        batch_size: windows per forward pass.
        short: a clip shorter than one window is zero-padded ("pad", with a warning) or
            raises ``ClipTooShortError`` ("error").
        on_error: "raise" on the first bad input, or "skip" it (its result has ``.error``).
        block_seconds: how much audio is decoded at a time.
        progress: show a progress bar over the inputs.
        engine: "keras" (``predict_on_batch``), "onnxruntime" (SampleCNN and taggers on
            it, as an ONNX graph with BatchNorm folded in; same outputs to ~1e-5, faster
            on CPU) or "auto" (onnxruntime where supported, else keras).

    Returns:
        ``Embeddings`` (``.embeddings`` [T, D], ``.times`` [T] start seconds), or a list of them.
    """
    single, sources, model, net, predict, window, rate, hop_samples, block_frames = _prepare(
        audio_or_path, model, "embed", sample_rate, hop, batch_size, short, on_error, block_seconds, engine)
    runs = _run(sources, predict, sample_rate=rate, window=window, hop=hop_samples, batch_size=int(batch_size),
                short=short, on_error=on_error, block_frames=block_frames, source_rate=sample_rate,
                progress=progress)
    results = []
    for source, (out, times, stream, error) in zip(sources, runs):
        if error is not None:
            out, times = np.zeros((0, model_attribute(net, "embedding_dim", 0) or 0), np.float32), np.zeros(0)
        results.append(Embeddings(out, times, _describe(source), rate, window / rate, hop_samples / rate,
                                  stream.total / rate, stream.padded, error))
    return results[0] if single else results


def tag(audio_or_path, model=None, *, top_k=5, sample_rate=None, hop=None, batch_size=32, short="pad",
        on_error="raise", block_seconds=DEFAULT_BLOCK_SECONDS, progress=False, engine="auto"):
    """Tag probabilities per window and per clip (mean over windows), with the top-k tag names.

    ``model`` is a tagger (``MusicTagger``), a preset name (loaded with ``task="tag"``), an
    hf:// handle or a folder. Other arguments as in ``embed``. Returns ``TagResult`` or a list.
    """
    single, sources, model, net, predict, window, rate, hop_samples, block_frames = _prepare(
        audio_or_path, model, "tag", sample_rate, hop, batch_size, short, on_error, block_seconds, engine)
    names = tuple(str(t) for t in model.tags) if model.tags else tuple(
        f"tag_{i}" for i in range(int(model_attribute(model, "num_classes", 0) or 0)))
    runs = _run(sources, predict, sample_rate=rate, window=window, hop=hop_samples, batch_size=int(batch_size),
                short=short, on_error=on_error, block_frames=block_frames, source_rate=sample_rate,
                progress=progress)
    results = []
    for source, (out, times, stream, error) in zip(sources, runs):
        if error is not None:
            out, times = np.zeros((0, len(names)), np.float32), np.zeros(0)
            clip, top = np.zeros(len(names), np.float32), []
        else:
            if out.shape[-1] != len(names):
                raise ValueError(f"The tagger outputs {out.shape[-1]} values per window but has {len(names)} tags.")
            clip = out.mean(axis=0)
            order = np.argsort(-clip, kind="stable")[:max(0, int(top_k))]
            top = [(names[j], float(clip[j])) for j in order]
        results.append(TagResult(out, clip, names, top, times, _describe(source), rate, window / rate,
                                 hop_samples / rate, stream.total / rate, stream.padded, error))
    return results[0] if single else results
