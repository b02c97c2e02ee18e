"""B: the dense layer as before 0.14.0: w (in, out) C-ordered, and dw = x.T @ dy per block of
features (convlab.layers.Dense keeps w laid out as (out, in) since 0.14.0).

``backward_before_0_14`` is a copy of 0.13.0's ``Dense.backward`` (it trains bit for bit as
0.13.0 did), frozen: it is not kept in step with later changes to ``Dense``, and the tests
only check that it still runs."""

import numpy as np

from convlab import layers
from convlab.factored import FactoredGradient
from convlab.profile import phase
from convlab.threads import chunk_bounds, share_chunks

current_backward = layers.Dense.backward


def backward_before_0_14(self, dy, need_dx=True, factored=False):
    x = layers._kept(getattr(self, "_x", None), self)
    w = self.params["w"]
    layers._checked_dy(dy, (len(x), w.shape[1]), self, w.dtype)
    dw = np.empty(w.shape, dtype=np.result_type(x, dy))
    with phase("GEMM dw"):
        share_chunks(lambda _, lo, hi: np.matmul(x[:, lo:hi].T, dy, out=dw[lo:hi]),
                     chunk_bounds(w.shape[0], self.FEATURE_BLOCK))
    self.grads["w"] = dw
    with phase("db"):
        self.grads["b"] = dy.sum(axis=0)
    if not need_dx:
        return None
    dx = FactoredGradient(dy, w, (len(dy), w.shape[0]), self.FEATURE_BLOCK)
    return dx if factored else dx.array()


def setup_b(model, optimizer):
    """B's dense weights and their momentum C-ordered, as Dense made them before 0.14.0."""
    for i, layer in enumerate(model.layers):
        if isinstance(layer, layers.Dense):
            layer.params["w"] = np.ascontiguousarray(layer.params["w"])
            optimizer.velocity[f"{i}.w"] = np.ascontiguousarray(optimizer.velocity[f"{i}.w"])


def apply_b():
    layers.Dense.backward = backward_before_0_14


def undo_b():
    layers.Dense.backward = current_backward
