"""From a name to a folder: registry name, ``hf://org/name[@revision]`` handle or local path.

A registry name resolves, in this order, to:

1. the keras_clmr cache (``$KERAS_CLMR_CACHE``, default ``~/.cache/keras_clmr``), verified;
2. its Hugging Face repository, only when the registry pins a commit (``Preset.revision``);
3. its official release file(s) (``Preset.source``), downloaded and converted locally into the
   cache on first use (:mod:`keras_clmr.hub.release`), or its local builder (musicnn: named by a
   dotted path in the registry and imported only when it runs);
4. an unpinned Hub handle only for presets with neither (user-registered ones).

Offline (``HF_HUB_OFFLINE=1`` / ``KERAS_CLMR_OFFLINE=1``) step 3 downloads nothing and the error
names the URL to fetch by hand and the ``keras-clmr convert`` command that fills the cache.
"""

import importlib
import os

from keras_clmr import io
from keras_clmr.hub import release
from keras_clmr.hub.folder import PresetIntegrityError, load_preset, verify_preset
from keras_clmr.hub.hf_cache import snapshot
from keras_clmr.presets import PresetError, get_preset, preset_names


def keras_clmr_cache_dir():
    """Where locally built presets go: ``$KERAS_CLMR_CACHE`` or ``~/.cache/keras_clmr``."""
    return release.cache_dir()


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


def cached_preset_path(name, task="embed"):
    """The keras_clmr cache folder of a registry preset's task (it may not exist yet)."""
    return os.path.join(keras_clmr_cache_dir(), "presets", f"{name}-{task}")


def _built_path(preset, task):
    return cached_preset_path(preset.name, task)


def _verified_cache_entry(preset, task):
    """The cached folder of ``preset``/``task`` if present, checked against its metadata."""
    folder = _built_path(preset, task)
    io.recover_folder(folder)  # a build killed between its renames: its old copy comes back
    if not os.path.isdir(folder):
        return None
    try:
        verify_preset(folder)
    except PresetIntegrityError as error:
        raise PresetIntegrityError(
            f"The cached preset {folder} is damaged ({error}). Delete that folder and load "
            f"{preset.name!r} again to rebuild it."
        ) from error
    return folder


def _build_into_cache(preset, task, write, overwrite=False):
    """Run ``write(folder)`` (a folder that does not exist yet) inside a staging folder next to
    the cache entry; verified, it replaces the entry whole (``keras_clmr.io.atomic_folder``).

    The writer's own temporaries stay inside the staging folder, so a kill leaves only that,
    which the next build removes (``io.recover_folder``); an entry being replaced stays until
    the new one is complete.
    """
    target = _built_path(preset, task)
    io.recover_folder(target)
    if os.path.isdir(target) and not overwrite:
        return target
    with io.atomic_folder(target, overwrite=True) as staging:
        built = os.path.join(staging, ".build")
        write(built)
        verify_preset(built)
        for name in os.listdir(built):
            os.replace(os.path.join(built, name), os.path.join(staging, name))
        os.rmdir(built)
    return target


def _build_locally(preset, task):
    builder = resolve_builder(preset.local_builder)

    def write(folder):
        if isinstance(preset.local_builder, str):  # registry data: builder(name, folder, task)
            builder(preset.name, folder, task)
        else:
            builder(folder, task)

    return _build_into_cache(preset, task, write)


def build_from_release(preset, task, progress=True):
    """The cache folder of a release-backed preset: downloaded and converted when missing."""
    return _build_into_cache(
        preset,
        task,
        lambda folder: release.build_from_release(preset, task, folder, progress=progress),
    )


def convert_into_cache(name, files, task="embed", overwrite=False, progress=True):
    """Convert hand-downloaded release file(s) of registry preset ``name`` into the cache."""
    preset = get_preset(name)
    if not preset.release_urls(task):
        raise PresetError(
            f"Preset {preset.name!r} has no official release file for task {task!r} "
            f"(tasks with one: {[t for t in preset.tasks if preset.release_urls(t)]})."
        )
    assets = release.describe_local_files(preset, task, files)
    target = _built_path(preset, task)
    io.recover_folder(target)
    if os.path.isdir(target) and not overwrite:
        raise FileExistsError(
            f"{target} already holds {preset.name!r} ({task}); pass --overwrite to replace it."
        )
    return _build_into_cache(
        preset,
        task,
        lambda folder: release.convert_files(preset, task, assets, folder, progress=progress),
        overwrite=True,
    )


