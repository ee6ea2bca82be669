"""The listening experiment: per feature of the last encoder layer, hear the clips exciting it most.

Every window of every input is embedded; for each feature (and each source collection) only a
running top-k of windows is kept, so memory stays bounded however many files there are. The
selected windows are then cut out again, written as short Ogg Vorbis snippets, and described
in one self-contained static HTML page (inline CSS/JS, no server, no network): a feature picker,
a collection filter (compare in-domain and out-of-domain clips), and per clip an ``<audio>``
player, its start time, source file, tags and, with a tagger, its top predictions. The page
state is in the URL (``index.html#feature=12&collection=gtzan``), so a view can be linked.
"""

import csv
import dataclasses
import html
import json
import os
import warnings

import numpy as np

from keras_clmr.progress import progress_bar

PAGE = "index.html"
DATA = "listening.json"
AUDIO_DIR = "audio"
OWN_FILES = (PAGE, DATA, AUDIO_DIR)
ALL = "all"


class ListeningInputError(ValueError):
    """The inputs hold no usable audio, or the requested features do not exist."""


@dataclasses.dataclass
class _Item:
    """One input clip: a file path or (for prepared datasets) a record to read again later."""

    source: object
    name: str
    collection: str
    tags: tuple = ()


@dataclasses.dataclass
class ListeningPage:
    """Where the page is and what it shows: ``top[feature][collection]`` lists clip ids."""

    path: str
    output_dir: str
    features: list
    collections: list
    clips: dict
    top: dict
    skipped: list


# ----------------------------------------------------------------------------- inputs


