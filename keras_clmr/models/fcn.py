"""FCN: PEMR's encoder, a small 2-D CNN on a torchaudio-exact log-mel spectrogram."""

import keras
from keras import layers, ops

from keras_clmr.layers.frontends import LogMelSpectrogram
from keras_clmr.layers.initializers import (
    BN_EPSILON,
    BN_MOMENTUM,
    torch_default_bias_initializer,
    torch_default_kernel_initializer,
)
from keras_clmr.models.backbone import Backbone
from keras_clmr.models.sample_cnn import (  # fused on TF training (memory)
    BatchNormalization,
    _after,
    _recomputable_bn_relu,
    _tf_fused_batch_norm_train,
)

DEFAULT_CHANNELS = (64, 128, 128, 128)
DEFAULT_POOLS = ((2, 4), (2, 4), (2, 4), (4, 5))


@keras.saving.register_keras_serializable(package="keras_clmr")
class FCN(Backbone):
    """PEMR's encoder: audio [B, input_samples] -> log-mel -> BN -> 4 conv blocks -> [B, 512].

    The default configuration is the official PEMR encoder: 59049 samples at 22050 Hz ->
    ``LogMelSpectrogram(n_fft=256, hop_length=128, n_mels=128)`` (462 frames x 128 bins, mel
    filterbank built at torchaudio's default 16 kHz as in the official code, see
    ``mel_sample_rate``) -> ``spec_bn`` (BatchNorm over the single spectrogram channel) ->
    four blocks ``layer{i}`` of Conv2D 3x3 "same" + BN + ReLU + MaxPool with channels
    64/128/128/128 and pools (2,4),(2,4),(2,4),(4,5) over (freq, time) -> 128 x 4 x 1,
    flattened in PyTorch's (channel, freq, time) order to 512. 370,562 trainable parameters
    (+898 BN running statistics), the same as the original's ``sum(p.numel())``.

    Layer names follow the PyTorch state dict: ``spec_bn``, ``layer{i}.conv`` ->
    ``layer{i}_conv``, ``layer{i}.bn`` -> ``layer{i}_bn``. BatchNorm uses PyTorch's eps 1e-5
    and momentum 0.1; convolutions use PyTorch's default init.

    Args:
        channels: output channels of the four blocks.
        pools: (freq, time) max-pool sizes of the four blocks.
        input_samples: audio window length.
        sample_rate: the sample rate of the audio the model expects (metadata).
        n_fft, hop_length, n_mels: the log-mel frontend.
        mel_sample_rate: the rate used to build the mel filterbank (16000 in PEMR's code,
            although its audio is 22050 Hz; keep it for checkpoint compatibility).
    """

    def __init__(
        self,
        channels=DEFAULT_CHANNELS,
        pools=DEFAULT_POOLS,
        input_samples=59049,
        sample_rate=22050,
        n_fft=256,
        hop_length=128,
        n_mels=128,
        mel_sample_rate=16000,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.channels = tuple(int(c) for c in channels)
        self.pools = tuple(tuple(int(p) for p in pool) for pool in pools)
        if len(self.channels) != len(self.pools) or not self.channels:
            raise ValueError(
                f"FCN needs one (freq, time) pool per block: got {len(self.channels)} channel "
                f"widths {self.channels} and {len(self.pools)} pools {self.pools}."
            )
        if any(len(p) != 2 or min(p) < 1 for p in self.pools):
            raise ValueError(
                f"Each FCN pool must be a (freq, time) pair of positive ints, got {self.pools}."
            )
        self.input_samples = int(input_samples)
        self.sample_rate = int(sample_rate)
        self.mel_sample_rate = int(mel_sample_rate)
        self.frontend = LogMelSpectrogram(
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
            sample_rate=mel_sample_rate,
            name="frontend",
        )
        self.n_mels = self.frontend.n_mels
        self.num_frames = self.frontend.num_frames(self.input_samples)
        freq, time = self.n_mels, self.num_frames
        for pool_f, pool_t in self.pools:
            freq, time = freq // pool_f, time // pool_t
        if freq < 1 or time < 1:
            raise ValueError(
                f"FCN pools {self.pools} reduce the {self.n_mels} x {self.num_frames} log-mel of "
                f"{self.input_samples} samples to nothing: use longer input, more mels or smaller "
                "pools."
            )
        self.output_grid = (freq, time)
        self.embedding_dim = self.channels[-1] * freq * time

        self.spec_bn = BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="spec_bn")
        self.blocks = []
        in_channels = 1
        for i, (width, pool) in enumerate(zip(self.channels, self.pools), start=1):
            self.blocks.append(
                [
                    layers.Conv2D(
                        width,
                        3,
                        padding="same",
                        name=f"layer{i}_conv",
                        kernel_initializer=torch_default_kernel_initializer(),
                        bias_initializer=torch_default_bias_initializer(9 * in_channels),
                    ),
                    BatchNormalization(
                        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"layer{i}_bn"
                    ),
                    layers.ReLU(name=f"layer{i}_relu"),
                    layers.MaxPooling2D(pool, name=f"layer{i}_pool"),
                ]
            )
            in_channels = width
        # The input shape is fixed by the config: build now so weights exist before the first call.
        self.build((None, self.input_samples))

    def _check_audio(self, shape):
        if len(shape) != 2:
            raise ValueError(
                f"FCN expects mono audio shaped [batch, {self.input_samples}], got shape "
                f"{tuple(shape)}."
            )
        if shape[1] is not None and shape[1] != self.input_samples:
            raise ValueError(
                f"FCN expects exactly {self.input_samples} samples per window "
                f"({self.input_samples / self.sample_rate:.2f} s at {self.sample_rate} Hz), got "
                f"{shape[1]}. "
                f"Crop or window the audio first (keras_clmr.inference.embed does this)."
            )

    def _check_spectrogram(self, shape):
        expected = (self.n_mels, self.num_frames)
        if len(shape) != 3 or tuple(shape[1:]) != expected:
            raise ValueError(
                f"FCN.embed_spectrogram expects log-mel [batch, {expected[0]}, {expected[1]}] "
                f"(mels, frames), got shape {tuple(shape)}."
            )

    def build(self, input_shape):
        self._check_audio(input_shape)
        self.frontend.build(input_shape)
        shape = (input_shape[0], self.n_mels, self.num_frames, 1)
        self.spec_bn.build(shape)
        for block in self.blocks:
            for layer in block:
                layer.build(shape)
                shape = layer.compute_output_shape(shape)
        self.built = True

    def spectrogram(self, audio):
        """The log-mel [B, n_mels, frames] (dB) that the CNN sees."""
        self._check_audio(audio.shape)
        return self.frontend(audio)

    def embed_spectrogram(self, spectrogram, training=None):
        """The CNN part: log-mel [B, n_mels, frames] -> embedding [B, embedding_dim]."""
        self._check_spectrogram(spectrogram.shape)
        x = self.spec_bn(ops.expand_dims(spectrogram, -1), training=training)
        blocks = self.blocks
        if self._recomputes_first_block(training):
            conv, bn, _, pool = self.blocks[0]
            x, mean, variance = _tf_first_block_recomputed(conv, bn, pool, x)
            bn.update_moving_statistics(mean, variance)
            blocks = self.blocks[1:]
        for conv, bn, relu, pool in blocks:
            # ReLU commutes with max-pooling (both monotone): pooling first gives the same
            # values and gradients with the ReLU on 1/8 of the elements (the largest tensors).
            x = relu(pool(bn(conv(x), training=training)))
        # PyTorch flattens (channel, freq, time); keep that order so 512-d heads transfer.
        x = ops.transpose(x, (0, 3, 1, 2))
        return ops.reshape(x, (ops.shape(x)[0], self.embedding_dim))

    # Whether a TensorFlow training call may recompute block 1 in the backward (see
    # _tf_first_block_recomputed); tests switch it off to compare with the layer path.
    recompute_first_block = True

    def _recomputes_first_block(self, training):
        """True for a float32 TensorFlow training call with block 1 as built."""
        if not (
            training and self.recompute_first_block and keras.backend.backend() == "tensorflow"
        ):
            return False
        conv, bn, relu, pool = self.blocks[0]
        return (
            type(conv) is layers.Conv2D
            and conv.use_bias
            and conv.groups == 1
            and tuple(conv.strides) == (1, 1)
            and tuple(conv.dilation_rate) == (1, 1)
            and conv.padding in ("valid", "same")
            and conv.data_format == "channels_last"
            and conv.activation is keras.activations.linear
            and not getattr(conv, "lora_enabled", False)
            and conv.quantization_mode is None
            and _recomputable_bn_relu(bn, relu, (-1, 3))
            and type(pool) is layers.MaxPooling2D
            and pool.data_format == "channels_last"
            and all(layer.compute_dtype == "float32" for layer in self.blocks[0])
        )

    def recomputed_output_floats(self):
        """Floats per view of layer outputs that a training step does not keep for the
        backward (TensorFlow: block 1's conv and BatchNorm outputs, recomputed there); the
        pretraining step estimate leaves them out."""
        if not self._recomputes_first_block(True):
            return 0
        conv = self.blocks[0][0]
        _, freq, time, channels = conv.compute_output_shape((1, self.n_mels, self.num_frames, 1))
        return 2 * freq * time * channels

    def call(self, audio, training=None):
        return self.embed_spectrogram(self.spectrogram(audio), training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=list(self.channels),
            pools=[list(p) for p in self.pools],
            input_samples=self.input_samples,
            sample_rate=self.sample_rate,
            n_fft=self.frontend.n_fft,
            hop_length=self.frontend.hop_length,
            n_mels=self.n_mels,
            mel_sample_rate=self.mel_sample_rate,
        )
        return config


