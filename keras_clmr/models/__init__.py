"""Backbones (SampleCNN, FCN, Musicnn), pretrainers (CLMR, PEMR) and the tagger task."""

from keras_clmr.models.backbone import Backbone, Task
from keras_clmr.models.clmr import CLMR
from keras_clmr.models.cpc import CPC, CPCEncoder
from keras_clmr.models.fcn import FCN
from keras_clmr.models.musicnn import Musicnn, MusicnnLogMel, musicnn_tagger
from keras_clmr.models.pemr import PEMR, PEMRMaskGenerator
from keras_clmr.models.pretrainer import Pretrainer
from keras_clmr.models.roles import encoder_of, is_pretrainer, is_tagger
from keras_clmr.models.sample_cnn import SampleCNN
from keras_clmr.models.tagger import MusicTagger

__all__ = [
    "CLMR",
    "CPC",
    "FCN",
    "PEMR",
    "Backbone",
    "CPCEncoder",
    "Musicnn",
    "MusicnnLogMel",
    "MusicTagger",
    "PEMRMaskGenerator",
    "Pretrainer",
    "SampleCNN",
    "Task",
    "encoder_of",
    "is_pretrainer",
    "is_tagger",
    "musicnn_tagger",
]
