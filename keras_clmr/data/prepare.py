"""Decode a dataset once into sharded TFRecords (22050 Hz mono int16) plus manifest.json.

    keras-clmr prepare --dataset=mtat --source=/data/mtat --output=/data/mtat_prepared
    keras-clmr prepare --dataset=gtzan --source=/data/gtzan --output=/data/gtzan_prepared
    keras-clmr prepare --dataset=folder --source=/data/music --output=gs://bucket/music
    keras-clmr prepare --dataset=csv --source=/data/mine/labels.csv --output=/data/mine_prepared

Worker processes decode (soundfile/ffmpeg + soxr); the main process writes each shard to a
temporary file and renames it when complete, then writes a small ``progress/<shard>.json``
marker. A re-run with the same settings skips shards that have their marker, so a killed
run resumes where it stopped and ends with the same manifest. A file that cannot be decoded
is skipped and listed (with the reason) in the manifest, never fatal and never silent.

Output layout: ``<split>-NNNNN-of-MMMMM.tfrecord`` (one tf.train.Example per clip: audio =
int16 little-endian PCM bytes, id, position, labels = label indices, split, num_samples,
sample_rate), ``plan.json``, ``progress/``, ``clips.tsv`` (one row per prepared clip, with its
shard and the byte offset of its PCM there: ``keras_clmr.data.records``) and ``manifest.json``
(written last: a directory is prepared when it has one).
"""

import collections
import csv
import errno
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import re
import sys

import numpy as np

from keras_clmr import audio
from keras_clmr import io as atomic_io
from keras_clmr.data import datasets, records

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


def _is_remote(path):
    return "://" in str(path)


