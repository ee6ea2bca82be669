"""Sample-wise transforms: polarity inversion, gain, additive noise."""

import keras
import numpy as np
from keras import ops

from keras_clmr.layers.augmentations.base import _ParametricAugmentation, _static_length


@keras.saving.register_keras_serializable(package="keras_clmr")
class PolarityInversion(_ParametricAugmentation):
    """``-x`` (no parameters)."""

    def draw(self, batch):
        return {}

    def transform(self, audio):
        return -audio


@keras.saving.register_keras_serializable(package="keras_clmr")
class Gain(_ParametricAugmentation):
    """Gain by ``U(min_gain, max_gain)`` dB per example, clamped to [-1, 1] (torchaudio ``Vol``)."""

    def __init__(self, min_gain=-20.0, max_gain=-1.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if min_gain > max_gain:
            raise ValueError(f"Gain needs min_gain <= max_gain, got {min_gain} > {max_gain}.")
        self.min_gain = float(min_gain)
        self.max_gain = float(max_gain)

    def draw(self, batch):
        return {
            "gain_db": keras.random.uniform(
                (batch,), self.min_gain, self.max_gain, seed=self.seed_generator
            )
        }

    def transform(self, audio, gain_db):
        scale = ops.power(10.0, ops.cast(gain_db, "float32") / 20.0)
        return ops.clip(audio * scale[:, None], -1.0, 1.0)

    def get_config(self):
        config = super().get_config()
        config.update(min_gain=self.min_gain, max_gain=self.max_gain)
        return config


@keras.saving.register_keras_serializable(package="keras_clmr")
class Noise(_ParametricAugmentation):
    """Additive Gaussian noise with std ``U(min_snr, max_snr) * std(x)`` per example.

    ``std(x)`` is the unbiased (Bessel-corrected) std of the example, as ``torch.std``.
    Deviation: the unit Gaussian is read from a fixed seeded table at a random offset with a
    random sign per example (fresh B x T Gaussians are slow in-graph); see docs/fidelity.md.
    """

    _BLOCK = 64
    _OFFSETS = 1024

    def __init__(self, min_snr=1e-4, max_snr=1e-2, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if not 0 <= min_snr <= max_snr:
            raise ValueError(f"Noise needs 0 <= min_snr <= max_snr, got {min_snr}, {max_snr}.")
        self.min_snr = float(min_snr)
        self.max_snr = float(max_snr)
        self._tables = {}

    def _table(self, blocks):
        if blocks not in self._tables:
            rng = np.random.default_rng(20211122)
            table = rng.standard_normal((blocks + self._OFFSETS) * self._BLOCK)
            table = (table - table.mean()) / table.std()
            self._tables[blocks] = table.reshape(-1, self._BLOCK).astype("float32")
        return self._tables[blocks]

    def draw(self, batch):
        u = keras.random.uniform((batch, 2), seed=self.seed_generator)
        offset = keras.random.randint((batch,), 0, self._OFFSETS, seed=self.seed_generator)
        return {
            "level": self.min_snr + (self.max_snr - self.min_snr) * u[:, 0],
            "unit_noise": {"offset": offset, "sign": ops.where(u[:, 1] < 0.5, -1.0, 1.0)},
        }

    def unit_noise(self, batch, length, offset, sign):
        blocks = -(-length // self._BLOCK)
        table = ops.convert_to_tensor(self._table(blocks))
        index = ops.cast(offset, "int32")[:, None] + ops.arange(blocks, dtype="int32")[None, :]
        rows = ops.take(table, ops.reshape(index, (-1,)), axis=0)
        noise = ops.reshape(rows, (batch, blocks * self._BLOCK))[:, :length]
        return noise * ops.cast(sign, "float32")[:, None]

    def transform(self, audio, level, unit_noise=None, noise=None):
        """``noise``: a [B, T] unit-variance noise to use instead of the table (for tests)."""
        length = _static_length(audio, "Noise")
        batch = ops.shape(audio)[0]
        if noise is None:
            noise = self.unit_noise(batch, length, **unit_noise)
        mean = ops.mean(audio, axis=1, keepdims=True)
        std = ops.sqrt(ops.sum(ops.square(audio - mean), axis=1) / max(length - 1, 1))
        return audio + (ops.cast(level, "float32") * std)[:, None] * noise

    def get_config(self):
        config = super().get_config()
        config.update(min_snr=self.min_snr, max_snr=self.max_snr)
        return config
