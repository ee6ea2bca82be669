"""CPC on raw audio (van den Oord et al. 2018) as the CLMR thesis trained it on music.

Configuration of the CLMR repository's older ``modules/cpc/`` (``model.py: cpc_model``):
seven strided ``Conv1d`` + ReLU blocks (strides 5,3,2,2,2,2,2; filters 10,6,4,4,4,2,2;
paddings 2,2,2,2,1,1,1; 512 channels, bias, no normalisation) on 59049 samples at 22050 Hz
(124 latents per window), a one-layer GRU with a 256-d state, and InfoNCE with a bias-free
linear predictor for each of ``prediction_steps`` future latents. Defaults of the author's
``contrastive-predictive-coding`` repository: 12 steps, 10 negatives, Adam 1.5e-4.
"""

import math

import keras
from keras import layers, ops

from keras_clmr import distributed
from keras_clmr.layers.initializers import (
    torch_default_bias_initializer,
    torch_default_kernel_initializer,
)
from keras_clmr.losses_cpc import draw_negative_indices, info_nce
from keras_clmr.models.backbone import Backbone
from keras_clmr.models.pretrainer import Pretrainer

MUSIC_STRIDES = (5, 3, 2, 2, 2, 2, 2)
MUSIC_FILTER_SIZES = (10, 6, 4, 4, 4, 2, 2)
MUSIC_PADDINGS = (2, 2, 2, 2, 1, 1, 1)
DEFAULT_LEARNING_RATE = 1.5e-4


def conv_output_length(length, strides, filter_sizes, paddings):
    """Number of latents the conv stack gives for ``length`` samples (PyTorch Conv1d arithmetic)."""
    for stride, size, pad in zip(strides, filter_sizes, paddings):
        length = (length + 2 * pad - size) // stride + 1
    return length


def _torch_gru_initializer(units):
    """PyTorch's GRU init: every weight and bias U(-1/sqrt(hidden), 1/sqrt(hidden))."""
    limit = 1.0 / math.sqrt(units)
    return keras.initializers.RandomUniform(-limit, limit)


