"""Reusable layers: batched in-graph augmentations, the log-mel frontends, transformer blocks."""

from keras_clmr.layers.augmentations import (
    AudioAugmentation,
    AugmentationChain,
    Delay,
    FilterDelayReverb,
    Gain,
    HighLowPass,
    Noise,
    PitchShift,
    PolarityInversion,
    RandomApply,
    RandomCrop,
    Reverb,
    clmr_augmentation,
)
from keras_clmr.layers.frontends import LogMelSpectrogram
from keras_clmr.layers.transformer import (
    PEMREncoderLayer,
    PEMRFeedForward,
    PEMRLayerNormalization,
    PEMRMultiHeadSelfAttention,
)

__all__ = [
    "AudioAugmentation",
    "AugmentationChain",
    "Delay",
    "FilterDelayReverb",
    "Gain",
    "HighLowPass",
    "LogMelSpectrogram",
    "Noise",
    "PEMREncoderLayer",
    "PEMRFeedForward",
    "PEMRLayerNormalization",
    "PEMRMultiHeadSelfAttention",
    "PitchShift",
    "PolarityInversion",
    "RandomApply",
    "RandomCrop",
    "Reverb",
    "clmr_augmentation",
]
