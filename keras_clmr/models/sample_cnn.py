"""SampleCNN: the raw-waveform encoder of CLMR (Lee et al. 2017; Spijkervet & Burgoyne 2021)."""

import math

import keras
from keras import layers, ops

from keras_clmr.layers.initializers import (  # noqa: F401 (BN_* re-exported for importers)
    BN_EPSILON,
    BN_MOMENTUM,
    torch_default_bias_initializer,
    torch_default_kernel_initializer,
)
from keras_clmr.models.backbone import Backbone

# Stride sets of the original CLMR 2.0 code, chosen by sample rate.
STRIDES_BY_SAMPLE_RATE = {
    22050: (3, 3, 3, 3, 3, 3, 3, 3, 3),
    16000: (3, 3, 3, 3, 3, 3, 5, 2, 2),
    8000: (3, 3, 3, 2, 2, 4, 4, 2, 2),
}
DEFAULT_CHANNELS = (128, 128, 128, 256, 256, 256, 256, 256, 256, 512, 512)


class BatchNormalization(layers.BatchNormalization):
    """Keras' BatchNormalization; on TensorFlow in training it runs one fused kernel.

    Why: Keras' composite BatchNorm (moments, then scale and shift) keeps full-size temporaries
    alive in the gradient graph; at 48 pairs every SampleCNN block-1 tensor is ~0.5 GB, and the
    fused kernel (FusedBatchNormV3) needs none of them. Same maths (biased batch variance for
    the output and the moving variance), same weights and names (the class name stays
    ``BatchNormalization`` so saved weight paths are unchanged). Other backends, inference,
    masks, renorm and synchronized statistics use Keras' own path.
    """

    def call(self, inputs, training=None, mask=None):
        fusable = (
            keras.backend.backend() == "tensorflow"
            and training
            and self.trainable
            and mask is None
            and not self.synchronized
            and not self.renorm
            and self.scale
            and self.center
            and len(inputs.shape) in (3, 4)  # [B, T, C] or NHWC (FCN's Conv2D blocks)
            and self.axis in (-1, len(inputs.shape) - 1)
        )
        if not fusable:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = tf.cast(inputs, "float32")
        y, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=tf.expand_dims(x, 1) if len(inputs.shape) == 3 else x,  # NHWC
            scale=tf.cast(self.gamma, "float32"),
            offset=tf.cast(self.beta, "float32"),
            mean=tf.zeros([0], "float32"),
            variance=tf.zeros([0], "float32"),
            epsilon=self.epsilon,
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=True,
        )
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), "float32")
        variance = unbiased_variance * (count - 1.0) / tf.maximum(count, 1.0)
        self.moving_mean.assign(
            tf.cast(self.moving_mean, "float32") * self.momentum + mean * (1.0 - self.momentum)
        )
        self.moving_variance.assign(
            tf.cast(self.moving_variance, "float32") * self.momentum
            + variance * (1.0 - self.momentum)
        )
        return tf.cast(tf.squeeze(y, 1) if len(inputs.shape) == 3 else y, self.compute_dtype)


def _conv_bn_relu(filters, kernel_size, strides, padding, name, in_channels):
    return [
        layers.Conv1D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            name=f"{name}_conv",
            kernel_initializer=torch_default_kernel_initializer(),
            bias_initializer=torch_default_bias_initializer(kernel_size * in_channels),
        ),
        BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn"),
        layers.ReLU(name=f"{name}_relu"),
    ]


