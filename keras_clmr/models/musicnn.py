"""musicnn and its VGG baseline (Pons & Serra 2019), ported to Keras 3.

The original taggers (``pip install musicnn``: ``MTT_musicnn``, ``MSD_musicnn``, ``MTT_vgg``,
``MSD_vgg``) run on 3-second log-mel patches at 16 kHz: n_fft 512, hop 256, 96 mel bands
(librosa's Slaney filterbank), ``log10(1 + 10000 * mel)`` and 187 frames per patch. Here the
frontend is part of the model (``MusicnnLogMel``, in ``keras.ops``), so the backbone takes
raw audio [B, 47616] (= 187 frames) like the other keras_clmr backbones and returns the
embedding the original calls ``penultimate`` (musicnn, 200-d) or ``pool5`` (vgg, 256-d).
The tag layer (dropout 0.5 + dense + sigmoid) is a ``MusicTagger`` head on top; see
``musicnn_tagger`` and ``keras_clmr.conversion.musicnn`` for the released weights.
"""

import keras
import numpy as np
from keras import layers, ops

from keras_clmr.layers.frontends import dft_kernels, power_spectrogram, slaney_mel_filterbank  # noqa: F401
from keras_clmr.models.backbone import Backbone

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187
# TF1 tf.compat.v1.layers.batch_normalization defaults (what the checkpoints were trained with).
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
ARCHITECTURES = ("musicnn", "vgg")
# (pool_h, pool_w, stride_h, stride_w) over (time, mel) of the five VGG blocks, as in musicnn's
# models.vgg (the MTT_vgg checkpoint). MSD_vgg's saved training graph uses different ones
# (MSD_VGG_POOLS); the converter reads them from each checkpoint's graph.
VGG_POOLS = ((4, 1, 2, 2), (2, 2, 2, 2), (2, 2, 2, 2), (2, 2, 2, 2), (4, 4, 4, 4))
MSD_VGG_POOLS = ((4, 1, 4, 1), (1, 4, 1, 4), (2, 2, 2, 2), (2, 2, 2, 2), (4, 4, 4, 4))


