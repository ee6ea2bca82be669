"""CLMR: SimCLR on raw waveforms with a SampleCNN encoder (Spijkervet & Burgoyne 2021)."""

import keras
from keras import layers, ops

from keras_clmr import distributed
from keras_clmr.layers.augmentations import RandomCrop
from keras_clmr.losses import nt_xent
from keras_clmr.models.sample_cnn import SampleCNN, torch_default_kernel_initializer


def build_projector(input_dim, hidden_dim, projection_dim, name="projector"):
    """SimCLR's projector: Dense(hidden, no bias) -> ReLU -> Dense(projection_dim, no bias)."""
    projector = keras.Sequential(
        [
            layers.Dense(hidden_dim, use_bias=False, kernel_initializer=torch_default_kernel_initializer(),
                         name="dense_0"),
            layers.ReLU(name="relu"),
            layers.Dense(projection_dim, use_bias=False, kernel_initializer=torch_default_kernel_initializer(),
                         name="dense_2"),
        ],
        name=name,
    )
    projector.build((None, input_dim))
    return projector


@keras.saving.register_keras_serializable(package="keras_clmr")
class CLMR(keras.Model):
    """The CLMR pretrainer: encoder + projector trained with NT-Xent.

    Input: a batch of source segments [B, S] with S >= ``encoder.input_samples``. In the
    train step the model draws two independent random crops of each segment, passes each
    view through ``augmentation`` (when given and ``training=True``), encodes the two view
    batches separately (as the original does: BatchNorm statistics per view batch),
    projects them and returns the projections stacked as [B, 2, projection_dim];
    ``compute_loss`` turns them into the NT-Xent loss. ``fit`` works on the TensorFlow,
    JAX and PyTorch backends.

    Args:
        encoder: a backbone mapping [B, n] audio to [B, D] (default: a full-size SampleCNN).
        projection_dim: output size of the projector (128 in the released CLMR 2.0 weights).
        hidden_dim: width of the projector's hidden layer (default: the embedding size).
        temperature: NT-Xent temperature.
        augmentation: a layer applied to each view batch [B, n] after the crop, or None.
        seed: seed of the crops.
        negatives: ``"global"`` (default): under data parallelism every view is contrasted
            against the whole global batch; ``"local"``: against its replica's slice only, as
            the original CLMR did under DDP (for reproducing the paper). The same on one device.
    """

    def __init__(self, encoder=None, projection_dim=128, hidden_dim=None, temperature=0.5,
                 augmentation=None, seed=None, negatives="global", **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder if encoder is not None else SampleCNN()
        embedding_dim = self.encoder.embedding_dim
        self.projection_dim = int(projection_dim)
        self.hidden_dim = int(hidden_dim or embedding_dim)
        self.temperature = float(temperature)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.seed = seed
        if negatives not in ("global", "local"):
            raise ValueError(f"negatives must be 'global' or 'local', got {negatives!r}.")
        self.negatives = negatives
        self.input_samples = self.encoder.input_samples
        self.crop = RandomCrop(self.input_samples, seed=seed, name="crop")
        self.augmentation = augmentation
        self.projector = build_projector(embedding_dim, self.hidden_dim, self.projection_dim)
        if self.augmentation is not None and not self.augmentation.built:
            self.augmentation.build((None, self.input_samples))

    def build(self, input_shape):
        self.crop._check(input_shape)
        view_shape = (input_shape[0], self.input_samples)
        if self.augmentation is not None and not self.augmentation.built:
            self.augmentation.build(view_shape)
        if not self.encoder.built:
            self.encoder.build(view_shape)
        self.built = True

    def views(self, source, training=None):
        """The two (augmented) views [B, n] of a batch of source segments."""
        view_i = self.crop(source, training=training)
        view_j = self.crop(source, training=training)
        if self.augmentation is not None and training:
            view_i = self.augmentation(view_i, training=True)
            view_j = self.augmentation(view_j, training=True)
        return view_i, view_j

    def call(self, source, training=None):
        view_i, view_j = self.views(source, training=training)
        z_i = self.projector(self.encoder(view_i, training=training))
        z_j = self.projector(self.encoder(view_j, training=training))
        return ops.stack([z_i, z_j], axis=1)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Per-replica negatives in an SPMD program (JAX DataParallel) = one group per device.
        groups = distributed.data_parallel_size() if self.negatives == "local" else 1
        loss = nt_xent(y_pred[:, 0], y_pred[:, 1], temperature=self.temperature, negatives=self.negatives,
                       groups=groups)
        if self.losses:
            loss = loss + ops.cast(ops.sum(self.losses), loss.dtype)
        # Under tf.distribute each replica's loss is divided by the replica count so that the
        # summed gradients are those of the mean (Keras un-scales the logged value).
        return distributed.scale_loss_for_replicas(loss)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2, self.projection_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            projection_dim=self.projection_dim,
            hidden_dim=self.hidden_dim,
            temperature=self.temperature,
            augmentation=(keras.saving.serialize_keras_object(self.augmentation)
                          if self.augmentation is not None else None),
            seed=self.seed,
            negatives=self.negatives,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        if config.get("augmentation") is not None:
            config["augmentation"] = keras.saving.deserialize_keras_object(config["augmentation"])
        return cls(**config)
