"""keras_clmr: a Keras 3 model zoo for self-supervised music representations (CLMR, PEMR).

import keras_clmr
model = keras_clmr.load_pretrained("clmr-mtat")          # a Keras model
result = keras_clmr.embed("song.mp3", model=model)        # embeddings [T, D] + start times
tags = keras_clmr.tag("song.mp3", model="musicnn-mtt")    # per-window and clip-level tags
"""

__version__ = "0.1.0"

import importlib
import os

# TensorFlow's default CPU allocator hands every large tensor back to the OS when it is freed,
# so the next step's tensors are page-faulted and zeroed again by the kernel: about a fifth of
# a CLMR train step's CPU time here, and a quarter of PEMR's. TensorFlow's BFC allocator keeps
# and reuses that memory. TensorFlow reads this variable when it allocates its first tensor, so
# it applies when keras_clmr is imported before any tensor exists (importing TensorFlow or
# Keras first is fine). Set TF_CPU_ALLOCATOR_USE_BFC=false beforehand to keep the default.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

# Public names load on first use (PEP 562), so ``import keras_clmr`` and the ``keras-clmr``
# command line start without Keras; ``from keras_clmr import embed`` works as before.
_PUBLIC = {
    "AudioError": "keras_clmr.audio",
    "load_preset": "keras_clmr.hub",
    "load_pretrained": "keras_clmr.hub",
    "save_preset": "keras_clmr.hub",
    "embed": "keras_clmr.inference",
    "tag": "keras_clmr.inference",
    "CLMR": "keras_clmr.models",
    "FCN": "keras_clmr.models",
    "PEMR": "keras_clmr.models",
    "MusicTagger": "keras_clmr.models",
    "SampleCNN": "keras_clmr.models",
    "list_presets": "keras_clmr.presets",
}
_SUBMODULES = ("layers", "losses", "metrics", "models")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"keras_clmr.{name}")
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_clmr' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AudioError",
    "CLMR",
    "FCN",
    "MusicTagger",
    "PEMR",
    "SampleCNN",
    "embed",
    "layers",
    "list_presets",
    "load_preset",
    "load_pretrained",
    "losses",
    "metrics",
    "models",
    "save_preset",
    "tag",
]
