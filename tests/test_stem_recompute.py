"""SampleCNN's TensorFlow training path that recomputes the stem in the backward: the same
outputs, gradients and moving statistics as the layer path, and only on TensorFlow."""

import keras
import numpy as np
import pytest

from conftest import BACKEND, compiled_training_step, tiny_sample_cnn


def _seeded_model(recompute):
    keras.utils.set_random_seed(5)
    model = tiny_sample_cnn()
    model.recompute_stem = recompute
    assert model._recomputes_stem(True) == recompute
    rng = np.random.default_rng(6)
    for layer in model.stack:  # non-trivial BatchNorm weights and moving statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c) * rng.choice([-1.0, 1.0], c),
                    rng.normal(0, 0.1, c),
                    rng.normal(0, 0.1, c),
                    rng.uniform(0.5, 1.5, c),
                ]
            )
    return model


def _train_step(recompute, x, upstream):
    """Output, gradients (input and every trainable weight) and weights after one compiled
    forward/backward of a seeded tiny SampleCNN in training mode."""
    model = _seeded_model(recompute)

    return compiled_training_step(model, x, upstream)


def _reference_float64(x, upstream):
    """The training forward/backward written out in float64 TensorFlow ops (conv, batch
    moments, normalise, ReLU, max-pool) with the seeded model's weights: output and
    gradients of the input and every trainable weight, in the model's order."""
    import tensorflow as tf

    model = _seeded_model(False)
    params = [tf.constant(np.asarray(w, np.float64)) for w in model.trainable_weights]
    x = tf.constant(x, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([x, *params])
        h, remaining = x[..., None], list(params)
        for layer in model.stack:
            if isinstance(layer, keras.layers.Conv1D):
                kernel, bias = remaining.pop(0), remaining.pop(0)
                h = tf.nn.conv1d(h, kernel, layer.strides[0], layer.padding.upper()) + bias
            elif isinstance(layer, keras.layers.BatchNormalization):
                gamma, beta = remaining.pop(0), remaining.pop(0)
                mean, variance = tf.nn.moments(h, [0, 1])
                h = gamma * (h - mean) / tf.sqrt(variance + layer.epsilon) + beta
            elif isinstance(layer, keras.layers.ReLU):
                h = tf.nn.relu(h)
            elif isinstance(layer, keras.layers.ZeroPadding1D):
                h = tf.pad(h, [[0, 0], list(layer.padding), [0, 0]])
            else:
                assert isinstance(layer, keras.layers.MaxPooling1D), layer
                h = tf.nn.max_pool1d(h, layer.pool_size[0], layer.strides[0], "VALID")
        y = tf.reshape(h, [h.shape[0], -1])
        loss = tf.reduce_sum(y * upstream)
    return y.numpy(), [g.numpy() for g in tape.gradient(loss, [x, *params])]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the recomputed stem is TensorFlow's")
def test_recomputed_stem_matches_the_layer_path_and_a_float64_reference():
    rng = np.random.default_rng(4)
    x = (0.3 * rng.standard_normal((4, tiny_sample_cnn().input_samples))).astype("float32")
    upstream = rng.standard_normal((4, 16)).astype("float32")
    y_fast, g_fast, w_fast = _train_step(True, x, upstream)
    y_plain, g_plain, w_plain = _train_step(False, x, upstream)
    y_64, g_64 = _reference_float64(x, upstream)
    assert len(g_fast) == len(g_plain) == len(g_64)
    # The stem's statistics come from the audio's patch covariance: float32 rounding differs
    # from the layer path's (ten BatchNorms amplify it), so both are held to the float64
    # reference.
    # Each against its own scale, but at least 1 % of the largest gradient: the conv biases
    # before a BatchNorm have a zero true gradient, where both paths give rounding noise.
    floor = 0.01 * max(np.abs(g).max() for g in g_64)
    for fast, plain, exact in [(y_fast, y_plain, y_64), *zip(g_fast, g_plain, g_64)]:
        scale = max(np.abs(exact).max(), floor)
        # measured: at most 8e-5 (recomputed) and 2.3e-4 (layer path)
        assert np.abs(fast - exact).max() / scale < 3e-4
        assert np.abs(plain - exact).max() / scale < 5e-4
    # The conv biases before a BatchNorm have a zero true gradient.
    stem_bias_gradient = g_fast[2]
    assert np.abs(stem_bias_gradient).max() <= 1e-5 * np.abs(g_64[1]).max()
    # Moving statistics (and weights) after the step: updated once, as the layer path does
    # (skipped or repeated updates of the stem's statistics would differ).
    for fast, plain in zip(w_fast, w_plain):
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)


def test_recompute_is_tensorflow_training_only():
    model = tiny_sample_cnn()
    assert not model._recomputes_stem(False)
    assert model._recomputes_stem(True) == (keras.backend.backend() == "tensorflow")
    model.stack[1].trainable = False  # a frozen BatchNorm normalises with moving statistics
    assert not model._recomputes_stem(True)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the recomputed stem is TensorFlow's")
def test_synchronized_batchnorm_on_one_replica_keeps_the_fast_paths():
    """``pretrain`` synchronizes BatchNorm even on one device: same maths there, so the fused
    BatchNorm and the recomputed stem still apply (outputs as the unsynchronized layers')."""
    x = np.random.default_rng(7).standard_normal((3, tiny_sample_cnn().input_samples))
    outputs = []
    for synchronized in (False, True):
        keras.utils.set_random_seed(8)
        model = tiny_sample_cnn()
        for layer in model.stack:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = synchronized
        assert model._recomputes_stem(True)
        outputs.append(keras.ops.convert_to_numpy(model(x.astype("float32"), training=True)))
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the recomputed stem is TensorFlow's")
def test_training_call_with_an_unknown_batch_size_keeps_static_lengths():
    """``fit`` traces with batch None: the stem's output keeps its static length, which the
    fused blocks after it need."""
    import tensorflow as tf

    model = _seeded_model(True)
    assert model._fused_blocks(True)
    samples = model.input_samples
    step = tf.function(
        lambda x: model(x, training=True), input_signature=[tf.TensorSpec([None, samples])]
    )
    x = np.random.default_rng(9).standard_normal((3, samples)).astype("float32")
    y = step(x).numpy()
    assert y.shape == (3, 16) and np.all(np.isfinite(y))
