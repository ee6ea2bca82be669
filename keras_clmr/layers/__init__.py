"""Reusable layers: batched in-graph augmentations, ..."""

from keras_clmr.layers.augmentations import AudioAugmentation, RandomCrop
