"""keras_clmr: a Keras 3 model zoo for self-supervised music representations (CLMR, PEMR)."""

__version__ = "0.1.0"

from keras_clmr import layers, losses, models
from keras_clmr.audio import AudioError
from keras_clmr.models import CLMR, SampleCNN
