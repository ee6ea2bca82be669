"""Bad inputs and faults over the Python API: hub, safety, audio, export, publish.

Each case asserts the typed error, that the message names the fix, and that no partial or
foreign file was created or removed. The kill -9 tests (large tier) stop save_preset and
export at their write points in a subprocess: nothing half-written ever loads.
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

from keras_clmr import audio, hub, io

from conftest import tiny_sample_cnn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()


def _tree(folder):
    """{relative path: bytes} of every file under ``folder`` (to prove nothing changed)."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as file:
                found[os.path.relpath(path, folder)] = file.read()
    return found


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """A saved tiny preset (copied per test by ``fresh``)."""
    folder = tmp_path_factory.mktemp("preset") / "tiny"
    hub.save_preset(tiny_sample_cnn(), folder, name="tiny")
    return folder


@pytest.fixture
def fresh(preset, tmp_path):
    target = tmp_path / "tiny"
    shutil.copytree(preset, target)
    return target


def _rewrite_metadata(folder, change):
    path = os.path.join(folder, "metadata.json")
    with open(path) as file:
        metadata = json.load(file)
    change(metadata)
    io.atomic_write_json(path, metadata)


def _rewrite_config(folder, config):
    io.atomic_write_json(os.path.join(folder, "config.json"), config)
    _rewrite_metadata(
        folder,
        lambda m: m["files"].update(hub.hash_files(str(folder), ["config.json"])),
    )


# ------------------------------------------------------------------------------- config safety

DENSE = {
    "module": "keras.layers",
    "class_name": "Dense",
    "config": {"units": 2, "activation": "relu"},
    "registered_name": None,
}


def _dense(**changes):
    entry = json.loads(json.dumps(DENSE))
    entry["config"].update(changes)
    return entry


UNSAFE_CONFIGS = {
    "activation names a keras function": (_dense(activation="keras.config.set_epsilon"), "act"),
    "activation names an unknown function": (_dense(activation="set_epsilon"), "activation"),
    "initializer names os.system": (_dense(kernel_initializer="os.system"), "initializer"),
    "function entry outside keras.activations": (
        _dense(
            activation={
                "module": "keras.config",
                "class_name": "function",
                "config": "set_epsilon",
                "registered_name": "function",
            }
        ),
        "set_epsilon",
    ),
    "function entry with an unlisted activation": (
        _dense(
            activation={
                "module": "keras.activations",
                "class_name": "function",
                "config": "serialize",
                "registered_name": "function",
            }
        ),
        "serialize",
    ),
    "Lambda layer": (dict(DENSE, class_name="Lambda"), "Lambda"),
    "TorchModuleWrapper": (dict(DENSE, class_name="TorchModuleWrapper"), "TorchModuleWrapper"),
    "unknown keras.layers name": (dict(DENSE, class_name="NotALayer"), "NotALayer"),
    "keras module outside the list": (dict(DENSE, module="keras.src.saving"), "keras.src.saving"),
    "a keras.layers function, not a class": (dict(DENSE, class_name="deserialize"), "deserialize"),
    "__lambda__ marker": (dict(DENSE, class_name="__lambda__"), "__lambda__"),
    "builtins module": (dict(DENSE, module="builtins", class_name="eval"), "builtins.eval"),
    "custom registered name on a core layer": (
        dict(DENSE, registered_name="evil>Dense"),
        "evil>Dense",
    ),
    "keras_clmr module, foreign registration": (
        {
            "module": "keras_clmr.models.sample_cnn",
            "class_name": "SampleCNN",
            "config": {},
            "registered_name": "evil>SampleCNN",
        },
        "evil>SampleCNN",
    ),
}


@pytest.mark.parametrize("case", sorted(UNSAFE_CONFIGS))
def test_unsafe_config_is_refused(case):
    config, named = UNSAFE_CONFIGS[case]
    with pytest.raises(hub.UnsafePresetError) as error:
        hub.check_config_safe(config)
    assert named in str(error.value) and "safe_mode=False" in str(error.value)


def test_deeply_nested_config_is_refused_without_recursion_error():
    config = DENSE
    for _ in range(5000):
        config = {"config": config}
    with pytest.raises(hub.UnsafePresetError, match="nested more than"):
        hub.check_config_safe(config)


