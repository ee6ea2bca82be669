"""A catalogue of bad inputs and faults for the commands that run things (pretrain, prepare,
evaluate, supervised, cover, export, convert, card, publish, embed/tag) and their APIs.

Each case asserts the exit status or typed error, that the message names the value and the
fix, that no traceback is shown, and that no partial or foreign file was created or removed.
Commands run in-process (``keras_clmr.commands.run`` is re-entrant); kill -9 cases run in
subprocesses and are in the large tier.
"""

import errno
import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_clmr import pretraining
from keras_clmr.commands import _checks, run
from keras_clmr.data import datasets, pipeline, prepare
from keras_clmr.data.demo import write_demo_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = os.path.join(REPO, "tests", "workers")
TINY = [
    "--channels=4,4,4,4,4,4,4,4,4,8,8",
    "--projection_dim=8",
    "--nojit_compile",
    "--augment=crop",
    "--batch_size=4",
    "--steps_per_epoch=2",
    "--segment_samples=60000",
    "--demo_clips=8",
]


def call(name, *args):
    """Run command ``name`` in-process: (exit status, stdout, stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as done:
        run(name, [f"keras-clmr {name}", *args])
    code = 0 if done.value.code is None else done.value.code
    return code, out.getvalue(), err.getvalue()


def snapshot(root):
    """{relative path: size} of every file under ``root`` (what a case may not change)."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            files[os.path.relpath(path, root)] = os.path.getsize(path)
    return files


@pytest.fixture
def sandbox(tmp_path):
    """A folder with a user's file in it; the cases write (or must not write) below it."""
    (tmp_path / "notes.txt").write_text("the user's own file\n")
    (tmp_path / "a_file").write_text("not a folder\n")
    return tmp_path


# ----------------------------------------------------------------------------- flag catalogue

