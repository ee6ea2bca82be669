"""TensorFlow SavedModel export (``keras.export.ExportArchive``), signatures ``embed`` / ``tag``.

Signature ``embed``: ``audio`` [batch, samples] -> ``embedding`` [batch, D]; a tagger adds
``tag``: ``audio`` -> ``tags`` [batch, C] probabilities, and ``serving_default`` is the first of
them (``tag`` for a tagger). Needs the TensorFlow backend.
"""

import os
import time

import keras
import numpy as np

from keras_clmr import io
from keras_clmr.export.signature import (
    EMBED_OUTPUT,
    INPUT_NAME,
    TAG_OUTPUT,
    check_float32,
    input_samples,
    require_tensorflow,
    split_model,
)


def write_savedmodel(model, folder):
    """Write the SavedModel of ``model`` into ``folder`` (not atomically); return info."""
    import tensorflow as tf

    require_tensorflow()
    check_float32(model)
    samples = input_samples(model)
    encoder, tagger = split_model(model)
    (tagger or encoder)(np.zeros((1, samples), np.float32), training=False)
    spec = [tf.TensorSpec((None, samples), tf.float32, name=INPUT_NAME)]
    archive = keras.export.ExportArchive()
    archive.track(tagger or encoder)
    endpoints = []
    if tagger is not None:
        endpoints.append("tag")
        archive.add_endpoint(
            "tag", lambda audio: {TAG_OUTPUT: tagger(audio, training=False)}, input_signature=spec
        )
    endpoints.append("embed")
    archive.add_endpoint(
        "embed", lambda audio: {EMBED_OUTPUT: encoder(audio, training=False)}, input_signature=spec
    )
    start = time.perf_counter()
    archive.write_out(folder, verbose=False)
    outputs = {"embed": [EMBED_OUTPUT], **({"tag": [TAG_OUTPUT]} if tagger else {})}
    return {
        "folder": os.path.basename(folder),
        "signatures": endpoints,
        "serving_default": endpoints[0],
        "inputs": [INPUT_NAME],
        "outputs": outputs,
        "input_shape": ["batch", samples],
        "exporter": f"keras {keras.__version__} ExportArchive",
        "export_seconds": round(time.perf_counter() - start, 2),
    }


def export_savedmodel(model, path):
    """Write ``model`` as a SavedModel folder at ``path`` (atomically, replacing it); its info."""
    require_tensorflow()
    with io.atomic_folder(path, overwrite=True) as temporary:
        info = write_savedmodel(model, temporary)
    info["folder"] = os.path.basename(os.path.abspath(path))
    return info


def savedmodel_outputs(loaded, audio):
    """{output name: array} of a ``tf.saved_model.load``-ed export (all its signatures)."""
    import tensorflow as tf

    result = {}
    for signature in ("embed", "tag"):
        if signature in loaded.signatures:
            audio_tensor = tf.constant(np.asarray(audio, np.float32))
            out = loaded.signatures[signature](**{INPUT_NAME: audio_tensor})
            result.update({name: value.numpy() for name, value in out.items()})
    return result
