"""GPU readiness check: the pretraining train steps, augmentation and input pipeline on a device.

    python -m benchmarks.gpu_check            # on a CUDA machine: full size, ~5-10 min
    python -m benchmarks.gpu_check --smoke    # anywhere: tiny models, seconds (the CI test)

Runs on the TensorFlow backend (it fixes KERAS_BACKEND itself), with XLA (``jit_compile``)
and the ``mixed_bfloat16`` policy:

1. CLMR and PEMR train steps (full-size models, CLMR's augmentation chain inside the step)
   at global batches of 96 and 256 view pairs: views/s (median of --steps timed steps after
   one compiling warm-up step) and the device's peak memory.
2. The augmentation chain alone on the device: where its output tensor lives (so whether the
   chain ran on the GPU) and views/s.
3. The input pipeline (``pretraining_dataset``) from local shards, written by this script into
   a temporary folder: view pairs/s, compared with the train step's pairs/s to say whether a
   step would be input-bound.

Prints one JSON object. Without a GPU it says ``"gpu": "no GPU"`` and measures on the CPU;
the full-size configuration then takes far too long, so use ``--smoke`` there.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

FULL = {"pairs": (96, 256), "clips": 96, "clip_seconds": 30.0, "steps": 3, "jit": True}
# Tiny widths, one batch size, few clips: exercises every code path in seconds on a CPU.
SMOKE = {"pairs": (2,), "clips": 4, "clip_seconds": 3.0, "steps": 1, "jit": False}
# The smoke train steps crop only (the chain's tracing alone takes minutes on a busy CPU);
# the chain itself still runs in the augmentation part.
AUGMENT = {"full": "clmr", "smoke": "crop"}
SMOKE_OPTIONS = {
    "clmr": {"channels": (4,) * 10 + (8,)},
    "pemr": {"channels": (4, 4, 4, 8), "transformer_layers": 2, "transformer_heads": 2},
}


def device_info():
    """("GPU:0", name) on a CUDA machine, ("CPU:0", "no GPU") otherwise."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU:0", "no GPU"
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    details = tf.config.experimental.get_device_details(gpus[0])
    return "GPU:0", details.get("device_name", "GPU")


def device_memory_gb(device):
    """Peak device memory since the last reset (GPU), or this process's peak RSS (CPU), GB."""
    import tensorflow as tf

    if device.startswith("GPU"):
        return round(tf.config.experimental.get_memory_info(device)["peak"] / 1e9, 3)
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 3)
    return None


def reset_memory(device):
    import tensorflow as tf

    if device.startswith("GPU"):
        tf.config.experimental.reset_memory_stats(device)


def train_step(model_name, pairs, steps, jit, options, device, augment="clmr"):
    """Views/s and peak memory of one pretrainer's train step (augmentation inside)."""
    import keras

    from keras_clmr.pretraining import build_pretrainer

    keras.backend.clear_session()
    reset_memory(device)
    model = build_pretrainer(model_name, augment=augment, seed=0, **options)
    model.compile(optimizer=keras.optimizers.Adam(3e-4), jit_compile=jit)
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((pairs, 2, model.input_samples))).astype("float32")
    started = time.perf_counter()
    model.train_on_batch(x)
    warmup = time.perf_counter() - started
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = model.train_on_batch(x)
        times.append(time.perf_counter() - started)
    step = statistics.median(times)
    return {
        "model": model_name,
        "pairs": pairs,
        "augment": augment,
        "views_per_s": round(2 * pairs / step, 2),
        "pairs_per_s": round(pairs / step, 2),
        "step_s": round(step, 4),
        "warmup_s": round(warmup, 1),
        "loss": float(np.asarray(loss).reshape(-1)[0]),
        "peak_memory_gb": device_memory_gb(device),
        "memory_kind": "device peak" if device.startswith("GPU") else "host peak RSS",
    }