def resolve(name_or_handle, task=None, revision=None, cache_dir=None, progress=True):
    """The local folder holding a registry name, an hf:// handle or a folder path."""
    name_or_handle = os.fspath(name_or_handle)
    if name_or_handle.startswith("hf://"):
        return snapshot(name_or_handle, revision=revision, cache_dir=cache_dir)
    if "://" in name_or_handle:
        raise PresetError(
            f"{name_or_handle}: only hf:// handles, registry names and local folders are supported."
        )
    # A bare name is a registry name even when a folder of that name is in the current
    # directory; only a path (./x, /x, ~/x, a separator) is a folder.
    is_path = (
        "/" in name_or_handle or os.sep in name_or_handle or name_or_handle.startswith((".", "~"))
    )
    if is_path and os.path.isdir(os.path.expanduser(name_or_handle)):
        return os.path.expanduser(name_or_handle)
    if is_path:
        looks_like_repo = name_or_handle.count("/") == 1 and not name_or_handle.startswith(
            (".", "/", "~")
        )
        hint = (
            f" (for a Hugging Face repository write hf://{name_or_handle})"
            if looks_like_repo
            else ""
        )
        raise PresetError(f"{name_or_handle}: no such preset folder{hint}.")
    try:
        preset = get_preset(name_or_handle)
    except PresetError as error:
        if os.path.isdir(name_or_handle):
            raise type(error)(
                f"{error} A folder {name_or_handle!r} exists here: to load it, pass it as a "
                f"path, ./{name_or_handle}."
            ) from error
        raise
    task = task or "embed"
    if task not in preset.tasks:
        raise PresetError(
            f"Preset {preset.name!r} has no {task!r} variant; it offers {preset.tasks}."
        )
    cached = _verified_cache_entry(preset, task)
    if cached is not None:
        return cached
    handle = preset.handles.get(task)
    pinned = preset.pinned_handle(task)
    has_release = bool(preset.release_urls(task))
    if revision is not None and handle is not None:
        return snapshot(handle, revision=revision, cache_dir=cache_dir)
    first_error = None
    if pinned is not None:
        try:
            return snapshot(pinned[0], revision=pinned[1], cache_dir=cache_dir)
        except (PresetError, OSError) as error:
            if not has_release and preset.local_builder is None:
                raise
            first_error = error
    if has_release:
        return build_from_release(preset, task, progress=progress)
    if handle is not None and preset.local_builder is None:
        return snapshot(handle, cache_dir=cache_dir)  # user-registered, unpinned: as asked
    if preset.local_builder is None:
        raise PresetError(f"Preset {preset.name!r} ({task}) has no source of weights.")
    try:
        return _build_locally(preset, task)
    except Exception as error:
        raise PresetError(
            f"Preset {preset.name!r} ({task}) could not be built locally: {error}"
        ) from (first_error or error)


def load_pretrained(
    name_or_handle, task=None, *, revision=None, cache_dir=None, verify=True, progress=True
):
    """Load a pretrained keras_clmr model: registry name, ``hf://org/name[@rev]`` or folder.

    ``task="embed"`` gives the encoder, ``task="tag"`` the MTAT tagger where one exists.
    For registry names the default is ``"embed"``; for handles and folders, what is stored.
    A registry name comes from the keras_clmr cache, else (CLMR, PEMR) from the official
    release file, downloaded and converted on first use (``progress`` shows both). Every file
    is checked against the sha256 sums in ``metadata.json``; only keras_clmr's registered
    classes deserialize. ``cache_dir`` is the Hugging Face cache for hf:// handles. Offline
    (``HF_HUB_OFFLINE=1`` / ``KERAS_CLMR_OFFLINE=1``) nothing is downloaded.
    """
    name = os.fspath(name_or_handle)
    if task is None and name in preset_names() and not os.path.isdir(name):
        task = "embed"  # as documented: a registry name gives its encoder unless task="tag"
    folder = resolve(
        name_or_handle, task=task, revision=revision, cache_dir=cache_dir, progress=progress
    )
    return load_preset(folder, task=task, verify=verify)
