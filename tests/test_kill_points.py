"""kill -9 at every write point of ``keras-clmr export`` and ``keras-clmr convert`` (and of a
registry preset's first use: download, conversion, save into the cache).

A worker (tests/workers/kill_export_convert.py) runs the command and SIGKILLs itself at a named
point (a deterministic hook, no timing). After each kill: the output is absent, or the old
complete output (or restorable to it, for a kill between the two renames of a swap); nothing
half-written loads; a re-run finishes; and nothing foreign (the user's files next to and inside
the output, other cache entries) is removed or changed. The points inside export's staging
folder after an ONNX write and before the final rename of an in-place export are also
covered by tests/test_bad_inputs_api.py (``test_kill_during_in_place_export``).

Each kill starts a fresh interpreter (TensorFlow, a model export or conversion): large tier.
``test_a_dead_writers_staging_folder_is_removed`` checks the same recovery on the default tier.
"""

import io as _io
import os
import shutil
import signal
import subprocess
import sys
import zipfile

import pytest

from keras_clmr import hub, io, presets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "workers", "kill_export_convert.py")


def _kill(point, target, mode, *args, env=None):
    """Run the worker; it must have killed itself at ``point``."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    environment.update(env or {})
    done = subprocess.run(
        [sys.executable, WORKER, point, str(target), mode, *map(str, args)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr[-3000:])


def _call(name, *args):
    """``keras-clmr NAME ARGS`` in this process: (exit status, stderr)."""
    from contextlib import redirect_stderr, redirect_stdout

    from keras_clmr.commands import run

    out, err = _io.StringIO(), _io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as done:
        run(name, [f"keras-clmr {name}", *map(str, args)])
    return (0 if done.value.code is None else done.value.code), err.getvalue()


def _tree(root, hidden=True):
    """{relative path: bytes} under ``root`` (``hidden=False``: skip dot-entries at the top)."""
    files = {}
    for name in os.listdir(root):
        if not hidden and name.startswith("."):
            continue
        path = os.path.join(root, name)
        walk = os.walk(path) if os.path.isdir(path) else [(root, [], [name])]
        for folder, _, names in walk:
            for file_name in names:
                full = os.path.join(folder, file_name)
                with open(full, "rb") as f:
                    files[os.path.relpath(full, root)] = f.read()
    return files


def _loads(folder):
    """The preset at ``folder`` passes its sha256 check and loads."""
    hub.verify_preset(folder)
    assert hub.load_preset(folder).count_params() > 0


def _dead_pid():
    """The id of a process that has exited (a writer killed before this run)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ----------------------------------------------------------------------------- default tier


def test_a_dead_writers_staging_folder_is_removed(tmp_path):
    """What a kill inside export's staging leaves (a half-written ``.out.tmp-<pid>-*`` with
    its nested temporaries) is never loaded and is removed by the next run, which keeps the
    user's files next to the output."""
    from keras_clmr.export import sources

    from conftest import tiny_sample_cnn

    user = tmp_path / "user"
    user.mkdir()
    tiny_sample_cnn().save(user / "model.keras")
    (user / "notes.txt").write_text("mine")
    out = user / "out"
    staging = user / f".out.tmp-{_dead_pid()}-abc123"
    (staging / ".build" / ".preset.tmp-1-x").mkdir(parents=True)
    (staging / ".build" / ".preset.tmp-1-x" / "model.weights.h5").write_bytes(b"half")
    with pytest.raises(hub.PresetError):
        hub.load_preset(out)
    sources.save_as_preset(sources.identify(str(user / "model.keras")), out)
    _loads(out)
    assert sorted(os.listdir(user)) == ["model.keras", "notes.txt", "out"]


# ----------------------------------------------------------------------------- export

EXPORT_POINTS = [
    "weights",  # save_preset's weights written in the staging folder
    "savedmodel",  # the SavedModel written and parity-checked in the staging folder
    "onnx",  # model.onnx written and parity-checked
    "staged",  # everything (card included) in the staging folder, not renamed yet
    "final-rename",  # at the rename of the staging folder onto --output
]


@pytest.fixture
def user_folder(tmp_path):
    """A user's folder: a .keras model, their notes, and another preset of theirs."""
    from conftest import tiny_sample_cnn

    user = tmp_path / "user"
    user.mkdir()
    tiny_sample_cnn().save(user / "model.keras")
    (user / "notes.txt").write_text("the user's own file\n")
    return user


