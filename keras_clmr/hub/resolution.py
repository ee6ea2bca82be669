"""From a name to a folder: registry name, ``hf://org/name[@revision]`` handle or local path.

Registry names go to the keras_clmr cache (presets built locally, e.g. converted on first use),
then to their pinned Hub handle, then to their local builder (named by a dotted path in the
registry and imported only when it runs).
"""

import importlib
import os
import shutil
import tempfile

from keras_clmr.hub.folder import load_preset, verify_preset
from keras_clmr.hub.hf_cache import snapshot
from keras_clmr.presets import PresetError, get_preset


def keras_clmr_cache_dir():
    """Where locally built presets go: ``$KERAS_CLMR_CACHE`` or ``~/.cache/keras_clmr``."""
    return os.environ.get("KERAS_CLMR_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_clmr"
    )


def resolve_builder(builder):
    """The callable of a local builder: itself, or ``"package.module:function"`` imported now.

    Builders named by a dotted path are called ``builder(preset_name, preset_dir, task)``;
    callables registered with ``register_local_builder`` as ``builder(preset_dir, task)``.
    """
    if callable(builder):
        return builder
    module, _, attribute = str(builder).partition(":")
    if not module or not attribute:
        raise PresetError(f"Local builder {builder!r} must be 'package.module:function'.")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise PresetError(f"Local builder {builder!r} cannot be imported ({error}).") from error


def _built_path(preset, task):
    return os.path.join(keras_clmr_cache_dir(), "presets", f"{preset.name}-{task}")


def _build_locally(preset, task):
    target = _built_path(preset, task)
    if os.path.isdir(target):
        return target
    builder = resolve_builder(preset.local_builder)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    # The builder writes a folder that must not exist yet; it moves into place once verified.
    work = tempfile.mkdtemp(dir=parent, prefix=f".{preset.name}-{task}.build-")
    try:
        built = os.path.join(work, "preset")
        if isinstance(preset.local_builder, str):  # registry data: builder(name, folder, task)
            builder(preset.name, built, task)
        else:
            builder(built, task)
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
        raise PresetError(
            f"{name_or_handle}: only hf:// handles, registry names and local folders are supported."
        )
    if os.path.isdir(name_or_handle):
        return name_or_handle
    if "/" in name_or_handle or os.sep in name_or_handle or name_or_handle.startswith((".", "~")):
        looks_like_repo = name_or_handle.count("/") == 1 and not name_or_handle.startswith(
            (".", "/", "~")
        )
        hint = (
            f" (for a Hugging Face repository write hf://{name_or_handle})"
            if looks_like_repo
            else ""
        )
        raise PresetError(f"{name_or_handle}: no such preset folder{hint}.")
    preset = get_preset(name_or_handle)
    task = task or "embed"
    if task not in preset.tasks:
        raise PresetError(
            f"Preset {preset.name!r} has no {task!r} variant; it offers {preset.tasks}."
        )
    handle = preset.handles.get(task)
    if preset.local_builder is not None and os.path.isdir(_built_path(preset, task)):
        return _built_path(preset, task)
    first_error = None
    if handle is not None:
        try:
            return snapshot(handle, revision=revision, cache_dir=cache_dir)
        except (PresetError, OSError) as error:
            if preset.local_builder is None:
                raise
            first_error = error
    try:
        return _build_locally(preset, task)
    except Exception as error:
        raise PresetError(
            f"Preset {preset.name!r} ({task}) could not be built locally: {error}"
        ) from (first_error or error)


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
