"""How the weights move: learning-rate schedule, optimisers and weight averaging, for training.recipes.

Each takes its hyperparameters as arguments; the values are the recipes', named once there.
"""

from dataclasses import dataclass

import keras
import numpy as np

# The quintic Newton-Schulz iteration's coefficients, as airbench94_muon and Keras' Muon use them.
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


@dataclass(frozen=True)
class LookaheadSchedule:
    """airbench's weight averaging: every ``every_steps`` steps from the first, the
    weights (BatchNorm statistics included) become an average kept across steps, with decay
    ``decay_base ** every_steps * progress ** decay_pow``: free early on, strong at the end."""

    decay_base: float
    decay_pow: float
    every_steps: int


class TriangularSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``start`` to ``peak`` over ``warmup`` of training, then linear to ``end``."""

    def __init__(self, peak_lr: float, total_steps: int, warmup: float, start: float, end: float) -> None:
        self.peak_lr, self.total_steps = peak_lr, max(1, total_steps)
        self.warmup, self.start, self.end = warmup, start, end

    def __call__(self, step: keras.KerasTensor) -> keras.KerasTensor:
        step = keras.ops.cast(step, "float32")
        warmup_steps = max(1.0, self.warmup * self.total_steps)
        rising = self.start + (1.0 - self.start) * step / warmup_steps
        falling_fraction = (step - warmup_steps) / max(1.0, self.total_steps - warmup_steps)
        falling = 1.0 + (self.end - 1.0) * keras.ops.minimum(falling_fraction, 1.0)
        return self.peak_lr * keras.ops.where(step < warmup_steps, rising, falling)

    def get_config(self) -> dict[str, float]:
        return {"peak_lr": self.peak_lr, "total_steps": self.total_steps, "warmup": self.warmup,
                "start": self.start, "end": self.end}


class BiasScaledSGD(keras.optimizers.SGD):
    """SGD whose BatchNorm shifts learn ``bias_scale`` times faster (airbench's bias_scaler).

    Scaling a gradient is scaling its learning rate for SGD with momentum; the decoupled
    weight decay is left as it is, as airbench keeps the bias decay equal to the weights'.
    """

    def __init__(self, bias_scale: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.bias_scale = bias_scale

    def apply(self, grads: list, trainable_variables: list | None = None) -> None:
        variables = trainable_variables if trainable_variables is not None else self._trainable_variables
        grads = [g * self.bias_scale if v.path.endswith("/beta") else g
                 for g, v in zip(grads, variables, strict=True)]
        return super().apply(grads, trainable_variables)


class ConvMuon(keras.optimizers.Muon):
    """Muon on every conv kernel, each flattened to a (height * width * in, out) matrix; Adam on the rest.

    Keras' Muon orthogonalises 2-D weights only and gives conv kernels to Adam; the CIFAR-10 speed-runs
    that made Muon known use it on exactly these kernels, flattened so.
    """

    def _should_use_adamw(self, variable: keras.Variable) -> bool:
        return len(variable.shape) != 4

    def _muon_update_step(self, gradient: object, variable: keras.Variable, lr: object, m: keras.Variable) -> None:
        self.assign_add(m, keras.ops.add(gradient, m * (self.momentum - 1)))
        g = keras.ops.add(gradient, self.momentum * m) if self.nesterov else m
        update = self.zeropower_via_newtonschulz5(keras.ops.reshape(g, (-1, variable.shape[-1])), self.ns_steps)
        self.assign_sub(variable, keras.ops.reshape(self.lr_adjust(lr * update), variable.shape))


def orthogonalize(matrix: object, steps: int) -> object:
    """Roughly ``U V^T`` of ``matrix = U S V^T``, by airbench94_muon's quintic Newton-Schulz iteration.

    The coefficients push every singular value towards 1 as fast as they can rather than exactly: they land
    between about 0.5 and 1.5, which trains as well as the exact ``U V^T`` (Keller Jordan's notes).
    """
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    tall = matrix.shape[0] > matrix.shape[1]
    x = keras.ops.transpose(matrix) if tall else matrix  # the Gram matrix on the short side is the cheap one
    x = x / (keras.ops.norm(x) + 1e-7)  # the Frobenius norm bounds the largest singular value
    for _ in range(steps):
        gram = x @ keras.ops.transpose(x)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return keras.ops.transpose(x) if tall else x


class FilterMuonSGD(BiasScaledSGD):
    """airbench94_muon's optimiser: every conv kernel takes a Muon step at a fixed norm; the rest, the SGD's.

    A kernel, flattened to a (height * width * in, out) matrix, is scaled to norm sqrt(out) and moves
    by the orthogonalised Nesterov momentum of its gradients, ``filter_lr_ratio`` times the SGD's learning
    rate. BatchNorm follows every conv, so a kernel's norm changes nothing but the size of its later steps;
    fixing it makes the rate an angle per step, kept by the schedule rather than drifting as the weights
    grow or shrink (which also leaves nothing for weight decay to do on the kernels).
    """

    def __init__(self, bias_scale: float, filter_lr_ratio: float, filter_momentum: float,
                 newton_schulz_steps: int, **kwargs: object) -> None:
        super().__init__(bias_scale, **kwargs)
        if not self.momentum:
            raise ValueError("FilterMuonSGD keeps each kernel's Muon buffer in SGD's momentum slot: give momentum > 0")
        self.filter_lr_ratio, self.filter_momentum = filter_lr_ratio, filter_momentum
        self.newton_schulz_steps = newton_schulz_steps

    def update_step(self, gradient: object, variable: keras.Variable, learning_rate: object) -> None:
        if len(variable.shape) != 4:
            super().update_step(gradient, variable, learning_rate)
            return
        velocity = self.momentums[self._get_variable_index(variable)]  # SGD's slot, as Muon's buffer
        self.assign(velocity, velocity * self.filter_momentum + gradient)
        nesterov = gradient + self.filter_momentum * velocity
        filters = variable.shape[-1]
        direction = orthogonalize(keras.ops.reshape(nesterov, (-1, filters)), self.newton_schulz_steps)
        at_fixed_norm = variable * (filters**0.5 / keras.ops.sqrt(keras.ops.sum(keras.ops.square(variable))))
        step = keras.ops.cast(learning_rate, variable.dtype) * self.filter_lr_ratio
        self.assign(variable, at_fixed_norm - step * keras.ops.reshape(direction, variable.shape))


class Lookahead(keras.callbacks.Callback):
    """Applies a :class:`LookaheadSchedule` during ``fit`` (airbench's LookaheadState)."""

    def __init__(self, schedule: LookaheadSchedule, total_steps: int) -> None:
        super().__init__()
        self.schedule, self.total_steps = schedule, total_steps
        self.average: list[np.ndarray] | None = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.schedule.every_steps:
            return
        if self.average is None:
            self.average = self.model.get_weights()
            return
        progress = min(step / self.total_steps, 1.0)
        decay = self.schedule.decay_base**self.schedule.every_steps * progress**self.schedule.decay_pow
        self.average = [decay * a + (1.0 - decay) * w for a, w in zip(self.average, self.model.get_weights(),
                                                                      strict=True)]
        self.model.set_weights(self.average)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        # Validation and the checkpoint see the averaged weights, as airbench evaluates them.
        if self.average is not None:
            self.model.set_weights(self.average)
