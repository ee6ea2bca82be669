"""``embed`` and ``tag``: one or many audio files or arrays -> per-window outputs with start times.

Audio is cut into windows of ``model.input_samples`` samples (59049 for CLMR) every ``hop``
seconds (default: one window, i.e. non-overlapping as in the CLMR evaluation; a remainder
shorter than a window is dropped). Windows are batched, across files when many are given;
memory is bounded by one decoded block, one batch and the [T, D] outputs (see ``windows``).
"""

import dataclasses
import os

import numpy as np

from keras_clmr import audio as audio_lib
from keras_clmr.audio import AudioError
from keras_clmr.batching import padded_size
from keras_clmr.inference.engines import layer_predictor, predictor, resolve_model
from keras_clmr.inference.windows import WindowStream, describe, musicnn_patching
from keras_clmr.models import encoder_of
from keras_clmr.progress import progress_bar

DEFAULT_BLOCK_SECONDS = 30.0


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
    """Per-window ``probabilities`` [T, C], the clip-level mean [C], the ``top`` (name, p) list."""

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


def _attribute(model, name, default=None):
    """``model.<name>``, else that of the encoder inside it (a tagger's or pretrainer's)."""
    for owner in (model, encoder_of(model)):
        if getattr(owner, name, None) is not None:
            return getattr(owner, name)
    return default


def _total_seconds(sources, sample_rate, source_rate):
    """The audio seconds of all sources (the bar's total), None when a file's is unknown."""
    total = 0.0
    for source in sources:
        if isinstance(source, np.ndarray):
            total += len(source) / float(source_rate or sample_rate)
            continue
        try:
            import soundfile

            total += soundfile.info(os.fspath(source)).duration
        except Exception:  # not readable by libsndfile (decoded by ffmpeg), missing, ...
            return None
    return total


@dataclasses.dataclass
class _Plan:
    """What ``embed`` and ``tag`` share: the checked inputs, the model and how to window."""

    single: bool
    sources: list
    model: object
    net: object
    predict: object
    window: int
    rate: int
    hop: int
    block_frames: int
    batch_size: int
    short: str
    on_error: str
    source_rate: int
    patching: object = None  # windows.MelPatching for musicnn models

    def outputs(self, progress):
        """Per source: (outputs [T, K] or None, times [T] or None, the result's common fields).

        Windows of all sources share batches; ``progress`` is one bar in seconds of audio,
        within long files and across many (file i/n as postfix)."""
        sources, window, batch_size = self.sources, self.window, self.batch_size
        outputs = [[] for _ in sources]
        starts = [[] for _ in sources]
        streams = [None] * len(sources)
        errors = [None] * len(sources)
        shape = (window,) if self.patching is None else self.patching.patch_shape
        batch = np.zeros((batch_size, *shape), np.float32)
        owners = []

        def flush():
            n = len(owners)
            size = padded_size(n, batch_size, policy="power_of_two")
            batch[n:size] = 0.0
            out = np.asarray(self.predict(batch[:size]))[:n]
            for row, owner in enumerate(owners):
                outputs[owner].append(out[row])
            owners.clear()

        rate = self.rate
        total = _total_seconds(sources, rate, self.source_rate) if progress is not False else None
        bar = progress_bar(
            total,
            progress=progress,
            desc="audio",
            unit="s",
            bar_format="{l_bar}{bar}| {n:.0f}/"
            + ("{total:.0f}" if total is not None else "?")
            + " s [{elapsed}<{remaining}{postfix}]",
        )
        try:
            for i, source in enumerate(sources):
                stream = WindowStream(
                    source, rate, window, self.hop, self.short, self.block_frames,
                    self.source_rate, self.patching,
                )  # fmt: skip
                streams[i] = stream
                if len(sources) > 1:
                    bar.set_postfix_str(f"file {i + 1}/{len(sources)}")
                shown = 0.0
                try:
                    for start, chunk in stream:
                        batch[len(owners)] = chunk
                        owners.append(i)
                        starts[i].append(start)
                        if len(owners) == batch_size:
                            flush()
                            seen = stream.total / rate
                            bar.update(seen - shown)
                            shown = seen
                except (AudioError, ValueError) as error:
                    if self.on_error == "raise":
                        raise
                    errors[i] = str(error)
                bar.update(stream.total / rate - shown)
            if owners:
                flush()
        finally:
            bar.close()
        for i, source in enumerate(sources):
            out = times = None
            if errors[i] is None:
                out = np.stack(outputs[i]).astype(np.float32)
                times = np.asarray(starts[i]) / rate
            fields = dict(
                source=describe(source),
                sample_rate=rate,
                window_seconds=window / rate,
                hop_seconds=self.hop / rate,
                duration=streams[i].total / rate,
                padded=streams[i].padded,
                error=errors[i],
            )
            yield out, times, fields

    def answer(self, results):
        """One result for one input, the list for a list."""
        return results[0] if self.single else results


