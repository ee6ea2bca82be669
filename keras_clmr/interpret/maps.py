"""Embedding map: a collection of files as points in 2-D, coloured by label or folder.

Each file's clip embedding is the mean of its window embeddings (as ``embed`` returns them);
PCA (numpy SVD, the default: deterministic, fast, distances kept where the variance is) or
t-SNE (scikit-learn, neighbourhoods kept) maps them to 2-D. Written as a PNG and as a
self-contained interactive HTML scatter (inline SVG and JS, no network) whose hover shows the
file, its label and coordinates; clicking a legend entry hides or shows that label.
"""

import dataclasses
import html
import json
import os

import numpy as np

PNG = "map.png"
HTML = "map.html"
DATA = "map.json"
OWN_FILES = (PNG, HTML, DATA)
METHODS = ("pca", "tsne")


class MapInputError(ValueError):
    """Too few files, unknown method or labels that do not match the files."""


@dataclasses.dataclass
class EmbeddingMap:
    """``points`` [N, 2] of ``files`` with their ``labels``; paths of the PNG and HTML written."""

    points: np.ndarray
    files: list
    labels: list
    method: str
    explained_variance: list = None
    png: str = None
    html: str = None


def _files_and_labels(files_or_dir, labels):
    from keras_clmr import audio

    if isinstance(files_or_dir, (str, os.PathLike)) and os.path.isdir(files_or_dir):
        root = os.path.abspath(files_or_dir)
        files = audio.list_audio_files(root)
        default = [
            os.path.relpath(os.path.dirname(f), root)
            if os.path.dirname(f) != root
            else os.path.basename(root)
            for f in files
        ]
    else:
        files = [
            os.fspath(f)
            for f in (
                [files_or_dir] if isinstance(files_or_dir, (str, os.PathLike)) else files_or_dir
            )
        ]
        default = [os.path.basename(os.path.dirname(os.path.abspath(f))) for f in files]
    if not files:
        raise MapInputError(
            f"No audio files found in {files_or_dir}; pass a folder of audio or a list of files."
        )
    if labels is None:
        return files, default
    if isinstance(labels, dict):
        return files, [
            str(labels.get(f, labels.get(os.path.basename(f), "unlabelled"))) for f in files
        ]
    labels = [str(label) for label in labels]
    if len(labels) != len(files):
        raise MapInputError(
            f"Got {len(labels)} labels for {len(files)} files; pass one label per file "
            "(in the sorted file order) or a {file: label} dict."
        )
    return files, labels


def project(embeddings, method="pca", seed=0, perplexity=None):
    """[N, D] -> ([N, 2], explained variance ratios or None) by PCA (SVD) or t-SNE."""
    embeddings = np.asarray(embeddings, np.float64)
    count = len(embeddings)
    if method == "pca":
        if count < 2:
            raise MapInputError("A PCA map needs at least 2 files.")
        centred = embeddings - embeddings.mean(axis=0)
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        components = vt[:2]
        # A fixed sign per axis (largest loading positive): the same data gives the same picture.
        signs = np.sign(
            components[np.arange(len(components)), np.argmax(np.abs(components), axis=1)]
        )
        components = components * signs[:, None]
        points = centred @ components.T
        if points.shape[1] < 2:
            points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
        total = np.sum(singular**2)
        explained = [float(s**2 / total) if total > 0 else 0.0 for s in singular[:2]]
        return points, explained
    if method == "tsne":
        if count < 4:
            raise MapInputError("A t-SNE map needs at least 4 files; use method='pca' for fewer.")
        from sklearn.manifold import TSNE

        perplexity = float(perplexity or min(30.0, (count - 1) / 3.0))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=int(seed))
        return tsne.fit_transform(embeddings), None
    raise MapInputError(f"method must be one of {METHODS}, got {method!r}.")


