import keras
import numpy as np
import pytest

from keras_clmr.losses import nt_xent


def simclr_nt_xent_reference(z_i, z_j, temperature):
    """SimCLR's NT_Xent written out in float64 numpy: [pos | negs] logits, CE sum / 2N."""
    z = np.concatenate([z_i, z_j]).astype(np.float64)
    n2 = len(z)
    n = n2 // 2
    norms = np.linalg.norm(z, axis=1)
    sim = (z @ z.T) / np.maximum(norms[:, None] * norms[None, :], 1e-8) / temperature
    total = 0.0
    for k in range(n2):
        positive = sim[k, (k + n) % n2]
        negatives = [sim[k, m] for m in range(n2) if m != k and m != (k + n) % n2]
        logits = np.array([positive] + negatives)
        total += -(positive - (np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()))
    return total / n2


@pytest.mark.multibackend
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-6), ("float32", 1e-5)])
@pytest.mark.parametrize("n,d,temperature", [(4, 8, 0.5), (16, 128, 0.5), (7, 3, 0.1)])
def test_matches_float64_reference(dtype, rtol, n, d, temperature):
    if dtype == "float64" and keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            pytest.skip("JAX runs without x64 here; float64 is checked on TF and PyTorch.")
    rng = np.random.default_rng(n * d)
    z_i = rng.standard_normal((n, d)).astype(dtype)
    z_j = (z_i + 0.5 * rng.standard_normal((n, d))).astype(dtype)
    got = float(
        keras.ops.convert_to_numpy(
            nt_xent(
                keras.ops.convert_to_tensor(z_i, dtype),
                keras.ops.convert_to_tensor(z_j, dtype),
                temperature,
            )
        )
    )
    want = simclr_nt_xent_reference(z_i, z_j, temperature)
    assert abs(got - want) / abs(want) <= rtol


@pytest.mark.multibackend
def test_aligned_views_beat_shuffled_views():
    rng = np.random.default_rng(0)
    z_i = rng.standard_normal((32, 16)).astype("float32")
    z_j = z_i + 0.1 * rng.standard_normal((32, 16)).astype("float32")
    aligned = float(keras.ops.convert_to_numpy(nt_xent(z_i, z_j)))
    shuffled = float(keras.ops.convert_to_numpy(nt_xent(z_i, z_j[rng.permutation(32)])))
    assert aligned < shuffled - 0.5


@pytest.mark.multibackend
def test_invariant_to_scale():
    rng = np.random.default_rng(1)
    z_i, z_j = rng.standard_normal((2, 8, 4)).astype("float32")
    base = float(keras.ops.convert_to_numpy(nt_xent(z_i, z_j)))
    for scale in (1e-3, 7.0, 1e3):
        scaled = float(keras.ops.convert_to_numpy(nt_xent(z_i * scale, z_j * scale)))
        assert scaled == pytest.approx(base, rel=1e-5)


def test_bad_arguments():
    z = np.ones((4, 3), "float32")
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z, z, temperature=0)
    with pytest.raises(ValueError, match="equally sized"):
        nt_xent(z, z[:2])
