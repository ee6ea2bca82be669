"""``python -m training.pretrain`` (= ``keras-clmr pretrain``) end to end, in subprocesses (tiny
encoder, no XLA to keep it quick)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import soundfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--channels=4,4,4,4,4,4,4,4,4,8,8",
    "--projection_dim=8",
    "--nojit_compile",
    "--augment=crop",
    "--batch_size=4",
    "--steps_per_epoch=2",
    "--segment_samples=60000",
]
# keras_clmr.io's temporary names: .<final name>.tmp-<pid>[-<random>][<final extension>]
TEMPORARY = re.compile(r"^\.(?P<name>.+?)\.tmp-(?P<pid>\d+)(-[A-Za-z0-9_]+)?(\.[a-z]+)?$")
FINISHED = re.compile(r"^(epoch-\d{5}\.keras|step-\d{10}\.keras|state\.json)$")
pytestmark = pytest.mark.large  # subprocess trainings, kill/resume


def run(*args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", "training.pretrain", *TINY, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def state(output_dir):
    with open(os.path.join(output_dir, "checkpoints", "state.json")) as file:
        return json.load(file)


def test_kill_then_resume_continues_from_the_saved_epoch(tmp_path):
    out = str(tmp_path / "run")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "training.pretrain",
            *TINY,
            "--demo_clips=12",
            "--epochs=500",
            f"--output_dir={out}",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state_path = os.path.join(out, "checkpoints", "state.json")
    deadline = time.time() + 400
    while time.time() < deadline and not os.path.exists(state_path):
        time.sleep(0.5)
    assert os.path.exists(state_path), "no checkpoint was written in time"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = state(out)["epoch"]
    assert killed_at >= 1
    # Every file left behind is a finished checkpoint (a complete .keras zip), or at most one
    # temporary of the killed writer named after the file it was writing (keras_clmr.io).
    checkpoints = os.path.join(out, "checkpoints")
    names = sorted(os.listdir(checkpoints))
    temporary = [n for n in names if TEMPORARY.match(n)]
    assert len(temporary) <= 1, temporary
    for name in temporary:
        match = TEMPORARY.match(name)
        assert int(match["pid"]) == process.pid and FINISHED.match(match["name"]), name
    finished = [n for n in names if n not in temporary]
    assert "state.json" in finished and all(FINISHED.match(n) for n in finished), finished
    for name in finished:
        if name.endswith(".keras"):
            with zipfile.ZipFile(os.path.join(checkpoints, name)) as archive:
                assert archive.testzip() is None, name
    result = run("--demo_clips=12", f"--epochs={killed_at + 1}", f"--output_dir={out}", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Epoch {killed_at + 1}/{killed_at + 1}" in result.stdout + result.stderr
    assert state(out)["epoch"] == killed_at + 1
    # The resumed run left no temporary of its own (only the killed writer's may remain).
    left = [n for n in os.listdir(checkpoints) if n.startswith(".")]
    killed_writer = [n for n in left if (m := TEMPORARY.match(n)) and m["pid"] == str(process.pid)]
    assert left == killed_writer, left
    import keras

    from keras_clmr.pretraining import load_checkpoint

    model = load_checkpoint(os.path.join(out, "model.keras"))
    # The optimizer state came back with the weights: its step count spans both runs.
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2 * (killed_at + 1)
    assert os.path.exists(os.path.join(out, "encoder.keras"))
    assert os.listdir(os.path.join(out, "logs"))


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    result = run("--epochs=1", f"--output_dir={tmp_path}", "--resume", "--demo_clips=8")
    assert result.returncode != 0
    assert "No checkpoint to resume from" in result.stderr


def test_audio_folder_with_bad_and_empty_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("--epochs=1", f"--data_dir={empty}", f"--output_dir={tmp_path / 'o1'}")
    assert result.returncode != 0 and "holds no audio files" in result.stderr

    folder = tmp_path / "audio"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        soundfile.write(folder / f"good_{i}.flac", 0.1 * rng.standard_normal((44100 * 3, 2)), 44100)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wav")
    soundfile.write(folder / "short.wav", np.zeros(1000), 22050)
    result = run("--epochs=1", f"--data_dir={folder}", f"--output_dir={tmp_path / 'o2'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "broken.wav" in result.stderr and "short.wav" in result.stderr
    assert "4 audio files" in result.stdout and "2 skipped" in result.stdout
    assert os.path.exists(tmp_path / "o2" / "encoder.keras")

    result = run(
        "--epochs=1", f"--data_dir={tmp_path / 'missing'}", f"--output_dir={tmp_path / 'o3'}"
    )
    assert result.returncode != 0 and "not a directory" in result.stderr