def _torch_batch_norm(layer, x, training):
    """``layer`` (a channels-last BatchNormalization) applied to x [B, C, T] by torch's kernel.

    In training, torch reports the unbiased batch variance; Keras' moving variance uses the
    biased one, so it is rescaled by (n - 1) / n before the update.
    """
    import torch

    if not training:
        return torch.nn.functional.batch_norm(
            x,
            layer.moving_mean.value,
            layer.moving_variance.value,
            layer.gamma.value,
            layer.beta.value,
            training=False,
            eps=layer.epsilon,
        )
    channels = x.shape[1]
    batch_mean = torch.zeros(channels, dtype=x.dtype, device=x.device)
    unbiased_variance = torch.ones(channels, dtype=x.dtype, device=x.device)
    y = torch.nn.functional.batch_norm(
        x,
        batch_mean,  # momentum 1: overwritten with the batch statistics
        unbiased_variance,
        layer.gamma.value,
        layer.beta.value,
        training=True,
        momentum=1.0,
        eps=layer.epsilon,
    )
    count = x.shape[0] * x.shape[2]
    variance = unbiased_variance * ((count - 1) / max(count, 1))
    momentum = layer.momentum
    layer.moving_mean.assign(layer.moving_mean.value * momentum + batch_mean * (1.0 - momentum))
    layer.moving_variance.assign(
        layer.moving_variance.value * momentum + variance * (1.0 - momentum)
    )
    return y