def _read_labels_csv(path):
    """``path,labels`` CSV (labels ';'-separated, as the demo corpus writes) -> {path: tags}."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            return {}
        column = (
            "labels"
            if "labels" in reader.fieldnames
            else ("label" if "label" in reader.fieldnames else None)
        )
        return {
            row["path"]: tuple(t for t in (row.get(column) or "").split(";") if t) if column else ()
            for row in reader
        }


def _csv_tags(path, folder, cache):
    """Tags of ``path`` from the nearest ``labels.csv``, looking up to ``folder``."""
    directory = os.path.dirname(path)
    while True:
        if directory not in cache:
            csv_path = os.path.join(directory, "labels.csv")
            cache[directory] = _read_labels_csv(csv_path) if os.path.exists(csv_path) else {}
        relative = os.path.relpath(path, directory)
        if relative in cache[directory]:
            return cache[directory][relative]
        if directory == folder or os.path.dirname(directory) == directory:
            return ()
        directory = os.path.dirname(directory)


def _folder_items(folder, labels):
    from keras_clmr import audio

    folder = os.path.abspath(folder)
    base = os.path.basename(folder.rstrip(os.sep)) or folder
    cache, items = {}, []
    for path in audio.list_audio_files(folder):
        relative = os.path.relpath(path, folder)
        parts = relative.split(os.sep)
        collection = parts[0] if len(parts) > 1 else base
        tags = labels.get(path, labels.get(relative)) or _csv_tags(path, folder, cache)
        items.append(_Item(path, os.path.join(base, relative), collection, tuple(tags)))
    return items


def _is_prepared(path):
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "manifest.json"))


def _prepared_items(folder):
    with open(os.path.join(folder, "manifest.json")) as file:
        manifest = json.load(file)
    names = list(manifest.get("labels") or [])
    dataset = str(manifest.get("dataset") or "")
    # Named datasets (mtat, gtzan) keep their name; generic ones ("folder", "csv") the folder's.
    collection = (
        dataset
        if dataset not in ("", "folder", "csv")
        else os.path.basename(os.path.abspath(folder))
    )
    items = []
    for clip in _prepared_records(folder, manifest):
        tags = tuple(names[i] for i in clip["labels"] if 0 <= i < len(names))
        items.append(
            _Item(
                ("prepared", folder, clip["shard"], clip["id"]),
                f"{collection}/{clip['id']}",
                collection,
                tags,
            )
        )
    return items, int(manifest["sample_rate"])


def _prepared_records(folder, manifest, wanted=None, with_audio=False):
    """Iterate the clips of a prepared dataset (id, labels, shard; audio when asked)."""
    import tensorflow as tf

    features = {"id": tf.io.FixedLenFeature([], tf.string), "labels": tf.io.VarLenFeature(tf.int64)}
    if with_audio:
        features["audio"] = tf.io.FixedLenFeature([], tf.string)
    for shard in manifest["shards"]:
        if wanted is not None and shard["file"] not in wanted:
            continue
        for record in tf.data.TFRecordDataset(os.path.join(folder, shard["file"])):
            parsed = tf.io.parse_single_example(record, features)
            clip_id = parsed["id"].numpy().decode("utf-8")
            if wanted is not None and clip_id not in wanted[shard["file"]]:
                continue
            clip = {
                "id": clip_id,
                "shard": shard["file"],
                "labels": [int(i) for i in tf.sparse.to_dense(parsed["labels"]).numpy()],
            }
            if with_audio:
                clip["audio"] = (
                    np.frombuffer(parsed["audio"].numpy(), "<i2").astype(np.float32) / 32768.0
                )
            yield clip


def _collect_items(inputs, labels):
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items, rates = [], {}
    for entry in inputs:
        entry = os.fspath(entry)
        if _is_prepared(entry):
            found, rate = _prepared_items(entry)
            rates[entry] = rate
            items += found
        elif os.path.isdir(entry):
            items += _folder_items(entry, labels)
        elif os.path.isfile(entry):
            parent = os.path.basename(os.path.dirname(os.path.abspath(entry))) or "files"
            tags = labels.get(entry, labels.get(os.path.basename(entry), ()))
            items.append(
                _Item(entry, os.path.join(parent, os.path.basename(entry)), parent, tuple(tags))
            )
        else:
            raise FileNotFoundError(
                f"{entry}: no such file or folder; pass audio files, folders of audio or "
                "prepared dataset folders (with manifest.json)."
            )
    for item in items:
        if item.collection == ALL:  # "all" names the merged view in the page
            item.collection = "all (folder)"
    if not items:
        raise ListeningInputError(
            f"No audio found in {list(map(os.fspath, inputs))}; pass folders holding audio files "
            "(wav, flac, mp3, ogg, ...) or prepared dataset folders."
        )
    return items, rates


def _read_manifest(folder):
    with open(os.path.join(folder, "manifest.json")) as file:
        return json.load(file)


def _clips(items, indices, sample_rate, decode_files):
    """Yield ``(index, audio)`` for ``items[indices]`` in order, one clip in memory at a time.

    Files come as their path (``decode_files=False``: ``embed`` streams them) or decoded at
    ``sample_rate``; prepared clips are decoded while each needed shard is read once, in order.
    """
    from keras_clmr import audio

    streams = {}
    wanted = {}
    for index in indices:
        if isinstance(items[index].source, tuple):
            _, folder, shard, clip_id = items[index].source
            wanted.setdefault(folder, {}).setdefault(shard, set()).add(clip_id)
    for index in indices:
        item = items[index]
        if not isinstance(item.source, tuple):
            yield (
                index,
                (audio.load(item.source, sample_rate=sample_rate) if decode_files else item.source),
            )
            continue
        _, folder, shard, clip_id = item.source
        if folder not in streams:
            manifest = _read_manifest(folder)
            streams[folder] = (
                _prepared_records(folder, manifest, wanted[folder], with_audio=True),
                int(manifest["sample_rate"]),
            )
        stream, rate = streams[folder]
        for clip in stream:
            if clip["shard"] == shard and clip["id"] == clip_id:
                data = clip["audio"]
                yield (
                    index,
                    (data if rate == sample_rate else audio.resample(data, rate, sample_rate)),
                )
                break
        else:
            raise ListeningInputError(
                f"{item.name}: the clip is no longer in {folder}; prepare it again."
            )


# ----------------------------------------------------------------------------- selection


class _RunningTopK:
    """Per (feature, collection), the ``k`` largest activations seen and their windows."""

    def __init__(self, features, k):
        self.features = np.asarray(features)
        self.k = int(k)
        self.values = {}
        self.items = {}
        self.windows = {}

    def update(self, collection, item, activations, best_window_only=True):
        """Merge one clip's activations [windows, all features] into the collection's top-k.

        With ``best_window_only`` a clip competes with its best window per feature, so the
        top-k of a feature are k different clips rather than neighbouring windows of one.
        """
        chosen = activations[:, self.features].T.astype(np.float32)  # [F, windows]
        if best_window_only:
            best = np.argmax(chosen, axis=1)
            chosen = np.take_along_axis(chosen, best[:, None], 1)
            window_index = best[:, None].astype(np.int64)
        else:
            window_index = np.broadcast_to(np.arange(chosen.shape[1]), chosen.shape).astype(
                np.int64
            )
        if collection not in self.values:
            shape = (len(self.features), 0)
            self.values[collection] = np.zeros(shape, np.float32)
            self.items[collection] = np.zeros(shape, np.int64)
            self.windows[collection] = np.zeros(shape, np.int64)
        values = np.concatenate([self.values[collection], chosen], axis=1)
        items = np.concatenate(
            [self.items[collection], np.full_like(chosen, item, dtype=np.int64)], axis=1
        )
        windows = np.concatenate([self.windows[collection], window_index], axis=1)
        keep = np.argsort(-values, axis=1, kind="stable")[:, : self.k]
        self.values[collection] = np.take_along_axis(values, keep, 1)
        self.items[collection] = np.take_along_axis(items, keep, 1)
        self.windows[collection] = np.take_along_axis(windows, keep, 1)

    def ranking(self, row, collection):
        """[(activation, item, window)] of feature row ``row``: one collection or all merged."""
        names = sorted(self.values) if collection == ALL else [collection]
        entries = [
            (
                float(self.values[c][row, j]),
                int(self.items[c][row, j]),
                int(self.windows[c][row, j]),
            )
            for c in names
            for j in range(self.values[c].shape[1])
        ]
        entries.sort(key=lambda e: (-e[0], e[1], e[2]))
        return entries[: self.k]


def _feature_indices(features, dimension):
    if features is None:
        return list(range(dimension))
    if isinstance(features, (int, np.integer)):
        if not 1 <= features <= dimension:
            raise ListeningInputError(
                f"features={features} asks for more features than the encoder's {dimension}; "
                f"use 1..{dimension}."
            )
        return list(range(int(features)))
    chosen = [int(f) for f in features]
    bad = [f for f in chosen if not 0 <= f < dimension]
    if bad or not chosen:
        raise ListeningInputError(
            f"Features {bad or chosen} do not exist: the encoder has {dimension} features, "
            f"numbered 0..{dimension - 1}."
        )
    return list(dict.fromkeys(chosen))


# ----------------------------------------------------------------------------- output


def _write_snippet(path, data, sample_rate):
    import soundfile

    soundfile.write(path, np.clip(data, -1.0, 1.0), sample_rate, format="OGG", subtype="VORBIS")


def _predictions(tagger, snippets, sample_rate, top_k):
    """The tagger's top-``top_k`` (tag, probability) per snippet array, via ``keras_clmr.tag``."""
    if tagger is None or not snippets:
        return [None] * len(snippets)
    import keras_clmr

    results = keras_clmr.tag(
        list(snippets), model=tagger, sample_rate=sample_rate, top_k=top_k, short="pad"
    )
    return [[(name, round(float(p), 4)) for name, p in r.top] for r in results]


