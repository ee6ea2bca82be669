"""Data-parallel steps on logical CPU devices against single-device steps.

Each backend runs in a fresh subprocess: the logical device split must happen before
TensorFlow/JAX initialise. TensorFlow: MirroredStrategy on 2 logical CPUs; JAX:
keras.distribution.DataParallel on 4 (XLA_FLAGS host device count).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r'''
import json, os, sys
import numpy as np
import keras
from keras_clmr import distributed

REPLICAS = int(sys.argv[1])
distributed.split_logical_cpus(REPLICAS)
sys.path.insert(0, os.path.join(sys.argv[2], "tests"))
from conftest import tiny_sample_cnn
from keras_clmr.losses import nt_xent
from keras_clmr.models import CLMR

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
    devices = (len(backing.sharding.device_set) if hasattr(backing, "sharding")
               else len(getattr(backing, "values", [backing])))
    results[negatives] = {
        "loss": loss, "reference_loss": reference_loss, "z": z.tolist(),
        "max_weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(after, reference_weights)),
        "max_update": max(float(np.max(np.abs(a - b))) for a, b in zip(weights(build(CLMR, negatives)),
                                                                          reference_weights)),
        "replicas": distribution.num_replicas, "variable_devices": devices, "sync_bn_layers": changed,
    }
print("RESULT " + json.dumps(results))
'''


def numpy_nt_xent(z_i, z_j, temperature=0.5):
    """SimCLR's NT_Xent (mask of negatives, CrossEntropy sum / 2N) in float64."""
    z = np.concatenate([z_i, z_j]).astype(np.float64)
    n = len(z_i)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    sim = (z @ z.T) / np.maximum(norm * norm.T, 1e-8) / temperature
    total = 0.0
    for a in range(2 * n):
        positive = sim[a, (a + n) % (2 * n)]
        negatives = [sim[a, b] for b in range(2 * n) if b != a and b != (a + n) % (2 * n)]
        logits = np.array([positive] + negatives)
        total += np.log(np.exp(logits - logits.max()).sum()) + logits.max() - positive
    return total / (2 * n)


def run_worker(tmp_path, backend, replicas):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={replicas}", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, str(script), str(replicas), REPO], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("backend, replicas", [("tensorflow", 2), ("jax", 4)])
def test_distributed_step_matches_single_device(tmp_path, backend, replicas):
    pytest.importorskip(backend)
    results = run_worker(tmp_path, backend, replicas)
    for negatives, row in results.items():
        assert row["replicas"] == replicas
        assert row["variable_devices"] == replicas, "the variables were not placed on every replica"
        z = np.asarray(row["z"])
        if negatives == "global":
            # Global negatives: one NT-Xent over the whole global batch.
            expected = numpy_nt_xent(z[:, 0], z[:, 1])
        else:
            # Per-replica negatives: each replica contrasts its own slice; the step's loss (and
            # gradient) is the mean of the per-slice losses, as DDP averages the replicas.
            slices = np.split(z, replicas)
            expected = np.mean([numpy_nt_xent(s[:, 0], s[:, 1]) for s in slices])
        np.testing.assert_allclose(row["reference_loss"], expected, rtol=1e-5, err_msg=negatives)
        np.testing.assert_allclose(row["loss"], expected, rtol=1e-5, err_msg=negatives)
        # The update moved the weights by O(1); after it, distributed and single-device weights
        # agree to float32 round-off.
        assert row["max_update"] > 1e-2
        assert row["max_weight_diff"] < 2e-4 * max(1.0, row["max_update"]), row["max_weight_diff"]
    # The two modes differ, so the comparison above can tell them apart.
    assert abs(results["global"]["loss"] - results["local"]["loss"]) > 1e-2


