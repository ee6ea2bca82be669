"""See and hear what a model learned: filter spectra, listening pages, taggrams, embedding maps."""

from keras_clmr.interpret.filters import FilterLayerError, FilterSpectra, UnsupportedModelError, filter_spectra

__all__ = ["FilterLayerError", "FilterSpectra", "UnsupportedModelError", "filter_spectra"]
