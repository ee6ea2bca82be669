"""FCN's TensorFlow training path that recomputes block 1 in the backward: the same outputs,
gradients and moving statistics as the layer path, and only on TensorFlow."""

import keras
import numpy as np
import pytest

from keras_clmr.models.fcn import FCN

from conftest import BACKEND


def tiny_fcn():
    """FCN's structure on a short input: 992 samples -> 16 mels x 32 frames -> 16-d."""
    return FCN(
        channels=(4, 8, 8, 8),
        pools=((2, 2), (2, 2), (2, 2), (2, 2)),
        input_samples=992,
        n_fft=64,
        hop_length=32,
        n_mels=16,
    )


def _train_step(recompute, spectrogram, upstream):
    """Output, gradients (input and every trainable weight) and weights after one compiled
    forward/backward of a seeded tiny FCN in training mode."""
    import tensorflow as tf

    keras.utils.set_random_seed(5)
    model = tiny_fcn()
    model.recompute_first_block = recompute
    assert model._recomputes_first_block(True) == recompute
    rng = np.random.default_rng(6)
    for layer in [model.spec_bn] + [block[1] for block in model.blocks]:
        c = layer.gamma.shape[0]  # non-trivial BatchNorm weights and moving statistics
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
            y = model.embed_spectrogram(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        return y, tape.gradient(loss, [x] + [w.value for w in model.trainable_weights])

    y, grads = step(tf.constant(spectrogram))
    return y.numpy(), [g.numpy() for g in grads], [np.asarray(w) for w in model.weights]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the recomputed block is TensorFlow's")
def test_recomputed_first_block_matches_the_layer_path():
    rng = np.random.default_rng(4)
    model = tiny_fcn()
    x = (10.0 * rng.standard_normal((3, model.n_mels, model.num_frames))).astype("float32")
    upstream = rng.standard_normal((3, model.embedding_dim)).astype("float32")
    y_fast, g_fast, w_fast = _train_step(True, x, upstream)
    y_plain, g_plain, w_plain = _train_step(False, x, upstream)
    np.testing.assert_allclose(y_fast, y_plain, rtol=1e-5, atol=1e-6 * np.abs(y_plain).max())
    # Scale: the largest gradient. The conv biases before a BatchNorm have a zero true
    # gradient: float32 cancellation noise (~1e-6 of the scale) is all either path gives.
    scale = max(np.abs(g).max() for g in g_plain)
    assert len(g_fast) == len(g_plain) == 1 + len(model.trainable_weights)
    for fast, plain in zip(g_fast, g_plain):
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5 * scale)
    # Moving statistics (and weights) after the step: updated once, as the layer path does.
    for fast, plain in zip(w_fast, w_plain):
        np.testing.assert_allclose(fast, plain, rtol=1e-6, atol=1e-7)


def test_recompute_is_tensorflow_training_only():
    model = tiny_fcn()
    assert not model._recomputes_first_block(False)
    tensorflow = keras.backend.backend() == "tensorflow"
    assert model._recomputes_first_block(True) == tensorflow
    conv, bn, _, pool = model.blocks[0]
    _, freq, time, channels = conv.compute_output_shape((1, 16, 32, 1))
    assert model.recomputed_output_floats() == (2 * freq * time * channels if tensorflow else 0)
    bn.trainable = False  # a frozen BatchNorm normalises with moving statistics
    assert not model._recomputes_first_block(True)
    assert model.recomputed_output_floats() == 0
