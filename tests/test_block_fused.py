"""SampleCNN's TensorFlow training path that runs each middle block's BatchNorm, ReLU and max
pooling as one function (``_tf_bn_relu_pool``): the same outputs, gradients and moving
statistics as the layer path, with ties (digital silence), negative and zero gammas."""

import keras
import numpy as np
import pytest

from conftest import BACKEND, compiled_training_step, tiny_sample_cnn

tensorflow_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="the fused block is TF's")


def _reference_bn_relu_pool(z, gamma, beta, epsilon, pool, upstream):
    """Float64 composite ops (moments, normalisation, ReLU, MaxPool) and their autodiff:
    output, gradients of z, gamma, beta, and the batch mean and biased variance."""
    import tensorflow as tf

    z, gamma, beta = (tf.constant(v, tf.float64) for v in (z, gamma, beta))
    with tf.GradientTape() as tape:
        tape.watch([z, gamma, beta])
        mean, variance = tf.nn.moments(z, axes=[0, 1])
        y = tf.nn.batch_normalization(z, mean, variance, beta, gamma, epsilon)
        out = tf.nn.max_pool1d(tf.nn.relu(y), pool, pool, "VALID")
        loss = tf.reduce_sum(out * upstream)
    grads = tape.gradient(loss, [z, gamma, beta])
    return [t.numpy() for t in (out, *grads, mean, variance)]


def _fused_bn_relu_pool(z, gamma, beta, epsilon, pool, upstream):
    import tensorflow as tf

    from keras_clmr.models.sample_cnn import _tf_bn_relu_pool

    z, gamma, beta = (tf.constant(v, tf.float32) for v in (z, gamma, beta))
    with tf.GradientTape() as tape:
        tape.watch([z, gamma, beta])
        out, mean, variance = _tf_bn_relu_pool(z, gamma, beta, epsilon, pool)
        loss = tf.reduce_sum(out * upstream)
    grads = tape.gradient(loss, [z, gamma, beta])
    return [t.numpy() for t in (out, *grads, mean, variance)]


@tensorflow_only
@pytest.mark.parametrize("pool,length", [(3, 27), (2, 17), (5, 23)])
def test_fused_block_matches_float64_composite_ops(pool, length):
    """Against float64 autodiff of the composite ops, with windows that tie (repeated values,
    as digital silence gives), negative and zero gammas and a tail after the last window."""
    rng = np.random.default_rng(pool)
    z = rng.standard_normal((3, length, 6))
    z[0, : 3 * pool] = 0.25  # silence: every window of this stretch ties
    windows = length // pool
    z[1, 0 : windows * pool : pool] = z[1, 1 : windows * pool : pool]  # first two tie
    z[2, pool - 1 : windows * pool : pool, 3] = z[2, 0 : windows * pool : pool, 3]
    z = z.astype("float32")
    gamma = np.array([1.2, -0.7, 0.0, 0.9, -1.5, 0.4], "float32")
    beta = np.array([0.1, 0.3, 0.2, -0.05, 0.0, 0.5], "float32")
    upstream = rng.standard_normal((3, length // pool, 6))
    fused = _fused_bn_relu_pool(z, gamma, beta, 1e-5, pool, upstream.astype("float32"))
    reference = _reference_bn_relu_pool(z, gamma, beta, 1e-5, pool, upstream)
    names = ["output", "z gradient", "gamma gradient", "beta gradient", "mean", "variance"]
    for name, got, want in zip(names, fused, reference):
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * scale, err_msg=name)


def _seeded_model(fuse, gammas=None):
    """A seeded tiny SampleCNN with non-trivial BatchNorm weights and moving statistics."""
    keras.utils.set_random_seed(5)
    model = tiny_sample_cnn()
    model.fuse_blocks = fuse
    rng = np.random.default_rng(6)
    for layer in model.stack:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            gamma = rng.uniform(0.5, 1.5, c) if gammas is None else gammas(rng, c)
            layer.set_weights(
                [gamma, rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)]
            )
    return model


def _train_step(fuse, x, upstream, gammas=None):
    """Output, gradients (input and every trainable weight) and weights after one compiled
    forward/backward of the seeded model in training mode."""
    model = _seeded_model(fuse, gammas)
    assert len(model._fused_blocks(True)) == (9 if fuse else 0)
    return compiled_training_step(model, x, upstream)


