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
# PyTorch no-grad inference: windows per chunk in the first blocks, and the per-window input
# size (floats) above which a block runs chunk by chunk (SampleCNN._chunked_layers).
CHUNK_WINDOWS = 8
CHUNK_FLOATS = 2**20


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
            and (not self.synchronized or _one_replica_in_sync())
            and not self.renorm
            and self.scale
            and self.center
            and len(inputs.shape) in (3, 4)  # [B, T, C] or NHWC (FCN's Conv2D blocks)
            and self.axis in (-1, len(inputs.shape) - 1)
        )
        if not fusable:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        y, mean, variance = _tf_fused_batch_norm_train(
            tf.cast(inputs, "float32"),
            tf.cast(self.gamma, "float32"),
            tf.cast(self.beta, "float32"),
            self.epsilon,
        )
        self.update_moving_statistics(mean, variance)
        return tf.cast(y, self.compute_dtype)

    def update_moving_statistics(self, mean, variance):
        """Move the moving mean/variance towards a training batch's (biased) statistics."""
        momentum = self.momentum
        self.moving_mean.assign(
            ops.cast(self.moving_mean, "float32") * momentum + mean * (1.0 - momentum)
        )
        self.moving_variance.assign(
            ops.cast(self.moving_variance, "float32") * momentum + variance * (1.0 - momentum)
        )


