"""Decode a dataset once into sharded TFRecords (22050 Hz mono int16) plus manifest.json.

    python -m keras_clmr.data.prepare --dataset=mtat --source=/data/mtat --output=/data/mtat_prepared
    python -m keras_clmr.data.prepare --dataset=gtzan --source=/data/gtzan --output=/data/gtzan_prepared
    python -m keras_clmr.data.prepare --dataset=folder --source=/data/music --output=gs://bucket/music
    python -m keras_clmr.data.prepare --dataset=csv --source=/data/mine/labels.csv --output=/data/mine_prepared

Worker processes decode (soundfile/ffmpeg + soxr); the main process writes each shard to a
temporary file and renames it when complete, then writes a small ``progress/<shard>.json``
marker. A re-run with the same settings skips shards that have their marker, so a killed
run resumes where it stopped and ends with the same manifest. A file that cannot be decoded
is skipped and listed (with the reason) in the manifest, never fatal and never silent.

Output layout: ``<split>-NNNNN-of-MMMMM.tfrecord`` (one tf.train.Example per clip: audio =
int16 little-endian PCM bytes, id, position, labels = label indices, split, num_samples,
sample_rate), ``plan.json``, ``progress/``, ``clips.tsv`` (one row per prepared clip) and
``manifest.json`` (written last: a directory is prepared when it has one).
"""

import collections
import csv
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import sys
import time

import numpy as np

from keras_clmr import audio
from keras_clmr.data import datasets

FORMAT = "keras_clmr.prepared/1"
MANIFEST = "manifest.json"
PLAN = "plan.json"
CLIPS = "clips.tsv"
PROGRESS = "progress"
_ESTIMATE_FILES = 16  # clips whose header durations estimate the bytes per clip when planning
DECODE_TIMEOUT = 600  # seconds; a file taking longer (or killing its decoder process) is skipped


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _join(*parts):
    return "/".join([parts[0].rstrip("/")] + [p.strip("/") for p in parts[1:]])


def _write_atomic(path, data):
    """Write text or bytes to ``path`` through a temporary file and a rename."""
    gfile = _gfile()
    temporary = f"{path}.tmp-{os.getpid()}"
    with gfile.GFile(temporary, "wb") as file:
        file.write(data.encode("utf-8") if isinstance(data, str) else data)
    gfile.rename(temporary, path, overwrite=True)


def _read_json(path):
    with _gfile().GFile(path, "r") as file:
        return json.load(file)


def _dumps(obj):
    return json.dumps(obj, indent=1, sort_keys=False) + "\n"


# ----------------------------------------------------------------------------- planning

