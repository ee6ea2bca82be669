"""embed/tag: window counts and timestamps, streaming equals whole-file decoding, errors, many
files."""

import os
import warnings

import keras
import numpy as np
import pytest
import soundfile as sf

from keras_clmr import audio, hub, inference
from keras_clmr.models import SampleCNN
from keras_clmr.models.tagger import MusicTagger

from conftest import tiny_sample_cnn

SR = 8000  # tiny_sample_cnn windows are 7776 samples
W = 7776
TAGS = ["a", "b", "c", "d"]


def _model():
    return tiny_sample_cnn(sample_rate=SR)


def _reference_windows(model, signal, hop):
    """Independent reference: slice the windows by hand and run the model on them."""
    starts = list(range(0, len(signal) - W + 1, hop))
    windows = np.stack([signal[s : s + W] for s in starts])
    return np.array(starts) / SR, keras.ops.convert_to_numpy(model(windows, training=False))


@pytest.mark.parametrize(
    "length,hop_seconds,expected",
    [
        (W, None, 1),
        (2 * W - 1, None, 1),
        pytest.param(3 * W + 5, None, 3, marks=pytest.mark.multibackend),
        pytest.param(
            3 * W, 0.5, 4, marks=pytest.mark.multibackend
        ),  # hop 4000: starts 0, 4000, 8000, 12000
        (2 * W + 100, 1.5, 1),  # hop 12000 > length - W
        (W + 1, 1 / SR, 2),  # one-sample hop
    ],
)
def test_window_counts_timestamps_and_values(length, hop_seconds, expected):
    model = _model()
    signal = np.random.default_rng(length).uniform(-0.5, 0.5, length).astype("float32")
    result = inference.embed(signal, model=model, hop=hop_seconds, batch_size=2)
    hop = W if hop_seconds is None else int(round(hop_seconds * SR))
    assert result.embeddings.shape == (expected, 16)
    times, reference = _reference_windows(model, signal, hop)
    np.testing.assert_allclose(result.times, times, rtol=0, atol=1e-12)
    assert result.times[1:].tolist() == pytest.approx([k * hop / SR for k in range(1, expected)])
    np.testing.assert_allclose(result.embeddings, reference, rtol=1e-5, atol=1e-5)
    assert result.duration == pytest.approx(length / SR) and not result.padded