@pytest.mark.large
@pytest.mark.parametrize("point", EXPORT_POINTS)
def test_export_killed_into_a_new_folder(user_folder, point):
    out = user_folder / "out"
    before = _tree(user_folder)
    args = [f"--model={user_folder / 'model.keras'}", f"--output={out}"]
    _kill(point, out, "export", *args)
    assert not out.exists()  # nothing at --output until it is complete
    assert _tree(user_folder, hidden=False) == before
    code, stderr = _call("export", *args)
    assert code == 0, stderr[-3000:]
    _loads(out)
    assert {"model.onnx", "README.md", "model.json"} <= set(hub.read_metadata(out)["files"])
    assert sorted(os.listdir(user_folder)) == ["model.keras", "notes.txt", "out"]
    assert {name: _tree(user_folder)[name] for name in before} == before


@pytest.fixture(scope="module")
def earlier_export(tmp_path_factory):
    """An earlier ``keras-clmr export`` output (ONNX only), built once per module."""
    from conftest import tiny_sample_cnn

    root = tmp_path_factory.mktemp("earlier")
    tiny_sample_cnn().save(root / "model.keras")
    code, stderr = _call(
        "export", f"--model={root / 'model.keras'}", f"--output={root / 'out'}", "--format=onnx"
    )
    assert code == 0, stderr[-3000:]
    return root / "out"


@pytest.mark.large
@pytest.mark.parametrize("point", ["onnx", "staged", "old-moved"])
def test_re_export_killed_keeps_the_old_output(user_folder, earlier_export, point):
    """Re-export (--overwrite: the folder holds the user's notes) over an earlier output."""
    out = user_folder / "out"
    shutil.copytree(earlier_export, out)
    (out / "mine.txt").write_text("kept")
    old = _tree(out)
    args = [f"--model={user_folder / 'model.keras'}", f"--output={out}", "--overwrite"]
    _kill(point, out, "export", *args, "--format=all")
    if point == "old-moved":  # between the two renames (the old copy aside), no output
        assert not out.exists()
        io.recover_folder(out)  # what every writer and load of the folder does first
    assert _tree(out) == old  # the old output, whole
    _loads(out)
    code, stderr = _call("export", *args, "--format=all")
    assert code == 0, stderr[-3000:]
    _loads(out)
    files = hub.read_metadata(out)["files"]
    assert "saved_model/saved_model.pb" in files and "mine.txt" not in files
    assert (out / "mine.txt").read_text() == "kept"
    assert sorted(os.listdir(user_folder)) == ["model.keras", "notes.txt", "out"]


# ----------------------------------------------------------------------------- convert

torch_needed = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("torch"), reason="the release files need torch"
)


@pytest.fixture(scope="module")
def release_zip(tmp_path_factory):
    """A tiny CLMR 2.0 release zip (clmr_checkpoint_10000.zip layout)."""
    from test_release_chain import clmr_2_0_files

    _, _, files = clmr_2_0_files()
    name, data = files["embed"]
    path = tmp_path_factory.mktemp("release") / name
    path.write_bytes(data)
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["clmr_checkpoint_10000.pt"]
    return path


CONVERT_POINTS = [
    "converted",  # the checkpoint converted and parity-checked, nothing saved yet
    "weights",  # save_preset's weights written in the staging folder
    "final-rename",  # at the rename of the staging folder onto --output
]


@pytest.mark.large
@torch_needed
@pytest.mark.parametrize("point", CONVERT_POINTS)
def test_convert_killed_into_a_new_folder(tmp_path, release_zip, point):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    out = user / "clmr"
    args = [f"--source={release_zip}", f"--output={out}"]
    _kill(point, out, "convert", *args)
    assert not out.exists()
    assert _tree(user, hidden=False) == {"notes.txt": b"mine"}
    code, stderr = _call("convert", *args)
    assert code == 0, stderr[-3000:]
    _loads(out)
    assert sorted(os.listdir(user)) == ["clmr", "notes.txt"]