@keras.saving.register_keras_serializable(package="keras_clmr")
class CPCEncoder(Backbone):
    """CPC's encoder g_enc and autoregressor g_ar: audio [B, n] -> clip embedding [B, 256].

    ``latents(audio)`` gives the encoder's sequence z [B, T, latent_dim]; ``context(z)`` the
    GRU states c [B, T, context_dim]. Calling the model returns the clip-level embedding the
    original's linear evaluation used: the GRU states averaged over time (``adaptive_avg_pool1d``
    of c in ``utils/eval.py`` / ``testing/logistic_regression.py``), so ``embedding_dim`` is
    ``context_dim``. The GRU belongs to the backbone, not the pretrainer, because that
    embedding needs it. Layer ``encoder.seq.layer-i.0`` of the original is ``conv_i`` here.

    Args:
        strides, filter_sizes, paddings: one entry per Conv1d block (zero padding both sides).
        latent_dim: channels of every conv block (the original's ``genc_hidden``).
        context_dim: GRU state size (``gar_hidden``).
        input_samples: window length the model is used with (probes, export); any length that
            leaves at least one latent is accepted.
        sample_rate: the sample rate the model expects (metadata; not used in the maths).
    """

    def __init__(
        self,
        strides=MUSIC_STRIDES,
        filter_sizes=MUSIC_FILTER_SIZES,
        paddings=MUSIC_PADDINGS,
        latent_dim=512,
        context_dim=256,
        input_samples=59049,
        sample_rate=22050,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.strides = tuple(int(s) for s in strides)
        self.filter_sizes = tuple(int(f) for f in filter_sizes)
        self.paddings = tuple(int(p) for p in paddings)
        if not len(self.strides) == len(self.filter_sizes) == len(self.paddings) >= 1:
            raise ValueError(
                f"CPCEncoder needs as many strides, filter sizes and paddings "
                f"(one per conv block), "
                f"got "
                f"{self.strides}, {self.filter_sizes}, {self.paddings}."
            )
        if min(self.strides) < 1 or min(self.filter_sizes) < 1 or min(self.paddings) < 0:
            raise ValueError(
                f"Strides and filter sizes must be >= 1 and paddings >= 0, got "
                f"{self.strides}, {self.filter_sizes}, {self.paddings}."
            )
        self.latent_dim = int(latent_dim)
        self.context_dim = int(context_dim)
        self.embedding_dim = self.context_dim
        self.input_samples = int(input_samples)
        self.sample_rate = int(sample_rate)
        self.num_latents = conv_output_length(
            self.input_samples, self.strides, self.filter_sizes, self.paddings
        )
        if self.num_latents < 1:
            raise ValueError(
                f"input_samples={self.input_samples} leaves no latent after the conv stack; "
                f"use a longer window."
            )
        self.stack = []
        in_channels = 1
        for i, (stride, size, pad) in enumerate(
            zip(self.strides, self.filter_sizes, self.paddings)
        ):
            if pad:
                self.stack.append(layers.ZeroPadding1D(pad, name=f"pad_{i}"))
            self.stack.append(
                layers.Conv1D(
                    self.latent_dim,
                    size,
                    strides=stride,
                    padding="valid",
                    name=f"conv_{i}",
                    kernel_initializer=torch_default_kernel_initializer(),
                    bias_initializer=torch_default_bias_initializer(size * in_channels),
                )
            )
            self.stack.append(layers.ReLU(name=f"relu_{i}"))
            in_channels = self.latent_dim
        init = _torch_gru_initializer(self.context_dim)
        self.autoregressor = layers.GRU(
            self.context_dim,
            return_sequences=True,
            reset_after=True,
            name="autoregressor",
            kernel_initializer=init,
            recurrent_initializer=init,
            bias_initializer=init,
        )
        self.build((None, self.input_samples))

    def _check_shape(self, shape):
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[-1] not in (1, None)):
            raise ValueError(
                f"CPCEncoder expects mono audio shaped [batch, samples] or [batch, samples, 1], "
                f"got shape {tuple(shape)}."
            )
        length = shape[1]
        if (
            length is not None
            and conv_output_length(length, self.strides, self.filter_sizes, self.paddings) < 1
        ):
            raise ValueError(
                f"CPCEncoder: {length} samples leave no latent after the conv stack; "
                f"feed windows of {self.input_samples} samples."
            )

    def build(self, input_shape):
        self._check_shape(input_shape)
        shape = (input_shape[0], input_shape[1], 1)
        for layer in self.stack:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.autoregressor.build(shape)
        self.built = True

    def latents(self, audio):
        """The encoder's latent sequence z: [B, T, latent_dim]."""
        self._check_shape(audio.shape)
        x = audio if len(audio.shape) == 3 else ops.expand_dims(audio, -1)
        for layer in self.stack:
            x = layer(x)
        return x

    def context(self, latents):
        """The GRU states c_t (zero initial state): [B, T, context_dim]."""
        return self.autoregressor(latents)

    def call(self, audio, training=None):
        return ops.mean(self.context(self.latents(audio)), axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            strides=list(self.strides),
            filter_sizes=list(self.filter_sizes),
            paddings=list(self.paddings),
            latent_dim=self.latent_dim,
            context_dim=self.context_dim,
            input_samples=self.input_samples,
            sample_rate=self.sample_rate,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_clmr")
class CPC(Pretrainer):
    """The CPC pretrainer: CPCEncoder + bias-free predictors, trained with InfoNCE.

    Input: source segments [B, S], S >= ``encoder.input_samples`` (or view pairs [B, 2, S],
    of which the first view is used); one window per segment is
    cropped (uniformly at random in training, the centre otherwise), as the original's data
    loader did; it applied no augmentation (``augmentation`` defaults to None). ``call``
    returns a dict: ``latents`` z of the whole window [B, T, C], ``targets`` z of the
    positive window [B, L, C], ``predictions`` W_k c_t for k = 1..K [B, L, K*C] and
    ``negative_indices`` [N, B*T]; ``compute_loss`` turns it into ``info_nce``.

    Args:
        encoder: a ``CPCEncoder`` (default: the music configuration).
        prediction_steps: K, the number of future latents predicted (``prediction_step``).
        negative_samples: N, negatives per positive, drawn by shuffling all B*T latents of the
            batch once per negative (``negative_samples``).
        subsample_window: when T exceeds it, positives are restricted to a random window of
            this many latents (start uniform in [0, T - window), one per batch), negatives
            still come from all T (the original's ``subsample_win = 81``); None disables it.
        augmentation: a layer applied to the cropped batch [B, n] in training, or None.
        seed: seed of the crop, the window and the negatives.
    """

    def __init__(
        self,
        encoder=None,
        prediction_steps=12,
        negative_samples=10,
        subsample_window=81,
        augmentation=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(encoder=encoder, augmentation=augmentation, seed=seed, **kwargs)
        self.prediction_steps = int(prediction_steps)
        self.negative_samples = int(negative_samples)
        if self.prediction_steps < 1 or self.negative_samples < 1:
            raise ValueError(
                f"prediction_steps and negative_samples must be >= 1, got "
                f"{prediction_steps} and {negative_samples}."
            )
        self.subsample_window = None if subsample_window is None else int(subsample_window)
        window = min(self.encoder.num_latents, self.subsample_window or self.encoder.num_latents)
        if window <= self.prediction_steps:
            raise ValueError(
                f"CPC: a window of {window} latents ({self.encoder.input_samples} samples, "
                f"subsample_window={self.subsample_window}) is too short to predict "
                f"{self.prediction_steps} steps ahead; use longer input_samples, a larger "
                f"subsample_window or fewer prediction_steps."
            )
        self.seed_generator = keras.random.SeedGenerator(seed, name="negatives_seed")
        self.predictor = layers.Dense(
            self.encoder.latent_dim * self.prediction_steps,
            use_bias=False,
            name="predictor",
            kernel_initializer=torch_default_kernel_initializer(),
        )
        self.predictor.build((None, None, self.encoder.context_dim))
        self.build((None, self.input_samples))

    @staticmethod
    def default_encoder():
        return CPCEncoder()

    def check_encoder(self, encoder):
        super().check_encoder(encoder)
        for attribute in ("latents", "context", "latent_dim", "context_dim", "num_latents"):
            if not hasattr(encoder, attribute):
                raise ValueError(
                    f"CPC needs a CPCEncoder (with `{attribute}`), got {type(encoder).__name__}."
                )

    def _window(self, num_latents, training):
        """Start and length of the positive window over ``num_latents`` latents."""
        if self.subsample_window is None or num_latents <= self.subsample_window:
            return 0, num_latents
        if training:
            start = keras.random.randint(
                (), 0, num_latents - self.subsample_window, seed=self.seed_generator
            )
        else:
            start = (num_latents - self.subsample_window) // 2
        return start, self.subsample_window

    def call(self, source, training=None):
        if len(source.shape) == 3:  # view pairs [B, 2, S] (whole-clip data): CPC needs one
            source = source[:, 0]  # window per clip, and the first view is a random crop of it
        audio = self.crop(source, training=training)
        if self.augmentation is not None and training:
            audio = self.augmentation(audio, training=True)
        latents = self.encoder.latents(audio)
        batch, num_latents = ops.shape(latents)[0], latents.shape[1]
        start, length = self._window(num_latents, training)
        # The GRU runs over the whole sequence, then the window selects c_t and z_t (as in the
        # original).
        context = self.encoder.context(latents)
        if length == num_latents:
            targets = latents
        else:
            targets = ops.slice(latents, (0, start, 0), (batch, length, self.encoder.latent_dim))
            context = ops.slice(context, (0, start, 0), (batch, length, self.encoder.context_dim))
        predictions = self.predictor(context)
        # Negatives come from the replica's own slice of the batch (tf.distribute replicas see
        # only theirs; in an SPMD program, JAX DataParallel, info_nce groups the slices).
        replica_batch = batch // distributed.data_parallel_size()
        negative_indices = draw_negative_indices(
            self.negative_samples, replica_batch * num_latents, seed=self.seed_generator
        )
        return {
            "latents": latents,
            "targets": targets,
            "predictions": predictions,
            "negative_indices": negative_indices,
        }

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = info_nce(
            y_pred["predictions"],
            y_pred["targets"],
            y_pred["latents"],
            y_pred["negative_indices"],
            groups=distributed.data_parallel_size(),
        )
        return self.finish_loss(loss)

    def positive_pair(self, y_pred):
        """CPC's positive pairs (for ``positive_cosine``): each prediction W_k c_t with its
        target z_{t+k}, over every step k, as ``info_nce`` pairs them."""
        depth = y_pred["targets"].shape[-1]
        predicted, targets = [], []
        for k in range(1, self.prediction_steps + 1):
            targets.append(ops.reshape(y_pred["targets"][:, k:, :], (-1, depth)))
            step = y_pred["predictions"][:, :-k, (k - 1) * depth : k * depth]
            predicted.append(ops.reshape(step, (-1, depth)))
        return ops.concatenate(predicted, axis=0), ops.concatenate(targets, axis=0)

    def get_config(self):
        config = super().get_config()
        config.update(
            prediction_steps=self.prediction_steps,
            negative_samples=self.negative_samples,
            subsample_window=self.subsample_window,
        )
        return config