def listening_page(
    encoder,
    audio_files_or_prepared_dir,
    output_dir,
    tagger=None,
    features=None,
    top_k=5,
    labels=None,
    hop=None,
    best_window_only=True,
    prediction_top_k=3,
    overwrite=False,
    progress=True,
    title=None,
    batch_size=32,
):
    """Build the listening page for ``encoder`` over audio files/folders/prepared datasets.

    Args:
        encoder: a keras.Model (encoder, tagger or pretrainer) or preset name, as for ``embed``.
        audio_files_or_prepared_dir: a file, a folder (searched recursively; a subfolder is a
            source collection; a ``labels.csv`` with ``path,labels`` columns gives tags), a
            prepared dataset folder (``manifest.json``), or a list of them.
        output_dir: the page folder (``index.html``, ``listening.json``, ``audio/*.ogg``),
            written atomically; an existing folder is replaced only when it is a previous page
            or ``overwrite`` is true.
        tagger: an optional tagger (model or preset name) whose top predictions are shown.
        features: None (all), a count n (features 0..n-1) or a list of feature numbers.
        top_k: clips kept per feature and per collection.
        labels: optional {path or file name: tags} for inputs without a labels.csv.
        hop: seconds between windows (default: non-overlapping windows).
        best_window_only: a clip enters a feature's ranking with its best window only (so
            the top-k are k different clips); False ranks all windows.
        prediction_top_k: how many of the tagger's tags to show per clip.

    Returns:
        :class:`ListeningPage`.
    """
    import keras_clmr
    from keras_clmr.io import atomic_folder, atomic_write_json, atomic_write_text

    if int(top_k) < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    items, _ = _collect_items(audio_files_or_prepared_dir, dict(labels or {}))
    if isinstance(encoder, str):
        encoder = keras_clmr.load_pretrained(encoder, task="embed")
    net = _inner_encoder(encoder)
    model_rate = int(
        getattr(net, "sample_rate", None) or getattr(encoder, "sample_rate", None) or 22050
    )
    if getattr(net, "embedding_dim", None) is not None:
        _feature_indices(features, int(net.embedding_dim))  # fail before the long pass
    topk, chosen, meta, skipped = None, None, None, []
    bar = progress_bar(
        len(items), progress=bool(progress), desc="listening page", unit="file", leave=True
    )
    try:
        for index, source in _clips(items, range(len(items)), model_rate, decode_files=False):
            item = items[index]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = keras_clmr.embed(
                    source, model=encoder, hop=hop, on_error="skip", batch_size=batch_size
                )
            for warning in caught:
                warnings.warn(f"{item.name}: {warning.message}", stacklevel=2)
            bar.update(1)
            if result.error is not None:
                skipped.append((item.name, result.error))
                warnings.warn(f"Skipping {item.name}: {result.error}", stacklevel=2)
                continue
            if topk is None:
                chosen = _feature_indices(features, result.embeddings.shape[1])
                topk = _RunningTopK(chosen, top_k)
                meta = {
                    "sample_rate": result.sample_rate,
                    "window": result.window_seconds,
                    "hop": result.hop_seconds,
                }
            topk.update(item.collection, index, result.embeddings, best_window_only)
    finally:
        bar.close()
    if topk is None:
        raise ListeningInputError(
            f"None of the {len(items)} inputs could be embedded: {skipped[:3]} ..."
        )

    collections = sorted(topk.values)
    top = {}
    needed = {}
    for row, feature in enumerate(chosen):
        top[feature] = {}
        for collection in [ALL] + collections:
            ranking = topk.ranking(row, collection)
            top[feature][collection] = [(value, item, window) for value, item, window in ranking]
            for _, item, window in ranking:
                needed.setdefault(item, set()).add(window)

    rate = meta["sample_rate"]
    window_samples = int(round(meta["window"] * rate))
    hop_samples = int(round(meta["hop"] * rate))
    clips, clip_ids = {}, {}
    with atomic_folder(output_dir, overwrite=overwrite, own_files=OWN_FILES) as folder:
        os.makedirs(os.path.join(folder, AUDIO_DIR))
        for item_index, data in _clips(items, sorted(needed), rate, decode_files=True):
            item = items[item_index]
            windows = sorted(needed[item_index])
            snippets = []
            for window in windows:
                start = window * hop_samples
                snippet = data[start : start + window_samples]
                snippets.append(np.pad(snippet, (0, window_samples - len(snippet))))
            predictions = _predictions(tagger, snippets, rate, prediction_top_k)
            for window, snippet, predicted in zip(windows, snippets, predictions):
                clip_id = f"c{len(clips):05d}"
                file_name = f"{AUDIO_DIR}/{clip_id}.ogg"
                _write_snippet(os.path.join(folder, file_name), snippet, rate)
                clip_ids[(item_index, window)] = clip_id
                clips[clip_id] = {
                    "audio": file_name,
                    "file": item.name,
                    "collection": item.collection,
                    "start": round(window * hop_samples / rate, 3),
                    "duration": round(window_samples / rate, 3),
                    "tags": list(item.tags),
                    "predictions": predicted,
                }
        page_top = {
            str(feature): {
                collection: [
                    [clip_ids[(item, window)], round(value, 5)] for value, item, window in ranking
                ]
                for collection, ranking in by_collection.items()
            }
            for feature, by_collection in top.items()
        }
        payload = {
            "title": title or f"Listening experiment: {_model_name(encoder)}",
            "model": _model_name(encoder),
            "features": chosen,
            "collections": collections,
            "top_k": int(top_k),
            "sample_rate": rate,
            "window_seconds": meta["window"],
            "files": len(items),
            "skipped": [list(s) for s in skipped],
            "clips": clips,
            "top": page_top,
        }
        atomic_write_json(os.path.join(folder, DATA), payload)
        atomic_write_text(os.path.join(folder, PAGE), render_page(payload))
    page_path = os.path.join(os.path.abspath(output_dir), PAGE)
    return ListeningPage(
        page_path, os.path.abspath(output_dir), chosen, collections, clips, page_top, skipped
    )


