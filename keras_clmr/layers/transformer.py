"""The transformer blocks of PEMR's mask generator (Yao et al. 2022), as in the official code.

Differences from ``keras.layers.MultiHeadAttention`` / ``LayerNormalization`` that matter for
checkpoint compatibility: the layer norm divides by the *unbiased* standard deviation plus
epsilon (outside the square root); each head has its own d_k = d_v = 128 (the projections are
d_model -> n_heads * d_k, not d_model -> d_model); the blocks are post-LN; the feed-forward net
is written as two kernel-1 convolutions (here Dense layers on the last axis).
"""

import math

import keras
import numpy as np
from keras import layers, ops


def sinusoidal_positions(length, dim):
    """Fixed sinusoidal positional encodings [length, dim] (float32): sin on even, cos on odd."""
    position = np.arange(length, dtype=np.float64)[:, None]
    div_term = np.exp(np.arange(0, dim, 2, dtype=np.float64) * -(math.log(10000.0) / dim))
    table = np.zeros((length, dim), dtype=np.float64)
    table[:, 0::2] = np.sin(position * div_term)
    table[:, 1::2] = np.cos(position * div_term)[:, : dim // 2]
    return table.astype("float32")


def xavier_normal():
    """``torch.nn.init.xavier_normal_`` (untruncated normal, std sqrt(2 / (fan_in + fan_out)))."""
    return keras.initializers.VarianceScaling(
        1.0, mode="fan_avg", distribution="untruncated_normal"
    )


def torch_conv1d_initializers(fan_in):
    """PyTorch's default Conv1d init (kernel and bias both U(+-1/sqrt(fan_in)))."""
    limit = 1.0 / math.sqrt(fan_in)
    return (
        keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform"),
        keras.initializers.RandomUniform(-limit, limit),
    )


@keras.saving.register_keras_serializable(package="keras_clmr")
class PEMRLayerNormalization(layers.Layer):
    """PEMR's layer norm: ``gamma * (z - mean) / (std + eps) + beta``, std unbiased (n - 1)."""

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None or dim < 2:
            raise ValueError(
                f"PEMRLayerNormalization needs a known last axis >= 2, got {input_shape}."
            )
        self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros")
        self.built = True

    def call(self, z):
        dim = z.shape[-1]
        mean = ops.mean(z, axis=-1, keepdims=True)
        centred = z - mean
        std = ops.sqrt(ops.sum(ops.square(centred), axis=-1, keepdims=True) / (dim - 1))
        return self.gamma * (centred / (std + self.epsilon)) + self.beta

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="keras_clmr")
class PEMRMultiHeadSelfAttention(layers.Layer):
    """Post-LN multi-head self-attention block: ``LN(x + Dropout(W_o · Attention(x)))``.

    Q, K, V are ``Dense(n_heads * key_dim)`` (xavier-normal kernels, zero biases), the scores
    are divided by sqrt(key_dim), the attention probabilities get dropout, the heads are
    concatenated and projected back to d_model. ``query_heads``/``key_heads`` expose the
    per-head projections that PEMR's frame scoring uses ([B, heads, L, key_dim]).
    """

    def __init__(
        self, num_heads=3, key_dim=128, value_dim=None, dropout=0.1, epsilon=1e-6, **kwargs
    ):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.key_dim = int(key_dim)
        self.value_dim = int(value_dim or key_dim)
        self.dropout_rate = float(dropout)
        self.epsilon = float(epsilon)
        self.w_q = layers.Dense(
            self.num_heads * self.key_dim, kernel_initializer=xavier_normal(), name="w_q"
        )
        self.w_k = layers.Dense(
            self.num_heads * self.key_dim, kernel_initializer=xavier_normal(), name="w_k"
        )
        self.w_v = layers.Dense(
            self.num_heads * self.value_dim, kernel_initializer=xavier_normal(), name="w_v"
        )
        self.attention_dropout = layers.Dropout(self.dropout_rate, name="attention_dropout")
        self.output_dropout = layers.Dropout(self.dropout_rate, name="output_dropout")
        self.layer_norm = PEMRLayerNormalization(self.epsilon, name="layer_norm")

    def build(self, input_shape):
        d_model = input_shape[-1]
        self.proj = layers.Dense(d_model, kernel_initializer=xavier_normal(), name="proj")
        for dense in (self.w_q, self.w_k, self.w_v):
            dense.build(input_shape)
        self.proj.build((*input_shape[:-1], self.num_heads * self.value_dim))
        self.layer_norm.build(input_shape)
        self.built = True

    def _heads(self, x, dim):
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        return ops.transpose(ops.reshape(x, (batch, length, self.num_heads, dim)), (0, 2, 1, 3))

    def query_heads(self, x):
        return self._heads(self.w_q(x), self.key_dim)

    def key_heads(self, x):
        return self._heads(self.w_k(x), self.key_dim)

    def _drop_probabilities(self, probs, training):
        """Dropout of the attention probabilities with a boolean keep-mask.

        Why: ``Dropout`` keeps a float mask and the pre-mask product for its gradient; on the
        [B, heads, L, L] probabilities that doubles their memory. ``where`` keeps one byte per
        element and scales in the same pass. Same distribution as ``keras.layers.Dropout``.
        """
        rate = self.dropout_rate
        if not training or rate <= 0.0:
            return probs
        keep = (
            keras.random.uniform(
                ops.shape(probs), seed=self.attention_dropout.seed_generator, dtype=probs.dtype
            )
            >= rate
        )
        return ops.where(keep, probs * (1.0 / (1.0 - rate)), ops.zeros((), probs.dtype))

    def call(self, x, training=None):
        # 1 / sqrt(d_k) scales Q ([B, L, H * d_k]) rather than the [B, H, L, L] scores: one
        # pass over the small tensor instead of the large one, forward and backward.
        q = self._heads(self.w_q(x) * (1.0 / math.sqrt(self.key_dim)), self.key_dim)
        k = self.key_heads(x)
        v = self._heads(self.w_v(x), self.value_dim)
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
        probs = self._drop_probabilities(ops.softmax(scores, axis=-1), training)
        context = ops.transpose(ops.matmul(probs, v), (0, 2, 1, 3))
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        context = ops.reshape(context, (batch, length, self.num_heads * self.value_dim))
        out = self.output_dropout(self.proj(context), training=training)
        return self.layer_norm(x + out)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            value_dim=self.value_dim,
            dropout=self.dropout_rate,
            epsilon=self.epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_clmr")
