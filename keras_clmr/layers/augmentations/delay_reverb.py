"""Delay (static shifts) and reverb (libsox's Freeverb as its exact transfer function)."""

import math

import keras
import numpy as np
from keras import ops

from keras_clmr.layers.augmentations.base import (
    _fft_size,
    _ParametricAugmentation,
    _static_length,
)


@keras.saving.register_keras_serializable(package="keras_clmr")
class Delay(_ParametricAugmentation):
    """``y = (x + volume_factor * delayed(x)) / 2`` with a delay drawn per example from
    ``range(min_delay, max_delay, delay_interval)`` ms ({200, 250, ..., 450}), offset
    ``int(ms * sr / 1000)`` samples, zero-padded at the front (as the original)."""

    def __init__(
        self,
        sample_rate=22050,
        volume_factor=0.5,
        min_delay=200,
        max_delay=500,
        delay_interval=50,
        seed=None,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        self.sample_rate = int(sample_rate)
        self.volume_factor = float(volume_factor)
        self.min_delay = int(min_delay)
        self.max_delay = int(max_delay)
        self.delay_interval = int(delay_interval)
        self.delays_ms = [
            int(ms) for ms in np.arange(self.min_delay, self.max_delay, self.delay_interval)
        ]
        if not self.delays_ms or self.delays_ms[0] <= 0:
            raise ValueError(
                f"Delay needs 0 < min_delay < max_delay and delay_interval > 0, got "
                f"{min_delay}, {max_delay}, {delay_interval}."
            )
        self.offsets = [int(ms * (self.sample_rate / 1000)) for ms in self.delays_ms]

    def draw(self, batch):
        return {
            "choice": keras.random.randint((batch,), 0, len(self.offsets), seed=self.seed_generator)
        }

    def transform(self, audio, choice):
        length = _static_length(audio, "Delay")
        choice = ops.reshape(ops.cast(choice, "int32"), (-1, 1))
        delayed = ops.zeros_like(audio)
        # A handful of static shifts selected per example: cheaper under XLA than a gather.
        for i, offset in enumerate(self.offsets):
            if offset >= length:
                continue
            shifted = ops.pad(audio[:, : length - offset], [[0, 0], [offset, 0]])
            delayed = ops.where(choice == i, shifted, delayed)
        return (audio + self.volume_factor * delayed) / 2.0

    def get_config(self):
        config = super().get_config()
        config.update(
            sample_rate=self.sample_rate,
            volume_factor=self.volume_factor,
            min_delay=self.min_delay,
            max_delay=self.max_delay,
            delay_interval=self.delay_interval,
        )
        return config


# libsox 14.4.2 reverb.c (Freeverb): comb and allpass delays in samples at 44.1 kHz, the stereo
# spread of the second channel's delays and the wet gain of the filter array.
_SOX_COMB_LENGTHS = (1116, 1188, 1277, 1356, 1422, 1491, 1557, 1617)
_SOX_ALLPASS_LENGTHS = (225, 341, 441, 556)
_SOX_STEREO_ADJUST = 12
_SOX_WET_SCALE = 0.015


def _sox_delays(lengths, rate_scale, offset):
    """``r * (length + 12 * offset)`` per filter, the offset's sign flipping from one filter to
    the next (sox's filter_array_create, which rounds ``scale *`` that); returns (delays, the
    offset after the last filter)."""
    delays = []
    for length in lengths:
        delays.append(rate_scale * (length + _SOX_STEREO_ADJUST * offset))
        offset = -offset
    return delays, offset


def _complex_multiply(a, b):
    return a[0] * b[0] - a[1] * b[1], a[0] * b[1] + a[1] * b[0]


# The delay spectra u^-N are built from two small tables per comb: u^-N at bin k = row * 256 + col
# is (coarse twiddle of the row) * (fine twiddle of the column). No sine or cosine per bin.
_TWIDDLE_BLOCK = 256


def _turns(k, size, fft_length):
    """(k * size) mod fft_length in int32 without overflow (size split in bytes)."""
    high, low = size // 256, size % 256
    return (((k * high) % fft_length) * 256 + k * low) % fft_length


def _inverse_delay_twiddles(sizes, fft_length, log_window, rows):
    """u^-N = exp(log_window * N) * exp(2 pi i k N / fft_length) for delays N [B, D] on the bins
    k = row * _TWIDDLE_BLOCK + col, as two tables: coarse (real, imag) [B, D, rows] (the
    magnitude included) and fine (real, imag) [B, D, _TWIDDLE_BLOCK]. The phases are reduced
    exactly in int32 maths, so float32 keeps them accurate."""
    sizes = sizes[:, :, None]
    step = 2.0 * math.pi / fft_length
    coarse = ops.arange(rows, dtype="int32")[None, None, :] * _TWIDDLE_BLOCK
    fine = ops.arange(_TWIDDLE_BLOCK, dtype="int32")[None, None, :]
    coarse_phase = ops.cast(_turns(coarse, sizes, fft_length), "float32") * step
    fine_phase = ops.cast(_turns(fine, sizes, fft_length), "float32") * step
    magnitude = ops.exp(log_window * ops.cast(sizes, "float32"))
    return (
        (magnitude * ops.cos(coarse_phase), magnitude * ops.sin(coarse_phase)),
        (ops.cos(fine_phase), ops.sin(fine_phase)),
    )


@keras.saving.register_keras_serializable(package="keras_clmr")
class Reverb(_ParametricAugmentation):
    """libsox 14.4.2's ``reverb R D S`` followed by ``channels 1`` (torchaudio-augmentations'
    Reverb), with reverberance R, HF damping D and room size S drawn per example as integers in
    [min, max) (the original's ``torch.randint(0, 100)``); output length preserved.

    sox runs Freeverb sample by sample: per stereo channel 8 feedback combs with a one-pole
    low-pass in the loop (lengths scaled by the room size, feedback from the reverberance,
    damping from D) summed into 4 sox "allpass" stages, times ``0.015 * wet gain``; the dry
    signal plus the mean of the two channels' wet parts is the output. The filters are linear
    and time-invariant, so here their exact transfer function is evaluated on the FFT grid and
    applied to the clip in one batched FFT (exponentially windowed so that the long tail does
    not wrap around; ``epsilon`` is the wrap-around attenuation). Deviation: sox clips each
    stereo channel to [-1, 1] before averaging, here the mono sum is clipped.
    """

    def __init__(
        self,
        sample_rate=22050,
        reverberance_min=0,
        reverberance_max=100,
        dumping_factor_min=0,
        dumping_factor_max=100,
        room_size_min=0,
        room_size_max=100,
        wet_gain_db=0.0,
        stereo_depth=100.0,
        pre_delay_ms=0.0,
        epsilon=1e-3,
        seed=None,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        self.sample_rate = int(sample_rate)
        self.reverberance_min, self.reverberance_max = int(reverberance_min), int(reverberance_max)
        self.dumping_factor_min, self.dumping_factor_max = (
            int(dumping_factor_min),
            int(dumping_factor_max),
        )
        self.room_size_min, self.room_size_max = int(room_size_min), int(room_size_max)
        for name, low, high in (
            ("reverberance", self.reverberance_min, self.reverberance_max),
            ("dumping_factor", self.dumping_factor_min, self.dumping_factor_max),
            ("room_size", self.room_size_min, self.room_size_max),
        ):
            if not 0 <= low < high <= 100:
                raise ValueError(
                    f"Reverb needs 0 <= {name}_min < {name}_max <= 100, got {low}, {high}."
                )
        self.wet_gain_db = float(wet_gain_db)
        self.stereo_depth = float(stereo_depth)
        if not 0 <= self.stereo_depth <= 100:
            raise ValueError(
                f"Reverb needs 0 <= stereo_depth <= 100 (sox's %), got {stereo_depth}."
            )
        self.pre_delay_ms = float(pre_delay_ms)
        if not 0 <= self.pre_delay_ms <= 500:
            raise ValueError(f"Reverb needs 0 <= pre_delay_ms <= 500 (as sox), got {pre_delay_ms}.")
        self.epsilon = float(epsilon)
        if not 0 < self.epsilon < 1:
            raise ValueError(f"Reverb needs 0 < epsilon < 1, got {epsilon}.")

    def draw(self, batch):
        def randint(low, high):
            return keras.random.randint((batch,), low, high, seed=self.seed_generator)

        return {
            "reverberance": randint(self.reverberance_min, self.reverberance_max),
            "damping": randint(self.dumping_factor_min, self.dumping_factor_max),
            "room_size": randint(self.room_size_min, self.room_size_max),
        }

    def _channel_offsets(self):
        """sox's per-channel delay offsets: one filter array for mono, two (0 and the depth)
        when stereo_depth > 0 (a mono input then gives stereo output)."""
        depth = self.stereo_depth / 100.0
        return [0.0] if depth == 0 else [0.0, depth]

    def comb_lengths(self, room_size):
        """The 8 comb delays per channel [B, channels, 8] (int32) for room sizes [B], as sox."""
        room_scale = ops.cast(room_size, "float32")[:, None, None] / 100.0 * 0.9 + 0.1
        rate_scale = self.sample_rate / 44100.0
        per_channel = [
            _sox_delays(_SOX_COMB_LENGTHS, rate_scale, offset)[0]
            for offset in self._channel_offsets()
        ]  # [channels, 8] at room scale 1
        sizes = ops.convert_to_tensor(np.array(per_channel, "float32"))[None]
        # Same floats as sox's double maths for every integer room size (checked in the tests).
        return ops.cast(ops.floor(room_scale * sizes + 0.5), "int32")

    def _fixed_response(self, fft_length, log_window):
        """The allpass stages times the pre-delay, per channel, on the FFT grid ([channels, K]
        float64 real and imaginary parts): they do not depend on the random draws."""
        u = np.exp(-log_window) * np.exp(-2j * np.pi * np.arange(fft_length // 2 + 1) / fft_length)
        pre_delay = int(self.pre_delay_ms / 1000 * self.sample_rate + 0.5)
        rate_scale = self.sample_rate / 44100.0
        responses = []
        for offset in self._channel_offsets():
            offset = _sox_delays(_SOX_COMB_LENGTHS, rate_scale, offset)[1]
            delays, _ = _sox_delays(_SOX_ALLPASS_LENGTHS, rate_scale, offset)
            response = u**pre_delay
            for delay in delays:
                power = u ** int(delay + 0.5)  # sox: out = buf - in, buf = in + 0.5 * buf
                response = response * (power / (1.0 - 0.5 * power) - 1.0)
            responses.append(response)
        return np.stack(responses)

    def frequency_response(self, fft_length, reverberance, damping, room_size, log_window=0.0):
        """The mono wet transfer function at ``exp(log_window) * exp(2 pi i k / fft_length)``
        (the DFT of the wet impulse response times ``exp(-log_window * t)``, wrapped around every
        fft_length samples), as (real, imag) [B, fft_length // 2 + 1] float32."""
        if fft_length > 1 << 22:
            raise ValueError(
                f"Reverb supports FFTs up to 2**22 samples (clips up to ~3 minutes at 22.05 kHz), "
                f"got {fft_length}: crop the audio first."
            )
        # Bins k = row * _TWIDDLE_BLOCK + col as [B, rows, _TWIDDLE_BLOCK] (padded past the last
        # bin, cut at the end).
        bins = fft_length // 2 + 1
        rows = -(-bins // _TWIDDLE_BLOCK)
        reverberance = ops.cast(reverberance, "float32")[:, None, None]
        damping = ops.cast(damping, "float32")[:, None, None]
        a = -1.0 / math.log(1.0 - 0.3)  # feedback 0.3 at reverberance 0
        b = 100.0 / (math.log(1.0 - 0.98) * a + 1.0)  # and 0.98 at 100
        feedback = 1.0 - ops.exp((reverberance - b) / (a * b))  # [B, 1, 1]
        hf_damping = damping / 100.0 * 0.3 + 0.2
        k = np.arange(rows * _TWIDDLE_BLOCK).reshape(rows, _TWIDDLE_BLOCK)
        radius = math.exp(-log_window)
        # The comb loop's low-pass, P(u) = (1 - d) / (1 - d u) with u = radius * exp(-i w).
        u = (
            ops.convert_to_tensor((radius * np.cos(2 * np.pi * k / fft_length)).astype("float32")),
            ops.convert_to_tensor((-radius * np.sin(2 * np.pi * k / fft_length)).astype("float32")),
        )
        den = (1.0 - hf_damping * u[0][None], -hf_damping * u[1][None])
        den_sq = ops.square(den[0]) + ops.square(den[1])
        gain = feedback * (1.0 - hf_damping)  # f (1 - d)
        loop = (gain * den[0] / den_sq, -gain * den[1] / den_sq)  # f P(u), [B, rows, block]
        sizes = self.comb_lengths(room_size)  # [B, C, 8]
        channels, per_channel = sizes.shape[1], sizes.shape[2]
        coarse, fine = _inverse_delay_twiddles(
            ops.reshape(sizes, (-1, channels * per_channel)), fft_length, log_window, rows
        )
        fixed = self._fixed_response(fft_length, log_window)
        fixed = np.pad(fixed, [(0, 0), (0, rows * _TWIDDLE_BLOCK - bins)])
        fixed = fixed.reshape(len(fixed), rows, _TWIDDLE_BLOCK)
        wet = 10.0 ** (self.wet_gain_db / 20.0) * _SOX_WET_SCALE / len(fixed)
        total = (0.0, 0.0)
        for channel in range(channels):
            combs = (0.0, 0.0)
            for comb in range(per_channel):
                i = channel * per_channel + comb
                c_re, c_im = coarse[0][:, i, :, None], coarse[1][:, i, :, None]
                f_re, f_im = fine[0][:, i, None, :], fine[1][:, i, None, :]
                # A comb, u^N / (1 - f P(u) u^N) = 1 / (u^-N - f P(u)).
                d_re = c_re * f_re - c_im * f_im - loop[0]
                d_im = c_re * f_im + c_im * f_re - loop[1]
                # 1 / d with the real and imaginary parts each dividing by its own (equal) norm:
                # a shared reciprocal makes XLA write it out per comb; this way all 16 combs
                # run in one fused pass over the bins (30x less CPU, measured).
                combs = (
                    combs[0] + d_re / (d_re * d_re + d_im * d_im),
                    combs[1] - d_im / (d_im * d_im + d_re * d_re),
                )
            fixed_channel = (
                ops.convert_to_tensor((wet * fixed[channel].real).astype("float32"))[None],
                ops.convert_to_tensor((wet * fixed[channel].imag).astype("float32"))[None],
            )
            channel_response = _complex_multiply(combs, fixed_channel)
            total = (total[0] + channel_response[0], total[1] + channel_response[1])
        return tuple(ops.reshape(part, (-1, rows * _TWIDDLE_BLOCK))[:, :bins] for part in total)

    def impulse_response(self, length, reverberance, damping, room_size, log_window=0.0):
        """The wet part [B, length] of the responses (the dry impulse is added separately),
        times ``exp(-log_window * t)``: the inverse FFT of the transfer function on a grid of
        at least twice the length, damped by 1e-5 over it so that the tail beyond does not
        wrap around (a 1e-5 relative error), the damping undone after."""
        fft_length = _fft_size(2 * length)
        extra = math.log(1e5) / fft_length
        spectrum = self.frequency_response(
            fft_length, reverberance, damping, room_size, log_window + extra
        )
        undamp = np.exp(extra * np.arange(length, dtype=np.float64)).astype("float32")
        return ops.irfft(spectrum, fft_length)[:, :length] * ops.convert_to_tensor(undamp)[None]

    def transform(self, audio, reverberance, damping, room_size):
        length = _static_length(audio, "Reverb")
        fft_length = _fft_size(int(math.ceil(1.05 * length)))
        log_window = math.log(1.0 / self.epsilon) / fft_length
        t = np.arange(length, dtype=np.float64)
        window = ops.convert_to_tensor(np.exp(-log_window * t).astype("float32"))[None, :]
        unwindow = ops.convert_to_tensor(np.exp(log_window * t).astype("float32"))[None, :]
        response = self.frequency_response(fft_length, reverberance, damping, room_size, log_window)
        spectrum = _complex_multiply(ops.rfft(audio * window, fft_length), response)
        wet = ops.irfft(spectrum, fft_length)[:, :length] * unwindow
        return ops.clip(audio + wet, -1.0, 1.0)

    def get_config(self):
        config = super().get_config()
        config.update(
            sample_rate=self.sample_rate,
            reverberance_min=self.reverberance_min,
            reverberance_max=self.reverberance_max,
            dumping_factor_min=self.dumping_factor_min,
            dumping_factor_max=self.dumping_factor_max,
            room_size_min=self.room_size_min,
            room_size_max=self.room_size_max,
            wet_gain_db=self.wet_gain_db,
            stereo_depth=self.stereo_depth,
            pre_delay_ms=self.pre_delay_ms,
            epsilon=self.epsilon,
        )
        return config
