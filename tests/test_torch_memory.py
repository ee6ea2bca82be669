"""keras_clmr.torch_memory (glibc keeps freed memory during PyTorch inference) and SampleCNN's
chunked no-grad inference on PyTorch."""

import ctypes
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_clmr import torch_memory

from conftest import tiny_sample_cnn


def test_user_malloc_settings_and_opt_out_are_detected():
    assert not torch_memory.user_chose_malloc_settings({})
    assert torch_memory.user_chose_malloc_settings({"MALLOC_MMAP_MAX_": "65536"})
    assert torch_memory.user_chose_malloc_settings({"MALLOC_TRIM_THRESHOLD_": "0"})
    assert torch_memory.user_chose_malloc_settings({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=1"})
    assert not torch_memory.user_chose_malloc_settings({"GLIBC_TUNABLES": "glibc.pthread.x=1"})
    assert torch_memory.user_chose_malloc_settings({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"})
    assert not torch_memory.opted_out({})
    assert not torch_memory.opted_out({torch_memory.OPT_OUT_VARIABLE: "1"})
    for value in ("0", "false", "No", " off "):
        assert torch_memory.opted_out({torch_memory.OPT_OUT_VARIABLE: value})


# Where glibc puts a 64 MB block: the heap grows (sbrk) for "heap", an mmap leaves it as it is.
# Printed inside the scope, after freeing it there (trimmed or kept), and after the scope.
PROBE = """
import ctypes
from keras_clmr import torch_memory
libc = ctypes.CDLL(None)
libc.sbrk.restype = ctypes.c_void_p
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
SIZE = 64 << 20

def placed():
    before = libc.sbrk(0)
    block = libc.malloc(SIZE)
    grown = libc.sbrk(0) - before
    libc.free(block)
    kept = libc.sbrk(0) - before
    return ("heap" if grown >= SIZE else "mmap") + ("-kept" if kept >= SIZE else "")

with torch_memory.reusing_freed_memory():
    inside = placed()
print(torch_memory.applies(), inside, placed())
"""


def _probe(**environ):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop(torch_memory.OPT_OUT_VARIABLE, None)
    env.update(environ)
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"),
    reason="the settings are glibc's",
)
def test_large_blocks_stay_in_the_heap_inside_the_scope_only():
    # Inside: from the heap, and not trimmed when freed; after: mmapped again.
    assert _probe() == ["True", "heap-kept", "mmap"]
    assert _probe(**{torch_memory.OPT_OUT_VARIABLE: "0"}) == ["False", "mmap", "mmap"]
    assert _probe(MALLOC_MMAP_MAX_="65536") == ["False", "mmap", "mmap"]


@pytest.mark.multibackend
def test_torch_chunked_no_grad_inference_equals_the_layer_path(monkeypatch):
    """PyTorch, no-grad inference (as predict runs it): the first blocks run chunk by chunk
    (here 3 windows of 7, uneven) inside the allocator scope; the embeddings equal Keras'
    channels-last layers' and the whole-batch channels-first path's within 1e-5 of scale."""
    if keras.backend.backend() != "torch":
        pytest.skip("the channels-first path runs on the PyTorch backend only")
    import torch

    from keras_clmr.models import sample_cnn

    keras.utils.set_random_seed(9)
    model = tiny_sample_cnn()
    rng = np.random.default_rng(10)
    for layer in model.stack:  # non-trivial folded BatchNorms
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(-1.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.3, c)]
                + [rng.uniform(0.2, 2.0, c)]
            )
    monkeypatch.setattr(sample_cnn, "CHUNK_FLOATS", 16)
    model.inference_chunk = 3
    assert 0 < model._chunked_layers() < len(model.stack)
    x = rng.standard_normal((7, model.input_samples)).astype("float32")
    outputs = []
    for variant in ("chunked", "whole", "layers"):
        model.inference_chunk = 3 if variant == "chunked" else None
        if variant == "layers":
            model._runs_channels_first = lambda: False
        with torch.no_grad():
            outputs.append(keras.ops.convert_to_numpy(model(x, training=False)))
    chunked, whole, reference = outputs
    scale = np.abs(reference).max()
    assert scale > 0
    np.testing.assert_allclose(chunked, reference, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(whole, reference, rtol=1e-5, atol=1e-5 * scale)