def _one_replica_in_sync():
    """True on TensorFlow in a replica context of one replica (no strategy, or one device):
    synchronized BatchNorm then normalises with the plain batch statistics, so the fused
    paths apply (``keras-clmr pretrain`` synchronizes BatchNorm even on one device)."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    return context is not None and context.num_replicas_in_sync == 1


def _tf_fused_batch_norm_train(x, gamma, beta, epsilon):
    """TensorFlow's fused training BatchNorm of float32 x [B, T, C] or NHWC.

    Returns the output and the batch mean and biased variance (Keras' moving-variance input).
    """
    import tensorflow as tf

    y, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=tf.expand_dims(x, 1) if len(x.shape) == 3 else x,  # NHWC
        scale=gamma,
        offset=beta,
        mean=tf.zeros([0], "float32"),
        variance=tf.zeros([0], "float32"),
        epsilon=epsilon,
        exponential_avg_factor=1.0,
        data_format="NHWC",
        is_training=True,
    )
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), "float32")
    variance = unbiased_variance * (count - 1.0) / tf.maximum(count, 1.0)
    return (tf.squeeze(y, 1) if len(x.shape) == 3 else y), mean, variance


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


def _after(tensor, gradient):
    """``tensor`` plus a zero computed from ``gradient``: a data dependency that keeps a
    backward recomputation from running before the incoming gradient exists (the executor
    could otherwise run it early, in the forward, and keep its outputs alive)."""
    import tensorflow as tf

    first = tf.cast(tf.reshape(gradient, [-1])[:1], tf.bool)
    return tensor + tf.reduce_sum(tf.where(first == first, 0.0, 1.0))  # + 0, unfoldable


def _tf_stem_recomputed(stem_conv, stem_bn, first_conv, audio):
    """Stem (conv, BatchNorm, ReLU) and block 1's convolution, keeping only the audio for the
    gradient (TensorFlow, training). Returns block 1's conv output, stem batch mean, variance.

    Why: the stem's conv output and ReLU output are [B, T/3, 128] each (~0.5 GB per 48-view
    batch at 59049 samples), the largest tensors the gradient keeps. The backward recomputes
    the stem from the audio and backpropagates through block 1's convolution directly (its
    kernel gradient needs the stem output, its input gradient only the kernel), so neither
    tensor lives from the forward to the backward.

    The stem's conv (kernel = stride, one input channel) is z = patches @ W + b over the
    audio's non-overlapping patches, so its BatchNorm statistics come from the audio: the
    batch mean is mean(patches) @ W + b and the variance diag(W^T Cov(patches) W), from a
    [taps, taps] covariance. The BatchNorm then folds into the conv (W * a, beta - mean * a
    with a = gamma / sqrt(variance + eps)): the stem is one matmul, bias and ReLU, with no
    full-size conv output and no normalisation pass, forward or backward. The conv bias
    cancels in the BatchNorm: its gradient is exactly zero (the layer path's is float32
    noise). Same maths as the layer path, closer to a float64 reference; the caller updates
    the moving statistics (once per call).
    """
    import tensorflow as tf

    taps = stem_conv.kernel.shape[0]
    conv_stride = first_conv.strides[0]
    conv_padding = first_conv.padding.upper()
    epsilon = stem_bn.epsilon

    def folded_stem(audio, stem_kernel, gamma, beta):
        """Patches [N, taps], folded kernel and bias, batch mean (without the conv bias) and
        biased variance of the stem's conv output."""
        patches = tf.reshape(audio, [-1, taps])  # audio [B, T, 1], T a multiple of taps
        count = tf.cast(tf.shape(patches)[0], "float32")
        patch_mean = tf.reduce_mean(patches, axis=0, keepdims=True)
        centred = patches - patch_mean
        covariance = tf.matmul(centred, centred, transpose_a=True) / count
        kernel = stem_kernel[:, 0, :]  # [taps, C]
        mean = tf.matmul(patch_mean, kernel)[0]
        variance = tf.reduce_sum(tf.matmul(covariance, kernel) * kernel, axis=0)
        scale = gamma * tf.math.rsqrt(variance + epsilon)
        return patches, kernel * scale, beta - mean * scale, mean, variance

    # Frames per view, static where the audio's length is (the later blocks need it).
    frames = -1 if audio.shape[1] is None else audio.shape[1] // taps

    def stem_features(patches, folded_kernel, folded_bias, batch):
        features = tf.nn.relu(tf.nn.bias_add(tf.matmul(patches, folded_kernel), folded_bias))
        return tf.reshape(features, [batch, frames, folded_kernel.shape[-1]])

    @tf.custom_gradient
    def stem_and_first_conv(audio, stem_kernel, stem_bias, gamma, beta, kernel, bias):
        batch = tf.shape(audio)[0]
        patches, folded_kernel, folded_bias, mean, variance = folded_stem(
            audio, stem_kernel, gamma, beta
        )
        features = stem_features(patches, folded_kernel, folded_bias, batch)
        z = tf.nn.convolution(features, kernel, conv_stride, conv_padding, data_format="NWC")

        def grad(z_grad, mean_grad=None, variance_grad=None):
            # The statistics only feed the moving averages: no gradient flows through them.
            small = [audio, stem_kernel, gamma, beta]
            with tf.GradientTape() as tape:
                tape.watch(small)
                patches, folded_kernel, folded_bias, _, _ = folded_stem(*small)
            held_patches = _after(patches, z_grad)
            features = stem_features(held_patches, folded_kernel, folded_bias, batch)
            features_4d = tf.expand_dims(features, 1)  # NWC -> NHWC, as tf.nn.conv1d does
            z_grad_4d = tf.expand_dims(z_grad, 1)
            kernel_4d = tf.expand_dims(kernel, 0)
            strides = [1, 1, conv_stride, 1]
            features_grad = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(features_4d),
                filter=kernel_4d,
                out_backprop=z_grad_4d,
                strides=strides,
                padding=conv_padding,
            )
            kernel_grad = tf.raw_ops.Conv2DBackpropFilter(
                input=features_4d,
                filter_sizes=tf.shape(kernel_4d),
                out_backprop=z_grad_4d,
                strides=strides,
                padding=conv_padding,
            )
            pre_grad = tf.reshape(
                tf.raw_ops.ReluGrad(gradients=tf.squeeze(features_grad, 1), features=features),
                [-1, folded_kernel.shape[-1]],
            )
            small_grads = tape.gradient(
                [folded_kernel, folded_bias, patches],
                small,
                output_gradients=[
                    tf.matmul(held_patches, pre_grad, transpose_a=True),
                    tf.reduce_sum(pre_grad, axis=0),
                    tf.matmul(pre_grad, folded_kernel, transpose_b=True),
                ],
            )
            audio_grad, stem_kernel_grad, gamma_grad, beta_grad = small_grads
            return [
                audio_grad,
                stem_kernel_grad,
                tf.zeros_like(stem_bias),
                gamma_grad,
                beta_grad,
                tf.squeeze(kernel_grad, 0),
                tf.reduce_sum(z_grad, axis=[0, 1]),
            ]

        return (z + bias, mean + stem_bias, variance), grad

    return stem_and_first_conv(
        audio,
        tf.convert_to_tensor(stem_conv.kernel),
        tf.convert_to_tensor(stem_conv.bias),
        tf.convert_to_tensor(stem_bn.gamma),
        tf.convert_to_tensor(stem_bn.beta),
        tf.convert_to_tensor(first_conv.kernel),
        tf.convert_to_tensor(first_conv.bias),
    )