RESUME_WORKER = r'''
import json, os, signal, sys
import numpy as np
import keras
from keras_clmr import distributed

mode, out, repo = sys.argv[1], sys.argv[2], sys.argv[3]
distributed.split_logical_cpus(2)
sys.path.insert(0, os.path.join(repo, "tests"))
from conftest import tiny_sample_cnn
from keras_clmr.models import CLMR
from keras_clmr.optimizers import build_optimizer
from keras_clmr.pretraining import (EpochCheckpoint, SegmentBatches, StepCheckpoint, fit_resumable,
                                    load_checkpoint, resume_position)

STEPS, EPOCHS, EVERY, KILL_AT = 4, 2, 3, 7
distribution = distributed.setup_distribution("mirrored")


class Kill(keras.callbacks.Callback):
    step = 0

    def on_train_batch_end(self, batch, logs=None):
        Kill.step += 1
        if Kill.step == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)


def train(directory, kill):
    keras.utils.set_random_seed(5)
    clips = list(np.random.default_rng(1).standard_normal((16, 16000)).astype("float32"))
    data = SegmentBatches(clips, 8000, 4, steps_per_epoch=STEPS, seed=7)
    epoch = in_epoch = 0
    with distribution.scope():
        if os.path.exists(os.path.join(directory, "state.json")):
            path, epoch, in_epoch = resume_position(directory)
            model = load_checkpoint(path)
            # The backbone's config does not carry BatchNorm's `synchronized`: set it again.
            distributed.set_sync_batchnorm(model)
        else:
            model = CLMR(tiny_sample_cnn(), projection_dim=8, hidden_dim=16, seed=0)
            distributed.set_sync_batchnorm(model)
            model.compile(optimizer=build_optimizer("lars", batch_size=4, steps_per_epoch=STEPS, epochs=EPOCHS,
                                                    warmup_epochs=1), jit_compile=False)
    callbacks = [StepCheckpoint(directory, EVERY, STEPS, initial_step=epoch * STEPS + in_epoch),
                 EpochCheckpoint(directory, steps_per_epoch=STEPS)]
    if kill:
        callbacks.append(Kill())
    fit_resumable(model, data, epochs=EPOCHS, steps_per_epoch=STEPS, initial_epoch=epoch,
                  initial_step_in_epoch=in_epoch, callbacks=callbacks, verbose=0, shuffle=False)
    return model, (epoch, in_epoch)


if mode == "kill":
    train(out, kill=True)
    raise SystemExit("not killed")
# The uninterrupted run first: its weights are initialised exactly as in the killed process.
fresh, _ = train(out + "-fresh", kill=False)
resumed, position = train(out, kill=False)
diff = max(float(np.max(np.abs(keras.ops.convert_to_numpy(a) - keras.ops.convert_to_numpy(b))))
           for a, b in zip(resumed.weights, fresh.weights))
print("RESULT " + json.dumps({"position": position, "diff": diff,
                              "iterations": int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)),
                              "files": sorted(os.listdir(out))}))
'''


def test_kill_and_resume_continues_from_the_saved_step(tmp_path):
    """Mirrored strategy on 2 logical CPUs, LARS, step checkpoints every 3 steps of 4-step
    epochs: SIGKILL at step 7 (last checkpoint: step 6), resume, and the finished run equals an
    uninterrupted one (same data position, optimizer state and crop seeds)."""
    pytest.importorskip("tensorflow")
    script = tmp_path / "resume.py"
    script.write_text(RESUME_WORKER)
    out = str(tmp_path / "run")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    killed = subprocess.run([sys.executable, str(script), "kill", out, REPO], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    with open(os.path.join(out, "state.json")) as file:
        state = json.load(file)
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (6, 1, 2)
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    resumed = subprocess.run([sys.executable, str(script), "resume", out, REPO], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    lines = [line for line in resumed.stdout.splitlines() if line.startswith("RESULT ")]
    assert resumed.returncode == 0 and lines, resumed.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["position"] == [1, 2]
    assert result["iterations"] == 8
    assert "epoch-00002.keras" in result["files"] and "step-0000000006.keras" in result["files"]
    assert result["diff"] < 1e-5, result["diff"]
