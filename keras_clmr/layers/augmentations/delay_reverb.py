"""Delay (static shifts) and reverb (sox's Freeverb as a synthetic impulse response)."""

import math

import keras
import numpy as np
from keras import ops

from keras_clmr.layers.augmentations.base import (
    _fft_convolve,
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


def _exp_ramp(rate, length, block=256):
    """exp(rate * t) for t in [0, length) and per-example rates [B, 1], from B * (length / block
    + block) exps instead of B * length (exps are slow on XLA's CPU backend)."""
    blocks = -(-length // block)
    coarse = ops.exp(rate * (block * ops.arange(blocks, dtype="float32"))[None, :])
    fine = ops.exp(rate * ops.arange(block, dtype="float32")[None, :])
    ramp = coarse[:, :, None] * fine[:, None, :]
    return ops.reshape(ramp, (-1, blocks * block))[:, :length]


# sox reverb.c (Freeverb): comb lengths at 44.1 kHz and the wet gain of its filter array.
_SOX_COMB_LENGTHS = (1116, 1188, 1277, 1356, 1422, 1491, 1557, 1617)
_SOX_WET_SCALE = 0.015
# sox's "allpass" stages (out = buf - in, buf = in + 0.5 buf) are not allpass: each multiplies
# the mean energy by 7/3; the two decorrelated stereo channels averaged to mono halve it. This
# matches sox's tail energy within ~25% (libsox 14.4.2 impulse responses, see the tests).
_REVERB_ENERGY_SCALE = (7.0 / 3.0) ** 4 / 2.0
_REVERB_BAND_EDGES_HZ = (250.0, 700.0, 1600.0, 3500.0, 7000.0)


@keras.saving.register_keras_serializable(package="keras_clmr")
class Reverb(_ParametricAugmentation):
    """Reverb with reverberance, damping and room size drawn per example as integers in
    [min, max) (the original's ``torch.randint(0, 100)``), output length preserved.

    Deviation: the original runs libsox ``reverb`` sample by sample; here each example is
    convolved (one batched FFT) with a synthetic sox-like impulse response, output clipped to
    [-1, 1]. The model and its measured error against sox are in docs/fidelity.md.
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
        self.epsilon = float(epsilon)
        if not 0 < self.epsilon < 1:
            raise ValueError(f"Reverb needs 0 < epsilon < 1, got {epsilon}.")
        self._noise = {}  # length -> (bands, centres, shares)

    def draw(self, batch):
        def randint(low, high):
            return keras.random.randint((batch,), low, high, seed=self.seed_generator)

        return {
            "reverberance": randint(self.reverberance_min, self.reverberance_max),
            "damping": randint(self.dumping_factor_min, self.dumping_factor_max),
            "room_size": randint(self.room_size_min, self.room_size_max),
        }

    def _tail_bands(self, length):
        """A fixed seeded white noise split into frequency bands [K, length] (their sum is the
        noise), the bands' centre frequencies (rad/sample) and shares of the spectrum."""
        if length not in self._noise:
            noise = np.random.default_rng(44100).standard_normal(length)
            spectrum = np.fft.rfft((noise - noise.mean()) / noise.std())
            freqs = np.fft.rfftfreq(length, 1.0 / self.sample_rate)
            edges = [0.0, *[e for e in _REVERB_BAND_EDGES_HZ if e < self.sample_rate / 2], np.inf]
            bands, centres, shares = [], [], []
            for low, high in zip(edges[:-1], edges[1:]):
                mask = (freqs >= low) & (freqs < high)
                bands.append(np.fft.irfft(spectrum * mask, length))
                top = min(high, self.sample_rate / 2)
                centres.append(
                    2 * np.pi * (top / 2 if low == 0 else math.sqrt(low * top)) / self.sample_rate
                )
                shares.append(mask.mean())
            self._noise[length] = (
                np.stack(bands).astype("float32"),
                np.array(centres, "float32"),
                np.array(shares, "float32"),
            )
        return self._noise[length]

    def impulse_response(self, length, reverberance, damping, room_size, log_window=0.0):
        """The wet part [B, length] of the responses (the dry impulse is added separately),
        times ``exp(-log_window * t)``."""
        reverberance = ops.cast(reverberance, "float32")[:, None]
        damping = ops.cast(damping, "float32")[:, None]
        room_size = ops.cast(room_size, "float32")[:, None]
        a = -1.0 / math.log(1.0 - 0.3)
        b = 100.0 / (math.log(1.0 - 0.98) * a + 1.0)
        feedback = 1.0 - ops.exp((reverberance - b) / (a * b))
        hf_damping = damping / 100.0 * 0.3 + 0.2
        scale = (room_size / 100.0 * 0.9 + 0.1) * (self.sample_rate / 44100.0)
        loop = scale * float(np.mean(_SOX_COMB_LENGTHS))
        onset = ops.floor(scale * _SOX_COMB_LENGTHS[0])
        bands, centres, _ = self._tail_bands(length)
        # Per band k: loop gain f |H(w_k)| of sox's one-pole loop filter H = (1 - d) / (1 - d z^-1),
        # a per-sample decay rate, and the comb array's energy there, sum_m (f |H|)^(2m) per comb.
        loop_gain_sq = (
            ops.square(feedback)
            * ops.square(1.0 - hf_damping)
            / (1.0 - 2.0 * hf_damping * ops.cos(centres)[None, :] + ops.square(hf_damping))
        )  # [B, K]
        rates = 0.5 * ops.log(loop_gain_sq) / loop
        wet = _SOX_WET_SCALE * 10.0 ** (self.wet_gain_db / 20.0)
        energy = _REVERB_ENERGY_SCALE * wet**2 * len(_SOX_COMB_LENGTHS) / (1.0 - loop_gain_sq)
        amplitude = ops.sqrt(energy * (1.0 - ops.exp(2.0 * rates))) * ops.exp(-rates * onset)
        tail = 0.0
        for k in range(bands.shape[0]):
            # exp(rate * (t - onset)) as an outer product of two short exps (see _exp_ramp).
            envelope = _exp_ramp(rates[:, k : k + 1] - log_window, length) * amplitude[:, k : k + 1]
            tail = tail + envelope * ops.convert_to_tensor(bands[k])[None, :]
        t = ops.arange(length, dtype="float32")[None, :]
        return ops.where(t >= onset, tail, 0.0)

    def transform(self, audio, reverberance, damping, room_size):
        length = _static_length(audio, "Reverb")
        fft_length = _fft_size(int(math.ceil(1.05 * length)))
        log_window = math.log(1.0 / self.epsilon) / fft_length
        t = np.arange(length, dtype=np.float64)
        window = ops.convert_to_tensor(np.exp(-log_window * t).astype("float32"))[None, :]
        unwindow = ops.convert_to_tensor(np.exp(log_window * t).astype("float32"))[None, :]
        response = self.impulse_response(length, reverberance, damping, room_size, log_window)
        wet = _fft_convolve(audio * window, response, fft_length)[:, :length] * unwindow
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
            epsilon=self.epsilon,
        )
        return config
