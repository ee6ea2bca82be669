"""One-line inference on audio files and arrays: ``embed`` and ``tag``.

- ``windows``: sources -> fixed-length windows, streamed and resampled in bounded memory.
- ``engines``: which network runs (encoder or tagger) and on what (Keras or ONNX Runtime).
- ``api``: ``embed`` / ``tag``, batching windows across files, and their result records.
"""

from keras_clmr.export.onnx import onnx_predictor
from keras_clmr.inference.api import DEFAULT_BLOCK_SECONDS, Embeddings, TagResult, embed, tag
from keras_clmr.inference.engines import DEFAULT_MODEL, ENGINES
from keras_clmr.inference.windows import ClipTooShortError

__all__ = [
    "DEFAULT_BLOCK_SECONDS",
    "DEFAULT_MODEL",
    "ENGINES",
    "ClipTooShortError",
    "Embeddings",
    "TagResult",
    "embed",
    "onnx_predictor",
    "tag",
]
