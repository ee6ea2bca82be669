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
from keras_clmr.inference.engines import predictor, resolve_model
from keras_clmr.inference.windows import WindowStream, describe
from keras_clmr.models import encoder_of

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


def _run(
    sources,
    predict,
    *,
    sample_rate,
    window,
    hop,
    batch_size,
    short,
    on_error,
    block_frames,
    source_rate,
    progress,
):
    outputs = [[] for _ in sources]
    starts = [[] for _ in sources]
    streams = [None] * len(sources)
    errors = [None] * len(sources)
    batch = np.zeros((batch_size, window), np.float32)
    owners = []

    def flush():
        n = len(owners)
        size = padded_size(n, batch_size, policy="power_of_two")
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
            stream = WindowStream(
                source, sample_rate, window, hop, short, block_frames, source_rate
            )
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
            results.append(
                (
                    np.stack(outputs[i]).astype(np.float32),
                    np.asarray(starts[i]) / sample_rate,
                    stream,
                    None,
                )
            )
    return results


def _prepare(
    audio_or_path, model, task, sample_rate, hop, batch_size, short, on_error, block_seconds, engine
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
    model, net = resolve_model(model, task)
    window = _attribute(model, "input_samples")
    rate = int(_attribute(model, "sample_rate", audio_lib.DEFAULT_SAMPLE_RATE))
    if window is None:
        raise ValueError(
            f"{type(model).__name__} has no input_samples attribute; cannot window the audio."
        )
    hop_samples = window if hop is None else int(round(float(hop) * rate))
    if hop_samples < 1:
        raise ValueError(f"hop must be > 0 seconds, got {hop}.")
    block_frames = max(window, int(block_seconds * rate))
    predict, _ = predictor(net, engine)
    return single, sources, model, net, predict, int(window), rate, hop_samples, block_frames


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
    progress=False,
    engine="auto",
):
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
        audio_or_path,
        model,
        "embed",
        sample_rate,
        hop,
        batch_size,
        short,
        on_error,
        block_seconds,
        engine,
    )
    runs = _run(
        sources,
        predict,
        sample_rate=rate,
        window=window,
        hop=hop_samples,
        batch_size=int(batch_size),
        short=short,
        on_error=on_error,
        block_frames=block_frames,
        source_rate=sample_rate,
        progress=progress,
    )
    results = []
    for source, (out, times, stream, error) in zip(sources, runs):
        if error is not None:
            out, times = (
                np.zeros((0, _attribute(net, "embedding_dim", 0) or 0), np.float32),
                np.zeros(0),
            )
        results.append(
            Embeddings(
                out,
                times,
                describe(source),
                rate,
                window / rate,
                hop_samples / rate,
                stream.total / rate,
                stream.padded,
                error,
            )
        )
    return results[0] if single else results


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
    progress=False,
    engine="auto",
):
    """Tag probabilities per window and per clip (mean over windows), with the top-k tag names.

    ``model`` is a tagger (``MusicTagger``), a preset name (loaded with ``task="tag"``), an
    hf:// handle or a folder. Other arguments as in ``embed``. Returns ``TagResult`` or a list.
    """
    single, sources, model, net, predict, window, rate, hop_samples, block_frames = _prepare(
        audio_or_path,
        model,
        "tag",
        sample_rate,
        hop,
        batch_size,
        short,
        on_error,
        block_seconds,
        engine,
    )
    names = (
        tuple(str(t) for t in model.tags)
        if model.tags
        else tuple(f"tag_{i}" for i in range(int(_attribute(model, "num_classes", 0) or 0)))
    )
    runs = _run(
        sources,
        predict,
        sample_rate=rate,
        window=window,
        hop=hop_samples,
        batch_size=int(batch_size),
        short=short,
        on_error=on_error,
        block_frames=block_frames,
        source_rate=sample_rate,
        progress=progress,
    )
    results = []
    for source, (out, times, stream, error) in zip(sources, runs):
        if error is not None:
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
        results.append(
            TagResult(
                out,
                clip,
                names,
                top,
                times,
                describe(source),
                rate,
                window / rate,
                hop_samples / rate,
                stream.total / rate,
                stream.padded,
                error,
            )
        )
    return results[0] if single else results
