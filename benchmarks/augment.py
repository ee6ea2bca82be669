"""Throughput of the in-graph CLMR augmentation chain (TensorFlow + XLA) and its cost in the
CLMR train step, side by side with the original PyTorch/sox chain.

    python -m benchmarks.augment                       # everything (chain, train step, reference)
    python -m benchmarks.augment --parts=chain,reference --reps=5
    BENCH_TRAIN_STEPS=1 python -m benchmarks.augment --parts=train

Parts (one JSON object is printed at the end):
- ``chain``: 48 source segments of 2 x 59049 samples -> two random crops each -> the chain
  (CLMR's probabilities) on each view batch of 48, exactly as the CLMR train step calls it:
  96 views per call, compiled with ``jit_compile=True``. Median over ``--reps`` calls after a
  warm-up (which includes the compilation).
- ``train``: the full-size CLMR train step (SampleCNN, 48 pairs, Adam; no XLA unless
  ``--train_jit=on``) with ``--augment=clmr`` vs
  ``--augment=crop``; the two models' steps are interleaved so both see
  the same machine load. ``--train_steps`` (env BENCH_TRAIN_STEPS) timed steps each.
- ``reference``: the reference harness's ``augment`` command (benchmarks/reference/__init__.py says
  how to point at it): the original torchaudio-augmentations + sox chain, one process, 1 torch
  thread (env CLMR_AUG_PER_TRANSFORM_N=0 unless set), run between two ``chain`` measurements.

The machine may be shared: the JSON carries the load average before/after each part and this
process's CPU seconds per call (``cpu_s_per_96_views``, ``cpu_s_per_step``; os.times, all
threads), which do not depend on other processes; compare those, or ratios measured in the same
run, not wall-clock figures across runs.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_SAMPLES = 59049
SAMPLE_RATE = 22050


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def process_cpu_s():
    """User + system CPU seconds of this process so far (os.times, all threads)."""
    times = os.times()
    return times.user + times.system


def synthetic_sources(batch, length, seed=0):
    """Music-like source segments: a few harmonic tones, decaying clicks and a noise floor."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(length) / SAMPLE_RATE
    out = np.zeros((batch, length), np.float32)
    for b in range(batch):
        for f0 in rng.uniform(80, 800, 3):
            for h in range(1, 5):
                out[b] += (0.3 / h) * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3))
        beats = (np.arange(length) % rng.integers(8000, 12000)) / SAMPLE_RATE
        out[b] += 0.5 * np.exp(-beats * 30) * rng.standard_normal(length)
        out[b] += 0.002 * rng.standard_normal(length)
    out /= np.abs(out).max(axis=1, keepdims=True) / 0.8
    return out


def bench_chain(reps, pairs=48, seed=1):
    import keras
    import tensorflow as tf

    from keras_clmr.layers import RandomCrop, clmr_augmentation

    crop = RandomCrop(N_SAMPLES, seed=seed)
    chain = clmr_augmentation(SAMPLE_RATE, seed=seed)
    sources = tf.constant(synthetic_sources(pairs, 2 * N_SAMPLES))

    @tf.function(jit_compile=True)
    def views(source):
        view_i = chain(crop(source, training=True), training=True)
        view_j = chain(crop(source, training=True), training=True)
        return tf.reduce_sum(view_i) + tf.reduce_sum(view_j)  # keep the host copy out of the timing

    start = time.perf_counter()
    views(sources).numpy()
    compile_s = time.perf_counter() - start
    times, cpu_times = [], []
    for _ in range(reps):
        start, cpu_start = time.perf_counter(), process_cpu_s()
        views(sources).numpy()
        times.append(time.perf_counter() - start)
        cpu_times.append(process_cpu_s() - cpu_start)
    median = statistics.median(times)
    keras.backend.clear_session()
    return {
        "views_per_s": round(2 * pairs / median, 1),
        "ms_per_96_views": round(1000 * median * 96 / (2 * pairs), 1),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        # This process's CPU seconds per call (all threads): does not depend on other load.
        "cpu_s_per_96_views": round(statistics.median(cpu_times) * 96 / (2 * pairs), 3),
        "cpu_s_per_call": [round(t, 3) for t in cpu_times],
        "reps": reps,
        "first_call_incl_compile_s": round(compile_s, 2),
    }


