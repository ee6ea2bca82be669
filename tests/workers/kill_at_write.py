"""Worker for tests/test_bad_inputs_runs.py: run prepare or pretrain and SIGKILL itself at a
named write point (a file written but not renamed, a rename done but its record not written).

    python tests/workers/kill_at_write.py prepare POINT CORPUS OUTPUT
    python tests/workers/kill_at_write.py pretrain POINT OUTPUT_DIR FLAG...
"""

import os
import signal
import sys


def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def write_then_die(io, path, data):
    """The temporary file of an atomic write complete, then killed before its rename."""
    with io.atomic_path(path) as temporary:
        with open(temporary, "wb") as file:
            file.write(data)
        die()


def prepare(point, corpus, output):
    from keras_clmr import io
    from keras_clmr.data import datasets
    from keras_clmr.data import prepare as module

    real_digest, real_write = module._digest, module._write_atomic
    markers = []

    def digest(path):
        if point == "shard-temp-written":
            die()
        return real_digest(path)

    def write(path, data):
        name = os.path.basename(path)
        if path.endswith(".tfrecord.json"):
            if point == "shard-renamed":
                die()
            real_write(path, data)
            markers.append(name)
            if point == "marker-written" and len(markers) == 2:
                die()
            return
        if name == module.CLIPS and point == "clips-table":
            write_then_die(io, path, data.encode() if isinstance(data, str) else data)
        if name == module.MANIFEST and point == "manifest":
            write_then_die(io, path, data.encode() if isinstance(data, str) else data)
        real_write(path, data)

    module._digest, module._write_atomic = digest, write
    spec = datasets.csv_dataset(corpus)
    module.prepare(
        spec,
        output,
        workers=1,
        clips_per_shard=2,
        progress=False,
        config={"source": corpus},
    )
    raise SystemExit("the kill point was never reached")


def pretrain(point, output, flags):
    from keras_clmr import io
    from keras_clmr.commands import run

    real_save, real_json = io.atomic_save_model, io.atomic_write_json

    def save(model, path):
        name = os.path.basename(path)
        if point == "checkpoint-temp" and name == "epoch-00002.keras":
            with io.atomic_path(path) as temporary:
                model.save(temporary)
                die()
        if point == "final-model" and name == "encoder.keras":
            die()
        return real_save(model, path)

    def write_json(path, payload, sort_keys=False):
        if point == "state-temp" and payload.get("epoch") == 2 and "finished" not in payload:
            import json

            write_then_die(io, path, json.dumps(io.to_jsonable(payload)).encode())
        return real_json(path, payload, sort_keys=sort_keys)

    io.atomic_save_model, io.atomic_write_json = save, write_json
    run("pretrain", ["pretrain", *flags, f"--output_dir={output}"])


if __name__ == "__main__":
    mode, point = sys.argv[1], sys.argv[2]
    if mode == "prepare":
        prepare(point, sys.argv[3], sys.argv[4])
    else:
        pretrain(point, sys.argv[3], sys.argv[4:])
