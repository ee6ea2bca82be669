"""Convert official CLMR/PEMR/musicnn weights to a preset: ``keras-clmr convert`` as
``python -m export.convert_checkpoint`` (flags: --help; code: keras_clmr/commands/convert.py)."""

from keras_clmr.commands import run
from keras_clmr.commands.convert import FORMATS, convert, define_flags, main  # noqa: F401

if __name__ == "__main__":
    run("convert", prog="python -m export.convert_checkpoint")