def _tf_channel_sums(x):
    """Per-channel sums of x [..., C] as one matrix-vector product (a reduction over the
    leading axes runs ~2x slower in TensorFlow on CPU)."""
    import tensorflow as tf

    rows = tf.reshape(x, [-1, x.shape[-1]])
    return tf.matmul(tf.ones([1, tf.shape(rows)[0]], x.dtype), rows)[0]


def _tf_channel_affine(x, scale, offset, center):
    """(x - center) * scale + offset per channel of x [B, T, C] in one pass (TensorFlow's
    inference BatchNorm kernel with unit variance: rsqrt(0 + 1) = 1)."""
    import tensorflow as tf

    y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=tf.expand_dims(x, 1),
        scale=scale,
        offset=offset,
        mean=center,
        variance=tf.zeros_like(center),
        epsilon=1.0,
        data_format="NHWC",
        is_training=False,
    )
    return tf.squeeze(y, 1)


def _tf_bn_relu_pool(z, gamma, beta, epsilon, pool):
    """Training BatchNorm, ReLU and non-overlapping max pooling (window = stride = ``pool``)
    of z [B, T, C] as one function that keeps only z for the backward (TensorFlow, float32).
    Returns the pooled output [B, T // pool, C] and the batch mean and biased variance.

    Why: the layers make three full-size passes forward (BatchNorm, ReLU, pooling) and more
    backward (MaxPoolGrad is the slowest op after the convolutions), and keep the ReLU output
    for the backward. Here BatchNorm is y = a z + b per channel (a = gamma / sqrt(var + eps),
    b = beta - mean a); pooling commutes with the ReLU and, for a > 0, with the affine map
    (a < 0 turns the window maximum into the minimum), so the forward pools z and normalises
    the pooled tensor. The backward sends each window's gradient to the first position that
    holds the selected value (as MaxPoolGrad does with ties, e.g. digital silence; the first
    position when gamma = 0, where all of the window ties) and adds BatchNorm's per-channel
    terms (dz = a dy - a/N sum(dy) - a rstd/N (z - mean) sum(dy yhat), where dy is zero
    outside the selected positions, so both sums are over the pooled tensor).
    """
    import tensorflow as tf

    channels = z.shape[-1]
    length, tail = divmod(z.shape[1], pool)  # static: SampleCNN's input length is fixed

    def pooled_extremes(z, negative):
        """Each window's maximum, or minimum on the channels marked ``negative``."""
        windows = [1, pool]
        maxima = tf.squeeze(tf.nn.max_pool2d(tf.expand_dims(z, 1), windows, windows, "VALID"), 1)

        def mixed():
            minima = -tf.nn.max_pool2d(-tf.expand_dims(z, 1), windows, windows, "VALID")
            return tf.where(negative, tf.squeeze(minima, 1), maxima)

        return tf.cond(tf.reduce_any(negative), mixed, lambda: maxima)

    @tf.custom_gradient
    def fused(z, gamma, beta):
        count = tf.cast(tf.shape(z)[0] * tf.shape(z)[1], "float32")
        mean = _tf_channel_sums(z) / count
        variance = _tf_channel_sums(tf.math.squared_difference(z, mean)) / count
        rstd = tf.math.rsqrt(variance + epsilon)
        scale = gamma * rstd
        selected = pooled_extremes(z, gamma < 0)
        out = tf.nn.relu(_tf_channel_affine(selected, scale, beta, mean))

        def grad(out_grad, mean_grad=None, variance_grad=None):
            # The statistics only feed the moving averages: no gradient flows through them.
            y_grad = tf.raw_ops.ReluGrad(gradients=out_grad, features=out)  # pooled
            batch = tf.shape(z)[0]
            head = z[:, : length * pool] if tail else z
            columns = tf.unstack(tf.reshape(head, [batch, length, pool, channels]), axis=2)
            maxima = columns[0]
            for column in columns[1:]:
                maxima = tf.maximum(maxima, column)

            def mixed():
                minima = columns[0]
                for column in columns[1:]:
                    minima = tf.minimum(minima, column)
                chosen = tf.where(gamma < 0, minima, maxima)
                return tf.where(gamma == 0, columns[0], chosen)  # all of the window ties

            chosen = tf.cond(tf.reduce_any(gamma <= 0), mixed, lambda: maxima)
            # The first position holding the chosen value: the number of leading misses
            # (bool and int8 ops; tf.where with broadcast scalars is ~5x slower).
            leading = tf.not_equal(columns[0], chosen)
            first = tf.cast(leading, tf.int8)
            for column in columns[1:-1]:
                leading = tf.logical_and(leading, tf.not_equal(column, chosen))
                first += tf.cast(leading, tf.int8)
            beta_grad = _tf_channel_sums(y_grad)
            gamma_grad = _tf_channel_sums(y_grad * (chosen - mean)) * rstd
            z_grad = _tf_channel_affine(
                z, -scale * rstd * gamma_grad / count, -scale * beta_grad / count, mean
            )
            # Routed after the per-channel terms exist (z can go first): one full-size
            # temporary fewer at the step's peak (block 1's backward).
            routed = tf.where(
                tf.equal(first[:, :, None, :], tf.constant(list(range(pool)), tf.int8, [pool, 1])),
                _after(scale * y_grad, z_grad)[:, :, None, :],
                0.0,
            )
            routed = tf.reshape(routed, [batch, length * pool, channels])
            if tail:  # the frames after the last whole window get BatchNorm's terms only
                routed = tf.pad(routed, [[0, 0], [0, tail], [0, 0]])
            return [z_grad + routed, gamma_grad, beta_grad]

        return (out, mean, variance), grad

    # Tensors, not variables: the backward returns their gradients as inputs'.
    return fused(z, tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta))


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


