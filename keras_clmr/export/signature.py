"""What every export contains: input/output names, which model parts run, the checks before export.

An export maps ``audio`` [batch, samples] to ``embedding`` [batch, D] and, for a tagger, also
``tags`` [batch, C] probabilities, in inference mode. Both formats (SavedModel, ONNX) and the
parity check share these names and the split of a model into (encoder, tagger or None).
"""

import keras

from keras_clmr.models import encoder_of, is_tagger

FORMATS = ("savedmodel", "onnx")
ONNX_FILE = "model.onnx"
SAVEDMODEL_DIR = "saved_model"
INPUT_NAME = "audio"
EMBED_OUTPUT = "embedding"
TAG_OUTPUT = "tags"
DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    """An export that could not be written or does not match the Keras model."""


class ParityError(ExportError):
    """An exported model whose outputs differ from the Keras model's by more than the tolerance."""


def require_tensorflow():
    """Raise unless Keras runs on TensorFlow (SavedModel and tf2onnx need it)."""
    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            f"Export runs on the TensorFlow backend (Keras is using {keras.backend.backend()!r}); "
            "set KERAS_BACKEND=tensorflow. Presets are backend-independent, so the exported "
            "files are the same whichever backend trained the model."
        )


def split_model(model):
    """(encoder, tagger or None) of a keras_clmr model (tagger, encoder or pretrainer)."""
    return encoder_of(model), (model if is_tagger(model) else None)


def output_names(model):
    """The outputs of an export of ``model``: ``["embedding"]`` or ``["embedding", "tags"]``."""
    return [EMBED_OUTPUT, TAG_OUTPUT] if is_tagger(model) else [EMBED_OUTPUT]


def input_samples(model):
    """The fixed window length of ``model`` (its encoder's ``input_samples``)."""
    samples = getattr(model, "input_samples", None)
    if samples is None:
        samples = getattr(encoder_of(model), "input_samples", None)
    if samples is None:
        raise ExportError(
            f"{type(model).__name__} has no input_samples attribute: the export needs a fixed "
            "window length (keras_clmr encoders and taggers have one)."
        )
    return int(samples)


def check_float32(model):
    """Raise unless ``model`` computes in float32 (exports and the ONNX builder are float32)."""
    policy = getattr(model, "dtype_policy", None)
    if policy is not None and policy.compute_dtype != "float32":
        raise ExportError(
            f"Export needs a float32 model, got dtype policy {policy.name!r}; reload the preset "
            "with keras.config.set_dtype_policy('float32')."
        )


class ExportModel(keras.Model):
    """audio -> [embedding] or [embedding, tags], in inference mode (what the exports contain)."""

    def __init__(self, model, **kwargs):
        super().__init__(name="keras_clmr_export", **kwargs)
        self.encoder, self.tagger = split_model(model)

    def call(self, audio):
        embedding = self.encoder(audio, training=False)
        if self.tagger is None:
            return [embedding]
        logits = self.tagger.head(embedding, training=False)
        return [embedding, self.tagger.activation(logits)]
