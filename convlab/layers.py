"""Layers: each ``forward`` keeps what its ``backward`` needs, and the backward sits
right under it. Parameters live in ``layer.params`` and their gradients, after a
backward, in ``layer.grads`` under the same names."""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np

from convlab.checks import FLOAT_DTYPES, as_flag, as_pair, check_output_gradient
from convlab.factored import FEATURE_BLOCK, FactoredGradient
from convlab.profile import phase
from convlab.registry import get_backend
from convlab.relu import relu, relu_gradient
from convlab.threads import chunk_bounds, share_chunks, worker_count


_forward_only = contextvars.ContextVar("convlab_forward_only", default=False)


@contextlib.contextmanager
def forward_only():
    """Within the block, layers keep nothing for a backward (evaluation, prediction): no
    ReLU mask is written, and a layer's last inputs and caches are let go at once."""
    token = _forward_only.set(True)
    try:
        yield
    finally:
        _forward_only.reset(token)


def _kept(saved, layer):
    """What ``layer``'s forward kept for its backward, or a clear error if it kept nothing."""
    if saved is None:
        raise ValueError(f"{type(layer).__name__}.backward needs the forward first: call forward(x) on this layer "
                         f"(outside forward_only(), which keeps nothing), then backward(dy) with dy shaped like "
                         f"its output")
    return saved


def _checked_dy(dy, y_shape, layer, y_dtype=None, factored_ok=False):
    """``dy`` checked against ``layer``'s forward output (:func:`convlab.checks.check_output_gradient`)."""
    return check_output_gradient(dy, y_shape, y_dtype, f"{type(layer).__name__}.backward: ", factored_ok)


def as_rng(seed_or_rng, what="rng", none_ok=True) -> np.random.Generator:
    """A generator from a seed (a non-negative int) or a ``numpy.random.Generator`` itself
    (shared, so layers built from one draw in turn); None (if ``none_ok``) seeds from the
    OS. Anything else would reach numpy's SeedSequence, whose TypeError names neither the
    argument nor what is allowed."""
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    if (seed_or_rng is None and none_ok) or (
            isinstance(seed_or_rng, (int, np.integer)) and not isinstance(seed_or_rng, bool) and seed_or_rng >= 0):
        return np.random.default_rng(seed_or_rng)
    allowed = ("a non-negative int" + ("" if what == "seed" else " (a seed)") + " or a numpy.random.Generator"
               + (" or None" if none_ok else ""))
    raise ValueError(f"{what} must be {allowed}, got {seed_or_rng!r}")


