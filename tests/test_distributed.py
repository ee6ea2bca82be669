"""Data-parallel steps on logical CPU devices against single-device steps.

Each backend runs in a fresh subprocess: the logical device split must happen before
TensorFlow/JAX initialise. TensorFlow: MirroredStrategy on 2 logical CPUs; JAX:
keras.distribution.DataParallel on 2 (XLA_FLAGS host device count). Two replicas per backend,
not more: XLA's CPU all-reduce waits for every host device at a rendezvous (40 s timeout), and
4 host devices on a loaded 2-core machine missed it; 2 replicas still tell per-replica from
global negatives (checked below).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKERS = os.path.join(REPO, "tests", "workers")
# XLA's CPU collectives abort a rendezvous after 40 s by default; on a loaded machine a replica
# thread may not be scheduled that soon. A slow step is not a wrong one: wait up to 10 minutes.
XLA_PATIENT_COLLECTIVES = (
    "--xla_cpu_collective_timeout_seconds=600 "
    "--xla_cpu_collective_call_terminate_timeout_seconds=600"
)
pytestmark = pytest.mark.large  # fresh interpreters, distributed training, kill/resume


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


def numpy_cpc_info_nce(y_pred, replicas, shift, num_negatives):
    """CPC's InfoNCE in float64, one loss per replica slice (its own latents as negatives:
    cyclic shifts by ``shift * (n + 1)``, as the worker pins them), averaged over replicas."""
    wc, z, full_z = (
        np.asarray(y_pred[k], np.float64) for k in ("predictions", "targets", "latents")
    )
    depth = z.shape[-1]
    steps = wc.shape[-1] // depth
    losses = []
    for part in np.split(np.arange(len(z)), replicas):
        flat = full_z[part].reshape(-1, depth)
        m = len(flat)
        total = 0.0
        for k in range(1, steps + 1):
            z_k = z[part, k:].reshape(-1, depth)
            wc_k = wc[part, :-k, (k - 1) * depth : k * depth].reshape(-1, depth)
            rows = np.arange(m - len(z_k), m)  # negatives taken from the end of the permutation
            negatives = [flat[(rows + shift * (n + 1)) % m] for n in range(num_negatives)]
            logits = np.stack([np.sum(wc_k * z_k, 1)] + [np.sum(wc_k * g, 1) for g in negatives], 1)
            top = logits.max(1)
            total += np.mean(np.log(np.exp(logits - top[:, None]).sum(1)) + top - logits[:, 0])
        losses.append(total / steps)
    return float(np.mean(losses))


def run_worker(tmp_path, backend, replicas, worker="distributed_step.py"):
    script = os.path.join(WORKERS, worker)
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="3",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={replicas} {XLA_PATIENT_COLLECTIVES}",
        CUDA_VISIBLE_DEVICES="",
    )
    result = subprocess.run(
        [sys.executable, str(script), str(replicas), REPO],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.parametrize("backend, replicas", [("tensorflow", 2), ("jax", 2)])
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


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_cpc_distributed_step_matches_single_device(tmp_path, backend):
    """CPC under MirroredStrategy / DataParallel on 2 logical CPUs: each replica contrasts its
    own slice (as the original's per-GPU loss), so the step equals the single-device step whose
    loss is the mean of the per-slice InfoNCE losses; checked against float64 numpy too."""
    pytest.importorskip(backend)
    replicas = 2
    row = run_worker(tmp_path, backend, replicas, worker="distributed_cpc_step.py")
    assert row["replicas"] == replicas
    assert row["variable_devices"] == replicas, "the variables were not placed on every replica"
    expected = numpy_cpc_info_nce(row["y_pred"], replicas, row["shift"], row["negative_samples"])
    whole_batch = numpy_cpc_info_nce(row["y_pred"], 1, row["shift"], row["negative_samples"])
    assert abs(expected - whole_batch) > 1e-3  # per-replica and global negatives differ
    np.testing.assert_allclose(row["reference_loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(row["loss"], expected, rtol=1e-5)
    assert row["max_update"] > 1e-3
    assert row["max_weight_diff"] < 2e-4 * max(1.0, row["max_update"]), row["max_weight_diff"]
    assert np.isfinite(row["random_negatives_loss"]) and row["random_negatives_max_update"] > 0


def test_kill_and_resume_continues_from_the_saved_step(tmp_path):
    """Mirrored strategy on 2 logical CPUs, LARS, step checkpoints every 3 steps of 4-step
    epochs: SIGKILL at step 7 (last checkpoint: step 6), resume, and the finished run equals an
    uninterrupted one (same data position, optimizer state and crop seeds)."""
    pytest.importorskip("tensorflow")
    script = os.path.join(WORKERS, "distributed_resume.py")
    out = str(tmp_path / "run")
    env = dict(
        os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES=""
    )
    killed = subprocess.run(
        [sys.executable, str(script), "kill", out, REPO],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    with open(os.path.join(out, "state.json")) as file:
        state = json.load(file)
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (6, 1, 2)
    assert not [n for n in os.listdir(out) if n.startswith(".")], "a temporary file was left behind"
    resumed = subprocess.run(
        [sys.executable, str(script), "resume", out, REPO],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in resumed.stdout.splitlines() if line.startswith("RESULT ")]
    assert resumed.returncode == 0 and lines, resumed.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["position"] == [1, 2]
    assert result["iterations"] == 8
    assert "epoch-00002.keras" in result["files"] and "step-0000000006.keras" in result["files"]
    assert result["diff"] < 1e-5, result["diff"]
