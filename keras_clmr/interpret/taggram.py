"""Taggram: a tagger's tag probabilities over time for one file (tags x time image).

The rows are the ``top_n`` tags by clip mean (the clip-level prediction), strongest at the top;
the columns are the model's windows at their start times. This is the picture musicnn users
know; any keras_clmr tagger (MusicTagger on SampleCNN, FCN or Musicnn) can draw it.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass
class Taggram:
    """``probabilities`` [windows, top_n] of the ``tags`` shown, window start ``times`` (s)."""

    probabilities: np.ndarray
    tags: list
    times: np.ndarray
    window_seconds: float
    hop_seconds: float
    source: str
    path: str = None


def taggram(path, model=None, top_n=10, hop=None, output=None, title=None, batch_size=32):
    """Tag ``path`` window by window and draw the ``top_n`` tags over time.

    Args:
        path: an audio file (or a float array at the model's sample rate).
        model: a tagger, preset name or folder, as for ``keras_clmr.tag`` (default: its default).
        top_n: how many tags to show, chosen by clip-level mean probability.
        hop: seconds between windows (default: non-overlapping; smaller gives a finer picture).
        output: a PNG path (written atomically); None draws nothing.

    Returns:
        :class:`Taggram`.
    """
    import keras_clmr

    if int(top_n) < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}.")
    result = keras_clmr.tag(path, model=model, hop=hop, top_k=int(top_n), batch_size=batch_size)
    order = np.argsort(-result.clip, kind="stable")[: int(top_n)]
    shown = Taggram(
        np.asarray(result.probabilities)[:, order],
        [result.tags[j] for j in order],
        np.asarray(result.times),
        float(result.window_seconds),
        float(result.hop_seconds),
        result.source,
    )
    if output is not None:
        shown.path = plot_taggram(shown, output, title=title)
    return shown


def plot_taggram(result, path, title=None):
    """Write ``result`` as a PNG (atomically): tags on the y axis, time (s) on the x axis."""
    from keras_clmr.interpret._plotting import pyplot, save_figure

    plt = pyplot()
    windows, count = result.probabilities.shape
    figure, axis = plt.subplots(figsize=(min(14.0, 4.0 + 0.12 * windows), 1.2 + 0.28 * count))
    # Column i spans window i's start to the next start (one hop), so overlapping windows tile.
    edges = np.concatenate([result.times, [result.times[-1] + result.hop_seconds]])
    image = axis.pcolormesh(
        edges,
        np.arange(count + 1),
        result.probabilities.T,
        cmap="viridis",
        vmin=0.0,
        vmax=1.0,
        shading="flat",
    )
    axis.set_yticks(np.arange(count) + 0.5)
    axis.set_yticklabels(result.tags, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("time (s)")
    axis.set_title(title or f"Taggram: {result.source}", fontsize=9)
    figure.colorbar(image, ax=axis, label="probability", pad=0.01)
    return save_figure(figure, path)
