"""PEMR: contrastive learning with positive-negative frame masks (Yao et al., WWW 2022).

Faithful to the official code (github.com/yaoodng7/PEMR); the choices are in docs/fidelity.md.
"""

import math

import keras
from keras import layers, ops

from keras_clmr import distributed
from keras_clmr.layers.initializers import BN_EPSILON, BN_MOMENTUM
from keras_clmr.layers.transformer import PEMREncoderLayer, PEMRFeedForward, sinusoidal_positions
from keras_clmr.losses import pemr_negative_loss, pemr_positive_loss, pemr_prediction_loss
from keras_clmr.models.fcn import FCN
from keras_clmr.models.pretrainer import Pretrainer, build_projector


@keras.saving.register_keras_serializable(package="keras_clmr")
class PEMRMaskGenerator(layers.Layer):
    """PEMR's mask generation and predicting module (the code's ``UnitedModule``).

    Tokens are the log-mel frames themselves ([B, N, D], no embedding), a learned CLS vector
    is prepended and fixed sinusoidal positions (N + 1 of them) are added. One post-LN
    transformer (``encoder_layers``, with input dropout) serves two purposes:

    * ``frame_scores``: both views go through all but the last layer; the last layer's query
      projection of each view's CLS is scored against its key projection of view 2's frames,
      ``softmax(q . k / sqrt(d_model))`` over frames, averaged over heads and the two views.
    * ``prediction_loss`` (L_pred): BERT-style masking of both token sequences, the full
      transformer, the position-wise FFN head ``pred_layer`` (itself residual + LayerNorm, as
      in the code), Huber at the masked positions.

    ``mask_token`` fills masked frames in the positive/negative views.
    """

    def __init__(
        self,
        num_frames=462,
        feature_dim=128,
        num_layers=3,
        num_heads=3,
        key_dim=128,
        ffn_dim=2048,
        dropout=0.1,
        pred_hidden_dim=512,
        bert_mask_prob=0.15,
        bert_strategy_probs=(0.8, 0.1, 0.1),
        huber_delta=0.1,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_frames = int(num_frames)
        self.feature_dim = int(feature_dim)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.key_dim = int(key_dim)
        self.ffn_dim = int(ffn_dim)
        self.dropout_rate = float(dropout)
        self.pred_hidden_dim = int(pred_hidden_dim)
        self.bert_mask_prob = float(bert_mask_prob)
        self.bert_strategy_probs = tuple(float(p) for p in bert_strategy_probs)
        self.huber_delta = float(huber_delta)
        self.seed = seed
        if self.num_layers < 2:
            raise ValueError(
                f"PEMR's mask generator needs num_layers >= 2 (scores use the last layer), "
                f"got {num_layers}."
            )
        if not 0.0 <= self.bert_mask_prob <= 1.0:
            raise ValueError(f"bert_mask_prob must be in [0, 1], got {bert_mask_prob}.")
        if (
            len(self.bert_strategy_probs) != 3
            or min(self.bert_strategy_probs) < 0
            or abs(sum(self.bert_strategy_probs) - 1.0) > 1e-6
        ):
            raise ValueError(
                "bert_strategy_probs must be 3 probabilities (zero, random frame, keep) summing "
                f"to 1, got {bert_strategy_probs}."
            )
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.input_dropout = layers.Dropout(self.dropout_rate, name="input_dropout")
        self.encoder_layers = [
            PEMREncoderLayer(
                num_heads, key_dim, ffn_dim, dropout=dropout, name=f"encoder_layer_{i}"
            )
            for i in range(self.num_layers)
        ]
        self.pred_layer = PEMRFeedForward(pred_hidden_dim, dropout=dropout, name="pred_layer")
        self._positions = sinusoidal_positions(self.num_frames + 1, self.feature_dim)

    def build(self, input_shape=None):
        init = keras.initializers.RandomNormal(0.0, 1.0)  # torch.nn.Embedding's N(0, 1)
        self.cls_token = self.add_weight(
            name="cls_token", shape=(self.feature_dim,), initializer=init
        )
        self.mask_token = self.add_weight(
            name="mask_token", shape=(self.feature_dim,), initializer=init
        )
        token_shape = (None, self.num_frames + 1, self.feature_dim)
        for layer in self.encoder_layers:
            layer.build(token_shape)
        self.pred_layer.build(token_shape)
        self.built = True

    def _check_frames(self, frames):
        expected = (self.num_frames, self.feature_dim)
        if len(frames.shape) != 3 or tuple(frames.shape[1:]) != expected:
            raise ValueError(
                f"PEMRMaskGenerator expects frames [batch, {expected[0]}, {expected[1]}] "
                f"(frames, mel bins), got shape {tuple(frames.shape)}."
            )

    def tokens(self, frames):
        """[B, N, D] frames -> [B, N + 1, D]: CLS prepended, sinusoidal positions added."""
        self._check_frames(frames)
        frames = ops.cast(frames, self.compute_dtype)
        batch = ops.shape(frames)[0]
        cls = ops.broadcast_to(
            ops.cast(self.cls_token, self.compute_dtype)[None, None, :],
            (batch, 1, self.feature_dim),
        )
        positions = ops.convert_to_tensor(self._positions, dtype=self.compute_dtype)
        return ops.concatenate([cls, frames], axis=1) + positions[None]

    def encode(self, tokens, training=None):
        """The full transformer (input dropout + all layers): [B, L, D] -> [B, L, D]."""
        x = self.input_dropout(tokens, training=training)
        for layer in self.encoder_layers:
            x = layer(x, training=training)
        return x

    def frame_scores(self, tokens_1, tokens_2, training=None):
        """Importance of each frame of view 2, [B, N] (each row sums to 1)."""
        # Both views in one batch: the transformer has no cross-example coupling.
        h = self.input_dropout(ops.concatenate([tokens_1, tokens_2], axis=0), training=training)
        for layer in self.encoder_layers[:-1]:
            h = layer(h, training=training)
        h_1, h_2 = ops.split(h, 2, axis=0)
        attention = self.encoder_layers[-1].self_attention
        keys = attention.key_heads(h_2[:, 1:])  # [B, H, N, d_k]
        keys_t = ops.transpose(keys, (0, 1, 3, 2))
        # The code scales by sqrt(d_model) here (not sqrt(d_k); both are 128 in PEMR).
        scale = math.sqrt(self.feature_dim)
        probs_1 = ops.softmax(
            ops.matmul(attention.query_heads(h_1[:, :1]), keys_t) / scale, axis=-1
        )
        probs_2 = ops.softmax(
            ops.matmul(attention.query_heads(h_2[:, :1]), keys_t) / scale, axis=-1
        )
        return ops.mean(probs_1[:, :, 0, :] + probs_2[:, :, 0, :], axis=1) / 2.0

    @staticmethod
    def inessential_mask(scores, num_masked):
        """Hard top-K: 1.0 at the ``num_masked`` lowest-scoring frames of each row; no gradient."""
        scores = ops.stop_gradient(scores)
        lowest = ops.argsort(scores, axis=-1)[:, :num_masked]
        mask = ops.sum(ops.one_hot(lowest, ops.shape(scores)[-1], dtype="float32"), axis=1)
        return ops.stop_gradient(mask)

    def mask_frames(self, frames, inessential):
        """Positive (inessential frames -> MASK) and negative (others -> MASK) of [B, N, D]."""
        m = ops.cast(inessential, frames.dtype)[:, :, None]
        mask_token = ops.cast(self.mask_token, frames.dtype)[None, None, :]
        positive = frames * (1.0 - m) + m * mask_token
        negative = frames * m + (1.0 - m) * mask_token
        return positive, negative

    def bert_mask(self, tokens_1, tokens_2):
        """BERT-style corruption of both views: (inputs_1, mask_1, inputs_2, mask_2).

        Each position (CLS included) is masked with probability ``bert_mask_prob``,
        independently per view; one strategy is drawn per batch for both views: zero the
        masked tokens, replace them by the token at one random position (the same position
        for the whole batch, as in the code), or keep them.
        """
        tokens_1, tokens_2 = ops.convert_to_tensor(tokens_1), ops.convert_to_tensor(tokens_2)
        batch, length = ops.shape(tokens_1)[0], ops.shape(tokens_1)[1]
        dtype = tokens_1.dtype
        mask_1 = ops.cast(
            keras.random.uniform((batch, length), seed=self.seed_generator) < self.bert_mask_prob,
            dtype,
        )
        mask_2 = ops.cast(
            keras.random.uniform((batch, length), seed=self.seed_generator) < self.bert_mask_prob,
            dtype,
        )
        u = keras.random.uniform((), seed=self.seed_generator)
        position = keras.random.randint((1,), 0, length, seed=self.seed_generator)
        p_zero, p_random, _ = self.bert_strategy_probs

        def corrupt(tokens, mask):
            m = mask[:, :, None]
            zeroed = tokens * (1.0 - m)
            replaced = zeroed + m * ops.take(tokens, position, axis=1)
            return ops.where(u < p_zero, zeroed, ops.where(u < p_zero + p_random, replaced, tokens))

        return corrupt(tokens_1, mask_1), mask_1, corrupt(tokens_2, mask_2), mask_2

    def prediction_loss(self, tokens_1, tokens_2, training=None):
        """L_pred per example, [B]: the two views' Huber losses summed.

        The targets are the (CLS + position) tokens themselves, not detached, as in the code.
        """
        inputs_1, mask_1, inputs_2, mask_2 = self.bert_mask(tokens_1, tokens_2)
        inputs = ops.concatenate([inputs_1, inputs_2], axis=0)
        pred_1, pred_2 = ops.split(
            self.pred_layer(self.encode(inputs, training=training), training=training), 2, axis=0
        )
        return pemr_prediction_loss(
            tokens_1, pred_1, mask_1, self.huber_delta
        ) + pemr_prediction_loss(tokens_2, pred_2, mask_2, self.huber_delta)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_frames=self.num_frames,
            feature_dim=self.feature_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            ffn_dim=self.ffn_dim,
            dropout=self.dropout_rate,
            pred_hidden_dim=self.pred_hidden_dim,
            bert_mask_prob=self.bert_mask_prob,
            bert_strategy_probs=list(self.bert_strategy_probs),
            huber_delta=self.huber_delta,
            seed=self.seed,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_clmr")
class PEMR(Pretrainer):
    """The PEMR pretrainer: FCN encoder + projector + mask generator, trained as in the code.

    ``call`` crops two views of each source segment [B, S] (optionally augmented), turns them
    into log-mel, masks the ``mask_ratio`` least important frames of view 2 (positive) or all
    others (negative), and returns ``{"projections": [B, 3, projection_dim]`` (anchor,
    positive, negative) ``, "pred_loss": [B]}``; ``compute_loss`` gives
    L = L_pos + L_neg + pred_weight * L_pred (Barlow-Twins-style cross-correlation terms).
    ``encoder`` (log-mel + FCN -> 512) is the inference artefact; the rest is training-only.

    Where the paper and the official code differ, the code wins: see docs/fidelity.md.

    Args:
        encoder: an ``FCN`` (default: the full-size PEMR encoder).
        projection_dim: projector output size (256).
        hidden_dim: projector hidden width (default: the embedding size, 512).
        mask_ratio: fraction of frames masked (the code's ``masked_factor``, 0.1).
        pred_weight: weight of L_pred (0.01).
        neg_weight, offdiag_weight: the code's ``lambd1`` and ``lambd2`` (5e-3).
        num_layers, num_heads, key_dim, ffn_dim, dropout, pred_hidden_dim: the transformer.
        bert_mask_prob: BERT masking probability of L_pred (0.15).
        huber_delta: Huber threshold of L_pred (0.1).
        augmentation: a layer applied to each view batch [B, n] after the crop, or None.
        seed: seed of the crops and the BERT masking.
    """

    def __init__(
        self,
        encoder=None,
        projection_dim=256,
        hidden_dim=None,
        mask_ratio=0.1,
        pred_weight=0.01,
        neg_weight=5e-3,
        offdiag_weight=5e-3,
        num_layers=3,
        num_heads=3,
        key_dim=128,
        ffn_dim=2048,
        dropout=0.1,
        pred_hidden_dim=512,
        bert_mask_prob=0.15,
        huber_delta=0.1,
        augmentation=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(encoder=encoder, augmentation=augmentation, seed=seed, **kwargs)
        self.projection_dim = int(projection_dim)
        self.hidden_dim = int(hidden_dim or self.encoder.embedding_dim)
        self.mask_ratio = float(mask_ratio)
        self.num_frames = self.encoder.num_frames
        self.num_masked = int(self.mask_ratio * self.num_frames)
        if not 1 <= self.num_masked < self.num_frames:
            raise ValueError(
                f"mask_ratio={mask_ratio} masks {self.num_masked} of {self.num_frames} frames; "
                f"choose a ratio that masks at least 1 and fewer than all frames."
            )
        self.pred_weight = float(pred_weight)
        self.neg_weight = float(neg_weight)
        self.offdiag_weight = float(offdiag_weight)
        self.generator = PEMRMaskGenerator(
            num_frames=self.num_frames,
            feature_dim=self.encoder.n_mels,
            num_layers=num_layers,
            num_heads=num_heads,
            key_dim=key_dim,
            ffn_dim=ffn_dim,
            dropout=dropout,
            pred_hidden_dim=pred_hidden_dim,
            bert_mask_prob=bert_mask_prob,
            huber_delta=huber_delta,
            seed=None if seed is None else seed + 1,
            name="generator",
        )
        self.projector = build_projector(
            self.encoder.embedding_dim, self.hidden_dim, self.projection_dim
        )
        self.loss_bn = layers.BatchNormalization(
            epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="loss_bn"
        )
        self.pos_loss_tracker = keras.metrics.Mean(name="pos_loss")
        self.neg_loss_tracker = keras.metrics.Mean(name="neg_loss")
        self.pred_loss_tracker = keras.metrics.Mean(name="pred_loss")

    @staticmethod
    def default_encoder():
        return FCN()

    def check_encoder(self, encoder):
        for attribute in (
            "spectrogram",
            "embed_spectrogram",
            "num_frames",
            "n_mels",
            "input_samples",
        ):
            if not hasattr(encoder, attribute):
                raise ValueError(
                    "PEMR needs a log-mel encoder such as keras_clmr.models.FCN (with "
                    f"`{attribute}`), "
                    f"got {type(encoder).__name__}."
                )

    def build(self, input_shape):
        super().build(input_shape)
        if not self.generator.built:
            self.generator.build((input_shape[0], self.num_frames, self.encoder.n_mels))
        if not self.loss_bn.built:
            self.loss_bn.build((input_shape[0], self.projection_dim))
        # The official criterion's BatchNorm is outside the model that Adam optimises: its
        # scale and offset stay at 1 and 0 for the whole run (a learnable offset would add
        # beta^2 to the diagonal term); only its statistics move.
        for weight in (self.loss_bn.gamma, self.loss_bn.beta):
            weight.trainable = False
        self.built = True

    def masked_views(self, source, training=None):
        """Everything up to the encoder, as a dict of tensors.

        ``anchor`` / ``view_2`` / ``positive`` / ``negative``: log-mel [B, n_mels, frames];
        ``scores``: frame importance of view 2 [B, frames]; ``inessential``: 1.0 at the
        masked frames [B, frames]; ``pred_loss``: L_pred per example [B].
        """
        view_1, view_2 = self.views(source, training=training)
        # The frontend and the token builder treat examples independently: run both views at once.
        spec_1, spec_2 = ops.split(
            self.encoder.spectrogram(ops.concatenate([view_1, view_2], axis=0)), 2, axis=0
        )
        frames_1 = ops.transpose(spec_1, (0, 2, 1))
        frames_2 = ops.transpose(spec_2, (0, 2, 1))
        tokens_1, tokens_2 = ops.split(
            self.generator.tokens(ops.concatenate([frames_1, frames_2], axis=0)), 2, axis=0
        )
        pred_loss = self.generator.prediction_loss(tokens_1, tokens_2, training=training)
        scores = self.generator.frame_scores(tokens_1, tokens_2, training=training)
        inessential = self.generator.inessential_mask(scores, self.num_masked)
        positive, negative = self.generator.mask_frames(frames_2, inessential)
        return {
            "anchor": spec_1,
            "view_2": spec_2,
            "positive": ops.transpose(positive, (0, 2, 1)),
            "negative": ops.transpose(negative, (0, 2, 1)),
            "scores": scores,
            "inessential": inessential,
            "pred_loss": pred_loss,
        }

    def call(self, source, training=None):
        views = self.masked_views(source, training=training)
        projections = []
        for key in ("anchor", "positive", "negative"):
            h = self.encoder.embed_spectrogram(views[key], training=training)
            projections.append(self.loss_bn(self.projector(h), training=training))
        return {"projections": ops.stack(projections, axis=1), "pred_loss": views["pred_loss"]}

    def loss_terms(self, y_pred):
        """(L_pos, L_neg, L_pred) from the output of ``call``, in float32."""
        z = ops.cast(y_pred["projections"], "float32")
        if distributed.replica_context() is not None:
            # Cross-correlations over the global batch, as on one device (gradients return
            # to each replica's slice).
            z = distributed.all_gather(z)
        loss_pos = pemr_positive_loss(z[:, 0], z[:, 1], offdiag_weight=self.offdiag_weight)
        loss_neg = pemr_negative_loss(z[:, 0], z[:, 2], diag_weight=self.neg_weight)
        loss_pred = ops.mean(ops.cast(y_pred["pred_loss"], "float32"))
        return loss_pos, loss_neg, loss_pred

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss_pos, loss_neg, loss_pred = self.loss_terms(y_pred)
        loss = loss_pos + loss_neg + self.pred_weight * loss_pred
        self.pos_loss_tracker.update_state(loss_pos)
        self.neg_loss_tracker.update_state(loss_neg)
        self.pred_loss_tracker.update_state(loss_pred)
        return self.finish_loss(loss)

    def compute_output_shape(self, input_shape):
        return {
            "projections": (input_shape[0], 3, self.projection_dim),
            "pred_loss": (input_shape[0],),
        }

    def get_config(self):
        config = super().get_config()
        g = self.generator
        config.update(
            projection_dim=self.projection_dim,
            hidden_dim=self.hidden_dim,
            mask_ratio=self.mask_ratio,
            pred_weight=self.pred_weight,
            neg_weight=self.neg_weight,
            offdiag_weight=self.offdiag_weight,
            num_layers=g.num_layers,
            num_heads=g.num_heads,
            key_dim=g.key_dim,
            ffn_dim=g.ffn_dim,
            dropout=g.dropout_rate,
            pred_hidden_dim=g.pred_hidden_dim,
            bert_mask_prob=g.bert_mask_prob,
            huber_delta=g.huber_delta,
        )
        return config