def _fold_torch_batch_norm(layer, kernel, bias):
    """(kernel [out, in, k], bias [out]) of a convolution followed by ``layer`` (a BatchNorm in
    inference mode) as one convolution: one pass over the activations instead of two."""
    import torch

    scale = layer.gamma.value * torch.rsqrt(layer.moving_variance.value + layer.epsilon)
    shift = layer.beta.value - layer.moving_mean.value * scale
    return kernel * scale[:, None, None], shift if bias is None else bias * scale + shift


def _torch_folded_stem_train(conv, bn, x):
    """The stem's conv and training BatchNorm on x [B, 1, T] (PyTorch) as one convolution:
    the BatchNorm statistics come from the audio's non-overlapping patches (see
    ``_tf_stem_recomputed``) and fold into the kernel and bias, so the full-size conv output
    is neither normalised in a second pass nor kept for the backward. Updates the moving
    statistics; returns the normalised pre-activation [B, C, T / k]."""
    import torch

    taps = conv.kernel.shape[0]
    patches = x.reshape(-1, taps)  # one channel, kernel = stride, "valid": [N, taps]
    patch_mean = patches.mean(dim=0)
    centred = patches - patch_mean
    covariance = centred.T @ centred / patches.shape[0]
    weights = conv.kernel.value[:, 0, :].T  # [C, taps]
    bias = conv.bias.value
    mean = weights @ patch_mean + bias
    variance = ((weights @ covariance) * weights).sum(dim=1)
    scale = bn.gamma.value * torch.rsqrt(variance + bn.epsilon)
    # The conv bias cancels in the BatchNorm: written out, its gradient is an exact zero.
    folded_bias = bias * scale - mean * scale + bn.beta.value
    y = torch.nn.functional.conv1d(
        x, (weights * scale[:, None])[:, None, :], folded_bias, stride=taps
    )
    with torch.no_grad():
        bn.update_moving_statistics(mean, variance)
    return y