def _float64_step(x, upstream, gammas=None):
    """The seeded model's training output and gradients from float64 composite ops and
    autodiff (convolution, moments, ReLU, MaxPool), the weights read from the layers."""
    import tensorflow as tf

    model = _seeded_model(False, gammas)
    paths = [w.path for w in model.trainable_weights]
    weights = [tf.constant(np.asarray(w), tf.float64) for w in model.trainable_weights]
    x = tf.constant(x, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([x, *weights])
        w = dict(zip(paths, weights))
        h = x[:, :, None]
        for layer in model.stack:
            if isinstance(layer, keras.layers.Conv1D):
                h = tf.nn.convolution(
                    h, w[layer.kernel.path], layer.strides[0], layer.padding.upper()
                )
                h = h + w[layer.bias.path]
            elif isinstance(layer, keras.layers.BatchNormalization):
                mean, variance = tf.nn.moments(h, [0, 1])
                gamma, beta = w[layer.gamma.path], w[layer.beta.path]
                h = tf.nn.batch_normalization(h, mean, variance, beta, gamma, layer.epsilon)
            elif isinstance(layer, keras.layers.ReLU):
                h = tf.nn.relu(h)
            elif isinstance(layer, keras.layers.MaxPooling1D):
                h = tf.nn.max_pool1d(h, layer.pool_size[0], layer.strides[0], "VALID")
            else:
                assert isinstance(layer, keras.layers.ZeroPadding1D)
                h = tf.pad(h, [[0, 0], list(layer.padding), [0, 0]])
        y = tf.reshape(h, [h.shape[0], -1])
        loss = tf.reduce_sum(y * upstream)
    grads = tape.gradient(loss, [x, *weights])
    biases = [False] + ["bias" in path and "_conv" in path for path in paths]
    return y.numpy(), [g.numpy() for g in grads], biases


def _assert_same_step(x, gammas=None):
    """The fused path against float64 (tight) and against the layer path (as close as the
    layer path is to float64: its float32 BatchNorm rounds differently)."""
    upstream = np.random.default_rng(3).standard_normal((x.shape[0], 16)).astype("float32")
    y_fused, g_fused, w_fused = _train_step(True, x, upstream, gammas)
    y_plain, g_plain, w_plain = _train_step(False, x, upstream, gammas)
    y_64, g_64, conv_biases = _float64_step(x, upstream.astype("float64"), gammas)
    scale = max(np.abs(g).max() for g in g_64)
    for y, tolerance in ((y_fused, 1e-4), (y_plain, 1e-3)):
        np.testing.assert_allclose(y, y_64, rtol=tolerance, atol=tolerance * np.abs(y_64).max())
    assert len(g_fused) == len(g_plain) == len(g_64)
    for fused, plain, want, conv_bias in zip(g_fused, g_plain, g_64, conv_biases):
        # A conv bias before a BatchNorm has a zero true gradient: float32 cancellation
        # noise, a small fraction of the largest gradient, is all either path gives.
        size = scale if conv_bias else np.abs(want).max()
        np.testing.assert_allclose(fused, want, rtol=1e-4, atol=1e-4 * size)
        np.testing.assert_allclose(fused, plain, rtol=1e-3, atol=1e-3 * size)
    # Moving statistics (and weights) after the step: updated once per BatchNorm, as the
    # layer path does.
    for fused, plain in zip(w_fused, w_plain):
        np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-6)


@tensorflow_only
def test_fused_blocks_match_the_layer_path():
    rng = np.random.default_rng(4)
    x = (0.3 * rng.standard_normal((4, tiny_sample_cnn().input_samples))).astype("float32")
    _assert_same_step(x)


@tensorflow_only
def test_fused_blocks_match_the_layer_path_with_silence_and_negative_gammas():
    """Digital silence makes whole windows tie (the gradient goes to the first position, as
    MaxPoolGrad's); negative gammas pool the window minimum, zero gammas the first value."""
    rng = np.random.default_rng(9)
    samples = tiny_sample_cnn().input_samples
    x = (0.3 * rng.standard_normal((4, samples))).astype("float32")
    x[0] = 0.0  # a silent example
    x[1:, samples // 3 : 2 * samples // 3] = 0.0  # silence in the middle of the others

    def gammas(rng, c):
        gamma = rng.uniform(0.5, 1.5, c) * rng.choice([-1.0, 1.0], c)
        gamma[0] = 0.0
        return gamma

    _assert_same_step(x, gammas)


def test_fused_blocks_are_tensorflow_training_only():
    model = tiny_sample_cnn()
    assert not model._fused_blocks(False)
    middle = [
        index
        for index, layer in enumerate(model.stack)
        if isinstance(layer, keras.layers.MaxPooling1D)
    ]
    expected = {index - 2 for index in middle} if BACKEND == "tensorflow" else set()
    assert len(middle) == 9 and model._fused_blocks(True) == expected
    if BACKEND != "tensorflow":
        return
    model.stack[middle[0] - 2].trainable = False  # a frozen BatchNorm: moving statistics
    assert model._fused_blocks(True) == expected - {middle[0] - 2}
    model.fuse_blocks = False
    assert not model._fused_blocks(True)
