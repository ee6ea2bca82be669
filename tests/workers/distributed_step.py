"""Worker for tests/test_distributed.py: one data-parallel step against a single-device step.

Run in a fresh interpreter (the logical device split must precede TensorFlow/JAX start-up):
``python tests/workers/distributed_step.py REPLICAS REPO``. Prints ``RESULT <json>``.
"""

import json
import os
import sys

import keras
import numpy as np

from keras_clmr import distributed

REPLICAS = int(sys.argv[1])
distributed.split_logical_cpus(REPLICAS)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from keras_clmr.losses import nt_xent
from keras_clmr.models import CLMR

from conftest import tiny_sample_cnn

name = "mirrored" if keras.backend.backend() == "tensorflow" else "data_parallel"


class SingleDevice(CLMR):
    """The reference: one device, the whole global batch; 'local' = mean of per-slice losses."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        groups = REPLICAS if self.negatives == "local" else 1
        return nt_xent(y_pred[:, 0], y_pred[:, 1], self.temperature, groups=groups)


def build(cls, negatives):
    keras.utils.set_random_seed(3)
    model = cls(tiny_sample_cnn(), projection_dim=8, hidden_dim=16, seed=0, negatives=negatives)
    model.build((None, model.input_samples))
    return model


def weights(model):
    return [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights]


batch = 4 * REPLICAS
results = {}
references = {}
for negatives in ("global", "local"):
    reference = build(SingleDevice, negatives)
    initial = reference.get_weights()
    # Segments as long as the crop: the crop offset is 0, so both runs see identical views.
    x = np.random.default_rng(0).standard_normal((batch, reference.input_samples)).astype("float32")
    z = keras.ops.convert_to_numpy(reference(x, training=True))
    reference.set_weights(initial)
    reference.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    loss = reference.fit(x, batch_size=batch, shuffle=False, epochs=1, verbose=0).history["loss"][0]
    references[negatives] = (initial, x, z, loss, weights(reference))

distribution = distributed.setup_distribution(name)
for negatives, (initial, x, z, reference_loss, reference_weights) in references.items():
    with distribution.scope():
        model = build(CLMR, negatives)
        changed = distributed.set_sync_batchnorm(model)
        model.set_weights(initial)
        model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    loss = model.fit(x, batch_size=batch, shuffle=False, epochs=1, verbose=0).history["loss"][0]
    after = weights(model)
    backing = model.encoder.weights[0]._value  # jax.Array (sharded) or tf MirroredVariable
    devices = (
        len(backing.sharding.device_set)
        if hasattr(backing, "sharding")
        else len(getattr(backing, "values", [backing]))
    )
    results[negatives] = {
        "loss": loss,
        "reference_loss": reference_loss,
        "z": z.tolist(),
        "max_weight_diff": max(
            float(np.max(np.abs(a - b))) for a, b in zip(after, reference_weights)
        ),
        "max_update": max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(weights(build(CLMR, negatives)), reference_weights)
        ),
        "replicas": distribution.num_replicas,
        "variable_devices": devices,
        "sync_bn_layers": changed,
    }
print("RESULT " + json.dumps(results))
