"""Preset folders on disk, in the Hugging Face cache and in memory.

A preset folder (KerasHub-like) holds:

- ``config.json``: ``keras.saving.serialize_keras_object(model)`` (no compile config);
- ``model.weights.h5``: the weights;
- ``README.md``: the model card;
- ``metadata.json``: versions, parameter count, sample rate, input samples, output names,
  tag list (taggers), source checkpoint and its sha256, evaluation results, and the sha256
  and size of every other file in the folder.

``load_pretrained`` resolves a registry name (``keras_clmr.presets``), an
``hf://org/name[@revision]`` handle (``huggingface_hub.snapshot_download``: its cache,
``HF_HUB_OFFLINE``, revision pinning) or a local folder; it checks every file against
``metadata.json`` and deserializes in safe mode, accepting only keras_clmr's registered
classes and core Keras classes that run no stored code.
"""

import datetime
import hashlib
import importlib
import json
import os
import re
import shutil
import tempfile

import keras
import numpy as np

from keras_clmr.presets import TASKS, PresetError, UnknownPresetError, get_preset  # noqa: F401

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
README_FILE = "README.md"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)

# Core Keras classes that can carry code or unreviewed objects in their config.
_REFUSED_CORE_CLASSES = {"Lambda", "TorchModuleWrapper", "JaxLayer", "FlaxLayer", "TFSMLayer"}
# Plain-data markers of Keras' serialization format.
_DATA_MARKERS = {"__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__"}
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class PresetNotCachedError(PresetError):
    """An hf:// handle that is not in the local cache while the Hub cannot be reached."""


class PresetIntegrityError(PresetError):
    """A file whose sha256 or size differs from metadata.json (tampered or truncated)."""


class PresetMissingFileError(PresetIntegrityError, FileNotFoundError):
    """A preset folder that lacks a file it needs."""


class UnsafePresetError(PresetError):
    """A config that names a class keras_clmr does not deserialize (code or foreign classes)."""


# ------------------------------------------------------------------------------- helpers


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomic(path, data):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _to_jsonable(value):
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def model_attribute(model, name, default=None):
    """``model.<name>``, else the same attribute of its backbone/encoder (taggers, pretrainers)."""
    for obj in (model, getattr(model, "backbone", None), getattr(model, "encoder", None)):
        if obj is not None and getattr(obj, name, None) is not None:
            return getattr(obj, name)
    return default


def is_tagger(model):
    """A tagger has a backbone and a ``tags`` attribute (possibly None), like ``MusicTagger``."""
    return hasattr(model, "tags") and getattr(model, "backbone", None) is not None


def _is_pretrainer(model):
    return type(model).__name__ in ("CLMR", "PEMR") and getattr(model, "encoder", None) is not None


def _model_task(model):
    return "tag" if is_tagger(model) else "embed"


def _ensure_built(model, input_samples):
    if not model.built or not model.weights:
        if input_samples is None:
            raise PresetError(f"Cannot build {type(model).__name__}: its input length is unknown "
                              "(metadata.json has no input_samples).")
        model(np.zeros((1, int(input_samples)), "float32"), training=False)


# ------------------------------------------------------------------------------- saving


def _default_card(model, metadata, name):
    title = name or metadata["class_name"]
    lines = [
        "---",
        "library_name: keras",
        "license: apache-2.0",
        "tags:",
        "- keras_clmr",
        "- audio",
        "- music",
        f"- {metadata['class_name']}",
        "---",
        "",
        f"# {title}",
        "",
        metadata.get("description") or f"A keras_clmr {metadata['class_name']} preset.",
        "",
        "## Usage",
        "",
        "```python",
        "import keras_clmr",
        f'model = keras_clmr.load_pretrained("{name or "path/to/this/folder"}")',
        'result = keras_clmr.embed("song.wav", model=model)  # embeddings [T, D] + start times',
    ]
    if metadata["task"] == "tag":
        lines.append('tags = keras_clmr.tag("song.wav", model=model)  # per-window + clip-level tags')
    lines += [
        "```",
        "",
        "## Details",
        "",
        "| field | value |",
        "|---|---|",
        f"| class | `{metadata['class_name']}` |",
        f"| task | {metadata['task']} |",
        f"| parameters | {metadata['parameter_count']:,} |",
        f"| sample rate | {metadata['sample_rate']} Hz |",
        f"| input samples per window | {metadata['input_samples']} |",
        f"| keras / keras_clmr | {metadata['keras_version']} / {metadata['keras_clmr_version']} |",
    ]
    source = metadata.get("source_checkpoint")
    if source:
        lines.append(f"| source checkpoint | {source.get('url') or source.get('file')} "
                     f"(sha256 {source.get('sha256') or 'unknown'}) |")
    if metadata.get("tags"):
        lines.append(f"| tags | {', '.join(metadata['tags'])} |")
    if metadata.get("evaluation"):
        lines += ["", "## Evaluation", "", "```json", json.dumps(metadata["evaluation"], indent=2), "```"]
    return "\n".join(lines) + "\n"


