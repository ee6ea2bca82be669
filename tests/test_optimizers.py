"""LARS against a float64 numpy reference; the warm-up + cosine schedule; serialization."""

import math

import keras
import numpy as np
import pytest

from keras_clmr.optimizers import LARS, build_optimizer, lars_peak_learning_rate, warmup_cosine


def numpy_lars(weights, grads_per_step, lr, momentum, weight_decay, eta, nesterov, excluded):
    """SimCLR's TensorFlow LARSOptimizer (classic momentum, exclusions) in float64."""
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
def test_lars_with_exclusion_matches_simclr_tf_reference(nesterov):
    rng = np.random.default_rng(0)
    values = {
        "kernel": rng.standard_normal((5, 3)).astype("float32"),
        "bias": rng.standard_normal((3,)).astype("float32"),
        "gamma": np.ones((3,), "float32"),
        "zero_kernel": np.zeros((2, 2), "float32"),
    }  # ||w|| = 0: trust ratio 1
    variables = [keras.Variable(v, name=k) for k, v in values.items()]
    steps = [
        {k: rng.standard_normal(v.shape).astype("float32") for k, v in values.items()}
        for _ in range(3)
    ]
    # A large weight decay so that forgetting it (or applying it to bias/gamma) shows.
    optimizer = LARS(
        0.5, momentum=0.9, weight_decay=0.1, eta=0.01, nesterov=nesterov, exclude_bias_and_norm=True
    )
    for grads in steps:
        optimizer.apply_gradients(
            [(keras.ops.convert_to_tensor(grads[k]), var) for k, var in zip(values, variables)]
        )
    excluded = {"kernel": False, "bias": True, "gamma": True, "zero_kernel": False}
    expected = numpy_lars(values, steps, 0.5, 0.9, 0.1, 0.01, nesterov, excluded)
    for key, var in zip(values, variables):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(var), expected[key], rtol=1e-5, atol=1e-6, err_msg=key
        )
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
    expected = np.where(
        steps < 10,
        peak * steps / 10,
        peak * 0.5 * (1 + np.cos(np.pi * np.clip(steps - 10, 0, 90) / 90)),
    )
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="warmup"):
        warmup_cosine(peak, total_steps=10, warmup_steps=10)


def test_build_optimizer():
    adam = build_optimizer("adam", batch_size=48, steps_per_epoch=10, epochs=3)
    assert isinstance(adam, keras.optimizers.Adam) and math.isclose(
        float(adam.learning_rate), 3e-4, rel_tol=1e-6
    )
    lars = build_optimizer("lars", batch_size=96, steps_per_epoch=10, epochs=5, warmup_epochs=1)
    assert isinstance(lars, LARS) and lars.lars_weight_decay == 1e-6
    lr = lars._learning_rate
    assert math.isclose(
        float(keras.ops.convert_to_numpy(lr(10))), 0.075 * math.sqrt(96), rel_tol=1e-5
    )
    with pytest.raises(ValueError, match="Unknown optimizer"):
        build_optimizer("sgd", batch_size=1, steps_per_epoch=1, epochs=1)


def numpy_clmr2_lars(weights, grads_per_step, lr, momentum, weight_decay, eta):
    """CLMR 2.0's LARS (simclr's PyTorch port) in float64: it never reads its exclude lists, so
    every parameter is decayed and adapted, and its guard ``w_norm.ge(0)`` is always true."""
    w = {k: v.astype(np.float64).copy() for k, v in weights.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    for grads in grads_per_step:
        for key in w:
            g = grads[key].astype(np.float64) + weight_decay * w[key]
            trust = eta * np.linalg.norm(w[key]) / np.linalg.norm(g)
            v[key] = momentum * v[key] + lr * trust * g
            w[key] = w[key] - v[key]
    return w


@pytest.mark.multibackend
def test_lars_default_is_clmr_2_lars_on_every_parameter():
    rng = np.random.default_rng(1)
    values = {
        "kernel": rng.standard_normal((5, 3)).astype("float32"),
        "bias": rng.standard_normal((3,)).astype("float32"),
        "gamma": np.ones((3,), "float32"),
        "beta": np.zeros((3,), "float32"),
    }  # ||w|| = 0: trust 0, stays at 0 as in the original
    variables = [keras.Variable(v, name=k) for k, v in values.items()]
    steps = [
        {k: rng.standard_normal(v.shape).astype("float32") for k, v in values.items()}
        for _ in range(3)
    ]
    optimizer = LARS(0.5, momentum=0.9, weight_decay=0.1, eta=0.01)
    for grads in steps:
        optimizer.apply_gradients(
            [(keras.ops.convert_to_tensor(grads[k]), var) for k, var in zip(values, variables)]
        )
    expected = numpy_clmr2_lars(values, steps, 0.5, 0.9, 0.1, 0.01)
    for key, var in zip(values, variables):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(var), expected[key], rtol=1e-5, atol=1e-6, err_msg=key
        )
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variables[3]), 0.0)
    assert not any(optimizer.excluded(v) for v in variables)
    lars = build_optimizer("lars", batch_size=8, steps_per_epoch=2, epochs=2, warmup_epochs=1)
    assert not lars.exclude_bias_and_norm
    assert build_optimizer(
        "lars",
        batch_size=8,
        steps_per_epoch=2,
        epochs=2,
        warmup_epochs=1,
        lars_exclude_bias_and_norm=True,
    ).exclude_bias_and_norm


def numpy_torch_adam(w, grads, lr, beta_1=0.9, beta_2=0.999, eps=1e-8, weight_decay=0.0):
    """torch.optim.Adam (amsgrad False) in float64, from its documented algorithm."""
    w = w.astype(np.float64).copy()
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64) + weight_decay * w
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        w = w - lr / (1 - beta_1**t) * m / (np.sqrt(v) / np.sqrt(1 - beta_2**t) + eps)
    return w


@pytest.mark.multibackend
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adam_is_torch_adam_with_its_epsilon(weight_decay):
    from keras_clmr.optimizers import TorchAdam

    rng = np.random.default_rng(2)
    w0 = rng.standard_normal((4, 3)).astype("float32")
    # Gradients near epsilon's scale, where Keras' epsilon placement would differ by >10%.
    grads = [
        (rng.standard_normal((4, 3)) * 10.0 ** rng.uniform(-9, -1, (4, 3))).astype("float32")
        for _ in range(4)
    ]
    variable = keras.Variable(w0)
    optimizer = TorchAdam(1e-3, torch_weight_decay=weight_decay)
    for g in grads:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g), variable)])
    expected = numpy_torch_adam(w0, grads, 1e-3, weight_decay=weight_decay)
    got = keras.ops.convert_to_numpy(variable).astype(np.float64)
    np.testing.assert_allclose(got - w0, expected - w0, rtol=1e-4, atol=1e-9)
    adam = build_optimizer("adam", batch_size=48, steps_per_epoch=10, epochs=3)
    assert isinstance(adam, TorchAdam) and adam.epsilon == 1e-8
    assert TorchAdam.from_config(optimizer.get_config()).torch_weight_decay == weight_decay
