"""Backbones (SampleCNN, ...) and tasks (CLMR, ...)."""

from keras_clmr.models.clmr import CLMR
from keras_clmr.models.sample_cnn import SampleCNN
from keras_clmr.models.tagger import MusicTagger
from keras_clmr.models.musicnn import Musicnn, MusicnnLogMel, musicnn_tagger
from keras_clmr.models.fcn import FCN
from keras_clmr.models.pemr import PEMR, PEMRMaskGenerator
