import keras
import numpy as np
import pytest

from keras_clmr.models import SampleCNN

from conftest import tiny_sample_cnn


def _trainable_count(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def test_full_size_shapes_and_parameter_count():
    model = SampleCNN()
    assert model.input_samples == 59049
    assert _trainable_count(model) == 2_368_512  # convs 2,362,624 + BN affine 5,888
    # BN running statistics are non-trainable state, as in PyTorch's buffers.
    assert model.count_params() - _trainable_count(model) == 5_888
    out = model(np.zeros((2, 59049), "float32"), training=False)
    assert tuple(out.shape) == (2, 512)
    # Intermediate lengths of the original: 19683 after the stem, then /3 per block down to 1.
    shape, pooled = (1, 59049, 1), []
    for layer in model.stack:
        shape = layer.compute_output_shape(shape)
        if layer.name == "block_0_relu":
            assert shape[1] == 19683
        if layer.name.endswith("_pool"):
            pooled.append(shape[1])
    assert pooled == [6561, 2187, 729, 243, 81, 27, 9, 3, 1]


@pytest.mark.parametrize("sample_rate,length", [(22050, 59049), (16000, 43740), (8000, 20736)])
def test_sample_rate_variants(sample_rate, length):
    model = SampleCNN.for_sample_rate(sample_rate, channels=(4,) * 10 + (8,))
    assert model.input_samples == length
    out = model(np.zeros((1, length), "float32"))
    assert tuple(out.shape) == (1, 8)


def test_unknown_sample_rate_names_the_choices():
    with pytest.raises(ValueError, match="22050"):
        SampleCNN.for_sample_rate(44100)


def test_bn_matches_pytorch_defaults():
    model = tiny_sample_cnn()
    bns = [layer for layer in model.stack if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 11
    assert all(bn.epsilon == 1e-5 and bn.momentum == 0.9 for bn in bns)
    convs = [layer for layer in model.stack if isinstance(layer, keras.layers.Conv1D)]
    assert len(convs) == 11 and all(conv.use_bias for conv in convs)


@pytest.mark.multibackend
def test_tiny_forward_accepts_both_layouts():
    model = tiny_sample_cnn()
    x = np.random.default_rng(0).standard_normal((3, model.input_samples)).astype("float32")
    a = keras.ops.convert_to_numpy(model(x, training=False))
    b = keras.ops.convert_to_numpy(model(x[..., None], training=False))
    assert a.shape == (3, 16)
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(a)) and np.all(a >= 0)  # ends in ReLU


@pytest.mark.multibackend
def test_tiny_forward_matches_numpy_reference():
    """The whole stack against a float64 numpy re-implementation (inference-mode BN)."""
    model = SampleCNN(strides=(3,) * 9, channels=(2, 2, 2, 3, 3, 3, 3, 3, 3, 4, 4))
    rng = np.random.default_rng(1)
    for layer in model.stack:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0, 0.1, c),
                    rng.normal(0, 0.1, c),
                    rng.uniform(0.5, 1.5, c),
                ]
            )
    x = rng.standard_normal((2, 59049)).astype("float32")
    got = keras.ops.convert_to_numpy(model(x, training=False))

    def conv(h, kernel, bias, stride, same):
        if same:
            h = np.pad(h, ((0, 0), (1, 1), (0, 0)))
        k = kernel.shape[0]
        n_out = (h.shape[1] - k) // stride + 1
        windows = np.stack([h[:, i * stride : i * stride + k, :] for i in range(n_out)], axis=1)
        return np.einsum("btkc,kco->bto", windows, kernel) + bias

    h = x.astype(np.float64)[..., None]
    layers = model.stack
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, keras.layers.Conv1D):
            kernel, bias = [np.asarray(w, np.float64) for w in layer.get_weights()]
            h = conv(h, kernel, bias, layer.strides[0], layer.padding == "same")
        elif isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = [np.asarray(w, np.float64) for w in layer.get_weights()]
            h = (h - mean) / np.sqrt(var + 1e-5) * gamma + beta
        elif isinstance(layer, keras.layers.ReLU):
            h = np.maximum(h, 0)
        elif isinstance(layer, keras.layers.MaxPooling1D):
            p = layer.pool_size[0]
            h = h[:, : h.shape[1] // p * p].reshape(h.shape[0], -1, p, h.shape[2]).max(axis=2)
        i += 1
    want = h.reshape(2, -1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_wrong_length_names_expected_length():
    model = tiny_sample_cnn()
    with pytest.raises(ValueError, match=str(model.input_samples)):
        model(np.zeros((1, model.input_samples + 1), "float32"))
    with pytest.raises(ValueError, match="mono"):
        model(np.zeros((1, model.input_samples, 2), "float32"))


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="9 strides"):
        SampleCNN(strides=(3, 3))
    with pytest.raises(ValueError, match="11 channel"):
        SampleCNN(channels=(8, 8))


@pytest.mark.multibackend
def test_keras_round_trip_identical_outputs(tmp_path):
    model = tiny_sample_cnn()
    x = np.random.default_rng(2).standard_normal((2, model.input_samples)).astype("float32")
    model(x, training=True)  # move BN statistics away from their initial values
    before = keras.ops.convert_to_numpy(model(x, training=False))
    path = tmp_path / "sample_cnn.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, SampleCNN)
    assert restored.get_config() == model.get_config()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored(x, training=False)), before)


