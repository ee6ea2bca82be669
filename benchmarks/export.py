"""Exported-model figures: windows/s of the full-size SampleCNN encoder at batch 32 through

- our ONNX export (Keras ``model.export`` + keras_clmr's BatchNorm-folding pass) in onnxruntime,
- the same export without the pass (what tf2onnx alone gives),
- our SavedModel (``tf.saved_model.load``, signature ``embed``),
- the original PyTorch encoder exported to ONNX by the external reference harness's ``infer``
  (``torch.onnx.export``, opset 17; see benchmarks/reference/__init__.py), run in the same
  onnxruntime, in the same process.

    python -m benchmarks.export                 # ~2-4 min on a loaded 2-core machine
    python -m benchmarks.export --reps 7 --skip-reference-run
    python -m benchmarks.export --only-models --models=tagger,pemr,musicnn-mtt,vgg-mtt

The ONNX sessions are timed interleaved (round-robin, one batch each per round) so every ratio
comes from the same minutes of machine load; medians over ``--reps`` rounds. The reference
harness itself is run first (unless ``--skip-reference-run``) to write its ONNX file and its own
figures, which are included. Prints one JSON object.
"""

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# Where the reference harness writes its ONNX export (CLMR_ONNX_PATH), read back here.
REFERENCE_ONNX = os.path.join(tempfile.gettempdir(), "keras_clmr_reference_samplecnn.onnx")


def _cpu_times():
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]


