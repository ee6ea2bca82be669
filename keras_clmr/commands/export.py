"""Export a model to a publishable folder: preset, SavedModel and/or ONNX, card, model.json.

    keras-clmr export --model=runs/demo --output=exports/demo     # a pretraining run folder
    keras-clmr export --model=runs/probe/tagger.keras --output=exports/tagger
    keras-clmr export --model=clmr-mtat --task=tag --format=all --output=exports/clmr-mtat-tagger
    keras-clmr export --model=path/to/preset --format=onnx          # adds model.onnx in place
    keras-clmr export --model=hf://keras-clmr/pemr-mtat --format=savedmodel --output=out/pemr

``--model`` is a preset folder, a registry name, an hf:// handle, a ``.keras`` file or a
pretraining run folder (its encoder.keras; the run's settings go into metadata.json). The
output folder is the preset with ``model.onnx`` and/or ``saved_model/`` added, their parity
figures and sha256s recorded in ``metadata.json``, and the model card (README.md) and
``model.json`` rendered: ready for ``keras-clmr publish``. It is built aside and replaces
``--output`` only when every step passed; an export whose outputs differ from Keras by more
than ``--atol`` fails (exit code 1) and nothing is kept. Prints a JSON summary.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Define this command's flags (when it runs, so importing the module defines nothing)."""
    flags.DEFINE_string(
        "model",
        None,
        "A preset folder, a registry name (keras-clmr list), an hf://org/name handle, a "
        ".keras file or a pretraining run folder.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "task",
        None,
        ["embed", "tag"],
        "Which variant of a registry preset (default: what is stored; 'embed' for registry names).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "format", "all", ["savedmodel", "onnx", "all"], "What to export.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "output",
        None,
        "Folder to write (a copy of the preset plus the exports). Default for a "
        "local preset folder: that folder.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("opset", 17, "ONNX opset.", flag_values=flag_values)
    flags.DEFINE_float(
        "atol",
        1e-4,
        "Parity tolerance (max abs difference against Keras).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "optimize",
        True,
        "Fold BatchNorm into the convolutions of the ONNX graph.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "card",
        True,
        "Render the model card (README.md) and model.json into the output.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "overwrite",
        False,
        "Replace an --output folder that is not a preset.",
        flag_values=flag_values,
    )


def run_from_flags():
    from keras_clmr import export
    from keras_clmr.export import card as model_card
    from keras_clmr.export import sources
    from keras_clmr.presets import PresetError

    if not FLAGS.model:
        raise app.UsageError(f"--model is required: {sources.ACCEPTED}.")
    try:
        summary = model_card.publishable_folder(
            FLAGS.model,
            FLAGS.output,
            FLAGS.format,
            task=FLAGS.task,
            card=FLAGS.card,
            overwrite=FLAGS.overwrite,
            opset=FLAGS.opset,
            optimize=FLAGS.optimize,
            atol=FLAGS.atol,
        )
    except (export.ExportError, PresetError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(export.summary_json(summary))
    return 0


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    return run_from_flags()