@keras.saving.register_keras_serializable(package="keras_clmr")
class MusicnnLogMel(layers.Layer):
    """musicnn's input: audio [B, N] -> log10(1 + 10000 * mel) [B, 1 + N // hop, n_mels].

    librosa conventions: centred frames with reflect padding, periodic Hann window, power
    spectrogram, Slaney mel filterbank. ``float16_rounding`` rounds the mel power to float16
    before the log, as musicnn's ``batch_data`` and its training data ("mtt_float16") did.
    """

    def __init__(
        self,
        sample_rate=SAMPLE_RATE,
        n_fft=N_FFT,
        hop_length=HOP,
        n_mels=N_MELS,
        float16_rounding=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.float16_rounding = bool(float16_rounding)
        self._dft = dft_kernels(self.n_fft)
        self._mel = slaney_mel_filterbank(self.sample_rate, self.n_fft, self.n_mels).astype(
            np.float32
        )

    @property
    def filterbank(self):
        """librosa's Slaney filterbank [n_fft // 2 + 1, n_mels] in float32 (librosa's dtype)."""
        return self._mel

    def compute_output_shape(self, input_shape):
        n = input_shape[1]
        return (input_shape[0], None if n is None else 1 + n // self.hop_length, self.n_mels)

    def call(self, audio):
        if len(audio.shape) == 3:
            audio = audio[..., 0]
        power = power_spectrogram(audio, self._dft, self.hop_length, "float32")
        mel = ops.matmul(power, ops.convert_to_tensor(self._mel))
        if self.float16_rounding:
            mel = ops.cast(ops.cast(mel, "float16"), "float32")
        return ops.log10(1.0 + 10000.0 * mel)

    def get_config(self):
        config = super().get_config()
        config.update(
            sample_rate=self.sample_rate,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            float16_rounding=self.float16_rounding,
        )
        return config


def _bn(name):
    return layers.BatchNormalization(axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


@keras.saving.register_keras_serializable(package="keras_clmr")
class Musicnn(Backbone):
    """musicnn / VGG backbone: audio [B, input_samples] at 16 kHz -> embedding [B, embedding_dim].

    ``architecture="musicnn"``: musically motivated front-end (timbral 7x38 and 7x67 filters,
    temporal 128/64/32 filters), dense mid-end with residual connections, max+mean temporal
    pooling, dense 200 + BN: the ``penultimate`` features (200-d). It accepts any length of at
    least one patch; ``input_samples`` (187 frames, ~3 s) is the window it was trained on.
    ``architecture="vgg"``: 5 conv layers of 128 3x3 filters; ``pool5`` flattened (256-d);
    exactly 187 frames.

    ``logmel_embedding(patches)`` runs the network on precomputed log-mel patches
    [B, 187, 96] (what the original TF graph takes); ``features(audio)`` /
    ``logmel_features(patches)`` return the intermediate representations of musicnn's
    ``extractor`` (timbral, temporal, cnn1-3, max/mean pool, penultimate; vgg: pool1-5).
    """

    def __init__(
        self,
        architecture="musicnn",
        num_filt_midend=64,
        num_units_backend=200,
        vgg_filters=128,
        vgg_pools=VGG_POOLS,
        n_frames=PATCH_FRAMES,
        sample_rate=SAMPLE_RATE,
        n_mels=N_MELS,
        float16_rounding=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}.")
        self.architecture = architecture
        self.num_filt_midend = int(num_filt_midend)
        self.num_units_backend = int(num_units_backend)
        self.vgg_filters = int(vgg_filters)
        self.vgg_pools = tuple(tuple(int(v) for v in pool) for pool in vgg_pools)
        if len(self.vgg_pools) != 5 or any(len(pool) != 4 for pool in self.vgg_pools):
            raise ValueError(
                f"vgg_pools needs 5 entries (pool_h, pool_w, stride_h, stride_w), got {vgg_pools}."
            )
        self.n_frames = int(n_frames)
        self.sample_rate = int(sample_rate)
        self.n_mels = int(n_mels)
        self.float16_rounding = bool(float16_rounding)
        self.input_samples = (self.n_frames - 1) * HOP
        self.frontend = MusicnnLogMel(
            self.sample_rate, N_FFT, HOP, self.n_mels, self.float16_rounding, name="logmel"
        )
        self.bn_input = _bn("bn_input")
        if architecture == "musicnn":
            self._make_musicnn()
            self.embedding_dim = self.num_units_backend
        else:
            self._make_vgg()
            t, f = self.n_frames, self.n_mels
            for ph, pw, sh, sw in self.vgg_pools:
                t, f = (t - ph) // sh + 1, (f - pw) // sw + 1
            if t < 1 or f < 1:
                raise ValueError(
                    f"vgg_pools {self.vgg_pools} leave no output for {self.n_frames}x{self.n_mels} "
                    "input."
                )
            self.embedding_dim = t * f * self.vgg_filters
        self.build((None, self.input_samples))

    # ---- architecture ----

    def _make_musicnn(self):
        num_filt = 1.6
        n_mels = self.n_mels
        self.timbral = []
        for name, width in (("timbral_74", int(0.4 * n_mels)), ("timbral_77", int(0.7 * n_mels))):
            self.timbral.append(
                (
                    layers.Conv2D(
                        int(num_filt * 128),
                        (7, width),
                        padding="valid",
                        activation="relu",
                        name=f"{name}_conv",
                    ),
                    _bn(f"{name}_bn"),
                )
            )
        self.temporal = []
        for length in (128, 64, 32):
            self.temporal.append(
                (
                    layers.Conv2D(
                        int(num_filt * 32),
                        (length, 1),
                        padding="same",
                        activation="relu",
                        name=f"temporal_{length}_conv",
                    ),
                    _bn(f"temporal_{length}_bn"),
                )
            )
        self.midend = []
        for i in range(1, 4):
            self.midend.append(
                (
                    layers.Conv1D(
                        self.num_filt_midend,
                        7,
                        padding="valid",
                        activation="relu",
                        name=f"midend_{i}_conv",
                    ),
                    _bn(f"midend_{i}_bn"),
                )
            )
        self.pool_bn = _bn("pool_bn")
        self.pool_dropout = layers.Dropout(0.5, name="pool_dropout")
        self.penultimate = layers.Dense(
            self.num_units_backend, activation="relu", name="penultimate_dense"
        )
        self.penultimate_bn = _bn("penultimate_bn")

    def _make_vgg(self):
        self.vgg_blocks = []
        pools = self.vgg_pools
        for i, (ph, pw, sh, sw) in enumerate(pools, start=1):
            block = {
                "conv": layers.Conv2D(
                    self.vgg_filters,
                    (3, 3),
                    padding="same",
                    activation="relu",
                    name=f"vgg_{i}_conv",
                ),
                "bn": _bn(f"vgg_{i}_bn"),
                "pool": layers.MaxPooling2D(
                    (ph, pw), strides=(sh, sw), padding="valid", name=f"vgg_{i}_pool"
                ),
            }
            if i < len(pools):
                block["dropout"] = layers.Dropout(0.25, name=f"vgg_{i}_dropout")
            self.vgg_blocks.append(block)
        self.flatten = layers.Flatten(name="flatten")

    def build(self, input_shape):
        frames = self.n_frames
        spec = (None, frames, self.n_mels, 1)
        self.frontend.build(input_shape)
        self.bn_input.build(spec)
        if self.architecture == "musicnn":
            width = 0
            for conv, bn in self.timbral:
                padded = (None, frames + 6, self.n_mels, 1)
                conv.build(padded)
                out = conv.compute_output_shape(padded)
                bn.build(out)
                width += out[-1]
            for conv, bn in self.temporal:
                conv.build(spec)
                out = conv.compute_output_shape(spec)
                bn.build(out)
                width += out[-1]
            channels = width
            for conv, bn in self.midend:
                conv.build((None, frames + 6, channels))
                bn.build((None, frames, self.num_filt_midend))
                channels = self.num_filt_midend
            total = width + 3 * self.num_filt_midend
            self.pool_bn.build((None, 2 * total))
            self.penultimate.build((None, 2 * total))
            self.penultimate_bn.build((None, self.num_units_backend))
        else:
            shape = spec
            for block in self.vgg_blocks:
                block["conv"].build(shape)
                shape = block["conv"].compute_output_shape(shape)
                block["bn"].build(shape)
                shape = block["pool"].compute_output_shape(shape)
        self.built = True

    def _check_length(self, shape):
        length = shape[1] if len(shape) >= 2 else None
        if length is None:
            return
        if self.architecture == "vgg" and length != self.input_samples:
            raise ValueError(
                f"The musicnn VGG model takes exactly {self.input_samples} samples "
                f"({self.n_frames} frames, "
                f"{self.input_samples / self.sample_rate:.2f} s at {self.sample_rate} Hz), got "
                f"{length}. Window the audio first (keras_clmr.embed / keras_clmr.tag do)."
            )
        if length < N_FFT:
            raise ValueError(
                f"musicnn needs at least {N_FFT} samples at {self.sample_rate} Hz, got {length}."
            )

    def logmel_features(self, logmel, training=None):
        """Intermediate representations of log-mel patches [B, frames, n_mels] (musicnn's
        ``extractor``).

        musicnn: ``timbral`` [B, T, 408], ``temporal`` [B, T, 153], ``cnn1``/``cnn2``/``cnn3``
        [B, T, 64], ``max_pool``/``mean_pool`` [B, 753], ``penultimate`` [B, 200] (the embedding).
        vgg: ``pool1`` ... ``pool5`` (after each max-pool) and ``embedding`` (pool5 flattened).
        """
        x = self.bn_input(ops.expand_dims(logmel, -1), training=training)
        features = {}
        if self.architecture == "vgg":
            for i, block in enumerate(self.vgg_blocks, start=1):
                x = block["pool"](block["bn"](block["conv"](x), training=training))
                features[f"pool{i}"] = x
                if "dropout" in block:
                    x = block["dropout"](x, training=training)
            features["embedding"] = self.flatten(x)
            return features
        padded = ops.pad(x, [[0, 0], [3, 3], [0, 0], [0, 0]])
        timbral = [
            ops.max(bn(conv(padded), training=training), axis=2) for conv, bn in self.timbral
        ]
        temporal = [ops.max(bn(conv(x), training=training), axis=2) for conv, bn in self.temporal]
        features["timbral"] = ops.concatenate(timbral, axis=-1)
        features["temporal"] = ops.concatenate(temporal, axis=-1)
        front = ops.concatenate(timbral + temporal, axis=-1)
        outputs = [front]
        h = front
        for i, (conv, bn) in enumerate(self.midend, start=1):
            y = bn(conv(ops.pad(h, [[0, 0], [3, 3], [0, 0]])), training=training)
            h = y if i == 1 else y + h  # residual connections from the second layer on
            features[f"cnn{i}"] = h
            outputs.append(h)
        midend = ops.concatenate(outputs, axis=-1)
        features["max_pool"] = ops.max(midend, axis=1)
        features["mean_pool"] = ops.mean(midend, axis=1)
        # The original concatenates [max, mean] on a trailing axis and flattens: interleaved.
        pooled = ops.reshape(
            ops.stack([features["max_pool"], features["mean_pool"]], axis=-1),
            (-1, 2 * midend.shape[-1]),
        )
        pooled = self.pool_dropout(self.pool_bn(pooled, training=training), training=training)
        features["penultimate"] = self.penultimate_bn(self.penultimate(pooled), training=training)
        return features

    def logmel_embedding(self, logmel, training=None):
        """The embedding of log-mel patches [B, frames, n_mels] (the original graph's input)."""
        features = self.logmel_features(logmel, training=training)
        return features["embedding" if self.architecture == "vgg" else "penultimate"]

    def features(self, audio):
        """``logmel_features`` of audio windows [B, input_samples] (inference mode)."""
        self._check_length(audio.shape)
        return self.logmel_features(self.frontend(audio), training=False)

    def call(self, audio, training=None):
        self._check_length(audio.shape)
        return self.logmel_embedding(self.frontend(audio), training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            architecture=self.architecture,
            num_filt_midend=self.num_filt_midend,
            num_units_backend=self.num_units_backend,
            vgg_filters=self.vgg_filters,
            vgg_pools=[list(pool) for pool in self.vgg_pools],
            n_frames=self.n_frames,
            sample_rate=self.sample_rate,
            n_mels=self.n_mels,
            float16_rounding=self.float16_rounding,
        )
        return config


class MusicnnOnPatches(keras.Model):
    """A musicnn tagger (tag probabilities) or backbone (embedding) run on log-mel patches
    [B, frames, n_mels] instead of audio, sharing its weights.

    What ``keras_clmr.tag`` / ``embed`` run for musicnn: they cut the patches from one
    log-mel of the whole file, as musicnn's extractor does, instead of one per audio window.
    """

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        from keras_clmr.models.roles import encoder_of, is_tagger

        self.model = model
        self.backbone = encoder_of(model)
        self.tagger = model if is_tagger(model) else None
        if not isinstance(self.backbone, Musicnn):
            raise TypeError(
                f"MusicnnOnPatches needs a Musicnn backbone, got {type(self.backbone).__name__}."
            )

    def call(self, patches):
        embedding = self.backbone.logmel_embedding(patches, training=False)
        if self.tagger is None:
            return embedding
        return self.tagger.activation(self.tagger.head(embedding, training=False))


def musicnn_tagger(architecture="musicnn", tags=None, num_classes=50, **kwargs):
    """A ``MusicTagger`` with musicnn's output layer (dropout 0.5 -> dense -> sigmoid).

    Random weights; ``keras_clmr.load_pretrained("musicnn-mtt", task="tag")`` (and
    ``musicnn-msd``, ``vgg-mtt``, ``vgg-msd``) give the released ones.
    """
    from keras_clmr.models.tagger import MusicTagger

    backbone = Musicnn(architecture=architecture, **kwargs)
    num_classes = len(tags) if tags is not None else num_classes
    tagger = MusicTagger(
        backbone,
        num_classes=num_classes,
        head="linear",
        tags=tags,
        dropout=0.5,
        name=f"{architecture}_tagger",
    )
    tagger.build((None, backbone.input_samples))
    return tagger
