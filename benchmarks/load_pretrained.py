"""``keras_clmr.load_pretrained("clmr-mtat")`` from an empty cache (cold) and a warm cache.

    python -m benchmarks.load_pretrained               # 1 cold + 3 warm loads (~2 min on 2 cores)
    python -m benchmarks.load_pretrained --warm-runs 5 --baseline

A full-size CLMR 2.0-layout release zip (SimCLR's state dict, torch.save, inside a zip; random
weights: the figure is about time, not parity) is served from a 127.0.0.1 HTTP server and the
registry's URL for ``clmr-mtat`` is pointed at it. Each load runs in a fresh Python process
that first imports keras and tensorflow (not counted), then times ``load_pretrained`` and the
first embedding of one window. Cold = download + convert + parity check + save + load; warm =
the cache hit (sha256 of every file, then build + weights). ``--baseline`` adds warm loads
through the plain Keras path (deserialize, random init, ``load_weights``) for comparison.
Needs torch (to write the release file). Prints one JSON object: wall and CPU seconds (the
process's CPU time; on a shared, overloaded machine wall time is mostly waiting for a core,
so compare CPU seconds there and quote the load average that is printed with them).
"""

import argparse
import dataclasses
import http.server
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

PRESET = "clmr-mtat"
ZIP_NAME = "clmr_checkpoint_10000.zip"


def _release_zip():
    import torch

    from keras_clmr.conversion import torch_reference

    torch.manual_seed(0)
    encoder = torch_reference.sample_cnn(
        strides=(3,) * 9, channels=(128, 128, 128, 256, 256, 256, 256, 256, 256, 512, 512)
    )
    state = torch_reference.simclr(encoder, 512, 128).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(ZIP_NAME.replace(".zip", ".pt"), buffer.getvalue())
    return archive.getvalue()


def _serve(data):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/{ZIP_NAME}"


def child(url, baseline):
    """One load in this (fresh) process; prints {"load_s", "load_cpu_s", "first_embedding_s"}."""
    import keras  # noqa: F401  (framework import: not counted)
    import numpy as np
    import tensorflow  # noqa: F401

    wall, cpu = time.perf_counter(), time.process_time()
    import keras_clmr
    from keras_clmr import presets
    from keras_clmr.hub import folder

    preset = presets.get_preset(PRESET)
    presets._REGISTRY[PRESET] = dataclasses.replace(preset, source={"embed": url}, assets={})
    if baseline:
        folder._build_with_stored_weights = lambda *args: None
    model = keras_clmr.load_pretrained(PRESET, progress=False)
    load_s, load_cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (1, model.input_samples))
    started = time.perf_counter()
    model.predict_on_batch(audio.astype("float32"))
    print(
        json.dumps(
            {
                "load_s": round(load_s, 3),
                "load_cpu_s": round(load_cpu_s, 3),
                "first_embedding_s": round(time.perf_counter() - started, 3),
            }
        )
    )


def _run_child(url, cache, baseline=False):
    env = dict(os.environ, KERAS_CLMR_CACHE=cache, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_CLMR_OFFLINE", None)
    env.pop("HF_HUB_OFFLINE", None)
    command = [sys.executable, "-m", "benchmarks.load_pretrained", "--child", url]
    if baseline:
        command.append("--baseline")
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(runs):
    return {
        key: round(statistics.median(r[key] for r in runs), 3)
        for key in ("load_s", "load_cpu_s", "first_embedding_s")
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--baseline", action="store_true", help="also time the plain Keras path")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.baseline)

    httpd, url = _serve(_release_zip())
    try:
        with tempfile.TemporaryDirectory() as cache:
            load_before = [round(x, 2) for x in os.getloadavg()]
            cold = _run_child(url, cache)
            warm = [_run_child(url, cache) for _ in range(args.warm_runs)]
            plain = (
                [_run_child(url, cache, baseline=True) for _ in range(args.warm_runs)]
                if args.baseline
                else None
            )
    finally:
        httpd.shutdown()
        httpd.server_close()
    result = {
        "preset": PRESET,
        "what": "seconds of load_pretrained in a fresh process, after `import keras, tensorflow`",
        "cold": cold,
        "warm_median": _summary(warm),
        "warm_runs": warm,
        "loadavg_before_after": [load_before, [round(x, 2) for x in os.getloadavg()]],
        "cpu_count": os.cpu_count(),
    }
    if plain is not None:
        result["warm_plain_keras_path_median"] = _summary(plain)
        result["warm_plain_keras_path_runs"] = plain
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
