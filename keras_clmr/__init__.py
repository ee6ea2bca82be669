"""keras_clmr: a Keras 3 model zoo for self-supervised music representations (CLMR, PEMR).

    import keras_clmr
    model = keras_clmr.load_pretrained("clmr-mtat")          # a Keras model
    result = keras_clmr.embed("song.mp3", model=model)        # embeddings [T, D] + start times
    tags = keras_clmr.tag("song.mp3", model="musicnn-mtt")    # per-window and clip-level tags
"""

__version__ = "0.1.0"

from keras_clmr import layers, losses, metrics, models
from keras_clmr.audio import AudioError
from keras_clmr.hub import load_preset, load_pretrained, save_preset
from keras_clmr.inference import embed, tag
from keras_clmr.models import CLMR, FCN, PEMR, MusicTagger, SampleCNN
from keras_clmr.presets import list_presets

__all__ = [
    "AudioError", "CLMR", "FCN", "MusicTagger", "PEMR", "SampleCNN", "embed", "layers", "list_presets",
    "load_preset", "load_pretrained", "losses", "metrics", "models", "save_preset", "tag",
]