def test_listed_objects_pass():
    layer = keras.layers.Dense(
        2,
        activation="gelu",
        kernel_regularizer="l2",
        kernel_constraint="max_norm",
        kernel_initializer="he_normal",
    )
    hub.check_config_safe(keras.saving.serialize_keras_object(layer))
    hub.check_config_safe(keras.saving.serialize_keras_object(tiny_sample_cnn()))
    hub.check_config_safe(
        _dense(
            activation={
                "module": "keras.activations",
                "class_name": "function",
                "config": "relu",
                "registered_name": "function",
            }
        )
    )


def test_unsafe_activation_in_a_preset_never_runs(fresh):
    config = keras.saving.serialize_keras_object(keras.Sequential([keras.layers.Dense(2)]))
    config["config"]["layers"][0]["config"]["activation"] = "keras.config.set_epsilon"
    _rewrite_config(fresh, config)
    epsilon = keras.config.epsilon()
    with pytest.raises(hub.UnsafePresetError, match="set_epsilon"):
        hub.load_preset(fresh)
    assert keras.config.epsilon() == epsilon


# ------------------------------------------------------------------------------- preset folders


@pytest.mark.parametrize(
    "name", ["../other/model.weights.h5", "/etc/passwd", "a/../../x", "sub//x", "./config.json"]
)
def test_metadata_names_outside_the_folder_are_refused(fresh, tmp_path, name):
    outside = tmp_path / "other"
    outside.mkdir()
    shutil.copy(fresh / "model.weights.h5", outside / "model.weights.h5")
    _rewrite_metadata(fresh, lambda m: m["files"].update({name: {"sha256": "0" * 64, "size": 1}}))
    with pytest.raises(hub.PresetIntegrityError, match="outside the preset folder") as error:
        hub.load_preset(fresh)
    assert repr(name) in str(error.value) and "Re-download" in str(error.value)


def test_metadata_not_json(fresh):
    (fresh / "metadata.json").write_text("{not json")
    with pytest.raises(hub.PresetIntegrityError, match="not valid JSON.*re-save"):
        hub.load_preset(fresh)


def test_metadata_without_files_table(fresh):
    _rewrite_metadata(fresh, lambda m: m.pop("files"))
    with pytest.raises(hub.PresetIntegrityError, match="no 'files' table"):
        hub.load_preset(fresh)


def test_tampered_weights(fresh):
    path = fresh / "model.weights.h5"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(hub.PresetIntegrityError, match="modified.*Re-download"):
        hub.load_preset(fresh)


def test_truncated_weights(fresh):
    path = fresh / "model.weights.h5"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(hub.PresetIntegrityError, match="truncated"):
        hub.load_preset(fresh)


def test_missing_config(fresh):
    os.remove(fresh / "config.json")
    with pytest.raises(hub.PresetMissingFileError, match="config.json"):
        hub.load_preset(fresh)


def test_edited_card_still_loads(fresh):
    (fresh / "README.md").write_text("# My notes on this model\n")
    model = hub.load_preset(fresh)
    assert model.count_params() > 0


