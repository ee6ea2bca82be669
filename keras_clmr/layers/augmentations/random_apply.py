"""Composition: apply a transform per example with probability p, or a chain in order."""

import keras
from keras import ops

from keras_clmr.layers.augmentations.base import AudioAugmentation


@keras.saving.register_keras_serializable(package="keras_clmr")
class RandomApply(AudioAugmentation):
    """Applies ``layer`` to each example independently with probability ``p`` (``u < p``).

    The wrapped transform is computed for the whole batch and selected per example, so the
    cost does not depend on ``p`` (static shapes, no Python branching)."""

    def __init__(self, layer, p=0.5, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(f"RandomApply wraps a Keras layer, got {type(layer).__name__}.")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"RandomApply needs 0 <= p <= 1, got {p}.")
        self.layer = layer
        self.p = float(p)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def augment(self, audio):
        applied = keras.random.uniform((ops.shape(audio)[0], 1), seed=self.seed_generator) < self.p
        return ops.where(applied, self.layer(audio, training=True), audio)

    def get_config(self):
        config = super().get_config()
        config.update(layer=keras.saving.serialize_keras_object(self.layer), p=self.p)
        return config


@keras.saving.register_keras_serializable(package="keras_clmr")
class AugmentationChain(AudioAugmentation):
    """Applies ``layers`` in order (each with the same ``training`` flag)."""

    def __init__(self, layers, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.chain = [
            keras.saving.deserialize_keras_object(layer) if isinstance(layer, dict) else layer
            for layer in layers
        ]

    def build(self, input_shape):
        for layer in self.chain:
            if not layer.built:
                layer.build(input_shape)
        self.built = True

    def call(self, audio, training=None):
        if training is False:
            return audio
        for layer in self.chain:
            audio = layer(audio, training=training)
        return audio

    def augment(self, audio):
        return self.call(audio)

    def get_config(self):
        config = super().get_config()
        config.update(layers=[keras.saving.serialize_keras_object(layer) for layer in self.chain])
        return config
