"""Model cards: YAML parsed back (model-index from results.json, registry), sections, model.json."""

import json
import os

import pytest
import yaml

from conftest import tiny_sample_cnn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = [
    "## Model",
    "## Training",
    "## How to use",
    "## Evaluation",
    "## Limitations and deviations from the original",
    "## Citation",
]


def _front_matter(text):
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def _tagger_preset(tmp_path):
    from keras_clmr import hub
    from keras_clmr.models import MusicTagger

    tagger = MusicTagger(tiny_sample_cnn(), 3, tags=["rock", "piano", "quiet"])
    tagger.build((None, tagger.input_samples))
    folder = tmp_path / "preset"
    hub.save_preset(tagger, folder, name="tiny-tagger", description="A tiny tagger for the tests.")
    return folder


def _results_json(path):
    results = {
        "task": "linear_probe",
        "metrics": {
            "roc_auc_tag": 0.81234,
            "pr_auc_tag": 0.41,
            "roc_auc_clip": 0.9,
            "pr_auc_clip": 0.5,
            "n_tags_evaluated": 3,
        },
        "protocol": {"head": "linear", "learning_rate": 0.001, "seed": 0},
        "data": {"n_test_clips": 12},
    }
    path.write_text(json.dumps(results))
    return path


def test_card_of_a_preset_folder(tmp_path):
    from huggingface_hub import ModelCard

    from keras_clmr import hub
    from keras_clmr.export import card as model_card

    folder = _tagger_preset(tmp_path)
    results = _results_json(tmp_path / "results.json")
    card, sidecar = model_card.write_card(
        folder,
        repo_id="me/tiny-tagger",
        results=[(results, "demo")],
        training="Trained by the test suite.",
    )
    text = (folder / "README.md").read_text()
    meta, body = _front_matter(text)
    assert meta["library_name"] == "keras" and meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "audio-classification"
    assert {"keras_clmr", "samplecnn", "clmr", "music-tagging"} <= set(meta["tags"])
    assert meta["datasets"] == ["keras-clmr-demo"]
    [entry] = meta["model-index"]
    assert entry["name"] == "tiny-tagger"
    metrics = {(m["type"], m["name"]): m["value"] for r in entry["results"] for m in r["metrics"]}
    assert metrics[("roc_auc", "ROC-AUC, tag-wise macro (%), linear_probe")] == 81.23
    assert metrics[("pr_auc", "PR-AUC, clip-wise macro (%), linear_probe")] == 50.0
    assert len(metrics) == 4  # n_tags_evaluated is not a score
    positions = [body.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert 'load_pretrained("hf://me/tiny-tagger")' in body and "Trained by the test suite." in body
    assert "@inproceedings{spijkervet2021contrastive" in body and "| parameters |" in body
    assert "mono float32 audio, 22050 Hz, windows of 7776 samples" in body
    # huggingface_hub reads it back to the same data.
    loaded = ModelCard.load(folder / "README.md")
    assert loaded.data.eval_results[0].metric_value == 81.23 and loaded.data.license == "apache-2.0"
    # model.json
    sidecar_file = json.loads((folder / "model.json").read_text())
    assert sidecar_file == sidecar
    assert sidecar["classes"] == ["rock", "piano", "quiet"] and sidecar["num_classes"] == 3
    assert sidecar["sample_rate"] == 22050 and sidecar["input_samples"] == 7776
    assert sidecar["input"]["name"] == "audio" and [o["name"] for o in sidecar["outputs"]] == [
        "embedding",
        "tags",
    ]
    assert sidecar["outputs"][0]["shape"] == ["batch", 16]
    # The folder stays a valid preset: metadata.json hashes the new README.md and model.json.
    metadata = hub.verify_preset(folder)
    assert {"README.md", "model.json"} <= set(metadata["files"])
    assert metadata["card"]["repo_id"] == "me/tiny-tagger"


def test_encoder_card_without_results(tmp_path):
    from keras_clmr import hub
    from keras_clmr.export import card as model_card

    folder = tmp_path / "enc"
    hub.save_preset(tiny_sample_cnn(), folder)
    model_card.write_card(folder)
    meta, body = _front_matter((folder / "README.md").read_text())
    assert meta["pipeline_tag"] == "feature-extraction" and "model-index" not in meta
    assert "No evaluation results are recorded" in body
    sidecar = json.loads((folder / "model.json").read_text())
    assert sidecar["classes"] is None and [o["name"] for o in sidecar["outputs"]] == ["embedding"]


def test_registry_cards(tmp_path):
    from keras_clmr.export import card as model_card

    folders = model_card.write_registry_cards(tmp_path)
    names = {os.path.basename(f) for f in folders}
    assert {
        "clmr-mtat",
        "clmr-mtat-tagger",
        "clmr-mtat-1550",
        "clmr-mtat-1550-tagger",
        "pemr-mtat",
        "musicnn-mtt",
        "vgg-msd",
    } <= names
    meta, body = _front_matter((tmp_path / "clmr-mtat-tagger" / "README.md").read_text())
    values = [m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]]
    assert values == [88.7, 35.6, 89.3, 36.0]
    assert (
        meta["model-index"][0]["results"][0]["source"]["url"]
        == "https://github.com/Spijkervet/CLMR"
    )
    assert (
        json.loads((tmp_path / "clmr-mtat-tagger" / "model.json").read_text())["classes"][0]
        == "guitar"
    )
    pemr_meta, pemr_body = _front_matter((tmp_path / "pemr-mtat" / "README.md").read_text())
    assert (
        "model-index" not in pemr_meta
        and "16 kHz" in pemr_body
        and "@inproceedings{yao2022pemr" in pemr_body
    )
    musicnn_meta, musicnn_body = _front_matter((tmp_path / "musicnn-mtt" / "README.md").read_text())
    assert musicnn_meta["license"] == "isc" and "@inproceedings{pons2019musicnn" in musicnn_body
    # The cards kept in the repository are the ones the code renders now.
    for name in names:
        for file in ("README.md", "model.json"):
            kept = os.path.join(REPO, "model_cards", name, file)
            assert os.path.isfile(kept), (
                f"model_cards/{name}/{file} missing: run python -m export.model_card --registry"
            )
            assert open(kept).read() == (tmp_path / name / file).read_text(), (
                f"model_cards/{name}/{file} is stale: run python -m export.model_card --registry"
            )


def test_bad_results_file(tmp_path):
    from keras_clmr.export import card as model_card

    folder = _tagger_preset(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(model_card.ModelCardError, match="Cannot read evaluation results"):
        model_card.write_card(folder, results=[tmp_path / "bad.json"])
    (tmp_path / "other.json").write_text('{"accuracy": 1}')
    with pytest.raises(model_card.ModelCardError, match="no 'metrics' table"):
        model_card.write_card(folder, results=[tmp_path / "other.json"])
