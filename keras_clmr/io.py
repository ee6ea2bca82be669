"""The one I/O policy: atomic file and folder writes, hashing and JSON conversion.

Every writer in keras_clmr goes through this module, so that a crash or a kill never leaves a
half-written file behind, files get the permissions the user's umask asks for (not mkstemp's
0600), and temporary/old entries of dead writers are cleaned up on the next run.
"""

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile

import numpy as np

# .<name>.tmp-<pid>-<random>[.<suffix>] (atomic_path keeps the suffix for model.save) or
# .<name>.old-<pid>
_TEMP_PATTERN = re.compile(
    r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(-[A-Za-z0-9_]+)?(\.[A-Za-z0-9]+)?$"
)


class OutputExistsError(FileExistsError):
    """The output folder holds files keras_clmr did not write; pass ``overwrite`` to replace it."""


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(path, directory=False):
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would have under the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def fsync_directory(directory):
    """Flush a folder's entries (renames) to disk; a no-op where the platform cannot."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary_name(path, kind):
    directory, name = os.path.split(os.path.abspath(path))
    return directory, f".{name}.{kind}-{os.getpid()}"


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed onto ``path``.

    For writers that need a file name (``model.save``, ``np.save``): whatever they write appears
    at ``path`` whole or not at all. On an exception the temporary file is removed.
    """
    directory, prefix = _temporary_name(path, "tmp")
    os.makedirs(directory, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, temporary = tempfile.mkstemp(prefix=prefix + "-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield temporary
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        make_readable(temporary)
        os.replace(temporary, path)
        fsync_directory(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as file:
            file.write(data)
    return path


def atomic_write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, payload, sort_keys=False):
    """Write ``payload`` (converted with :func:`to_jsonable`) as indented JSON, atomically."""
    text = json.dumps(to_jsonable(payload), indent=2, sort_keys=sort_keys, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def atomic_save_model(model, path):
    """``model.save(path)`` through a temporary file in the same folder and a rename."""
    with atomic_path(path) as temporary:
        model.save(temporary)
    return path


def is_foreign_folder(folder, own_files=()):
    """True when ``folder`` exists and holds entries other than ``own_files`` (relative names)."""
    if not os.path.isdir(folder):
        return os.path.exists(folder)
    own = set(own_files)
    return any(name not in own and not _TEMP_PATTERN.match(name) for name in os.listdir(folder))


@contextlib.contextmanager
def atomic_folder(target, overwrite=False, own_files=None):
    """Yield a temporary folder next to ``target``; on success it replaces ``target`` whole.

    An existing ``target`` is replaced only when ``overwrite`` is true, or when ``own_files`` is
    given and the folder holds nothing else (a previous output of the same tool). The swap keeps
    the old folder as ``.<name>.old-<pid>`` until the new one is in place, and
    :func:`recover_folder` restores it if a kill falls between the two renames.
    """
    target = os.path.abspath(target)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    recover_folder(target)
    if os.path.exists(target) and not overwrite:
        if own_files is None or is_foreign_folder(target, own_files):
            raise OutputExistsError(
                f"{target} already exists and holds files keras_clmr did not write; choose a new "
                "output folder or pass overwrite=True (--overwrite) to replace it"
            )
    _, prefix = _temporary_name(target, "tmp")
    temporary = tempfile.mkdtemp(prefix=prefix + "-", dir=parent)
    try:
        yield temporary
        make_readable(temporary, directory=True)
        for root, _, files in os.walk(temporary):
            for name in files:
                with open(os.path.join(root, name), "rb") as file:
                    os.fsync(file.fileno())
        if os.path.exists(target):
            _, old_name = _temporary_name(target, "old")
            old = os.path.join(parent, old_name)
            if os.path.exists(old):
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(temporary, target)
            fsync_directory(parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, target)
            fsync_directory(parent)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


@contextlib.contextmanager
def scratch_folder(next_to):
    """Yield an empty temporary folder next to ``next_to``, removed on exit (probes, trials).

    Named like :func:`atomic_folder`'s temporaries, so that ``recover_folder(next_to)`` removes
    it when the writer was killed.
    """
    directory, prefix = _temporary_name(next_to, "tmp")
    os.makedirs(directory, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=prefix + "-", dir=directory)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _pid_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_folder(target):
    """Clean up after writers of ``target`` that died: restore an orphaned old copy, drop temps.

    Only entries named ``.<basename>.tmp-<pid>-*`` / ``.<basename>.old-<pid>`` of processes that
    no longer run are touched; nothing else in the parent folder is.
    """
    target = os.path.abspath(target)
    parent, base = os.path.split(target)
    if not os.path.isdir(parent):
        return
    for name in sorted(os.listdir(parent)):
        match = _TEMP_PATTERN.match(name)
        if not match or match.group("name") != base or _pid_alive(int(match.group("pid"))):
            continue
        path = os.path.join(parent, name)
        if match.group("kind") == "old" and not os.path.exists(target):
            os.replace(path, target)
        elif os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def recover_entries(directory):
    """:func:`recover_folder` for every entry of ``directory`` that a dead writer left behind
    (``.<name>.tmp-<pid>-*`` / ``.<name>.old-<pid>``): temporaries go, orphaned old copies come
    back. For folders of many atomic files (checkpoints, shards) before a resumed run."""
    if not os.path.isdir(directory):
        return
    for name in sorted(os.listdir(directory)):
        match = _TEMP_PATTERN.match(name)
        if match:
            recover_folder(os.path.join(directory, match.group("name")))


def sha256_file(path, chunk=1 << 20):
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def to_jsonable(value):
    """Convert numpy scalars/arrays, tuples and non-finite floats (to None) for ``json.dump``."""
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


__all__ = [
    "OutputExistsError",
    "atomic_folder",
    "atomic_path",
    "atomic_save_model",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_directory",
    "is_foreign_folder",
    "make_readable",
    "recover_entries",
    "recover_folder",
    "scratch_folder",
    "sha256_file",
    "to_jsonable",
]
