"""Worker for tests/test_distributed.py: one data-parallel CPC step against a single-device step.

Run in a fresh interpreter (the logical device split must precede TensorFlow/JAX start-up):
``python tests/workers/distributed_cpc_step.py REPLICAS REPO``. Prints ``RESULT <json>``.

The random parts are pinned so both runs see the same numbers: segments as long as the crop
(offset 0), no positive sub-window, and negatives from fixed cyclic shifts (the same function
replaces ``draw_negative_indices`` in both runs). A second distributed step with the real
random negatives checks that path runs (finite loss, weights move).
"""

import json
import sys

import keras
import numpy as np
from keras import ops

from keras_clmr import distributed

REPLICAS = int(sys.argv[1])
distributed.split_logical_cpus(REPLICAS)
from keras_clmr.losses_cpc import info_nce  # noqa: E402
from keras_clmr.models import cpc as cpc_module  # noqa: E402
from keras_clmr.models.cpc import CPC, CPCEncoder  # noqa: E402

TINY = dict(
    strides=(4, 2),
    filter_sizes=(8, 4),
    paddings=(2, 1),
    latent_dim=16,
    context_dim=8,
    input_samples=512,
)  # 64 latents per window
SHIFT = 37  # crosses clip boundaries: a replica slice and the global batch differ
name = "mirrored" if keras.backend.backend() == "tensorflow" else "data_parallel"
random_negatives = cpc_module.draw_negative_indices


def cyclic_negatives(num_negatives, num_latents, seed=None):
    """Row n: latent (m + SHIFT * (n + 1)) mod M for position m (deterministic 'permutations')."""
    positions = ops.arange(num_latents, dtype="int32")
    shifts = SHIFT * ops.arange(1, num_negatives + 1, dtype="int32")[:, None]
    return ops.mod(positions[None, :] + shifts, ops.cast(num_latents, "int32"))


class SingleDevice(CPC):
    """The reference: the whole global batch on one device, the loss the mean of per-slice
    InfoNCE losses (each replica's negatives come from its own slice of the batch)."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        b = y_pred["latents"].shape[0] // REPLICAS
        losses = []
        for r in range(REPLICAS):
            part = {k: v[r * b : (r + 1) * b] for k, v in y_pred.items() if k != "negative_indices"}
            indices = cyclic_negatives(self.negative_samples, b * part["latents"].shape[1])
            losses.append(info_nce(part["predictions"], part["targets"], part["latents"], indices))
        return ops.mean(ops.stack(losses))


def build(cls):
    keras.utils.set_random_seed(3)
    model = cls(
        CPCEncoder(**TINY), prediction_steps=3, negative_samples=4, subsample_window=None, seed=0
    )
    model.build((None, model.input_samples))
    return model


def weights(model):
    return [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights]


cpc_module.draw_negative_indices = cyclic_negatives
batch = 4 * REPLICAS
reference = build(SingleDevice)
initial = reference.get_weights()
x = 8 * np.random.default_rng(0).standard_normal((batch, reference.input_samples))
x = x.astype("float32")  # loud enough for scores of O(1): the choice of negatives matters
outputs = reference(x, training=True)
y_pred = {
    k: keras.ops.convert_to_numpy(v).tolist() for k, v in outputs.items() if k != "negative_indices"
}
reference.set_weights(initial)
reference.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
reference_loss = reference.fit(x, batch_size=batch, shuffle=False, epochs=1, verbose=0)
reference_loss = reference_loss.history["loss"][0]
reference_weights = weights(reference)

distribution = distributed.setup_distribution(name)
with distribution.scope():
    model = build(CPC)
    model.set_weights(initial)
    model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
loss = model.fit(x, batch_size=batch, shuffle=False, epochs=1, verbose=0).history["loss"][0]
after = weights(model)
backing = model.encoder.weights[0]._value  # jax.Array (sharded) or tf MirroredVariable
devices = (
    len(backing.sharding.device_set)
    if hasattr(backing, "sharding")
    else len(getattr(backing, "values", [backing]))
)

# The real random negatives under the same distribution: it runs and trains.
cpc_module.draw_negative_indices = random_negatives
with distribution.scope():
    random_model = build(CPC)
    random_model.set_weights(initial)
    random_model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
random_loss = random_model.fit(x, batch_size=batch, shuffle=False, epochs=1, verbose=0)
random_moved = max(float(np.max(np.abs(a - b))) for a, b in zip(weights(random_model), initial))

print(
    "RESULT "
    + json.dumps(
        {
            "loss": loss,
            "reference_loss": reference_loss,
            "y_pred": y_pred,
            "shift": SHIFT,
            "negative_samples": reference.negative_samples,
            "max_weight_diff": max(
                float(np.max(np.abs(a - b))) for a, b in zip(after, reference_weights)
            ),
            "max_update": max(
                float(np.max(np.abs(a - b))) for a, b in zip(initial, reference_weights)
            ),
            "replicas": distribution.num_replicas,
            "variable_devices": devices,
            "random_negatives_loss": random_loss.history["loss"][0],
            "random_negatives_max_update": random_moved,
        }
    )
)
