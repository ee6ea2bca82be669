"""tf.data pipelines over a directory written by ``keras_clmr.data.prepare``.

Any ``tf.io.gfile`` path works (local, ``gs://``, ...). Three views of the same shards:

- ``pretraining_dataset``: view pairs [B, 2, S] cropped independently from each whole clip
  (default, as CLMR does), or random source segments [B, S] (``view_source="segment"``) for
  the contrastive pretrainers, read straight from the views' bytes in local shards
  (``keras_clmr.data.records``). Clips shorter than S are skipped (as CLMR's
  ContrastiveDataset does) or zero-padded with ``short_clips="pad"``.
- ``evaluation_dataset``: every non-overlapping chunk of every clip, in clip order, with
  the clip's index and label vector, so an evaluator can average predictions per clip.
- ``supervised_dataset``: one random crop per clip per epoch with its multi-hot/one-hot label.

``clip_table`` gives the ids, labels and lengths of a split's clips by clip index.
"""

import csv
import io
import json

import numpy as np

from keras_clmr.data.prepare import CLIPS, FORMAT, MANIFEST

AUTOTUNE = -1  # tf.data.AUTOTUNE, without importing TensorFlow at module import


def _tf():
    import tensorflow as tf

    return tf


def _join(base, name):
    return base.rstrip("/") + "/" + name


def is_prepared(path):
    """True when ``path`` is a directory with a manifest.json (a finished preparation)."""
    if not path:
        return False
    try:
        return bool(_tf().io.gfile.exists(_join(str(path), MANIFEST)))
    except Exception:  # unreachable filesystem or bad scheme: not a prepared directory
        return False


def load_manifest(path):
    """The manifest of a prepared directory.

    (labels, task, splits with counts, sample_rate, shards...)
    """
    tf = _tf()
    manifest_path = _join(str(path), MANIFEST)
    if not tf.io.gfile.exists(manifest_path):
        raise FileNotFoundError(
            f"{path}: no {MANIFEST}; this is not a prepared directory (or its preparation "
            "did not finish). Run `python -m keras_clmr.data.prepare --dataset=... "
            f"--source=... --output={path}`."
        )
    with tf.io.gfile.GFile(manifest_path, "r") as file:
        manifest = json.load(file)
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}; "
            "prepare the data again with this version."
        )
    return manifest


def _split_entry(manifest, split, path):
    splits = manifest["splits"]
    if split not in splits or not splits[split]["count"]:
        available = sorted(k for k, v in splits.items() if v["count"])
        raise ValueError(f"{path}: split {split!r} has no clips; available: {available}.")
    return splits[split]


def shard_files(data_dir, split, manifest=None):
    """Paths of the shards of ``split`` (in clip order)."""
    manifest = manifest or load_manifest(data_dir)
    entry = _split_entry(manifest, split, data_dir)
    return [_join(str(data_dir), name) for name in entry["shards"]]


def _split_rows(data_dir, split, manifest):
    """The clips.tsv rows of ``split`` (dicts of strings) by clip index."""
    _split_entry(manifest, split, data_dir)
    path = _join(str(data_dir), manifest.get("clips_file", CLIPS))
    with _tf().io.gfile.GFile(path, "r") as file:
        rows = [
            r
            for r in csv.DictReader(io.StringIO(file.read()), delimiter="\t")
            if r["split"] == split
        ]
    rows.sort(key=lambda r: int(r["index"]))
    return rows


def clip_table(data_dir, split):
    """The clips of ``split`` by clip index.

    dict(ids [n], labels float32 [n, L], num_samples int64 [n], positions int64 [n]).
    ``labels`` is multi-hot (multilabel) or one-hot (multiclass).
    """
    manifest = load_manifest(data_dir)
    rows = _split_rows(data_dir, split, manifest)
    labels = np.zeros((len(rows), len(manifest["labels"])), np.float32)
    for i, row in enumerate(rows):
        for j in filter(None, row["labels"].split(";")):
            labels[i, int(j)] = 1.0
    return {
        "ids": [r["id"] for r in rows],
        "labels": labels,
        "num_samples": np.array([int(r["num_samples"]) for r in rows], np.int64),
        "positions": np.array([int(r["position"]) for r in rows], np.int64),
    }


