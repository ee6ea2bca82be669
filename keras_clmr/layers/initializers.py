"""PyTorch's default initialisers and BatchNorm constants in Keras terms (checkpoint fidelity)."""

import math

import keras

# PyTorch BatchNorm defaults (eps 1e-5, momentum 0.1) in Keras terms.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def torch_default_kernel_initializer():
    """PyTorch's default Conv/Linear weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


def torch_default_bias_initializer(fan_in):
    """PyTorch's default Conv/Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    limit = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-limit, limit)