def test_streamed_resampled_file_matches_whole_file_decoding(tmp_path):
    model = _model()
    rng = np.random.default_rng(1)
    stereo = (0.3 * rng.standard_normal((22050 * 4 + 123, 2))).astype("float32")
    path = str(tmp_path / "long.wav")
    sf.write(path, stereo, 22050)
    streamed = inference.embed(path, model=model, block_seconds=0.3, hop=0.7)  # many small blocks
    whole = audio.load(path, sample_rate=SR)  # one-shot decode + soxr.resample
    reference = inference.embed(whole, model=model, hop=0.7)
    assert streamed.embeddings.shape == reference.embeddings.shape
    assert streamed.duration == pytest.approx(len(whole) / SR)
    np.testing.assert_allclose(streamed.embeddings, reference.embeddings, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(streamed.times, reference.times)


def test_array_at_another_rate_is_resampled():
    model = _model()
    signal = np.sin(np.linspace(0, 2000, 16000 * 3)).astype("float32")
    result = inference.embed(signal, model=model, sample_rate=16000)
    assert result.duration == pytest.approx(3.0, abs=1e-3) and len(result.times) == (3 * SR) // W


def test_short_clip_pads_or_errors():
    model = _model()
    short = np.random.default_rng(2).uniform(-1, 1, 1000).astype("float32")
    with pytest.warns(UserWarning, match="zero-padded"):
        padded = inference.embed(short, model=model)
    assert padded.padded and padded.embeddings.shape == (1, 16)
    expected = keras.ops.convert_to_numpy(model(np.pad(short, (0, W - 1000))[None], training=False))
    np.testing.assert_allclose(padded.embeddings, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(inference.ClipTooShortError, match="shorter than one 7776-sample window"):
        inference.embed(short, model=model, short="error")


def test_many_files_batched_across_files_and_errors(tmp_path):
    model = _model()
    rng = np.random.default_rng(3)
    paths = []
    for i, seconds in enumerate((1.0, 3.3, 2.0)):
        path = str(tmp_path / f"f{i}.flac")
        sf.write(path, rng.uniform(-0.5, 0.5, int(seconds * SR)).astype("float32"), SR)
        paths.append(path)
    together = inference.embed(paths, model=model, batch_size=3)
    for path, result in zip(paths, together):
        alone = inference.embed(path, model=model, batch_size=1)
        np.testing.assert_allclose(result.embeddings, alone.embeddings, rtol=1e-5, atol=1e-5)
    assert [len(r.times) for r in together] == [1, 3, 2]

    corrupt = str(tmp_path / "corrupt.wav")
    open(corrupt, "wb").write(b"RIFF....WAVEfmt garbage" * 10)
    missing = str(tmp_path / "missing.wav")
    results = inference.embed([paths[0], missing, corrupt, paths[1]], model=model, on_error="skip")
    assert results[1].error and "no such file" in results[1].error
    assert results[2].error and results[2].embeddings.shape[0] == 0
    np.testing.assert_allclose(results[3].embeddings, together[1].embeddings, rtol=1e-5, atol=1e-5)
    with pytest.raises(audio.AudioFileNotFoundError):
        inference.embed(missing, model=model)


@pytest.mark.multibackend
@pytest.mark.parametrize("engine", ["keras", "onnxruntime"])
def test_tag_per_window_clip_mean_and_top_k(engine):
    tagger = MusicTagger(_model(), num_classes=len(TAGS), tags=TAGS)
    signal = np.random.default_rng(4).uniform(-0.5, 0.5, 3 * W).astype("float32")
    result = inference.tag(signal, model=tagger, top_k=2, engine=engine)
    windows = signal.reshape(3, W)
    expected = keras.ops.convert_to_numpy(tagger(windows))
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.clip, expected.mean(axis=0), rtol=1e-5, atol=1e-6)
    order = np.argsort(-expected.mean(axis=0))[:2]
    assert [name for name, _ in result.top] == [TAGS[j] for j in order]
    # embed() on a tagger uses its backbone; tag() on an encoder is refused.
    embedded = inference.embed(signal, model=tagger, engine=engine)
    np.testing.assert_allclose(
        embedded.embeddings,
        keras.ops.convert_to_numpy(tagger.backbone(windows, training=False)),
        rtol=1e-5,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="needs a tagger"):
        inference.tag(signal, model=_model(), engine=engine)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(
            lambda: SampleCNN.for_sample_rate(
                8000, channels=(4,) * 9 + (8, 8)
            ),  # ZeroPadding1D, even kernels
            marks=pytest.mark.multibackend,
        ),
        lambda: MusicTagger(_model(), num_classes=3, head="mlp", hidden_dim=6),
        lambda: MusicTagger(_model(), num_classes=3, multi_label=False),
    ],
)
def test_onnxruntime_engine_matches_keras(build):
    model = build()
    x = np.random.default_rng(6).uniform(-1, 1, (3, model.input_samples)).astype("float32")
    model(x[:1], training=False)
    # Non-trivial BatchNorm statistics, so that folding them into the convolutions is exercised.
    for weight in model.weights:
        if "moving" in weight.path or "gamma" in weight.path or "beta" in weight.path:
            value = keras.ops.convert_to_numpy(weight)
            weight.assign(
                np.random.default_rng(len(weight.path))
                .uniform(0.5, 1.5, value.shape)
                .astype("float32")
            )
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(inference.onnx_predictor(model)(x), expected, rtol=1e-4, atol=1e-5)


def test_onnxruntime_engine_refuses_unsupported_models():
    from keras_clmr.models.fcn import FCN

    fcn = FCN(channels=(4, 4, 4, 4), pools=((2, 2),) * 4, input_samples=4096, n_mels=32)
    signal = np.random.default_rng(7).uniform(-0.5, 0.5, 3 * 4096).astype("float32")
    with pytest.raises(ValueError, match="engine='keras'"):
        inference.embed(signal, model=fcn, engine="onnxruntime")
    result = inference.embed(signal, model=fcn)  # "auto" falls back to Keras
    assert result.embeddings.shape == (3, fcn.embedding_dim)