class PEMRFeedForward(layers.Layer):
    """Post-LN position-wise FFN: ``LN(x + Dropout(W_2 · ReLU(W_1 · x)))``.

    The original writes W_1/W_2 as kernel-1 Conv1d (PyTorch default init); ``conv1``/``conv2``
    here are Dense layers on the last axis with that init. PEMR also uses this block, with
    hidden size 512, as the prediction head of L_pred.
    """

    def __init__(self, hidden_dim=2048, dropout=0.1, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.dropout_rate = float(dropout)
        self.epsilon = float(epsilon)
        self.dropout = layers.Dropout(self.dropout_rate, name="dropout")
        self.layer_norm = PEMRLayerNormalization(self.epsilon, name="layer_norm")

    def build(self, input_shape):
        d_model = input_shape[-1]
        k1, b1 = torch_conv1d_initializers(d_model)
        k2, b2 = torch_conv1d_initializers(self.hidden_dim)
        self.conv1 = layers.Dense(
            self.hidden_dim,
            activation="relu",
            kernel_initializer=k1,
            bias_initializer=b1,
            name="conv1",
        )
        self.conv2 = layers.Dense(d_model, kernel_initializer=k2, bias_initializer=b2, name="conv2")
        self.conv1.build(input_shape)
        self.conv2.build((*input_shape[:-1], self.hidden_dim))
        self.layer_norm.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        out = self.dropout(self.conv2(self.conv1(x)), training=training)
        return self.layer_norm(x + out)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, dropout=self.dropout_rate, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="keras_clmr")
class PEMREncoderLayer(layers.Layer):
    """One post-LN transformer encoder layer: self-attention block, then feed-forward block."""

    def __init__(self, num_heads=3, key_dim=128, ffn_dim=2048, dropout=0.1, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.key_dim = int(key_dim)
        self.ffn_dim = int(ffn_dim)
        self.dropout_rate = float(dropout)
        self.epsilon = float(epsilon)
        self.self_attention = PEMRMultiHeadSelfAttention(
            num_heads, key_dim, dropout=dropout, epsilon=epsilon, name="self_attention"
        )
        self.feed_forward = PEMRFeedForward(
            ffn_dim, dropout=dropout, epsilon=epsilon, name="feed_forward"
        )

    def build(self, input_shape):
        self.self_attention.build(input_shape)
        self.feed_forward.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        return self.feed_forward(self.self_attention(x, training=training), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            ffn_dim=self.ffn_dim,
            dropout=self.dropout_rate,
            epsilon=self.epsilon,
        )
        return config
