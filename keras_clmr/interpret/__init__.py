"""See and hear what a model learned: filter spectra, listening pages, taggrams, embedding maps."""

from keras_clmr.interpret.filters import FilterLayerError, FilterSpectra, UnsupportedModelError, filter_spectra
from keras_clmr.interpret.listening import ListeningInputError, ListeningPage, listening_page

__all__ = ["FilterLayerError", "FilterSpectra", "ListeningInputError", "ListeningPage", "UnsupportedModelError",
           "filter_spectra", "listening_page"]