def _source_checkpoint(source):
    if source is None:
        return None
    if isinstance(source, dict):
        return _to_jsonable(source)
    source = os.fspath(source)
    if os.path.isfile(source):
        return {"file": os.path.basename(source), "sha256": sha256_file(source)}
    return {"url": source, "sha256": None}


def save_preset(model, preset_dir, *, encoder_only=None, name=None, description=None,
                source_checkpoint=None, evaluation=None, model_card=None, extra_files=None,
                overwrite=False):
    """Write ``model`` as a preset folder at ``preset_dir``, atomically; return the folder path.

    Args:
        model: a keras_clmr model (SampleCNN, FCN, MusicTagger, ... or a CLMR/PEMR pretrainer).
        encoder_only: store ``model.encoder`` instead of ``model`` (default: True for
            pretrainers, whose projector is only needed for more pretraining).
        name, description: go to the metadata and the model card.
        source_checkpoint: the original checkpoint: a file path (its sha256 is computed), a
            URL, or a dict ``{"url"/"file": ..., "sha256": ...}``.
        evaluation: results to record (any JSON-able dict or list).
        model_card: README.md text (default: a generated card).
        extra_files: ``{name_in_folder: path}`` copied in (e.g. exports); hashed like the rest.
        overwrite: replace an existing folder (the old one is removed only after the new one
            is complete).
    """
    import keras_clmr

    preset_dir = os.path.abspath(os.fspath(preset_dir))
    if os.path.exists(preset_dir) and not overwrite:
        raise FileExistsError(f"{preset_dir} already exists; pass overwrite=True to replace it.")
    if not isinstance(model, keras.Model):
        raise TypeError(f"save_preset expects a keras.Model, got {type(model).__name__}.")
    if encoder_only is None:
        encoder_only = _is_pretrainer(model)
    stored = model.encoder if encoder_only else model
    if encoder_only and getattr(model, "encoder", None) is None:
        raise ValueError(f"encoder_only=True but {type(model).__name__} has no .encoder.")
    input_samples = model_attribute(stored, "input_samples")
    _ensure_built(stored, input_samples)

    config = keras.saving.serialize_keras_object(stored)
    config.pop("compile_config", None)
    # Refuse to write what load_preset would refuse to read.
    check_config_safe(config)

    task = _model_task(stored)
    parent = os.path.dirname(preset_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(preset_dir)}.tmp-")
    try:
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        stored.save_weights(os.path.join(tmp, WEIGHTS_FILE))
        for target, source in (extra_files or {}).items():
            if target in (METADATA_FILE, CONFIG_FILE, WEIGHTS_FILE) or os.path.isabs(target) or ".." in target:
                raise ValueError(f"extra_files: invalid name {target!r} in the preset folder.")
            os.makedirs(os.path.dirname(os.path.join(tmp, target)) or tmp, exist_ok=True)
            copy = shutil.copytree if os.path.isdir(source) else shutil.copyfile
            copy(source, os.path.join(tmp, target))
        tags = getattr(stored, "tags", None)
        metadata = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "description": description,
            "keras_clmr_version": keras_clmr.__version__,
            "keras_version": keras.__version__,
            "backend_saved": keras.backend.backend(),
            "date_saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
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
            "evaluation": _to_jsonable(evaluation),
        }
        metadata = _to_jsonable(metadata)
        card = model_card if model_card is not None else _default_card(stored, metadata, name)
        with open(os.path.join(tmp, README_FILE), "w") as f:
            f.write(card)
        metadata["files"] = _hash_folder(tmp)
        _write_json_atomic(os.path.join(tmp, METADATA_FILE), metadata)
        os.chmod(tmp, 0o755)
        if os.path.exists(preset_dir):
            old = preset_dir + f".old-{os.getpid()}"
            os.replace(preset_dir, old)
            os.replace(tmp, preset_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, preset_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return preset_dir


def _hash_folder(folder):
    files = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in sorted(names):
            path = os.path.join(root, file)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            if rel == METADATA_FILE or file.startswith("."):
                continue
            files[rel] = {"sha256": sha256_file(path), "size": os.path.getsize(path)}
    return files


# ------------------------------------------------------------------------------- loading


def read_metadata(preset_dir):
    path = os.path.join(preset_dir, METADATA_FILE)
    if not os.path.isfile(path):
        raise PresetMissingFileError(
            f"{preset_dir} is not a complete keras_clmr preset: {METADATA_FILE} is missing. "
            "Save presets with keras_clmr.save_preset, or re-download the folder.")
    try:
        with open(path) as f:
            metadata = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PresetIntegrityError(f"{path} is not valid JSON ({error}); re-download or re-save the preset.") from error
    if not isinstance(metadata, dict) or not isinstance(metadata.get("files"), dict):
        raise PresetIntegrityError(f"{path} has no 'files' table of sha256 sums; re-save the preset "
                                   "with keras_clmr.save_preset.")
    return metadata


def verify_preset(preset_dir, metadata=None):
    """Check every file listed in metadata.json (sha256 and size); raise on the first problem."""
    metadata = metadata or read_metadata(preset_dir)
    files = metadata["files"]
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        raise PresetIntegrityError(f"{preset_dir}/{METADATA_FILE} does not list {missing}; re-save the preset.")
    fix = ("Re-download it (for an hf:// handle, delete this snapshot from the Hugging Face cache, "
           "e.g. with `hf cache delete`, then load again online) or re-save the preset.")
    for rel, expected in files.items():
        path = os.path.join(preset_dir, *rel.split("/"))
        if not os.path.isfile(path):
            raise PresetMissingFileError(f"Preset {preset_dir} is missing {rel}. {fix}")
        size = os.path.getsize(path)
        digest = sha256_file(path)
        if digest != expected.get("sha256") or ("size" in expected and size != expected["size"]):
            kind = "truncated" if size < expected.get("size", size) else "modified"
            raise PresetIntegrityError(
                f"{path} fails its integrity check ({kind}?): sha256 {digest} ({size} bytes), "
                f"metadata.json expects {expected.get('sha256')} ({expected.get('size')} bytes). {fix}")
    return metadata


def check_config_safe(config, where="config"):
    """Refuse a serialized config naming anything but keras_clmr classes or inert core Keras classes."""
    if isinstance(config, list):
        for i, item in enumerate(config):
            check_config_safe(item, f"{where}[{i}]")
        return
    if not isinstance(config, dict):
        return
    if "class_name" in config:
        _check_entry(config, where)
    for key, value in config.items():
        if isinstance(value, (dict, list)):
            check_config_safe(value, f"{where}.{key}")


def _refuse(where, what, why):
    raise UnsafePresetError(
        f"Refusing to load this preset: {where} names {what}, {why}. keras_clmr presets may only "
        "contain keras_clmr's registered classes and core Keras layers that run no stored code. "
        "If you trust this file, load it yourself with keras.saving (safe_mode=False).")


def _check_entry(entry, where):
    class_name = entry.get("class_name")
    module = entry.get("module")
    registered = entry.get("registered_name")
    if class_name in _DATA_MARKERS:
        return
    if not isinstance(class_name, str) or class_name == "__lambda__" or class_name.startswith("__"):
        _refuse(where, repr(class_name), "serialized code or an unknown object kind")
    if not isinstance(module, str):
        _refuse(where, repr(class_name), "without a module")
    if module == "keras_clmr" or module.startswith("keras_clmr."):
        if registered != f"keras_clmr>{class_name}":
            _refuse(where, f"{module}.{class_name}", f"registered as {registered!r}, not keras_clmr>{class_name}")
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise UnsafePresetError(
                f"{where} needs {module}.{class_name}, which this keras_clmr ({_version()}) does not have "
                f"({error}); upgrade keras_clmr.") from error
        obj = keras.saving.get_registered_object(registered)
        if obj is None or not getattr(obj, "__module__", "").startswith("keras_clmr"):
            _refuse(where, registered, "which is not a class registered by keras_clmr")
        return
    if module == "keras" or module.startswith("keras."):
        if class_name in _REFUSED_CORE_CLASSES:
            _refuse(where, f"keras {class_name}", "which can run stored code")
        if class_name == "function":
            return
        if registered not in (None, class_name):
            _refuse(where, f"{class_name} registered as {registered!r}", "a custom object")
        return
    _refuse(where, f"{module}.{class_name}", "a class outside keras_clmr and core Keras")


def _version():
    import keras_clmr

    return keras_clmr.__version__


def load_preset(preset_dir, *, task=None, verify=True):
    """Load the model in a preset folder (verified and safe-mode deserialized).

    ``task="embed"`` returns the encoder (the backbone of a stored tagger); ``task="tag"``
    requires a stored tagger; ``None`` returns what is stored.
    """
    preset_dir = os.fspath(preset_dir)
    if not os.path.isdir(preset_dir):
        raise PresetError(f"{preset_dir}: no such preset folder.")
    if task not in (None, *TASKS):
        raise ValueError(f"task must be one of {TASKS} or None, got {task!r}.")
    metadata = verify_preset(preset_dir) if verify else read_metadata(preset_dir)
    config_path = os.path.join(preset_dir, CONFIG_FILE)
    for required in REQUIRED_FILES:
        if not os.path.isfile(os.path.join(preset_dir, required)):
            raise PresetMissingFileError(f"Preset {preset_dir} is missing {required}; re-download or re-save it.")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except json.JSONDecodeError as error:
        raise PresetIntegrityError(f"{config_path} is not valid JSON ({error}).") from error
    if metadata.get("task") == "embed" and task == "tag":
        raise PresetError(
            f"Preset {preset_dir} stores an encoder ({metadata.get('class_name')}) without a tagging head; "
            "load it with task='embed', choose a preset with a 'tag' variant, or fit a "
            "keras_clmr.models.MusicTagger on it.")
    check_config_safe(config)
    config.pop("compile_config", None)
    model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    _ensure_built(model, metadata.get("input_samples") or model_attribute(model, "input_samples"))
    model.load_weights(os.path.join(preset_dir, WEIGHTS_FILE))
    model.preset_metadata = metadata
    if task == "embed" and is_tagger(model):
        backbone = model.backbone
        backbone.preset_metadata = metadata
        return backbone
    if task == "tag" and not is_tagger(model):
        raise PresetError(f"Preset {preset_dir} does not hold a tagger; load it with task='embed'.")
    return model


# ------------------------------------------------------------------------------- resolving


def parse_hf_handle(handle):
    """``hf://org/name[@revision]`` -> (repo_id, revision or None)."""
    body = handle[len("hf://"):]
    revision = None
    if "@" in body:
        body, revision = body.split("@", 1)
        if not revision:
            raise PresetError(f"{handle}: empty revision after '@'.")
    parts = body.strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise PresetError(f"{handle}: a Hub handle is hf://org/name or hf://org/name@revision.")
    return "/".join(parts), revision


def _offline():
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return constants.HF_HUB_OFFLINE or value.upper() in ("1", "ON", "YES", "TRUE")


def hf_cache_dir(cache_dir=None):
    from huggingface_hub import constants

    return os.fspath(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE


def snapshot(handle, revision=None, cache_dir=None):
    """Download (or find in the cache) the snapshot of an hf:// handle; return its folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    repo_id, handle_revision = parse_hf_handle(handle)
    revision = revision or handle_revision
    offline = _offline()
    try:
        return snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=offline)
    except RevisionNotFoundError as error:
        raise PresetError(f"{handle}: revision {revision!r} does not exist on the Hub ({error}).") from error
    except RepositoryNotFoundError as error:
        raise PresetError(f"{handle}: no such repository on the Hugging Face Hub (or it is private/gated and no "
                          f"token is set: `hf auth login`). ({error})") from error
    except LocalEntryNotFoundError as error:
        where = hf_cache_dir(cache_dir)
        reason = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise PresetNotCachedError(
            f"{handle}{'@' + revision if revision and not handle_revision else ''} is not in the Hugging Face "
            f"cache ({where}) and {reason}. To populate the cache: on a machine with internet run "
            f"`hf download {repo_id}{' --revision ' + revision if revision else ''}` (or load it once online "
            "with HF_HUB_OFFLINE unset) and copy the cache folder here (set HF_HUB_CACHE to it); or put a "
            "preset folder on disk and pass its path; or call keras_clmr.hub.populate_local_cache("
            f"folder, {repo_id!r}) to register a local folder in the cache.") from error


def keras_clmr_cache_dir():
    """Where locally built presets go: ``$KERAS_CLMR_CACHE`` or ``~/.cache/keras_clmr``."""
    return os.environ.get("KERAS_CLMR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "keras_clmr")


def _build_locally(preset, task):
    target = os.path.join(keras_clmr_cache_dir(), "presets", f"{preset.name}-{task}")
    if os.path.isdir(target):
        return target
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(dir=parent, prefix=f".{preset.name}-{task}.build-")
    try:
        built = os.path.join(work, "preset")
        preset.local_builder(built, task)
        verify_preset(built)
        try:
            os.replace(built, target)
        except OSError:
            if not os.path.isdir(target):  # another process won the race otherwise
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def resolve(name_or_handle, task=None, revision=None, cache_dir=None):
    """The local folder holding a registry name, an hf:// handle or a folder path."""
    name_or_handle = os.fspath(name_or_handle)
    if name_or_handle.startswith("hf://"):
        return snapshot(name_or_handle, revision=revision, cache_dir=cache_dir)
    if "://" in name_or_handle:
        raise PresetError(f"{name_or_handle}: only hf:// handles, registry names and local folders are supported.")
    if os.path.isdir(name_or_handle):
        return name_or_handle
    if "/" in name_or_handle or os.sep in name_or_handle or name_or_handle.startswith((".", "~")):
        hint = (f" (for a Hugging Face repository write hf://{name_or_handle})"
                if name_or_handle.count("/") == 1 and not name_or_handle.startswith((".", "/", "~")) else "")
        raise PresetError(f"{name_or_handle}: no such preset folder{hint}.")
    preset = get_preset(name_or_handle)
    task = task or "embed"
    if task not in preset.tasks:
        raise PresetError(f"Preset {preset.name!r} has no {task!r} variant; it offers {preset.tasks}.")
    handle = preset.handles.get(task)
    if preset.local_builder is not None:
        built = os.path.join(keras_clmr_cache_dir(), "presets", f"{preset.name}-{task}")
        if os.path.isdir(built):
            return built
    if handle is not None:
        try:
            return snapshot(handle, revision=revision, cache_dir=cache_dir)
        except (PresetError, OSError) as error:
            if preset.local_builder is None:
                raise
            first_error = error
    else:
        first_error = None
    try:
        return _build_locally(preset, task)
    except Exception as error:
        raise PresetError(f"Preset {preset.name!r} ({task}) could not be built locally: {error}") from (
            first_error or error)


def load_pretrained(name_or_handle, task=None, *, revision=None, cache_dir=None, verify=True):
    """Load a pretrained keras_clmr model: registry name, ``hf://org/name[@rev]`` or folder.

    ``task="embed"`` gives the encoder, ``task="tag"`` the MTAT tagger where one exists.
    For registry names the default is ``"embed"``; for handles and folders, what is stored.
    Every file is checked against the sha256 sums in ``metadata.json``; only keras_clmr's
    registered classes deserialize. Offline (``HF_HUB_OFFLINE=1``) the Hugging Face cache
    is used as is.
    """
    folder = resolve(name_or_handle, task=task, revision=revision, cache_dir=cache_dir)
    return load_preset(folder, task=task, verify=verify)


# ------------------------------------------------------------------------------- HF cache


def populate_local_cache(preset_dir, repo_id, cache_dir=None, revision=None):
    """Put a preset folder into a Hugging Face cache as repo ``repo_id``; return the snapshot path.

    Builds the layout ``huggingface_hub`` reads offline: ``models--org--name/blobs/<sha256>``,
    ``snapshots/<commit>/<file>`` (relative symlinks to the blobs, copies where symlinks are
    unavailable) and ``refs/<revision>`` (default ``main``). ``revision`` may also be a
    40-hex commit id, used as the snapshot name. The folder is verified first.
    """
    metadata = verify_preset(preset_dir)
    if repo_id.startswith("hf://"):
        repo_id, revision = parse_hf_handle(repo_id)[0], revision or parse_hf_handle(repo_id)[1]
    if repo_id.count("/") != 1:
        raise ValueError(f"repo_id must be 'org/name', got {repo_id!r}.")
    files = sorted([*metadata["files"], METADATA_FILE])
    hashes = {rel: sha256_file(os.path.join(preset_dir, *rel.split("/"))) for rel in files}
    if revision is not None and _COMMIT_RE.match(revision):
        commit, ref = revision, None
    else:
        commit = hashlib.sha1("".join(f"{rel}:{hashes[rel]}\n" for rel in files).encode()).hexdigest()
        ref = revision or "main"
    storage = os.path.join(hf_cache_dir(cache_dir), "models--" + repo_id.replace("/", "--"))
    blobs = os.path.join(storage, "blobs")
    snapshots = os.path.join(storage, "snapshots")
    os.makedirs(blobs, exist_ok=True)
    os.makedirs(snapshots, exist_ok=True)
    for rel in files:
        blob = os.path.join(blobs, hashes[rel])
        if not os.path.exists(blob):
            fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".tmp-")
            os.close(fd)
            shutil.copyfile(os.path.join(preset_dir, *rel.split("/")), tmp)
            os.replace(tmp, blob)
    target = os.path.join(snapshots, commit)
    if not os.path.isdir(target):
        tmp_snapshot = tempfile.mkdtemp(dir=snapshots, prefix=".tmp-")
        try:
            for rel in files:
                link = os.path.join(tmp_snapshot, *rel.split("/"))
                os.makedirs(os.path.dirname(link), exist_ok=True)
                depth = rel.count("/") + 2
                source = os.path.join(*([".."] * depth), "blobs", hashes[rel])
                try:
                    os.symlink(source, link)
                except OSError:
                    shutil.copyfile(os.path.join(blobs, hashes[rel]), link)
            os.chmod(tmp_snapshot, 0o755)
            os.replace(tmp_snapshot, target)
        except BaseException:
            shutil.rmtree(tmp_snapshot, ignore_errors=True)
            raise
    if ref is not None:
        refs = os.path.join(storage, "refs", *ref.split("/"))
        os.makedirs(os.path.dirname(refs), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(refs), prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(commit)
        os.replace(tmp, refs)
    return target


def preset_demo(model, output_dir, audio_path, repo_id="keras-clmr/demo", name="demo", top_k=3):
    """Save ``model`` as a preset, load it back (folder; local HF cache with HF_HUB_OFFLINE=1), run it.

    Writes ``output_dir/preset`` and ``output_dir/hf_cache`` (a Hugging Face cache holding the
    preset as ``repo_id``), checks that both loaded copies give the same outputs as ``model``,
    then tags (a tagger) or embeds (an encoder) ``audio_path``. Returns a JSON-able summary.
    Used by ``make demo``.
    """
    from keras_clmr import inference

    output_dir = os.fspath(output_dir)
    preset_dir = save_preset(model, os.path.join(output_dir, "preset"), name=name, overwrite=True)
    from_folder = load_pretrained(preset_dir)
    cache = os.path.join(output_dir, "hf_cache")
    snapshot_dir = populate_local_cache(preset_dir, repo_id, cache_dir=cache)
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from_hub = load_pretrained(f"hf://{repo_id}", cache_dir=cache)
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
    stored = model.encoder if _is_pretrainer(model) else model
    window = np.random.default_rng(0).uniform(-0.5, 0.5, (2, int(model_attribute(stored, "input_samples"))))
    window = window.astype("float32")
    expected = keras.ops.convert_to_numpy(stored(window, training=False))
    max_diff = max(float(np.max(np.abs(keras.ops.convert_to_numpy(m(window, training=False)) - expected)))
                   for m in (from_folder, from_hub))
    if max_diff > 1e-6:
        raise PresetError(f"Preset round trip changed the outputs (max |diff| {max_diff}).")
    summary = {"preset_dir": preset_dir, "hf_cache": cache, "snapshot": snapshot_dir,
               "handle": f"hf://{repo_id}", "round_trip_max_abs_diff": max_diff,
               "files": sorted(read_metadata(preset_dir)["files"])}
    if is_tagger(from_hub):
        result = inference.tag(audio_path, model=from_hub, top_k=top_k)
        summary.update(audio=os.fspath(audio_path), windows=int(result.probabilities.shape[0]), top_tags=result.top)
    else:
        result = inference.embed(audio_path, model=from_hub)
        summary.update(audio=os.fspath(audio_path), embeddings_shape=list(result.embeddings.shape))
    return summary