# (command, flags, expected status, words the message must contain). "{out}" is a fresh
# folder in the sandbox, "{file}" a plain file (so "{file}/x" cannot be created).
FLAG_CASES = [
    ("pretrain", ["--batch_size=0"], 1, ["--batch_size=0", "[1, 65536]"]),
    ("pretrain", ["--batch_size=-4"], 1, ["--batch_size=-4", "[1, 65536]"]),
    ("pretrain", ["--batch_size=1e9"], 1, ["batch_size", "1e9"]),
    ("pretrain", ["--batch_size=1000000000"], 1, ["--batch_size=1000000000", "65536"]),
    ("pretrain", ["--epochs=0"], 1, ["--epochs=0", "[1, "]),
    ("pretrain", ["--epochs=-3"], 1, ["--epochs=-3", "[1, "]),
    ("pretrain", ["--checkpoint_every_steps=-1"], 1, ["--checkpoint_every_steps=-1", ">= 0"]),
    ("pretrain", ["--keep_checkpoints=-5"], 1, ["--keep_checkpoints=-5", ">= 1"]),
    ("pretrain", ["--keep_checkpoints=0"], 1, ["--keep_checkpoints=0", ">= 1"]),
    ("pretrain", ["--learning_rate=nan"], 1, ["--learning_rate=nan", "not finite"]),
    ("pretrain", ["--learning_rate=inf"], 1, ["--learning_rate=inf", "not finite"]),
    ("pretrain", ["--learning_rate=0"], 1, ["--learning_rate=0", "> 0"]),
    ("pretrain", ["--temperature=-1"], 1, ["--temperature=-1", "> 0"]),
    ("pretrain", ["--sample_rate=0"], 1, ["--sample_rate=0", "[1000, 384000]"]),
    ("pretrain", ["--sample_rate=500000"], 1, ["--sample_rate=500000", "[1000, 384000]"]),
    ("pretrain", ["--sample_rate=44100"], 1, ["--sample_rate=44100", "22050"]),
    ("pretrain", ["--channels=4,x,4"], 1, ["'x' is not an integer"]),
    ("pretrain", ["--channels=4,0,4"], 1, ["--channels=4,0,4", ">= 1"]),
    ("pretrain", ["--channels=4,4,4"], 1, ["3 widths", "needs 11"]),
    ("pretrain", ["--model=pemr", "--channels=" + ",".join(["4"] * 11)], 1, ["needs 4"]),
    ("pretrain", ["--steps_per_epoch=0"], 1, ["--steps_per_epoch=0", ">= 1"]),
    ("pretrain", ["--demo_clips=0"], 1, ["--demo_clips=0", "[2, "]),
    ("pretrain", ["--mask_ratio=1.5"], 1, ["--mask_ratio=1.5", "[0, 1)"]),
    ("pretrain", ["--segment_samples=-1"], 1, ["--segment_samples=-1", ">= 1"]),
    ("pretrain", ["--output_dir={file}/run"], 1, ["is a file, not a folder"]),
    ("pretrain", ["--override=batch_size", "--output_dir={out}"], 1, ["only with --resume"]),
    ("pretrain", ["--resume", "--output_dir={out}"], 1, ["No checkpoint to resume from"]),
    ("pretrain", ["--dataset=mtat", "--output_dir={out}"], 1, ["Unknown --dataset", "--data_dir"]),
    ("pretrain", ["--output_dir={out}", "stray"], 1, ["Unexpected arguments"]),
    ("pretrain", ["--no_such_flag=1"], 1, ["Unknown command line flag"]),
    ("prepare", ["--dataset=folder", "--clips_per_shard=-1"], 1, ["--clips_per_shard=-1"]),
    ("prepare", ["--dataset=folder", "--clips_per_shard=0"], 1, ["--clips_per_shard=0", ">= 1"]),
    ("prepare", ["--dataset=folder", "--sample_rate=0"], 1, ["--sample_rate=0", "[1000, "]),
    ("prepare", ["--dataset=folder", "--sample_rate=999"], 1, ["--sample_rate=999"]),
    ("prepare", ["--dataset=folder", "--shard_mb=0"], 1, ["--shard_mb=0", "[1, "]),
    ("prepare", ["--dataset=folder", "--workers=0"], 1, ["--workers=0", "[1, "]),
    ("prepare", ["--dataset=folder", "--output={file}/x"], 1, ["is a file, not a folder"]),
    ("prepare", ["--dataset=folder", "--output={out}"], 1, ["--source and --output"]),
    ("prepare", ["--dataset=folder", "--source={out}/none", "--output={out}"], 1, ["none"]),
    ("prepare", ["--dataset=nope"], 1, ["dataset"]),
    ("evaluate", ["--label_fraction=0"], 1, ["--label_fraction=0", "(0, 1]"]),
    ("evaluate", ["--label_fraction=1.5"], 1, ["--label_fraction=1.5", "(0, 1]"]),
    ("evaluate", ["--batch_size=0"], 1, ["--batch_size=0"]),
    ("evaluate", ["--epochs=0"], 1, ["--epochs=0"]),
    ("evaluate", ["--patience=-1"], 1, ["--patience=-1", ">= 0"]),
    ("evaluate", ["--crops_per_clip=0"], 1, ["--crops_per_clip=0"]),
    ("evaluate", ["--demo_seconds=nan"], 1, ["--demo_seconds=nan", "not finite"]),
    ("evaluate", ["--verbose=7"], 1, ["--verbose=7", "[0, 2]"]),
    ("evaluate", ["--output_dir={out}"], 1, ["--checkpoint is required"]),
    ("evaluate", ["--checkpoint={out}/missing.keras"], 1, ["missing.keras", "no such file"]),
    ("evaluate", ["--checkpoint={file}"], 1, ["a_file"]),
    ("cover", ["--checkpoint={out}/missing.keras"], 1, ["missing.keras", "no such file"]),
    ("supervised", ["--label_fraction=0"], 1, ["--label_fraction=0", "(0, 1]"]),
    ("supervised", ["--dropout=1"], 1, ["--dropout=1", "[0, 1)"]),
    ("supervised", ["--momentum=-0.5"], 1, ["--momentum=-0.5"]),
    ("supervised", ["--sample_rate=0"], 1, ["--sample_rate=0"]),
    ("cover", ["--demo_clips=1"], 1, ["--demo_clips=1"]),
    ("cover", ["--sample_rate=100"], 1, ["--sample_rate=100"]),
    ("cover", ["--strides=3,-3"], 1, ["--strides=3,-3", ">= 1"]),
    ("cover", ["--strides=3,3,3"], 1, ["--strides=3,3,3 has 3 entries", "needs 9"]),
    ("evaluate", ["--channels=8,8"], 1, ["--channels=8,8 has 2 entries", "needs 11"]),
    ("supervised", ["--channels=8,8,8,8,8,8,8,8,8,8,8,8"], 1, ["has 12 entries"]),
    ("export", ["--opset=3"], 1, ["--opset=3", "[7, 30]"]),
    ("export", ["--atol=nan"], 1, ["--atol=nan", "not finite"]),
    ("export", ["--atol=0"], 1, ["--atol=0", "> 0"]),
    ("export", ["--model=x", "--output={file}/x"], 1, ["is a file, not a folder"]),
    ("convert", ["--sample_rate=0"], 1, ["--sample_rate=0"]),
    ("card", ["--output_dir={file}/cards"], 1, ["is a file, not a folder"]),
    ("publish", ["--attempts=0"], 1, ["--attempts=0", "[1, 100]"]),
]


@pytest.mark.parametrize(
    "command, args, status, words",
    FLAG_CASES,
    ids=[f"{c[0]} {' '.join(c[1])}" for c in FLAG_CASES],
)
def test_flag_catalogue(sandbox, command, args, status, words):
    before = snapshot(sandbox)
    out = sandbox / "out"
    args = [a.format(out=out, file=sandbox / "a_file") for a in args]
    code, stdout, stderr = call(command, *args)
    assert code == status, stderr
    for word in words:
        assert word in stderr, (word, stderr)
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert stderr.startswith(f"keras-clmr {command}: error: "), stderr
    assert snapshot(sandbox) == before  # nothing written, nothing removed
    assert not out.exists()