def _is_local(path):
    return "://" not in str(path) or str(path).startswith("file://")


def _local(path):
    return str(path)[len("file://") :] if str(path).startswith("file://") else str(path)


def _reprepare_hint(data_dir):
    return (
        f"re-run the `keras-clmr prepare ... --output={data_dir}` command that made it (it "
        "rewrites damaged shards and keeps intact ones)"
    )


def pcm_index(data_dir, split, manifest=None):
    """Where every clip of ``split`` sits in its local shard, for reading views directly.

    dict(files: shard paths [F], file int64 [n], offset int64 [n] (byte offset of the clip's
    int16 PCM in its shard), num_samples int64 [n]) in clip-index order. Read from clips.tsv
    (``shard``/``offset`` columns) or, for preparations made before those columns, found by
    scanning the shards' record headers. Raises ``records.ShardLayoutError`` naming the
    command that re-prepares the data when a shard does not match its manifest.
    """
    from keras_clmr.data import records

    manifest = manifest or load_manifest(data_dir)
    rows = _split_rows(data_dir, split, manifest)
    names = _split_entry(manifest, split, data_dir)["shards"]
    files = [_local(_join(str(data_dir), name)) for name in names]
    expected = {s["file"]: s for s in manifest.get("shards", [])}
    sizes = []
    for name, path in zip(names, files):
        try:
            size = _tf().io.gfile.stat(path).length
        except Exception:
            raise records.ShardLayoutError(
                f"{path} is missing; {_reprepare_hint(data_dir)}."
            ) from None
        wanted = expected.get(name, {}).get("bytes")
        if wanted is not None and int(wanted) != size:
            raise records.ShardLayoutError(
                f"{path} has {size} bytes, its manifest says {wanted}; {_reprepare_hint(data_dir)}."
            )
        sizes.append(size)
    num_samples = np.array([int(r["num_samples"]) for r in rows], np.int64)
    if rows and all(r.get("shard") and r.get("offset") for r in rows):
        position = {name: i for i, name in enumerate(names)}
        unknown = sorted({r["shard"] for r in rows} - set(position))
        if unknown:
            raise records.ShardLayoutError(
                f"{data_dir}: clips.tsv names shards {unknown[:3]} that the manifest does not "
                f"list for {split!r}; {_reprepare_hint(data_dir)}."
            )
        file = np.array([position[r["shard"]] for r in rows], np.int64)
        offset = np.array([int(r["offset"]) for r in rows], np.int64)
    else:  # prepared before clips.tsv had the offsets: find them in the record headers
        file, offset, scanned = [], [], []
        for i, (name, path) in enumerate(zip(names, files)):
            offsets, lengths = records.scan_shard(path)
            records_expected = expected.get(name, {}).get("records")
            if records_expected is not None and int(records_expected) != len(offsets):
                raise records.ShardLayoutError(
                    f"{path} holds {len(offsets)} records, its manifest says "
                    f"{records_expected}; {_reprepare_hint(data_dir)}."
                )
            file.append(np.full(len(offsets), i, np.int64))
            offset.append(offsets)
            scanned.append(lengths)
        file, offset = np.concatenate(file), np.concatenate(offset)
        if not np.array_equal(np.concatenate(scanned), num_samples):
            raise records.ShardLayoutError(
                f"{data_dir}: the shards' clips are not those of clips.tsv; "
                f"{_reprepare_hint(data_dir)}."
            )
    end = offset + 2 * num_samples
    beyond = np.flatnonzero(end > np.asarray(sizes, np.int64)[file]) if len(file) else []
    if len(beyond):
        raise records.ShardLayoutError(
            f"{files[file[beyond[0]]]}: clip {rows[beyond[0]]['id']!r} lies beyond the end of "
            f"the file; {_reprepare_hint(data_dir)}."
        )
    return {
        "files": files,
        "sizes": np.asarray(sizes, np.int64),
        "file": file,
        "offset": offset,
        "num_samples": num_samples,
    }


