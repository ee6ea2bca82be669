"""Preset folders on disk: save (atomic), read metadata.json, verify hashes, load (safe mode).

A preset folder (KerasHub-like) holds ``config.json`` (``keras.saving.serialize_keras_object``,
no compile config), ``model.weights.h5``, ``README.md`` (the model card) and ``metadata.json``
(versions, parameter count, sample rate, input samples, output names, tag list, source
checkpoint, evaluation, and the sha256 and size of every other file in the folder).
"""

import datetime
import errno
import json
import os
import shutil

import keras
import numpy as np

from keras_clmr import io
from keras_clmr.hub.safety import check_config_safe
from keras_clmr.models import encoder_of, is_pretrainer, is_tagger
from keras_clmr.presets import TASKS, PresetError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
README_FILE = "README.md"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)
# Documentation: its hash in metadata.json is informational (editing a card never breaks loading).
INFORMATIONAL_FILES = (README_FILE,)


class PresetIntegrityError(PresetError):
    """A file whose sha256 or size differs from metadata.json (tampered or truncated)."""


class PresetMissingFileError(PresetIntegrityError, FileNotFoundError):
    """A preset folder that lacks a file it needs."""


def model_attribute(model, name, default=None):
    """``model.<name>``, else the same attribute of the encoder inside it (taggers, pretrainers)."""
    for obj in (model, encoder_of(model)):
        if obj is not None and getattr(obj, name, None) is not None:
            return getattr(obj, name)
    return default


def _ensure_built(model, input_samples):
    if not model.built or not model.weights:
        if input_samples is None:
            raise PresetError(
                f"Cannot build {type(model).__name__}: its input length is unknown "
                "(metadata.json has no input_samples)."
            )
        model(np.zeros((1, int(input_samples)), "float32"), training=False)


# ------------------------------------------------------------------------------- saving


def _source_checkpoint(source):
    if source is None:
        return None
    if isinstance(source, dict):
        return io.to_jsonable(source)
    source = os.fspath(source)
    if os.path.isfile(source):
        return {"file": os.path.basename(source), "sha256": io.sha256_file(source)}
    return {"url": source, "sha256": None}


def _default_card(metadata, config):
    # The one renderer (pure, below hub in the layers) writes the card from the metadata.
    from keras_clmr import cards

    return str(cards.render_card(cards.describe_metadata(metadata, config)))


def save_preset(
    model,
    preset_dir,
    *,
    encoder_only=None,
    name=None,
    description=None,
    source_checkpoint=None,
    evaluation=None,
    model_card=None,
    extra_files=None,
    overwrite=False,
):
    """Write ``model`` as a preset folder at ``preset_dir``, atomically; return the folder path.

    Args:
        model: a keras_clmr model (SampleCNN, FCN, MusicTagger, ... or a CLMR/PEMR pretrainer).
        encoder_only: store the encoder instead of ``model`` (default: True for pretrainers,
            whose projector is only needed for more pretraining).
        name, description: go to the metadata and the model card.
        source_checkpoint: the original checkpoint: a file path (its sha256 is computed), a
            URL, or a dict ``{"url"/"file": ..., "sha256": ...}``.
        evaluation: results to record (any JSON-able dict or list).
        model_card: README.md text, or ``card(metadata, config) -> text`` (default: the
            card ``keras_clmr.cards`` renders from the metadata).
        extra_files: ``{name_in_folder: path}`` copied in (e.g. exports); hashed like the rest.
        overwrite: replace an existing folder (the old one is removed only after the new one
            is complete).
    """
    import keras_clmr

    preset_dir = os.path.abspath(os.fspath(preset_dir))
    io.recover_folder(preset_dir)  # a previous save killed between its renames: restore it
    if os.path.exists(preset_dir) and not overwrite:
        raise io.OutputExistsError(
            f"{preset_dir} already exists; choose a new folder or pass overwrite=True to "
            "replace it."
        )
    if not isinstance(model, keras.Model):
        raise TypeError(f"save_preset expects a keras.Model, got {type(model).__name__}.")
    if encoder_only is None:
        encoder_only = is_pretrainer(model)
    stored = encoder_of(model) if encoder_only else model
    if encoder_only and stored is model:
        raise ValueError(f"encoder_only=True but {type(model).__name__} has no encoder.")
    input_samples = model_attribute(stored, "input_samples")
    _ensure_built(stored, input_samples)

    config = keras.saving.serialize_keras_object(stored)
    config.pop("compile_config", None)
    check_config_safe(config)  # refuse to write what load_preset would refuse to read

    task = "tag" if is_tagger(stored) else "embed"
    with io.atomic_folder(preset_dir, overwrite=overwrite) as tmp:
        io.atomic_write_json(os.path.join(tmp, CONFIG_FILE), config)
        stored.save_weights(os.path.join(tmp, WEIGHTS_FILE))
        for target, source in (extra_files or {}).items():
            if (
                target in (METADATA_FILE, CONFIG_FILE, WEIGHTS_FILE)
                or os.path.isabs(target)
                or ".." in target
            ):
                raise ValueError(f"extra_files: invalid name {target!r} in the preset folder.")
            os.makedirs(os.path.dirname(os.path.join(tmp, target)) or tmp, exist_ok=True)
            copy = shutil.copytree if os.path.isdir(source) else shutil.copyfile
            copy(source, os.path.join(tmp, target))
        tags = getattr(stored, "tags", None)
        metadata = io.to_jsonable(
            {
                "format_version": FORMAT_VERSION,
                "name": name,
                "description": description,
                "keras_clmr_version": keras_clmr.__version__,
                "keras_version": keras.__version__,
                "backend_saved": keras.backend.backend(),
                "date_saved": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"
                ),
                "class_name": type(stored).__name__,
                "registered_name": config.get("registered_name"),
                "task": task,
                "stored_from": type(model).__name__ + (".encoder" if encoder_only else ""),
                "parameter_count": int(stored.count_params()),
                "sample_rate": model_attribute(stored, "sample_rate"),
                "input_samples": input_samples,
                "embedding_dim": model_attribute(stored, "embedding_dim"),
                "output_names": ["tag_probabilities"] if task == "tag" else ["embedding"],
                "tags": list(tags) if tags is not None else None,
                "source_checkpoint": _source_checkpoint(source_checkpoint),
                "evaluation": evaluation,
            }
        )
        if model_card is None:
            model_card = _default_card
        card = model_card(metadata, config) if callable(model_card) else model_card
        io.atomic_write_text(os.path.join(tmp, README_FILE), card)
        metadata["files"] = hash_folder(tmp)
        io.atomic_write_json(os.path.join(tmp, METADATA_FILE), metadata)
    return preset_dir


