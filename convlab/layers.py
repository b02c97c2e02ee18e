"""Layers: each ``forward`` keeps what its ``backward`` needs, and the backward sits
right under it. Parameters live in ``layer.params`` and their gradients, after a
backward, in ``layer.grads`` under the same names."""

from __future__ import annotations

import numpy as np

from convlab.checks import FLOAT_DTYPES, as_pair
from convlab.registry import get_backend


def _rng(seed_or_rng) -> np.random.Generator:
    return seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else np.random.default_rng(seed_or_rng)


class Layer:
    """A layer with no parameters; subclasses fill ``params``."""

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy, need_dx=True):
        """``need_dx=False`` lets a first layer skip the input gradient (returns None)."""
        raise NotImplementedError


class Conv2D(Layer):
    """2-D convolution (cross-correlation) computed by a swappable backend.

    x (N, in_channels, H, W) -> (N, out_channels, OH, OW). ``backend=None`` follows
    :func:`convlab.use_backend` (default ``im2col``); a name pins the layer to that
    backend. ``layer.backend`` can be reassigned at any time, even between a forward
    and its backward (the backward uses the backend that ran the forward).
    Weights: He-normal, from ``rng`` (a seed or a ``numpy.random.Generator``).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 backend=None, rng=None, dtype=np.float32):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        try:
            kind = np.dtype(dtype).type
        except TypeError:
            kind = None
        if kind not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be float32 or float64 (what every backend computes in), got {dtype!r}")
        kh, kw = as_pair(kernel_size, "kernel_size", 1)
        self.stride = as_pair(stride, "stride", 1)
        self.padding = as_pair(padding, "padding", 0)
        self.backend = backend
        fan_in = in_channels * kh * kw
        self.params["w"] = (_rng(rng).standard_normal((out_channels, in_channels, kh, kw))
                            * np.sqrt(2.0 / fan_in)).astype(dtype)
        self.params["b"] = np.zeros(out_channels, dtype=dtype)
        self._cache = None

    @property
    def backend(self):
        """The pinned backend's name, or None to follow :func:`convlab.use_backend`."""
        return self._backend

    @backend.setter
    def backend(self, name):
        if name is not None:
            name = get_backend(name).name
        self._backend = name

    def forward(self, x):
        backend = get_backend(self._backend)
        y, cache = backend.forward(x, self.params["w"], self.params["b"], self.stride, self.padding)
        self._cache = (backend, cache)
        return y

    def backward(self, dy, need_dx=True):
        if self._cache is None:
            raise ValueError("Conv2D.backward needs the forward first: call forward(x) on this layer, then "
                             "backward(dy) with dy shaped like its output")
        backend, cache = self._cache
        dx, self.grads["w"], self.grads["b"] = backend.backward(dy, cache, need_dx)
        return dx

    def __repr__(self):
        f, c, kh, kw = self.params["w"].shape
        return (f"Conv2D({c}, {f}, kernel_size=({kh}, {kw}), stride={self.stride}, "
                f"padding={self.padding}, backend={self._backend!r})")


class ReLU(Layer):
    """max(x, 0), elementwise; any shape."""

    def forward(self, x):
        # A 0/1 mask in x's dtype: multiplying by it is about twice as fast as by a bool mask.
        self._positive = (x > 0).astype(x.dtype)
        return x * self._positive

    def backward(self, dy, need_dx=True):
        return dy * self._positive


class Flatten(Layer):
    """(N, ...) -> (N, prod(...))."""

    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        return dy.reshape(self._shape)


class Dense(Layer):
    """x (N, in_features) -> x @ w + b, (N, out_features). Weights: LeCun-normal."""

    def __init__(self, in_features, out_features, rng=None, dtype=np.float32):
        super().__init__()
        self.params["w"] = (_rng(rng).standard_normal((in_features, out_features))
                            * np.sqrt(1.0 / in_features)).astype(dtype)
        self.params["b"] = np.zeros(out_features, dtype=dtype)

    def forward(self, x):
        self._x = x
        return x @ self.params["w"] + self.params["b"]

    def backward(self, dy, need_dx=True):
        self.grads["w"] = self._x.T @ dy
        self.grads["b"] = dy.sum(axis=0)
        return dy @ self.params["w"].T if need_dx else None

    def __repr__(self):
        return f"Dense({self.params['w'].shape[0]}, {self.params['w'].shape[1]})"