def _plain_relu(layer):
    """True for ReLU(x) = max(x, 0) (no cap, slope or threshold)."""
    return layer.max_value is None and not layer.negative_slope and not layer.threshold


def _recomputable_bn_relu(bn, relu, channel_axes):
    """True for a trainable, plain BatchNorm (on one replica when synchronized) and a plain
    ReLU: what the TF training paths that recompute a block in the backward support."""
    return (
        isinstance(bn, BatchNormalization)
        and bn.trainable
        and bn.scale
        and bn.center
        and not bn.renorm
        and (not bn.synchronized or _one_replica_in_sync())
        and bn.axis in channel_axes
        and type(relu) is layers.ReLU
        and _plain_relu(relu)
    )


def _plain_conv1d(layer):
    """True for Keras' own channels-last Conv1D with a bias and nothing else (no groups,
    dilation, activation, LoRA or quantization): what the fused paths compute by hand."""
    return (
        type(layer) is layers.Conv1D
        and layer.use_bias
        and layer.groups == 1
        and tuple(layer.dilation_rate) == (1,)
        and layer.padding in ("valid", "same")
        and layer.data_format == "channels_last"
        and layer.activation is keras.activations.linear
        and not getattr(layer, "lora_enabled", False)
        and layer.quantization_mode is None
    )


