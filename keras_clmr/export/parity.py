"""Parity of an export with the Keras model: max abs differences on random audio, or an error.

Every export is loaded back (``onnxruntime.InferenceSession``, ``tf.saved_model.load``) and
compared with the Keras model at batch 1 and 7; a difference above ``atol`` (1e-4) raises
``ParityError``. Models whose frontend rounds to float16 (musicnn) get a documented second
check (``FLOAT16_NOTE``).
"""

import os

import keras
import numpy as np

from keras_clmr import io
from keras_clmr.export.onnx import export_onnx, onnx_session, run_onnx
from keras_clmr.export.savedmodel import export_savedmodel, savedmodel_outputs
from keras_clmr.export.signature import (
    EMBED_OUTPUT,
    TAG_OUTPUT,
    ParityError,
    input_samples,
    split_model,
)

PARITY_ATOL = 1e-4
PARITY_BATCHES = (1, 7)
FLOAT16_ATOL = 1e-3
FLOAT16_NOTE = (
    "The frontend rounds the mel power to float16 before the log (musicnn's own input pipeline "
    "does). A float32 difference of one ulp in the DFT (another runtime's summation order) can "
    "flip one float16 rounding, a 2^-11 relative step in one mel bin, so outputs of the exported "
    "graph and of Keras can differ by more than 1e-4 on some inputs. The graph itself is checked "
    "with the rounding switched off in both (without_float16_rounding, <= atol); the shipped graph "
    "is checked against the looser float16_atol."
)


def random_audio(batch, samples, seed=0):
    """Uniform(-0.9, 0.9) float32 audio [batch, samples], the parity check's input."""
    return np.random.default_rng(seed).uniform(-0.9, 0.9, (batch, samples)).astype(np.float32)


def keras_outputs(model, audio):
    """The reference outputs {name: array} of ``model`` on ``audio`` [batch, samples]."""
    encoder, tagger = split_model(model)
    out = {EMBED_OUTPUT: keras.ops.convert_to_numpy(encoder(audio, training=False))}
    if tagger is not None:
        out[TAG_OUTPUT] = keras.ops.convert_to_numpy(tagger(audio, training=False))
    return out


def _compare(run, model, batches, atol, seed, what):
    samples = input_samples(model)
    figures = {}
    for batch in batches:
        audio = random_audio(batch, samples, seed + batch)
        expected = keras_outputs(model, audio)
        got = run(audio)
        for name, reference in expected.items():
            if name not in got:
                raise ParityError(f"{what} has no output {name!r} (it has {sorted(got)}).")
            if got[name].shape != reference.shape:
                raise ParityError(
                    f"{what} output {name!r} has shape {got[name].shape} at batch "
                    f"{batch}, Keras gives {reference.shape}."
                )
            diff = float(np.max(np.abs(got[name].astype(np.float64) - reference)))
            figures.setdefault(name, {})[f"batch_{batch}"] = diff
            if not diff <= atol:
                raise ParityError(
                    f"{what} output {name!r} differs from the Keras model by {diff:.3g} (max abs, "
                    f"batch {batch}) > {atol:g}; the export is wrong and was not kept. Try another "
                    "--opset or report the model."
                )
    return {
        "max_abs_diff": figures,
        "atol": atol,
        "batches": list(batches),
        "inputs": f"uniform(-0.9, 0.9) audio, seed {seed} + batch",
    }


def check_onnx_parity(model, path, batches=PARITY_BATCHES, atol=PARITY_ATOL, seed=0):
    """Max abs differences {output: {batch_n: diff}} of the ONNX file against Keras; raises
    ParityError above ``atol``."""
    session = onnx_session(path)
    return _compare(
        lambda audio: run_onnx(session, audio), model, batches, atol, seed, f"ONNX export {path}"
    )


def check_savedmodel_parity(model, path, batches=PARITY_BATCHES, atol=PARITY_ATOL, seed=0):
    """As ``check_onnx_parity`` for a SavedModel folder (loaded with ``tf.saved_model.load``)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(os.fspath(path))
    return _compare(
        lambda audio: savedmodel_outputs(loaded, audio),
        model,
        batches,
        atol,
        seed,
        f"SavedModel export {path}",
    )


def _float16_layers(model):
    # Every layer carrying the flag (the frontend, and models that store it in their config).
    return [
        layer
        for layer in model._flatten_layers(include_self=True)
        if getattr(layer, "float16_rounding", False)
    ]


def checked_parity(fmt, model, path, *, batches=PARITY_BATCHES, atol=PARITY_ATOL):
    """Parity of an export at ``path`` ("onnx" or "savedmodel"); ParityError above ``atol``.

    A model whose frontend rounds to float16 (musicnn) that misses ``atol`` is re-exported with
    the rounding off: that graph must meet ``atol``, and the shipped one ``FLOAT16_ATOL``.
    """
    check = check_onnx_parity if fmt == "onnx" else check_savedmodel_parity
    try:
        return check(model, path, batches=batches, atol=atol)
    except ParityError:
        rounding = _float16_layers(model)
        if not rounding:
            raise
    for layer in rounding:
        layer.float16_rounding = False
    # The probe lies next to ``path`` under io's temporary name: removed here, or by the next
    # run's io.recover_folder(path) if this process is killed.
    try:
        with io.scratch_folder(path) as scratch:
            probe = os.path.join(scratch, os.path.basename(os.path.abspath(path)))
            (export_onnx if fmt == "onnx" else export_savedmodel)(model, probe)
            exact = check(model, probe, batches=batches, atol=atol)
    finally:
        for layer in rounding:
            layer.float16_rounding = True
    shipped = check(model, path, batches=batches, atol=FLOAT16_ATOL)
    shipped.update(float16_atol=FLOAT16_ATOL, without_float16_rounding=exact, note=FLOAT16_NOTE)
    return shipped
