"""``Pretrainer``: the contrastive base of CLMR and PEMR (crops, augmentation, views, config)."""

import keras
from keras import layers, ops

from keras_clmr import distributed
from keras_clmr.layers.augmentations import RandomCrop
from keras_clmr.layers.initializers import torch_default_kernel_initializer


def build_projector(input_dim, hidden_dim, projection_dim, name="projector"):
    """SimCLR's projector: Dense(hidden, no bias) -> ReLU -> Dense(projection_dim, no bias)."""
    projector = keras.Sequential(
        [
            layers.Dense(
                hidden_dim,
                use_bias=False,
                kernel_initializer=torch_default_kernel_initializer(),
                name="dense_0",
            ),
            layers.ReLU(name="relu"),
            layers.Dense(
                projection_dim,
                use_bias=False,
                kernel_initializer=torch_default_kernel_initializer(),
                name="dense_2",
            ),
        ],
        name=name,
    )
    projector.build((None, input_dim))
    return projector


def positive_cosine(first, second):
    """Cosine similarity of each row of ``first`` with the same row of ``second`` [P], in
    float32 (float64 inputs stay float64); an all-zero row gives 0."""
    dtype = "float64" if ops.dtype(first) == "float64" else "float32"
    first, second = ops.cast(first, dtype), ops.cast(second, dtype)
    dot = ops.sum(first * second, axis=-1)
    norms = ops.sqrt(ops.sum(ops.square(first), axis=-1) * ops.sum(ops.square(second), axis=-1))
    return dot / ops.maximum(norms, 1e-12)


class Pretrainer(keras.Model):
    """Contrastive pretrainer over an encoder. Input either view pairs [B, 2, S] (whole-clip
    mode: the data already cropped each example's two views independently from its clip, as
    CLMR does; S >= the encoder's ``input_samples``) or source segments [B, S] (segment mode:
    two independent random crops per segment). Each view goes through ``augmentation`` when
    training. Subclasses add their heads and ``call``/``compute_loss``.

    Args:
        encoder: the backbone being trained (default: ``default_encoder()``).
        augmentation: a layer applied to each view batch [B, n] after the crop, or None.
        seed: seed of the crops.
    """

    def __init__(self, encoder=None, augmentation=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        encoder = encoder if encoder is not None else self.default_encoder()
        self.check_encoder(encoder)
        self.encoder = encoder
        self.seed = seed
        self.input_samples = self.encoder.input_samples
        self.crop = RandomCrop(self.input_samples, seed=seed, name="crop")
        self.augmentation = augmentation
        # Mean cosine of the positive pairs' projections: a cheap health signal in the logs
        # (near 1 for every pair together with a flat loss = collapse).
        self.positive_cosine_tracker = keras.metrics.Mean(name="positive_cosine")

    @staticmethod
    def default_encoder():
        raise ValueError("This pretrainer has no default encoder: pass encoder=.")

    def check_encoder(self, encoder):
        """Raise ValueError when ``encoder`` cannot serve this pretrainer."""
        for attribute in ("input_samples", "embedding_dim"):
            if getattr(encoder, attribute, None) is None:
                raise ValueError(
                    f"{type(self).__name__} needs an encoder with `{attribute}` (a keras_clmr "
                    f"Backbone such as SampleCNN), got {type(encoder).__name__}."
                )

    @staticmethod
    def source_shape(input_shape):
        """The [B, S] shape each view is cropped from: [B, S] itself, or one slot of [B, 2, S]."""
        if len(input_shape) == 3:
            if input_shape[1] is not None and input_shape[1] != 2:
                raise ValueError(
                    f"View pairs must have shape [batch, 2, samples], got {tuple(input_shape)}."
                )
            return (input_shape[0], input_shape[2])
        return tuple(input_shape)

    def build(self, input_shape):
        self.crop._check(self.source_shape(input_shape))
        view_shape = (input_shape[0], self.input_samples)
        if self.augmentation is not None and not self.augmentation.built:
            self.augmentation.build(view_shape)
        if not self.encoder.built:
            self.encoder.build(view_shape)
        self.built = True

    def views(self, source, training=None):
        """The two (augmented) audio views [B, n] of view pairs [B, 2, S] or segments [B, S]."""
        if len(source.shape) == 3:
            self.crop._check(self.source_shape(source.shape))
            view_1, view_2 = source[:, 0], source[:, 1]
            if view_1.shape[1] != self.input_samples:  # longer views: crop them to the encoder
                view_1 = self.crop(view_1, training=training)
                view_2 = self.crop(view_2, training=training)
        else:
            view_1 = self.crop(source, training=training)
            view_2 = self.crop(source, training=training)
        if self.augmentation is not None and training:
            view_1 = self.augmentation(view_1, training=True)
            view_2 = self.augmentation(view_2, training=True)
        return view_1, view_2

    def positive_pair(self, y_pred):
        """The projections of the positive pairs, two [P, D] tensors (row p pairs row p).

        ``y_pred`` is ``call``'s output: [B, 2, D] or a dict whose "projections" [B, V, D]
        hold the two views first. Pretrainers with other outputs override this.
        """
        projections = y_pred["projections"] if isinstance(y_pred, dict) else y_pred
        return projections[:, 0], projections[:, 1]

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Keras' metrics plus ``positive_cosine`` (mean over the batch's positive pairs)."""
        first, second = self.positive_pair(y_pred)
        self.positive_cosine_tracker.update_state(positive_cosine(first, second))
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def finish_loss(self, loss):
        """Add the layers' own losses and scale for tf.distribute replicas (Keras un-scales
        the logged value; the summed gradients are those of the mean)."""
        if self.losses:
            loss = loss + ops.cast(ops.sum(self.losses), loss.dtype)
        return distributed.scale_loss_for_replicas(loss)

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            augmentation=(
                keras.saving.serialize_keras_object(self.augmentation)
                if self.augmentation is not None
                else None
            ),
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        if config.get("augmentation") is not None:
            config["augmentation"] = keras.saving.deserialize_keras_object(config["augmentation"])
        return cls(**config)