# The documented scripts (python -m training.* / export.*), each in a fresh interpreter: the
# same validation at the edge (status 1, the value and the range named, one usage line, no
# traceback, nothing written). Flags are checked before TensorFlow is imported, so each is quick.
SCRIPT_CASES = [
    ("training.pretrain", ["--epochs=0", "--output_dir={out}"], ["--epochs=0", "[1, "]),
    ("training.linear_eval", ["--label_fraction=0"], ["--label_fraction=0", "(0, 1]"]),
    ("training.supervised", ["--dropout=1"], ["--dropout=1", "[0, 1)"]),
    ("training.cover_eval", ["--strides=3,-3"], ["--strides=3,-3", ">= 1"]),
    ("export.export", ["--opset=3", "--output={out}"], ["--opset=3", "[7, 30]"]),
    ("export.convert_checkpoint", ["--sample_rate=0", "--output={out}"], ["--sample_rate=0"]),
    ("export.publish", ["--attempts=0"], ["--attempts=0", "[1, 100]"]),
]


@pytest.mark.parametrize(
    "script, args, words", SCRIPT_CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in SCRIPT_CASES]
)
def test_script_catalogue(sandbox, script, args, words):
    before = snapshot(sandbox)
    out = sandbox / "out"
    args = [a.format(out=out) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", script, *args],
        cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"python -m {script}: error: " in done.stderr
    for word in words:
        assert word in done.stderr, (word, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    assert snapshot(sandbox) == before and not out.exists()


def test_debug_shows_the_traceback_of_a_user_error(monkeypatch):
    from keras_clmr.commands import prepare as command

    def fail(argv):
        raise FileNotFoundError("no such dataset folder: /x")

    monkeypatch.setattr(command, "main", fail)
    code, _, stderr = call("prepare", "--dataset=folder")
    assert code == 2 and stderr == "keras-clmr prepare: error: no such dataset folder: /x\n"
    with pytest.raises(FileNotFoundError, match="no such dataset folder"):
        call("prepare", "--dataset=folder", "--debug")


def test_an_internal_error_is_not_hidden(monkeypatch):
    from keras_clmr.commands import prepare as command

    monkeypatch.setattr(command, "main", lambda argv: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        call("prepare", "--dataset=folder")


# embed/tag (argparse): (args, words); status 2, nothing loaded or written.
INFER_CASES = [
    (["--hop", "nan"], ["--hop=nan", "not finite"]),
    (["--hop", "inf"], ["--hop=inf", "not finite"]),
    (["--hop", "0"], ["--hop=0", "(0, 3600]"]),
    (["--hop", "-1"], ["--hop=-1"]),
    (["--batch-size", "0"], ["--batch-size=0", "[1, 65536]"]),
    (["--batch-size", "1e9"], ["--batch-size=1000000000", "[1, 65536]"]),
    (["--batch-size", "2.5"], ["--batch-size=2.5", "not an integer"]),
    (["--output", "{file}/x.json"], ["is a file, not a folder"]),
    (["--output", "out.txt"], ["must end in one of"]),
]


@pytest.mark.parametrize("args, words", INFER_CASES, ids=[" ".join(c[0]) for c in INFER_CASES])
def test_embed_catalogue(sandbox, capsys, args, words):
    from keras_clmr import cli

    before = snapshot(sandbox)
    args = [a.format(file=sandbox / "a_file") for a in args]
    try:
        code = cli.main(["embed", str(sandbox / "song.wav"), *args])
    except SystemExit as done:  # argparse
        code = done.code
    err = capsys.readouterr().err
    assert code == 2
    for word in words:
        assert word in err, (word, err)
    assert "Traceback" not in err
    assert snapshot(sandbox) == before


def test_top_k_zero_is_refused(capsys):
    from keras_clmr import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["tag", "x.wav", "--top-k", "0"])
    assert done.value.code == 2 and "--top-k=0" in capsys.readouterr().err


def test_check_helpers_name_value_and_range():
    with pytest.raises(_checks.CheckError, match=r"hop=nan is not finite"):
        _checks.real(float("nan"), "hop", 0, low_open=True)
    with pytest.raises(_checks.CheckError, match=r"label_fraction=0 is out of range: .*\(0, 1\]"):
        _checks.real(0, "label_fraction", 0, 1, low_open=True)
    with pytest.raises(_checks.CheckError, match=r"rate=1 is out of range: must be in \[1000"):
        _checks.sample_rate(1, "rate")
    assert _checks.integer(3.0, "n", 1) == 3
    with pytest.raises(_checks.CheckError, match="not an integer"):
        _checks.integer(True, "n", 0)
    disk_full = OSError(errno.ENOSPC, "No space left on device")
    message, status = _checks.describe(disk_full)
    assert status == 2 and "disk is full" in message and "Free some space" in message
    assert _checks.describe(ZeroDivisionError()) is None


# ----------------------------------------------------------------------------- prepare


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_demo_corpus(str(root), n_clips=8, seconds=0.5)
    return root


def _prepare(corpus, output, **kwargs):
    spec = datasets.csv_dataset(str(corpus))
    options = dict(workers=1, clips_per_shard=2, progress=False, config={"source": str(corpus)})
    options.update(kwargs)
    return prepare.prepare(spec, str(output), **options)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"clips_per_shard": -1}, "clips_per_shard=-1 is out of range"),
        ({"clips_per_shard": 0}, "clips_per_shard=0 is out of range"),
        ({"sample_rate": 0}, r"sample_rate=0 is out of range: must be in \[1000, 384000\]"),
        ({"sample_rate": 22050.5}, "sample_rate=22050.5 is not an integer"),
        ({"shard_mb": 0}, "shard_mb=0"),
        ({"workers": -2}, "workers=-2"),
    ],
)
def test_prepare_api_refuses_bad_arguments(corpus, tmp_path, kwargs, words):
    with pytest.raises(ValueError, match=words):
        _prepare(corpus, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_overwrite_deletes_only_its_own_listed_files(corpus, tmp_path):
    output = tmp_path / "out"
    _prepare(corpus, output)
    foreign = {
        "other-dataset-00000-of-00001.tfrecord": b"someone else's shard",
        "train.tfrecord.bak": b"a backup",
        "notes.txt": b"notes",
    }
    for name, data in foreign.items():
        (output / name).write_bytes(data)
    (output / "progress" / "theirs.json").write_text("{}")
    ours = {n for n in os.listdir(output) if n.endswith(".tfrecord")} - set(foreign)
    code, _, stderr = call(
        "prepare",
        "--dataset=csv",
        f"--source={corpus}",
        f"--output={output}",
        "--clips_per_shard=3",
        "--workers=1",
        "--noprogress",
        "--overwrite",
    )
    assert code == 0, stderr
    for name, data in foreign.items():
        assert (output / name).read_bytes() == data
    assert (output / "progress" / "theirs.json").exists()
    manifest = json.loads((output / "manifest.json").read_text())
    now = {s["file"] for s in manifest["shards"]}
    assert not (ours - now) & set(os.listdir(output))  # the old plan's shards are gone
    assert all((output / name).exists() for name in now)


def test_overwrite_of_a_folder_without_our_plan_deletes_nothing(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "a.tfrecord").write_bytes(b"x")
    (output / "plan.json").write_text(json.dumps({"format": "someone-else", "shards": []}))
    with pytest.raises(ValueError, match="deletes nothing it did not write"):
        prepare._remove_previous(str(output))
    (output / "plan.json").unlink()
    assert prepare._remove_previous(str(output)) == []
    assert (output / "a.tfrecord").read_bytes() == b"x"


def test_truncated_finished_shard_is_rewritten(corpus, tmp_path, capsys):
    reference = _prepare(corpus, tmp_path / "out")
    shard = tmp_path / "out" / reference["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-10])  # truncated, its marker still present
    again = _prepare(corpus, tmp_path / "out")
    assert again == reference
    assert "is damaged" in capsys.readouterr().err
    import hashlib

    assert hashlib.sha256(shard.read_bytes()).hexdigest() == reference["shards"][0]["sha256"]
    # Same size, other bytes: the sha256 catches it.
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert _prepare(corpus, tmp_path / "out") == reference
    assert "sha256 differs" in capsys.readouterr().err


def test_other_settings_are_named(corpus, tmp_path):
    _prepare(corpus, tmp_path / "out")
    before = snapshot(tmp_path / "out")
    with pytest.raises(ValueError, match=r"clips_per_shard: 2 -> 3.*--overwrite"):
        _prepare(corpus, tmp_path / "out", clips_per_shard=3)
    assert snapshot(tmp_path / "out") == before


def test_decoder_reasons_are_one_deterministic_line():
    first = (
        "ffmpeg version 6.1 Copyright (c) 2000-2023\n  built with gcc 13\n"
        "[mp3 @ 0x55d0c3a1b2c0] Failed to read frame size: Could not seek to 1026.\n"
        "[in#0 @ 0x55d0c3a1f000] Error opening input: Invalid argument\n"
    )
    second = first.replace("0x55d0c3a1b2c0", "0x5611aa00ff00").replace("0x55d0c3a1f000", "0x7f")
    assert prepare.summarise_reason(first) == prepare.summarise_reason(second)
    line = prepare.summarise_reason(first)
    assert "\n" not in line and "0x" not in line and "[mp3] Failed to read frame size" in line
    assert len(prepare.summarise_reason("x" * 5000)) <= 240


def test_empty_source_and_all_broken_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, stderr = call(
        "prepare", "--dataset=folder", f"--source={empty}", f"--output={tmp_path / 'o'}"
    )
    assert code == 1 and "no audio files found" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_prepare_disk_full_keeps_finished_shards(corpus, tmp_path, monkeypatch):
    real = prepare._digest
    calls = {"n": 0}

    def full_disk(path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path)

    def args(output):
        return [
            "--dataset=csv",
            f"--source={corpus}",
            f"--output={output}",
            "--clips_per_shard=2",
            "--workers=1",
            "--noprogress",
        ]

    monkeypatch.setattr(prepare, "_digest", full_disk)
    output = tmp_path / "out"
    code, _, stderr = call("prepare", *args(output))
    assert code == 2 and "disk is full" in stderr and "Traceback" not in stderr
    assert "shards finished before it are kept" in stderr
    names = os.listdir(output)
    assert not [n for n in names if n.endswith(".tmp")]  # the half shard is gone
    assert len(os.listdir(output / "progress")) == 1 and not (output / "manifest.json").exists()
    monkeypatch.setattr(prepare, "_digest", real)
    assert call("prepare", *args(output))[0] == 0  # the same command again finishes the job
    assert call("prepare", *args(tmp_path / "clean"))[0] == 0
    clean = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    assert json.loads((output / "manifest.json").read_text()) == clean


# ----------------------------------------------------------------------------- pretraining API


class _Data(keras.utils.PyDataset):
    """Linear-regression batches (finite)."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps

    def __len__(self):
        return self.steps

    def __getitem__(self, index):
        rng = np.random.default_rng(index)
        x = rng.standard_normal((4, 3)).astype("float32")
        return x, x @ np.array([[1.0], [-2.0], [0.5]], "float32")


class _PoisonAt(keras.callbacks.Callback):
    """Sets the weights to NaN before global step ``step`` (a diverging run, deterministic)."""

    def __init__(self, step):
        super().__init__()
        self.step, self.seen = step, 0

    def on_train_batch_begin(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            for variable in self.model.trainable_variables:
                variable.assign(np.full(variable.shape, np.nan, "float32"))


def _tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def _train(directory, data, epochs, keep=3, every=0, poison_at=None):
    model = _tiny_model()
    guard = pretraining.NonFiniteGuard()
    callbacks = [
        guard,
        pretraining.EpochCheckpoint(directory, keep=keep, guard=guard, steps_per_epoch=len(data)),
    ]
    if every:
        callbacks.append(pretraining.StepCheckpoint(directory, every, len(data), guard=guard))
    if poison_at:
        callbacks.insert(0, _PoisonAt(poison_at))
    model.fit(data, epochs=epochs, callbacks=callbacks, verbose=0, shuffle=False)
    return model, guard


def test_non_finite_loss_stops_and_keeps_the_last_finite_checkpoint(tmp_path):
    directory = str(tmp_path / "ckpt")
    # 3 steps per epoch, step checkpoints every 2: NaN from global step 8 (epoch 3, batch 2).
    model, guard = _train(directory, _Data(3), epochs=5, every=2, poison_at=8)
    assert guard.diverged is not None and "loss = nan at epoch 3, batch 2" in guard.diverged
    state = pretraining.read_state(directory)
    assert state["checkpoint"] == "epoch-00002.keras" and state["epoch"] == 2
    names = sorted(os.listdir(directory))
    assert names == ["epoch-00001.keras", "epoch-00002.keras", "state.json"] + [
        "step-0000000002.keras",
        "step-0000000004.keras",
    ]
    for name in names[:2] + names[3:]:
        loaded = keras.saving.load_model(os.path.join(directory, name))
        assert pretraining.non_finite(loaded) is None
    resumed, path, epoch, _ = pretraining.load_resume_point(directory)
    assert pretraining.non_finite(resumed) is None and epoch == 2
    assert pretraining.non_finite(model) is not None
    with pytest.raises(pretraining.TrainingDivergedError, match="no final model"):
        pretraining.save_final_outputs(model, str(tmp_path))
    assert not (tmp_path / "model.keras").exists()


def test_nan_in_an_epochs_last_batch_writes_no_epoch_checkpoint(tmp_path):
    directory = str(tmp_path / "ckpt")
    # NaN weights assigned before the last batch of epoch 2: caught at the epoch-end check.
    _, guard = _train(directory, _Data(2), epochs=3, poison_at=4)
    assert guard.diverged is not None
    assert pretraining.read_state(directory)["checkpoint"] == "epoch-00001.keras"
    assert sorted(os.listdir(directory)) == ["epoch-00001.keras", "state.json"]


def test_truncated_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    directory = str(tmp_path / "ckpt")
    _train(directory, _Data(2), epochs=3)
    newest = os.path.join(directory, "epoch-00003.keras")
    with open(newest, "rb") as file:
        data = file.read()
    with open(newest, "wb") as file:
        file.write(data[: len(data) // 2])
    warnings = []
    model, path, epoch, step = pretraining.load_resume_point(
        directory, warn=lambda *args: warnings.append(args[0] % args[1:])
    )
    assert path.endswith("epoch-00002.keras") and (epoch, step) == (2, 0)
    assert warnings and "epoch-00003.keras is unreadable" in warnings[0]


def test_corrupt_state_json_names_the_fix(tmp_path):
    directory = str(tmp_path / "ckpt")
    _train(directory, _Data(2), epochs=2)
    state_path = os.path.join(directory, "state.json")
    with open(state_path, "w") as file:
        file.write('{"epoch": 2, "checkp')
    with pytest.raises(pretraining.CheckpointError, match=r"corrupt.*delete it.*epoch-00002"):
        pretraining.load_resume_point(directory)
    os.remove(state_path)  # the fix the message names
    _, path, epoch, _ = pretraining.load_resume_point(directory)
    assert path.endswith("epoch-00002.keras") and epoch == 2


def test_keep_checkpoints_below_one_is_refused(tmp_path):
    for keep in (0, -5):
        with pytest.raises(ValueError, match=f"keep={keep}"):
            pretraining.EpochCheckpoint(str(tmp_path), keep=keep)
        with pytest.raises(ValueError, match=f"keep={keep}"):
            pretraining.StepCheckpoint(str(tmp_path), 1, 4, keep=keep)


def test_disk_full_while_checkpointing_names_the_resume_point(tmp_path, monkeypatch):
    directory = str(tmp_path / "ckpt")
    _train(directory, _Data(2), epochs=1)

    def full(model, path):
        raise OSError("Unable to synchronously create file (Disable slist on flush dest failure)")

    from keras_clmr import io

    monkeypatch.setattr(io, "atomic_save_model", full)
    monkeypatch.setattr(pretraining, "_disk_full", lambda error, directory: True)
    with pytest.raises(OSError) as raised:
        pretraining.atomic_save_model(_tiny_model(), os.path.join(directory, "epoch-00002.keras"))
    assert raised.value.errno == errno.ENOSPC and "epoch-00002.keras" in str(raised.value)
    assert _checks.is_disk_full(raised.value)
    assert pretraining.read_state(directory)["checkpoint"] == "epoch-00001.keras"


# ----------------------------------------------------------------------------- pretrain runs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny 1-epoch pretraining run (the state of a finished run for the resume cases)."""
    output = tmp_path_factory.mktemp("run") / "run"
    code, stdout, stderr = call("pretrain", *TINY, "--epochs=1", f"--output_dir={output}")
    assert code == 0, stderr[-3000:]
    return output


@pytest.mark.large
def test_resume_refuses_conflicting_settings(finished_run):
    before = snapshot(finished_run)
    code, _, stderr = call(
        "pretrain",
        *TINY[:-1],
        "--demo_clips=6",
        "--batch_size=2",
        "--resume",
        "--learning_rate=0.1",
        "--epochs=1",
        f"--output_dir={finished_run}",
    )
    assert code == 1
    assert "--batch_size: the run has 4, given 2" in stderr
    assert "--learning_rate: the run has 0.0003, given 0.1" in stderr
    assert "--demo_clips: the run has 8, given 6" in stderr
    assert "Pass --override=batch_size,demo_clips,learning_rate to use the new values" in stderr
    code, _, stderr = call(
        "pretrain", "--model=pemr", "--resume", "--epochs=1", f"--output_dir={finished_run}"
    )
    assert code == 1 and "--model: the run has 'clmr', given 'pemr' (fixed by the checkpoint" in (
        stderr
    )
    code, _, stderr = call(
        "pretrain", "--resume", "--override=colour", f"--output_dir={finished_run}"
    )
    assert code == 1 and "--override=colour: not a recorded setting" in stderr
    assert snapshot(finished_run) == before


@pytest.mark.large
def test_resume_with_override_and_recorded_settings(finished_run):
    # Flags not given take the run's settings (the tiny channels, batch 4): nothing to do.
    code, stdout, stderr = call(
        "pretrain", "--resume", "--epochs=1", f"--output_dir={finished_run}"
    )
    assert code == 0, stderr[-2000:]
    assert "nothing to do" in stdout
    code, stdout, stderr = call(
        "pretrain",
        "--resume",
        "--epochs=1",
        "--batch_size=2",
        "--override=batch_size",
        f"--output_dir={finished_run}",
    )
    assert code == 0 and "nothing to do" in stdout, stderr[-2000:]


@pytest.mark.large
def test_resume_writes_missing_final_outputs(finished_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)
    # As if killed after the last epoch checkpoint, before model.keras / encoder.keras.
    os.remove(run_dir / "model.keras")
    os.remove(run_dir / "encoder.keras")
    state_path = run_dir / "checkpoints" / "state.json"
    state = json.loads(state_path.read_text())
    state.pop("finished")
    state_path.write_text(json.dumps(state))
    code, stdout, stderr = call("pretrain", "--resume", "--epochs=1", f"--output_dir={run_dir}")
    assert code == 0, stderr[-2000:]
    assert "not written its final outputs" in stdout
    model = pretraining.load_checkpoint(str(run_dir / "model.keras"))
    encoder = keras.saving.load_model(str(run_dir / "encoder.keras"))
    assert encoder.count_params() == model.encoder.count_params()
    assert json.loads(state_path.read_text())["finished"]["epoch"] == 1
    # A new run into a run's folder without --resume is refused (nothing overwritten).
    before = snapshot(run_dir)
    code, _, stderr = call("pretrain", *TINY, "--epochs=1", f"--output_dir={run_dir}")
    assert code == 1 and "holds a run already" in stderr and "--resume" in stderr
    assert snapshot(run_dir) == before


@pytest.mark.large
def test_disk_full_writing_the_final_model_keeps_the_checkpoints(
    finished_run, tmp_path, monkeypatch
):
    import shutil

    from keras_clmr import io

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)
    for name in ("model.keras", "encoder.keras"):
        os.remove(run_dir / name)
    before = snapshot(run_dir)

    def full(model, path):
        with io.atomic_path(path) as temporary:
            with open(temporary, "wb") as file:
                file.write(b"PK half a zip")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io, "atomic_save_model", full)
    code, _, stderr = call("pretrain", "--resume", "--epochs=1", f"--output_dir={run_dir}")
    assert code == 2 and "disk is full" in stderr and "Free some space" in stderr
    assert "model.keras" in stderr and "Traceback" not in stderr
    assert snapshot(run_dir) == before  # no half-written model, the checkpoints untouched
    monkeypatch.undo()
    code, stdout, stderr = call("pretrain", "--resume", "--epochs=1", f"--output_dir={run_dir}")
    assert code == 0 and "not written its final outputs" in stdout, stderr[-2000:]