def _write_atomic(path, data):
    """Write text or bytes to ``path`` through a temporary file and a rename (keras_clmr.io for
    local paths; tf.io.gfile for remote ones such as gs://)."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    if not _is_remote(path):
        atomic_io.atomic_write_bytes(path, data)
        return
    gfile = _gfile()
    temporary = f"{path}.tmp-{os.getpid()}"
    with gfile.GFile(temporary, "wb") as file:
        file.write(data)
    gfile.rename(temporary, path, overwrite=True)


_POINTER = re.compile(r"\s*@\s*0x[0-9a-fA-F]+")
_HEX = re.compile(r"0x[0-9a-fA-F]{6,}")


def summarise_reason(reason, limit=240):
    """One deterministic line from a decoder's message: ``[mp3 @ 0x55…]`` pointers and other
    addresses removed, the first informative line kept, capped at ``limit`` characters (two
    runs over the same files then write the same manifest)."""
    lines = [_HEX.sub("0x…", _POINTER.sub("", line)).strip() for line in str(reason).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return "unreadable"
    # ffmpeg puts its banner first and the error last: keep the line that says what failed.
    keywords = ("error", "invalid", "could not", "no such", "not ", "failed", "unsupported")
    chosen = next((line for line in lines if any(k in line.lower() for k in keywords)), lines[0])
    if len(lines) > 1 and chosen != lines[0] and not lines[0].startswith(("ffmpeg", "[")):
        chosen = f"{lines[0]}: {chosen}"
    text = " ".join(chosen.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    return max(1, int(shard_mb * 2**20 // (seconds * sample_rate * 2 + 256)))


def make_plan(
    spec, sample_rate=audio.DEFAULT_SAMPLE_RATE, shard_mb=128, clips_per_shard=None, config=None
):
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
            part = members[s * per_shard : (s + 1) * per_shard]
            shards.append(
                {
                    "name": f"{split}-{s:05d}-of-{count:05d}.tfrecord",
                    "split": split,
                    "clips": [
                        [s * per_shard + i, c.id, c.path, [label_index[t] for t in c.labels]]
                        for i, c in enumerate(part)
                    ],
                }
            )
    return {
        "format": FORMAT,
        "config": dict(config or {}, sample_rate=sample_rate),
        "dataset": spec.name,
        "labels": list(spec.labels),
        "task": spec.task,
        "excluded": spec.excluded,
        "clips_per_shard": per_shard,
        "shards": shards,
    }


# ----------------------------------------------------------------------------- decoding


def _decode(job):
    """Worker: (path, sample_rate) -> ("ok", int16 bytes, n) or ("skip", reason)."""
    path, sample_rate = job
    try:
        pcm = audio.to_int16(audio.load(path, sample_rate=sample_rate))
    except audio.AudioError as error:
        return ("skip", summarise_reason(error.reason))
    except Exception as error:  # a broken file must never stop the run; report what happened
        return ("skip", summarise_reason(f"{type(error).__name__}: {error}"))
    return ("ok", pcm.astype("<i2").tobytes(), int(pcm.shape[0]))


def _decode_in_pool(pool, jobs, window):
    """Results of ``_decode`` over ``jobs`` in order, with at most ``window`` decoded clips in
    flight (bounded memory however slow the writer is)."""
    jobs = iter(jobs)
    pending = collections.deque(
        pool.apply_async(_decode, (job,)) for job in itertools.islice(jobs, window)
    )
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
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "audio": feature(bytes_list=tf.train.BytesList(value=[pcm_bytes])),
                "id": feature(bytes_list=tf.train.BytesList(value=[clip_id.encode("utf-8")])),
                "position": feature(int64_list=tf.train.Int64List(value=[position])),
                "labels": feature(int64_list=tf.train.Int64List(value=label_indices)),
                "split": feature(bytes_list=tf.train.BytesList(value=[split.encode("utf-8")])),
                "num_samples": feature(int64_list=tf.train.Int64List(value=[num_samples])),
                "sample_rate": feature(int64_list=tf.train.Int64List(value=[sample_rate])),
            }
        )
    ).SerializeToString(deterministic=True)  # sorted map keys: same bytes in every process


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
    record_start = 0  # where the next record starts in the (uncompressed) TFRecord file
    try:
        with tf.io.TFRecordWriter(temporary) as writer:
            for position, clip_id, path, label_indices in shard["clips"]:
                result = next(results)
                if result[0] == "ok":
                    _, pcm_bytes, num_samples = result
                    example = _example(
                        tf,
                        position,
                        clip_id,
                        label_indices,
                        shard["split"],
                        pcm_bytes,
                        num_samples,
                        sample_rate,
                    )
                    writer.write(example)
                    start, length = records.audio_span(example)
                    if length != len(pcm_bytes):
                        raise RuntimeError(f"{clip_id}: the serialized audio field is misplaced")
                    pcm_offset = records.data_offset(record_start) + start
                    record_start += records.record_overhead(len(example))
                    written.append([position, clip_id, num_samples, label_indices, pcm_offset])
                else:
                    skipped.append(
                        {"id": clip_id, "path": _relative(path, source), "reason": result[1]}
                    )
                progress.update(1)
                progress.set_postfix(skipped=progress.skipped + len(skipped), refresh=False)
        digest, size = _digest(temporary)
        gfile.rename(temporary, final, overwrite=True)
    except BaseException as error:
        if gfile.exists(temporary):
            gfile.remove(temporary)
        if isinstance(error, Exception) and _disk_full(error):
            raise OSError(
                errno.ENOSPC,
                f"No space left on the device while writing {final}; the shards finished "
                f"before it are kept and verified on the next run of the same command",
            ) from error
        raise
    marker = {
        "file": shard["name"],
        "split": shard["split"],
        "records": len(written),
        "bytes": size,
        "sha256": digest,
        "clips": written,
        "skipped": skipped,
    }
    # The marker is written only after the shard is complete under its final name.
    _write_atomic(_join(output, PROGRESS, shard["name"] + ".json"), _dumps(marker))
    progress.skipped += len(skipped)
    return marker


def _digest(path):
    """(hex sha256, size in bytes) of ``path`` (local or tf.io.gfile)."""
    digest, size = hashlib.sha256(), 0
    with _gfile().GFile(path, "rb") as file:
        while chunk := file.read(1 << 24):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _disk_full(error):
    while error is not None:
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error):
            return True
        if "RESOURCE_EXHAUSTED" in str(error) or type(error).__name__ == "ResourceExhaustedError":
            return True
        error = error.__cause__ or error.__context__
    return False


class _Progress:
    """tqdm (with ETA) when available and wanted, else a silent counter."""

    def __init__(self, total, enabled):
        self.skipped = 0
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, unit="clip", desc="decoding", file=sys.stderr, smoothing=0.05
            )

    def update(self, n):
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, **kwargs):
        if self._bar is not None:
            self._bar.set_postfix(**kwargs)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def _finished(output, shard, warn=None):
    """True when ``shard`` and its progress marker exist and the shard's size and sha256 are
    the marker's: a truncated or altered shard is written again (and said so)."""
    gfile = _gfile()
    marker_path = _join(output, PROGRESS, shard["name"] + ".json")
    path = _join(output, shard["name"])
    if not (gfile.exists(marker_path) and gfile.exists(path)):
        return False
    try:
        marker = _read_json(marker_path)
        expected = (marker["sha256"], int(marker["bytes"]))
    except (ValueError, KeyError, TypeError):
        problem = "its progress marker is unreadable"
    else:
        if gfile.stat(path).length != expected[1]:
            problem = f"it has {gfile.stat(path).length} bytes, the marker says {expected[1]}"
        elif _digest(path)[0] != expected[0]:
            problem = "its sha256 differs from the marker's"
        else:
            return True
    (warn or _warn)(f"Shard {path} is damaged ({problem}): writing it again.")
    return False


