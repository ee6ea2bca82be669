"""CLMR: SimCLR on raw waveforms with a SampleCNN encoder (Spijkervet & Burgoyne 2021)."""

import keras
from keras import ops

from keras_clmr import distributed
from keras_clmr.losses import nt_xent
from keras_clmr.models.pretrainer import Pretrainer, build_projector  # noqa: F401 (re-export)
from keras_clmr.models.sample_cnn import SampleCNN


@keras.saving.register_keras_serializable(package="keras_clmr")
class CLMR(Pretrainer):
    """The CLMR pretrainer: encoder + projector trained with NT-Xent.

    ``call`` encodes the two views separately (BatchNorm statistics per view batch, as the
    original) and returns their projections [B, 2, projection_dim]; ``compute_loss`` gives
    NT-Xent. ``fit`` works on the TensorFlow, JAX and PyTorch backends.

    Args:
        encoder: a backbone mapping [B, n] audio to [B, D] (default: a full-size SampleCNN).
        projection_dim: output size of the projector (128 in the released CLMR 2.0 weights).
        hidden_dim: width of the projector's hidden layer (default: the embedding size).
        temperature: NT-Xent temperature.
        augmentation, seed: see ``Pretrainer``.
        negatives: ``"global"`` (default): under data parallelism every view is contrasted
            against the whole global batch; ``"local"``: against its replica's slice only, as
            the original CLMR did under DDP (for reproducing the paper). The same on one device.
    """

    def __init__(
        self,
        encoder=None,
        projection_dim=128,
        hidden_dim=None,
        temperature=0.5,
        augmentation=None,
        seed=None,
        negatives="global",
        **kwargs,
    ):
        if float(temperature) <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if negatives not in ("global", "local"):
            raise ValueError(f"negatives must be 'global' or 'local', got {negatives!r}.")
        super().__init__(encoder=encoder, augmentation=augmentation, seed=seed, **kwargs)
        embedding_dim = self.encoder.embedding_dim
        self.projection_dim = int(projection_dim)
        self.hidden_dim = int(hidden_dim or embedding_dim)
        self.temperature = float(temperature)
        self.negatives = negatives
        self.projector = build_projector(embedding_dim, self.hidden_dim, self.projection_dim)
        if self.augmentation is not None and not self.augmentation.built:
            self.augmentation.build((None, self.input_samples))

    @staticmethod
    def default_encoder():
        return SampleCNN()

    def call(self, source, training=None):
        view_i, view_j = self.views(source, training=training)
        z_i = self.projector(self.encoder(view_i, training=training))
        z_j = self.projector(self.encoder(view_j, training=training))
        return ops.stack([z_i, z_j], axis=1)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Per-replica negatives in an SPMD program (JAX DataParallel) = one group per device.
        groups = distributed.data_parallel_size() if self.negatives == "local" else 1
        loss = nt_xent(
            y_pred[:, 0],
            y_pred[:, 1],
            temperature=self.temperature,
            negatives=self.negatives,
            groups=groups,
        )
        return self.finish_loss(loss)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2, self.projection_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            projection_dim=self.projection_dim,
            hidden_dim=self.hidden_dim,
            temperature=self.temperature,
            negatives=self.negatives,
        )
        return config
