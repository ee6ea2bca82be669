"""The ``keras-clmr`` subcommands: one module per command, imported only when it runs.

Each absl command module has ``define_flags(flag_values)`` and ``main(argv)``; ``run`` parses
the flags and runs it, for ``keras-clmr <name>`` and for the ``python -m training.* / export.*``
front ends alike. Nothing here imports Keras or TensorFlow, so ``keras-clmr --help`` is quick.
"""

import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str  # keras_clmr.commands.<module>
    summary: str


COMMANDS = {
    "prepare": Command("prepare", "decode a dataset once into TFRecord shards + manifest"),
    "pretrain": Command("pretrain", "self-supervised pretraining (CLMR, PEMR or CPC), resumable"),
    "evaluate": Command("evaluate", "linear / MLP probe or fine-tuning of an encoder (tagging)"),
    "supervised": Command("supervised", "CLMR's supervised SampleCNN baseline"),
    "cover": Command("cover", "cover-song identification with an encoder (MAP, MR1, P@10)"),
    "convert": Command("convert", "official PyTorch CLMR/PEMR or musicnn weights -> preset"),
    "export": Command("export", "preset -> SavedModel and/or ONNX, parity-checked"),
    "card": Command("card", "render model cards (README.md + model.json)"),
    "publish": Command("publish", "upload a preset folder to the Hugging Face Hub"),
    "embed": Command("infer", "embeddings [T, D] per audio file, with window start times"),
    "tag": Command("infer", "tag probabilities per window and per file, with the top-k tags"),
    "list": Command("infer", "list the registered presets"),
    "explain": Command("explain", "filter spectra, listening page, taggram, 2-D map of a model"),
}
HELP_ARGS = ("-h", "--help", "-help", "--helpshort", "-helpshort", "--helpfull", "-helpfull", "-?")


def load(name):
    """The module of command ``name``."""
    return importlib.import_module(f"keras_clmr.commands.{COMMANDS[name].module}")


def _help_text(module, flag_values, full):
    doc = (module.__doc__ or "").strip()
    flags_text = flag_values.get_help() if full else flag_values.module_help(module.__name__)
    return f"{doc}\n\nFlags:\n{flags_text}\n"


def run(name, argv=None, prog=None):
    """Parse ``argv`` (absl flags) for command ``name``, run it and exit with its status.

    ``--help`` prints the command's description and its own flags (``--helpfull``: all flags).
    A flag error or a missing required value prints the error and one line of usage (status 1).
    An error the user can act on (a bad input, a full disk, a diverged run) prints one line
    (status 2, or the error's ``exit_status``); ``--debug`` shows its traceback instead.
    The command's flags are removed again afterwards, so ``run`` can be called in-process
    more than once (it always ends with ``SystemExit``).
    """
    from absl import app, flags

    from keras_clmr.commands import _checks

    module = load(name)
    argv = list(sys.argv if argv is None else argv)
    prog = prog or argv[0]
    usage = f"usage: {prog} [--flag=value ...]  ({prog} --help lists the flags)"
    options = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
    wanted = [arg for arg in options if arg in HELP_ARGS]
    if wanted:
        # --help lists the command's own flags from a private FlagValues (no global state);
        # --helpfull adds absl's and every other flag on the global FLAGS.
        full = "full" in wanted[0]
        flag_values = flags.FLAGS if full else flags.FlagValues()
        module.define_flags(flag_values)
        sys.stdout.write(_help_text(module, flag_values, full))
        raise SystemExit(0)
    # The `python -m training.* / export.*` front ends come here directly: TensorFlow's
    # start-up lines are hidden as for `keras-clmr` (a no-op when TensorFlow is already loaded).
    from keras_clmr.commands._quiet import quiet_start

    quiet_start(verbose=any(arg in ("--verbose=1", "--verbose=2") for arg in options))
    flag_values = flags.FLAGS
    existing = set(flag_values)
    module.define_flags(flag_values)
    if "debug" not in flag_values:
        flags.DEFINE_bool(
            "debug", False, "Show the traceback of an error.", flag_values=flag_values
        )
    _checks.register(flag_values, name)

    def fail(error, status):
        sys.stderr.write(f"{prog}: error: {error}\n{usage}\n")
        return status

    def parse(args):
        try:
            return flag_values(args)
        except flags.Error as error:
            sys.exit(fail(error, 1))

    def main(args):
        try:
            return module.main(args)
        except app.UsageError as error:
            return fail(error, error.exitcode)
        except Exception as error:
            described = None if flag_values.debug else _checks.describe(error)
            if described is None:
                raise
            message, status = described
            sys.stderr.write(f"{prog}: error: {message}\n")
            return status

    try:
        app.run(main, argv=[prog, *argv[1:]], flags_parser=parse)
    finally:
        for added in set(flag_values) - existing:
            delattr(flag_values, added)