def test_edited_card_in_the_hf_cache_still_loads(fresh, tmp_path, monkeypatch):
    cache = tmp_path / "hf_cache"
    snapshot = hub.populate_local_cache(str(fresh), "org/tiny", cache_dir=str(cache))
    card = os.path.join(snapshot, "README.md")
    blob = os.path.realpath(card)
    os.remove(card)  # an editor replaces the link with the edited text
    with open(card, "w") as file:
        file.write("---\nlicense: mit\n---\n# edited card\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = hub.load_pretrained("hf://org/tiny", cache_dir=str(cache))
    assert model.count_params() > 0 and os.path.isfile(blob)


def test_symlink_loop_is_named(tmp_path):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with pytest.raises(hub.PresetError, match="symlink loop"):
        hub.load_preset(loop)


def test_wrong_shape_weights_name_the_layer(fresh):
    config = json.loads((fresh / "config.json").read_text())
    config["config"]["channels"][-1] = 32
    _rewrite_config(fresh, config)
    with pytest.raises(hub.PresetIntegrityError) as error:
        hub.load_preset(fresh)
    message = str(error.value)
    assert "block_10_conv" in message and "(3, 16, 32)" in message and "(3, 16, 16)" in message
    assert "expected 2 variables" not in message


def test_bare_name_is_the_registry_not_a_folder(tmp_path, monkeypatch):
    from keras_clmr.hub import resolution

    name = hub.list_presets()[0] if hasattr(hub, "list_presets") else "musicnn-mtt"
    name = getattr(name, "name", name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).mkdir()
    monkeypatch.setattr(resolution, "_verified_cache_entry", lambda preset, task: "REGISTRY")
    assert hub.resolve(name) == "REGISTRY"
    assert hub.resolve(f"./{name}") == f"./{name}"


def test_unknown_bare_name_with_a_folder_says_to_write_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-preset").mkdir()
    with pytest.raises(hub.PresetError, match=r"\./my-preset"):
        hub.resolve("my-preset")


# ------------------------------------------------------------------------------- save_preset


def test_save_refuses_an_existing_folder(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(io.OutputExistsError, match="overwrite=True"):
        hub.save_preset(tiny_sample_cnn(), target)
    assert _tree(target) == {"notes.txt": b"keep me"}
    assert sorted(os.listdir(tmp_path)) == ["mine"]


def test_save_refuses_a_non_model(tmp_path):
    with pytest.raises(TypeError, match="keras.Model"):
        hub.save_preset("not a model", tmp_path / "x")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("name", ["../escape.txt", "/abs.txt", "metadata.json"])
def test_save_refuses_extra_files_outside(tmp_path, name):
    extra = tmp_path / "extra.txt"
    extra.write_text("x")
    with pytest.raises(ValueError, match="invalid name"):
        hub.save_preset(tiny_sample_cnn(), tmp_path / "p", extra_files={name: str(extra)})
    assert sorted(os.listdir(tmp_path)) == ["extra.txt"]


def test_orphaned_old_copy_of_a_dead_writer_is_restored(fresh, tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    old = tmp_path / f".tiny.old-{dead}"
    os.replace(fresh, old)
    temporary = tmp_path / f".tiny.tmp-{dead}-abc"
    temporary.mkdir()
    model = hub.load_preset(fresh)  # the old copy is back
    assert model.count_params() > 0
    hub.save_preset(tiny_sample_cnn(), fresh, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["tiny"]


def test_permissions_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        folder = hub.save_preset(tiny_sample_cnn(), tmp_path / "p")
        snapshot = hub.populate_local_cache(folder, "org/p", cache_dir=str(tmp_path / "cache"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o755
    for name in os.listdir(folder):
        assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o644, name
    for name in os.listdir(snapshot):
        blob = os.path.realpath(os.path.join(snapshot, name))
        assert stat.S_IMODE(os.stat(blob).st_mode) == 0o644, name


# ------------------------------------------------------------------------------- audio


@pytest.mark.parametrize("rate", [0, -1, 500, 999, 384_001, 10**9, float("nan"), 22050.5, "22k"])
def test_bad_sample_rate_argument(tmp_path, rate):
    import soundfile

    path = tmp_path / "a.wav"
    soundfile.write(path, np.zeros(2205, "float32"), 22050)
    with pytest.raises(ValueError, match="between 1000 and 384000|number of Hz"):
        audio.load(path, sample_rate=rate)


@pytest.mark.parametrize("rate", [1, 200, 999])
def test_file_below_1_khz_is_refused_before_decoding(tmp_path, rate):
    import soundfile

    path = tmp_path / "low.wav"
    soundfile.write(path, np.zeros(200, "float32"), rate)
    with pytest.raises(audio.UnsupportedSampleRateError, match=f"{rate} Hz, outside"):
        audio.load(path)


def test_truncated_wav_warns(tmp_path):
    import soundfile

    path = tmp_path / "cut.wav"
    soundfile.write(path, np.full(22050, 0.1, "float32"), 22050, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:20000])
    with pytest.warns(audio.TruncatedAudioWarning, match="truncated"):
        data = audio.load(path)
    assert 0 < len(data) < 22050


def test_whole_wav_does_not_warn(tmp_path):
    import soundfile

    path = tmp_path / "whole.wav"
    soundfile.write(path, np.full(2205, 0.1, "float32"), 22050, subtype="PCM_16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(audio.load(path)) == 2205


def test_audio_symlink_loop_is_named(tmp_path):
    loop = tmp_path / "loop.wav"
    os.symlink(loop, loop)
    with pytest.raises(audio.AudioError, match="symlink loop"):
        audio.load(loop)


def test_missing_empty_and_directory_audio(tmp_path):
    with pytest.raises(audio.AudioFileNotFoundError, match="check the path"):
        audio.load(tmp_path / "none.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(audio.EmptyAudioError, match="0 bytes"):
        audio.load(tmp_path / "empty.wav")
    with pytest.raises(audio.AudioError, match="directory"):
        audio.load(tmp_path)


def test_tool_errors_are_one_deterministic_line():
    text = "\n".join(
        ["[mp3 @ 0x55d0c0a1b2c0] Header missing"] * 88
        + ["[in#0 @ 0x55d0c0a1b3c0] Error opening input: Invalid data found"]
    )
    line = audio.summarize_tool_error(text)
    assert "\n" not in line and "0x" not in line and line.startswith("Error opening input")


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command")
def test_hls_playlist_named_mp3_is_not_followed(tmp_path):
    import soundfile

    secret = tmp_path / "secret.wav"
    soundfile.write(secret, np.full(22050, 0.5, "float32"), 22050)
    playlist = tmp_path / "song.mp3"
    playlist.write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{secret}\n#EXT-X-ENDLIST\n"
    )
    with pytest.raises(audio.AudioError) as error:
        audio.load(playlist)
    assert "\n" not in str(error.value) and "0x" not in str(error.value)


@pytest.mark.parametrize("layout", ["release zip", "torch zip"])
def test_zip_bomb_is_refused_before_reading(tmp_path, layout):
    """A small zip that unpacks to 64 MiB (the 2 GiB case scaled by max_bytes) is refused from
    its directory, without inflating it: peak Python memory stays far below the payload."""
    import tracemalloc
    import zipfile

    from keras_clmr.conversion import readers

    path = tmp_path / "release.zip"
    member_name = "model.pt" if layout == "release zip" else "archive/data/0"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        if layout == "torch zip":
            archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        with archive.open(member_name, "w", force_zip64=True) as member:
            block = bytes(1 << 20)
            for _ in range(64):
                member.write(block)
    assert path.stat().st_size < 1 << 20
    before = sorted(os.listdir(tmp_path))
    tracemalloc.start()
    try:
        with pytest.raises(readers.CheckpointSizeError, match="Raise max_bytes"):
            readers.read_state_dict(str(path), max_bytes=16 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak
    assert sorted(os.listdir(tmp_path)) == before


# ------------------------------------------------------------------------------- publish


def _publishable(tmp_path):
    from keras_clmr.export import card as model_card

    folder = tmp_path / "pub"
    hub.save_preset(tiny_sample_cnn(), folder, name="tiny")
    model_card.write_card(folder, repo_id="org/tiny")
    return folder


@pytest.mark.parametrize("stray", ["extra/.env", "notes.txt", ".hidden", "a/b/c.bin"])
def test_publish_refuses_unlisted_files_by_name(tmp_path, stray):
    from keras_clmr.export import publish

    folder = _publishable(tmp_path)
    before = _tree(folder)
    path = folder / stray
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("SECRET=1")
    with pytest.raises(publish.PublishError, match="Move them out") as error:
        publish.publish(folder, "org/tiny", dry_run=True)
    assert stray in str(error.value)
    assert _tree(folder) == {**before, stray.replace("/", os.sep): b"SECRET=1"}


def test_publish_dry_run_and_upload_use_one_file_list(tmp_path, monkeypatch):
    from unittest import mock

    from keras_clmr.export import publish

    folder = _publishable(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    planned = publish.publish(folder, "org/tiny", dry_run=True)["files"]
    with mock.patch("keras_clmr.export.publish.HfApi") as factory:
        publish.publish(folder, "org/tiny")
    upload = factory.return_value.upload_folder.call_args.kwargs
    assert sorted(upload["allow_patterns"]) == sorted(planned)
    assert set(planned) == set(json.loads((folder / "metadata.json").read_text())["files"]) | {
        "metadata.json"
    }


@pytest.mark.parametrize("repo_id", ["", "noslash", "a/b/c", "../x", "org/na me", "hf://"])
def test_publish_bad_repo_id(tmp_path, repo_id):
    from keras_clmr.export import publish

    with pytest.raises((publish.PublishError, hub.PresetError), match="org/name|hf://"):
        publish.publish(tmp_path, repo_id, dry_run=True)


def test_publish_refuses_metadata_names_outside(tmp_path):
    from keras_clmr.export import publish

    folder = _publishable(tmp_path)
    _rewrite_metadata(
        folder, lambda m: m["files"].update({"../x": {"sha256": "0" * 64, "size": 1}})
    )
    with pytest.raises(publish.PublishError, match="outside the preset folder"):
        publish.publish(folder, "org/tiny", dry_run=True)


# ------------------------------------------------------------------------------- export

needs_tf = pytest.mark.skipif(BACKEND != "tensorflow", reason="exports run on TensorFlow")


@needs_tf
def test_export_refuses_a_folder_of_user_files(tmp_path):
    from keras_clmr import export

    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    with pytest.raises(io.OutputExistsError, match="overwrite"):
        export.export_preset(tiny_sample_cnn(), target, "onnx")
    assert _tree(target) == {"thesis.tex": b"years of work"}
    assert sorted(os.listdir(tmp_path)) == ["mine"]


@needs_tf
def test_export_unknown_format_creates_nothing(tmp_path):
    from keras_clmr import export

    with pytest.raises(ValueError, match="choose from"):
        export.export_preset(tiny_sample_cnn(), tmp_path / "out", "tflite")
    assert not os.listdir(tmp_path)


@needs_tf
def test_in_place_export_keeps_but_never_adopts_stray_files(fresh):
    from keras_clmr import export

    (fresh / "notes.txt").write_text("mine")
    export.export_preset(str(fresh), None, "onnx")
    files = json.loads((fresh / "metadata.json").read_text())["files"]
    assert "notes.txt" not in files and "model.onnx" in files
    assert (fresh / "notes.txt").read_text() == "mine"
    hub.verify_preset(fresh)
    assert not [n for n in os.listdir(fresh.parent) if n.startswith(".")]


@pytest.mark.large
@needs_tf
def test_re_export_repairs_a_damaged_export(fresh):
    from keras_clmr import export

    export.export_preset(str(fresh), None, "onnx")
    onnx = fresh / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:1000])
    with pytest.raises(hub.PresetIntegrityError):
        hub.verify_preset(fresh)
    export.export_preset(str(fresh), None, "onnx")
    hub.verify_preset(fresh)


# ------------------------------------------------------------------------------- kill -9

KILL_WORKER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
    from conftest import tiny_sample_cnn
    from keras_clmr import hub
    mode, folder, kill_at = sys.argv[2], sys.argv[3], int(sys.argv[4])
    calls = [0]
    real_replace = os.replace
    def replace(source, target):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(source, target)
    os.replace = replace
    if mode == "save":
        hub.save_preset(tiny_sample_cnn(), folder, overwrite=True, name="new")
    else:
        from keras_clmr import export
        export.export_preset(folder, None, "onnx")
    print("CALLS", calls[0])
    """
)


def _run_worker(tmp_path, mode, folder, kill_at):
    script = tmp_path / "kill_worker.py"
    script.write_text(KILL_WORKER)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, str(script), REPO, mode, str(folder), str(kill_at)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.large
@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5])
def test_kill_during_save_preset_overwrite(fresh, tmp_path, kill_at):
    """os.replace calls of save_preset(overwrite=True): config, README, metadata (in the
    staging folder), old -> .old-<pid>, staging -> target. Killed at each: the folder loads as
    the old or the new preset, never half; the next save leaves no temporary or old copy."""
    result = _run_worker(tmp_path, "save", fresh, kill_at)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    metadata = hub.verify_preset(fresh)
    assert metadata["name"] in ("tiny", "new")
    assert hub.load_preset(fresh).count_params() > 0
    hub.save_preset(tiny_sample_cnn(), fresh, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["kill_worker.py", "tiny"]


@pytest.mark.large
@needs_tf
@pytest.mark.parametrize("kill_at", [1, 2, 3, 4])
def test_kill_during_in_place_export(fresh, tmp_path, kill_at):
    """os.replace calls of an in-place ONNX export: model.onnx and metadata.json in the staging
    folder, old -> .old-<pid>, staging -> target. Killed at each, the preset passes its sha256
    check (old or new), and a re-run finishes the export with nothing left over."""
    (fresh / "notes.txt").write_text("mine")
    result = _run_worker(tmp_path, "export", fresh, kill_at)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    hub.verify_preset(fresh)
    assert hub.load_preset(fresh).count_params() > 0
    from keras_clmr import export

    export.export_preset(str(fresh), None, "onnx")
    hub.verify_preset(fresh)
    assert (fresh / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["kill_worker.py", "tiny"]


@pytest.mark.parametrize("rate", [0, -22050, 500, 400_000, float("nan")])
def test_embed_refuses_an_impossible_sample_rate(fresh, rate):
    import keras_clmr

    audio = np.zeros(4000, np.float32)
    with pytest.raises(ValueError, match="sample_rate must be a whole number of Hz"):
        keras_clmr.embed(audio, model=str(fresh), sample_rate=rate)
