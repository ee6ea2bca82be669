"""Export a preset to SavedModel and/or ONNX.

``python -m export.export`` runs ``keras-clmr export`` (keras_clmr/commands/export.py);
``--help`` lists its flags.
"""

from keras_clmr.commands import run

if __name__ == "__main__":
    run("export", prog="python -m export.export")