@keras.saving.register_keras_serializable(package="keras_clmr")
class SampleCNN(Backbone):
    """Raw-waveform SampleCNN encoder: audio [B, T] or [B, T, 1] -> embedding [B, channels[-1]].

    The default configuration is CLMR's encoder (59049 samples at 22050 Hz, 2,368,512
    parameters). Layer ``i`` of the original ``encoder.sequential.i`` is ``block_i`` here.

    Args:
        strides: pooling factors of the nine middle blocks; their product times the stem
            stride (3) is the input length. Use ``SampleCNN.for_sample_rate(sr)`` for the
            original sample-rate variants.
        channels: 11 widths: stem, nine blocks, final block.
        sample_rate: the sample rate the model expects (metadata; not used in the maths).
    """

    def __init__(
        self,
        strides=STRIDES_BY_SAMPLE_RATE[22050],
        channels=DEFAULT_CHANNELS,
        sample_rate=22050,
        **kwargs,
    ):
        super().__init__(**kwargs)
        strides = tuple(int(s) for s in strides)
        channels = tuple(int(c) for c in channels)
        if len(strides) != 9:
            raise ValueError(
                f"SampleCNN needs 9 strides (one per middle block), got {len(strides)}: {strides}."
            )
        if len(channels) != 11:
            raise ValueError(
                f"SampleCNN needs 11 channel widths (stem, 9 blocks, final), got {len(channels)}: "
                f"{channels}."
            )
        if any(s < 2 for s in strides):
            raise ValueError(f"Every stride must be >= 2, got {strides}.")
        self.strides = strides
        self.channels = channels
        self.sample_rate = int(sample_rate)
        self.input_samples = 3 * math.prod(strides)
        self.embedding_dim = channels[-1]

        self.stack = [*_conv_bn_relu(channels[0], 3, 3, "valid", "block_0", 1)]
        for i, stride in enumerate(strides, start=1):
            # The original uses kernel_size=stride with padding 1: "same" only for stride 3,
            # so keep its arithmetic for the other sample-rate variants too.
            kernel = stride
            if kernel == 3:
                self.stack += _conv_bn_relu(
                    channels[i], 3, 1, "same", f"block_{i}", channels[i - 1]
                )
            else:
                self.stack += [
                    layers.ZeroPadding1D(1, name=f"block_{i}_pad"),
                    *_conv_bn_relu(channels[i], kernel, 1, "valid", f"block_{i}", channels[i - 1]),
                ]
            self.stack.append(layers.MaxPooling1D(stride, strides=stride, name=f"block_{i}_pool"))
        self.stack += _conv_bn_relu(channels[10], 3, 1, "same", "block_10", channels[9])
        self.flatten = layers.Flatten(name="flatten")
        self.build((None, self.input_samples))

    @classmethod
    def for_sample_rate(cls, sample_rate, **kwargs):
        """The original CLMR stride set for 22050, 16000 or 8000 Hz."""
        if sample_rate not in STRIDES_BY_SAMPLE_RATE:
            raise ValueError(
                f"No SampleCNN stride set for {sample_rate} Hz; choose one of "
                f"{sorted(STRIDES_BY_SAMPLE_RATE)} or pass strides= explicitly."
            )
        return cls(strides=STRIDES_BY_SAMPLE_RATE[sample_rate], sample_rate=sample_rate, **kwargs)

    def _check_shape(self, shape):
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[-1] not in (1, None)):
            raise ValueError(
                f"SampleCNN expects mono audio shaped [batch, {self.input_samples}] or "
                f"[batch, {self.input_samples}, 1], got shape {tuple(shape)}."
            )
        length = shape[1]
        if length is not None and length != self.input_samples:
            raise ValueError(
                f"SampleCNN with strides {self.strides} expects exactly {self.input_samples} "
                f"samples per window ({self.input_samples / self.sample_rate:.2f} s at "
                f"{self.sample_rate} Hz), got {length}. Crop or window the audio first "
                "(keras_clmr.inference.embed does this)."
            )

    def build(self, input_shape):
        self._check_shape(input_shape)
        shape = (input_shape[0], self.input_samples, 1)
        for layer in self.stack:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        if shape[1] != 1:
            raise ValueError(
                f"SampleCNN strides {self.strides} leave {shape[1]} frames after the last block "
                f"(need 1 for a {self.embedding_dim}-d embedding): use a stride set of the "
                "original."
            )
        self.flatten.build(shape)
        self.built = True

    def call(self, audio, training=None):
        self._check_shape(audio.shape)
        if self._runs_channels_first():
            return self._call_channels_first(audio, training)
        x = audio if len(audio.shape) == 3 else ops.expand_dims(audio, -1)
        for layer in self.stack:
            x = (
                layer(x, training=training)
                if isinstance(layer, layers.BatchNormalization)
                else layer(x)
            )
        return self.flatten(x)

    def _runs_channels_first(self):
        """True on PyTorch with float32 layers and plain BatchNorm (the fast path's scope)."""
        return (
            keras.backend.backend() == "torch"
            and all(layer.compute_dtype == "float32" for layer in self.stack)
            and all(
                layer.scale and layer.center and not layer.renorm and not layer.synchronized
                for layer in self.stack
                if isinstance(layer, layers.BatchNormalization)
            )
        )

    def _call_channels_first(self, audio, training):
        """The stack on [B, C, T] tensors with the layers' own weights (PyTorch backend).

        Why: Keras' layers are channels-last, so on PyTorch every Conv1D and MaxPooling1D
        transposes its input and output, and BatchNormalization runs as a composite of
        full-size ops; here the input is transposed once, convolutions and pooling run
        channels-first and BatchNorm is torch's fused kernel, as in the original CLMR. Same
        maths as the layer path: biased batch variance for the output and the moving variance.
        The layers stay channels-last for callers that run ``stack`` themselves.
        """
        import torch

        x = ops.expand_dims(audio, 1) if len(audio.shape) == 2 else ops.transpose(audio, (0, 2, 1))
        for layer in self.stack:
            if isinstance(layer, layers.Conv1D):  # bias and "same" padding inside the kernel
                x = torch.nn.functional.conv1d(
                    x,
                    ops.transpose(layer.kernel, (2, 1, 0)),  # [k, in, out] -> [out, in, k]
                    layer.bias.value if layer.use_bias else None,
                    stride=layer.strides,
                    padding="same" if layer.padding == "same" else 0,
                    dilation=layer.dilation_rate,
                )
            elif isinstance(layer, layers.BatchNormalization):
                x = _torch_batch_norm(layer, x, training=bool(training) and layer.trainable)
            elif isinstance(layer, layers.MaxPooling1D):
                x = ops.max_pool(
                    x,
                    layer.pool_size,
                    strides=layer.strides,
                    padding=layer.padding,
                    data_format="channels_first",
                )
            elif isinstance(layer, layers.ZeroPadding1D):
                x = ops.pad(x, ((0, 0), (0, 0), tuple(layer.padding)))
            elif isinstance(layer, layers.ReLU):
                x = layer(x)  # elementwise: layout-free
            else:
                raise TypeError(f"No channels-first rule for {type(layer).__name__} {layer.name}.")
        return torch.flatten(x, 1)  # [B, C, 1] -> [B, C], as Flatten on [B, 1, C]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            strides=list(self.strides), channels=list(self.channels), sample_rate=self.sample_rate
        )
        return config