def _numpy_stack(model, x, training):
    """float64 numpy forward of model.stack ([B, T] -> [B, C]); BN moving statistics after it."""
    h = x.astype(np.float64)[..., None]
    moving = []
    for layer in model.stack:
        if isinstance(layer, keras.layers.ZeroPadding1D):
            h = np.pad(h, ((0, 0), tuple(layer.padding), (0, 0)))
        elif isinstance(layer, keras.layers.Conv1D):
            kernel, bias = [np.asarray(w, np.float64) for w in layer.get_weights()]
            if layer.padding == "same":
                h = np.pad(h, ((0, 0), (1, 1), (0, 0)))
            k, stride = kernel.shape[0], layer.strides[0]
            n_out = (h.shape[1] - k) // stride + 1
            windows = np.stack([h[:, i * stride : i * stride + k] for i in range(n_out)], axis=1)
            h = np.einsum("btkc,kco->bto", windows, kernel) + bias
        elif isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = [np.asarray(w, np.float64) for w in layer.get_weights()]
            if training:
                m = layer.momentum
                batch_mean, batch_var = h.mean(axis=(0, 1)), h.var(axis=(0, 1))
                moving.append((m * mean + (1 - m) * batch_mean, m * var + (1 - m) * batch_var))
                mean, var = batch_mean, batch_var
            h = (h - mean) / np.sqrt(var + layer.epsilon) * gamma + beta
        elif isinstance(layer, keras.layers.ReLU):
            h = np.maximum(h, 0)
        elif isinstance(layer, keras.layers.MaxPooling1D):
            p = layer.pool_size[0]
            h = h[:, : h.shape[1] // p * p].reshape(h.shape[0], -1, p, h.shape[2]).max(axis=2)
    return h.reshape(h.shape[0], -1), moving


@pytest.mark.multibackend
@pytest.mark.parametrize("training", [False, True])
def test_training_and_inference_match_numpy_with_padding_blocks(training):
    """Batch statistics, moving-statistic updates and the padded (stride 2) blocks, float64.

    On PyTorch this checks the channels-first path (torch's fused BatchNorm, unbiased variance
    rescaled to Keras' biased one) against the same maths as the channels-last layers.
    """
    model = tiny_sample_cnn()
    rng = np.random.default_rng(3)
    for layer in model.stack:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0, 0.1, c),
                    rng.normal(0, 0.1, c),
                    rng.uniform(0.5, 1.5, c),
                ]
            )
    x = rng.standard_normal((3, model.input_samples)).astype("float32")
    want, want_moving = _numpy_stack(model, x, training)
    got = keras.ops.convert_to_numpy(model(x, training=training))
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)
    bns = [layer for layer in model.stack if isinstance(layer, keras.layers.BatchNormalization)]
    for layer, (mean, var) in zip(bns, want_moving):
        np.testing.assert_allclose(np.asarray(layer.moving_mean), mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(layer.moving_variance), var, rtol=1e-4, atol=1e-6)