def embedding_map(
    files_or_dir,
    model=None,
    labels=None,
    method="pca",
    output_dir=None,
    seed=0,
    perplexity=None,
    hop=None,
    overwrite=False,
    progress=True,
    title=None,
    batch_size=32,
):
    """Embed a collection and draw it in 2-D (PNG + interactive HTML in ``output_dir``).

    Args:
        files_or_dir: a folder (searched recursively) or a list of audio files.
        model: an encoder, tagger or pretrainer, or a preset name (as for ``keras_clmr.embed``).
        labels: None (colour by folder), a list (one per file, sorted order) or {file: label}.
        method: "pca" (default) or "tsne" (scikit-learn).
        output_dir: folder for map.png, map.html and map.json, written atomically (replaced
            when it holds only a previous map, or with ``overwrite``); None writes nothing.

    Returns:
        :class:`EmbeddingMap`.
    """
    import keras_clmr

    if method not in METHODS:
        raise MapInputError(f"method must be one of {METHODS}, got {method!r}.")
    files, labels = _files_and_labels(files_or_dir, labels)
    results = keras_clmr.embed(
        files, model=model, hop=hop, progress=progress, on_error="skip", batch_size=batch_size
    )
    kept = [i for i, r in enumerate(results) if r.error is None]
    if len(kept) < len(files):
        import warnings

        for i in sorted(set(range(len(files))) - set(kept)):
            warnings.warn(f"Skipping {files[i]}: {results[i].error}", stacklevel=2)
    embeddings = (
        np.stack([results[i].embeddings.mean(axis=0) for i in kept]) if kept else np.zeros((0, 0))
    )
    files, labels = [files[i] for i in kept], [labels[i] for i in kept]
    points, explained = project(embeddings, method, seed=seed, perplexity=perplexity)
    result = EmbeddingMap(points, files, labels, method, explained)
    if output_dir is not None:
        from keras_clmr.io import atomic_folder, atomic_write_json, atomic_write_text

        name = title or f"{_model_name(model)}: {len(files)} files ({method.upper()})"
        payload = {
            "title": name,
            "axes": _axis_labels(result),
            "method": method,
            "explained_variance": explained,
            "points": [
                {"file": f, "label": label, "x": float(x), "y": float(y)}
                for f, label, (x, y) in zip(files, labels, points)
            ],
        }
        with atomic_folder(output_dir, overwrite=overwrite, own_files=OWN_FILES) as folder:
            _plot_map(result, os.path.join(folder, PNG), name)
            atomic_write_json(os.path.join(folder, DATA), payload)
            atomic_write_text(os.path.join(folder, HTML), render_map_page(payload))
        result.png = os.path.join(os.path.abspath(output_dir), PNG)
        result.html = os.path.join(os.path.abspath(output_dir), HTML)
    return result


def _model_name(model):
    if model is None or isinstance(model, str):
        return model or "default model"
    return getattr(model, "name", type(model).__name__)


def _axis_labels(result):
    if result.method == "pca" and result.explained_variance:
        return [
            f"PC{i + 1} ({100 * v:.1f} % of variance)"
            for i, v in enumerate(result.explained_variance)
        ]
    return [f"{result.method.upper()} 1", f"{result.method.upper()} 2"]


def _plot_map(result, path, title):
    from keras_clmr.interpret._plotting import pyplot, save_figure

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 6.0))
    colours = plt.get_cmap("tab10" if len(set(result.labels)) <= 10 else "tab20")
    for index, label in enumerate(sorted(set(result.labels))):
        mask = np.array([lab == label for lab in result.labels])
        axis.scatter(
            result.points[mask, 0],
            result.points[mask, 1],
            s=18,
            color=colours(index % colours.N),
            label=label,
            alpha=0.85,
        )
    x_label, y_label = _axis_labels(result)
    axis.set_xlabel(x_label)
    axis.set_ylabel(y_label)
    axis.set_title(title, fontsize=10)
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return save_figure(figure, path)


