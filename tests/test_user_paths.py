"""The paths users walk (issue 18): run folder -> export -> card -> publish, cards that keep the
truth, progress output, CSV in long format, embed(layer=...)."""

import json
import os

import numpy as np
import pytest
import yaml

from conftest import tiny_sample_cnn


def _front_matter(text):
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def _run_folder(tmp_path):
    """What `keras-clmr pretrain` leaves: encoder.keras and checkpoints/state.json."""
    encoder = tiny_sample_cnn()
    encoder(np.zeros((1, encoder.input_samples), "float32"))
    run = tmp_path / "runs" / "demo"
    (run / "checkpoints").mkdir(parents=True)
    encoder.save(run / "encoder.keras")
    state = {
        "settings": {"model": "clmr", "dataset": "demo", "batch_size": 4, "epochs": 2},
        "finished": {"epoch": 2, "files": ["encoder.keras", "model.keras"]},
    }
    (run / "checkpoints" / "state.json").write_text(json.dumps(state))
    return run, encoder


def _run_command(name, argv):
    from keras_clmr import commands

    with pytest.raises(SystemExit) as exit_info:
        commands.run(name, ["keras-clmr", *argv])
    return exit_info.value.code


def test_identify_every_kind(tmp_path):
    from keras_clmr.export import sources

    run, encoder = _run_folder(tmp_path)
    assert sources.identify(str(run)).kind == "run"
    assert sources.identify(str(run / "encoder.keras")).kind == "keras_file"
    assert sources.identify("clmr-mtat").kind == "registry"
    assert sources.identify("hf://keras-clmr/clmr-mtat").kind == "handle"
    recipe = sources.identify(str(run)).recipe
    assert recipe["settings"]["batch_size"] == 4 and recipe["run"] == "demo"
    with pytest.raises(sources.SourceError, match="run folder"):
        sources.identify(str(tmp_path))  # a folder that is no model
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(sources.SourceError, match=r"\.keras"):
        sources.identify(str(tmp_path / "notes.txt"))
    unfinished = tmp_path / "unfinished" / "checkpoints"
    unfinished.mkdir(parents=True)
    (unfinished / "state.json").write_text("{}")
    with pytest.raises(sources.SourceError, match="--resume"):
        sources.identify(str(tmp_path / "unfinished"))


