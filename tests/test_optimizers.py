"""LARS against a float64 numpy reference; the warm-up + cosine schedule; serialization."""

import math

import keras
import numpy as np
import pytest

from keras_clmr.optimizers import LARS, build_optimizer, lars_peak_learning_rate, warmup_cosine


def numpy_lars(weights, grads_per_step, lr, momentum, weight_decay, eta, nesterov, excluded):
    """SimCLR's LARSOptimizer (classic momentum) in float64, written from its formulas."""
    w = {k: v.astype(np.float64).copy() for k, v in weights.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    for grads in grads_per_step:
        for key in w:
            g = grads[key].astype(np.float64)
            scaled = lr
            if not excluded[key]:
                g = g + weight_decay * w[key]
                wn, gn = np.linalg.norm(w[key]), np.linalg.norm(g)
                trust = eta * wn / gn if wn > 0 and gn > 0 else 1.0
                scaled = lr * trust
            v[key] = momentum * v[key] + scaled * g
            w[key] = w[key] - (momentum * v[key] + scaled * g if nesterov else v[key])
    return w


@pytest.mark.multibackend
@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_matches_numpy_reference(nesterov):
    rng = np.random.default_rng(0)
    values = {"kernel": rng.standard_normal((5, 3)).astype("float32"),
              "bias": rng.standard_normal((3,)).astype("float32"),
              "gamma": np.ones((3,), "float32"),
              "zero_kernel": np.zeros((2, 2), "float32")}  # ||w|| = 0: trust ratio 1
    variables = [keras.Variable(v, name=k) for k, v in values.items()]
    steps = [{k: rng.standard_normal(v.shape).astype("float32") for k, v in values.items()} for _ in range(3)]
    # A large weight decay so that forgetting it (or applying it to bias/gamma) shows.
    optimizer = LARS(0.5, momentum=0.9, weight_decay=0.1, eta=0.01, nesterov=nesterov)
    for grads in steps:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(grads[k]), var)
                                   for k, var in zip(values, variables)])
    excluded = {"kernel": False, "bias": True, "gamma": True, "zero_kernel": False}
    expected = numpy_lars(values, steps, 0.5, 0.9, 0.1, 0.01, nesterov, excluded)
    for key, var in zip(values, variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(var), expected[key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)
    assert [optimizer.excluded(v) for v in variables] == [excluded[k] for k in values]


@pytest.mark.multibackend
def test_lars_excludes_by_name_and_round_trips():
    optimizer = LARS(0.2, weight_decay=1e-6, exclude_names=("projector",))
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    assert not optimizer.excluded(kernel)
    restored = LARS.from_config(optimizer.get_config())
    assert restored.get_config() == optimizer.get_config()
    assert restored.lars_weight_decay == 1e-6 and restored.exclude_names == ("projector",)


def test_warmup_cosine_schedule_values():
    peak = lars_peak_learning_rate(48)
    assert math.isclose(peak, 0.075 * math.sqrt(48))
    schedule = warmup_cosine(peak, total_steps=100, warmup_steps=10)
    values = np.array([float(keras.ops.convert_to_numpy(schedule(s))) for s in range(101)])
    steps = np.arange(101)
    expected = np.where(steps < 10, peak * steps / 10,
                        peak * 0.5 * (1 + np.cos(np.pi * np.clip(steps - 10, 0, 90) / 90)))
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="warmup"):
        warmup_cosine(peak, total_steps=10, warmup_steps=10)


def test_build_optimizer():
    adam = build_optimizer("adam", batch_size=48, steps_per_epoch=10, epochs=3)
    assert isinstance(adam, keras.optimizers.Adam) and math.isclose(float(adam.learning_rate), 3e-4, rel_tol=1e-6)
    lars = build_optimizer("lars", batch_size=96, steps_per_epoch=10, epochs=5, warmup_epochs=1)
    assert isinstance(lars, LARS) and lars.lars_weight_decay == 1e-6
    lr = lars._learning_rate
    assert math.isclose(float(keras.ops.convert_to_numpy(lr(10))), 0.075 * math.sqrt(96), rel_tol=1e-5)
    with pytest.raises(ValueError, match="Unknown optimizer"):
        build_optimizer("sgd", batch_size=1, steps_per_epoch=1, epochs=1)