@pytest.mark.large  # trains one more epoch
def test_resume_with_a_new_learning_rate_uses_it(finished_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)
    code, _, stderr = call(
        "pretrain",
        "--resume",
        "--epochs=2",
        "--learning_rate=0.01",
        "--override=learning_rate",
        f"--output_dir={run_dir}",
    )
    assert code == 0, stderr[-3000:]
    model = pretraining.load_checkpoint(str(run_dir / "model.keras"))
    rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert rate == pytest.approx(0.01, rel=1e-6)
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    assert state["settings"]["learning_rate"] == 0.01 and state["finished"]["epoch"] == 2


@pytest.mark.large
def test_corrupt_state_json_via_the_command(finished_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "checkpoints" / "state.json").write_text("{ not json")
    before = snapshot(run_dir)
    code, _, stderr = call("pretrain", "--resume", "--epochs=2", f"--output_dir={run_dir}")
    assert code == 1 and "is corrupt" in stderr and "delete it" in stderr
    assert "Traceback" not in stderr
    assert snapshot(run_dir) == before


@pytest.mark.large  # a second training run; the API test above covers the mechanism
def test_diverging_run_exits_non_zero_without_final_model(tmp_path):
    output = tmp_path / "run"
    code, _, stderr = call(
        "pretrain", *TINY, "--epochs=2", "--learning_rate=1e30", f"--output_dir={output}"
    )
    assert code == 3, stderr[-2000:]
    assert "Training diverged" in stderr and "no final model written" in stderr
    assert "Lower --learning_rate" in stderr
    assert not (output / "model.keras").exists() and not (output / "encoder.keras").exists()
    state_path = output / "checkpoints" / "state.json"
    if state_path.exists():  # whatever was recorded is finite
        state = json.loads(state_path.read_text())
        model = pretraining.load_checkpoint(str(output / "checkpoints" / state["checkpoint"]))
        assert pretraining.non_finite(model) is None


