"""Worker for tests/test_kill_points.py: run ``keras-clmr export`` / ``keras-clmr convert`` or a
registry preset's first use, and SIGKILL itself at a named write point.

    python tests/workers/kill_export_convert.py POINT TARGET export FLAG...
    python tests/workers/kill_export_convert.py POINT TARGET convert FLAG...
    python tests/workers/kill_export_convert.py POINT TARGET first-use NAME URL

TARGET is the folder being written (the output, or the cache entry). The hook is
deterministic: the function named by POINT is wrapped so that its write completes (or, for
``final-rename``, is about to happen) and the process then kills itself; no timing.

    weights       keras.Model.save_weights returned: the weights in the staging folder
    savedmodel    the SavedModel written and parity-checked in the staging folder
    onnx          model.onnx written and parity-checked in the staging folder
    staged        everything written in the staging folder (card included), not renamed yet
    old-moved     the old TARGET renamed aside (.old-<pid>), the new one not yet in place
    final-rename  at the rename of the staging folder onto TARGET (an existing TARGET is
                  then already aside: the same state as old-moved)
    downloaded    a release file downloaded into the cache, not converted yet
    converted     the checkpoint converted and parity-checked, the preset not saved yet

Registry presets are used with their file checks off (``assets``: the test's files are tiny
stand-ins), as tests/test_release_chain.py does; first-use points the release URL at URL.
"""

import dataclasses
import os
import signal
import sys


def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def after(module, name):
    """Let ``module.name`` run, then die."""
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        real(*args, **kwargs)
        die()

    setattr(module, name, wrapped)


def install(point, target):
    import keras

    target = os.path.abspath(target)
    if point == "weights":
        after(keras.Model, "save_weights")
    elif point in ("savedmodel", "onnx"):
        from keras_clmr.export import preset

        after(preset, f"_export_{point}_checked")
    elif point == "staged":
        from keras_clmr.export import card

        after(card, "write_card")
    elif point in ("old-moved", "final-rename"):
        real_replace = os.replace
        staging_prefix = f".{os.path.basename(target)}.tmp-"

        def replace(source, destination):
            source, destination = os.fspath(source), os.fspath(destination)
            if point == "old-moved" and os.path.abspath(source) == target:
                real_replace(source, destination)
                die()
            if (
                point == "final-rename"
                and os.path.abspath(destination) == target
                and os.path.basename(source).startswith(staging_prefix)
            ):
                die()
            return real_replace(source, destination)

        os.replace = replace
    elif point == "downloaded":
        from keras_clmr.hub import release

        real_fetch = release.fetch

        def fetch(*args, **kwargs):
            described = real_fetch(*args, **kwargs)
            assert described["downloaded"], described  # the point is after a real download
            die()

        release.fetch = fetch
    elif point == "converted":
        from keras_clmr.conversion import report

        def save_converted(*args, **kwargs):
            die()

        report.save_converted = save_converted
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def without_file_checks(name, url=None):
    from keras_clmr import presets

    preset = presets.get_preset(name)
    changes = {"assets": {}}
    if url is not None:
        changes["source"] = {"embed": url}
    presets._REGISTRY[name] = dataclasses.replace(preset, **changes)


def main(point, target, mode, args):
    install(point, target)
    if mode == "first-use":
        from keras_clmr import hub

        name, url = args
        without_file_checks(name, url)
        hub.resolve(name, task="embed", progress=False)
    else:
        from keras_clmr.commands import run

        if mode == "convert" and any(a.startswith("--preset") for a in args):
            preset = next(a.split("=", 1)[1] for a in args if a.startswith("--preset="))
            without_file_checks(preset)
        run(mode, [f"keras-clmr {mode}", *args])
    raise SystemExit("the kill point was never reached")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