def _parse(record, with_labels=True):
    tf = _tf()
    features = {
        "audio": tf.io.FixedLenFeature([], tf.string),
        "position": tf.io.FixedLenFeature([], tf.int64),
        "num_samples": tf.io.FixedLenFeature([], tf.int64),
    }
    if with_labels:
        features["labels"] = tf.io.VarLenFeature(tf.int64)
    parsed = tf.io.parse_single_example(record, features)
    if with_labels:
        parsed["labels"] = tf.sparse.to_dense(parsed["labels"])
    return parsed


def _label_vector(indices, num_labels):
    tf = _tf()
    return tf.minimum(tf.reduce_sum(tf.one_hot(indices, num_labels, dtype=tf.float32), axis=0), 1.0)


def _pad_bytes(tf, audio, num_samples, target, max_pad):
    """Zero-pad int16 PCM bytes to at least ``target`` samples (adding at most ``max_pad``);
    returns (bytes, new length)."""
    zeros = tf.constant(b"\x00" * (2 * max_pad))
    missing = tf.maximum(tf.cast(target, tf.int64) - num_samples, 0)
    padded = tf.strings.join([audio, tf.strings.substr(zeros, 0, tf.cast(2 * missing, tf.int32))])
    return padded, num_samples + missing


def _random_crop(tf, audio, num_samples, length, seed, count=None):
    """Random ``length``-sample windows of int16 PCM bytes -> float32 [length], or [count, length]
    (independent starts) when ``count`` is given."""
    maxval = num_samples - length + 1
    shape = [] if count is None else [count]
    start = tf.random.stateless_uniform(shape, seed=seed, minval=0, maxval=maxval, dtype=tf.int64)
    window = tf.strings.substr(audio, tf.cast(2 * start, tf.int32), tf.fill(shape, 2 * length))
    samples = tf.io.decode_raw(window, tf.int16, little_endian=True)
    return tf.ensure_shape(tf.cast(samples, tf.float32) / 32768.0, shape + [length])


def _with_seeds(tf, dataset, seed):
    """Attach a stateless-random seed pair [2] to every element: (element, seed_pair).

    A sequential map with a seeded stateful op is reproducible when ``seed`` is set, and,
    unlike zipping with ``Dataset.random``, keeps tf.distribute's FILE auto-sharding working.
    """
    return dataset.map(
        lambda element: (element, tf.random.uniform([2], 0, 2**62, dtype=tf.int64, seed=seed))
    )


def _records(
    tf, files, *, shuffle_files, repeat, seed, deterministic, input_context=None, cycle_length=None
):
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(files) < input_context.num_input_pipelines:
            raise ValueError(
                f"{len(files)} shards cannot be split across {input_context.num_input_pipelines} "
                "input pipelines; prepare with smaller --shard_mb."
            )
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle_files:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 22),
        cycle_length=cycle_length or min(len(files), 8),
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    # Repeat the records, not the file list: FILE auto-sharding needs the file list unrepeated
    # (each pass still gets a new file order from the shuffle above).
    return dataset.repeat() if repeat else dataset


def _options(tf, deterministic):
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    # Multi-worker training shards by file when it can (tf.distribute), else by element.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.AUTO
    return options


VIEW_SOURCES = ("clip", "segment")


def short_clip_counts(data_dir, split, view_samples):
    """How many clips of ``split`` are shorter than ``view_samples`` (skipped in whole-clip
    mode unless padded) and how many are exactly that long (their two views are identical)."""
    lengths = clip_table(data_dir, split)["num_samples"]
    return {
        "clips": int(len(lengths)),
        "shorter": int(np.sum(lengths < view_samples)),
        "exactly_one_view": int(np.sum(lengths == view_samples)),
        "longest": int(lengths.max()) if len(lengths) else 0,
    }


