r"""Render model cards (README.md with Hugging Face YAML metadata + model.json).

    keras-clmr card --preset_dir=out/clmr-mtat-tagger --results=runs/probe/results.json \
        --dataset=MTAT --repo_id=keras-clmr/clmr-mtat-tagger
    keras-clmr card --registry --output_dir=model_cards   # cards of every registered preset

For a preset folder the card and model.json are written into it and metadata.json's hashes
are updated (so the folder stays valid for ``keras-clmr publish``). ``--preset_dir`` may also
be a registry name or hf:// handle (copied to ``--output_dir/<name>``, the cache is never
modified), a ``.keras`` file or a pretraining run folder (saved as a preset in
``--output_dir/<name>``). The license, sources and published scores of the model are kept; a
``--results`` file is accepted only when its tags are the model's (for a tagger). Prints the card
(``--print``) or a JSON summary.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Define this command's flags (when it runs, so importing the module defines nothing)."""
    flags.DEFINE_string(
        "preset_dir",
        None,
        "A preset folder to write README.md and model.json into (or a registry name, "
        "hf:// handle, .keras file or pretraining run folder: see --output_dir).",
        flag_values=flag_values,
    )
    flags.DEFINE_multi_string(
        "results",
        [],
        "keras_clmr results.json files (training/linear_eval.py, ...) for the "
        "model-index and the evaluation section.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "dataset",
        None,
        "Dataset name of the --results (e.g. MTAT, GTZAN, demo).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "repo_id",
        None,
        "The Hub repository (org/name) the card's loading snippet names.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "training",
        None,
        "How the model was trained (one paragraph for the card).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "license",
        None,
        "License id for the card (default: the preset's, else apache-2.0).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "registry",
        False,
        "Write the cards of every registered preset into --output_dir.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "output_dir",
        "model_cards",
        "Where --registry writes its cards, and where a --preset_dir that is not a local "
        "preset folder is written (as <output_dir>/<name>).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool("print", False, "Print the rendered card.", flag_values=flag_values)


def writable_preset(argument, output_dir):
    """The preset folder to card: ``argument`` itself when local, else a copy in output_dir."""
    import shutil

    from keras_clmr import io
    from keras_clmr.export import sources

    source = sources.identify(argument)
    if source.kind == "preset":
        return argument
    name = os.path.splitext(os.path.basename(os.path.normpath(argument.split("@")[0])))[0]
    target = os.path.join(output_dir, name)
    earlier = os.path.isfile(os.path.join(target, "metadata.json"))  # an earlier card's copy
    if source.kind in ("run", "keras_file"):
        return sources.save_as_preset(source, target, overwrite=earlier)
    folder, _ = sources.as_preset_folder(argument)
    with io.atomic_folder(target, overwrite=earlier) as staging:
        shutil.copytree(folder, staging, ignore=shutil.ignore_patterns(".*"), dirs_exist_ok=True)
    return target


def run_from_flags():
    from keras_clmr.export import card as model_card
    from keras_clmr.presets import PresetError

    if bool(FLAGS.preset_dir) == bool(FLAGS.registry):
        raise app.UsageError("Pass either --preset_dir=FOLDER or --registry.")
    try:
        if FLAGS.registry:
            folders = model_card.write_registry_cards(FLAGS.output_dir)
            print(json.dumps({"cards": folders}, indent=2))
            return 0
        results = [(path, FLAGS.dataset) for path in FLAGS.results]
        preset_dir = writable_preset(FLAGS.preset_dir, FLAGS.output_dir)
        card, sidecar = model_card.write_card(
            preset_dir,
            repo_id=FLAGS.repo_id,
            results=results,
            training=FLAGS.training,
            license=FLAGS.license,
        )
    except (model_card.ModelCardError, PresetError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if FLAGS.print:
        print(card)
    else:
        print(
            json.dumps(
                {
                    "card": os.path.join(preset_dir, model_card.CARD_FILE),
                    "model_json": os.path.join(preset_dir, model_card.MODEL_JSON),
                    "eval_results": len(card.data.eval_results or []),
                },
                indent=2,
            )
        )
    return 0


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    return run_from_flags()
