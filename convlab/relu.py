"""ReLU's two passes, shared by the :class:`~convlab.layers.ReLU` layer, by
:class:`~convlab.registry.Backend` for backends that do not fuse it, and by the
convolutions that apply it themselves chunk by chunk while their output is still in cache
(``fuses_relu``: see :mod:`convlab.registry`).

The backward needs only where the forward's output is positive, so it reads that output
(``out > 0``) rather than a mask kept from the forward. Whole arrays are done in blocks of
images of about ``BLOCK_BYTES``, shared among the cores (:mod:`convlab.threads`).
"""

from __future__ import annotations

import numpy as np

from convlab.threads import chunk_bounds, share_chunks

BLOCK_BYTES = 1 << 18


def zeros_for(block_shape, dtype, kept=None) -> np.ndarray:
    """A block of zeros to take the maximum against: ``kept`` when it has that shape and
    dtype already (reused step after step), else a new one."""
    if kept is not None and kept.shape == tuple(block_shape) and kept.dtype == dtype:
        return kept
    return np.zeros(block_shape, dtype)


def relu_block(x, zeros, out):
    """out = max(x, 0) for a block x (rows, ...); ``zeros`` has at least as many rows, or
    one (broadcast along the first axis, which keeps numpy's inner loop contiguous).

    ``np.maximum`` against a block of zeros, not the scalar 0: numpy's maximum broadcasting
    a scalar took 3x as long (0.035 against 0.012 ms on four 24x24x32 images, AMD EPYC,
    numpy 2.4), as long as the mask-and-multiply it replaces."""
    np.maximum(x, zeros[:len(x)], out=out)


def relu_gradient_block(dy, out, dx):
    """dx = dy where the forward's output ``out`` is positive, else 0 (dx may be dy)."""
    np.multiply(dy, out > 0, out=dx)


def blocks(a) -> list[tuple[int, int]]:
    """(lo, hi) blocks of a's first axis of about BLOCK_BYTES each."""
    return chunk_bounds(len(a), max(1, BLOCK_BYTES // max(1, a[:1].nbytes)))


def relu(x, out, zeros=None) -> np.ndarray:
    """out = max(x, 0) (out may be x), block by block on every core; returns the block of
    zeros it used, for the caller to pass again next time."""
    x, out = _at_least_1d(x), _at_least_1d(out)
    pieces = blocks(x)
    zeros = zeros_for((max(hi - lo for lo, hi in pieces),) + x.shape[1:], x.dtype, zeros)
    share_chunks(lambda _, lo, hi: relu_block(x[lo:hi], zeros, out[lo:hi]), pieces)
    return zeros


def relu_gradient(dy, out, dx):
    """dx = dy where ``out`` (the forward's output) is positive, else 0 (dx may be dy),
    block by block on every core."""
    dy, out, dx = (_at_least_1d(a) for a in (dy, out, dx))
    share_chunks(lambda _, lo, hi: relu_gradient_block(dy[lo:hi], out[lo:hi], dx[lo:hi]), blocks(dy))


def _at_least_1d(a):
    """``a``, or a one-element view of it if it is 0-d (blocks are cut along axis 0)."""
    return a.reshape(1) if a.ndim == 0 else a
