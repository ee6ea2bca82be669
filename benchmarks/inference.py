"""Inference figures: embed() windows/s (full-size SampleCNN, batch 32) and peak memory on long
files.

    python -m benchmarks.inference              # everything (~5-10 min on a loaded 2-core machine)
    python -m benchmarks.inference --skip-memory --skip-reference

Prints one JSON object. Throughput is measured for both engines (keras = predict_on_batch on
the current backend, onnxruntime = the graph of keras_clmr.export.onnx), interleaved
with the original PyTorch encoder in eager mode (``benchmarks.reference.clmr_torch infer``,
in its own process, same batch), so ratios come from the same minutes of machine load. Peak
memory is ru_maxrss of a fresh subprocess running embed() on a 10-minute and a 60-minute
16 kHz wav (streamed and resampled to 22050 Hz); the target is 60 min <= 1.2 x 10 min.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def _model():
    import keras

    from keras_clmr.models import SampleCNN

    keras.utils.set_random_seed(0)
    model = SampleCNN()
    if not model.built:
        model.build((None, model.input_samples))
    return model


def throughput(model, engine, batches, batch_size=32):
    import numpy as np

    from keras_clmr.inference import embed

    n = batches * batch_size
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, n * model.input_samples).astype("float32")
    embed(
        audio[: batch_size * model.input_samples], model=model, batch_size=batch_size, engine=engine
    )  # warm-up
    start = time.perf_counter()
    result = embed(audio, model=model, batch_size=batch_size, engine=engine)
    seconds = time.perf_counter() - start
    assert result.embeddings.shape == (n, model.embedding_dim)
    return n / seconds


def reference(batches):
    """Torch-eager SampleCNN (eval, inference_mode) at batch 32, in its own process."""
    from benchmarks.reference import run_module

    data = run_module("clmr_torch", "infer", "--batch=32", f"--batches={batches}")
    if "error" in data:
        return data
    return {
        "torch_eager_views_per_s": data["views_per_s"],
        "peak_rss_gb": data["peak_rss_gb"],
        "others_cpu_share": data["others_cpu_share"],
    }


def write_wav(path, minutes, rate=16000):
    import numpy as np
    import soundfile as sf

    block = rate * 10
    t = np.arange(block) / rate
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        for i in range(minutes * 6):
            tone = 0.3 * np.sin(2 * np.pi * (220 + 10 * (i % 12)) * t)
            f.write(
                (tone + 0.01 * np.random.default_rng(i).standard_normal(block)).astype("float32")
            )


def _status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def child(path, engine):
    """Run in a fresh process: embed one long file, report peak RSS (whole process and during
    embed)."""
    from keras_clmr.inference import embed

    model = _model()
    import numpy as np

    embed(
        np.zeros(model.input_samples, "float32"), model=model, engine=engine
    )  # warm-up: build the engine
    rss_before = _status_mb("VmRSS")
    try:  # reset the peak-RSS mark (VmHWM) so the embed peak can be read on its own
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    result = embed(path, model=model, engine=engine)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "windows": int(result.embeddings.shape[0]),
                "duration_s": round(result.duration, 1),
                "seconds": round(seconds, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "rss_before_embed_mb": rss_before,
                "peak_rss_during_embed_mb": _status_mb("VmHWM") if reset else None,
            }
        )
    )


def memory(engine):
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for minutes in (10, 60):
            path = os.path.join(folder, f"{minutes}min.wav")
            write_wav(path, minutes)
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.inference", "--child", path, "--engine", engine],
                capture_output=True,
                text=True,
                timeout=3600,
            )
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"memory child failed: {proc.stderr[-3000:]}")
            out[f"{minutes}min"] = json.loads(lines[-1])
            os.remove(path)
    # ru_maxrss survives fork+exec on Linux, so the children are started before this process
    # imports Keras (see main) and their figures are their own.
    out["ratio_60_to_10"] = round(out["60min"]["peak_rss_mb"] / out["10min"]["peak_rss_mb"], 3)
    if out["10min"]["peak_rss_during_embed_mb"]:
        out["ratio_60_to_10_during_embed"] = round(
            out["60min"]["peak_rss_during_embed_mb"] / out["10min"]["peak_rss_during_embed_mb"], 3
        )
    out["target_ratio_max"] = 1.2
    out["meets_target"] = out["ratio_60_to_10"] <= 1.2
    return out


def throughput_figures(args):
    import keras

    model = _model()
    runs = {"keras": [], "onnxruntime": [], "reference": []}
    for _ in range(args.rounds):
        for engine in ("keras", "onnxruntime"):
            runs[engine].append(round(throughput(model, engine, args.batches), 2))
        if not args.skip_reference:
            runs["reference"].append(reference(args.batches))
    report = {"backend": keras.backend.backend(), "keras": keras.__version__}
    report.update({f"{engine}_windows_per_s": runs[engine] for engine in ("keras", "onnxruntime")})
    for engine in ("keras", "onnxruntime"):
        report[f"{engine}_median"] = statistics.median(runs[engine])
    measured = [r for r in runs["reference"] if "error" not in r]
    if measured:
        torch_eager = statistics.median(r["torch_eager_views_per_s"] for r in measured)
        report.update(
            reference_runs=runs["reference"],
            reference_torch_eager_median=torch_eager,
            ratio_keras_vs_torch_eager=round(report["keras_median"] / torch_eager, 2),
            ratio_onnxruntime_vs_torch_eager=round(report["onnxruntime_median"] / torch_eager, 2),
            target_ratio_min=1.5,
        )
    elif runs["reference"]:
        report["reference_error"] = runs["reference"][0]["error"]
    return report


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--batches", type=int, default=3, help="timed batches of 32 windows per measurement"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--memory-engine", default="auto")
    parser.add_argument("--child")
    parser.add_argument("--engine", default="auto")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.child:
        child(args.child, args.engine)
        return
    report = {
        "batch": 32,
        "loadavg_start": _loadavg(),
        "note": "2-core machine shared with other jobs: compare ratios.",
    }
    if not args.skip_memory:  # first: this process must stay small (see memory())
        report["memory"] = memory(args.memory_engine)
        report["memory"]["engine"] = args.memory_engine
    if not args.skip_throughput:
        report["throughput"] = throughput_figures(args)
    report["loadavg_end"] = _loadavg()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