def test_empty_prepared_dir_is_a_usage_error(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "manifest.json").write_text(
        json.dumps({"format": prepare.FORMAT, "splits": {"train": {"count": 0}}, "shards": []})
    )
    code, _, stderr = call(
        "pretrain", *TINY, f"--data_dir={prepared}", f"--output_dir={tmp_path / 'run'}"
    )
    assert code == 1 and "holds no training clips" in stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------- output folders holding the user's files


def _tree_bytes(root):
    """{relative path: bytes} of every file under ``root``."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


@pytest.fixture
def keras_file(tmp_path):
    """A tiny SampleCNN saved with model.save (a source of save_as_preset / export)."""
    from conftest import tiny_sample_cnn

    path = tmp_path / "model.keras"
    tiny_sample_cnn().save(path)
    return path


@pytest.fixture
def earlier_preset(keras_file, tmp_path):
    """An earlier output of save_as_preset with the user's notes.txt and data/ added."""
    from keras_clmr.export import sources

    folder = tmp_path / "out"
    sources.save_as_preset(sources.identify(str(keras_file)), folder)
    (folder / "notes.txt").write_text("mine")
    (folder / "data").mkdir()
    (folder / "data" / "a.bin").write_bytes(b"\x00\x01")
    return folder


def test_save_as_preset_names_the_users_files_and_changes_nothing(keras_file, earlier_preset):
    from keras_clmr import io
    from keras_clmr.export import sources

    before = _tree_bytes(earlier_preset.parent)
    with pytest.raises(io.OutputExistsError, match=r"\(data, notes.txt\).*overwrite"):
        sources.save_as_preset(sources.identify(str(keras_file)), earlier_preset)
    assert _tree_bytes(earlier_preset.parent) == before


