"""Random crops of source segments (centre crop at inference)."""

import keras
from keras import ops

from keras_clmr.layers.augmentations.base import AudioAugmentation


@keras.saving.register_keras_serializable(package="keras_clmr")
class RandomCrop(AudioAugmentation):
    """``n_samples`` consecutive samples at a uniform random offset, drawn per example.

    Unlike the other augmentations, the crop also runs at inference (``training=False``)
    when the input is longer than ``n_samples``: it then takes the centre, so that a
    pretrainer can be evaluated on source segments deterministically.
    """

    def __init__(self, n_samples, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.n_samples = int(n_samples)
        if self.n_samples < 1:
            raise ValueError(f"RandomCrop needs n_samples >= 1, got {n_samples}.")

    def _check(self, shape):
        if len(shape) != 2:
            raise ValueError(
                f"RandomCrop expects mono audio [batch, samples], got shape {tuple(shape)}."
            )
        if shape[1] is not None and shape[1] < self.n_samples:
            raise ValueError(
                f"Source segments of {shape[1]} samples are shorter than the "
                f"{self.n_samples}-sample crop: feed segments of at least {self.n_samples} samples "
                "(pad short clips or drop them)."
            )

    def call(self, audio, training=None):
        self._check(audio.shape)
        length = ops.shape(audio)[1]
        if training is False:
            start = (length - self.n_samples) // 2
            return ops.slice(audio, [0, start], [ops.shape(audio)[0], self.n_samples])
        return self.augment(audio)

    def augment(self, audio):
        self._check(audio.shape)
        batch, length = ops.shape(audio)[0], ops.shape(audio)[1]
        max_offset = length - self.n_samples + 1
        offsets = keras.random.randint((batch,), 0, max_offset, seed=self.seed_generator)
        index = offsets[:, None] + ops.arange(self.n_samples, dtype=offsets.dtype)[None, :]
        return ops.take_along_axis(audio, index, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n_samples)

    def get_config(self):
        config = super().get_config()
        config.update(n_samples=self.n_samples)
        return config