def augmentation_on_device(pairs, steps, device):
    """Run CLMR's augmentation chain on ``device``; report where its output lives."""
    import tensorflow as tf

    from keras_clmr.pretraining import build_augmentation

    chain = build_augmentation("clmr", 22050, 0)
    with tf.device(device):
        views = tf.random.normal((2 * pairs, 59049), stddev=0.1)
        chain(views, training=True)  # build / trace
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            out = chain(views, training=True)
            _ = out.numpy()
            times.append(time.perf_counter() - started)
    placed = out.device
    return {
        "views": 2 * pairs,
        "views_per_s": round(2 * pairs / statistics.median(times), 1),
        "output_device": placed,
        "ran_on_device": device.startswith("GPU") and "GPU" in placed.upper(),
    }


def write_shards(folder, clips, seconds):
    """Prepared shards of synthetic 22050 Hz wav clips (tone + noise) in ``folder``."""
    import soundfile

    from keras_clmr.data import datasets, prepare

    source = os.path.join(folder, "wav")
    os.makedirs(source)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 22050)) / 22050
    for i in range(clips):
        clip = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(
            len(t)
        )
        soundfile.write(os.path.join(source, f"clip-{i:04d}.wav"), clip.astype("float32"), 22050)
    output = os.path.join(folder, "shards")
    prepare.prepare(datasets.folder(source), output, workers=1, clips_per_shard=8, progress=False)
    return output


def input_pipeline(shards, pairs, batches):
    """View pairs/s of ``pretraining_dataset`` from the local shards (batch ``pairs``)."""
    from keras_clmr.data import pipeline

    dataset = pipeline.pretraining_dataset(shards, segment_samples=59049, batch_size=pairs, seed=0)
    iterator = iter(dataset)
    next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    _ = batch.numpy()
    wall = time.perf_counter() - started
    return {
        "pairs": pairs,
        "batch_shape": list(batch.shape),
        "pairs_per_s": round(batches * pairs / wall, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny models, one small batch")
    parser.add_argument("--models", default="clmr,pemr")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    parser.add_argument(
        "--precision", default="mixed_bfloat16", help="Keras dtype policy (float32 to compare)"
    )
    args = parser.parse_args(argv)
    import keras

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("benchmarks.gpu_check runs on TensorFlow: unset KERAS_BACKEND.")
    config = SMOKE if args.smoke else FULL
    steps = args.steps or config["steps"]
    device, name = device_info()
    keras.config.set_dtype_policy(args.precision)
    report = {
        "benchmark": "gpu_check",
        "gpu": name,
        "device": device,
        "smoke": args.smoke,
        "jit_compile": config["jit"],
        "dtype_policy": args.precision,
        "train_steps": [],
    }
    if device == "CPU:0":
        report["note"] = "no GPU: figures are CPU figures of this configuration"
    for model_name in args.models.split(","):
        options = SMOKE_OPTIONS[model_name] if args.smoke else {}
        for pairs in config["pairs"]:
            try:
                row = train_step(
                    model_name,
                    pairs,
                    steps,
                    config["jit"],
                    options,
                    device,
                    AUGMENT["smoke" if args.smoke else "full"],
                )
            except Exception as error:  # an OOM at one size must not hide the others
                row = {"model": model_name, "pairs": pairs, "error": repr(error)[:300]}
            report["train_steps"].append(row)
            print(json.dumps(row), file=sys.stderr)
    keras.config.set_dtype_policy("float32")
    report["augmentation"] = augmentation_on_device(config["pairs"][0], steps, device)
    with tempfile.TemporaryDirectory() as folder:
        shards = write_shards(folder, config["clips"], config["clip_seconds"])
        pairs = config["pairs"][0]
        report["input_pipeline"] = input_pipeline(shards, pairs, batches=max(2, steps))
    fastest = max(
        (r["pairs_per_s"] for r in report["train_steps"] if "pairs_per_s" in r), default=None
    )
    if fastest is not None:
        supplied = report["input_pipeline"]["pairs_per_s"]
        report["input_bound"] = supplied < fastest
        report["pipeline_over_fastest_step"] = round(supplied / fastest, 2)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