def _warn(message):
    print(f"warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- manifest


def _assemble(output, plan, source):
    markers = [_read_json(_join(output, PROGRESS, s["name"] + ".json")) for s in plan["shards"]]
    sample_rate = plan["config"]["sample_rate"]
    splits, rows, skipped, shards = {}, [], [], []
    for shard, marker in zip(plan["shards"], markers):
        split = shard["split"]
        entry = splits.setdefault(
            split, {"count": 0, "seconds": 0.0, "planned": 0, "skipped": 0, "shards": []}
        )
        entry["planned"] += len(shard["clips"])
        entry["skipped"] += len(marker["skipped"])
        entry["shards"].append(marker["file"])
        shards.append({k: marker[k] for k in ("file", "split", "records", "bytes", "sha256")})
        skipped.extend(marker["skipped"])
        for position, clip_id, num_samples, label_indices, *pcm_offset in marker["clips"]:
            rows.append(
                (
                    split,
                    entry["count"],
                    position,
                    clip_id,
                    num_samples,
                    ";".join(str(i) for i in label_indices),
                    marker["file"],
                    pcm_offset[0] if pcm_offset else "",  # markers of older runs lack it
                )
            )
            entry["count"] += 1
            entry["seconds"] += num_samples / sample_rate
    table = io.StringIO()
    writer = csv.writer(table, delimiter="\t", lineterminator="\n")
    writer.writerow(
        ("split", "index", "position", "id", "num_samples", "labels", "shard", "offset")
    )
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


def prepare(
    spec,
    output,
    sample_rate=audio.DEFAULT_SAMPLE_RATE,
    shard_mb=128,
    workers=None,
    clips_per_shard=None,
    progress=True,
    config=None,
):
    """Decode ``spec`` (a ``datasets.DatasetSpec``) into shards under ``output``; returns the
    manifest.

    Resumable: shards finished by an earlier run with the same settings are kept. Raises
    ``ValueError`` when ``output`` holds a preparation made with different settings.
    """
    _check_arguments(sample_rate, shard_mb, workers, clips_per_shard)
    import tensorflow as tf

    gfile = tf.io.gfile
    config = dict(
        config or {}, dataset=spec.name, shard_mb=shard_mb, clips_per_shard=clips_per_shard
    )
    gfile.makedirs(_join(output, PROGRESS))
    if not _is_remote(output):  # temporaries of a killed run
        atomic_io.recover_entries(output)
        atomic_io.recover_entries(_join(output, PROGRESS))
    plan_path = _join(output, PLAN)
    if gfile.exists(plan_path):
        plan = _read_json(plan_path)
        wanted = dict(config, sample_rate=sample_rate)
        if plan.get("config") != wanted:
            before = plan.get("config") or {}
            changed = ", ".join(
                f"{key}: {before.get(key)!r} -> {wanted.get(key)!r}"
                for key in sorted(set(before) | set(wanted))
                if before.get(key) != wanted.get(key)
            )
            raise ValueError(
                f"{output} holds a preparation made with other settings ({changed}); use a new "
                "--output or pass --overwrite."
            )
    else:
        plan = make_plan(spec, sample_rate, shard_mb, clips_per_shard, config)
        _write_atomic(plan_path, _dumps(plan))
    source = config.get("source", "")
    pending = [shard for shard in plan["shards"] if not _finished(output, shard)]
    for shard in pending:  # a damaged shard's marker goes first: the shard is being rewritten
        marker = _join(output, PROGRESS, shard["name"] + ".json")
        if gfile.exists(marker):
            gfile.remove(marker)
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


def _check_arguments(sample_rate, shard_mb, workers, clips_per_shard):
    """ValueError naming the value and its range for an argument ``prepare`` cannot use."""

    def whole(value, name, low, high=None):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name}={value!r} is not an integer.")
        if value < low or (high is not None and value > high):
            limit = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise ValueError(f"{name}={value} is out of range: must be {limit}.")

    whole(sample_rate, "sample_rate", 1000, 384000)
    whole(shard_mb, "shard_mb", 1)
    if workers is not None:
        whole(workers, "workers", 1)
    if clips_per_shard is not None:
        whole(clips_per_shard, "clips_per_shard", 1)


