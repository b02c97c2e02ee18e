"""A gradient handed on as the two factors of a matrix product, formed where it is used.

A dense layer's input gradient is ``dx = g @ w.T``: g (N, out) the gradient of its output,
w (in, out) its weights. In the reference network that is a (64, 18432) array, 4.7 MB,
written whole by the dense layer and then read again, image by image, by the convolution's
backward (after a Flatten, which only reshapes it, and the ReLU fused into the
convolution). :class:`FactoredGradient` keeps g and w instead, with the shape the gradient
would have. A convolution backend that declares ``takes_factored_dy``
(:mod:`convlab.registry`) forms the rows it is about to use, ``rows(lo, hi)``, while they
fit in cache, and nobody writes or reads the whole array; any other consumer gets the
whole array from :meth:`FactoredGradient.array`, computed as the dense layer computed it.

Measured in real training steps of the reference network (2-core AMD EPYC, family 25
model 1, AVX2; in-process A/B of alternating blocks, medians): 9.75 against 9.52 and 9.83
against 9.53 ms a step (``im2col``, a slow spell of the VM; a first prototype, without the
checks of the factors, 7.99 against 7.05): the dense layer's 1.2 ms ``GEMM dx`` and the
convolution's 0.9 ms ReLU gradient (single-thread) become one product of a chunk's rows,
masked in cache, but each chunk reads all of w (docs/speed.md, *What changed in 0.13.0*).
"""

from __future__ import annotations

import numpy as np

from convlab.threads import chunk_bounds, share_chunks

# Features per block of :meth:`FactoredGradient.array`, shared among the cores: each block
# is its own columns of the result (the dense layer's blocks, see convlab.layers.Dense).
FEATURE_BLOCK = 2304


class FactoredGradient:
    """``(g @ w.T).reshape(shape)`` not yet computed: g (N, J), w (K, J), shape (N, ...)
    with prod(shape[1:]) == K. Read-only: its rows are new arrays each time. ``block``:
    features per block of :meth:`array` (a ``Dense`` gives its own ``FEATURE_BLOCK``, so
    that whoever forms the whole array forms it as the layer would)."""

    __slots__ = ("g", "w", "shape", "block")

    def __init__(self, g, w, shape, block=FEATURE_BLOCK):
        if g.ndim != 2 or w.ndim != 2 or g.shape[1] != w.shape[1] or g.dtype != w.dtype:
            raise ValueError(f"factors must be g (N, J) and w (K, J) of one dtype, got {g.shape} {g.dtype} "
                             f"and {w.shape} {w.dtype}")
        shape = tuple(int(n) for n in shape)
        if not shape or shape[0] != g.shape[0] or int(np.prod(shape[1:])) != w.shape[0]:
            raise ValueError(f"shape {shape} does not hold g @ w.T, ({g.shape[0]}, {w.shape[0]})")
        self.g, self.w, self.shape, self.block = g, w, shape, block

    @property
    def dtype(self):
        return self.g.dtype

    def reshape(self, shape) -> FactoredGradient:
        """The same gradient seen as ``shape`` (N, ...): rows stay rows, as for an array."""
        return FactoredGradient(self.g, self.w, shape, self.block)

    def rows(self, lo, hi) -> np.ndarray:
        """The rows lo:hi, (hi - lo, *shape[1:]), a new array (the caller may write over it)."""
        return np.matmul(self.g[lo:hi], self.w.T).reshape((hi - lo,) + self.shape[1:])

    def array(self) -> np.ndarray:
        """The whole gradient, in blocks of ``block`` features shared among the cores."""
        out = np.empty((self.shape[0], self.w.shape[0]), dtype=self.dtype)
        share_chunks(lambda _, lo, hi: np.matmul(self.g, self.w[lo:hi].T, out=out[:, lo:hi]),
                     chunk_bounds(self.w.shape[0], self.block))
        return out.reshape(self.shape)

    def sure_finite(self) -> bool:
        """Whether every value of the product is sure to be finite without computing it:
        J times the largest |g| times the largest |w|, grown by what rounding can add,
        below the dtype's largest number (a bound on every |sum of J products| as
        computed, partial sums included). A NaN or an infinity in either factor makes the
        bound NaN or infinite, so not below it. Gradients in training are far below it;
        when it fails, a check must look at the whole array. Each factor is read twice
        (its max and min: 40 us for the reference network's w, against 90 for
        ``isfinite`` and ``abs().max()``).

        The growth: a sum of J products computed in the dtype can exceed the exact one by
        up to J * eps / 2 of it (whatever order BLAS adds them in), so the exact bound
        alone is not enough at the edge of the range: float32 factors 1.51 and 2.25e36, J
        100 (exact bound 3.4028e38, below the largest float32) gave an infinite product.
        1 + 4 * J * eps covers that growth, and the float64 rounding of the bound itself,
        while J * eps <= 1/4 (J up to 2 million in float32); beyond, the array is checked."""
        if self.g.size == 0 or self.w.size == 0:
            return True
        j, eps = self.g.shape[1], float(np.finfo(self.dtype).eps)
        if j * eps > 0.25:
            return False

        def largest(a) -> float:  # NaN if a holds one: numpy's max and min propagate it
            return float(np.maximum(a.max(), -a.min()))

        bound = largest(self.g) * largest(self.w) * j * (1 + 4 * j * eps)
        return bound < float(np.finfo(self.dtype).max)

    def __repr__(self):
        return f"FactoredGradient(g {self.g.shape}, w {self.w.shape}, shape {self.shape}, {self.dtype})"
