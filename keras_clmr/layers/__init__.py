"""Reusable layers: batched in-graph augmentations, ..."""

from keras_clmr.layers.augmentations import AudioAugmentation, RandomCrop
from keras_clmr.layers.augmentations import (AugmentationChain, Delay, Gain, HighLowPass, Noise, PitchShift,
                                             PolarityInversion, RandomApply, Reverb, clmr_augmentation)
