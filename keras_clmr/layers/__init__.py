"""Reusable layers: batched in-graph augmentations, ..."""

from keras_clmr.layers.augmentations import AudioAugmentation, RandomCrop
from keras_clmr.layers.augmentations import (AugmentationChain, Delay, Gain, HighLowPass, Noise, PitchShift,
                                             PolarityInversion, RandomApply, Reverb, clmr_augmentation)
from keras_clmr.layers.frontends import LogMelSpectrogram
from keras_clmr.layers.transformer import PEMREncoderLayer, PEMRFeedForward, PEMRLayerNormalization, PEMRMultiHeadSelfAttention
from keras_clmr.layers.augmentations import FilterDelayReverb
