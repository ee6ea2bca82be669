"""The Hugging Face cache: ``hf://org/name[@revision]`` snapshots, offline use, local population.

``snapshot`` goes through ``huggingface_hub.snapshot_download`` (its cache, ``HF_HUB_OFFLINE``,
revision pinning); ``populate_local_cache`` puts a preset folder into a cache by hand, in the
layout ``huggingface_hub`` reads offline (for tests, demos and air-gapped machines).
"""

import hashlib
import os
import re
import shutil

from keras_clmr import io
from keras_clmr.hub.folder import METADATA_FILE, verify_preset
from keras_clmr.presets import PresetError

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class PresetNotCachedError(PresetError):
    """An hf:// handle that is not in the local cache while the Hub cannot be reached."""


def parse_hf_handle(handle):
    """``hf://org/name[@revision]`` -> (repo_id, revision or None)."""
    body = handle[len("hf://") :]
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
    """``cache_dir``, else huggingface_hub's cache folder (``HF_HUB_CACHE``)."""
    from huggingface_hub import constants

    return os.fspath(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE


def snapshot(handle, revision=None, cache_dir=None, offline=None):
    """Download (or find in the cache) the snapshot of an hf:// handle; return its folder.

    ``offline=True`` reads the cache only; ``None`` follows ``HF_HUB_OFFLINE``.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, handle_revision = parse_hf_handle(handle)
    revision = revision or handle_revision
    offline = _offline() if offline is None else bool(offline)
    try:
        return snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, local_files_only=offline
        )
    except RevisionNotFoundError as error:
        raise PresetError(
            f"{handle}: revision {revision!r} does not exist on the Hub ({error})."
        ) from error
    except RepositoryNotFoundError as error:
        raise PresetError(
            f"{handle}: no such repository on the Hugging Face Hub (or it is private/gated and no "
            f"token is set: `hf auth login`). ({error})"
        ) from error
    except LocalEntryNotFoundError as error:
        where = hf_cache_dir(cache_dir)
        reason = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        pinned = "@" + revision if revision and not handle_revision else ""
        raise PresetNotCachedError(
            f"{handle}{pinned} is not in the Hugging Face cache ({where}) and {reason}. To "
            f"populate the cache: on a machine with internet run `hf download {repo_id}"
            f"{' --revision ' + revision if revision else ''}` (or load it once online with "
            "HF_HUB_OFFLINE unset) and copy the cache folder here (set HF_HUB_CACHE to it); or "
            "put a preset folder on disk and pass its path; or call "
            f"keras_clmr.hub.populate_local_cache(folder, {repo_id!r}) to register a local "
            "folder in the cache."
        ) from error


def populate_local_cache(preset_dir, repo_id, cache_dir=None, revision=None):
    """Put a preset folder into a Hugging Face cache as repo ``repo_id``; return the snapshot path.

    Builds the layout ``huggingface_hub`` reads offline: ``models--org--name/blobs/<sha256>``,
    ``snapshots/<commit>/<file>`` (relative symlinks to the blobs, copies where symlinks are
    unavailable) and ``refs/<revision>`` (default ``main``). ``revision`` may also be a
    40-hex commit id, used as the snapshot name. The folder is verified first.
    """
    metadata = verify_preset(preset_dir)
    if repo_id.startswith("hf://"):
        repo_id, handle_revision = parse_hf_handle(repo_id)
        revision = revision or handle_revision
    if repo_id.count("/") != 1:
        raise ValueError(f"repo_id must be 'org/name', got {repo_id!r}.")
    files = sorted([*metadata["files"], METADATA_FILE])
    hashes = {rel: io.sha256_file(os.path.join(preset_dir, *rel.split("/"))) for rel in files}
    if revision is not None and _COMMIT_RE.match(revision):
        commit, ref = revision, None
    else:
        listing = "".join(f"{rel}:{hashes[rel]}\n" for rel in files)
        commit = hashlib.sha1(listing.encode()).hexdigest()
        ref = revision or "main"
    storage = os.path.join(hf_cache_dir(cache_dir), "models--" + repo_id.replace("/", "--"))
    blobs = os.path.join(storage, "blobs")
    os.makedirs(blobs, exist_ok=True)
    for rel in files:
        blob = os.path.join(blobs, hashes[rel])
        if not os.path.exists(blob):
            with io.atomic_path(blob) as temporary:
                shutil.copyfile(os.path.join(preset_dir, *rel.split("/")), temporary)
    target = os.path.join(storage, "snapshots", commit)
    if not os.path.isdir(target):
        with io.atomic_folder(target) as folder:
            for rel in files:
                link = os.path.join(folder, *rel.split("/"))
                os.makedirs(os.path.dirname(link), exist_ok=True)
                source = os.path.join(*([".."] * (rel.count("/") + 2)), "blobs", hashes[rel])
                try:
                    os.symlink(source, link)
                except OSError:
                    shutil.copyfile(os.path.join(blobs, hashes[rel]), link)
    if ref is not None:
        io.atomic_write_text(os.path.join(storage, "refs", *ref.split("/")), commit)
    return target
