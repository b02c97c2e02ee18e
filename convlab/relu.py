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


def relu_block(x, out):
    """out = max(x, 0) for a block x (rows, ...) (out may be x).

    ``np.maximum`` against one row of zeros, broadcast along the first axis (numpy's inner
    loop stays contiguous), not against the scalar 0: numpy's maximum broadcasting a scalar
    took 3-4x as long (five 24x24x32 images: 43 against 9-11 us, AMD EPYC, numpy 2.4), as
    long as the mask-and-multiply it replaces. A row of zeros costs about 1 us to make and
    was as fast as a whole block of them; zeros along the last axis only were up to 4x
    slower on short rows."""
    np.maximum(x, np.zeros((1,) + x.shape[1:], x.dtype), out=out)


def relu_gradient_block(dy, out, dx):
    """dx = dy where the forward's output ``out`` is positive, else 0 (dx may be dy)."""
    np.multiply(dy, out > 0, out=dx)


def blocks(a) -> list[tuple[int, int]]:
    """(lo, hi) blocks of a's first axis of about BLOCK_BYTES each."""
    return chunk_bounds(len(a), max(1, BLOCK_BYTES // max(1, a[:1].nbytes)))


def relu(x, out):
    """out = max(x, 0) (out may be x), block by block on every core."""
    x, out = _at_least_1d(x), _at_least_1d(out)
    share_chunks(lambda _, lo, hi: relu_block(x[lo:hi], out[lo:hi]), blocks(x))


def relu_gradient(dy, out, dx):
    """dx = dy where ``out`` (the forward's output) is positive, else 0 (dx may be dy),
    block by block on every core."""
    dy, out, dx = (_at_least_1d(a) for a in (dy, out, dx))
    share_chunks(lambda _, lo, hi: relu_gradient_block(dy[lo:hi], out[lo:hi], dx[lo:hi]), blocks(dy))


def _at_least_1d(a):
    """``a``, or a one-element view of it if it is 0-d (blocks are cut along axis 0)."""
    return a.reshape(1) if a.ndim == 0 else a
