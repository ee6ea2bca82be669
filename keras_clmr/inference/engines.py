"""Which network runs on the windows, and on what: Keras or ONNX Runtime.

``resolve_model`` turns a preset name / handle / folder / keras.Model into (model, network):
the network is the tagger for ``tag`` and the encoder inside any model for ``embed``.
``predictor`` gives a ``batch -> numpy`` callable: ``engine="onnxruntime"`` runs the graph of
``keras_clmr.export.onnx`` (the one ONNX builder: SampleCNN and taggers on it, BatchNorm folded;
same outputs to ~1e-5, ~2-3x faster on CPU), ``"keras"`` runs ``predict_on_batch``, ``"auto"``
takes ONNX Runtime where the builder supports the model. musicnn models take log-mel patches
(``windows.MelPatching``) and run on Keras.
"""

import hashlib
import os
import weakref

import keras
import numpy as np

from keras_clmr.batching import keras_predictor
from keras_clmr.models import encoder_of, is_tagger
from keras_clmr.models.musicnn import Musicnn

DEFAULT_MODEL = "clmr-mtat"
ENGINES = ("auto", "keras", "onnxruntime")

_LOADED = {}
_ONNX_CACHE = {}
_PATCH_MODELS = {}


def resolve_model(model, task, progress=None):
    """(model, network to run) for ``task`` "embed" or "tag"; names are loaded once and kept
    (``progress=False`` also silences a first use's download and conversion messages)."""
    if model is None:
        model = DEFAULT_MODEL
    if isinstance(model, (str, os.PathLike)):
        key = (os.fspath(model), task)
        if key not in _LOADED:
            from keras_clmr.hub import load_pretrained

            _LOADED[key] = load_pretrained(model, task=task, progress=progress is not False)
        model = _LOADED[key]
    if not isinstance(model, keras.Model):
        raise TypeError(
            "model must be a preset name, hf:// handle, folder or keras.Model, got "
            f"{type(model).__name__}."
        )
    if task == "tag":
        if not is_tagger(model):
            raise ValueError(
                "tag() needs a tagger (a model with .backbone and .tags, e.g. "
                f"keras_clmr.models.MusicTagger), got {type(model).__name__}; load one with "
                "load_pretrained(name, task='tag') or use embed()."
            )
        return model, model
    return model, encoder_of(model)


def _fingerprint(net):
    digest = hashlib.blake2b(digest_size=16)
    for weight in net.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def cached_onnx_predictor(net):
    """``onnx_predictor(net)``, rebuilt when the weights change (more training), else reused."""
    from keras_clmr.export.onnx import onnx_predictor

    key = id(net)
    fingerprint = _fingerprint(net)
    entry = _ONNX_CACHE.get(key)
    if entry is not None and entry[0]() is net and entry[1] == fingerprint:
        return entry[2]
    predict = onnx_predictor(net)
    _ONNX_CACHE[key] = (weakref.ref(net), fingerprint, predict)
    return predict


def patch_model(net):
    """``MusicnnOnPatches(net)``, built once per musicnn model (its predict function too)."""
    from keras_clmr.models.musicnn import MusicnnOnPatches

    entry = _PATCH_MODELS.get(id(net))
    if entry is not None and entry[0]() is net:
        return entry[1]
    runner = MusicnnOnPatches(net)
    _PATCH_MODELS[id(net)] = (weakref.ref(net), runner)
    return runner


def predictor(net, engine):
    """(``batch -> numpy outputs``, engine used) for ``net``.

    musicnn models (a ``Musicnn`` encoder) take log-mel patch batches and run on Keras.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be 'auto', 'keras' or 'onnxruntime', got {engine!r}.")
    if isinstance(encoder_of(net), Musicnn):
        if engine == "onnxruntime":
            raise ValueError(
                "engine='onnxruntime' does not support musicnn models (they run on log-mel "
                "patches cut from the whole file, as musicnn does); use engine='keras'."
            )
        return keras_predictor(patch_model(net)), "keras"
    if engine != "keras":
        try:
            return cached_onnx_predictor(net), "onnxruntime"
        except (NotImplementedError, ImportError) as error:
            if engine == "onnxruntime":
                raise ValueError(
                    f"engine='onnxruntime' does not support this model ({error}); "
                    "use engine='keras'."
                ) from error
    return keras_predictor(net), "keras"


def layer_names(net):
    """The ``layer=`` values ``embed`` accepts for encoder ``net`` (besides None)."""
    if hasattr(net, "logmel_features"):  # musicnn / vgg: what musicnn's extractor offers
        if getattr(net, "architecture", "musicnn") == "vgg":
            return tuple(f"pool{i}" for i in range(1, len(net.vgg_blocks) + 1)) + ("embedding",)
        return (
            "timbral",
            "temporal",
            "cnn1",
            "cnn2",
            "cnn3",
            "max_pool",
            "mean_pool",
            "penultimate",
        )
    stack = getattr(net, "stack", None)
    if stack is not None:  # SampleCNN: block0 (stem) ... block10 (final)
        blocks = sorted(
            {int(layer.name.split("_")[1]) for layer in stack if layer.name.startswith("block_")}
        )
        return tuple(f"block{i}" for i in blocks)
    return ()


def _pooled(x):
    """[B, D] from a feature map: time-varying outputs are averaged over time (axis 1)."""
    x = keras.ops.convert_to_numpy(x)
    while x.ndim > 2:
        x = x.mean(axis=1)
    return np.asarray(x, np.float32)


def layer_predictor(net, layer):
    """``batch -> [B, D]`` features of ``layer`` of encoder ``net`` (see ``layer_names``);
    musicnn's batches are log-mel patches, SampleCNN's audio windows.

    Vector features (musicnn's ``max_pool``, ``mean_pool``, ``penultimate``) come as they
    are; time-varying ones (musicnn's ``timbral``/``cnn*``, vgg's ``pool*``, SampleCNN's
    ``blockN``) are averaged over time, so every window gives one vector.
    """
    names = layer_names(net)
    if layer not in names:
        raise ValueError(
            f"layer={layer!r} is not a feature of {type(net).__name__}; choose one of "
            f"{list(names) or 'none (this model offers only its embedding)'} or layer=None."
        )
    if hasattr(net, "logmel_features"):  # batches of log-mel patches (windows.MelPatching)

        def predict_patches(batch):
            patches = keras.ops.convert_to_tensor(batch)
            return _pooled(net.logmel_features(patches, training=False)[layer])

        return predict_patches
    prefix = f"block_{layer[len('block') :]}_"
    last = max(i for i, item in enumerate(net.stack) if item.name.startswith(prefix))

    def predict(batch):
        x = keras.ops.expand_dims(keras.ops.convert_to_tensor(batch), -1)
        for item in net.stack[: last + 1]:
            if isinstance(item, keras.layers.BatchNormalization):
                x = item(x, training=False)
            else:
                x = item(x)
        return _pooled(x)

    return predict