def _prepare(
    audio_or_path,
    model,
    task,
    sample_rate,
    hop,
    batch_size,
    short,
    on_error,
    block_seconds,
    engine,
    layer=None,
    progress=None,
):
    single = not isinstance(audio_or_path, (list, tuple))
    sources = [audio_or_path] if single else list(audio_or_path)
    for source in sources:
        if not isinstance(source, (str, os.PathLike, np.ndarray)):
            raise TypeError(
                f"Inputs must be file paths or numpy arrays, got {type(source).__name__}."
            )
    if short not in ("pad", "error"):
        raise ValueError(f"short must be 'pad' or 'error', got {short!r}.")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if sample_rate is not None:
        audio_lib.check_sample_rate(sample_rate)
    model, net = resolve_model(model, task, progress=progress)
    window = _attribute(model, "input_samples")
    rate = int(_attribute(model, "sample_rate", audio_lib.DEFAULT_SAMPLE_RATE))
    if window is None:
        raise ValueError(
            f"{type(model).__name__} has no input_samples attribute; cannot window the audio."
        )
    hop_samples = window if hop is None else int(round(float(hop) * rate))
    if hop_samples < 1:
        raise ValueError(f"hop must be > 0 seconds, got {hop}.")
    patching = musicnn_patching(model)  # musicnn: patches of one whole-file log-mel
    if patching is not None:
        hop_samples = patching.hop_samples(hop)
    block_frames = max(window, int(block_seconds * rate))
    if layer is None:
        predict, _ = predictor(net, engine)
    else:
        predict = layer_predictor(net, layer)
    return _Plan(
        single=single,
        sources=sources,
        model=model,
        net=net,
        predict=predict,
        window=int(window),
        rate=rate,
        hop=hop_samples,
        block_frames=block_frames,
        batch_size=int(batch_size),
        short=short,
        on_error=on_error,
        source_rate=sample_rate,
        patching=patching,
    )


def embed(
    audio_or_path,
    model=None,
    *,
    sample_rate=None,
    hop=None,
    batch_size=32,
    short="pad",
    on_error="raise",
    block_seconds=DEFAULT_BLOCK_SECONDS,
    progress=None,
    engine="auto",
    layer=None,
):
    """Embeddings of one input or a list of inputs (file paths or float arrays).

    Args:
        audio_or_path: a path, a float array [T] / [T, C], or a list of them.
        model: a keras.Model (encoder, tagger or pretrainer), a preset name, an hf:// handle
            or a preset folder (default ``"clmr-mtat"``).
        sample_rate: the rate of array inputs (default: the model's rate). Files are
            resampled to the model's rate.
        hop: seconds between window starts (default: one window, no overlap). musicnn
            models window as musicnn's extractor: 187-frame patches of one whole-file
            log-mel, every 187 frames by default, a hop rounded to whole frames.
        batch_size: windows per forward pass.
        short: a clip shorter than one window is zero-padded ("pad", with a warning) or
            raises ``ClipTooShortError`` ("error").
        on_error: "raise" on the first bad input, or "skip" it (its result has ``.error``).
        block_seconds: how much audio is decoded at a time.
        progress: a progress bar on stderr, in seconds of audio, within long files and
            across many: None (default) only when stderr is a terminal, True always
            (logs, notebooks), False never.
        engine: "keras" (``predict_on_batch``), "onnxruntime" (SampleCNN and taggers on
            it, as an ONNX graph with BatchNorm folded in; same outputs to ~1e-5, faster
            on CPU) or "auto" (onnxruntime where supported, else keras).
        layer: an intermediate feature instead of the embedding (Keras engine): musicnn's
            "max_pool", "mean_pool", "penultimate" (the default embedding), "timbral",
            "temporal", "cnn1"-"cnn3"; vgg's "pool1"-"pool5"; SampleCNN's "block0"-"block10".
            Time-varying features are averaged over time: one vector per window.

    Returns:
        ``Embeddings`` (``.embeddings`` [T, D], ``.times`` [T] start seconds), or a list of them.
    """
    plan = _prepare(
        audio_or_path, model, "embed", sample_rate, hop, batch_size, short, on_error,
        block_seconds, engine, layer, progress=progress,
    )  # fmt: skip
    results = []
    for out, times, fields in plan.outputs(progress):
        if fields["error"] is not None:
            empty_dim = _attribute(plan.net, "embedding_dim", 0) or 0
            out, times = np.zeros((0, empty_dim), np.float32), np.zeros(0)
        results.append(Embeddings(out, times, **fields))
    return plan.answer(results)


def tag(
    audio_or_path,
    model=None,
    *,
    top_k=5,
    sample_rate=None,
    hop=None,
    batch_size=32,
    short="pad",
    on_error="raise",
    block_seconds=DEFAULT_BLOCK_SECONDS,
    progress=None,
    engine="auto",
):
    """Tag probabilities per window and per clip (mean over windows), with the top-k tag names.

    ``model`` is a tagger (``MusicTagger``), a preset name (loaded with ``task="tag"``), an
    hf:// handle or a folder. Other arguments as in ``embed``. Returns ``TagResult`` or a list.
    """
    plan = _prepare(
        audio_or_path, model, "tag", sample_rate, hop, batch_size, short, on_error,
        block_seconds, engine, progress=progress,
    )  # fmt: skip
    model = plan.model
    names = (
        tuple(str(t) for t in model.tags)
        if model.tags
        else tuple(f"tag_{i}" for i in range(int(_attribute(model, "num_classes", 0) or 0)))
    )
    results = []
    for out, times, fields in plan.outputs(progress):
        if fields["error"] is not None:
            out, times = np.zeros((0, len(names)), np.float32), np.zeros(0)
            clip, top = np.zeros(len(names), np.float32), []
        else:
            if out.shape[-1] != len(names):
                raise ValueError(
                    f"The tagger outputs {out.shape[-1]} values per window but has "
                    f"{len(names)} tags."
                )
            clip = out.mean(axis=0)
            order = np.argsort(-clip, kind="stable")[: max(0, int(top_k))]
            top = [(names[j], float(clip[j])) for j in order]
        results.append(TagResult(out, clip, names, top, times, **fields))
    return plan.answer(results)
