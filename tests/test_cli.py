"""The keras-clmr console script on real files written here."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from keras_clmr import cli, hub
from keras_clmr.models.tagger import MusicTagger

from conftest import tiny_sample_cnn

SR = 8000
W = 7776
TAGS = ["bright", "dark", "fast"]


@pytest.fixture
def setup(tmp_path):
    tagger = MusicTagger(tiny_sample_cnn(sample_rate=SR), num_classes=len(TAGS), tags=TAGS)
    folder = hub.save_preset(tagger, tmp_path / "tagger")
    rng = np.random.default_rng(0)
    music = tmp_path / "music"
    music.mkdir()
    files = []
    for i, seconds in enumerate((2.0, 1.2, 3.5)):
        path = music / f"clip{i}.wav"
        # A 44.1 kHz stereo file for the first: resampled and downmixed on the way in.
        rate = 44100 if i == 0 else SR
        data = rng.uniform(-0.5, 0.5, (int(seconds * rate), 2 if i == 0 else 1)).astype("float32")
        sf.write(str(path), data, rate)
        files.append(str(path))
    return str(folder), files, tmp_path


def test_tag_json_and_npz(setup, capsys):
    folder, files, tmp = setup
    out = str(tmp / "tags.json")
    assert (
        cli.main(
            ["tag", *files, "--model", folder, "--output", out, "--top-k", "2", "--no-progress"]
        )
        == 0
    )
    records = json.load(open(out))
    assert [r["file"] for r in records] == files
    assert [len(r["times"]) for r in records] == [2, 1, 3]
    for r in records:
        probabilities = np.array(r["probabilities"])
        assert probabilities.shape == (len(r["times"]), 3) and r["tags"] == TAGS
        np.testing.assert_allclose(
            [r["clip"][t] for t in TAGS], probabilities.mean(axis=0), rtol=1e-6
        )
        assert len(r["top"]) == 2 and r["top"][0][1] >= r["top"][1][1]

    npz = str(tmp / "tags.npz")
    assert (
        cli.main(["tag", str(tmp / "music"), "--model", folder, "--output", npz]) == 0
    )  # a folder as input
    data = np.load(npz)
    assert list(data["files"]) == sorted(files) and list(data["tags"]) == TAGS
    np.testing.assert_allclose(
        data["probabilities_0"], records[0]["probabilities"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(data["times_2"], [0.0, W / SR, 2 * W / SR])


def test_embed_csv_and_summary(setup, capsys):
    folder, files, tmp = setup
    out = str(tmp / "emb.csv")
    assert cli.main(["embed", *files, "--model", folder, "--output", out, "--hop", "0.5"]) == 0
    rows = list(csv.reader(open(out)))
    assert rows[0][:4] == ["file", "start", "end", "e0"] and len(rows[0]) == 3 + 16
    assert all(abs(float(r[2]) - float(r[1]) - W / SR) < 1e-5 for r in rows[1:])
    counts = {f: sum(1 for r in rows[1:] if r[0] == f) for f in files}
    assert counts == {
        files[0]: 1 + (16000 - W) // 4000,
        files[1]: 1 + (9600 - W) // 4000,
        files[2]: 1 + (28000 - W) // 4000,
    }
    capsys.readouterr()
    assert cli.main(["embed", files[1], "--model", folder]) == 0
    assert "1 windows x 16 dims" in capsys.readouterr().out


def test_bad_inputs_exit_codes(setup, capsys):
    folder, files, tmp = setup
    out = str(tmp / "partial.json")
    assert (
        cli.main(["tag", files[0], str(tmp / "nope.wav"), "--model", folder, "--output", out]) == 1
    )
    err = capsys.readouterr().err
    assert "nope.wav" in err and "no such file" in err
    records = json.load(open(out))
    assert records[0]["error"] is None and "no such file" in records[1]["error"]
    assert cli.main(["tag", files[0], "--model", "clmr-mtta"]) == 2
    assert "Did you mean 'clmr-mtat'" in capsys.readouterr().err
    assert cli.main(["embed", files[0], "--model", folder, "--output", str(tmp / "x.txt")]) == 2
    assert not os.path.exists(tmp / "x.txt")


@pytest.mark.large  # a fresh interpreter
def test_console_script_runs(setup):
    folder, files, tmp = setup
    script = os.path.join(os.path.dirname(sys.executable), "keras-clmr")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "keras_clmr.cli"]
    out = str(tmp / "script.json")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [*command, "embed", *files[:2], "--model", folder, "--output", out],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    records = json.load(open(out))
    assert [np.array(r["embeddings"]).shape for r in records] == [(2, 16), (1, 16)]
