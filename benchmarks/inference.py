"""Inference figures: embed() windows/s (full-size SampleCNN, batch 32) and peak memory on long
files.

    python -m benchmarks.inference              # everything (~10 min on a loaded 2-core machine)
    python -m benchmarks.inference --skip-memory --backends=torch --rounds=1 --no-onnxruntime

Prints one JSON object. Throughput: each Keras backend of --backends runs ``embed`` (engine
"keras": predict_on_batch, compiled on TF/JAX, torch.no_grad on PyTorch) in its own process,
interleaved round by round with the original PyTorch encoder in eager mode
(``benchmarks.reference.clmr_torch``'s network timed as its ``infer`` does: eval,
inference_mode, same batch, its own process, torch's default threads as ours), so ratios come
from the same minutes of machine load; each reports windows/s and process CPU seconds per
window (load-independent: the ratio to trust on a busy machine). The onnxruntime
engine (the graph of keras_clmr.export.onnx) is timed in the first backend's process. Peak
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


def _cpu_seconds():
    """This process's user + system CPU seconds (load-independent, unlike wall time)."""
    times = os.times()
    return times.user + times.system


def throughput(model, engine, batches, batch_size=32):
    """(windows/s, process CPU seconds per window) of ``embed`` over ``batches`` full batches,
    after one warm-up batch (it includes compilation)."""
    import numpy as np

    from keras_clmr.inference import embed

    n = batches * batch_size
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, n * model.input_samples).astype("float32")
    embed(
        audio[: batch_size * model.input_samples], model=model, batch_size=batch_size, engine=engine
    )  # warm-up
    cpu0, start = _cpu_seconds(), time.perf_counter()
    result = embed(audio, model=model, batch_size=batch_size, engine=engine)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
    assert result.embeddings.shape == (n, model.embedding_dim)
    return n / seconds, cpu / n


def throughput_worker(args):
    """Runs in a subprocess (its KERAS_BACKEND fixed): each engine's windows/s and CPU s/window.
    torch's intra-op threads stay at their default, the reference's."""
    import keras

    model = _model()
    report = {"backend": keras.backend.backend(), "keras_version": keras.__version__}
    if keras.backend.backend() == "torch":
        import torch

        report["torch_threads"] = torch.get_num_threads()
    for engine in args.engines.split(","):
        windows_per_s, cpu_per_window = throughput(model, engine, args.batches)
        report[engine] = {
            "windows_per_s": round(windows_per_s, 2),
            "cpu_s_per_window": round(cpu_per_window, 4),
        }
    report["loadavg"] = _loadavg()
    return report


def reference_worker(args):
    """Runs in a subprocess: the torch-eager reference encoder (``clmr_torch``'s network, eval
    mode, inference_mode, batch 32, torch's default threads): one warm-up batch, then
    --batches timed ones, as ``clmr_torch infer`` times them, with the process's CPU seconds."""
    import numpy as np
    import torch

    from benchmarks.reference import clmr_torch

    encoder = clmr_torch.build().encoder.eval()
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (32, 1, clmr_torch.SAMPLES))
    audio = torch.from_numpy(audio.astype("float32"))
    with torch.inference_mode():
        encoder(audio)  # warm-up
        cpu0, start = _cpu_seconds(), time.perf_counter()
        for _ in range(args.batches):
            encoder(audio)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
    windows = 32 * args.batches
    return {
        "reference": "clmr_torch (torch eager)",
        "windows_per_s": round(windows / seconds, 2),
        "cpu_s_per_window": round(cpu / windows, 4),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg": _loadavg(),
    }


def _run_worker(flag, args, backend=None, engines=None):
    """``python -m benchmarks.inference <flag>`` in a fresh process: its JSON, or an error."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    command = [sys.executable, "-m", "benchmarks.inference", flag, f"--batches={args.batches}"]
    if engines:
        command.append(f"--engines={engines}")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-3:] if proc.stderr.strip() else ["failed"]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def throughput_figures(args):
    """Per backend (each in its own process), interleaved round by round with the torch-eager
    reference (its own process), so every ratio comes from the same minutes of machine load.

    ``ratio_*_vs_torch_eager`` compares windows/s (wall); ``cpu_ratio_*`` compares process CPU
    seconds per window (reference / ours: > 1 means ours needs less CPU), the figure to trust
    on a machine shared with other jobs.
    """
    backends = args.backends.split(",")
    runs = {backend: [] for backend in backends}
    references = []
    for _ in range(args.rounds):
        for position, backend in enumerate(backends):
            engines = "keras,onnxruntime" if position == 0 and args.onnxruntime else "keras"
            runs[backend].append(_run_worker("--throughput-worker", args, backend, engines))
            print(json.dumps(runs[backend][-1]), file=sys.stderr)
        if not args.skip_reference:
            references.append(_run_worker("--reference-worker", args))
            print(json.dumps(references[-1]), file=sys.stderr)
    measured = [r for r in references if "error" not in r]
    reference = {
        "runs": references,
        "torch_eager_windows_per_s": _median([r["windows_per_s"] for r in measured]),
        "cpu_s_per_window": _median([r["cpu_s_per_window"] for r in measured]),
    }
    report = {"target_ratio_min": 1.5, "reference": reference, "backends": {}}
    for backend in backends:
        rows = [r for r in runs[backend] if "error" not in r]
        entry = {"runs": runs[backend]}
        for engine in ("keras", "onnxruntime"):
            engine_rows = [r[engine] for r in rows if engine in r]
            if not engine_rows:
                continue
            speed = _median([r["windows_per_s"] for r in engine_rows])
            cpu = _median([r["cpu_s_per_window"] for r in engine_rows])
            entry[f"{engine}_windows_per_s"] = speed
            entry[f"{engine}_cpu_s_per_window"] = cpu
            if reference["torch_eager_windows_per_s"]:
                entry[f"ratio_{engine}_vs_torch_eager"] = round(
                    speed / reference["torch_eager_windows_per_s"], 2
                )
                entry[f"cpu_ratio_{engine}_vs_torch_eager"] = round(
                    reference["cpu_s_per_window"] / cpu, 2
                )
        report["backends"][backend] = entry
    return report


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
    parser.add_argument(
        "--backends", default="tensorflow,jax,torch", help="Keras backends, one process each"
    )
    parser.add_argument(
        "--onnxruntime",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time engine='onnxruntime' (in the first backend's process)",
    )
    parser.add_argument("--child")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--throughput-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reference-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engines", default="keras", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.child:
        child(args.child, args.engine)
        return
    if args.throughput_worker or args.reference_worker:
        worker = throughput_worker if args.throughput_worker else reference_worker
        print(json.dumps(worker(args)))
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
