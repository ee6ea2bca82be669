"""The random high/low-pass filter (julius' windowed-sinc kernels, FFT convolution)."""

import math

import keras
from keras import ops

from keras_clmr.layers.augmentations.base import (
    _fft_convolve,
    _fft_size,
    _ParametricAugmentation,
    _static_length,
)


@keras.saving.register_keras_serializable(package="keras_clmr")
class HighLowPass(_ParametricAugmentation):
    """A coin flip per example between a low-pass (cutoff U(2200, 4000) Hz) and a high-pass
    (cutoff U(200, 1200) Hz, ``x - lowpass(x)``), as torchaudio-augmentations 0.2.4.

    The filter is julius' windowed sinc: Hann window, ``zeros`` zero crossings, half size
    ``int(zeros / (cutoff / sr) / 2)`` (883 taps at 200 Hz), normalised to unit sum, with
    replicate padding. Each example gets its own kernel; all are applied in one batched FFT
    convolution (exact linear convolution, no wrap-around). The original flips the coin with
    ``random.randint(0, 1)`` (0: high-pass) and draws float cutoffs, as here.
    """

    def __init__(
        self,
        sample_rate=22050,
        lowpass_freq_low=2200.0,
        lowpass_freq_high=4000.0,
        highpass_freq_low=200.0,
        highpass_freq_high=1200.0,
        zeros=8,
        seed=None,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        self.sample_rate = int(sample_rate)
        self.lowpass_freq_low = float(lowpass_freq_low)
        self.lowpass_freq_high = float(lowpass_freq_high)
        self.highpass_freq_low = float(highpass_freq_low)
        self.highpass_freq_high = float(highpass_freq_high)
        self.zeros = float(zeros)
        nyquist = self.sample_rate / 2
        for low, high, kind in (
            (self.lowpass_freq_low, self.lowpass_freq_high, "lowpass"),
            (self.highpass_freq_low, self.highpass_freq_high, "highpass"),
        ):
            if not 0 < low <= high < nyquist:
                raise ValueError(
                    f"HighLowPass needs 0 < {kind}_freq_low <= {kind}_freq_high < sample_rate / 2 "
                    f"= {nyquist}, got {low}, {high}."
                )
        self.max_half_size = int(
            self.zeros / (min(self.lowpass_freq_low, self.highpass_freq_low) / self.sample_rate) / 2
        )

    def draw(self, batch):
        u = keras.random.uniform((batch, 3), seed=self.seed_generator)
        highpass = u[:, 0] < 0.5
        hp = self.highpass_freq_low + (self.highpass_freq_high - self.highpass_freq_low) * u[:, 1]
        lp = self.lowpass_freq_low + (self.lowpass_freq_high - self.lowpass_freq_low) * u[:, 2]
        return {"cutoff_hz": ops.where(highpass, hp, lp), "highpass": highpass}

    def kernels(self, cutoff_hz):
        """julius' low-pass kernels [B, 2 * max_half_size + 1], zero outside each half size."""
        cutoff = ops.cast(cutoff_hz, "float32")[:, None] / self.sample_rate
        half = ops.floor(self.zeros / cutoff / 2.0)
        t = ops.arange(-self.max_half_size, self.max_half_size + 1, dtype="float32")[None, :]
        window = ops.where(ops.abs(t) <= half, 0.5 + 0.5 * ops.cos(math.pi * t / half), 0.0)
        arg = 2.0 * math.pi * cutoff * t
        sinc = ops.where(t == 0, 1.0, ops.sin(arg) / ops.where(t == 0, 1.0, arg))
        kernel = 2.0 * cutoff * window * sinc
        return kernel / ops.sum(kernel, axis=1, keepdims=True)

    def lowpass(self, audio, cutoff_hz):
        length = _static_length(audio, "HighLowPass")
        half = self.max_half_size
        # Replicate padding by the largest half size equals julius' padding by each example's own
        # half size: the kernel is zero beyond it.
        padded = ops.concatenate(
            [
                ops.repeat(audio[:, :1], half, axis=1),
                audio,
                ops.repeat(audio[:, -1:], half, axis=1),
            ],
            axis=1,
        )
        full = _fft_convolve(padded, self.kernels(cutoff_hz), _fft_size(length + 2 * half))
        return full[:, 2 * half : 2 * half + length]

    def transform(self, audio, cutoff_hz, highpass):
        low = self.lowpass(audio, cutoff_hz)
        return ops.where(ops.reshape(highpass, (-1, 1)), audio - low, low)

    def get_config(self):
        config = super().get_config()
        config.update(
            sample_rate=self.sample_rate,
            lowpass_freq_low=self.lowpass_freq_low,
            lowpass_freq_high=self.lowpass_freq_high,
            highpass_freq_low=self.highpass_freq_low,
            highpass_freq_high=self.highpass_freq_high,
            zeros=self.zeros,
        )
        return config
