"""SampleCNN's TensorFlow training path that recomputes the stem in the backward: the same
outputs, gradients and moving statistics as the layer path, and only on TensorFlow."""

import keras
import numpy as np
import pytest

from conftest import BACKEND, tiny_sample_cnn


def _train_step(recompute, x, upstream):
    """Output, gradients (input and every trainable weight) and weights after one compiled
    forward/backward of a seeded tiny SampleCNN in training mode."""
    import tensorflow as tf

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
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0, 0.1, c),
                    rng.normal(0, 0.1, c),
                    rng.uniform(0.5, 1.5, c),
                ]
            )

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        return y, tape.gradient(loss, [x] + [w.value for w in model.trainable_weights])

    y, grads = step(tf.constant(x))
    return y.numpy(), [g.numpy() for g in grads], [np.asarray(w) for w in model.weights]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the recomputed stem is TensorFlow's")
def test_recomputed_stem_matches_the_layer_path():
    rng = np.random.default_rng(4)
    x = (0.3 * rng.standard_normal((4, tiny_sample_cnn().input_samples))).astype("float32")
    upstream = rng.standard_normal((4, 16)).astype("float32")
    y_fast, g_fast, w_fast = _train_step(True, x, upstream)
    y_plain, g_plain, w_plain = _train_step(False, x, upstream)
    np.testing.assert_allclose(y_fast, y_plain, rtol=1e-5, atol=1e-6 * np.abs(y_plain).max())
    # Scale: the largest gradient. The conv biases before a BatchNorm have a zero true
    # gradient: float32 cancellation noise (~1e-6 of the scale) is all either path gives.
    scale = max(np.abs(g).max() for g in g_plain)
    assert len(g_fast) == len(g_plain)
    for fast, plain in zip(g_fast, g_plain):
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5 * scale)
    # Moving statistics (and weights) after the step: updated once, as the layer path does
    # (skipped or repeated updates of the stem's statistics would differ).
    for fast, plain in zip(w_fast, w_plain):
        np.testing.assert_allclose(fast, plain, rtol=1e-6, atol=1e-7)


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