def hash_files(folder, names):
    """``{name: {"sha256", "size"}}`` for the given relative names (``/``-separated)."""
    files = {}
    for rel in sorted(names):
        path = os.path.join(folder, *rel.split("/"))
        files[rel] = {"sha256": io.sha256_file(path), "size": os.path.getsize(path)}
    return files


def hash_folder(folder):
    """``{relative path: {"sha256", "size"}}`` of every file but metadata.json and dot files."""
    files = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in sorted(names):
            path = os.path.join(root, file)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            if rel == METADATA_FILE or file.startswith("."):
                continue
            files[rel] = {"sha256": io.sha256_file(path), "size": os.path.getsize(path)}
    return files


# ------------------------------------------------------------------------------- reading


def check_folder_readable(preset_dir):
    """Raise a clear error for a missing folder or a symlink loop (not "no such file")."""
    if not os.path.lexists(preset_dir):
        io.recover_folder(preset_dir)  # a save killed between its two renames: the old copy
    try:
        os.stat(preset_dir)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise PresetError(
                f"{preset_dir}: a symlink loop (the link points back at itself); fix or remove "
                "the link and pass the real folder."
            ) from error
        raise PresetError(f"{preset_dir}: no such preset folder.") from error
    if not os.path.isdir(preset_dir):
        raise PresetError(f"{preset_dir}: not a folder; pass a preset folder.")


def check_file_name(preset_dir, rel):
    """A metadata.json file name must stay inside the folder (no ``..``, no absolute path)."""
    parts = rel.split("/") if isinstance(rel, str) else None
    if (
        not parts
        or "\\" in rel
        or rel.startswith("/")
        or os.path.isabs(rel)
        or any(part in ("", ".", "..") for part in parts)
        or ":" in parts[0]
    ):
        raise PresetIntegrityError(
            f"{preset_dir}/{METADATA_FILE} lists {rel!r}, a name outside the preset folder; "
            "the metadata is damaged or hostile. Re-download or re-save the preset."
        )
    return rel


