"""What the user gave export, card and publish: a preset, a registry name, a .keras file or a run.

``identify`` names the kind of a ``--model`` / ``--preset_dir`` value; ``as_preset_folder``
turns any of them into a preset folder (a local preset is used as it is, a registry name or
hf:// handle resolves to its cached folder, a ``.keras`` file or a pretraining run folder is
saved with ``save_preset``: the encoder, with the run's recipe from ``state.json`` in the
metadata). ``keras_clmr.export.card.publishable_folder`` is the whole path of
``keras-clmr export`` from any of them.
"""

import dataclasses
import json
import os

KINDS = ("preset", "registry", "handle", "keras_file", "run")
RUN_MODELS = ("encoder.keras", "model.keras")  # what keras-clmr pretrain writes at the end
STATE_PATH = os.path.join("checkpoints", "state.json")


class SourceError(ValueError):
    """A model argument that is none of the accepted kinds; the message lists what is."""


ACCEPTED = (
    "a preset folder (with metadata.json), a registry name (keras-clmr list), an "
    "hf://org/name handle, a .keras file, or a pretraining run folder (keras-clmr pretrain "
    "--output_dir, holding encoder.keras)"
)


@dataclasses.dataclass
class Source:
    """One model argument: its ``kind`` (see ``KINDS``), the argument and the file to load."""

    kind: str
    argument: str
    model_file: str = None  # the .keras file of a keras_file or run source
    recipe: dict = None  # a run's settings (state.json), for the metadata and the card


def run_recipe(run_dir):
    """The recipe of a pretraining run: settings, finished epoch and step from state.json."""
    path = os.path.join(run_dir, STATE_PATH)
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {"run": os.path.basename(os.path.abspath(run_dir)), "state": None}
    recipe = {"run": os.path.basename(os.path.abspath(run_dir))}
    for key in ("settings", "finished", "epoch", "global_step", "step"):
        if state.get(key) is not None:
            recipe[key] = state[key]
    return recipe


def identify(argument):
    """The ``Source`` of ``argument``; ``SourceError`` naming the accepted kinds otherwise."""
    from keras_clmr import presets
    from keras_clmr.hub import METADATA_FILE

    if argument is None or not str(argument).strip():
        raise SourceError(f"No model given: pass {ACCEPTED}.")
    argument = os.fspath(argument)
    if argument.startswith("hf://"):
        return Source("handle", argument)
    if os.path.isdir(argument):
        if os.path.isfile(os.path.join(argument, METADATA_FILE)):
            return Source("preset", argument)
        for name in RUN_MODELS:
            path = os.path.join(argument, name)
            if os.path.isfile(path):
                return Source("run", argument, model_file=path, recipe=run_recipe(argument))
        if os.path.isfile(os.path.join(argument, STATE_PATH)):
            raise SourceError(
                f"{argument} is a pretraining run that has not finished (no encoder.keras): "
                "continue it with `keras-clmr pretrain --resume --output_dir=...`, or pass one "
                f"of its checkpoints, {os.path.join(argument, 'checkpoints', 'epoch-NNNNN.keras')}."
            )
        raise SourceError(f"{argument} is a folder but not a model: pass {ACCEPTED}.")
    if os.path.isfile(argument):
        if argument.endswith(".keras"):
            return Source("keras_file", argument, model_file=argument)
        raise SourceError(f"{argument} is a file but not a .keras model: pass {ACCEPTED}.")
    if argument in presets.preset_names():
        return Source("registry", argument)
    raise SourceError(f"{argument}: no such file, folder or registered preset; pass {ACCEPTED}.")


def load_keras_file(path):
    """A keras_clmr model saved with ``model.save`` (checkpoints, encoder.keras, tagger.keras)."""
    import keras

    import keras_clmr.models  # noqa: F401  (registers the classes the file names)

    try:
        return keras.saving.load_model(path)
    except Exception as error:  # a corrupt zip, an unknown class, a truncated file
        raise SourceError(
            f"{path} cannot be loaded as a keras_clmr model ({type(error).__name__}: {error}); "
            "pass a file written by keras-clmr pretrain / evaluate or model.save."
        ) from error


def save_as_preset(source, output, *, task=None, overwrite=False):
    """Write a ``keras_file`` / ``run`` source as a preset folder (the encoder of a pretrainer).

    An existing ``output`` holding files keras_clmr did not list in its metadata.json is
    refused (:class:`keras_clmr.io.OutputExistsError` naming them) unless ``overwrite``; then,
    as for an earlier preset there, only the listed files are replaced and the user's stay.
    """
    from keras_clmr import io
    from keras_clmr.export.preset import staged_output, update_metadata, user_entries_to_keep
    from keras_clmr.hub import save_preset
    from keras_clmr.models import encoder_of, is_tagger

    output = os.path.abspath(os.fspath(output))
    io.recover_folder(output)
    keep = user_entries_to_keep(output, overwrite=overwrite)
    model = load_keras_file(source.model_file)
    if task == "embed" and is_tagger(model):
        model = encoder_of(model)
    elif task == "tag" and not is_tagger(model):
        raise SourceError(
            f"{source.argument} holds a {type(model).__name__}, not a tagger: export it with "
            "--task=embed, or train a tagging head (keras-clmr evaluate writes tagger.keras)."
        )
    name = os.path.splitext(os.path.basename(os.path.abspath(source.argument)))[0]
    description = (
        f"Trained with keras_clmr (run {name})."
        if source.kind == "run"
        else f"Saved from {os.path.basename(source.model_file)}."
    )
    with staged_output(output, keep=keep) as work:
        save_preset(model, work, name=name, description=description)
        if source.recipe is not None:
            update_metadata(work, training_run=source.recipe)
    return output


def as_preset_folder(argument, output=None, *, task=None, overwrite=False):
    """(preset folder, Source) for any accepted argument; ``.keras`` / run sources need ``output``.

    A local preset folder is returned as it is; a registry name or hf:// handle resolves to
    its (read-only) cached folder.
    """
    from keras_clmr.hub import resolve

    source = identify(argument)
    if source.kind == "preset":
        return os.fspath(argument), source
    if source.kind in ("registry", "handle"):
        return resolve(argument, task=task), source
    if output is None:
        raise SourceError(
            f"{argument} is a {'run folder' if source.kind == 'run' else '.keras file'}: pass "
            "--output, the preset folder to write (e.g. --output=exports/my-model)."
        )
    return save_as_preset(source, output, task=task, overwrite=overwrite), source
