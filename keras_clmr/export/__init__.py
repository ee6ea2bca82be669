"""Export presets to SavedModel and ONNX, checked against the Keras model.

- ``savedmodel``: ``keras.export.ExportArchive`` with signatures ``embed`` and, for a tagger,
  ``tag`` (``serving_default`` is the first of them).
- ``onnx``: the one ONNX builder (input ``audio`` [batch, samples], outputs ``embedding`` [and
  ``tags``]), with BatchNorm folded into the convolutions; also used by ``keras_clmr.inference``.
- ``parity``: every export is loaded back and compared with Keras at batch 1 and 7 (max abs
  difference <= 1e-4, else ``ParityError`` and nothing is kept).
- ``preset``: ``export_preset`` writes the exports into a preset folder and records settings,
  parity figures and file hashes in its ``metadata.json``.

Exporting needs the TensorFlow backend; the presets themselves are backend-independent.
"""

from keras_clmr.export.onnx import (
    build_onnx,
    direct_graph,
    export_onnx,
    onnx_predictor,
    onnx_session,
    optimize_onnx,
    run_onnx,
    tf2onnx_graph,
)
from keras_clmr.export.parity import (
    FLOAT16_ATOL,
    FLOAT16_NOTE,
    PARITY_ATOL,
    PARITY_BATCHES,
    check_onnx_parity,
    check_savedmodel_parity,
    checked_parity,
    keras_outputs,
    random_audio,
)
from keras_clmr.export.preset import (
    export_preset,
    load_model,
    parse_formats,
    summary_json,
    update_metadata,
)
from keras_clmr.export.savedmodel import export_savedmodel, savedmodel_outputs
from keras_clmr.export.signature import (
    DEFAULT_OPSET,
    EMBED_OUTPUT,
    FORMATS,
    INPUT_NAME,
    ONNX_FILE,
    SAVEDMODEL_DIR,
    TAG_OUTPUT,
    ExportError,
    ParityError,
    input_samples,
    output_names,
    split_model,
)

__all__ = [
    "DEFAULT_OPSET",
    "EMBED_OUTPUT",
    "FLOAT16_ATOL",
    "FLOAT16_NOTE",
    "FORMATS",
    "INPUT_NAME",
    "ONNX_FILE",
    "PARITY_ATOL",
    "PARITY_BATCHES",
    "SAVEDMODEL_DIR",
    "TAG_OUTPUT",
    "ExportError",
    "ParityError",
    "build_onnx",
    "check_onnx_parity",
    "check_savedmodel_parity",
    "checked_parity",
    "direct_graph",
    "export_onnx",
    "export_preset",
    "export_savedmodel",
    "input_samples",
    "keras_outputs",
    "load_model",
    "onnx_predictor",
    "onnx_session",
    "optimize_onnx",
    "output_names",
    "parse_formats",
    "random_audio",
    "run_onnx",
    "savedmodel_outputs",
    "split_model",
    "summary_json",
    "tf2onnx_graph",
    "update_metadata",
]
