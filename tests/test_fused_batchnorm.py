"""SampleCNN's BatchNormalization: the fused TensorFlow training path computes the same
output, gradients and moving statistics as batch normalisation in float64 numpy."""

import keras
import numpy as np
import pytest

from keras_clmr.models.sample_cnn import BatchNormalization

from conftest import BACKEND, tiny_sample_cnn


def _numpy_bn(x, gamma, beta, epsilon):
    mean = x.mean(axis=(0, 1))
    variance = x.var(axis=(0, 1))  # biased, as Keras and the output of torch's BN
    normalized = (x - mean) / np.sqrt(variance + epsilon)
    return normalized, normalized * gamma + beta, mean, variance


def _numpy_input_gradient(x, gamma, upstream, epsilon):
    normalized, _, _, variance = _numpy_bn(x, gamma, 0.0, epsilon)
    g = upstream * gamma
    n = x.shape[0] * x.shape[1]
    return (
        (n * g - g.sum(axis=(0, 1)) - normalized * (g * normalized).sum(axis=(0, 1)))
        / n
        / np.sqrt(variance + epsilon)
    )


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the fused path is TensorFlow's")
def test_fused_training_path_matches_float64_reference():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = (3.0 * rng.standard_normal((4, 50, 6)) + 1.0).astype("float32")
    upstream = rng.standard_normal(x.shape).astype("float32")
    gamma = rng.standard_normal(6).astype("float32")
    beta = rng.standard_normal(6).astype("float32")
    layer = BatchNormalization(epsilon=1e-5, momentum=0.9)
    layer.build(x.shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs, training=True)
        loss = tf.reduce_sum(outputs * upstream)
    grad_x, grad_gamma, grad_beta = tape.gradient(loss, [inputs, layer.gamma, layer.beta])

    x64 = x.astype("float64")
    normalized, expected, mean, variance = _numpy_bn(x64, gamma, beta, 1e-5)
    np.testing.assert_allclose(outputs.numpy(), expected, atol=1e-5 * np.abs(expected).max())
    expected_gx = _numpy_input_gradient(x64, gamma, upstream, 1e-5)
    np.testing.assert_allclose(grad_x.numpy(), expected_gx, atol=1e-5 * np.abs(expected_gx).max())
    np.testing.assert_allclose(
        grad_gamma.numpy(), (upstream * normalized).sum(axis=(0, 1)), rtol=1e-4
    )
    np.testing.assert_allclose(grad_beta.numpy(), upstream.sum(axis=(0, 1)), rtol=1e-4)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), 0.9 + 0.1 * variance, rtol=1e-5)


def test_inference_and_synchronized_use_keras_path():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 9, 4)).astype("float32")
    ours = BatchNormalization(epsilon=1e-5)
    stock = keras.layers.BatchNormalization(epsilon=1e-5)
    for layer in (ours, stock):
        layer.build(x.shape)
        layer.moving_mean.assign(np.arange(4, dtype="float32"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours(x, training=False)),
        keras.ops.convert_to_numpy(stock(x, training=False)),
        rtol=1e-6,
    )


def test_sample_cnn_weight_paths_unchanged(tmp_path):
    """The class keeps Keras' name, so .keras files saved before load (same weight paths)."""
    model = tiny_sample_cnn()
    assert all(
        type(layer).__name__ == "BatchNormalization"
        for layer in model.stack
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(2).standard_normal((2, model.input_samples)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
        rtol=1e-6,
    )


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the fused path is TensorFlow's")
def test_fused_training_path_on_nhwc_matches_float64_reference():
    """FCN's Conv2D blocks: statistics over batch, height and width (numpy on the [B, H*W, C]
    reshape, which normalises the same elements)."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    x = (2.0 * rng.standard_normal((3, 5, 8, 4)) - 0.5).astype("float32")
    upstream = rng.standard_normal(x.shape).astype("float32")
    gamma = rng.standard_normal(4).astype("float32")
    layer = BatchNormalization(epsilon=1e-5, momentum=0.9)
    layer.build(x.shape)
    layer.gamma.assign(gamma)
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs, training=True)
        loss = tf.reduce_sum(outputs * upstream)
    grad_x = tape.gradient(loss, inputs)
    flat = x.reshape(3, 40, 4).astype("float64")
    _, expected, mean, variance = _numpy_bn(flat, gamma, 0.0, 1e-5)
    np.testing.assert_allclose(
        outputs.numpy().reshape(flat.shape), expected, atol=1e-5 * np.abs(expected).max()
    )
    expected_gx = _numpy_input_gradient(flat, gamma, upstream.reshape(flat.shape), 1e-5)
    np.testing.assert_allclose(
        grad_x.numpy().reshape(flat.shape), expected_gx, atol=1e-5 * np.abs(expected_gx).max()
    )
    np.testing.assert_allclose(layer.moving_variance.numpy(), 0.9 + 0.1 * variance, rtol=1e-5)
