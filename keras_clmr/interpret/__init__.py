"""See and hear what a model learned: filter spectra, listening pages, taggrams, embedding maps."""

from keras_clmr.interpret.filters import (
    FilterLayerError,
    FilterSpectra,
    UnsupportedModelError,
    filter_spectra,
)
from keras_clmr.interpret.listening import ListeningInputError, ListeningPage, listening_page
from keras_clmr.interpret.maps import EmbeddingMap, MapInputError, embedding_map
from keras_clmr.interpret.taggram import Taggram, taggram

__all__ = [
    "EmbeddingMap",
    "FilterLayerError",
    "FilterSpectra",
    "ListeningInputError",
    "ListeningPage",
    "MapInputError",
    "Taggram",
    "UnsupportedModelError",
    "embedding_map",
    "filter_spectra",
    "listening_page",
    "taggram",
]
