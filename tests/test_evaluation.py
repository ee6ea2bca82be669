"""keras_clmr.evaluation: label fractions, crops, probes, clip-level testing on in-memory and
prepared data, encoder loading, result files, and the training scripts end to end."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_clmr import evaluation, metrics
from keras_clmr.models import CLMR

from conftest import tiny_sample_cnn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_STRIDES = "3,3,3,3,2,2,2,2,2"
TINY_CHANNELS = "8,8,8,8,8,8,8,8,8,16,16"


def _clipset(n=12, seconds=1.0, tags=4, seed=0):
    rng = np.random.default_rng(seed)
    clips = [rng.standard_normal(int(seconds * 22050)).astype(np.float32) * 0.1 for _ in range(n)]
    labels = (rng.random((n, tags)) < 0.5).astype(np.float32)
    labels[0], labels[1] = 1, 0
    return evaluation.ClipSet(clips, labels)


def test_label_fraction_subsets_are_reproducible_nested_and_right_sized():
    for n, fraction, size in (
        (1000, 0.01, 10),
        (1000, 0.1, 100),
        (1000, 1.0, 1000),
        (18706, 0.01, 187),
        (7, 0.01, 1),
        (10, 0.25, 2),
    ):
        indices = evaluation.label_fraction_indices(n, fraction, seed=3)
        assert len(indices) == size and len(set(indices.tolist())) == size
        assert indices.min() >= 0 and indices.max() < n and np.all(np.diff(indices) > 0)
        np.testing.assert_array_equal(
            indices, evaluation.label_fraction_indices(n, fraction, seed=3)
        )
    small = set(evaluation.label_fraction_indices(1000, 0.01, seed=3).tolist())
    assert small <= set(evaluation.label_fraction_indices(1000, 0.1, seed=3).tolist())
    assert small != set(evaluation.label_fraction_indices(1000, 0.01, seed=4).tolist())
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="label_fraction"):
            evaluation.label_fraction_indices(100, bad)


def test_random_crops_are_windows_of_their_clip():
    clips = [np.arange(100, dtype=np.float32) + 1000 * i for i in range(3)]
    audio, owner = evaluation.random_crops(clips, 30, crops_per_clip=4, seed=0)
    assert audio.shape == (12, 30)
    np.testing.assert_array_equal(owner, np.repeat(np.arange(3), 4))
    for crop, i in zip(audio, owner):
        start = crop[0] - 1000 * i
        np.testing.assert_array_equal(crop, clips[i][int(start) : int(start) + 30])
    again, _ = evaluation.random_crops(clips, 30, crops_per_clip=4, seed=0)
    np.testing.assert_array_equal(audio, again)
    with pytest.raises(ValueError, match="fewer than"):
        evaluation.random_crops([np.zeros(10)], 30)


def test_fit_head_learns_separable_features():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    y = (x[:, :3] > 0).astype(np.float32)
    head, history = evaluation.fit_head(
        x[:200],
        y[:200],
        x[200:250],
        y[200:250],
        epochs=15,
        learning_rate=5e-2,
        batch_size=50,
        jit_compile=False,
        run_eagerly=True,
    )
    logits = keras.ops.convert_to_numpy(head(x[250:]))
    assert metrics.tag_wise_auc(y[250:], logits)["roc_auc"] > 0.97
    assert history["epochs_run"] >= 1 and history["val_loss"][-1] < history["val_loss"][0]
    # CLMR's linear evaluation: torch's Adam (epsilon 1e-8, weight decay as L2 on the gradient).
    from keras_clmr.optimizers import TorchAdam

    assert isinstance(head.optimizer, TorchAdam)
    assert head.optimizer.epsilon == 1e-8 and head.optimizer.torch_weight_decay == 1e-6
    assert head.optimizer.weight_decay is None


def test_frozen_probe_results_match_the_saved_tagger(tmp_path):
    train, valid, test = _clipset(16, seed=1), _clipset(6, seed=2), _clipset(8, seed=3)
    encoder = tiny_sample_cnn()
    before = [keras.ops.convert_to_numpy(w).copy() for w in encoder.weights]
    tagger, results = evaluation.train_probe(
        encoder,
        train,
        valid,
        test,
        tags=list("abcd"),
        epochs=3,
        batch_size=8,
        label_fraction=0.5,
        seed=1,
        jit_compile=False,
        run_eagerly=True,
    )
    assert results["data"]["n_train_used"] == 8
    for b, w in zip(before, encoder.weights):  # frozen: the encoder is untouched
        np.testing.assert_array_equal(b, keras.ops.convert_to_numpy(w))
    # The fast path (embed chunks once, head, mean of probabilities) agrees with the tagger's
    # clip prediction.
    scores = tagger.predict_clips(test.clips, batch_size=5)
    fast = evaluation.frozen_clip_scores(encoder, tagger.head, test, batch_size=7)
    np.testing.assert_allclose(fast, scores, atol=1e-6)
    assert (
        0.0 <= results["metrics"]["roc_auc_tag"] <= 1.0
        and results["metrics"]["n_tags_evaluated"] == 4
    )
    paths = evaluation.write_results(str(tmp_path), results, tagger)
    assert sorted(os.path.basename(p) for p in paths.values()) == sorted(evaluation.RESULT_FILES)
    loaded = keras.models.load_model(paths["tagger.keras"])
    np.testing.assert_allclose(loaded.predict_clips(test.clips), scores, atol=1e-5)
    stored = json.load(open(paths["results.json"]))
    assert stored["protocol"]["head"] == "linear" and stored["data"]["label_fraction"] == 0.5
    with open(paths["per_tag.csv"]) as file:
        assert [r["tag"] for r in csv.DictReader(file)] == list("abcd")
    assert open(paths["per_tag_auc.png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "| ROC-AUC (tag) |" in open(paths["results.md"]).read()


def test_finetune_changes_encoder_weights():
    train, valid, test = _clipset(8, seed=1), _clipset(4, seed=2), _clipset(4, seed=3)
    encoder = tiny_sample_cnn()
    before = keras.ops.convert_to_numpy(encoder.get_layer("block_1_conv").kernel).copy()
    tagger, results = evaluation.train_probe(
        encoder,
        train,
        valid,
        test,
        head="mlp",
        finetune=True,
        epochs=1,
        batch_size=4,
        learning_rate=1e-2,
        jit_compile=False,
        run_eagerly=True,
    )
    after = keras.ops.convert_to_numpy(tagger.backbone.get_layer("block_1_conv").kernel)
    assert np.abs(after - before).max() > 0 and results["task"] == "finetune"


def test_load_encoder_sources(tmp_path):
    clmr = CLMR(tiny_sample_cnn(), projection_dim=8)
    clmr.build((None, 2 * clmr.input_samples))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    clmr.save(str(run_dir / "model.keras"))
    clmr.encoder.save(str(tmp_path / "encoder.keras"))
    x = np.random.default_rng(0).standard_normal((2, clmr.input_samples)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(clmr.encoder(x, training=False))
    for source in (str(run_dir), str(run_dir / "model.keras"), str(tmp_path / "encoder.keras")):
        encoder, identity = evaluation.load_encoder(source)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(encoder(x, training=False)), expected, atol=1e-6
        )
        assert identity["kind"] == "keras_file" and len(identity["sha256"]) == 64
    from keras_clmr import hub

    hub.save_preset(clmr, str(tmp_path / "preset"))  # a pretrainer is stored encoder-only
    encoder, identity = evaluation.load_encoder(str(tmp_path / "preset"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(encoder(x, training=False)), expected, atol=1e-6
    )
    assert identity["kind"] == "preset" and len(identity["sha256"]) == 64
    fresh, identity = evaluation.load_encoder("random:" + str(run_dir))
    assert (
        fresh.get_config()["channels"] == clmr.encoder.get_config()["channels"]
        and identity["kind"] == "random"
    )
    assert not np.allclose(keras.ops.convert_to_numpy(fresh(x, training=False)), expected)
    with pytest.raises(FileNotFoundError):
        evaluation.load_encoder(str(tmp_path / "missing" / "model.keras"))
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="convert"):
        evaluation.load_encoder(str(tmp_path / "weights.pt"))


def test_demo_cover_set_groups_are_keys():
    clipset = evaluation.demo_cover_set(n_clips=12, seconds=0.5)
    assert len(clipset) == 12 and len(clipset.groups) == 12
    assert all("major" in g or "minor" in g for g in clipset.groups)


# ----------------------------------------------------------------------- prepared data + scripts


@pytest.fixture(scope="module")
def prepared_demo(tmp_path_factory):
    from keras_clmr.data import datasets, prepare
    from keras_clmr.data.demo import write_demo_corpus

    root = tmp_path_factory.mktemp("demo_wavs")
    write_demo_corpus(str(root), n_clips=24, seconds=1.0)
    out = tmp_path_factory.mktemp("demo_prepared")
    prepare.prepare(datasets.csv_dataset(str(root)), str(out), workers=1, progress=False)
    return str(root), str(out)


def test_prepared_split_clip_predictions_match_in_memory(prepared_demo):
    import soundfile

    root, prepared = prepared_demo
    splits, tags, multi_label, _ = evaluation.load_splits(data_dir=prepared)
    assert multi_label and len(splits["train"]) + len(splits["valid"]) + len(splits["test"]) == 24
    test = splits["test"]
    clips = []
    for clip_id in test.ids:
        name = os.path.basename(clip_id)
        name = name if name.endswith(".wav") else name + ".wav"
        clips.append(soundfile.read(os.path.join(root, name), dtype="float32")[0])
    encoder = tiny_sample_cnn()
    streamed = evaluation.clip_embeddings(encoder, test, batch_size=3)
    in_memory = evaluation.clip_embeddings(
        encoder, evaluation.ClipSet(clips, test.labels), batch_size=3
    )
    assert [len(e) for e in streamed] == [len(c) // encoder.input_samples for c in clips]
    for a, b in zip(streamed, in_memory):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _run_script(module, *args, timeout=300):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", HF_HUB_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


@pytest.mark.large  # two training scripts in fresh interpreters
def test_linear_eval_and_supervised_scripts_write_every_file(prepared_demo, tmp_path):
    _, prepared = prepared_demo
    common = [
        f"--data_dir={prepared}",
        f"--strides={TINY_STRIDES}",
        f"--channels={TINY_CHANNELS}",
        "--epochs=1",
        "--batch_size=8",
        "--nojit_compile",
        "--run_eagerly",
    ]
    out = _run_script(
        "training.linear_eval",
        "--checkpoint=random",
        "--head=mlp",
        "--label_fraction=0.5",
        f"--output_dir={tmp_path / 'probe'}",
        *common,
    )
    assert "| random init | mlp_probe | 50 % |" in out
    out = _run_script("training.supervised", f"--output_dir={tmp_path / 'supervised'}", *common)
    assert "| supervised SampleCNN | supervised | 100 % |" in out
    for name in ("probe", "supervised"):
        written = sorted(os.listdir(tmp_path / name))
        assert written == sorted(evaluation.RESULT_FILES), written
        results = json.load(open(tmp_path / name / "results.json"))
        assert results["data"]["n_test_clips"] == 3 and len(results["per_tag"]) == 13
        tagger = keras.models.load_model(str(tmp_path / name / "tagger.keras"))
        assert tagger.num_classes == 13 and len(tagger.tags) == 13


def test_bad_data_arguments_raise_clear_errors(tmp_path, prepared_demo):
    with pytest.raises(FileNotFoundError, match="not a prepared directory"):
        evaluation.load_splits(data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Unknown dataset"):
        evaluation.load_splits(dataset="mtat")
    with pytest.raises(ValueError, match="prepared at 22050 Hz"):
        evaluation.load_splits(data_dir=prepared_demo[1], sample_rate=16000)


def test_single_label_probe_reports_accuracy():
    rng = np.random.default_rng(5)
    sets = []
    for n, seed in ((12, 1), (4, 2), (6, 3)):
        clipset = _clipset(n, seed=seed)
        clipset.labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
        sets.append(clipset)
    tagger, results = evaluation.train_probe(
        tiny_sample_cnn(),
        *sets,
        tags=["x", "y", "z"],
        multi_label=False,
        epochs=2,
        batch_size=4,
        jit_compile=False,
        run_eagerly=True,
    )
    scores = tagger.predict_clips(sets[2].clips)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)  # softmax
    assert results["metrics"]["accuracy"] == pytest.approx(metrics.accuracy(sets[2].labels, scores))
    assert "| Accuracy |" in evaluation.markdown_table([("m", results)])


@keras.saving.register_keras_serializable(package="keras_clmr_tests")
class Identity8(keras.Model):
    """A backbone whose embedding is the 8-sample chunk itself."""

    input_samples = 8
    embedding_dim = 8

    def call(self, audio, training=None):
        return audio


def test_cover_song_eval_from_csv(tmp_path):
    import soundfile

    rng = np.random.default_rng(0)
    rows = []
    for group in range(3):
        chunks = rng.uniform(-0.5, 0.5, (4, 8)).astype(np.float32)
        for version in range(
            3
        ):  # versions: the same chunks in another order (+ a dropped partial chunk)
            audio = np.concatenate([chunks[rng.permutation(4)].ravel(), rng.uniform(-0.5, 0.5, 5)])
            name = f"g{group}_v{version}.wav"
            soundfile.write(str(tmp_path / name), audio, 22050, subtype="FLOAT")
            rows.append(f"{name},work{group}")
    (tmp_path / "covers.csv").write_text("path,group\n" + "\n".join(rows) + "\n")
    clipset = evaluation.load_cover_csv(str(tmp_path / "covers.csv"))
    assert clipset.groups == [f"work{g}" for g in range(3) for _ in range(3)]
    scores = evaluation.cover_song_eval(Identity8(), clipset, batch_size=5)
    assert scores["map"] == pytest.approx(1.0) and scores["mr1"] == pytest.approx(1.0)
    assert scores["precision_at_10"] == pytest.approx(2 / 8) and scores["n_queries"] == 9
    with pytest.raises(ValueError, match="group"):
        evaluation.cover_song_eval(Identity8(), evaluation.ClipSet(clipset.clips, None))