def _clips_per_shard(clips, sample_rate, shard_mb):
    step = max(1, len(clips) // _ESTIMATE_FILES)
    durations = [d for d in (audio.duration(c.path) for c in clips[::step][:_ESTIMATE_FILES]) if d]
    seconds = float(np.mean(durations)) if durations else 30.0
    return max(1, int(shard_mb * 2 ** 20 // (seconds * sample_rate * 2 + 256)))


def make_plan(spec, sample_rate=audio.DEFAULT_SAMPLE_RATE, shard_mb=128, clips_per_shard=None, config=None):
    """Assign every clip of ``spec`` to a shard; deterministic for the same inputs."""
    if not spec.clips:
        raise ValueError(f"{spec.name}: no clips to prepare.")
    per_shard = clips_per_shard or _clips_per_shard(spec.clips, sample_rate, shard_mb)
    label_index = {label: i for i, label in enumerate(spec.labels)}
    shards = []
    for split in datasets.SPLITS:
        members = [c for c in spec.clips if c.split == split]
        count = -(-len(members) // per_shard)
        for s in range(count):
            part = members[s * per_shard:(s + 1) * per_shard]
            shards.append({
                "name": f"{split}-{s:05d}-of-{count:05d}.tfrecord",
                "split": split,
                "clips": [[s * per_shard + i, c.id, c.path, [label_index[t] for t in c.labels]]
                          for i, c in enumerate(part)],
            })
    return {"format": FORMAT, "config": dict(config or {}, sample_rate=sample_rate), "dataset": spec.name,
            "labels": list(spec.labels), "task": spec.task, "excluded": spec.excluded,
            "clips_per_shard": per_shard, "shards": shards}


# ----------------------------------------------------------------------------- decoding

def _decode(job):
    """Worker: (path, sample_rate) -> ("ok", int16 bytes, n) or ("skip", reason)."""
    path, sample_rate = job
    try:
        pcm = audio.to_int16(audio.load(path, sample_rate=sample_rate))
    except audio.AudioError as error:
        return ("skip", error.reason)
    except Exception as error:  # a broken file must never stop the run; report what happened
        return ("skip", f"{type(error).__name__}: {error}")
    return ("ok", pcm.astype("<i2").tobytes(), int(pcm.shape[0]))


def _decode_in_pool(pool, jobs, window):
    """Results of ``_decode`` over ``jobs`` in order, with at most ``window`` decoded clips in flight
    (bounded memory however slow the writer is)."""
    jobs = iter(jobs)
    pending = collections.deque(pool.apply_async(_decode, (job,)) for job in itertools.islice(jobs, window))
    while pending:
        try:
            result = pending.popleft().get(timeout=DECODE_TIMEOUT)
        except multiprocessing.TimeoutError:
            result = ("skip", f"its decoder process died or took longer than {DECODE_TIMEOUT} s")
        following = next(jobs, None)
        if following is not None:
            pending.append(pool.apply_async(_decode, (following,)))
        yield result


def _example(tf, position, clip_id, label_indices, split, pcm_bytes, num_samples, sample_rate):
    feature = tf.train.Feature
    return tf.train.Example(features=tf.train.Features(feature={
        "audio": feature(bytes_list=tf.train.BytesList(value=[pcm_bytes])),
        "id": feature(bytes_list=tf.train.BytesList(value=[clip_id.encode("utf-8")])),
        "position": feature(int64_list=tf.train.Int64List(value=[position])),
        "labels": feature(int64_list=tf.train.Int64List(value=label_indices)),
        "split": feature(bytes_list=tf.train.BytesList(value=[split.encode("utf-8")])),
        "num_samples": feature(int64_list=tf.train.Int64List(value=[num_samples])),
        "sample_rate": feature(int64_list=tf.train.Int64List(value=[sample_rate])),
    })).SerializeToString(deterministic=True)  # sorted map keys: same bytes in every process


def _relative(path, source):
    try:
        relative = os.path.relpath(path, source)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


def _write_shard(tf, output, shard, results, sample_rate, source, progress):
    gfile = tf.io.gfile
    final = _join(output, shard["name"])
    temporary = _join(output, f".{shard['name']}.tmp")
    written, skipped = [], []
    with tf.io.TFRecordWriter(temporary) as writer:
        for position, clip_id, path, label_indices in shard["clips"]:
            result = next(results)
            if result[0] == "ok":
                _, pcm_bytes, num_samples = result
                writer.write(_example(tf, position, clip_id, label_indices, shard["split"], pcm_bytes,
                                      num_samples, sample_rate))
                written.append([position, clip_id, num_samples, label_indices])
            else:
                skipped.append({"id": clip_id, "path": _relative(path, source), "reason": result[1]})
            progress.update(1)
            progress.set_postfix(skipped=progress.skipped + len(skipped), refresh=False)
    digest, size = hashlib.sha256(), 0
    with gfile.GFile(temporary, "rb") as file:
        while chunk := file.read(1 << 24):
            digest.update(chunk)
            size += len(chunk)
    gfile.rename(temporary, final, overwrite=True)
    marker = {"file": shard["name"], "split": shard["split"], "records": len(written), "bytes": size,
              "sha256": digest.hexdigest(), "clips": written, "skipped": skipped}
    # The marker is written only after the shard is complete under its final name.
    _write_atomic(_join(output, PROGRESS, shard["name"] + ".json"), _dumps(marker))
    progress.skipped += len(skipped)
    return marker


class _Progress:
    """tqdm (with ETA) when available and wanted, else a silent counter."""

    def __init__(self, total, enabled):
        self.skipped = 0
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="clip", desc="decoding", file=sys.stderr, smoothing=0.05)

    def update(self, n):
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, **kwargs):
        if self._bar is not None:
            self._bar.set_postfix(**kwargs)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def _finished(output, shard):
    gfile = _gfile()
    marker = _join(output, PROGRESS, shard["name"] + ".json")
    return gfile.exists(marker) and gfile.exists(_join(output, shard["name"]))


# ----------------------------------------------------------------------------- manifest

def _assemble(output, plan, source):
    markers = [_read_json(_join(output, PROGRESS, s["name"] + ".json")) for s in plan["shards"]]
    sample_rate = plan["config"]["sample_rate"]
    splits, rows, skipped, shards = {}, [], [], []
    for shard, marker in zip(plan["shards"], markers):
        split = shard["split"]
        entry = splits.setdefault(split, {"count": 0, "seconds": 0.0, "planned": 0, "skipped": 0, "shards": []})
        entry["planned"] += len(shard["clips"])
        entry["skipped"] += len(marker["skipped"])
        entry["shards"].append(marker["file"])
        shards.append({k: marker[k] for k in ("file", "split", "records", "bytes", "sha256")})
        skipped.extend(marker["skipped"])
        for position, clip_id, num_samples, label_indices in marker["clips"]:
            rows.append((split, entry["count"], position, clip_id, num_samples,
                         ";".join(str(i) for i in label_indices)))
            entry["count"] += 1
            entry["seconds"] += num_samples / sample_rate
    table = io.StringIO()
    writer = csv.writer(table, delimiter="\t", lineterminator="\n")
    writer.writerow(("split", "index", "position", "id", "num_samples", "labels"))
    writer.writerows(rows)
    _write_atomic(_join(output, CLIPS), table.getvalue())
    for entry in splits.values():
        entry["seconds"] = round(entry["seconds"], 3)
    manifest = {
        "format": FORMAT,
        "dataset": plan["dataset"],
        "source": source,
        "sample_rate": sample_rate,
        "encoding": "int16 little-endian PCM, mono; float = int16 / 32768",
        "task": plan["task"],
        "labels": plan["labels"],
        "num_clips": sum(e["count"] for e in splits.values()),
        "total_seconds": round(sum(e["seconds"] for e in splits.values()), 3),
        "excluded": plan["excluded"],
        "splits": splits,
        "clips_file": CLIPS,
        "shards": shards,
        "skipped": skipped,
    }
    _write_atomic(_join(output, MANIFEST), _dumps(manifest))
    return manifest


# ----------------------------------------------------------------------------- entry points

def prepare(spec, output, sample_rate=audio.DEFAULT_SAMPLE_RATE, shard_mb=128, workers=None,
            clips_per_shard=None, progress=True, config=None):
    """Decode ``spec`` (a ``datasets.DatasetSpec``) into shards under ``output``; returns the manifest.

    Resumable: shards finished by an earlier run with the same settings are kept. Raises
    ``ValueError`` when ``output`` holds a preparation made with different settings.
    """
    import tensorflow as tf

    gfile = tf.io.gfile
    config = dict(config or {}, dataset=spec.name, shard_mb=shard_mb, clips_per_shard=clips_per_shard)
    gfile.makedirs(_join(output, PROGRESS))
    plan_path = _join(output, PLAN)
    if gfile.exists(plan_path):
        plan = _read_json(plan_path)
        wanted = dict(config, sample_rate=sample_rate)
        if plan.get("config") != wanted:
            raise ValueError(f"{output} holds a preparation made with other settings ({plan.get('config')}, "
                             f"now {wanted}); use a new --output or pass --overwrite.")
    else:
        plan = make_plan(spec, sample_rate, shard_mb, clips_per_shard, config)
        _write_atomic(plan_path, _dumps(plan))
    source = config.get("source", "")
    pending = [shard for shard in plan["shards"] if not _finished(output, shard)]
    jobs = [(path, sample_rate) for shard in pending for _, _, path, _ in shard["clips"]]
    bar = _Progress(len(jobs), progress)
    workers = max(1, int(workers or os.cpu_count() or 1))
    pool = None
    try:
        if jobs and workers > 1:
            # Workers only decode (no TensorFlow), so forking is safe where it exists.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = multiprocessing.get_context(method).Pool(min(workers, len(jobs)))
            results = _decode_in_pool(pool, jobs, window=4 * workers)
        else:
            results = map(_decode, jobs)
        for shard in pending:
            _write_shard(tf, output, shard, results, sample_rate, source, bar)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return _assemble(output, plan, source)


def _remove_previous(output):
    gfile = _gfile()
    if not gfile.exists(output):
        return
    for name in gfile.listdir(output):
        name = name.rstrip("/")
        path = _join(output, name)
        if name == PROGRESS:
            gfile.rmtree(path)
        elif name in (MANIFEST, PLAN, CLIPS) or ".tfrecord" in name:
            gfile.remove(path)


if __name__ == "__main__":
    from keras_clmr.commands import run

    run("prepare", prog="python -m keras_clmr.data.prepare")