def test_model_given_as_preset_folder(tmp_path):
    tagger = MusicTagger(_model(), num_classes=len(TAGS), tags=TAGS)
    folder = hub.save_preset(tagger, tmp_path / "tagger")
    signal = np.random.default_rng(5).uniform(-0.5, 0.5, 2 * W).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = inference.tag(signal, model=os.fspath(folder))
    np.testing.assert_allclose(
        result.probabilities,
        inference.tag(signal, model=tagger).probabilities,
        rtol=1e-6,
        atol=1e-6,
    )


def test_bad_options_are_clear():
    model = _model()
    signal = np.zeros(W, "float32")
    with pytest.raises(ValueError, match="hop must be > 0"):
        inference.embed(signal, model=model, hop=0)
    with pytest.raises(ValueError, match="short must be"):
        inference.embed(signal, model=model, short="drop")
    with pytest.raises(ValueError, match="float"):
        inference.embed(np.zeros(W, "int16"), model=model)
    with pytest.raises(TypeError, match="paths or numpy arrays"):
        inference.embed([1, 2, 3], model=model)


@pytest.mark.multibackend
def test_direct_onnx_graph_folds_batchnorm_with_the_shared_pass():
    """The direct front end writes BatchNorm as Mul/Add; ``optimize_onnx`` folds all of them into
    the convolutions, and the folded graph equals the unfolded one and a float64 reference."""
    from keras_clmr.export import onnx as onnx_export

    model = MusicTagger(_model(), num_classes=3, head="mlp", hidden_dim=6)
    rng = np.random.default_rng(8)
    for layer in model.backbone._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0.0, 0.3, shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, shape).astype("float32"))
    raw, _ = onnx_export.build_onnx(model, method="direct", optimize=False)
    folded, info = onnx_export.build_onnx(model, method="direct")
    assert info["optimized"]["folded_affines"] == 11 and info["method"] == "direct"
    ops = [node.op_type for node in folded.graph.node]
    assert ops.count("Conv") == 11 and "Mul" not in ops and "Add" not in ops
    assert [o.name for o in folded.graph.output] == ["embedding", "tags"]
    x = rng.uniform(-1, 1, (3, W)).astype("float32")
    got_raw = onnx_export.run_onnx(onnx_export.onnx_session(raw), x)
    got = onnx_export.run_onnx(onnx_export.onnx_session(folded), x)
    # Float64 reference for the embedding: the backbone in float64 numpy, layer by layer.
    h = x.astype(np.float64)[:, :, None]
    for layer in model.backbone.stack:
        if isinstance(layer, keras.layers.ZeroPadding1D):
            h = np.pad(h, ((0, 0), layer.padding, (0, 0)))
        elif isinstance(layer, keras.layers.Conv1D):
            kernel = keras.ops.convert_to_numpy(layer.kernel.value).astype(np.float64)
            k = kernel.shape[0]
            if layer.padding == "same":
                h = np.pad(h, ((0, 0), ((k - 1) // 2, k - 1 - (k - 1) // 2), (0, 0)))
            step = layer.strides[0]
            frames = (h.shape[1] - k) // step + 1
            patches = np.stack([h[:, i * step : i * step + k, :] for i in range(frames)], axis=1)
            bias = keras.ops.convert_to_numpy(layer.bias.value).astype(np.float64)
            h = np.einsum("btkc,kco->bto", patches, kernel) + bias
        elif isinstance(layer, keras.layers.BatchNormalization):
            values = [
                keras.ops.convert_to_numpy(v.value).astype(np.float64)
                for v in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)
            ]
            gamma, beta, mean, var = values
            h = (h - mean) / np.sqrt(var + layer.epsilon) * gamma + beta
        elif isinstance(layer, keras.layers.ReLU):
            h = np.maximum(h, 0.0)
        elif isinstance(layer, keras.layers.MaxPooling1D):
            pool = layer.pool_size[0]
            frames = h.shape[1] // pool
            h = h[:, : frames * pool].reshape(h.shape[0], frames, pool, -1).max(axis=2)
    reference = h.reshape(h.shape[0], -1)
    scale = np.abs(reference).max()
    np.testing.assert_allclose(got["embedding"], reference, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(got["embedding"], got_raw["embedding"], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(got["tags"], got_raw["tags"], rtol=0, atol=1e-6)
    expected_tags = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(got["tags"], expected_tags, rtol=0, atol=1e-5)