@pytest.mark.large
def test_run_folder_to_published_folder(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from keras_clmr import hub

    run, encoder = _run_folder(tmp_path)
    out = tmp_path / "exports" / "demo"
    assert _run_command("export", [f"--model={run}", f"--output={out}"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["source"] == "run" and set(summary["exports"]) == {"onnx", "savedmodel"}
    for name in ("config.json", "model.weights.h5", "metadata.json", "README.md", "model.json"):
        assert (out / name).is_file(), name
    assert (out / "model.onnx").is_file() and (out / "saved_model").is_dir()
    metadata = hub.verify_preset(out)
    assert metadata["training_run"]["settings"]["batch_size"] == 4
    assert not [p for p in os.listdir(out.parent) if p.startswith(".")]  # no staging left
    # The stored encoder computes what the run's encoder computes.
    loaded = hub.load_preset(out)
    audio = np.random.default_rng(0).uniform(-1, 1, (2, encoder.input_samples)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(loaded(audio)), np.asarray(encoder(audio)), rtol=1e-5, atol=1e-6
    )
    meta, body = _front_matter((out / "README.md").read_text())
    assert meta["license"] == "apache-2.0" and "run `demo`" in body and "batch_size 4" in body
    # Re-render the card (keras-clmr card), then a dry-run publication of the folder.
    assert _run_command("card", [f"--preset_dir={out}"]) == 0
    capsys.readouterr()
    assert _run_command("publish", [f"--preset={out}", "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert "Dry run: would create your-name/demo" in printed and "model.onnx" in printed
    # publish straight from the run folder: preset + card staged aside.
    assert _run_command("publish", [f"--preset_dir={run}", "--repo_id=me/demo", "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert "me/demo" in printed and "README.md" in printed and "model.weights.h5" in printed


def test_export_refuses_what_is_no_model(tmp_path, capsys):
    assert _run_command("export", [f"--model={tmp_path}", f"--output={tmp_path}/out"]) == 1
    error = capsys.readouterr().err
    assert "a pretraining run folder" in error and not (tmp_path / "out").exists()


def _tagger_preset(tmp_path, tags=("rock", "piano", "quiet")):
    from keras_clmr import hub
    from keras_clmr.models import MusicTagger

    tagger = MusicTagger(tiny_sample_cnn(), len(tags), tags=list(tags))
    tagger.build((None, tagger.input_samples))
    folder = tmp_path / "preset"
    hub.save_preset(tagger, folder, name="tiny-tagger", description="A tiny tagger.")
    return folder


def _results(path, tags):
    results = {
        "task": "linear_probe",
        "metrics": {"roc_auc_tag": 0.75, "pr_auc_tag": 0.4},
        "per_tag": [{"tag": t, "roc_auc": 0.75, "pr_auc": 0.4, "test_positives": 3} for t in tags],
        "protocol": {"head": "linear"},
        "data": {"n_test_clips": 9},
    }
    path.write_text(json.dumps(results))
    return path


def test_mismatched_results_are_refused(tmp_path):
    from keras_clmr.export import card as model_card

    folder = _tagger_preset(tmp_path)
    before = (folder / "README.md").read_text()
    two_class = _results(tmp_path / "probe.json", ["yes", "no"])
    with pytest.raises(model_card.ModelCardError, match="2 classes.*head has 3"):
        model_card.write_card(folder, results=[two_class])
    assert (folder / "README.md").read_text() == before  # nothing written
    same = _results(tmp_path / "same.json", ["rock", "piano", "quiet"])
    card, _ = model_card.write_card(folder, results=[same])
    assert "measured by keras_clmr" in str(card)


def test_card_keeps_license_and_published_scores(tmp_path):
    """A converted model's card, regenerated, keeps its license, source and published scores."""
    from keras_clmr.conversion.report import save_converted
    from keras_clmr.export import card as model_card

    encoder = tiny_sample_cnn()
    encoder(np.zeros((1, encoder.input_samples), "float32"))
    scores = [{"dataset": "MTAT", "metric": "ROC-AUC", "value": 90.69, "head": "musicnn"}]
    conversion = {"source_format": "test", "converted_from": {"file": "weights.bin"}}
    folder = save_converted(
        encoder,
        conversion,
        tmp_path / "converted",
        name="converted-test",
        reported_scores=scores,
        license_id="isc",
        source_url="https://example.org/weights.bin",
    )
    model_card.write_card(folder)
    meta, body = _front_matter((tmp_path / "converted" / "README.md").read_text())
    assert meta["license"] == "isc"
    values = [m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]]
    assert values == [90.69]
    assert "https://example.org/weights.bin" in body
    assert "reported by the original authors (not re-measured by keras_clmr)" in body


def test_registry_copy_keeps_registry_license():
    from keras_clmr import cards

    metadata = {
        "name": "musicnn-mtt",
        "class_name": "MusicTagger",
        "task": "tag",
        "sample_rate": 16000,
        "input_samples": 48000,
    }
    config = {"config": {"backbone": {"class_name": "Musicnn"}}}
    info = cards.describe_metadata(metadata, config)
    card = cards.render_card(info)
    assert card.data.license == "isc"
    assert any(e.source_name == cards.REPORTED for e in card.data.eval_results)


def _tagger_files(tmp_path):
    import soundfile as sf

    from keras_clmr import hub
    from keras_clmr.models import MusicTagger

    tags = ["bright", "dark", "fast"]
    tagger = MusicTagger(tiny_sample_cnn(sample_rate=8000), num_classes=3, tags=tags)
    folder = hub.save_preset(tagger, tmp_path / "tagger")
    rng = np.random.default_rng(0)
    files = []
    for i, seconds in enumerate((3.0, 2.0)):
        path = tmp_path / f"clip{i}.wav"
        sf.write(str(path), rng.uniform(-0.5, 0.5, int(seconds * 8000)).astype("float32"), 8000)
        files.append(str(path))
    return str(folder), files, tags


def test_tag_csv_is_long_format_with_top_k(tmp_path):
    import csv

    from keras_clmr import cli, inference

    folder, files, tags = _tagger_files(tmp_path)
    out = tmp_path / "tags.csv"
    argv = ["tag", *files, "--model", folder, "--output", str(out), "--top_k", "2"]
    assert cli.main([*argv, "--no-progress"]) == 0
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["file", "start", "end", "tag", "probability"]
    results = inference.tag(files, model=folder, progress=False)
    expected = []
    for r in results:
        for t, row in zip(r.times, r.probabilities):
            for j in np.argsort(-row)[:2]:
                expected.append((r.source, t, t + 7776 / 8000, r.tags[j], row[j]))
    assert len(rows) - 1 == len(expected) == 2 * (3 + 2)  # 2 tags x (3 + 2 windows)
    for got, want in zip(rows[1:], expected):
        assert got[0] == want[0] and got[3] == want[3]
        np.testing.assert_allclose(
            [float(x) for x in (got[1], got[2], got[4])],
            [want[1], want[2], want[4]],
            rtol=1e-5,
            atol=1e-6,
        )


def test_progress_bar_within_and_across_files(tmp_path, capsys):
    from keras_clmr import inference

    folder, files, _ = _tagger_files(tmp_path)
    inference.tag(files, model=folder, progress=True, batch_size=1)
    err = capsys.readouterr().err
    assert "audio" in err and "/5 s" in err and "file 2/2" in err  # 3 s + 2 s of audio
    inference.tag(files, model=folder, progress=False)
    assert capsys.readouterr().err == ""
    inference.tag(files, model=folder)  # default: only on a terminal (pytest's stderr is not)
    assert "audio" not in capsys.readouterr().err


def test_embed_layer_of_sample_cnn_matches_a_direct_computation():
    import keras

    from keras_clmr import inference

    encoder = tiny_sample_cnn()
    rng = np.random.default_rng(1)
    audio = rng.uniform(-0.5, 0.5, 3 * encoder.input_samples).astype("float32")
    result = inference.embed(audio, model=encoder, layer="block7", progress=False)
    windows = audio.reshape(3, encoder.input_samples)
    # Independent: a functional model up to block 7's pooling layer, averaged over time.
    inputs = keras.Input((encoder.input_samples, 1))
    x = inputs
    for layer in encoder.stack:
        x = layer(x)
        if layer.name == "block_7_pool":
            break
    direct = np.asarray(keras.Model(inputs, x).predict(windows[..., None], verbose=0))
    assert result.embeddings.shape == (3, 8)
    np.testing.assert_allclose(result.embeddings, direct.mean(axis=1), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="block10"):
        inference.embed(audio, model=encoder, layer="max_pool")


def test_embed_layer_of_musicnn():
    from keras_clmr import inference
    from keras_clmr.inference.windows import WindowStream, musicnn_patching
    from keras_clmr.models import Musicnn

    net = Musicnn()
    rng = np.random.default_rng(2)
    audio = rng.uniform(-0.5, 0.5, 2 * 187 * 256).astype("float32")  # two musicnn patches
    patching = musicnn_patching(net)  # patches of the whole-file log-mel, as musicnn cuts them
    stream = WindowStream(
        audio, 16000, net.input_samples, 187 * 256, "pad", len(audio), None, patching
    )
    features = net.logmel_features(np.stack([patch for _, patch in stream]), training=False)
    for layer, dim in (("max_pool", 753), ("mean_pool", 753), ("penultimate", 200)):
        result = inference.embed(audio, model=net, layer=layer, progress=False)
        assert result.embeddings.shape == (2, dim)
        np.testing.assert_allclose(
            result.embeddings, np.asarray(features[layer]), rtol=1e-4, atol=1e-5
        )
    default = inference.embed(audio, model=net, progress=False, engine="keras")
    np.testing.assert_allclose(
        default.embeddings, np.asarray(features["penultimate"]), rtol=1e-4, atol=1e-5
    )


def test_startup_noise_is_recognised_and_nothing_else():
    from keras_clmr.commands._quiet import is_noise

    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796039151.289959    7415 cudart_stub.cc:31] Could not find cuda drivers on "
        "your machine, GPU will not be used.",
        "E0000 00:00:1796039304.407330    8207 cuda_platform.cc:52] failed call to cuInit: "
        "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
        "with the appropriate compiler flags.",
    ]
    assert all(is_noise(line) for line in noise)
    for line in (
        "error: cannot load model 'x'",
        "Traceback (most recent call last):",
        "E0000 00:00:1.0  1 some_other_op.cc:12] a real error",
    ):
        assert not is_noise(line)


def test_probe_training_writes_tensorboard_and_no_ran_out_of_data(tmp_path):
    import warnings

    import tensorflow as tf

    from keras_clmr.evaluation.fitting import quiet_fit
    from keras_clmr.evaluation.probe import fit_head

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(32, 8)).astype("float32"), (rng.random((32, 3)) > 0.5).astype("float32")
    logs = tmp_path / "tb"
    fit_head(
        x, y, x[:8], y[:8], epochs=2, batch_size=8, tensorboard_dir=str(logs), jit_compile=False
    )
    events = [f for _, _, files in os.walk(logs) for f in files if "tfevents" in f]
    assert events, "no TensorBoard event file written"
    # A finite dataset of unknown length (as filtered TFRecords are) ends epochs quietly.
    import keras

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    model.compile("sgd", "mse")
    data = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(data, epochs=2, verbose=0)  # the warning quiet_fit hides is there
    assert [w for w in caught if "ran out of data" in str(w.message)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_fit(model, data, epochs=2, verbose=0)
    assert not [w for w in caught if "ran out of data" in str(w.message)]


def test_registry_names_default_to_the_encoder(monkeypatch, tmp_path):
    """load_pretrained("musicnn-mtt") gives the encoder, as documented; task="tag" the tagger."""
    from keras_clmr.hub import resolution

    asked = []
    monkeypatch.setattr(resolution, "resolve", lambda name, task=None, **kw: str(tmp_path))
    monkeypatch.setattr(
        resolution, "load_preset", lambda folder, task=None, verify=True: asked.append(task)
    )
    resolution.load_pretrained("musicnn-mtt")
    resolution.load_pretrained("musicnn-mtt", task="tag")
    resolution.load_pretrained(str(tmp_path))  # a folder: what is stored
    assert asked == ["embed", "tag", None]
