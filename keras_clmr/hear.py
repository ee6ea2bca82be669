"""The HEAR 2021 API (hear-eval-kit) for every keras_clmr encoder.

``hear-validator keras_clmr.hear -m clmr-mtat`` (or a preset folder, an ``hf://`` handle, a
``.keras`` file): ``load_model`` wraps the encoder of that model, ``get_timestamp_embeddings``
gives one embedding per window centred every ``hop_ms`` milliseconds, ``get_scene_embeddings``
the mean of the embeddings of consecutive windows. HEAR accepts TensorFlow or PyTorch modules:
on Keras' PyTorch backend the wrapper is a ``torch.nn.Module`` returning torch tensors; on the
TensorFlow and JAX backends it is a ``tf.Module`` returning TensorFlow tensors (on JAX the
encoder still runs on JAX; only the outputs are handed over as TensorFlow tensors).
"""

import keras
import numpy as np

DEFAULT_MODEL = "clmr-mtat"
DEFAULT_HOP_MS = 50.0
DEFAULT_BATCH_SIZE = 32


class HearModelError(ValueError):
    """A model or an audio batch that the HEAR API cannot use; the message says why."""


def _load_encoder(model_file_path):
    from keras_clmr.hub import load_pretrained
    from keras_clmr.models import encoder_of

    name = model_file_path or DEFAULT_MODEL
    if str(name).endswith(".keras"):
        import keras_clmr.models  # noqa: F401  (registers keras_clmr's classes)

        model = keras.saving.load_model(name, safe_mode=True, compile=False)
    else:
        model = load_pretrained(name, task="embed")
    encoder = encoder_of(model)
    for attribute in ("input_samples", "sample_rate"):
        if getattr(encoder, attribute, None) is None:
            raise HearModelError(
                f"{name}: its encoder has no {attribute}; HEAR needs a keras_clmr backbone "
                "(SampleCNN, FCN, musicnn, CPCEncoder) with a fixed window and sample rate."
            )
    return encoder


class _Embedder:
    """What both wrappers share: the encoder, HEAR's attributes and the windowed forward pass."""

    def _setup(self, encoder, hop_ms, batch_size):
        if not np.isfinite(hop_ms) or hop_ms <= 0:
            raise HearModelError(f"hop_ms must be a finite number > 0, got {hop_ms}.")
        if int(batch_size) < 1:
            raise HearModelError(f"batch_size must be >= 1, got {batch_size}.")
        self.encoder = encoder
        self.sample_rate = int(encoder.sample_rate)
        self.window = int(encoder.input_samples)
        width = int(encoder(np.zeros((1, self.window), np.float32)).shape[-1])
        self.scene_embedding_size = width
        self.timestamp_embedding_size = width
        self.hop_samples = max(1, int(round(hop_ms * self.sample_rate / 1000.0)))
        self.batch_size = int(batch_size)

    def _embed_windows(self, windows):
        from keras_clmr.batching import predict_batched

        return predict_batched(self.encoder, windows, self.batch_size, policy="power_of_two")

    def timestamp_embeddings(self, audio):
        """[n, T, D] embeddings of windows centred at 0, hop, 2 hop, ... and [n, T] times in ms."""
        n, samples = audio.shape
        count = samples // self.hop_samples + 1
        half = self.window // 2
        padded = np.pad(audio, ((0, 0), (half, self.window)))
        starts = np.arange(count) * self.hop_samples
        embeddings = np.empty((n, count, self.timestamp_embedding_size), np.float32)
        for row in range(n):
            windows = np.stack([padded[row, s : s + self.window] for s in starts])
            embeddings[row] = self._embed_windows(windows)
        times = np.broadcast_to(starts * 1000.0 / self.sample_rate, (n, count))
        return embeddings, np.ascontiguousarray(times, dtype=np.float32)

    def scene_embeddings(self, audio):
        """[n, D]: the mean embedding of consecutive windows (the last one zero-padded)."""
        n, samples = audio.shape
        count = max(1, -(-samples // self.window))
        padded = np.pad(audio, ((0, 0), (0, count * self.window - samples)))
        windows = padded.reshape(n * count, self.window)
        embeddings = self._embed_windows(windows).reshape(n, count, -1)
        return embeddings.mean(axis=1).astype(np.float32)


def _audio_array(audio, model):
    array = np.asarray(keras.ops.convert_to_numpy(audio), dtype=np.float32)
    if array.ndim != 2:
        raise HearModelError(
            f"HEAR passes audio as [n_sounds, n_samples] at {model.sample_rate} Hz; got shape "
            f"{array.shape}."
        )
    if not np.all(np.isfinite(array)):
        raise HearModelError("the audio batch holds NaN or infinite samples.")
    return array


def _wrapper_class():
    if keras.backend.backend() == "torch":
        import torch

        class TorchHearModel(torch.nn.Module, _Embedder):
            """A keras_clmr encoder as the torch module HEAR expects."""

            def __init__(self, encoder, hop_ms, batch_size):
                torch.nn.Module.__init__(self)
                self._setup(encoder, hop_ms, batch_size)

            def to_output(self, array):
                return torch.from_numpy(np.ascontiguousarray(array))

        return TorchHearModel
    import tensorflow as tf

    class TensorFlowHearModel(tf.Module, _Embedder):
        """A keras_clmr encoder as the TensorFlow module HEAR expects."""

        def __init__(self, encoder, hop_ms, batch_size):
            tf.Module.__init__(self, name="keras_clmr_hear")
            self._setup(encoder, hop_ms, batch_size)

        def to_output(self, array):
            return tf.convert_to_tensor(array, dtype=tf.float32)

    return TensorFlowHearModel


def load_model(model_file_path="", *, hop_ms=DEFAULT_HOP_MS, batch_size=DEFAULT_BATCH_SIZE):
    """HEAR's ``load_model``: ``model_file_path`` is a preset name, folder, hf:// handle or a
    ``.keras`` file ("" loads ``clmr-mtat``); the module returned carries ``sample_rate``,
    ``scene_embedding_size`` and ``timestamp_embedding_size``."""
    return _wrapper_class()(_load_encoder(model_file_path), float(hop_ms), batch_size)


def get_timestamp_embeddings(audio, model):
    """HEAR's timestamp embeddings: ([n, T, D] float32, [n, T] window centres in ms)."""
    embeddings, times = model.timestamp_embeddings(_audio_array(audio, model))
    return model.to_output(embeddings), model.to_output(times)


def get_scene_embeddings(audio, model):
    """HEAR's scene embeddings: [n, D] float32, the mean of the clip's window embeddings."""
    return model.to_output(model.scene_embeddings(_audio_array(audio, model)))


__all__ = [
    "HearModelError",
    "get_scene_embeddings",
    "get_timestamp_embeddings",
    "load_model",
]
