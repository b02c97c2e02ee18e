"""Optimizers update a model's parameters in place from the gradients of the last backward,
and learning-rate schedules say which rate each epoch uses."""

import math
import numbers

import numpy as np


def cosine_lr(base_lr, epoch, epochs):
    """Cosine annealing by epoch: ``base_lr`` at epoch 1, falling towards 0 after ``epochs``.

    A pure function of (epoch, epochs), so a run resumed with the same ``epochs`` follows
    exactly the schedule of an uninterrupted one.
    """
    return base_lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))


def constant_lr(base_lr, epoch, epochs):
    """``base_lr`` for every epoch."""
    return base_lr


LR_SCHEDULES = {"cosine": cosine_lr, "constant": constant_lr}


class SGD:
    """Stochastic gradient descent with (heavy-ball) momentum, as in PyTorch::

        v = momentum * v + grad;  param -= lr * v

    ``velocity`` maps each parameter's name (see ``Sequential.named_parameters``) to its
    momentum buffer, so it can be saved and restored. ``model`` is a network (a
    :class:`convlab.Sequential`, or anything with its ``named_parameters()``); anything
    else (None, a list of arrays) is refused with a TypeError, where it failed with an
    AttributeError.
    """

    def __init__(self, model, lr=0.01, momentum=0.9):
        if not callable(getattr(model, "named_parameters", None)):
            raise TypeError(f"SGD takes the model whose parameters it updates (a convlab.Sequential, such as "
                            f"convlab.reference_net(), or anything with its named_parameters()), "
                            f"got {type(model).__name__}")
        for name, value in (("lr", lr), ("momentum", momentum)):
            # A string would parse (np.float32("0.1")) and a bool count as 0 or 1: refused,
            # as are NaN, infinities and negatives (which would train nothing, or diverge).
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
                raise ValueError(f"SGD's {name} must be a finite number ≥ 0, got {value!r}")
        self.model = model
        self.lr = lr
        self.momentum = momentum
        self.velocity = {name: np.zeros_like(p) for name, p, _ in model.named_parameters()}

    def step(self):
        parameters = list(self.model.named_parameters())
        for name, _, grad in parameters:  # all checked first: no parameter updated if one cannot be
            if grad is None:
                raise ValueError(f"step() before any backward: parameter {name} has no gradient; run the model's "
                                 f"backward (with the loss's gradient) first")
        for name, param, grad in parameters:
            # Scalars in the parameter's dtype: a numpy float64 lr (from a schedule, say)
            # would otherwise make numpy run these float32 updates in float64.
            momentum, lr = param.dtype.type(self.momentum), param.dtype.type(self.lr)
            v = self.velocity[name]
            v *= momentum
            v += grad
            param -= lr * v