def bench_train(steps, pairs=48, jit_compile=False):
    import keras
    import numpy as np

    from keras_clmr.layers import clmr_augmentation
    from keras_clmr.models import CLMR, SampleCNN

    keras.utils.set_random_seed(0)
    sources = synthetic_sources(pairs, 2 * N_SAMPLES)
    models = {}
    for augment in ("clmr", "crop"):
        model = CLMR(
            SampleCNN(),
            augmentation=clmr_augmentation(SAMPLE_RATE, seed=1) if augment == "clmr" else None,
            seed=1,
        )
        model.compile(optimizer=keras.optimizers.Adam(3e-4), jit_compile=jit_compile)
        start = time.perf_counter()
        model.train_on_batch(sources)
        models[augment] = {
            "model": model,
            "times": [],
            "first_step_incl_compile_s": time.perf_counter() - start,
        }
    for _ in range(steps):
        for augment, entry in models.items():
            start, cpu_start = time.perf_counter(), process_cpu_s()
            loss = entry["model"].train_on_batch(sources)
            entry["times"].append(time.perf_counter() - start)
            entry.setdefault("cpu_times", []).append(process_cpu_s() - cpu_start)
            # train_on_batch returns [loss, positive_cosine]: every value must be finite
            assert np.all(np.isfinite(np.asarray(loss))), (augment, loss)
    result = {}
    for augment, entry in models.items():
        median = statistics.median(entry["times"])
        result[augment] = {
            "s_per_step": round(median, 3),
            "views_per_s": round(2 * pairs / median, 2),
            "steps": steps,
            "step_times_s": [round(t, 3) for t in entry["times"]],
            "cpu_s_per_step": round(statistics.median(entry["cpu_times"]), 3),
            "first_step_incl_compile_s": round(entry["first_step_incl_compile_s"], 1),
        }
    result["clmr_over_crop_step_time"] = round(
        result["clmr"]["s_per_step"] / result["crop"]["s_per_step"], 3
    )
    result["clmr_over_crop_cpu_s"] = round(
        result["clmr"]["cpu_s_per_step"] / result["crop"]["cpu_s_per_step"], 3
    )
    return result


def run_reference():
    from benchmarks.reference import ReferenceUnavailable, harness

    try:
        reference_python, reference_script = harness()
    except ReferenceUnavailable as error:
        return {"skipped": str(error)}
    env = dict(os.environ)
    env.setdefault("CLMR_AUG_PER_TRANSFORM_N", "0")
    proc = subprocess.run(
        [reference_python, reference_script, "augment"],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(reference_script),
    )
    if proc.returncode != 0:
        return {"failed": proc.stderr[-2000:]}
    full = json.loads(proc.stdout.strip().splitlines()[-1])
    keep = (
        "single_process_views_per_s_median",
        "single_process_clips_per_s",
        "dataloader_w2_steady_views_per_s_median",
        "cpu_share_during_run",
        "loadavg_start",
        "loadavg_end",
        "wall_s",
    )
    return {k: full[k] for k in keep if k in full}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default="chain,reference,train")
    parser.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", 5)))
    parser.add_argument(
        "--train_steps", type=int, default=int(os.environ.get("BENCH_TRAIN_STEPS", 3))
    )
    parser.add_argument(
        "--train_jit",
        choices=("on", "off"),
        default="off",
        help="compile the whole train step with XLA in the train part (default: off, as "
        "the README's train-step figures)",
    )
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"chain", "train", "reference"}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from chain, train, reference")

    import keras

    if keras.backend.backend() != "tensorflow":
        raise SystemExit(
            "benchmarks.augment measures the TensorFlow + XLA figures: "
            "run with KERAS_BACKEND=tensorflow."
        )
    import tensorflow as tf

    out = {
        "benchmark": "augment",
        "backend": "tensorflow+xla",
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cpus": os.cpu_count(),
        "views": 96,
        "samples_per_view": N_SAMPLES,
    }
    if "chain" in parts:
        start = loadavg()
        out["chain"] = [dict(bench_chain(args.reps), loadavg_start=start, loadavg_end=loadavg())]
    if "reference" in parts:
        out["reference"] = run_reference()
        if "chain" in parts:
            start = loadavg()
            out["chain"].append(
                dict(bench_chain(args.reps), loadavg_start=start, loadavg_end=loadavg())
            )
    if "chain" in parts:
        out["chain_views_per_s_median"] = statistics.median(c["views_per_s"] for c in out["chain"])
        out["chain_cpu_s_per_96_views_median"] = statistics.median(
            c["cpu_s_per_96_views"] for c in out["chain"]
        )
    ref = out.get("reference", {}).get("single_process_views_per_s_median")
    if ref and "chain_views_per_s_median" in out:
        out["speedup_vs_reference_one_process"] = round(out["chain_views_per_s_median"] / ref, 2)
        out["speedup_target"] = 3.0
    if "train" in parts:
        start = loadavg()
        out["train_step"] = dict(
            bench_train(args.train_steps, jit_compile=args.train_jit == "on"),
            jit_compile=args.train_jit == "on",
            loadavg_start=start,
            loadavg_end=loadavg(),
        )
        out["train_step_target"] = "clmr_over_crop_step_time <= 1.3"
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