def render_map_page(payload):
    """The self-contained interactive scatter (inline SVG + JS, data inline as JSON)."""
    data = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    return _TEMPLATE.replace("__TITLE__", html.escape(payload["title"])).replace("__DATA__", data)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.2em; }
#wrap { display: flex; gap: 1.5em; align-items: flex-start; }
svg { border: 1px solid #ddd; background: #fff; }
circle { stroke: #fff; stroke-width: 0.8; cursor: pointer; }
circle:hover, circle.active { stroke: #000; stroke-width: 2; }
#legend div { cursor: pointer; margin: 2px 0; user-select: none; }
#legend div.off { opacity: 0.35; }
#legend span { display: inline-block; width: 0.8em; height: 0.8em; border-radius: 50%;
               margin-right: 0.4em; }
#info { min-height: 3.5em; margin-top: 0.8em; font-size: 0.9em; white-space: pre-line; }
</style>
</head>
<body>
<h1 id="title"></h1>
<div id="wrap">
  <svg id="plot" width="640" height="520" viewBox="0 0 640 520" role="img"></svg>
  <div><div id="legend"></div><div id="info">Hover over a point to see its file.</div></div>
</div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f",
                 "#bcbd22", "#17becf"];
const SVG = "http://www.w3.org/2000/svg";
const plot = document.getElementById("plot");
const info = document.getElementById("info");
const labels = [...new Set(DATA.points.map(p => p.label))].sort();
const colour = {};
labels.forEach((label, i) => { colour[label] = PALETTE[i % PALETTE.length]; });
const hidden = new Set();
const W = 640, H = 520, M = 30;
const xs = DATA.points.map(p => p.x), ys = DATA.points.map(p => p.y);
const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
const sx = x => M + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (W - 2 * M);
const sy = y => H - M - (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5) * (H - 2 * M);

function draw() {
  plot.replaceChildren();
  DATA.points.forEach(function (p, i) {
    if (hidden.has(p.label)) return;
    const c = document.createElementNS(SVG, "circle");
    c.setAttribute("cx", sx(p.x).toFixed(1));
    c.setAttribute("cy", sy(p.y).toFixed(1));
    c.setAttribute("r", "5");
    c.setAttribute("fill", colour[p.label]);
    c.dataset.index = String(i);
    const tip = document.createElementNS(SVG, "title");
    tip.textContent = p.file;
    c.appendChild(tip);
    c.addEventListener("mouseover", function () {
      info.textContent = p.file + "\\nlabel: " + p.label +
        "\\n(" + p.x.toFixed(3) + ", " + p.y.toFixed(3) + ")";
    });
    plot.appendChild(c);
  });
  plot.appendChild(axisLabel(DATA.axes[0], W / 2, H - 8, false));
  plot.appendChild(axisLabel(DATA.axes[1], 12, H / 2, true));
}

function axisLabel(text, x, y, rotate) {
  const node = document.createElementNS(SVG, "text");
  node.setAttribute("x", String(x));
  node.setAttribute("y", String(y));
  node.setAttribute("text-anchor", "middle");
  node.setAttribute("font-size", "12");
  if (rotate) node.setAttribute("transform", "rotate(-90 " + x + " " + y + ")");
  node.textContent = text;
  return node;
}

document.getElementById("title").textContent = DATA.title;
const legend = document.getElementById("legend");
labels.forEach(function (label) {
  const row = document.createElement("div");
  const dot = document.createElement("span");
  dot.style.background = colour[label];
  row.appendChild(dot);
  const count = DATA.points.filter(p => p.label === label).length;
  row.appendChild(document.createTextNode(label + " (" + count + ")"));
  row.dataset.label = label;
  row.addEventListener("click", function () {
    if (hidden.has(label)) hidden.delete(label); else hidden.add(label);
    row.classList.toggle("off", hidden.has(label));
    draw();
  });
  legend.appendChild(row);
});
draw();
</script>
</body>
</html>
"""
