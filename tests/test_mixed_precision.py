"""Mixed precision: a tiny CLMR trains with finite loss; the loss stays float32."""

import keras
import numpy as np
import pytest

from keras_clmr.losses import nt_xent
from keras_clmr.models import CLMR

from conftest import BACKEND, tiny_sample_cnn


@pytest.fixture
def policy():
    previous = keras.config.dtype_policy()
    yield lambda name: keras.config.set_dtype_policy(name)
    keras.config.set_dtype_policy(previous)


@pytest.mark.large
@pytest.mark.multibackend
@pytest.mark.parametrize("name", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_tiny_clmr(policy, name):
    policy(name)
    model = CLMR(tiny_sample_cnn(), projection_dim=8, hidden_dim=16, seed=0)
    assert model.encoder.compute_dtype == name.split("_")[1]
    assert model.encoder.weights[0].dtype == "float32"  # variables stay float32
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    if name == "mixed_float16":
        # compile wraps the optimizer in dynamic loss scaling for float16.
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x = np.random.default_rng(0).standard_normal((8, 2 * model.input_samples)).astype("float32")
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    # float16: the first steps may overflow at the initial loss scale (2**15) and be skipped
    # while the scale halves; 8 steps leave room for that.
    history = model.fit(x, batch_size=8, epochs=8, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)), losses
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(after, before)) > 0
    if name == "mixed_float16":
        print(
            "loss scale after 8 steps:",
            float(keras.ops.convert_to_numpy(model.optimizer.dynamic_scale)),
        )
    # The projections come out in the compute dtype; NT-Xent runs in float32 on them.
    y = model(x, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == name.split("_")[1]
    loss = model.compute_loss(y_pred=y)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    reference = nt_xent(keras.ops.cast(y[:, 0], "float32"), keras.ops.cast(y[:, 1], "float32"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loss), keras.ops.convert_to_numpy(reference), rtol=1e-6
    )


@pytest.mark.multibackend
@pytest.mark.parametrize("name", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_embeddings_match_float32(policy, name):
    """The same weights run in float32 and in mixed precision: the embeddings agree to 4 units
    of the compute dtype's epsilon (relative to their scale; measured: ~1 unit on TF), and
    differ, so the low precision was really used."""
    tolerance = 4 * {"mixed_bfloat16": 2.0**-8, "mixed_float16": 2.0**-11}[name]  # 4 epsilons
    x = np.random.default_rng(1).standard_normal((4, 7776)).astype("float32")
    reference = tiny_sample_cnn()
    expected = keras.ops.convert_to_numpy(reference(x, training=False)).astype("float64")
    policy(name)
    mixed = tiny_sample_cnn()
    mixed(x[:1], training=False)
    mixed.set_weights(reference.get_weights())
    got = mixed(x, training=False)
    assert keras.backend.standardize_dtype(got.dtype) == name.split("_")[1]
    got = keras.ops.convert_to_numpy(keras.ops.cast(got, "float32")).astype("float64")
    error = float(np.abs(got - expected).max() / np.abs(expected).max())
    assert 0 < error <= tolerance, (BACKEND, name, error)