def _tf_first_block_recomputed(conv, bn, pool, x):
    """Block 1 (conv, BatchNorm, max-pool, ReLU) keeping only its input x for the gradient
    (TensorFlow, training). Returns the block output and the BatchNorm batch mean, variance.

    Why: block 1's conv and BatchNorm outputs are full-resolution [B, mels, frames, 64]
    (15 MB per view each at PEMR's defaults), the largest tensors the gradient keeps; its
    input has one channel. The backward recomputes the block (a 9-tap, 1-channel
    convolution, a BatchNorm and a pool: a few % of the step) from x, so neither tensor
    lives from the forward to the backward. Same ops and gradients as the layer path; the
    caller updates the moving statistics (once per call).
    """
    import tensorflow as tf

    padding = conv.padding.upper()
    pool_size = tuple(pool.pool_size)
    pool_strides = tuple(pool.strides)
    pool_padding = pool.padding.upper()
    epsilon = bn.epsilon

    def block(x, kernel, bias, gamma, beta):
        z = tf.nn.convolution(x, kernel, 1, padding, data_format="NHWC")
        y, mean, variance = _tf_fused_batch_norm_train(z + bias, gamma, beta, epsilon)
        pooled = tf.nn.max_pool2d(y, pool_size, pool_strides, pool_padding, data_format="NHWC")
        return tf.nn.relu(pooled), mean, variance

    @tf.custom_gradient
    def first_block(x, kernel, bias, gamma, beta):
        outputs, mean, variance = block(x, kernel, bias, gamma, beta)

        def grad(outputs_grad, mean_grad=None, variance_grad=None):
            # The statistics only feed the moving averages: no gradient flows through them.
            inputs = [_after(x, outputs_grad), kernel, bias, gamma, beta]
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                recomputed, _, _ = block(*inputs)
            return tape.gradient(recomputed, inputs, output_gradients=outputs_grad)

        return (outputs, mean, variance), grad

    return first_block(
        x,
        tf.convert_to_tensor(conv.kernel),
        tf.convert_to_tensor(conv.bias),
        tf.convert_to_tensor(bn.gamma),
        tf.convert_to_tensor(bn.beta),
    )
