"""Optimizers of the CLMR paper runs: Adam (3e-4, eps 1e-8) and LARS with warm-up + cosine decay.

Keras 3 (3.15) ships no LARS (it has SGD, Adam(W), Lamb, Lion, Muon, ...) and no maintained
Keras 3 package provides one (the TF Model Garden LARS is a tf.keras/Keras 2 optimizer),
so LARS is implemented here on ``keras.optimizers.Optimizer``, backend-agnostic.
"""

import math

import keras
from keras import ops

ADAM_LEARNING_RATE = 3e-4
TORCH_ADAM_EPSILON = 1e-8  # torch.optim.Adam's default (Keras' is 1e-7)


@keras.saving.register_keras_serializable(package="keras_clmr")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) as the PyTorch ``LARS`` of the
    ``simclr`` package that CLMR 2.0 (the paper runs) trained with.

    For each variable w with gradient g:
        g <- g + weight_decay * w
        trust = eta * ||w|| / ||g||
        v <- momentum * v + learning_rate * trust * g
        w <- w - v     (Nesterov: w <- w - (momentum * v + learning_rate * trust * g))

    By default (``exclude_bias_and_norm=False``) this is CLMR 2.0's optimizer exactly: it
    never reads its exclude lists, so weight decay and the trust ratio apply to every
    variable, and its guard ``w_norm.ge(0)`` is always true, so a variable whose norm is 0
    (a zero-initialised BatchNorm beta) gets trust 0 and stays at 0. Only where ||g|| = 0
    (where the original divides by zero) the trust is 1 here.

    ``exclude_bias_and_norm=True`` is SimCLR's TensorFlow ``LARSOptimizer`` as intended:
    variables with at most one dimension (BatchNorm gamma/beta, biases) and those whose path
    contains one of ``exclude_names`` get neither weight decay nor the trust ratio, and the
    trust is 1 where either norm is 0. ``exclude_names`` also applies in the default mode.
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=1e-6,
        eta=1e-3,
        nesterov=False,
        exclude_names=(),
        epsilon=0.0,
        exclude_bias_and_norm=False,
        name="lars",
        **kwargs,
    ):
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
        self.exclude_bias_and_norm = bool(exclude_bias_and_norm)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def excluded(self, variable):
        """True when ``variable`` gets neither weight decay nor the trust ratio."""
        path = getattr(variable, "path", None) or variable.name
        if any(name in path for name in self.exclude_names):
            return True
        return self.exclude_bias_and_norm and len(variable.shape) <= 1

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
            g_positive = ops.greater(g_norm, 0)
            safe_g_norm = ops.where(g_positive, g_norm, 1.0)
            ratio = (
                ops.cast(self.eta, dtype) * w_norm / (safe_g_norm + ops.cast(self.epsilon, dtype))
            )
            if self.exclude_bias_and_norm:  # TensorFlow SimCLR: trust 1 where either norm is 0
                g_positive = ops.logical_and(g_positive, ops.greater(w_norm, 0))
            trust = ops.where(g_positive, ratio, 1.0)
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
        config.update(
            momentum=self.momentum,
            weight_decay=self.lars_weight_decay,
            eta=self.eta,
            nesterov=self.nesterov,
            exclude_names=list(self.exclude_names),
            epsilon=self.epsilon,
            exclude_bias_and_norm=self.exclude_bias_and_norm,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_clmr")
class TorchAdam(keras.optimizers.Adam):
    """``torch.optim.Adam`` exactly: epsilon 1e-8 added to sqrt(v_hat) (Keras adds its epsilon
    to sqrt(v) before the bias correction, i.e. a 1/sqrt(1 - beta_2^t) times larger epsilon
    early on) and ``torch_weight_decay`` as torch's coupled L2 (g <- g + wd * w; Keras'
    ``weight_decay`` is decoupled, AdamW-style). CLMR master, CLMR's linear evaluation and
    PEMR all use torch's Adam."""

    def __init__(
        self,
        learning_rate=1e-3,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=TORCH_ADAM_EPSILON,
        torch_weight_decay=0.0,
        name="torch_adam",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            name=name,
            **kwargs,
        )
        self.torch_weight_decay = float(torch_weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        if self.torch_weight_decay:
            gradient = gradient + ops.cast(self.torch_weight_decay, dtype) * variable
        step = ops.cast(self.iterations + 1, dtype)
        correction_1 = 1 - ops.power(ops.cast(self.beta_1, dtype), step)
        correction_2 = 1 - ops.power(ops.cast(self.beta_2, dtype), step)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        denominator = ops.sqrt(v) / ops.sqrt(correction_2) + ops.cast(self.epsilon, dtype)
        self.assign_sub(variable, lr / correction_1 * m / denominator)

    def get_config(self):
        config = super().get_config()
        config.update(torch_weight_decay=self.torch_weight_decay)
        return config


def lars_peak_learning_rate(batch_size):
    """CLMR 2.0 / SimCLR: 0.075 * sqrt(batch), batch = pairs in the global batch."""
    return 0.075 * math.sqrt(batch_size)


def warmup_cosine(peak, total_steps, warmup_steps, alpha=0.0):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to
    ``alpha * peak`` at ``total_steps`` (per step; the original decayed per epoch)."""
    total_steps, warmup_steps = int(total_steps), int(warmup_steps)
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"Need 0 <= warmup steps ({warmup_steps}) < total steps ({total_steps}); "
            f"lower --warmup_epochs or train longer."
        )
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(peak, total_steps, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(
        0.0, total_steps - warmup_steps, alpha=alpha, warmup_target=peak, warmup_steps=warmup_steps
    )


def build_optimizer(
    name,
    *,
    batch_size,
    steps_per_epoch,
    epochs,
    warmup_epochs=10,
    learning_rate=None,
    weight_decay=1e-6,
    lars_exclude_bias_and_norm=False,
):
    """'adam': torch's Adam (``learning_rate`` or 3e-4, epsilon 1e-8), as CLMR
    master and PEMR (no schedule). 'lars': CLMR 2.0's LARS (every variable decayed and
    adapted unless ``lars_exclude_bias_and_norm``) with peak lr ``learning_rate`` or
    0.075*sqrt(batch_size) (global pairs), weight decay 1e-6, ``warmup_epochs`` of linear
    warm-up then cosine decay (CLMR 2.0 used 30 warm-up epochs in 10,000-epoch runs)."""
    if name == "adam":
        return TorchAdam(learning_rate or ADAM_LEARNING_RATE)
    if name == "lars":
        peak = learning_rate or lars_peak_learning_rate(batch_size)
        schedule = warmup_cosine(peak, steps_per_epoch * epochs, steps_per_epoch * warmup_epochs)
        return LARS(
            schedule, weight_decay=weight_decay, exclude_bias_and_norm=lars_exclude_bias_and_norm
        )
    raise ValueError(f"Unknown optimizer {name!r}: use 'adam' or 'lars'.")