def _reference_run():
    from benchmarks.reference import ReferenceUnavailable, harness

    try:
        reference_python, reference_script = harness()
    except ReferenceUnavailable as error:
        return {"skipped": str(error)}
    env = dict(os.environ, CLMR_ONNX_PATH=REFERENCE_ONNX)
    done = subprocess.run(
        [reference_python, reference_script, "infer"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if done.returncode != 0:
        return {"failed": done.stderr[-1000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _model():
    import keras
    import numpy as np

    from keras_clmr.models import SampleCNN

    keras.utils.set_random_seed(0)
    model = SampleCNN()
    rng = np.random.default_rng(0)
    for layer in model.stack:  # non-trivial BN statistics (as in a trained model)
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape).astype("float32"))
            layer.moving_variance.assign(
                rng.uniform(0.5, 2.0, layer.moving_variance.shape).astype("float32")
            )
    return model


def _op_counts(path):
    import onnx

    return dict(collections.Counter(node.op_type for node in onnx.load(path).graph.node))


def _other_model(name):
    """Full-size models besides the SampleCNN encoder: 'tagger', 'pemr' or a musicnn preset name."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    if name == "tagger":
        from keras_clmr.models import MusicTagger

        tagger = MusicTagger(_model(), 50)
        tagger.build((None, 59049))
        return tagger
    if name == "pemr":
        from keras_clmr.models.fcn import FCN

        model = FCN()
        model(np.zeros((1, model.input_samples), "float32"))
        return model
    from keras_clmr.hub import load_pretrained

    return load_pretrained(name, task="tag")


def _parity_figures(parity):
    figures = {"max_abs_diff": parity["max_abs_diff"]}
    if "without_float16_rounding" in parity:
        figures["without_float16_rounding"] = parity["without_float16_rounding"]["max_abs_diff"]
    return figures


def other_models(names, batch, reps):
    """Parity and windows/s (ONNX Runtime, SavedModel) of each full-size model, exported both
    ways."""
    import numpy as np
    import tensorflow as tf

    from keras_clmr import export

    out = {}
    for name in names:
        model = _other_model(name)
        work = tempfile.mkdtemp(prefix=f"keras_clmr_bench_{name}-")
        onnx_path, saved = os.path.join(work, "model.onnx"), os.path.join(work, "saved_model")
        onnx_info = export.export_onnx(model, onnx_path)
        saved_info = export.export_savedmodel(model, saved)
        entry = {
            "class": type(model).__name__,
            "parameters": int(model.count_params()),
            "input_samples": export.input_samples(model),
            "onnx_parity": _parity_figures(export.checked_parity("onnx", model, onnx_path)),
            "savedmodel_parity": _parity_figures(export.checked_parity("savedmodel", model, saved)),
            "onnx_export_s": onnx_info["export_seconds"],
            "savedmodel_export_s": saved_info["export_seconds"],
            "onnx_ops_removed_by_pass": onnx_info["optimized"]["nodes_before"]
            - onnx_info["optimized"]["nodes_after"],
        }
        audio = (
            np.random.default_rng(1)
            .uniform(-0.5, 0.5, (batch, entry["input_samples"]))
            .astype("float32")
        )
        session = export.onnx_session(onnx_path)
        signature = tf.saved_model.load(saved).signatures[
            "tag" if export.split_model(model)[1] else "embed"
        ]
        runs = {
            # Bound now (default arguments): the loop rebinds these names for the next model.
            "onnxruntime": lambda s=session, a=audio: s.run(None, {"audio": a}),
            "savedmodel": lambda f=signature, a=audio: f(audio=tf.constant(a)),
        }
        times = {k: [] for k in runs}
        for fn in runs.values():
            fn()
        for _ in range(reps):
            for key, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
        for key, values in times.items():
            entry[f"{key}_windows_per_s_median"] = round(batch / statistics.median(values), 2)
        out[name] = entry
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--skip-reference-run",
        action="store_true",
        help="do not run reference_clmr.py infer (reuse its ONNX file if it exists)",
    )
    parser.add_argument(
        "--models",
        default="",
        help="also export and time these full-size models (comma list of: tagger, pemr, "
        "musicnn-mtt, vgg-mtt, ...), 3 interleaved rounds each",
    )
    parser.add_argument(
        "--only-models", action="store_true", help="skip the SampleCNN/reference comparison"
    )
    args = parser.parse_args()
    if args.only_models:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        print(
            json.dumps(
                {
                    "batch": args.batch,
                    "loadavg_start": [round(x, 2) for x in os.getloadavg()],
                    "models": other_models([m for m in args.models.split(",") if m], args.batch, 3),
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                }
            )
        )
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    from keras_clmr import export

    result = {
        "batch": args.batch,
        "reps": args.reps,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    if not args.skip_reference_run:
        result["reference_harness"] = _reference_run()
    model = _model()
    work = tempfile.mkdtemp(prefix="keras_clmr_bench_export-")
    ours, raw, saved = (
        os.path.join(work, name) for name in ("model.onnx", "raw.onnx", "saved_model")
    )
    info = export.export_onnx(model, ours)
    export.export_onnx(model, raw, optimize=False)
    export.export_savedmodel(model, saved)
    parity = {
        "onnx": export.check_onnx_parity(model, ours)["max_abs_diff"],
        "onnx_unoptimized": export.check_onnx_parity(model, raw)["max_abs_diff"],
        "savedmodel": export.check_savedmodel_parity(model, saved)["max_abs_diff"],
    }

    audio = (
        np.random.default_rng(1)
        .uniform(-0.5, 0.5, (args.batch, model.input_samples))
        .astype("float32")
    )
    runners = {
        "keras_clmr_onnx": (export.onnx_session(ours), audio),
        "keras_clmr_onnx_unoptimized": (export.onnx_session(raw), audio),
    }
    if os.path.exists(REFERENCE_ONNX):
        runners["pytorch_reference_onnx"] = (export.onnx_session(REFERENCE_ONNX), audio[:, None, :])
    loaded = tf.saved_model.load(saved)
    embed = loaded.signatures["embed"]
    tf_audio = tf.constant(audio)

    def run(name):
        if name == "keras_clmr_savedmodel":
            embed(audio=tf_audio)["embedding"].numpy()
        else:
            session, x = runners[name]
            session.run(None, {session.get_inputs()[0].name: x})

    names = [*runners, "keras_clmr_savedmodel"]
    for name in names:  # warm-up
        run(name)
    times = {name: [] for name in names}
    total0, idle0 = _cpu_times()
    own0 = time.process_time()
    wall0 = time.perf_counter()
    for _ in range(args.reps):
        for name in names:
            start = time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - start)
    wall = time.perf_counter() - wall0
    total1, idle1 = _cpu_times()
    busy_share = 1.0 - (idle1 - idle0) / max(total1 - total0, 1e-9)
    own_share = (time.process_time() - own0) / (wall * (os.cpu_count() or 1))
    figures = {}
    for name in names:
        median = statistics.median(times[name])
        figures[name] = {
            "windows_per_s_median": round(args.batch / median, 2),
            "windows_per_s_best": round(args.batch / min(times[name]), 2),
            "s_per_batch": [round(t, 4) for t in times[name]],
        }
    result["figures"] = figures
    if "pytorch_reference_onnx" in figures:
        ref = figures["pytorch_reference_onnx"]["windows_per_s_median"]
        result["ratios_vs_pytorch_onnx"] = {
            name: round(f["windows_per_s_median"] / ref, 3)
            for name, f in figures.items()
            if name != "pytorch_reference_onnx"
        }
    result["parity_max_abs_diff"] = parity
    result["graphs"] = {
        "keras_clmr_onnx": _op_counts(ours),
        "keras_clmr_onnx_unoptimized": _op_counts(raw),
    }
    if os.path.exists(REFERENCE_ONNX):
        result["graphs"]["pytorch_reference_onnx"] = _op_counts(REFERENCE_ONNX)
    result["optimize_pass"] = info["optimized"]
    result["cpu_share_during_timing"] = {
        "all": round(busy_share, 3),
        "own": round(own_share, 3),
        "others": round(max(busy_share - own_share, 0.0), 3),
    }
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    import onnxruntime

    result["versions"] = {"onnxruntime": onnxruntime.__version__, "tensorflow": tf.__version__}
    if args.models:
        result["models"] = other_models([m for m in args.models.split(",") if m], args.batch, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