def test_save_as_preset_overwrite_replaces_only_listed_files(keras_file, earlier_preset):
    from keras_clmr import hub
    from keras_clmr.export import sources

    listed_before = set(hub.read_metadata(earlier_preset)["files"])
    (earlier_preset / "model.weights.h5").write_bytes(b"damaged")  # a listed file: replaced
    sources.save_as_preset(sources.identify(str(keras_file)), earlier_preset, overwrite=True)
    assert (earlier_preset / "notes.txt").read_text() == "mine"
    assert (earlier_preset / "data" / "a.bin").read_bytes() == b"\x00\x01"
    metadata = hub.verify_preset(earlier_preset)
    assert set(metadata["files"]) == listed_before  # the user's files are never adopted
    assert sorted(os.listdir(earlier_preset.parent)) == ["model.keras", "out"]


def test_save_as_preset_into_a_folder_of_user_files(keras_file, tmp_path):
    from keras_clmr import hub, io
    from keras_clmr.export import sources

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    source = sources.identify(str(keras_file))
    with pytest.raises(io.OutputExistsError, match=r"\(thesis.tex\)"):
        sources.save_as_preset(source, folder)
    assert os.listdir(folder) == ["thesis.tex"]
    sources.save_as_preset(source, folder, overwrite=True)
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert "thesis.tex" not in hub.verify_preset(folder)["files"]


