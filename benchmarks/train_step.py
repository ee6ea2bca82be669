"""Throughput of the full-size pretraining train step, per backend, with and without XLA.

    python -m benchmarks.train_step                       # all backends, CLMR, 48 pairs
    python -m benchmarks.train_step --backends=tensorflow --steps=3 --reference
    python -m benchmarks.train_step --model=pemr --jit=on --steps=2   # PEMR, 48 pairs
    python -m benchmarks.train_step --models=clmr,cpc --backends=tensorflow --jit=off

With --models, each model runs in the same invocation, one after the other (side by side on
the same, possibly busy, machine). CPC encodes one window per example, so its "views" are
the examples (--batch), not 2 x --batch as for the contrastive pairs of CLMR/PEMR.

Each configuration runs in its own subprocess (the Keras backend is fixed per process):
one warm-up step (it includes compilation) and --steps timed steps; the figure is the
median step time, next to the process's peak RSS and the other processes' CPU share. Prints
one JSON object. With --reference, the original PyTorch train step of the same model and batch
(``benchmarks.reference.clmr_torch`` / ``pemr_torch``, in this repository) runs right after
ours in its own process, so speed and memory ratios are measured side by side on the same,
possibly busy, machine. --batch takes a list to compare several batch sizes in one run:

    python -m benchmarks.train_step --model=pemr --backends=tensorflow --jit=off \
        --batch=16,48 --steps=1 --reference

    python -m benchmarks.train_step --distribution=mirrored --backends=tensorflow --jit=off

With --distribution (mirrored on TensorFlow, data_parallel on JAX), each backend runs twice
on a host split into --devices logical CPU devices: single-device and distributed (global
negatives, synchronised BatchNorm), both timed through ``fit`` (``train_on_batch`` does not
split the batch across tf.distribute replicas): one warm-up fit step, then --steps steps
in one fit call; the figure is their mean.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


from benchmarks.reference.measure import cpu_times, peak_rss_gb


def build_model(model_name, augment):
    """The full-size pretrainer the ``pretrain`` command builds (PEMR: its chain without pitch
    shift)."""
    from keras_clmr.pretraining import build_pretrainer

    return build_pretrainer(model_name, sample_rate=22050, augment=augment, seed=0)


def views_per_example(model_name):
    """Encoder windows per batch example: 2 for the contrastive pairs, 1 for CPC."""
    return 1 if model_name == "cpc" else 2


def worker(args):
    """Runs in the subprocess: time the train step of one configuration."""
    import keras
    import numpy as np

    model = build_model(args.model, args.augment)
    model.compile(optimizer=keras.optimizers.Adam(3e-4), jit_compile=args.jit_compile)
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((args.batch, model.input_samples + 4096))).astype("float32")
    total0, idle0 = cpu_times()
    own0 = os.times()
    start = time.perf_counter()
    loss = model.train_on_batch(x)
    warmup = time.perf_counter() - start
    times = [warmup]  # --steps=0: a peak-memory run; its "step" is the warm-up (with tracing)
    if args.steps:
        total0, idle0 = cpu_times()
        own0 = os.times()
        times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = model.train_on_batch(x)
        times.append(time.perf_counter() - start)
    total1, idle1 = cpu_times()
    own1 = os.times()
    busy = (total1 - total0) - (idle1 - idle0)
    own = (own1.user + own1.system) - (own0.user + own0.system)
    step = statistics.median(times)
    views = views_per_example(args.model) * args.batch
    return {
        "model": args.model,
        "backend": keras.backend.backend(),
        "jit_compile": args.jit_compile,
        "augment": args.augment,
        "pairs": args.batch,
        "views": views,
        "step_s": round(step, 3),
        "views_per_s": round(views / step, 3),
        "step_s_all": [round(t, 3) for t in times],
        "timed": f"{args.steps} step(s) after a warm-up" if args.steps else "the warm-up step",
        "warmup_s": round(warmup, 1),
        # this process's CPU seconds (user + system) per timed step: load-independent
        "process_cpu_s_per_step": round(own / max(1, args.steps), 3),
        "loss": float(np.asarray(loss).reshape(-1)[0]),
        "peak_rss_gb": peak_rss_gb(),
        # share of the machine used by other processes while timing (0..1): > 0.05 is contended
        "others_cpu_share": round(
            max(0.0, busy / os.sysconf("SC_CLK_TCK") - own)
            / max(1e-9, sum(times))
            / os.cpu_count(),
            3,
        ),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def distributed_worker(args):
    """Runs in the subprocess: fit-based step time on logical devices, with or without a
    distribution (args.distribution == "none": one device of the same split host)."""
    import keras
    import numpy as np

    from keras_clmr import distributed

    distributed.split_logical_cpus(args.devices)
    dist = distributed.setup_distribution(args.distribution)
    with dist.scope():
        model = build_model(args.model, args.augment)
        distributed.set_sync_batchnorm(model)
        model.compile(optimizer=keras.optimizers.Adam(3e-4), jit_compile=args.jit_compile)
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((args.batch * args.steps, model.input_samples + 4096))).astype(
        "float32"
    )
    start = time.perf_counter()
    model.fit(x[: args.batch], batch_size=args.batch, epochs=1, verbose=0, shuffle=False)
    warmup = time.perf_counter() - start
    own0 = os.times()
    start = time.perf_counter()
    history = model.fit(x, batch_size=args.batch, epochs=1, verbose=0, shuffle=False)
    elapsed = time.perf_counter() - start
    own1 = os.times()
    step = elapsed / args.steps
    return {
        "model": args.model,
        "backend": keras.backend.backend(),
        "jit_compile": args.jit_compile,
        "augment": args.augment,
        "pairs": args.batch,
        "views": 2 * args.batch,
        "distribution": args.distribution,
        "replicas": dist.num_replicas,
        "logical_devices": args.devices,
        "step_s": round(step, 3),
        "views_per_s": round(2 * args.batch / step, 3),
        "warmup_s": round(warmup, 1),
        "process_cpu_s_per_step": round(
            ((own1.user + own1.system) - (own0.user + own0.system)) / args.steps, 3
        ),
        "loss": float(history.history["loss"][-1]),
    }


def run_config(backend, model, jit_compile, augment, batch, steps, distribution=None, devices=2):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    command = [
        sys.executable,
        "-m",
        "benchmarks.train_step",
        "--worker",
        f"--model={model}",
        f"--batch={batch}",
        f"--steps={steps}",
        f"--augment={augment}",
    ]
    if distribution is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        command += [f"--distribution={distribution}", f"--devices={devices}"]
    command.append("--jit_compile" if jit_compile else "--no-jit_compile")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        return {
            "model": model,
            "backend": backend,
            "jit_compile": jit_compile,
            "augment": augment,
            "distribution": distribution,
            "error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed",
        }
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_reference(model, batch, steps):
    """The original PyTorch train step of ``model`` at ``batch`` pairs, in its own process."""
    from benchmarks.reference import run_module

    if model not in ("clmr", "pemr"):
        return {"error": f"no reference train step for {model}"}
    return run_module(f"{model}_torch", "train", f"--pairs={batch}", f"--steps={steps}")


def compare(row, reference):
    """Add speed and peak-memory ratios to the reference (same model and batch) to ``row``."""
    if "views_per_s" in row and reference.get("views_per_s"):
        row["ratio_to_reference"] = round(row["views_per_s"] / reference["views_per_s"], 2)
    if row.get("peak_rss_gb") and reference.get("peak_rss_gb"):
        row["memory_ratio_to_reference"] = round(row["peak_rss_gb"] / reference["peak_rss_gb"], 2)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--model", default="clmr", choices=["clmr", "pemr", "cpc"])
    parser.add_argument(
        "--models", default=None, help="models timed in one run, e.g. clmr,cpc (default: --model)"
    )
    parser.add_argument("--augment", default="crop", choices=["crop", "clmr"])
    parser.add_argument(
        "--batch", default="48", help="pairs per step (views = 2 x batch); a list runs each"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument(
        "--reference_steps",
        type=int,
        default=None,
        help="timed reference steps (default --steps; 0: time its warm-up step, as eager PyTorch "
        "compiles nothing: saves a step on a busy machine)",
    )
    parser.add_argument("--jit", default="both", choices=["both", "on", "off"])
    parser.add_argument(
        "--reference", action="store_true", help="also run the original PyTorch train step"
    )
    parser.add_argument(
        "--distribution",
        default=None,
        choices=["none", "mirrored", "data_parallel"],
        help="compare single-device with this distribution on --devices logical CPU devices "
        "(mirrored: TensorFlow; data_parallel: JAX)",
    )
    parser.add_argument(
        "--devices", type=int, default=2, help="logical CPU devices with --distribution"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--jit_compile", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    batches = [int(b) for b in str(args.batch).split(",")]
    if args.worker or args.distribution:
        if len(batches) != 1:
            parser.error("--distribution takes one --batch")
        args.batch = batches[0]
    if args.worker:
        print(json.dumps(distributed_worker(args) if args.distribution else worker(args)))
        return
    if args.distribution:
        results = []
        for backend in args.backends.split(","):
            name = {"tensorflow": "mirrored", "jax": "data_parallel"}.get(backend)
            if name is None or args.distribution not in ("none", name):
                continue  # no data-parallel engine for this backend in released Keras
            jit = args.jit == "on"
            for distribution in ("none", name):
                results.append(
                    run_config(
                        backend,
                        args.model,
                        jit,
                        args.augment,
                        args.batch,
                        args.steps,
                        distribution,
                        args.devices,
                    )
                )
                print(json.dumps(results[-1]), file=sys.stderr)
            single, multi = results[-2], results[-1]
            if "views_per_s" in single and "views_per_s" in multi:
                multi["speedup_vs_single_device"] = round(
                    multi["views_per_s"] / single["views_per_s"], 2
                )
        print(
            json.dumps(
                {
                    "benchmark": "train_step",
                    "model": args.model,
                    "augment": args.augment,
                    "pairs": args.batch,
                    "devices": args.devices,
                    "results": results,
                },
                indent=2,
            )
        )
        return

    results = []
    references = []
    models = args.models.split(",") if args.models else [args.model]
    jits = {"both": [True, False], "on": [True], "off": [False]}[args.jit]
    for model in models:
        for batch in batches:
            rows = []
            for backend in args.backends.split(","):
                for jit in [False] if backend == "torch" else jits:  # XLA: TF/JAX only
                    rows.append(run_config(backend, model, jit, args.augment, batch, args.steps))
                    print(json.dumps(rows[-1]), file=sys.stderr)
            if args.reference:  # right after ours: the same minutes of machine load
                steps = args.steps if args.reference_steps is None else args.reference_steps
                reference = run_reference(model, batch, steps)
                print(json.dumps(reference), file=sys.stderr)
                references.append(reference)
                for row in rows:
                    compare(row, reference)
            results.extend(rows)
    summary = {
        "benchmark": "train_step",
        "model": ",".join(models),
        "augment": args.augment,
        "pairs": batches if len(batches) > 1 else batches[0],
        "results": results,
    }
    if args.reference:
        summary["reference"] = references
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
