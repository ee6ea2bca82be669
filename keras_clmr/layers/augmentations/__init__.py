"""Batched, in-graph audio augmentations (keras.ops only).

Every layer works on a batch of mono waveforms [B, T], draws its random parameters per
example from a ``keras.random.SeedGenerator`` (so a seeded run is reproducible and the
layers run under ``jit_compile`` on TensorFlow and JAX, and on PyTorch), and never loops
over examples in Python.
"""

from keras_clmr.layers.augmentations.base import AudioAugmentation
from keras_clmr.layers.augmentations.chain import (
    CLMR_PROBABILITIES,
    FilterDelayReverb,
    clmr_augmentation,
)
from keras_clmr.layers.augmentations.crop import RandomCrop
from keras_clmr.layers.augmentations.delay_reverb import Delay, Reverb
from keras_clmr.layers.augmentations.filters import HighLowPass
from keras_clmr.layers.augmentations.pitch_shift import PitchShift
from keras_clmr.layers.augmentations.polarity_noise_gain import Gain, Noise, PolarityInversion
from keras_clmr.layers.augmentations.random_apply import AugmentationChain, RandomApply

__all__ = [
    "AudioAugmentation",
    "AugmentationChain",
    "CLMR_PROBABILITIES",
    "Delay",
    "FilterDelayReverb",
    "Gain",
    "HighLowPass",
    "Noise",
    "PitchShift",
    "PolarityInversion",
    "RandomApply",
    "RandomCrop",
    "Reverb",
    "clmr_augmentation",
]