def test_save_as_preset_refuses_a_file_as_output(keras_file, tmp_path):
    from keras_clmr import io
    from keras_clmr.export import sources

    target = tmp_path / "taken"
    target.write_text("a file")
    with pytest.raises(io.OutputExistsError, match="is a file, not a folder"):
        sources.save_as_preset(sources.identify(str(keras_file)), target, overwrite=True)
    assert target.read_text() == "a file"


def test_export_command_names_the_users_files_unless_overwrite(keras_file, earlier_preset):
    from keras_clmr import hub

    before = _tree_bytes(earlier_preset.parent)
    args = [f"--model={keras_file}", f"--output={earlier_preset}", "--format=onnx", "--nocard"]
    code, stdout, stderr = call("export", *args)
    assert code == 1 and "data, notes.txt" in stderr and "--overwrite" in stderr, stderr
    assert "Traceback" not in stderr
    assert _tree_bytes(earlier_preset.parent) == before

    code, stdout, stderr = call("export", *args, "--overwrite")
    assert code == 0, stderr[-3000:]
    files = hub.verify_preset(earlier_preset)["files"]
    assert "model.onnx" in files and "notes.txt" not in files
    assert not [f for f in files if f.startswith("data/")]
    assert (earlier_preset / "notes.txt").read_text() == "mine"
    assert (earlier_preset / "data" / "a.bin").read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(earlier_preset.parent)) == ["model.keras", "out"]


