"""MusicTagger: a backbone plus a linear or MLP head, with CLMR's clip-level prediction."""

import keras
import numpy as np
from keras import layers, ops

from keras_clmr.batching import keras_predictor, pad_rows
from keras_clmr.layers.initializers import (
    torch_default_bias_initializer,
    torch_default_kernel_initializer,
)
from keras_clmr.models.backbone import Task

HEADS = ("linear", "mlp")


def non_overlapping_chunks(audio, chunk_samples):
    """Split one clip [T] into non-overlapping chunks [T // chunk_samples, chunk_samples].

    The last partial chunk is dropped, as CLMR's ``concat_clip`` does. A clip shorter than
    one chunk is an error (there is nothing to average).
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"Expected one mono clip [samples], got shape {audio.shape}.")
    count = audio.shape[0] // int(chunk_samples)
    if count == 0:
        raise ValueError(
            f"A clip of {audio.shape[0]} samples is shorter than one {chunk_samples}-sample chunk: "
            "drop clips shorter than the model's input (or zero-pad them) before clip-level "
            "prediction."
        )
    return audio[: count * chunk_samples].reshape(count, int(chunk_samples))


def map_chunks(predict_batch, clips, chunk_samples, batch_size=32):
    """Apply ``predict_batch`` ([b, chunk_samples] -> [b, ...] numpy) to every chunk of every clip.

    Chunks of consecutive clips are packed into batches of exactly ``batch_size`` (the last
    one zero-padded, its padding discarded) so a compiled function sees one shape, and at
    most one batch of audio is materialised at a time. Returns one array [k_i, ...] per clip.
    """
    batch_size = int(batch_size)
    outputs, pending, counts = [], [], []

    def flush():
        batch = np.concatenate(pending, axis=0)
        n = batch.shape[0]
        outputs.append(np.asarray(predict_batch(pad_rows(batch, batch_size)))[:n])
        pending.clear()

    buffered = 0
    for clip in clips:
        chunks = non_overlapping_chunks(clip, chunk_samples)
        counts.append(chunks.shape[0])
        start = 0
        while start < chunks.shape[0]:
            take = min(batch_size - buffered, chunks.shape[0] - start)
            pending.append(chunks[start : start + take])
            buffered += take
            start += take
            if buffered == batch_size:
                flush()
                buffered = 0
    if pending:
        flush()
    if not counts:
        return []
    flat = np.concatenate(outputs, axis=0)
    splits = np.cumsum(counts)[:-1]
    return np.split(flat, splits, axis=0)


@keras.saving.register_keras_serializable(package="keras_clmr")
class MusicTagger(Task):
    """Backbone + linear or MLP head; ``call(audio [B, n])`` returns probabilities.

    Multi-label tasks use a sigmoid per tag (train with binary cross-entropy), single-label
    tasks a softmax (categorical cross-entropy). For numerically stable training use
    ``logits(audio)`` / ``logits_model()`` with a ``from_logits=True`` loss
    (``keras_clmr.evaluation`` does). Clip-level prediction (``predict_clips``) is the mean
    over a clip's non-overlapping chunks of the per-chunk probabilities, as CLMR does.

    Args:
        backbone: a model mapping [B, n] audio to [B, D] embeddings, with ``input_samples``
            and ``embedding_dim`` attributes (e.g. ``SampleCNN``).
        num_classes: number of tags / classes.
        head: ``"linear"`` (Dense(n)) or ``"mlp"`` (Dense(hidden_dim) -> ReLU -> Dense(n)).
        multi_label: sigmoid outputs when True, softmax when False.
        tags: optional list of ``num_classes`` names.
        freeze_backbone: keep the backbone's weights (and BatchNorm statistics) fixed.
        dropout: dropout rate before the head (0.5 in CLMR's supervised SampleCNN).
        hidden_dim: width of the MLP head's hidden layer (512 in CLMR).
    """

    def __init__(
        self,
        backbone,
        num_classes,
        head="linear",
        multi_label=True,
        tags=None,
        freeze_backbone=True,
        dropout=0.0,
        hidden_dim=512,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}.")
        self.num_classes = int(num_classes)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if tags is not None:
            tags = [str(t) for t in tags]
            if len(tags) != self.num_classes:
                raise ValueError(f"Got {len(tags)} tag names for num_classes={self.num_classes}.")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        for attribute in ("input_samples", "embedding_dim"):
            if not hasattr(backbone, attribute):
                raise ValueError(
                    f"The backbone ({type(backbone).__name__}) has no `{attribute}` attribute; "
                    f"MusicTagger needs a keras_clmr backbone such as SampleCNN."
                )
        self.backbone = backbone
        self.head_type = head
        self.multi_label = bool(multi_label)
        self.tags = tags
        self.freeze_backbone = bool(freeze_backbone)
        self.dropout = float(dropout)
        self.hidden_dim = int(hidden_dim)
        self.input_samples = int(backbone.input_samples)
        self.sample_rate = getattr(backbone, "sample_rate", None)
        self.backbone.trainable = not self.freeze_backbone
        self.head = build_head(
            backbone.embedding_dim, self.num_classes, head, self.dropout, self.hidden_dim
        )

    def build(self, input_shape):
        if not self.backbone.built:
            self.backbone.build(input_shape)
        self.built = True

    def logits(self, audio, training=None):
        """Pre-activation scores [B, num_classes]."""
        features = self.backbone(audio, training=False if self.freeze_backbone else training)
        return self.head(features, training=training)

    def activation(self, logits):
        return ops.sigmoid(logits) if self.multi_label else ops.softmax(logits, axis=-1)

    def call(self, audio, training=None):
        return self.activation(self.logits(audio, training=training))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def logits_model(self):
        """A model sharing this tagger's weights whose call returns logits (for training)."""
        return _TaggerLogits(self, name=f"{self.name}_logits")

    def loss_function(self):
        """The matching numerically stable loss on logits (BCE or CE)."""
        if self.multi_label:
            return keras.losses.BinaryCrossentropy(from_logits=True)
        return keras.losses.CategoricalCrossentropy(from_logits=True)

    def predict_clips(self, clips, batch_size=32):
        """Clip-level probabilities [n_clips, num_classes] of mono clips (each [T], T >= n).

        Each clip is cut into non-overlapping ``input_samples`` chunks (the last partial
        chunk dropped); the per-chunk probabilities are averaged.
        """
        per_clip = map_chunks(keras_predictor(self), clips, self.input_samples, batch_size)
        return (
            np.stack([p.mean(axis=0) for p in per_clip])
            if per_clip
            else np.zeros((0, self.num_classes))
        )

    def predict_clip(self, audio, batch_size=32):
        """Clip-level probabilities [num_classes] of one mono clip [T]."""
        return self.predict_clips([audio], batch_size=batch_size)[0]

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.saving.serialize_keras_object(self.backbone),
            num_classes=self.num_classes,
            head=self.head_type,
            multi_label=self.multi_label,
            tags=self.tags,
            freeze_backbone=self.freeze_backbone,
            dropout=self.dropout,
            hidden_dim=self.hidden_dim,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def build_head(input_dim, num_classes, head="linear", dropout=0.0, hidden_dim=512, name="head"):
    """The probe head: features [B, input_dim] -> logits [B, num_classes] (PyTorch default init)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}.")
    stack = []
    if dropout:
        stack.append(layers.Dropout(dropout, name="dropout"))
    fan_in = input_dim
    if head == "mlp":
        stack += [
            layers.Dense(
                hidden_dim,
                kernel_initializer=torch_default_kernel_initializer(),
                bias_initializer=torch_default_bias_initializer(fan_in),
                name="hidden",
            ),
            layers.ReLU(name="relu"),
        ]
        fan_in = hidden_dim
    stack.append(
        layers.Dense(
            num_classes,
            kernel_initializer=torch_default_kernel_initializer(),
            bias_initializer=torch_default_bias_initializer(fan_in),
            name="logits",
        )
    )
    model = keras.Sequential(stack, name=name)
    model.build((None, input_dim))
    return model


class _TaggerLogits(keras.Model):
    """Training view of a MusicTagger: same weights, returns logits."""

    def __init__(self, tagger, **kwargs):
        super().__init__(**kwargs)
        self.tagger = tagger

    def call(self, audio, training=None):
        return self.tagger.logits(audio, training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.tagger.num_classes)
