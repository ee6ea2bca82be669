"""The augmentation base classes and the FFT helpers the transforms share (keras.ops only)."""

import keras
from keras import ops


class AudioAugmentation(keras.layers.Layer):
    """Base class: a seeded, per-example random transform of [B, T] audio.

    Subclasses implement ``augment(audio)``. The transform runs when the layer is called
    with ``training=True`` or, outside a training context, whenever it is called
    directly (``training=None``); ``training=False`` makes it the identity.
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False

    def augment(self, audio):
        raise NotImplementedError

    def call(self, audio, training=None):
        if training is False:
            return audio
        return self.augment(audio)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed)
        return config


class _ParametricAugmentation(AudioAugmentation):
    """An augmentation split into ``draw(batch)`` (random parameters, one per example) and a
    deterministic ``transform(audio, **params)``, so tests can call the maths with fixed values."""

    def draw(self, batch):
        raise NotImplementedError

    def transform(self, audio, **params):
        raise NotImplementedError

    def augment(self, audio):
        dtype = audio.dtype
        x = ops.cast(audio, "float32")
        params = self.draw(ops.shape(x)[0])
        return ops.cast(self.transform(x, **params), dtype)


def _fft_size(minimum):
    """The smallest power of two >= minimum (fastest FFT size on every backend's CPU FFT)."""
    return 1 << max(int(minimum) - 1, 0).bit_length()


def _smooth_fft_size(minimum):
    """The smallest 2^a 3^b 5^c >= minimum: the CPU FFTs of every backend (DUCC, pocketfft) run
    such sizes at about a power of two's cost per sample, and there are up to 1.7x fewer
    samples than in the next power of two."""
    minimum = max(int(minimum), 1)
    best = _fft_size(minimum)
    five = 1
    while five < best:
        three = five
        while three < best:
            size = three
            while size < minimum:
                size *= 2
            best = min(best, size)
            three *= 3
        five *= 5
    return best


def _static_length(audio, name):
    if len(audio.shape) != 2:
        raise ValueError(
            f"{name} expects mono audio [batch, samples], got shape {tuple(audio.shape)}."
        )
    length = audio.shape[1]
    if length is None:
        raise ValueError(f"{name} needs a static number of samples (crop to a fixed length first).")
    return int(length)


def _fft_convolve(signal, kernel, fft_length):
    """Circular convolution of two real [B, *] batches via the FFT (zero-padded to fft_length)."""
    sr, si = ops.rfft(signal, fft_length)
    kr, ki = ops.rfft(kernel, fft_length)
    return ops.irfft((sr * kr - si * ki, sr * ki + si * kr), fft_length)