def test_export_copies_only_the_listed_files_of_another_preset(earlier_preset, tmp_path):
    from keras_clmr import hub

    out = tmp_path / "copy"
    code, _, stderr = call(
        "export", f"--model={earlier_preset}", f"--output={out}", "--format=onnx", "--nocard"
    )
    assert code == 0, stderr[-3000:]
    assert not (out / "notes.txt").exists() and not (out / "data").exists()
    assert "model.onnx" in hub.verify_preset(out)["files"]
    assert (earlier_preset / "notes.txt").read_text() == "mine"


def test_in_place_export_refuses_a_users_file_under_a_name_it_writes(keras_file, tmp_path):
    """In place, the user's unlisted files stay; one named like an export is refused (named)."""
    from keras_clmr import io
    from keras_clmr.export import export_preset, sources

    folder = tmp_path / "preset"
    sources.save_as_preset(sources.identify(str(keras_file)), folder)
    (folder / "model.onnx").write_bytes(b"the user's own onnx file")
    before = _tree_bytes(tmp_path)
    with pytest.raises(io.OutputExistsError, match=r"holds model.onnx, not listed.*overwrite"):
        export_preset(str(folder), None, "onnx")
    assert _tree_bytes(tmp_path) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_convert_checks_the_output_before_converting(sandbox, overwrite):
    """An existing --output is refused without --overwrite; a file as --output always. Both
    before the checkpoint is read (it does not even exist here), and nothing changes."""
    before = snapshot(sandbox)
    target = sandbox / ("a_file" if overwrite else "")
    args = ["--source=" + str(sandbox / "none.pt"), f"--output={target}"]
    code, _, stderr = call("convert", *args, *(["--overwrite"] if overwrite else []))
    assert code == 1, stderr
    words = ["is a file, not a folder"] if overwrite else ["already exists", "--overwrite"]
    assert all(word in stderr for word in words), stderr
    assert "Traceback" not in stderr and "none.pt" not in stderr
    assert snapshot(sandbox) == before


# ----------------------------------------------------------------------------- kill -9


def _worker(*args, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, os.path.join(WORKERS, "kill_at_write.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


PREPARE_KILL_POINTS = [
    "shard-temp-written",  # a shard's temporary file complete, not renamed
    "shard-renamed",  # the shard under its final name, no progress marker yet
    "marker-written",  # the marker written (next shard not started)
    "clips-table",  # all shards done, clips.tsv being written
    "manifest",  # manifest.json's temporary file written, not renamed
]


@pytest.mark.large
@pytest.mark.parametrize("point", PREPARE_KILL_POINTS)
def test_prepare_killed_at_a_write_point_resumes_to_the_same_manifest(corpus, tmp_path, point):
    reference = _prepare(corpus, tmp_path / "clean")
    output = tmp_path / "out"
    done = _worker("prepare", point, str(corpus), str(output))
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert not pipeline.is_prepared(str(output))  # no manifest: never looks finished
    assert _prepare(corpus, output) == reference
    assert not [n for n in os.listdir(output) if ".tmp" in n]


PRETRAIN_KILL_POINTS = [
    "checkpoint-temp",  # epoch 2's checkpoint written to its temporary file, not renamed
    "state-temp",  # epoch 2's checkpoint renamed, state.json's temporary file not renamed
    "final-model",  # model.keras written, encoder.keras not yet
]


@pytest.mark.large
@pytest.mark.parametrize("point", PRETRAIN_KILL_POINTS)
def test_pretrain_killed_at_a_write_point_resumes(tmp_path, point):
    output = tmp_path / "run"
    done = _worker("pretrain", point, str(output), *TINY, "--epochs=2")
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    state = pretraining.read_state(str(output / "checkpoints"))
    # At most one checkpoint interval (one epoch) is lost, and what state.json names loads.
    assert state["epoch"] >= 1
    pretraining.load_checkpoint(str(output / "checkpoints" / state["checkpoint"]))
    code, stdout, stderr = call("pretrain", "--resume", "--epochs=2", f"--output_dir={output}")
    assert code == 0, stderr[-3000:]
    assert pretraining.read_state(str(output / "checkpoints"))["finished"]["epoch"] == 2
    pretraining.load_checkpoint(str(output / "model.keras"))
    keras.saving.load_model(str(output / "encoder.keras"))
    leftovers = [n for n in os.listdir(output) + os.listdir(output / "checkpoints") if ".tmp" in n]
    assert not leftovers
