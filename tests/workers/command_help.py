"""Worker for tests/test_commands.py: every ``keras-clmr`` help screen, in one interpreter.

Runs ``keras_clmr.cli.main`` for ``--help`` and ``<subcommand> --help`` in-process and prints
one JSON object: the exit status and output of each, and whether Keras or TensorFlow got
imported on the way (they must not be: help is answered from the flag definitions alone).
"""

import contextlib
import io
import json
import sys

from keras_clmr import cli
from keras_clmr.commands import COMMANDS


def call(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(args)
        except SystemExit as done:
            status = done.code
    return {"status": status, "out": out.getvalue(), "err": err.getvalue()}


report = {
    "overview": call(["--help"]),
    "commands": {name: call([name, "--help"]) for name in COMMANDS},
}
report["heavy_imports"] = sorted(
    m for m in ("keras", "tensorflow", "jax", "torch") if m in sys.modules
)
report["cli_file"] = cli.__file__
print(json.dumps(report))
