"""The pretraining step estimate (``keras_clmr.pretraining.estimate_step``) against a measured
train step: peak RSS and seconds per step, per model, batch and augmentation.

    python -m benchmarks.pretrain_estimate                          # CLMR, 8 and 24 pairs, crop
    python -m benchmarks.pretrain_estimate --models=clmr,pemr --batches=8 --augment=clmr

Each configuration runs in its own subprocess (peak RSS is per process): build the full-size
pretrainer, estimate, one warm-up ``train_on_batch`` (tracing) and one timed step. ``cpu_s``
is the process's CPU seconds in the timed step; ``cpu_s / cores`` is what the step takes on
free cores, which a busy machine (``others_cpu_share``) inflates less than the wall time.
Prints one JSON object; the constants in keras_clmr/pretraining.py come from these figures.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.train_step import cpu_times, peak_rss_gb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args):
    import keras
    import numpy as np

    from keras_clmr import pretraining

    model = pretraining.build_pretrainer(args.model, augment=args.augment, seed=0)
    model.build((None, 2, model.input_samples))
    estimate = pretraining.estimate_step(model, args.batch)
    model.compile(optimizer=keras.optimizers.Adam(3e-4), jit_compile=False)
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((args.batch, 2, model.input_samples))).astype("float32")
    model.train_on_batch(x)
    total0, idle0 = cpu_times()
    own0 = os.times()
    start = time.perf_counter()
    model.train_on_batch(x)
    wall = time.perf_counter() - start
    own1 = os.times()
    total1, idle1 = cpu_times()
    own = (own1.user + own1.system) - (own0.user + own0.system)
    busy = (total1 - total0) - (idle1 - idle0)
    floats, flops = pretraining.layer_costs(model.encoder)
    return {
        "model": args.model,
        "augment": args.augment,
        "pairs": args.batch,
        "views": estimate.views,
        "encoder_floats_per_view": floats,
        "encoder_flops_per_view": flops,
        "peak_rss_gb": peak_rss_gb(),
        "estimated_peak_gb": round(estimate.peak_bytes / 1e9, 2),
        "step_wall_s": round(wall, 2),
        "cpu_s": round(own, 2),
        "cores": estimate.cores,
        "cpu_s_per_core": round(own / estimate.cores, 2),
        "estimated_s": round(estimate.seconds, 2),
        "others_cpu_share": round(
            max(0.0, busy / 100.0 - own) / max(wall, 1e-9) / estimate.cores, 3
        ),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="clmr")
    parser.add_argument("--batches", default="8,24", help="pairs per step, comma-separated")
    parser.add_argument("--augment", default="crop", choices=["crop", "clmr"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="clmr", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    results = []
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    for model in args.models.split(","):
        for batch in args.batches.split(","):
            command = [
                sys.executable,
                "-m",
                "benchmarks.pretrain_estimate",
                "--worker",
                f"--model={model}",
                f"--batch={batch}",
                f"--augment={args.augment}",
            ]
            run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
            lines = run.stdout.strip().splitlines()
            if run.returncode or not lines:
                error = run.stderr.strip().splitlines()[-1:] or ["failed"]
                results.append({"model": model, "pairs": batch, "error": error[0]})
            else:
                results.append(json.loads(lines[-1]))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "pretrain_estimate", "results": results}, indent=2))


if __name__ == "__main__":
    main()