def _inner_encoder(model):
    """The encoder of a tagger (``.backbone``) or pretrainer (``.encoder``), else the model."""
    for attribute in ("backbone", "encoder"):
        inner = getattr(model, attribute, None)
        if inner is not None and hasattr(inner, "layers"):
            return inner
    return model


def _model_name(model):
    if isinstance(model, str):
        return model
    metadata = getattr(model, "preset_metadata", None) or {}
    return str(metadata.get("name") or getattr(model, "name", type(model).__name__))


def render_page(payload):
    """The self-contained HTML page for ``payload`` (data inline as JSON, no external resources)."""
    data = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    return _TEMPLATE.replace("__TITLE__", html.escape(payload["title"])).replace("__DATA__", data)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; }
.controls { display: flex; gap: 1em; align-items: center; flex-wrap: wrap; margin-bottom: 1em; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 0.35em 0.5em; text-align: left;
         vertical-align: middle; }
th { background: #f4f4f4; }
td.num { font-variant-numeric: tabular-nums; }
.tag { display: inline-block; background: #eef; border-radius: 3px; padding: 0 0.3em; margin: 1px; }
.pred { display: inline-block; background: #efe; border-radius: 3px; padding: 0 0.3em;
        margin: 1px; }
.muted { color: #777; }
audio { height: 2em; }
</style>
</head>
<body>
<h1 id="title"></h1>
<p class="muted" id="summary"></p>
<div class="controls">
  <label>Feature <select id="feature"></select></label>
  <button id="previous" type="button">&larr;</button><button id="next" type="button">&rarr;</button>
  <label>Collection <select id="collection"></select></label>
  <span id="count" class="muted"></span>
</div>
<table>
  <thead><tr><th>#</th><th>activation</th><th>listen</th><th>start</th><th>file</th><th>collection</th>
  <th>tags</th><th>predicted</th></tr></thead>
  <tbody id="rows"></tbody>
</table>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const featureSelect = document.getElementById("feature");
const collectionSelect = document.getElementById("collection");
const rowsBody = document.getElementById("rows");

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function clock(seconds) {
  const minutes = Math.floor(seconds / 60);
  return minutes + ":" + (seconds - 60 * minutes).toFixed(1).padStart(4, "0");
}

function render() {
  const feature = featureSelect.value;
  const collection = collectionSelect.value;
  const ranking = (DATA.top[feature] || {})[collection] || [];
  rowsBody.replaceChildren();
  ranking.forEach(function (entry, rank) {
    const clip = DATA.clips[entry[0]];
    const row = element("tr");
    row.dataset.clip = entry[0];
    row.appendChild(element("td", String(rank + 1), "num"));
    row.appendChild(element("td", entry[1].toFixed(3), "num"));
    const player = element("td");
    const audio = element("audio");
    audio.controls = true;
    audio.preload = "none";
    audio.src = clip.audio;
    player.appendChild(audio);
    row.appendChild(player);
    row.appendChild(element("td", clock(clip.start), "num"));
    row.appendChild(element("td", clip.file));
    row.appendChild(element("td", clip.collection));
    const tags = element("td");
    clip.tags.forEach(function (tag) { tags.appendChild(element("span", tag, "tag")); });
    row.appendChild(tags);
    const predicted = element("td");
    (clip.predictions || []).forEach(function (p) {
      predicted.appendChild(element("span", p[0] + " " + p[1].toFixed(2), "pred"));
    });
    row.appendChild(predicted);
    rowsBody.appendChild(row);
  });
  document.getElementById("count").textContent = ranking.length + " clip(s)";
  const state = "feature=" + encodeURIComponent(feature) +
    "&collection=" + encodeURIComponent(collection);
  if (location.hash.slice(1) !== state) history.replaceState(null, "", "#" + state);
}

function applyHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const feature = params.get("feature"), collection = params.get("collection");
  if (feature && DATA.top[feature]) featureSelect.value = feature;
  if (collection && [...collectionSelect.options].some(o => o.value === collection)) {
    collectionSelect.value = params.get("collection");
  }
}

document.getElementById("title").textContent = DATA.title;
document.getElementById("summary").textContent = DATA.files + " file(s), " + DATA.features.length +
  " feature(s), top " + DATA.top_k + " windows of " + DATA.window_seconds.toFixed(2) +
  " s per feature and collection" +
  (DATA.skipped.length ? "; " + DATA.skipped.length + " skipped (listening.json)" : "") + ".";
DATA.features.forEach(function (feature) {
  const best = (DATA.top[String(feature)].all[0] || [null, NaN])[1];
  const option = element("option", "feature " + feature + " (max " + best.toFixed(2) + ")");
  option.value = String(feature);
  featureSelect.appendChild(option);
});
["all"].concat(DATA.collections).forEach(function (name) {
  const option = element("option", name === "all" ? "all collections" : name);
  option.value = name;
  collectionSelect.appendChild(option);
});
featureSelect.addEventListener("change", render);
collectionSelect.addEventListener("change", render);
document.getElementById("previous").addEventListener("click", function () {
  featureSelect.selectedIndex = Math.max(0, featureSelect.selectedIndex - 1); render();
});
document.getElementById("next").addEventListener("click", function () {
  const last = featureSelect.options.length - 1;
  featureSelect.selectedIndex = Math.min(last, featureSelect.selectedIndex + 1); render();
});
window.addEventListener("hashchange", function () { applyHash(); render(); });
applyHash();
render();
</script>
</body>
</html>
"""