@pytest.mark.multibackend
def test_torch_channels_first_path_equals_the_layer_path_with_gradients():
    """PyTorch: outputs, moving statistics and weight gradients of the channels-first path equal
    Keras' channels-last layers' (same weights, same batch). Inference within 1e-5 of the
    output scale; training within 1e-4: two float32 paths through 11 batch-statistic
    normalisations of a 4-example batch (Keras' variance is E[x^2] - E[x]^2, torch's is not)."""
    if keras.backend.backend() != "torch":
        pytest.skip("the channels-first path runs on the PyTorch backend only")
    import torch

    x = np.random.default_rng(4).standard_normal((4, tiny_sample_cnn().input_samples))
    results = []
    for channels_first in (True, False):
        keras.utils.set_random_seed(5)
        model = tiny_sample_cnn()
        assert model._runs_channels_first()
        assert model._folds_torch_stem(True)  # the training call below folds the stem
        if not channels_first:
            model._runs_channels_first = lambda: False
        model.zero_grad()
        inference = keras.ops.convert_to_numpy(model(x.astype("float32"), training=False))
        y = model(x.astype("float32"), training=True)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        grads = [keras.ops.convert_to_numpy(w.value.grad) for w in model.trainable_weights]
        weights = [np.asarray(w) for w in model.weights]
        results.append((inference, keras.ops.convert_to_numpy(y), grads, weights))
    (i_cf, y_cf, g_cf, w_cf), (i_cl, y_cl, g_cl, w_cl) = results
    np.testing.assert_allclose(i_cf, i_cl, rtol=1e-5, atol=1e-5 * np.abs(i_cl).max())
    np.testing.assert_allclose(y_cf, y_cl, rtol=1e-4, atol=1e-4 * np.abs(y_cl).max())
    # Scale: the largest gradient (conv biases before BatchNorm have a zero true gradient).
    grad_scale = max(np.abs(g).max() for g in g_cl)
    for a, b in zip(g_cf, g_cl):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * grad_scale)
    for a, b in zip(w_cf, w_cl):  # moving statistics after the training call
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.multibackend
def test_torch_frozen_batch_norm_is_folded_with_the_layer_paths_gradients():
    """PyTorch, BatchNorm frozen (trainable=False, so inference mode inside a training call,
    as when fine-tuning with frozen statistics): the channels-first path folds it into the
    convolution; outputs and conv gradients equal Keras' channels-last layers' (random
    moving statistics, gamma and beta), within 1e-5 of their scale."""
    if keras.backend.backend() != "torch":
        pytest.skip("the channels-first path runs on the PyTorch backend only")
    import torch

    x = np.random.default_rng(6).standard_normal((3, tiny_sample_cnn().input_samples))
    results = []
    for channels_first in (True, False):
        keras.utils.set_random_seed(7)
        model = tiny_sample_cnn()
        rng = np.random.default_rng(8)
        for layer in model.stack:
            if isinstance(layer, keras.layers.BatchNormalization):
                c = layer.gamma.shape[0]
                layer.set_weights(
                    [rng.uniform(-1.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.3, c)]
                    + [rng.uniform(0.2, 2.0, c)]
                )
                layer.trainable = False
        if not channels_first:
            model._runs_channels_first = lambda: False
        y = model(x.astype("float32"), training=True)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        grads = [keras.ops.convert_to_numpy(w.value.grad) for w in model.trainable_weights]
        results.append((keras.ops.convert_to_numpy(y), grads))
    (y_cf, g_cf), (y_cl, g_cl) = results
    assert np.abs(y_cl).max() > 0
    np.testing.assert_allclose(y_cf, y_cl, rtol=1e-5, atol=1e-5 * np.abs(y_cl).max())
    grad_scale = max(np.abs(g).max() for g in g_cl)
    assert len(g_cf) == len(g_cl) == 22  # 11 kernels and biases; BatchNorm frozen
    for a, b in zip(g_cf, g_cl):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * grad_scale)