def _check_sizes(**sizes):
    """A ValueError unless each of ``sizes`` (a layer's channels or features, by name) is a
    positive int: else a float failed inside numpy, 0 divided by zero in the weights' scale
    and a negative one got numpy's "negative dimensions", none naming the argument."""
    for name, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_float_dtype(dtype):
    """A ValueError unless ``dtype`` is float32 or float64: an int one would round a layer's
    weights (all but a few are below 1) to zeros, and float16 is computed by no backend."""
    try:
        kind = np.dtype(dtype).type
    except TypeError:
        kind = None
    if kind not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be float32 or float64 (what every backend and layer computes in), got {dtype!r}")


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

    x must stay as it is until the backward: a backend's cache may keep it rather than a
    copy (``winograd``'s does: x changed in between gives it a wrong dw, silently), as
    torch's autograd keeps the input (which refuses a changed one; numpy cannot tell). So
    must ``params["w"]`` (``naive``'s, ``im2col``'s and ``winograd``'s keep it, for dx):
    an optimizer's step comes after the backward.

    ``relu=True`` makes the output max(conv(x) + b, 0), with the ReLU's gradient applied
    to dy in the backward: the layer and a following ReLU in one (as cuDNN's and oneDNN's
    fused convolution-activation). A backend that can (``fuses_relu``, e.g. ``im2col``)
    applies it chunk by chunk while its output is in cache, others after the whole pass
    (:meth:`convlab.registry.Backend.forward`). :class:`convlab.Sequential` sets it where a
    ``ReLU`` follows. The output must then stay as it is until the backward (the backward
    reads where it is positive), as a ReLU's would.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 backend=None, rng=None, dtype=np.float32, relu=False):
        super().__init__()
        _check_sizes(in_channels=in_channels, out_channels=out_channels)
        _check_float_dtype(dtype)
        kh, kw = as_pair(kernel_size, "kernel_size", 1)
        self.stride = as_pair(stride, "stride", 1)
        self.padding = as_pair(padding, "padding", 0)
        self.backend = backend
        self.relu = as_flag(relu, "relu")
        fan_in = in_channels * kh * kw
        self.params["w"] = (as_rng(rng).standard_normal((out_channels, in_channels, kh, kw))
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
        dtype = self.params["w"].dtype
        if isinstance(x, np.ndarray) and x.dtype.type in FLOAT_DTYPES and x.dtype != dtype:
            # The check shared by conv2d would say "but w is", of weights a layer's user never passed.
            raise ValueError(f"{self!r}: x is {x.dtype} but the layer is {dtype}; pass x as {dtype} "
                             f"(e.g. x.astype(np.{dtype}))")
        args = (x, self.params["w"], self.params["b"], self.stride, self.padding)
        if _forward_only.get():  # the backend's pass that keeps nothing (Backend.inference)
            self._cache = None
            return backend.inference(*args, relu=self.relu)
        y, cache = backend.forward(*args, relu=self.relu)
        self._cache = (backend, cache)
        return y

    @property
    def takes_factored_dy(self) -> bool:
        """Whether the backend of the forward awaiting its backward takes dy as a
        :class:`~convlab.factored.FactoredGradient` (see :mod:`convlab.registry`)."""
        return self._cache is not None and self._cache[0].takes_factored_dy

    def backward(self, dy, need_dx=True):
        backend, cache = _kept(self._cache, self)  # need_dx: checked by Backend.backward
        dx, self.grads["w"], self.grads["b"] = backend.backward(dy, cache, need_dx)
        return dx

    def __repr__(self):
        f, c, kh, kw = self.params["w"].shape
        return (f"Conv2D({c}, {f}, kernel_size=({kh}, {kw}), stride={self.stride}, "
                f"padding={self.padding}, backend={self._backend!r})")


class ReLU(Layer):
    """max(x, 0), elementwise; any shape. The output has x's memory layout.

    ``inplace=True`` (like ``torch.nn.ReLU(inplace=True)``) writes the forward's result
    over x and the backward's over dy: no new 4.7 MB array each way on the MNIST layer's
    output. :class:`convlab.Sequential` sets it on a ReLU between two ``Dense``: nothing else
    keeps the first's output, and dy is the second's dx, a new array (a last ReLU's dy is the
    caller's, so it is left out). A ReLU that follows a ``Conv2D`` is *fused* into it instead
    (``fused=True``, set by ``Sequential`` with the convolution's ``relu``): the convolution
    applies it chunk by chunk while its output is still in cache, and this layer passes x
    and dy through untouched.

    The backward needs only where the output is positive, so the forward keeps its output
    (no separate mask is written) and the backward multiplies dy by ``output > 0`` block by
    block. Both passes run in blocks of images shared among the cores (:mod:`convlab.relu`).
    """

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = as_flag(inplace, "inplace")
        self.fused = False
        self._output = None

    def forward(self, x):
        if self.fused:
            return x
        with phase("ReLU"):
            out = x if self.inplace else np.empty_like(x)
            relu(x, out)
        self._output = None if _forward_only.get() else out
        return out

    def backward(self, dy, need_dx=True):
        as_flag(need_dx, "need_dx")
        if self.fused:
            return dy  # checked by the convolution that applied it
        out = _kept(self._output, self)
        _checked_dy(dy, out.shape, self)
        with phase("ReLU"):
            dx = dy if self.inplace and dy.dtype == np.result_type(dy, out) else np.empty_like(out, np.result_type(dy, out))
            relu_gradient(dy, out, dx)
            return dx

    def __repr__(self):
        return f"ReLU(inplace={self.inplace}, fused={self.fused})"


class Flatten(Layer):
    """(N, ...) -> (N, prod(...)); the backward reshapes dy (N, prod(...)) back to x's shape."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x):
        self._shape = None if _forward_only.get() else x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        as_flag(need_dx, "need_dx")
        shape = _kept(self._shape, self)
        # A reshape alone would accept any dy of the same size, e.g. (N * 2, prod / 2).
        # A dense layer's factored input gradient (see Dense.backward) is reshaped as it is.
        _checked_dy(dy, (shape[0], int(np.prod(shape[1:]))), self, factored_ok=True)
        return dy.reshape(shape)

    def __repr__(self):
        return "Flatten()"


class Dense(Layer):
    """x (N, in_features) -> x @ w + b, (N, out_features). Weights: LeCun-normal.

    ``params["w"]`` is (in_features, out_features), as it always was (checkpoints, ``x @ w``),
    but laid out in memory as (out_features, in_features), PyTorch's ``Linear.weight``
    (Fortran order: ``w.T`` is C-contiguous); ``grads["w"]`` likewise. The layer's products
    read and write it in that order: dw as ``dw.T[:, block] = dy.T @ x[:, block]``, which
    OpenBLAS computes faster than ``x[:, block].T @ dy`` (all of the (18432, 10) dw, in blocks, on
    one core: 0.69 against 0.86 ms), and the input gradient's rows ``dy @ w.T`` (the
    convolution's backward forms them chunk by chunk, :mod:`convlab.factored`) read w.T as
    it lies instead of OpenBLAS packing a transposed operand every chunk. In real training
    steps of the reference network (2-core AMD EPYC Zen 3, in-process A/B, alternating
    blocks of 10 steps, 600 steps a side): 7.16 against 7.64 ms and 6.70 against 7.17
    (medians; the paired blocks' median ratio 1.053 and 1.055; ``python
    benchmarks/ab_steps.py benchmarks/variants/dense_c_order.py``: 1.044). Any layout works
    (a C-ordered w assigned by hand gives the same values, more slowly); loading a
    checkpoint copies into the arrays, so keeps it.

    The three products are cut along the features (the rows of w), so that each piece is a
    different part of the 4.7 MB activation of the reference network, and the pieces are
    shared among the cores (:func:`convlab.threads.share_chunks`, BLAS on one thread in each:
    OpenBLAS's own threads, idle, spin for a while after each product and hold a core the
    convolution's threads then wait for):

    * forward: ``x[:, block] @ w[block]`` per block of ``K_BLOCK`` features, (N, out) each,
      added in block order (so the result does not depend on the number of threads);
    * ``dw.T[:, block] = dy.T @ x[:, block]`` and ``dx[:, block] = dy @ w[block].T`` per block
      of ``FEATURE_BLOCK`` features: each block is its own part of the result, nothing to add.
      When a convolution comes next (through a ``Flatten``) whose backend can form dx's rows
      itself, dx is not computed here at all: it is handed on as its factors (dy, w), see
      :mod:`convlab.factored`.

    Cut by rows of the batch instead (as before 0.5.0), two threads took longer than one on
    these memory-bound products (0.96 against 0.72 ms): each thread then streamed all of w
    and half of x through the same caches.
    """

    # In real training steps of the reference network (one core, AMD EPYC, medians of 450
    # steps), x (64, 18432) @ w (18432, 10) took 0.50 ms as a sum over blocks of 1152
    # features, against 0.75 ms in one product and 0.83-0.89 ms in blocks of 32 rows; blocks
    # of 576 took 0.56 ms, of 2304 0.83 ms. (A (64, 1152) slice of x is 295 KB, which OpenBLAS
    # packs while it is still in L2.)
    K_BLOCK = 1152
    FEATURE_BLOCK = FEATURE_BLOCK  # dw's blocks, as dx's (convlab.factored)

    def __init__(self, in_features, out_features, rng=None, dtype=np.float32):
        super().__init__()
        _check_sizes(in_features=in_features, out_features=out_features)
        _check_float_dtype(dtype)
        w = (as_rng(rng).standard_normal((in_features, out_features)) * np.sqrt(1.0 / in_features)).astype(dtype)
        self.params["w"] = np.asfortranarray(w)  # the same values, laid out as (out, in): see the class doc
        self.params["b"] = np.zeros(out_features, dtype=dtype)

    def forward(self, x):
        w = self.params["w"]
        # Checked, not left to the blocks: x[:, lo:hi] past x's last column is just shorter,
        # so extra features would be dropped silently (and a float64 or int x would make a
        # float64 output in a float32 network). Only attributes: no pass over x.
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != w.shape[0] or x.dtype != w.dtype:
            self._refuse(x)
        self._x = None if _forward_only.get() else x
        blocks = chunk_bounds(w.shape[0], self.K_BLOCK)
        parts = np.empty((len(blocks), x.shape[0], w.shape[1]), dtype=np.result_type(x, w))
        with phase("GEMM"):
            share_chunks(lambda index, lo, hi: np.matmul(x[:, lo:hi], w[lo:hi], out=parts[index]), blocks)
            out = parts.sum(axis=0) if len(blocks) > 1 else parts[0]
        return out + self.params["b"]

    def _refuse(self, x):
        """The ValueError saying how ``x`` differs from the (N, in_features) array of the
        layer's dtype its forward takes."""
        k, dtype = self.params["w"].shape[0], self.params["w"].dtype
        if not isinstance(x, np.ndarray):
            raise ValueError(f"{self!r}: x must be a numpy array (N, {k}), got {type(x).__name__}")
        if x.ndim != 2:
            raise ValueError(f"{self!r}: x must have 2 dimensions (N, in_features) = (N, {k}), got shape {x.shape}")
        if x.shape[1] != k:
            raise ValueError(f"{self!r}: x must have {k} features (N, {k}), got shape {x.shape}")
        raise ValueError(f"{self!r}: x is {x.dtype} but the layer is {dtype}; pass x as {dtype} "
                         f"(e.g. x.astype(np.{dtype}))")

    def backward(self, dy, need_dx=True, factored=False):
        """``factored=True`` returns dx as its two factors, a
        :class:`~convlab.factored.FactoredGradient` of dy and w, for a convolution backend
        to form where it uses it (:class:`convlab.Sequential` asks for it when one does);
        else dx as an array, (N, in_features)."""
        need_dx = as_flag(need_dx, "need_dx")
        x = _kept(getattr(self, "_x", None), self)
        w = self.params["w"]
        _checked_dy(dy, (len(x), w.shape[1]), self, w.dtype)
        blocks = chunk_bounds(w.shape[0], self.FEATURE_BLOCK)
        dw_t = np.empty(w.shape[::-1], dtype=np.result_type(x, dy))  # dw laid out as w is: (out, in)
        dy_t = dy.T
        with phase("GEMM dw"):
            share_chunks(lambda _, lo, hi: np.matmul(dy_t, x[:, lo:hi], out=dw_t[:, lo:hi]), blocks)
        self.grads["w"] = dw_t.T
        with phase("db"):
            self.grads["b"] = dy.sum(axis=0)
        if not need_dx:
            return None
        # w itself, not a copy: the optimizer's step, which changes it, comes after the
        # whole backward (as for a convolution's kept w).
        dx = FactoredGradient(dy, w, (len(dy), w.shape[0]), self.FEATURE_BLOCK)
        if factored:
            return dx
        with phase("GEMM dx"):
            return dx.array()

    def __repr__(self):
        return f"Dense({self.params['w'].shape[0]}, {self.params['w'].shape[1]})"


class _Pool2D(Layer):
    """Shared shape logic of the pooling layers: x (N, C, H, W) -> (N, C, OH, OW) with
    ``OH = (H + 2*ph - kh) // sh + 1``, as ``torch.nn.MaxPool2d``/``AvgPool2d``.

    Both are computed as kh*kw whole-array operations, one per offset (i, j) inside the
    window: the strided view ``xp[:, :, i::sh, j::sw]`` cropped to (OH, OW) holds, for every
    output pixel, the window's element at (i, j). That is as fast as numpy gets for windows
    of 2x2 or 3x3 and needs no copy of the windows. (A reshape to (N, C, OH, 2, OW, 2) and
    a reduction over the window axes is 20-40x slower: numpy's inner loops then run two
    elements long.) The images are cut into one block per core (:mod:`convlab.threads`);
    smaller blocks, to keep a block in cache, cost more in numpy calls than they save.
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = as_pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else as_pair(stride, "stride", 1)
        self.padding = as_pair(padding, "padding", 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"padding must be at most half the kernel size, got padding {self.padding} "
                             f"for kernel {self.kernel_size}")
        self._cache = None

    def checked_output_shape(self, x):
        """:meth:`output_shape` of ``x``, refused unless it is a numpy array of float32 or
        float64 (as a convolution's x): an int x made max-pooling's -inf padding an
        OverflowError and average pooling's 1/(kh*kw) scale 0, all zeros without a word."""
        if not isinstance(x, np.ndarray):
            raise ValueError(f"{type(self).__name__}: x must be a numpy array (N, C, H, W), got {type(x).__name__}")
        if x.dtype.type not in FLOAT_DTYPES:
            raise ValueError(f"{type(self).__name__}: x must be float32 or float64, got {x.dtype}")
        return self.output_shape(x.shape)

    def checked_dy(self, dy, y_shape):
        """``dy`` checked against the forward's output shape ``y_shape`` (N, C, OH, OW), as
        every layer's is, and refused unless float32 or float64 (an int dy would get average
        pooling's scale as 0, as an int x would)."""
        _checked_dy(dy, y_shape, self)
        if dy.dtype.type not in FLOAT_DTYPES:
            raise ValueError(f"{type(self).__name__}.backward: dy must be float32 or float64, got {dy.dtype}")
        return dy

    def output_shape(self, x_shape):
        """(N, C, OH, OW) for an input of ``x_shape`` (N, C, H, W); refuses a window larger
        than the padded input."""
        if len(x_shape) != 4:
            raise ValueError(f"{type(self).__name__}: x must have 4 dimensions (N, C, H, W), "
                             f"got shape {tuple(x_shape)}")
        n, c, h, w = x_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(f"{type(self).__name__} window {kh}x{kw} is larger than its padded input "
                             f"{h + 2 * ph}x{w + 2 * pw}")
        return n, c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def windows(self, xp, oh, ow):
        """For each offset (i, j) in the window, in row-major order: the view of ``xp`` holding
        that element of every window, (N, C, OH, OW)."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        for i in range(kh):
            for j in range(kw):
                yield xp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]

    def tiles(self, xp_shape, y_shape):
        """Whether the windows cover the padded input exactly once (stride = kernel, no
        remainder): then a backward writes every element of dx and need not zero it first."""
        return self.stride == self.kernel_size and all(
            size == out * k for size, out, k in zip(xp_shape[2:], y_shape[2:], self.kernel_size))

    def in_blocks(self, work, x):
        """``work(lo, hi)`` for blocks of images lo:hi of ``x``, one per core (on two cores,
        two blocks: the calling thread runs both, see ``convlab.threads.MIN_CHUNKS_TO_SHARE``)."""
        share_chunks(lambda _, lo, hi: work(lo, hi), chunk_bounds(len(x), -(-len(x) // worker_count())))

    def pad(self, x, value):
        (ph, pw) = self.padding
        if ph == pw == 0:
            return x
        return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)

    def crop(self, dxp):
        (ph, pw) = self.padding
        return dxp[:, :, ph:dxp.shape[2] - ph, pw:dxp.shape[3] - pw]

    def __repr__(self):
        return f"{type(self).__name__}(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"


class MaxPool2D(_Pool2D):
    """The largest value of each window (padding counts as -inf). The gradient goes to one
    element per window: on ties, the first in row-major order, so results are deterministic
    (``torch.nn.MaxPool2d`` picks the first too).

    The forward is only a chain of ``np.maximum``; the backward finds each window's first
    maximum again by comparing with the output (offset by offset, skipping windows already
    served): cheaper than recording an argmax in the forward (about 6 ms instead of 20 for
    64x32x28x28, 2x2, in CPU time).
    """

    def forward(self, x):
        n, c, oh, ow = self.checked_output_shape(x)
        xp = self.pad(x, -np.inf)
        y = np.empty((n, c, oh, ow), dtype=xp.dtype)

        def block(lo, hi):
            views, out = self.windows(xp[lo:hi], oh, ow), y[lo:hi]
            np.maximum(next(views), next(views, -np.inf), out=out)
            for view in views:
                np.maximum(out, view, out=out)

        self.in_blocks(block, xp)
        self._cache = None if _forward_only.get() else (xp, y)
        return y

    def backward(self, dy, need_dx=True):
        need_dx = as_flag(need_dx, "need_dx")
        xp, y = _kept(self._cache, self)
        self.checked_dy(dy, y.shape)
        if not need_dx:
            return None
        oh, ow = y.shape[2:]
        dxp = (np.empty if self.tiles(xp.shape, y.shape) else np.zeros)(xp.shape, dtype=dy.dtype)
        # Windows that do not overlap write each input element at most once: no sum needed.
        disjoint = all(s >= k for s, k in zip(self.stride, self.kernel_size))
        last = self.kernel_size[0] * self.kernel_size[1] - 1

        def block(lo, hi):
            taken = None  # windows whose first maximum is already found
            for offset, (view, grad) in enumerate(zip(self.windows(xp[lo:hi], oh, ow),
                                                      self.windows(dxp[lo:hi], oh, ow))):
                first = np.equal(view, y[lo:hi])
                if taken is not None:
                    np.greater(first, taken, out=first)  # a maximum, in a window not served yet
                if disjoint:
                    np.multiply(dy[lo:hi], first, out=grad)
                else:
                    grad += dy[lo:hi] * first
                if taken is None:
                    taken = first
                elif offset < last:
                    taken |= first

        self.in_blocks(block, xp)
        return self.crop(dxp)


class AvgPool2D(_Pool2D):
    """The mean of each window, padding counted as zeros in the mean (as
    ``torch.nn.AvgPool2d``'s default ``count_include_pad=True``)."""

    def forward(self, x):
        n, c, oh, ow = self.checked_output_shape(x)
        xp = self.pad(x, 0)
        y = np.empty((n, c, oh, ow), dtype=xp.dtype)
        scale = xp.dtype.type(1 / (self.kernel_size[0] * self.kernel_size[1]))

        def block(lo, hi):
            views, out = self.windows(xp[lo:hi], oh, ow), y[lo:hi]
            np.add(next(views), next(views, 0), out=out)
            for view in views:
                out += view
            out *= scale

        self.in_blocks(block, xp)
        self._cache = None if _forward_only.get() else (xp.shape, y.shape)
        return y

    def backward(self, dy, need_dx=True):
        need_dx = as_flag(need_dx, "need_dx")
        xp_shape, y_shape = _kept(self._cache, self)
        self.checked_dy(dy, y_shape)
        if not need_dx:
            return None
        tiled = self.tiles(xp_shape, dy.shape)
        dxp = (np.empty if tiled else np.zeros)(xp_shape, dtype=dy.dtype)
        scale = dy.dtype.type(1 / (self.kernel_size[0] * self.kernel_size[1]))

        def block(lo, hi):
            share = dy[lo:hi] * scale
            for view in self.windows(dxp[lo:hi], *dy.shape[2:]):
                if tiled:
                    np.copyto(view, share)
                else:
                    view += share

        self.in_blocks(block, dxp)
        return self.crop(dxp)