def read_metadata(preset_dir):
    """The metadata.json of a preset folder (checked to have a ``files`` table)."""
    check_folder_readable(preset_dir)
    path = os.path.join(preset_dir, METADATA_FILE)
    if not os.path.isfile(path):
        raise PresetMissingFileError(
            f"{preset_dir} is not a complete keras_clmr preset: {METADATA_FILE} is missing. "
            "Save presets with keras_clmr.save_preset, or re-download the folder."
        )
    try:
        with open(path) as f:
            metadata = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PresetIntegrityError(
            f"{path} is not valid JSON ({error}); re-download or re-save the preset."
        ) from error
    if not isinstance(metadata, dict) or not isinstance(metadata.get("files"), dict):
        raise PresetIntegrityError(
            f"{path} has no 'files' table of sha256 sums; re-save the preset "
            "with keras_clmr.save_preset."
        )
    for rel, entry in metadata["files"].items():
        check_file_name(preset_dir, rel)
        if not isinstance(entry, dict):
            raise PresetIntegrityError(
                f"{path}: the entry for {rel!r} is not {{sha256, size}}; re-save the preset."
            )
    return metadata


def verify_preset(preset_dir, metadata=None, skip=()):
    """Check every file listed in metadata.json (sha256 and size); raise on the first problem.

    Weights, config and exports must match; README.md (the card, documentation) may have been
    edited: its hash is informational. ``skip``: names (or folder prefixes) not to check, for
    a writer about to replace them.
    """
    metadata = metadata or read_metadata(preset_dir)
    files = metadata["files"]
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        raise PresetIntegrityError(
            f"{preset_dir}/{METADATA_FILE} does not list {missing}; re-save the preset."
        )
    fix = (
        "Re-download it (for an hf:// handle, delete this snapshot from the Hugging Face cache, "
        "e.g. with `hf cache delete`, then load again online) or re-save the preset."
    )
    for rel, expected in files.items():
        check_file_name(preset_dir, rel)
        if rel in INFORMATIONAL_FILES or any(
            rel == name or rel.startswith(name.rstrip("/") + "/") for name in skip
        ):
            continue
        path = os.path.join(preset_dir, *rel.split("/"))
        if not os.path.isfile(path):
            raise PresetMissingFileError(f"Preset {preset_dir} is missing {rel}. {fix}")
        size = os.path.getsize(path)
        digest = io.sha256_file(path)
        if digest != expected.get("sha256") or ("size" in expected and size != expected["size"]):
            kind = "truncated" if size < expected.get("size", size) else "modified"
            raise PresetIntegrityError(
                f"{path} fails its integrity check ({kind}?): sha256 {digest} ({size} bytes), "
                f"metadata.json expects {expected.get('sha256')} ({expected.get('size')} bytes). "
                f"{fix}"
            )
    return metadata


def load_preset(preset_dir, *, task=None, verify=True):
    """Load the model in a preset folder (verified and safe-mode deserialized).

    ``task="embed"`` returns the encoder (the backbone of a stored tagger); ``task="tag"``
    requires a stored tagger; ``None`` returns what is stored.
    """
    preset_dir = os.fspath(preset_dir)
    check_folder_readable(preset_dir)
    if task not in (None, *TASKS):
        raise ValueError(f"task must be one of {TASKS} or None, got {task!r}.")
    metadata = verify_preset(preset_dir) if verify else read_metadata(preset_dir)
    config_path = os.path.join(preset_dir, CONFIG_FILE)
    for required in REQUIRED_FILES:
        if not os.path.isfile(os.path.join(preset_dir, required)):
            raise PresetMissingFileError(
                f"Preset {preset_dir} is missing {required}; re-download or re-save it."
            )
    try:
        with open(config_path) as f:
            config = json.load(f)
    except json.JSONDecodeError as error:
        raise PresetIntegrityError(f"{config_path} is not valid JSON ({error}).") from error
    if metadata.get("task") == "embed" and task == "tag":
        raise PresetError(
            f"Preset {preset_dir} stores an encoder ({metadata.get('class_name')}) without a "
            "tagging head; load it with task='embed', choose a preset with a 'tag' variant, or "
            "fit a keras_clmr.models.MusicTagger on it."
        )
    check_config_safe(config)
    config.pop("compile_config", None)
    input_samples = metadata.get("input_samples")
    weights_path = os.path.join(preset_dir, WEIGHTS_FILE)
    try:
        model = _build_with_stored_weights(config, input_samples, weights_path)
    except Exception:  # a bad file or any surprise: the plain path names the problem
        model = None
    if model is None:
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
        _ensure_built(model, input_samples or model_attribute(model, "input_samples"))
        load_weights_checked(model, weights_path)
    model.preset_metadata = metadata
    if task == "embed" and is_tagger(model):
        backbone = encoder_of(model)
        backbone.preset_metadata = metadata
        return backbone
    if task == "tag" and not is_tagger(model):
        raise PresetError(f"Preset {preset_dir} does not hold a tagger; load it with task='embed'.")
    return model