def _foldable_stem(conv, bn, relu):
    """True for a stem whose training BatchNorm folds into its conv (``_tf_stem_recomputed``,
    ``_torch_folded_stem_train``): a one-channel conv over non-overlapping patches (kernel =
    stride, "valid"), a trainable plain BatchNorm and a plain ReLU."""
    return (
        _plain_conv1d(conv)
        and conv.padding == "valid"
        and tuple(conv.kernel_size) == tuple(conv.strides)
        and conv.kernel.shape[1] == 1
        and _recomputable_bn_relu(bn, relu, (-1, 2))
    )


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
        start = 0
        if self._recomputes_stem(training):
            stem_bn = self.stack[1]
            x, mean, variance = _tf_stem_recomputed(self.stack[0], stem_bn, self.stack[3], x)
            stem_bn.update_moving_statistics(mean, variance)
            start = 4
        fused = self._fused_blocks(training)
        index = start
        while index < len(self.stack):
            layer = self.stack[index]
            if index in fused:  # BatchNorm, ReLU, max pooling: one function (_tf_bn_relu_pool)
                x, mean, variance = _tf_bn_relu_pool(
                    x,
                    layer.gamma,
                    layer.beta,
                    layer.epsilon,
                    self.stack[index + 2].strides[0],
                )
                layer.update_moving_statistics(mean, variance)
                index += 3
                continue
            x = (
                layer(x, training=training)
                if isinstance(layer, layers.BatchNormalization)
                else layer(x)
            )
            index += 1
        return self.flatten(x)

    # Whether a TensorFlow training call may recompute the stem in the backward (see
    # _tf_stem_recomputed); tests switch it off to compare with the layer path.
    recompute_stem = True

    def _recomputes_stem(self, training):
        """True for a float32 TensorFlow training call with the stem and block 1 as built."""
        if not (training and self.recompute_stem and keras.backend.backend() == "tensorflow"):
            return False
        stem_conv, stem_bn, stem_relu, first_conv = self.stack[:4]
        return (
            _foldable_stem(stem_conv, stem_bn, stem_relu)
            and _plain_conv1d(first_conv)
            and all(layer.compute_dtype == "float32" for layer in self.stack[:4])
        )

    # Whether a TensorFlow training call may run each middle block's BatchNorm, ReLU and max
    # pooling as one function (see _tf_bn_relu_pool); tests switch it off to compare.
    fuse_blocks = True

    def _fused_blocks(self, training):
        """Indices in ``stack`` of the BatchNorms whose BatchNorm, ReLU and max pooling run
        as one function: a float32 TensorFlow training call, plain trainable BatchNorm and
        ReLU, non-overlapping channels-last pooling."""
        if not (training and self.fuse_blocks and keras.backend.backend() == "tensorflow"):
            return set()
        fused = set()
        for index, (conv, bn, relu, pool) in enumerate(
            zip(self.stack, self.stack[1:], self.stack[2:], self.stack[3:]), start=1
        ):
            if (
                isinstance(conv, layers.Conv1D)
                and isinstance(pool, layers.MaxPooling1D)
                and tuple(pool.pool_size) == tuple(pool.strides)
                and pool.padding == "valid"
                and pool.data_format == "channels_last"
                and _recomputable_bn_relu(bn, relu, (-1, 2))
                and all(layer.compute_dtype == "float32" for layer in (conv, bn, relu, pool))
            ):
                fused.add(index)
        return fused

    def recomputed_output_floats(self):
        """Floats per view of layer outputs that a training step does not keep for the
        backward (TensorFlow: the stem's conv and ReLU outputs, recomputed there); the
        pretraining step estimate leaves them out. The fused middle blocks (``fuse_blocks``)
        keep no ReLU output either, but they are not left out: the step's peak is in block
        1's backward, whose temporaries the fusion does not remove (its measured peak fell
        by ~0.6 GB at 48 pairs, less than the ~1.1 GB the estimate would subtract)."""
        if not self._recomputes_stem(True):
            return 0
        return 2 * (self.input_samples // self.stack[0].strides[0]) * self.channels[0]

    def _folds_torch_stem(self, training):
        """True in a PyTorch training call whose stem (one-channel conv, kernel = stride,
        "valid"; trainable plain BatchNorm; plain ReLU) folds its BatchNorm into the conv."""
        return bool(training) and _foldable_stem(*self.stack[:3])

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
        A plain ReLU followed by max pooling runs after the pooling, in place (max and ReLU
        commute, and the gradient reaching a window whose maximum is <= 0 is 0 either way): a
        third of the ReLU work and no full-size ReLU output in memory. The layers stay
        channels-last for callers that run ``stack`` themselves. No-grad inference runs with
        glibc keeping freed activations for the next batch (``keras_clmr.torch_memory``: no
        page faults on them, about half of the CPU time otherwise).
        """
        import torch

        from keras_clmr.torch_memory import reusing_freed_memory

        if training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._stack_channels_first(audio, training)
        with reusing_freed_memory():
            return self._stack_channels_first(audio, training, chunk=self.inference_chunk)

    # Windows per chunk for the layers before ``_chunked_layers()`` in no-grad inference; tests
    # set None to compare with the whole-batch path.
    inference_chunk = CHUNK_WINDOWS

    def _stack_channels_first(self, audio, training, chunk=None):
        """``_call_channels_first`` without the allocator scope. With ``chunk`` (inference: all
        BatchNorms folded), the first blocks run on ``chunk`` windows at a time and the rest on
        the whole batch (see ``_chunked_layers``)."""
        import torch

        audio = ops.convert_to_tensor(audio)
        x = torch.reshape(audio, (audio.shape[0], 1, self.input_samples))  # one channel: a view
        split = self._chunked_layers() if chunk and x.shape[0] > chunk else 0
        if split:
            x = torch.cat(
                [self._layers_channels_first(part, 0, split, training) for part in x.split(chunk)]
            )
        x = self._layers_channels_first(x, split, len(self.stack), training)
        return torch.flatten(x, 1)  # [B, C, 1] -> [B, C], as Flatten on [B, 1, C]

    def _chunked_layers(self):
        """How many layers from the stem on run chunk by chunk: the blocks up to the last max
        pooling whose input holds more than CHUNK_FLOATS floats per window (the stem and
        block 1 by default). Why: their activations are 10 MB per window (322 MB per tensor
        at batch 32, several alive at once); a chunk at a time, a batch never holds them whole,
        so peak memory, and the heap that ``reusing_freed_memory`` keeps, shrink (measured at
        batch 32: 0.50 instead of 0.98 GB above the idle process). Smaller batches cost CPU
        time in the convolutions, so the chunks stay at 8 windows and later blocks run on the
        whole batch."""
        shape, split = (1, self.input_samples, 1), 0
        for index, layer in enumerate(self.stack):
            if isinstance(layer, layers.MaxPooling1D) and math.prod(shape) > CHUNK_FLOATS:
                split = index + 1
            shape = layer.compute_output_shape(shape)
        return split

    def _layers_channels_first(self, x, start, stop, training):
        """``self.stack[start:stop]`` on x [B, C, T] (``start`` and ``stop`` at block ends)."""
        import torch

        relu_pending = False  # a plain ReLU not applied yet (it follows the next max pooling)
        folded = set()  # BatchNorms in inference mode, folded into the convolution before them
        first = start
        if start == 0 and self._folds_torch_stem(training):
            x = torch.relu_(_torch_folded_stem_train(self.stack[0], self.stack[1], x))
            first = 3  # stem conv, BatchNorm and ReLU done
        for index in range(first, stop):
            layer = self.stack[index]
            if relu_pending and not isinstance(layer, layers.MaxPooling1D):
                raise TypeError(f"A deferred ReLU must precede max pooling, not {layer.name}.")
            if isinstance(layer, layers.Conv1D):  # bias and "same" padding inside the kernel
                kernel = ops.transpose(layer.kernel, (2, 1, 0))  # [k, in, out] -> [out, in, k]
                bias = layer.bias.value if layer.use_bias else None
                following = self.stack[index + 1] if index + 1 < len(self.stack) else None
                if isinstance(following, layers.BatchNormalization) and not (
                    training and following.trainable
                ):
                    kernel, bias = _fold_torch_batch_norm(following, kernel, bias)
                    folded.add(index + 1)
                x = torch.nn.functional.conv1d(
                    x,
                    kernel,
                    bias,
                    stride=layer.strides,
                    padding="same" if layer.padding == "same" else 0,
                    dilation=layer.dilation_rate,
                )
            elif isinstance(layer, layers.BatchNormalization):
                if index not in folded:
                    x = _torch_batch_norm(layer, x, training=bool(training) and layer.trainable)
            elif isinstance(layer, layers.MaxPooling1D):
                if layer.padding == "valid":
                    x = torch.nn.functional.max_pool1d(x, layer.pool_size, layer.strides)
                else:
                    x = ops.max_pool(
                        x,
                        layer.pool_size,
                        strides=layer.strides,
                        padding=layer.padding,
                        data_format="channels_first",
                    )
                if relu_pending:  # in place: max pooling's backward keeps only its indices
                    x, relu_pending = torch.relu_(x), False
            elif isinstance(layer, layers.ZeroPadding1D):
                x = ops.pad(x, ((0, 0), (0, 0), tuple(layer.padding)))
            elif isinstance(layer, layers.ReLU) and _plain_relu(layer):
                # The BatchNorm output before it is ours and its backward does not read it.
                following = self.stack[index + 1] if index + 1 < len(self.stack) else None
                if isinstance(following, layers.MaxPooling1D):
                    relu_pending = True
                elif index and isinstance(self.stack[index - 1], layers.BatchNormalization):
                    x = torch.relu_(x)
                else:
                    x = torch.relu(x)
            elif isinstance(layer, layers.ReLU):
                x = layer(x)  # elementwise: layout-free
            else:
                raise TypeError(f"No channels-first rule for {type(layer).__name__} {layer.name}.")
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            strides=list(self.strides), channels=list(self.channels), sample_rate=self.sample_rate
        )
        return config
