"""Input pipeline figures: preparation speed (mp3 -> shards) and pretraining segments/s.

    python -m benchmarks.input_pipeline            # prints one JSON object

1. Writes ``--clips`` MTAT-like mp3 files (29.1 s, 16 kHz mono) with soundfile.
2. Decode-only speed of ``keras_clmr.audio.load`` in this process (one core).
3. ``keras_clmr.data.prepare`` with 1 and with ``--workers`` processes: audio hours per
   wall minute and x real time per worker.
4. ``pretraining_dataset`` from the local shards at batch 96: view pairs/s with the default
   settings (whole-clip views: two independent 59049-sample crops per clip, read from the
   memory-mapped shards' bytes: ``reader="index"``), the same with ``reader="records"`` (whole
   records read and parsed, as for remote shards), and segments/s in segment mode for
   segments of 59049 samples and of 2 x 59049 (from which the pretrainer crops a pair of
   views), with 1 and 4 items per clip.

``--pipeline_only`` skips the decode and preparation timings (the shards are still written).

Figures are wall-clock on whatever machine runs this; compare ratios from the same run. The
CPU-time figures (this process's threads + finished worker processes) depend less on other
load: 1000 / cpu_seconds_per_1000_segments is the segments/s one free core would give.
"""

import argparse
import json
import os
import resource
import shutil
import tempfile
import time

import numpy as np


def _write_mp3s(directory, clips, seconds, rate=16000):
    import soundfile

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    for i in range(clips):
        tone = (
            0.3
            * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
            * (1 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
        )
        noise = 0.05 * rng.standard_normal(len(t))
        folder = os.path.join(directory, "0123456789abcdef"[i % 16])
        os.makedirs(folder, exist_ok=True)
        soundfile.write(
            os.path.join(folder, f"clip-{i:04d}.mp3"),
            (tone + noise).astype(np.float32),
            rate,
            format="MP3",
            subtype="MPEG_LAYER_III",
        )


def _cpu_seconds():
    """CPU time of this process (all threads) plus its finished children: robust to other load."""
    own = time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own + children.ru_utime + children.ru_stime


def _prepare_speed(source, output, workers, clips_per_shard):
    from keras_clmr.data import datasets, prepare

    shutil.rmtree(output, ignore_errors=True)
    spec = datasets.folder(source)
    started, cpu = time.perf_counter(), _cpu_seconds()
    manifest = prepare.prepare(
        spec, output, workers=workers, clips_per_shard=clips_per_shard, progress=False
    )
    wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    hours = manifest["total_seconds"] / 3600
    return {
        "workers": workers,
        "clips": manifest["num_clips"],
        "audio_hours": round(hours, 4),
        "wall_seconds": round(wall, 2),
        "audio_hours_per_wall_minute": round(hours / (wall / 60), 3),
        "x_real_time": round(manifest["total_seconds"] / wall, 1),
        "x_real_time_per_worker": round(manifest["total_seconds"] / wall / workers, 1),
        "cpu_seconds": round(cpu, 2),
        "x_real_time_per_cpu_second": round(manifest["total_seconds"] / cpu, 1),
    }


def _decode_speed(source):
    from keras_clmr import audio

    paths = audio.list_audio_files(source)
    started = time.perf_counter()
    seconds = sum(len(audio.load(p)) / 22050 for p in paths)
    wall = time.perf_counter() - started
    return {"files": len(paths), "x_real_time_one_core": round(seconds / wall, 1)}


def _pipeline_speed(
    prepared,
    segment_samples,
    batch_size,
    batches,
    warmup,
    segments_per_clip=1,
    view_source="segment",
    reader="auto",
):
    from keras_clmr.data import pipeline

    dataset = pipeline.pretraining_dataset(
        prepared,
        segment_samples=segment_samples,
        batch_size=batch_size,
        seed=0,
        segments_per_clip=segments_per_clip,
        view_source=view_source,
        reader=reader,
    )
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        batch = next(iterator)
    batch.numpy()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    items = batches * batch_size
    if view_source == "clip":
        return {
            "view_source": "clip",
            "reader": reader,
            "view_samples": segment_samples,
            "pairs_per_clip": segments_per_clip,
            "batch_size": batch_size,
            "batches": batches,
            "view_pairs_per_second": round(items / wall, 1),
            "cpu_seconds_per_1000_pairs": round(cpu / items * 1000, 3),
            "view_pairs_per_cpu_second": round(items / cpu, 1),
        }
    return {
        "view_source": "segment",
        "segment_samples": segment_samples,
        "segments_per_clip": segments_per_clip,
        "batch_size": batch_size,
        "batches": batches,
        "segments_per_second": round(batches * batch_size / wall, 1),
        "batches_per_second": round(batches / wall, 2),
        "cpu_seconds_per_1000_segments": round(cpu / (batches * batch_size) * 1000, 3),
        "megabytes_per_second_float32": round(
            batches * batch_size * segment_samples * 4 / wall / 1e6, 1
        ),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=64, help="mp3 clips to write (29.1 s each).")
    parser.add_argument("--seconds", type=float, default=29.1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--batches", type=int, default=60, help="Timed batches of the pretraining pipeline."
    )
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--pipeline_only", action="store_true", help="Skip the decode and preparation timings."
    )
    parser.add_argument("--output", default=None, help="Also write the JSON to this file.")
    parser.add_argument(
        "--workdir", default=None, help="Where to write files (default: a temp dir, removed)."
    )
    args = parser.parse_args()

    workdir = args.workdir or tempfile.mkdtemp(prefix="input_pipeline_")
    try:
        source = os.path.join(workdir, "mp3")
        if not os.path.isdir(source):
            _write_mp3s(source, args.clips, args.seconds)
        result = {
            "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
            "input": (
                f"{args.clips} mp3 clips, {args.seconds} s, 16 kHz mono (MTAT-like) "
                "-> 22050 Hz int16"
            ),
        }
        prepared = os.path.join(workdir, "prepared")
        if args.pipeline_only:
            if not os.path.isdir(prepared):
                _prepare_speed(source, prepared, args.workers, clips_per_shard=4)
        else:
            result["decode_only"] = _decode_speed(source)
            result["prepare"] = [
                _prepare_speed(source, prepared, w, clips_per_shard=4)
                for w in sorted({1, args.workers})
            ]
        # The default: whole-clip view pairs, one pair per clip read.
        result["pretraining_default"] = _pipeline_speed(
            prepared, 59049, 96, args.batches, args.warmup, 1, view_source="clip"
        )
        result["pretraining_records_reader"] = _pipeline_speed(
            prepared, 59049, 96, args.batches, args.warmup, 1, view_source="clip", reader="records"
        )
        result["pretraining"] = [
            _pipeline_speed(prepared, s, 96, args.batches, args.warmup, k)
            for s in (59049, 118098)
            for k in (1, 4)
        ]
        result["machine"]["load_average_1m_end"] = round(os.getloadavg()[0], 2)
        print(json.dumps(result, indent=1))
        if args.output:
            from keras_clmr.io import atomic_write_json

            atomic_write_json(args.output, result)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
