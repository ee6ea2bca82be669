"""Optimizers of the CLMR paper runs: Adam (3e-4) and LARS with warm-up + cosine decay.

Keras 3 (3.15) ships no LARS (it has SGD, Adam(W), Lamb, Lion, Muon, ...) and no maintained
Keras 3 package provides one (the TF Model Garden LARS is a tf.keras/Keras 2 optimizer),
so LARS is implemented here on ``keras.optimizers.Optimizer``, backend-agnostic.
"""

import math

import keras
from keras import ops

ADAM_LEARNING_RATE = 3e-4


@keras.saving.register_keras_serializable(package="keras_clmr")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) as in SimCLR's ``LARSOptimizer``,
    which CLMR 2.0 trained with.

    For each variable w with gradient g:
        g <- g + weight_decay * w                          (not for excluded variables)
        trust = eta * ||w|| / ||g|| if both norms > 0 else 1  (1 for excluded variables)
        v <- momentum * v + learning_rate * trust * g
        w <- w - v     (Nesterov: w <- w - (momentum * v + learning_rate * trust * g))

    Excluded variables (no weight decay, no trust ratio) are those with at most one
    dimension, i.e. BatchNorm gamma/beta and biases, plus any whose path contains one of
    ``exclude_names``. (SimCLR's exclusion of "batch_normalization" and "bias" by name; the
    PyTorch port that CLMR master used ignored its exclude lists.)
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, weight_decay=1e-6, eta=1e-3, nesterov=False,
                 exclude_names=(), epsilon=0.0, name="lars", **kwargs):
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=None, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS momentum must be in [0, 1), got {momentum}.")
        if weight_decay is not None and weight_decay < 0:
            raise ValueError(f"LARS weight_decay must be >= 0, got {weight_decay}.")
        self.momentum = float(momentum)
        self.lars_weight_decay = float(weight_decay or 0.0)
        self.eta = float(eta)
        self.nesterov = bool(nesterov)
        self.exclude_names = tuple(exclude_names)
        self.epsilon = float(epsilon)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def excluded(self, variable):
        """True when ``variable`` gets neither weight decay nor the trust ratio."""
        path = getattr(variable, "path", None) or variable.name
        return len(variable.shape) <= 1 or any(name in path for name in self.exclude_names)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        learning_rate = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        v = self.momentums[self._get_variable_index(variable)]
        if not self.excluded(variable):
            if self.lars_weight_decay:
                gradient = gradient + ops.cast(self.lars_weight_decay, dtype) * variable
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            g_norm = ops.sqrt(ops.sum(ops.square(gradient)))
            ratio = ops.cast(self.eta, dtype) * w_norm / (g_norm + ops.cast(self.epsilon, dtype))
            trust = ops.where(ops.greater(w_norm, 0), ops.where(ops.greater(g_norm, 0), ratio, 1.0), 1.0)
            learning_rate = learning_rate * ops.cast(trust, dtype)
        momentum = ops.cast(self.momentum, dtype)
        step = learning_rate * gradient
        self.assign(v, momentum * v + step)
        if self.nesterov:
            self.assign_sub(variable, momentum * v + step)
        else:
            self.assign_sub(variable, v)

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, weight_decay=self.lars_weight_decay, eta=self.eta,
                      nesterov=self.nesterov, exclude_names=list(self.exclude_names), epsilon=self.epsilon)
        return config


def lars_peak_learning_rate(batch_size):
    """CLMR 2.0 / SimCLR: 0.075 * sqrt(batch), batch = pairs in the global batch."""
    return 0.075 * math.sqrt(batch_size)


def warmup_cosine(peak, total_steps, warmup_steps, alpha=0.0):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to
    ``alpha * peak`` at ``total_steps`` (per step; the original decayed per epoch)."""
    total_steps, warmup_steps = int(total_steps), int(warmup_steps)
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise ValueError(f"Need 0 <= warmup steps ({warmup_steps}) < total steps ({total_steps}); "
                         f"lower --warmup_epochs or train longer.")
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(peak, total_steps, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(0.0, total_steps - warmup_steps, alpha=alpha,
                                                  warmup_target=peak, warmup_steps=warmup_steps)


def build_optimizer(name, *, batch_size, steps_per_epoch, epochs, warmup_epochs=10, learning_rate=None,
                    weight_decay=1e-6):
    """'adam': Adam(``learning_rate`` or 3e-4), as CLMR master (no schedule). 'lars': LARS
    with peak lr ``learning_rate`` or 0.075*sqrt(batch_size) (global pairs), weight decay
    1e-6, ``warmup_epochs`` of linear warm-up then cosine decay (CLMR 2.0 used 30 warm-up
    epochs in 10,000-epoch runs)."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate or ADAM_LEARNING_RATE)
    if name == "lars":
        peak = learning_rate or lars_peak_learning_rate(batch_size)
        schedule = warmup_cosine(peak, steps_per_epoch * epochs, steps_per_epoch * warmup_epochs)
        return LARS(schedule, weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer {name!r}: use 'adam' or 'lars'.")