def _remove_previous(output):
    """``--overwrite``: delete the files this dataset's own plan/manifest list (its shards,
    their temporary files and progress markers, clips.tsv, the manifest and the plan), nothing
    else; returns the removed paths. Without a plan or manifest nothing is deleted."""
    gfile = _gfile()
    if not gfile.exists(output):
        return []
    names = set()
    for listing in (PLAN, MANIFEST):
        path = _join(output, listing)
        if not gfile.exists(path):
            continue
        try:
            content = _read_json(path)
        except ValueError as error:
            raise ValueError(
                f"{path} is unreadable ({error}); it cannot tell which files --overwrite may "
                "delete. Remove the earlier preparation by hand or use a new --output."
            ) from None
        if content.get("format") != FORMAT:
            raise ValueError(
                f"{path} was not written by keras_clmr.data.prepare (format "
                f"{content.get('format')!r}); --overwrite deletes nothing it did not write."
            )
        shard_names = [s["name"] for s in content.get("shards", []) if "name" in s]
        shard_names += [s["file"] for s in content.get("shards", []) if "file" in s]
        for name in shard_names:
            if os.path.basename(name) != name or not name.endswith(".tfrecord"):
                continue  # only plain shard names in this folder
            names.update({name, f".{name}.tmp", f"{PROGRESS}/{name}.json"})
        names.update({listing, CLIPS if listing == MANIFEST else listing})
    removed = []
    for name in sorted(names, key=lambda n: (n in (PLAN, MANIFEST), n)):  # listings last
        path = _join(output, name)
        if gfile.exists(path) and not gfile.isdir(path):
            gfile.remove(path)
            removed.append(path)
    progress = _join(output, PROGRESS)
    if gfile.isdir(progress) and not gfile.listdir(progress):
        gfile.rmtree(progress)
    return removed


if __name__ == "__main__":
    from keras_clmr.commands import run

    run("prepare", prog="python -m keras_clmr.data.prepare")
