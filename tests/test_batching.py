"""keras_clmr.batching: padded sizes, zero padding, and outputs that never include padding rows."""

import numpy as np
import pytest

from keras_clmr import batching


def test_padded_sizes():
    assert [batching.padded_size(n, 32) for n in (1, 5, 32)] == [32, 32, 32]
    sizes = [batching.padded_size(n, 32, "power_of_two") for n in (1, 2, 3, 5, 17, 32)]
    assert sizes == [1, 2, 4, 8, 32, 32]
    assert batching.padded_size(7, 6, "power_of_two") == 6  # capped at the batch size
    with pytest.raises(ValueError, match="padding policy"):
        batching.padded_size(3, 8, "nearest")


def test_pad_rows_appends_zeros_only():
    x = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    padded = batching.pad_rows(x, 4)
    assert padded.shape == (4, 3) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:2], x)
    assert not padded[2:].any()
    np.testing.assert_array_equal(batching.pad_rows(x, 2), x)


@pytest.mark.parametrize("policy", ["full", "power_of_two"])
def test_predict_batched_matches_unbatched_and_sees_fixed_shapes(policy):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((11, 4)).astype(np.float32)
    weights = rng.standard_normal((4, 3))
    seen = []

    def predict(batch):
        seen.append(batch.shape[0])
        return batch.astype(np.float64) @ weights + 1.0  # padding rows would give 1.0, not 0

    out = batching.predict_batched(predict, x, 4, policy=policy)
    np.testing.assert_allclose(out, x.astype(np.float64) @ weights + 1.0, rtol=1e-12)
    assert seen == [4, 4, 4]  # 11 rows = 4 + 4 + 3, the last batch padded to 4
    seen.clear()
    batching.predict_batched(predict, x[:5], 8, policy=policy)
    assert seen == [8]  # 5 rows: padded to 8 by both policies
    seen.clear()
    batching.predict_batched(predict, x[:3], 8, policy=policy)
    assert seen == ([8] if policy == "full" else [4])
    assert batching.predict_batched(predict, x[:0], 4).shape == (0,)
