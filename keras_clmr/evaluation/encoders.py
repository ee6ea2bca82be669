"""The encoder under evaluation (checkpoint, preset or random init) and its identity record."""

import hashlib
import os

import keras
import numpy as np

from keras_clmr import io
from keras_clmr.models import encoder_of


def config_of(model):
    """``model.get_config()``, or None for a model without a config (still evaluable)."""
    try:
        return model.get_config()
    except Exception:  # a backbone without a config is still evaluable
        return None


def describe_encoder(encoder, **extra):
    """The identity record of an encoder in results.json: class, parameters, weights digest."""
    weights = [np.asarray(keras.ops.convert_to_numpy(w)) for w in encoder.weights]
    digest = hashlib.sha256(b"".join(w.tobytes() for w in weights)).hexdigest()[:16]
    return {
        "class_name": type(encoder).__name__,
        "parameters": int(sum(w.size for w in weights)),
        "weights_digest": digest,
        **extra,
    }


def _as_encoder(model, source):
    """The encoder inside ``model``: itself, a pretrainer's encoder or a tagger's backbone."""
    encoder = encoder_of(model)
    if getattr(encoder, "input_samples", None) is None:
        raise ValueError(
            f"{source} holds a {type(model).__name__}, which is neither a keras_clmr "
            "encoder nor a pretrainer (CLMR, PEMR) or tagger holding one."
        )
    return encoder


def random_encoder(sample_rate=22050, channels=None, seed=0, like=None, strides=None):
    """A randomly initialised SampleCNN (CLMR's stride set for ``sample_rate`` unless
    ``strides`` is given), or one with the configuration of encoder ``like``."""
    from keras_clmr.models import SampleCNN

    keras.utils.set_random_seed(int(seed))
    if like is not None:
        encoder = type(like).from_config(like.get_config())
    else:
        kwargs = {"channels": tuple(int(c) for c in channels)} if channels else {}
        if strides:
            encoder = SampleCNN(
                strides=tuple(int(s) for s in strides), sample_rate=int(sample_rate), **kwargs
            )
        else:
            encoder = SampleCNN.for_sample_rate(int(sample_rate), **kwargs)
    if not encoder.built:
        encoder.build((None, encoder.input_samples))
    return encoder


def load_encoder(checkpoint, sample_rate=22050, channels=None, seed=0, strides=None):
    """Resolve ``--checkpoint``: (encoder, identity dict).

    Accepts ``random`` (a fresh SampleCNN for ``sample_rate``/``channels``), ``random:<ckpt>``
    (a fresh encoder with the architecture of checkpoint ``<ckpt>``), a ``.keras`` file
    (a CLMR pretrainer -> its ``.encoder``; a tagger -> its ``.backbone``; or an encoder), a
    pretraining output directory (its ``model.keras``), a preset folder, or a preset
    name / ``hf://`` handle (``keras_clmr.hub.load_pretrained``).
    """
    if not checkpoint:
        raise ValueError(
            "--checkpoint is required: a pretraining .keras file, a preset folder or name, or "
            "'random'."
        )
    checkpoint = str(checkpoint)
    if checkpoint == "random":
        encoder = random_encoder(sample_rate, channels, seed, strides=strides)
        return encoder, describe_encoder(
            encoder, kind="random", seed=int(seed), config=config_of(encoder)
        )
    if checkpoint.startswith("random:"):
        template, identity = load_encoder(checkpoint[len("random:") :], sample_rate, channels, seed)
        encoder = random_encoder(like=template, seed=seed)
        return encoder, describe_encoder(
            encoder, kind="random", seed=int(seed), architecture_of=identity
        )
    path = checkpoint
    if (
        os.path.isdir(path)
        and os.path.isfile(os.path.join(path, "model.keras"))
        and not os.path.isfile(os.path.join(path, "metadata.json"))
    ):
        path = os.path.join(path, "model.keras")
    if os.path.isfile(path):
        if not path.endswith(".keras"):
            raise ValueError(
                f"{path}: expected a .keras file written by keras_clmr (or a preset folder); "
                "convert PyTorch checkpoints with `python -m export.convert_checkpoint` first."
            )
        model = keras.models.load_model(path, compile=False)
        encoder = _as_encoder(model, path)
        return encoder, describe_encoder(
            encoder,
            kind="keras_file",
            path=os.path.abspath(path),
            sha256=io.sha256_file(path),
            model_class=type(model).__name__,
        )
    try:
        from keras_clmr import hub
    except ImportError as error:
        raise ValueError(
            f"{checkpoint}: not a file or pretraining directory, and presets are unavailable "
            f"(keras_clmr.hub could not be imported: {error})."
        ) from error
    if not os.path.exists(checkpoint) and "/" in checkpoint and not checkpoint.startswith("hf://"):
        raise FileNotFoundError(f"{checkpoint}: no such file or directory.")
    model = hub.load_pretrained(checkpoint, task="embed")
    encoder = _as_encoder(model, checkpoint)
    metadata = (
        getattr(model, "preset_metadata", None) or getattr(encoder, "preset_metadata", None) or {}
    )
    weights_file = (metadata.get("files") or {}).get("model.weights.h5") or {}
    return encoder, describe_encoder(
        encoder,
        kind="preset",
        preset=checkpoint,
        preset_name=metadata.get("name"),
        preset_saved_with=metadata.get("keras_clmr_version"),
        sha256=weights_file.get("sha256"),
    )
