"""Export to SavedModel and ONNX: parity with Keras at batch 1 and 7, signatures, metadata,
failures."""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import BACKEND, tiny_sample_cnn

pytestmark = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="export runs on the TensorFlow backend"
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _randomize_batchnorm(model, seed=0):
    """Non-trivial BN statistics, so folding them into the convolutions is really exercised."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0.0, 0.2, shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, shape).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
            layer.beta.assign(rng.normal(0.0, 0.2, shape).astype("float32"))
    return model


def tiny_tagger():
    from keras_clmr.models import MusicTagger

    backbone = _randomize_batchnorm(tiny_sample_cnn())
    tagger = MusicTagger(backbone, 5, head="mlp", hidden_dim=16, tags=[f"t{i}" for i in range(5)])
    tagger.build((None, backbone.input_samples))
    return tagger


def tiny_fcn():
    from keras_clmr.models import fcn

    model = fcn.FCN(
        channels=(4, 8, 8, 8), pools=((2, 2), (2, 2), (2, 2), (2, 2)), input_samples=4096, n_mels=32
    )
    model(np.zeros((1, 4096), "float32"))
    return _randomize_batchnorm(model, seed=1)


def _check_both_formats(model, tmp_path):
    import onnx

    from keras_clmr import export

    summary = export.export_preset(model, tmp_path / "out", "all")
    names = export.output_names(model)
    for fmt in ("onnx", "savedmodel"):
        parity = summary["exports"][fmt]["parity"]
        assert sorted(parity["max_abs_diff"]) == sorted(names)
        for figures in parity["max_abs_diff"].values():
            assert set(figures) == {"batch_1", "batch_7"}
            assert max(figures.values()) <= 1e-4
    proto = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert [i.name for i in proto.graph.input] == ["audio"]
    assert [o.name for o in proto.graph.output] == names
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # Independent re-run: the files on disk give the Keras outputs at a third batch size.
    audio = export.random_audio(3, export.input_samples(model), seed=99)
    expected = export.keras_outputs(model, audio)
    got = export.run_onnx(export.onnx_session(tmp_path / "out" / "model.onnx"), audio)
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tmp_path / "out" / "saved_model"))
    from_savedmodel = export.savedmodel_outputs(loaded, audio)
    for name in names:
        assert np.abs(expected[name]).max() > 1e-3  # outputs are not degenerate
        np.testing.assert_allclose(got[name], expected[name], atol=1e-4)
        np.testing.assert_allclose(from_savedmodel[name], expected[name], atol=1e-4)
    return summary, loaded, proto


@pytest.mark.large
def test_sample_cnn_both_formats_and_bn_folding(tmp_path):
    model = _randomize_batchnorm(tiny_sample_cnn())
    summary, loaded, proto = _check_both_formats(model, tmp_path)
    assert set(loaded.signatures) >= {"embed", "serving_default"} and "tag" not in loaded.signatures
    # The optimised graph: every BatchNorm folded (no Add/Mul left), Conv directly followed by Relu.
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("Conv") == 11 and "Mul" not in ops and "Add" not in ops
    producer = {out: node for node in proto.graph.node for out in node.output}
    relus = [node for node in proto.graph.node if node.op_type == "Relu"]
    assert len(relus) == 11 and all(producer[r.input[0]].op_type == "Conv" for r in relus)
    assert summary["exports"]["onnx"]["optimized"]["folded_affines"] == 11


@pytest.mark.large
def test_tagger_both_formats(tmp_path):
    summary, loaded, _ = _check_both_formats(tiny_tagger(), tmp_path)
    assert {"embed", "tag", "serving_default"} <= set(loaded.signatures)
    assert summary["exports"]["savedmodel"]["serving_default"] == "tag"
    out = loaded.signatures["serving_default"](audio=np.zeros((2, 7776), "float32"))
    assert list(out) == ["tags"] and out["tags"].shape == (2, 5)


def test_pemr_encoder_both_formats(tmp_path):
    _check_both_formats(tiny_fcn(), tmp_path)


@pytest.mark.skipif(
    importlib.util.find_spec("musicnn") is None, reason="the musicnn wheel is not installed"
)
@pytest.mark.large  # a full-size model, both formats, parity on each
def test_musicnn_preset_both_formats(tmp_path, musicnn_cache):
    from keras_clmr import export, hub

    summary = export.export_preset("musicnn-mtt", tmp_path / "musicnn", "all", task="tag")
    for fmt in ("onnx", "savedmodel"):
        parity = summary["exports"][fmt]["parity"]
        assert set(parity["max_abs_diff"]) == {"embedding", "tags"}
        worst = max(max(f.values()) for f in parity["max_abs_diff"].values())
        if (
            "without_float16_rounding" in parity
        ):  # a float16 rounding flipped (see export.FLOAT16_NOTE)
            exact = parity["without_float16_rounding"]["max_abs_diff"]
            assert max(max(f.values()) for f in exact.values()) <= 1e-4 and worst <= 1e-3
        else:
            assert worst <= 1e-4
    metadata = hub.verify_preset(tmp_path / "musicnn")
    assert "model.onnx" in metadata["files"] and "saved_model/saved_model.pb" in metadata["files"]
    # The cache copy was not modified: the export went to a copy.
    cached = hub.read_metadata(musicnn_cache / "presets" / "musicnn-mtt-tag")
    assert "exports" not in cached and "model.onnx" not in cached["files"]


@pytest.mark.large
def test_export_into_a_preset_records_metadata(tmp_path):
    from keras_clmr import export, hub

    preset = tmp_path / "preset"
    hub.save_preset(tiny_tagger(), preset, name="tiny")
    summary = export.export_preset(str(preset), None, "onnx")
    metadata = hub.verify_preset(preset)  # every file, the new one included, matches its sha256
    onnx_info = metadata["exports"]["onnx"]
    assert (
        onnx_info["sha256"]
        == metadata["files"]["model.onnx"]["sha256"]
        == hub.sha256_file(preset / "model.onnx")
    )
    assert (
        onnx_info["parity"]["max_abs_diff"] == summary["exports"]["onnx"]["parity"]["max_abs_diff"]
    )
    assert onnx_info["outputs"] == ["embedding", "tags"] and onnx_info["opset"] == 17
    # A second format later keeps the first one's record.
    export.export_preset(str(preset), None, "savedmodel")
    metadata = hub.verify_preset(preset)
    assert set(metadata["exports"]) == {"onnx", "savedmodel"}
    assert "saved_model/saved_model.pb" in metadata["files"]
    hub.load_preset(preset)  # still a loadable preset


def test_parity_failure_keeps_nothing(tmp_path, monkeypatch):
    from keras_clmr import export, hub

    preset = tmp_path / "preset"
    hub.save_preset(tiny_sample_cnn(), preset)
    before = (preset / "metadata.json").read_text()
    real = export.keras_outputs

    def off_by_a_bit(model, audio):
        return {k: v + 1e-3 for k, v in real(model, audio).items()}

    monkeypatch.setattr(export.parity, "keras_outputs", off_by_a_bit)
    with pytest.raises(export.ParityError, match="differs from the Keras model"):
        export.export_preset(str(preset), None, "onnx")
    assert sorted(os.listdir(preset)) == [
        "README.md",
        "config.json",
        "metadata.json",
        "model.weights.h5",
    ]
    assert (preset / "metadata.json").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["preset"]  # no staging folder left behind


def test_bad_requests(tmp_path):
    from keras_clmr import export

    with pytest.raises(ValueError, match="Unknown export format"):
        export.export_preset(tiny_sample_cnn(), tmp_path, "tflite")
    with pytest.raises(export.ExportError, match="pass --output"):
        export.export_preset("clmr-mtat", None, "onnx")
    with pytest.raises(export.ExportError, match="output folder"):
        export.export_preset(tiny_sample_cnn(), None, "onnx")


@pytest.mark.large  # a fresh interpreter
def test_cli(tmp_path):
    from keras_clmr import hub

    preset = hub.save_preset(tiny_sample_cnn(), tmp_path / "preset")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.export",
            f"--model={preset}",
            "--format=onnx",
            f"--output={tmp_path / 'out'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["exports"]["onnx"]["parity"]["max_abs_diff"]["embedding"]["batch_7"] <= 1e-4
    assert hub.verify_preset(tmp_path / "out")["files"]["model.onnx"]
    bad = subprocess.run(
        [sys.executable, "-m", "export.export", f"--model={tmp_path / 'nowhere'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "no such file, folder or registered preset" in bad.stderr


@pytest.mark.large
def test_float16_frontend_fallback(tmp_path, monkeypatch):
    """musicnn rounds its mel to float16: when a runtime's last-ulp difference flips a rounding
    (simulated here on the first check), the graph is re-checked with the rounding off (<= 1e-4)
    and the shipped one at 1e-3."""
    from keras_clmr import export
    from keras_clmr.models import Musicnn, MusicTagger

    backbone = Musicnn(architecture="vgg", vgg_filters=4, n_frames=128)
    model = MusicTagger(backbone, 3)  # the flag sits on the tagger's backbone and on its frontend
    model.build((None, backbone.input_samples))
    model(np.zeros((1, model.input_samples), "float32"))
    path = str(tmp_path / "m.onnx")
    export.export_onnx(model, path)
    real, calls = export.check_onnx_parity, []

    def flaky(m, p, **kwargs):
        calls.append((p, kwargs["atol"], backbone.frontend.float16_rounding))
        if len(calls) == 1:
            raise export.ParityError("simulated float16 flip")
        return real(m, p, **kwargs)

    monkeypatch.setattr(export.parity, "check_onnx_parity", flaky)
    parity = export.checked_parity("onnx", model, path)
    assert [(atol, rounding) for _, atol, rounding in calls] == [
        (1e-4, True),
        (1e-4, False),
        (1e-3, True),
    ]
    assert calls[1][0] != path and not os.path.exists(
        calls[1][0]
    )  # the rounding-off probe, removed
    assert max(parity["without_float16_rounding"]["max_abs_diff"]["embedding"].values()) <= 1e-4
    assert parity["float16_atol"] == 1e-3 and "float16" in parity["note"]
    assert (
        backbone.frontend.float16_rounding is True and backbone.float16_rounding is True
    )  # restored
    # A model without such a frontend gets no second chance.
    calls.clear()
    plain = tiny_sample_cnn()
    export.export_onnx(plain, path)
    with pytest.raises(export.ParityError, match="simulated"):
        export.checked_parity("onnx", plain, path)