def _share_attr_skipsets():
    """Let Keras' weight loader reuse its per-type attribute skip sets.

    keras 3.x reads them under ``saving_attr_skiplist_*`` but stores them under
    ``saving_attr_skipset_*``, so it builds a throw-away Layer for every layer it loads (~0.5 s
    for SampleCNN). Copying each computed set to the key it reads changes no result.
    """
    from keras.src.backend.common import global_state
    from keras.src.saving import saving_lib

    for obj_type in ("Layer", "Operation", "Functional", "Sequential"):
        key = f"saving_attr_skiplist_{obj_type}"
        if global_state.get_global_attribute(key) is None:
            global_state.set_global_attribute(key, saving_lib.get_attr_skipset(obj_type))


def _build_with_stored_weights(config, input_samples, weights_path):
    """Deserialize ``config`` with its variables created from the weights file.

    The model is built and ``load_weights`` runs inside a ``keras.StatelessScope``: variables
    are created without running their (random) initializers and the file's values are
    collected by Keras' own loader (its layout, names and shape checks); each variable is
    then created once, from its stored value, instead of build + initialise + assign (about
    half the CPU time). Variables Keras does not store (seed-generator states) get their own
    initializer, as with ``load_weights``. Raises what Keras raises for a mismatched file.
    """
    from keras.src.backend.common import global_state
    from keras.src.backend.common import variables as keras_variables

    _share_attr_skipsets()
    pending_key = "uninitialized_variables"
    before = list(global_state.get_global_attribute(pending_key, []) or [])
    try:
        with keras.StatelessScope(initialize_variables=False) as scope:
            model = keras.saving.deserialize_keras_object(config, safe_mode=True)
            _ensure_built(model, input_samples or model_attribute(model, "input_samples"))
            model.load_weights(weights_path)
    except BaseException:
        # Forget this attempt's deferred variables (the caller builds afresh).
        global_state.set_global_attribute(pending_key, before)
        raise
    for variable in model.variables:
        value = scope.get_current_value(variable) if variable._value is None else None
        if value is not None:
            variable._initializer = lambda shape, dtype, value=value: value
    keras_variables.initialize_all_variables()
    return model


def _expected_weight_groups(layer, prefix=""):
    """{h5 group: (layer name, [variable shapes])} in Keras' weights-file layout."""
    from keras.src.utils.naming import to_snake_case

    groups = {}
    own = list(layer._trainable_variables) + list(layer._non_trainable_variables)
    if own:
        groups[f"{prefix}vars" if prefix else "vars"] = (
            layer.name,
            [tuple(v.shape) for v in own],
        )
    used = {}
    for sub in getattr(layer, "_layers", None) or []:
        base = to_snake_case(type(sub).__name__)
        count = used.get(base, 0)
        used[base] = count + 1
        name = base if count == 0 else f"{base}_{count}"
        groups.update(_expected_weight_groups(sub, f"{prefix}layers/{name}/"))
    return groups


def _weights_mismatch(model, path):
    """Lines naming each layer whose stored weights differ in number or shape (best effort)."""
    import h5py

    problems = []
    try:
        expected = _expected_weight_groups(model)
        with h5py.File(path, "r") as file:
            for group, (layer_name, shapes) in sorted(expected.items()):
                stored = file.get(group)
                found = (
                    [tuple(stored[str(i)].shape) for i in range(len(stored))]
                    if stored is not None
                    else []
                )
                if found != shapes:
                    problems.append(
                        f"layer {layer_name!r} expects weights of shapes {shapes}, "
                        f"{WEIGHTS_FILE} holds {found or 'none'}"
                    )
    except Exception:  # the diagnostic is best effort; the caller reports the original error
        return []
    return problems


def load_weights_checked(model, path):
    """``model.load_weights(path)``; a file that does not fit the config names layer and shapes."""
    try:
        model.load_weights(path)
    except (ValueError, OSError) as error:
        problems = _weights_mismatch(model, path)
        if problems:
            more = len(problems) - 3
            shown = "; ".join(problems[:3]) + (f"; and {more} more" if more > 0 else "")
            reason = (
                f"does not fit config.json: {shown}. The weights and config come from "
                "different models"
            )
        else:
            text = str(error).strip()
            reason = (
                f"could not be loaded into {type(model).__name__} ("
                + (text.splitlines()[0] if text else type(error).__name__)
                + ")"
            )
        raise PresetIntegrityError(
            f"{path} {reason}; re-download or re-save the preset."
        ) from error
