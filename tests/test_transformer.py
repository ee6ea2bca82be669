"""PEMR's transformer blocks against numpy versions of the official PyTorch formulation."""

import math

import keras
import numpy as np
import pytest

from keras_clmr.layers.transformer import (
    PEMREncoderLayer,
    PEMRFeedForward,
    PEMRLayerNormalization,
    PEMRMultiHeadSelfAttention,
    sinusoidal_positions,
)


def np_layer_norm(z, gamma, beta, eps=1e-6):
    mean = z.mean(-1, keepdims=True)
    std = z.std(-1, ddof=1, keepdims=True)  # torch.Tensor.std is unbiased
    return gamma * (z - mean) / (std + eps) + beta


def weights(layer):
    return {
        "/".join(w.path.split("/")[-2:]): keras.ops.convert_to_numpy(w).astype(np.float64)
        for w in layer.weights
    }


def np_attention_block(x, w, heads, d_k):
    b, n, _ = x.shape

    def split(t):
        return t.reshape(b, n, heads, d_k).transpose(0, 2, 1, 3)

    q = split(x @ w["w_q/kernel"] + w["w_q/bias"])
    k = split(x @ w["w_k/kernel"] + w["w_k/bias"])
    v = split(x @ w["w_v/kernel"] + w["w_v/bias"])
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d_k)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, heads * d_k)
    out = context @ w["proj/kernel"] + w["proj/bias"]
    return np_layer_norm(x + out, w["layer_norm/gamma"], w["layer_norm/beta"])


def np_ffn_block(x, w):
    h = np.maximum(x @ w["conv1/kernel"] + w["conv1/bias"], 0.0)
    return np_layer_norm(
        x + h @ w["conv2/kernel"] + w["conv2/bias"], w["layer_norm/gamma"], w["layer_norm/beta"]
    )


def randomise(layer, rng):
    for w in layer.weights:
        w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))


@pytest.mark.multibackend
def test_layer_norm_uses_unbiased_std_and_eps_outside_sqrt():
    rng = np.random.default_rng(0)
    z = rng.normal(2.0, 3.0, (3, 5, 8)).astype("float32")
    layer = PEMRLayerNormalization()
    layer.build(z.shape)
    randomise(layer, rng)
    gamma, beta = (
        keras.ops.convert_to_numpy(v).astype(np.float64) for v in (layer.gamma, layer.beta)
    )
    out = keras.ops.convert_to_numpy(layer(z))
    np.testing.assert_allclose(out, np_layer_norm(z.astype(np.float64), gamma, beta), atol=1e-5)
    # Not Keras' LayerNormalization (biased variance, eps inside the sqrt): they differ visibly.
    keras_ln = keras.layers.LayerNormalization(epsilon=1e-6)
    assert np.abs(keras.ops.convert_to_numpy(keras_ln(z)) - np_layer_norm(z, 1.0, 0.0)).max() > 1e-2


@pytest.mark.multibackend
def test_attention_block_matches_numpy_with_per_head_key_dim():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, 16)).astype("float32")
    layer = PEMRMultiHeadSelfAttention(num_heads=3, key_dim=16, dropout=0.1)
    layer.build(x.shape)
    randomise(layer, rng)
    w = weights(layer)
    assert w["w_q/kernel"].shape == (16, 48) and w["proj/kernel"].shape == (48, 16)
    out = keras.ops.convert_to_numpy(layer(x, training=False))
    np.testing.assert_allclose(out, np_attention_block(x.astype(np.float64), w, 3, 16), atol=2e-4)
    # Dropout is active in training.
    assert np.abs(keras.ops.convert_to_numpy(layer(x, training=True)) - out).max() > 1e-3
    q = keras.ops.convert_to_numpy(layer.query_heads(x))
    np.testing.assert_allclose(
        q,
        (x @ w["w_q/kernel"] + w["w_q/bias"]).reshape(2, 7, 3, 16).transpose(0, 2, 1, 3),
        atol=1e-4,
    )


@pytest.mark.multibackend
def test_encoder_layer_is_post_ln_attention_then_ffn():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    layer = PEMREncoderLayer(num_heads=2, key_dim=8, ffn_dim=12)
    layer.build(x.shape)
    randomise(layer, rng)
    wa, wf = weights(layer.self_attention), weights(layer.feed_forward)
    expected = np_ffn_block(np_attention_block(x.astype(np.float64), wa, 2, 8), wf)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x, training=False)), expected, atol=2e-4
    )


def test_ffn_block_and_initialisers():
    layer = PEMRFeedForward(hidden_dim=2048)
    layer.build((None, 10, 128))
    # PyTorch's Conv1d default: U(+-1/sqrt(fan_in)) for kernel and bias.
    k1 = keras.ops.convert_to_numpy(layer.conv1.kernel)
    assert k1.shape == (128, 2048) and np.abs(k1).max() <= 1 / math.sqrt(128) + 1e-7
    assert np.abs(keras.ops.convert_to_numpy(layer.conv2.bias)).max() <= 1 / math.sqrt(2048) + 1e-7
    attention = PEMRMultiHeadSelfAttention(num_heads=3, key_dim=128)
    attention.build((None, 10, 128))
    wq = keras.ops.convert_to_numpy(attention.w_q.kernel)
    # xavier_normal_: N(0, 2 / (128 + 384)) untruncated, zero bias.
    assert abs(wq.std() - math.sqrt(2 / (128 + 384))) < 0.003 and np.abs(wq).max() > 2.5 * wq.std()
    assert not keras.ops.convert_to_numpy(attention.w_q.bias).any()


def test_sinusoidal_positions():
    table = sinusoidal_positions(463, 128)
    assert table.shape == (463, 128)
    for pos, i in [(0, 0), (5, 10), (462, 127), (100, 33)]:
        angle = pos / 10000.0 ** ((i - i % 2) / 128)
        expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
        assert abs(table[pos, i] - expected) < 1e-5


@pytest.mark.multibackend
def test_attention_dropout_keeps_or_scales_each_probability():
    layer = PEMRMultiHeadSelfAttention(num_heads=1, key_dim=4, dropout=0.25)
    layer.build((1, 3, 4))
    probs = np.full((4, 2, 50, 50), 0.02, dtype="float32")
    dropped = keras.ops.convert_to_numpy(layer._drop_probabilities(probs, training=True))
    kept = dropped != 0
    # Kept entries are scaled by 1 / (1 - rate), the others are exactly zero.
    np.testing.assert_allclose(dropped[kept], 0.02 / 0.75, rtol=1e-6)
    # 20,000 Bernoulli(0.75) draws: the kept share is within 5 standard deviations of 0.75.
    assert abs(kept.mean() - 0.75) < 5 * math.sqrt(0.75 * 0.25 / kept.size)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer._drop_probabilities(probs, training=False)), probs
    )


def test_config_round_trips():
    for layer in (
        PEMRLayerNormalization(epsilon=1e-5),
        PEMRMultiHeadSelfAttention(2, 8, dropout=0.2),
        PEMRFeedForward(32),
        PEMREncoderLayer(2, 8, 32, dropout=0.0),
    ):
        clone = layer.__class__.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
