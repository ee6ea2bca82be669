"""publish: validation before any call, the exact Hub calls (mocked HfApi), retries, dry run,
and a round trip publish -> Hugging Face cache layout -> load_pretrained("hf://...") offline ->
identical outputs."""

import os
import subprocess
import sys
import types
from unittest import mock

import keras
import numpy as np
import pytest

from conftest import BACKEND, tiny_sample_cnn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _preset(tmp_path, name="preset", model=None):
    from keras_clmr import hub
    from keras_clmr.export import card as model_card

    folder = tmp_path / name
    hub.save_preset(model or tiny_sample_cnn(), folder, name="tiny")
    model_card.write_card(folder, repo_id="org/tiny")
    return folder


def _http_error(status):
    try:  # huggingface_hub >= 2 uses httpx2, 1.x httpx
        import httpx2 as httpx
    except ImportError:
        import httpx
    from huggingface_hub.errors import HfHubHTTPError

    request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError(f"{status} error", response=httpx.Response(status, request=request))


@pytest.fixture
def fake_api(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    with mock.patch("keras_clmr.export.publish.HfApi") as factory:
        api = factory.return_value
        api.create_repo.return_value = "https://huggingface.co/org/tiny"
        api.upload_folder.return_value = types.SimpleNamespace(
            commit_url="https://huggingface.co/org/tiny/commit/abc123", oid="abc123"
        )
        yield factory, api


def test_exact_calls(tmp_path, fake_api):
    from keras_clmr.export import publish

    factory, api = fake_api
    folder = _preset(tmp_path)
    result = publish.publish(folder, "org/tiny", private=True, commit_message="first upload")
    factory.assert_called_once_with(token="hf_test_token")
    assert api.mock_calls == [
        mock.call.create_repo(repo_id="org/tiny", repo_type="model", private=True, exist_ok=True),
        mock.call.upload_folder(
            repo_id="org/tiny",
            repo_type="model",
            folder_path=str(folder),
            commit_message="first upload",
            allow_patterns=sorted(result["files"]),
        ),
    ]
    assert result["commit_url"] == "https://huggingface.co/org/tiny/commit/abc123"
    assert set(result["files"]) == {
        "config.json",
        "model.weights.h5",
        "README.md",
        "metadata.json",
        "model.json",
    }


def test_retries_transient_errors_only(tmp_path, fake_api):
    from keras_clmr.export import publish

    _, api = fake_api
    folder = _preset(tmp_path)
    info = api.upload_folder.return_value
    api.create_repo.side_effect = [
        ConnectionError("reset by peer"),
        "https://huggingface.co/org/tiny",
    ]
    api.upload_folder.side_effect = [_http_error(503), _http_error(429), info]
    sleeps = []
    result = publish.publish(folder, "org/tiny", sleep=sleeps.append, base_delay=0.5)
    assert api.create_repo.call_count == 2 and api.upload_folder.call_count == 3
    assert sleeps == [0.5, 0.5, 1.0]  # backoff per call: base, 2 x base
    assert result["commit"] == "abc123"
    # Not transient: no retry, the error goes up as is.
    api.create_repo.side_effect = [_http_error(401)]
    api.upload_folder.reset_mock()
    with pytest.raises(Exception, match="401"):
        publish.publish(folder, "org/tiny", sleep=sleeps.append)
    assert api.upload_folder.call_count == 0 and len(sleeps) == 3
    # Transient forever: gives up after `attempts` with a clear message.
    api.create_repo.side_effect = None
    api.upload_folder.side_effect = _http_error(502)
    with pytest.raises(publish.PublishError, match="failed 3 times"):
        publish.publish(folder, "org/tiny", attempts=3, sleep=sleeps.append, base_delay=1.0)
    assert sleeps[3:] == [1.0, 2.0]


def test_refuses_invalid_folders_before_any_call(tmp_path, fake_api):
    from keras_clmr import hub
    from keras_clmr.export import publish

    factory, api = fake_api
    with pytest.raises(publish.PublishError, match="no such folder"):
        publish.publish(tmp_path / "nowhere", "org/tiny")
    no_card = tmp_path / "no_card"
    hub.save_preset(tiny_sample_cnn(), no_card)
    os.remove(no_card / "README.md")
    with pytest.raises(publish.PublishError, match="missing README.md"):
        publish.publish(no_card, "org/tiny")
    tampered = _preset(tmp_path, "tampered")
    with open(tampered / "model.weights.h5", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(publish.PublishError, match="integrity"):
        publish.publish(tampered, "org/tiny")
    extra = _preset(tmp_path, "extra")
    (extra / "notes.txt").write_text("not hashed")
    with pytest.raises(publish.PublishError, match="does not list.*notes.txt.*Move them out"):
        publish.publish(extra, "org/tiny")
    bad_yaml = _preset(tmp_path, "bad_yaml")
    (bad_yaml / "README.md").write_text("---\nlicense: [unclosed\n---\n# card\n")
    from keras_clmr.export import update_metadata

    update_metadata(bad_yaml)
    with pytest.raises(publish.PublishError, match="not a valid model card"):
        publish.publish(bad_yaml, "org/tiny")
    good = _preset(tmp_path, "good")
    for repo_id in ("tiny", "org/tiny/extra", "org/../x", ""):
        with pytest.raises(publish.PublishError, match="org/name"):
            publish.publish(good, repo_id)
    factory.assert_not_called()
    assert api.mock_calls == []


def test_token_required(tmp_path, fake_api, monkeypatch):
    from keras_clmr.export import publish

    factory, _ = fake_api
    monkeypatch.delenv("HF_TOKEN")
    with mock.patch("huggingface_hub.get_token", return_value=None):
        with pytest.raises(publish.PublishError, match="No Hugging Face token: set HF_TOKEN"):
            publish.publish(_preset(tmp_path), "org/tiny")
    factory.assert_not_called()


def test_dry_run_calls_nothing(tmp_path, fake_api, monkeypatch):
    from keras_clmr.export import publish

    factory, api = fake_api
    monkeypatch.delenv("HF_TOKEN")  # no token needed either
    result = publish.publish(_preset(tmp_path), "org/tiny", dry_run=True)
    assert (
        result["dry_run"]
        and "## How to use" in result["card"]
        and "model.weights.h5" in result["files"]
    )
    factory.assert_not_called()


@pytest.mark.large  # two fresh interpreters
def test_cli_dry_run_and_refusal(tmp_path):
    folder = _preset(tmp_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_TOKEN="")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.publish",
            f"--preset_dir={folder}",
            "--repo_id=org/tiny",
            "--dry_run",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Dry run: would create org/tiny" in done.stdout and "model.weights.h5" in done.stdout
    assert "----- README.md -----" in done.stdout and "library_name: keras" in done.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.publish",
            f"--preset_dir={tmp_path / 'nowhere'}",
            "--repo_id=org/tiny",
            "--dry_run",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "no such file, folder or registered preset" in bad.stderr


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="the ONNX export in the round trip runs on TensorFlow"
)
@pytest.mark.large
def test_round_trip_through_the_hub_cache(tmp_path, fake_api, monkeypatch):
    """The fake Hub stores what upload_folder sends in an HF cache layout; load it back offline."""
    from keras_clmr import export, hub
    from keras_clmr.export import publish

    _, api = fake_api
    model = tiny_sample_cnn()
    folder = tmp_path / "preset"
    hub.save_preset(model, folder, name="tiny")
    export.export_preset(str(folder), None, "onnx")
    from keras_clmr.export import card as model_card

    model_card.write_card(folder, repo_id="org/tiny")
    cache = tmp_path / "hf_cache"

    def upload_folder(repo_id, folder_path, **kwargs):
        snapshot = hub.populate_local_cache(folder_path, repo_id, cache_dir=str(cache))
        return types.SimpleNamespace(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{os.path.basename(snapshot)}",
            oid=os.path.basename(snapshot),
        )

    api.upload_folder.side_effect = upload_folder
    result = publish.publish(folder, "org/tiny")
    assert (cache / "models--org--tiny" / "refs" / "main").read_text() == result["commit"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = hub.load_pretrained("hf://org/tiny", cache_dir=str(cache))
    audio = np.random.default_rng(0).uniform(-0.9, 0.9, (4, model.input_samples)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(audio, training=False))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(audio, training=False)), expected
    )
    snapshot = hub.resolve("hf://org/tiny", cache_dir=str(cache))
    assert os.path.islink(os.path.join(snapshot, "model.onnx"))
    onnx_out = export.run_onnx(export.onnx_session(os.path.join(snapshot, "model.onnx")), audio)[
        "embedding"
    ]
    np.testing.assert_allclose(onnx_out, expected, atol=1e-4)
