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
from keras_clmr.models.sample_cnn import BatchNormalization  # fused on TF training (memory)

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
        for conv, bn, relu, pool in self.blocks:
            # ReLU commutes with max-pooling (both monotone): pooling first gives the same
            # values and gradients with the ReLU on 1/8 of the elements (the largest tensors).
            x = relu(pool(bn(conv(x), training=training)))
        # PyTorch flattens (channel, freq, time); keep that order so 512-d heads transfer.
        x = ops.transpose(x, (0, 3, 1, 2))
        return ops.reshape(x, (ops.shape(x)[0], self.embedding_dim))

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
