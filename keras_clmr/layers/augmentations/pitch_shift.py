"""Pitch shift (resampling + WSOLA time stretch, in a compiled loop)."""

import keras
import numpy as np
from keras import ops

from keras_clmr.layers.augmentations.base import _ParametricAugmentation, _static_length


@keras.saving.register_keras_serializable(package="keras_clmr")
class PitchShift(_ParametricAugmentation):
    """Pitch shift by a uniform integer number of cents in [100 * pitch_shift_min,
    100 * pitch_shift_max] per example, duration preserved.

    Deviation: the original runs libsox ``pitch`` per example on the CPU; here a batched
    WSOLA-style granular shifter (Hann grains of ``grain_seconds`` at 50 % overlap, read
    position searched within ``search_seconds``), output clipped to [-1, 1], never NaN/Inf
    for finite input. Details and remaining differences: docs/fidelity.md.
    """

    _DECIMATION = 8

    def __init__(
        self,
        sample_rate=22050,
        pitch_shift_min=-7.0,
        pitch_shift_max=7.0,
        grain_seconds=0.093,
        search_seconds=0.012,
        seed=None,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        self.sample_rate = int(sample_rate)
        self.pitch_shift_min = float(pitch_shift_min)
        self.pitch_shift_max = float(pitch_shift_max)
        self.grain_seconds = float(grain_seconds)
        self.search_seconds = float(search_seconds)
        self.cents_min = int(self.pitch_shift_min * 100)
        self.cents_max = int(self.pitch_shift_max * 100)
        if self.cents_min > self.cents_max:
            raise ValueError(
                f"PitchShift needs pitch_shift_min <= pitch_shift_max, got {pitch_shift_min}, "
                f"{pitch_shift_max}."
            )
        if self.grain_seconds <= 0 or self.search_seconds < 0:
            raise ValueError(
                f"PitchShift needs grain_seconds > 0 and search_seconds >= 0, got {grain_seconds}, "
                f"{search_seconds}."
            )
        dec = self._DECIMATION
        self.hop = max(int(round(self.sample_rate * self.grain_seconds / 2 / dec)), 1) * dec
        self.search = min(float(self.search_seconds * self.sample_rate), self.hop / 2)

    def draw(self, batch):
        return {
            "cents": keras.random.randint(
                (batch,), self.cents_min, self.cents_max + 1, seed=self.seed_generator
            )
        }

    @staticmethod
    def _read(audio, position, length):
        """Linear interpolation of [B, T] audio at fractional [B, T] positions (zero outside)."""
        valid = (position >= 0.0) & (position <= length - 1.0)
        position = ops.clip(position, 0.0, length - 1.0)
        index = ops.minimum(ops.cast(ops.floor(position), "int32"), max(length - 2, 0))
        frac = position - ops.cast(index, "float32")
        left = ops.take_along_axis(audio, index, axis=1)
        right = ops.take_along_axis(audio, ops.minimum(index + 1, length - 1), axis=1)
        return ops.where(valid, left + frac * (right - left), 0.0)

    def grain_offsets(self, audio, ratio, grains):
        """WSOLA offsets [B, grains] (samples) of each grain's read position."""
        length = audio.shape[1]
        dec, hop = self._DECIMATION, self.hop
        block = hop // dec
        if self.search <= 0 or grains < 2:
            return ops.zeros((ops.shape(audio)[0], grains), "float32")
        padded = ops.pad(audio, [[0, 0], [0, grains * hop - length]])
        coarse = ops.mean(ops.reshape(padded, (-1, grains * block, dec)), axis=2)
        heads = ops.reshape(coarse, (-1, grains, block))  # input [j hop, (j + 1) hop)
        blocks = ops.reshape(ops.pad(coarse, [[0, 0], [block, 2 * block]]), (-1, grains + 3, block))
        around = ops.concatenate(
            [blocks[:, i : i + grains] for i in range(3)], axis=2
        )  # [(j-1) hop, (j+2) hop)
        size = 4 * block
        hr, hi = ops.rfft(heads, size)
        ar, ai = ops.rfft(around, size)
        # corr[k] = sum_s head[s] around[s + k]: lag (k - block) * dec samples, k in [0, 2 block].
        corr = ops.irfft((hr * ar + hi * ai, hr * ai - hi * ar), size)[:, :, : 2 * block + 1]
        lags = dec * ops.arange(-block, block + 1, dtype="float32")[None, :]
        base = hop * (1.0 - ratio)  # [B, 1]
        scale = ops.mean(ops.abs(corr), axis=(1, 2))[:, None] + 1e-20
        search = self.search
        columns = ops.arange(grains, dtype="int32")[None, :]

        def step(j, state):
            # Sequential in the grains (each offset depends on the previous one), batched over B;
            # a compiled loop keeps the graph small.
            previous, offsets = state
            c = ops.take(corr, j - 1, axis=1)
            candidate = lags - base + previous  # grain j's offset for each lag
            score = ops.where(
                ops.abs(candidate) <= search, c - 1e-3 * scale * ops.abs(candidate) / hop, -1e30
            )
            k = ops.argmax(score, axis=1)[:, None]
            centre = ops.take_along_axis(c, k, axis=1)
            left = ops.take_along_axis(c, ops.maximum(k - 1, 0), axis=1)
            right = ops.take_along_axis(c, ops.minimum(k + 1, 2 * block), axis=1)
            curve = left - 2.0 * centre + right
            shift = ops.where(
                curve < 0, 0.5 * (left - right) / ops.where(curve < 0, curve, -1.0), 0.0
            )
            chosen = ops.take_along_axis(candidate, k, axis=1) + dec * ops.clip(shift, -0.5, 0.5)
            chosen = ops.clip(chosen, -search - dec, search + dec)
            return chosen, ops.where(columns == j, chosen, offsets)

        start = (ops.zeros_like(base), ops.zeros_like(base) * ops.cast(columns, "float32"))
        return ops.fori_loop(1, grains, step, start)[1]

    def transform(self, audio, cents):
        length = _static_length(audio, "PitchShift")
        hop = self.hop
        ratio = ops.power(2.0, ops.cast(cents, "float32") / 1200.0)[:, None]
        grains = -(-length // hop) + 1
        offsets = self.grain_offsets(audio, ratio, grains)
        per_sample = ops.repeat(offsets, hop, axis=1)  # offset of grain floor(t / hop)
        offset_a = per_sample[:, :length]
        offset_b = per_sample[:, hop : hop + length]
        t = np.arange(length, dtype=np.float64)
        centre = (t // hop) * hop  # t is in this grain's second half
        fade_out = ops.convert_to_tensor(
            (np.cos(np.pi * (t - centre) / hop / 2) ** 2).astype("float32")
        )[None, :]
        centre_a = ops.convert_to_tensor(centre.astype("float32"))[None, :]
        rel_a = ops.convert_to_tensor((t - centre).astype("float32"))[None, :]
        pos_a = centre_a + offset_a + ratio * rel_a
        pos_b = centre_a + hop + offset_b + ratio * (rel_a - hop)
        out = fade_out * self._read(audio, pos_a, length) + (1.0 - fade_out) * self._read(
            audio, pos_b, length
        )
        return ops.clip(out, -1.0, 1.0)

    def get_config(self):
        config = super().get_config()
        config.update(
            sample_rate=self.sample_rate,
            pitch_shift_min=self.pitch_shift_min,
            pitch_shift_max=self.pitch_shift_max,
            grain_seconds=self.grain_seconds,
            search_seconds=self.search_seconds,
        )
        return config
