"""Optimizers update a model's parameters in place from the gradients of the last backward."""

import numpy as np


class SGD:
    """Stochastic gradient descent with (heavy-ball) momentum, as in PyTorch::

        v = momentum * v + grad;  param -= lr * v

    ``velocity`` maps each parameter's name (see ``Sequential.named_parameters``) to its
    momentum buffer, so it can be saved and restored.
    """

    def __init__(self, model, lr=0.01, momentum=0.9):
        self.model = model
        self.lr = lr
        self.momentum = momentum
        self.velocity = {name: np.zeros_like(p) for name, p, _ in model.named_parameters()}

    def step(self):
        for name, param, grad in self.model.named_parameters():
            # Scalars in the parameter's dtype: a numpy float64 lr (from a schedule, say)
            # would otherwise make numpy run these float32 updates in float64.
            momentum, lr = param.dtype.type(self.momentum), param.dtype.type(self.lr)
            v = self.velocity[name]
            v *= momentum
            v += grad
            param -= lr * v