@pytest.mark.large
@torch_needed
@pytest.mark.parametrize("point", ["weights", "old-moved"])
def test_convert_overwrite_killed_keeps_the_old_preset(tmp_path, release_zip, point):
    out = tmp_path / "clmr"
    args = [f"--source={release_zip}", f"--output={out}", "--overwrite"]
    code, stderr = _call("convert", *args[:2])
    assert code == 0, stderr[-3000:]
    (out / "mine.txt").write_text("kept")
    old = _tree(out)
    _kill(point, out, "convert", *args)
    io.recover_folder(out)
    assert _tree(out) == old
    _loads(out)
    code, stderr = _call("convert", *args)
    assert code == 0, stderr[-3000:]
    _loads(out)
    assert (out / "mine.txt").read_text() == "kept"
    assert "mine.txt" not in hub.read_metadata(out)["files"]
    assert sorted(os.listdir(tmp_path)) == ["clmr"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty keras_clmr cache holding one other entry (which no run may touch); registry
    file checks off for clmr-mtat (the release file is a tiny stand-in)."""
    import dataclasses

    root = tmp_path / "cache"
    other = root / "presets" / "other-embed"
    other.mkdir(parents=True)
    (other / "keep.txt").write_text("another entry")
    monkeypatch.setenv("KERAS_CLMR_CACHE", str(root))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("KERAS_CLMR_OFFLINE", raising=False)
    preset = presets.get_preset("clmr-mtat")
    monkeypatch.setitem(presets._REGISTRY, "clmr-mtat", dataclasses.replace(preset, assets={}))
    return root


def _not_cached():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_CLMR_OFFLINE", "1")
        with pytest.raises(hub.ReleaseNotCachedError):
            hub.resolve("clmr-mtat", task="embed", progress=False)


def _cache_clean(cache):
    presets_dir = cache / "presets"
    assert sorted(os.listdir(presets_dir)) == ["clmr-mtat-embed", "other-embed"]
    assert (presets_dir / "other-embed" / "keep.txt").read_text() == "another entry"
    downloads = cache / "downloads"
    assert not os.path.isdir(downloads) or not [
        n for n in os.listdir(downloads) if n.endswith(".part")
    ]


@pytest.mark.large
@torch_needed
@pytest.mark.parametrize("point", ["converted", "weights", "final-rename"])
def test_convert_into_the_cache_killed(cache, release_zip, point):
    entry = hub.cached_preset_path("clmr-mtat", "embed")
    args = [f"--input={release_zip}", "--preset=clmr-mtat"]
    _kill(point, entry, "convert", *args, env={"KERAS_CLMR_CACHE": str(cache)})
    _not_cached()  # nothing half-written is taken for the preset
    code, stderr = _call("convert", *args)
    assert code == 0, stderr[-3000:]
    _loads(hub.resolve("clmr-mtat", task="embed", progress=False))
    _cache_clean(cache)


@pytest.mark.large
@torch_needed
def test_convert_overwrite_of_a_cache_entry_killed_between_renames(cache, release_zip):
    """The old entry was deleted before its replacement was built (issue 15); now it stays."""
    entry = hub.cached_preset_path("clmr-mtat", "embed")
    args = [f"--input={release_zip}", "--preset=clmr-mtat"]
    code, stderr = _call("convert", *args)
    assert code == 0, stderr[-3000:]
    old = _tree(entry)
    _kill("old-moved", entry, "convert", *args, "--overwrite", env={"KERAS_CLMR_CACHE": str(cache)})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_CLMR_OFFLINE", "1")
        assert hub.resolve("clmr-mtat", task="embed", progress=False) == entry  # restored
    assert _tree(entry) == old
    code, stderr = _call("convert", *args, "--overwrite")
    assert code == 0, stderr[-3000:]
    _loads(entry)
    _cache_clean(cache)


@pytest.mark.large
@torch_needed
@pytest.mark.parametrize("point", ["downloaded", "converted", "weights"])
def test_first_use_killed_resumes_without_downloading_again(cache, release_zip, point):
    """A registry name's first use (download, conversion, save into the cache), served by a
    127.0.0.1 server: after the kill the next use converts the kept download."""
    from test_release_chain import _Server

    server = _Server()
    try:
        server.files["/clmr.zip"] = release_zip.read_bytes()
        url = server.url("/clmr.zip")
        entry = hub.cached_preset_path("clmr-mtat", "embed")
        _kill(point, entry, "first-use", "clmr-mtat", url, env={"KERAS_CLMR_CACHE": str(cache)})
        assert server.count() == 1
        assert not os.path.exists(entry)  # no cache entry until it is complete
        import dataclasses

        preset = presets.get_preset("clmr-mtat")
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(
                presets._REGISTRY,
                "clmr-mtat",
                dataclasses.replace(preset, source={"embed": url}, assets={}),
            )
            _loads(hub.resolve("clmr-mtat", task="embed", progress=False))
        assert server.count() == 1  # the completed download was kept and reused
        _cache_clean(cache)
    finally:
        server.close()