def _report_short_clips(data_dir, split, samples, short_clips, view_source):
    """Log (once per dataset) the clips that are skipped, padded or give identical views."""
    import logging

    counts = short_clip_counts(data_dir, split, samples)
    what = "view" if view_source == "clip" else "source segment"
    if counts["shorter"]:
        action = "skipped" if short_clips == "skip" else "zero-padded"
        logging.warning(
            "%s: %d of %d %r clips are shorter than one %d-sample %s and are %s.",
            data_dir,
            counts["shorter"],
            counts["clips"],
            split,
            samples,
            what,
            action,
        )
    if view_source == "clip" and counts["exactly_one_view"]:
        logging.warning(
            "%s: %d %r clips are exactly one %d-sample view long: both of their views "
            "are the whole clip (identical before augmentation).",
            data_dir,
            counts["exactly_one_view"],
            split,
            samples,
        )
    return counts


READERS = ("auto", "index", "records")


def _clip_entries(tf, index, keep, *, repeat, seed, input_context, group, copies, mix):
    """(file, offset, num_samples) entries of the clips where ``keep``, ``copies`` per clip.

    Shard order is reshuffled every pass; the clips of each ``group`` consecutive shards are
    then pooled and, when ``mix``, put in a random order (a full shuffle over the group, with
    the siblings of ``copies`` > 1 spread apart), otherwise left in order.
    """
    file, offset, num_samples = (index[k][keep] for k in ("file", "offset", "num_samples"))
    count = len(index["files"])
    bounds = np.searchsorted(file, np.arange(count + 1)).astype(np.int64)
    columns = {
        "file": tf.constant(file, tf.int64),
        "offset": tf.constant(offset, tf.int64),
        "num_samples": tf.constant(num_samples, tf.int64),
    }
    bounds_t, sizes = tf.constant(bounds), tf.constant(index["sizes"], tf.int64)
    shards = tf.data.Dataset.from_tensor_slices((index["files"], np.arange(count, dtype=np.int64)))
    if input_context is not None and input_context.num_input_pipelines > 1:
        if count < input_context.num_input_pipelines:
            raise ValueError(
                f"{count} shards cannot be split across {input_context.num_input_pipelines} "
                "input pipelines; prepare with smaller --shard_mb."
            )
        shards = shards.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)

    def probe(path, shard):
        # Reading each shard's first byte (once: cached) puts a file reader into the graph, so
        # tf.distribute's FILE auto-sharding gives each worker its own shards, as with records.
        first = tf.data.FixedLengthRecordDataset(
            path, record_bytes=1, footer_bytes=tf.maximum(sizes[shard] - 1, 0)
        )
        return first.take(1).map(lambda _: shard)

    shards = shards.flat_map(probe).cache().shuffle(count, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        shards = shards.repeat()
    groups = shards.batch(group)

    def pooled(ids, seed_pair):
        rows = tf.ragged.range(tf.gather(bounds_t, ids), tf.gather(bounds_t, ids + 1)).flat_values
        rows = tf.repeat(rows, copies)
        if mix:
            noise = tf.random.stateless_uniform(tf.shape(rows), seed=seed_pair)
            rows = tf.gather(rows, tf.argsort(noise))
        return {name: tf.gather(column, rows) for name, column in columns.items()}

    group_seed = None if seed is None else seed + 1
    return _with_seeds(tf, groups, group_seed).map(pooled).unbatch()


def _pretraining_from_index(
    tf,
    index,
    segment_samples,
    batch_size,
    *,
    view_source,
    short_clips,
    segments_per_clip,
    shuffle_buffer,
    seed,
    deterministic,
    repeat,
    input_context,
    cycle_length,
):
    """``pretraining_dataset`` reading only the views' bytes from local shards (positioned reads).

    Shuffling and batching work on (file, offset, length) entries; each batch's views are then
    cut in one tf.numpy_function call (``records.ViewReader``) with a per-batch seed pair.
    """
    from keras_clmr.data import records

    mix = bool(shuffle_buffer and shuffle_buffer > 1)
    keep = np.ones(len(index["file"]), bool)
    if short_clips == "skip":
        keep = index["num_samples"] >= segment_samples
    entries = _clip_entries(
        tf,
        index,
        keep,
        repeat=repeat,
        seed=seed,
        input_context=input_context,
        group=cycle_length or 8,
        copies=segments_per_clip,
        mix=mix,
    )
    if mix:
        entries = entries.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    entries = entries.batch(batch_size, drop_remainder=True)
    per_item = 2 if view_source == "clip" else 1
    reader = records.ViewReader(index["files"], segment_samples, per_item)
    shape = [batch_size, 2, segment_samples] if per_item == 2 else [batch_size, segment_samples]

    def views(batch, seed_pair):
        cut = tf.numpy_function(
            reader,
            [batch["file"], batch["offset"], batch["num_samples"], seed_pair],
            tf.float32,
            stateful=False,
        )
        return tf.reshape(cut, shape)

    dataset = _with_seeds(tf, entries, seed).map(
        views, num_parallel_calls=AUTOTUNE, deterministic=deterministic
    )
    return dataset.prefetch(AUTOTUNE).with_options(_options(tf, deterministic))


def pretraining_dataset(
    data_dir,
    segment_samples,
    batch_size,
    split="train",
    shuffle_buffer=512,
    seed=None,
    deterministic=False,
    repeat=True,
    short_clips="skip",
    segments_per_clip=1,
    input_context=None,
    cycle_length=None,
    view_source="clip",
    reader="auto",
):
    """Batches for the contrastive pretrainers (x only).

    ``view_source="clip"`` (default, as CLMR and PEMR do): view pairs, float32
    [batch_size, 2, segment_samples]: each clip gives two views at independent uniformly
    random starts anywhere in the whole clip (any length). ``view_source="segment"``: one
    random source segment per clip, float32 [batch_size, segment_samples], from which the
    pretrainer crops both views (so they start at most segment_samples - crop apart).

    ``reader``: "index" reads only the views' bytes from local shards (positioned reads)
    (``records.ViewReader``; offsets from clips.tsv, or from the record headers of older
    preparations): shuffling and batching move (shard, offset, length) entries and each batch
    is cut in one call. "records" reads and parses whole records (MTAT: 1.3 MB per clip),
    several times slower. "auto" (default): "index" for local directories, else "records".

    Passes over the shards repeat forever when ``repeat`` (file order reshuffled each pass).
    Clips shorter than ``segment_samples`` are skipped (``short_clips="skip"``, CLMR's
    behaviour; counted in a warning) or zero-padded at the end (``"pad"``); a clip exactly
    one view long gives two identical views (warned once). Batches are full
    (drop_remainder). With ``seed`` and ``deterministic=True`` the stream is reproducible.
    ``input_context`` (from ``tf.distribute``'s ``distribute_datasets_from_function``)
    shards the files per input pipeline; otherwise tf.distribute auto-shards by file.
    With the index reader, the clips of ``cycle_length`` (default 8) shards are pooled and
    fully shuffled before the ``shuffle_buffer``; ``shuffle_buffer`` <= 1 turns both off.

    ``segments_per_clip=k`` takes k independent items (pairs or segments) per clip and pass,
    at the cost of CLMR's one-item-per-clip sampling: siblings can meet in a batch (as false
    negatives in NT-Xent). It multiplies the records reader's items/s; the index reader
    gains little from it.
    """
    tf = _tf()
    segments_per_clip = int(segments_per_clip)
    if segments_per_clip < 1:
        raise ValueError(f"segments_per_clip must be >= 1, got {segments_per_clip}.")
    if short_clips not in ("skip", "pad"):
        raise ValueError(f"short_clips must be 'skip' or 'pad', got {short_clips!r}.")
    if view_source not in VIEW_SOURCES:
        raise ValueError(f"view_source must be one of {VIEW_SOURCES}, got {view_source!r}.")
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}.")
    if reader == "index" and not _is_local(data_dir):
        raise ValueError(
            f"reader='index' memory-maps local shards; {data_dir} is remote: use "
            "reader='records' (or 'auto'), or copy the prepared directory to a local disk."
        )
    segment_samples, batch_size = int(segment_samples), int(batch_size)
    if segment_samples < 1 or batch_size < 1:
        raise ValueError("segment_samples and batch_size must be >= 1.")
    manifest = load_manifest(data_dir)
    files = shard_files(data_dir, split, manifest)
    counts = _report_short_clips(data_dir, split, segment_samples, short_clips, view_source)
    if short_clips == "skip" and counts["shorter"] == counts["clips"]:
        # Otherwise the filter below would wait forever on a repeated stream.
        raise ValueError(
            f"{data_dir}: no {split!r} clip has {segment_samples} samples (the longest has "
            f"{counts['longest']}); use shorter segments or short_clips='pad'."
        )
    if reader == "index" or (reader == "auto" and _is_local(data_dir)):
        return _pretraining_from_index(
            tf,
            pcm_index(data_dir, split, manifest),
            segment_samples,
            batch_size,
            view_source=view_source,
            short_clips=short_clips,
            segments_per_clip=segments_per_clip,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            deterministic=deterministic,
            repeat=repeat,
            input_context=input_context,
            cycle_length=cycle_length,
        )
    records = _records(
        tf,
        files,
        shuffle_files=True,
        repeat=repeat,
        seed=seed,
        deterministic=deterministic,
        input_context=input_context,
        cycle_length=cycle_length,
    )
    parsed = records.map(
        lambda r: _parse(r, with_labels=False),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    if short_clips == "skip":
        parsed = parsed.filter(lambda p: p["num_samples"] >= segment_samples)
    per_item = 2 if view_source == "clip" else 1

    def items(p, seed_pair):
        audio, num_samples = p["audio"], p["num_samples"]
        if short_clips == "pad":
            audio, num_samples = _pad_bytes(
                tf, audio, num_samples, segment_samples, segment_samples
            )
        count = segments_per_clip * per_item
        crops = _random_crop(
            tf, audio, num_samples, segment_samples, seed_pair, None if count == 1 else count
        )
        if view_source == "clip":
            crops = tf.reshape(crops, [segments_per_clip, 2, segment_samples])
            return crops[0] if segments_per_clip == 1 else crops
        return crops

    dataset = _with_seeds(tf, parsed, seed).map(
        items, num_parallel_calls=AUTOTUNE, deterministic=deterministic
    )
    if segments_per_clip > 1:
        dataset = dataset.unbatch()
    if shuffle_buffer and shuffle_buffer > 1:
        dataset = dataset.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(
        batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE, deterministic=deterministic
    )
    return dataset.prefetch(AUTOTUNE).with_options(_options(tf, deterministic))


def _position_to_index(tf, data_dir, split):
    table = clip_table(data_dir, split)
    size = int(table["positions"].max()) + 1 if len(table["positions"]) else 1
    mapping = np.full(size, -1, np.int32)
    mapping[table["positions"]] = np.arange(len(table["positions"]), dtype=np.int32)
    return tf.constant(mapping)


def evaluation_dataset(data_dir, split, chunk_samples=59049, batch_size=32, pad_last=False):
    """Every non-overlapping ``chunk_samples`` chunk of every clip of ``split``, in clip order.

    Yields dicts ``{"audio": float32 [b, chunk_samples], "clip_index": int32 [b],
    "labels": float32 [b, L]}`` where ``clip_index`` indexes ``clip_table(data_dir, split)``.
    The last partial chunk of a clip is dropped as in CLMR (``pad_last=False``) or
    zero-padded (``pad_last=True``). A clip shorter than one chunk always gives one
    zero-padded chunk, so every clip gets a prediction. The last batch may be smaller.
    """
    tf = _tf()
    chunk_samples = int(chunk_samples)
    manifest = load_manifest(data_dir)
    files = shard_files(data_dir, split, manifest)
    num_labels = len(manifest["labels"])
    mapping = _position_to_index(tf, data_dir, split)

    def chunks(record):
        p = _parse(record)
        n = p["num_samples"]
        count = (n + chunk_samples - 1) // chunk_samples if pad_last else n // chunk_samples
        count = tf.maximum(count, 1)
        # Padding is needed only for a short clip or a padded last chunk: < chunk_samples samples.
        audio, _ = _pad_bytes(tf, p["audio"], n, count * chunk_samples, chunk_samples)
        used = tf.strings.substr(audio, 0, tf.cast(2 * count * chunk_samples, tf.int32))
        samples = (
            tf.cast(tf.io.decode_raw(used, tf.int16, little_endian=True), tf.float32) / 32768.0
        )
        labels = _label_vector(p["labels"], num_labels)
        index = tf.gather(mapping, p["position"])
        return {
            "audio": tf.reshape(samples, [-1, chunk_samples]),
            "clip_index": tf.fill([count], index),
            "labels": tf.tile(labels[None], tf.stack([count, 1])),
        }

    dataset = tf.data.TFRecordDataset(files, buffer_size=1 << 22)
    dataset = dataset.map(chunks, num_parallel_calls=AUTOTUNE, deterministic=True).unbatch()
    dataset = dataset.batch(int(batch_size), num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.prefetch(AUTOTUNE)


def chunk_count(num_samples, chunk_samples=59049, pad_last=False):
    """How many chunks ``evaluation_dataset`` yields for a clip of ``num_samples`` samples."""
    count = -(-num_samples // chunk_samples) if pad_last else num_samples // chunk_samples
    return max(int(count), 1)


def supervised_dataset(
    data_dir,
    split,
    crop_samples=59049,
    batch_size=32,
    shuffle=None,
    shuffle_buffer=1024,
    seed=None,
    repeat=False,
    drop_remainder=False,
    deterministic=True,
):
    """(x float32 [b, crop_samples], y float32 [b, L]): one random crop per clip per pass.

    ``y`` is multi-hot (multilabel) or one-hot (multiclass). Clips shorter than the crop
    are zero-padded. ``shuffle`` defaults to True for the "train" split.
    """
    tf = _tf()
    crop_samples = int(crop_samples)
    manifest = load_manifest(data_dir)
    if manifest["task"] == "none":
        raise ValueError(
            f"{data_dir}: this dataset has no labels (task 'none'); use pretraining_dataset."
        )
    files = shard_files(data_dir, split, manifest)
    num_labels = len(manifest["labels"])
    shuffle = split == "train" if shuffle is None else bool(shuffle)
    if shuffle:
        records = _records(
            tf, files, shuffle_files=True, repeat=repeat, seed=seed, deterministic=deterministic
        )
    else:
        records = tf.data.TFRecordDataset(files, buffer_size=1 << 22)
        records = records.repeat() if repeat else records

    def example(record, seed_pair):
        p = _parse(record)
        audio, num_samples = _pad_bytes(
            tf, p["audio"], p["num_samples"], crop_samples, crop_samples
        )
        return _random_crop(tf, audio, num_samples, crop_samples, seed_pair), _label_vector(
            p["labels"], num_labels
        )

    dataset = _with_seeds(tf, records, seed).map(
        example, num_parallel_calls=AUTOTUNE, deterministic=deterministic
    )
    if shuffle and shuffle_buffer and shuffle_buffer > 1:
        dataset = dataset.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(int(batch_size), drop_remainder=drop_remainder)
    return dataset.prefetch(AUTOTUNE).with_options(_options(tf, deterministic))
