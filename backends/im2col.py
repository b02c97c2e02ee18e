"""``im2col``: unroll every input window into a column, then one matrix product.

For each image the windows become the columns of ``cols`` (C*kh*kw, OH*OW); the filters
are the rows of ``w_mat`` (F, C*kh*kw), so ``y = w_mat @ cols``. The backward pass is
the two transposed products, ``dw = dy @ cols.T`` and ``dcols = w_mat.T @ dy``, and
``dcols`` folds back onto the input with one strided add per kernel tap (``col2im``):
no Python loop over pixels and no ``np.add.at``.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from convlab.checks import output_size
from convlab.registry import register_backend


def im2col(x_padded, kernel, stride):
    """(N, C, Hp, Wp) -> cols (N, C*kh*kw, OH*OW), a copy laid out for the GEMM."""
    (kh, kw), (sh, sw) = kernel, stride
    n, c = x_padded.shape[:2]
    # (N, C, OH, OW, kh, kw) view onto x_padded: no copy until the reshape below.
    win = sliding_window_view(x_padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    oh, ow = win.shape[2:4]
    return win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, oh * ow)


def col2im(dcols, x_padded_shape, kernel, stride, out_shape):
    """Adjoint of :func:`im2col`: sum each column back onto the window it came from."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_shape
    n, c = x_padded_shape[:2]
    dcols = dcols.reshape(n, c, kh, kw, oh, ow)
    dx_padded = np.zeros(x_padded_shape, dtype=dcols.dtype)
    for p in range(kh):
        for q in range(kw):
            dx_padded[:, :, p:p + sh * oh:sh, q:q + sw * ow:sw] += dcols[:, :, p, q]
    return dx_padded


@register_backend("im2col")
class Im2col:
    """Patches unrolled into a matrix, one GEMM (backward: the transposed GEMMs)."""

    def forward(self, x, w, b, stride, padding):
        n, _, h, width = x.shape
        f, _, kh, kw = w.shape
        (ph, pw) = padding
        out_shape = (output_size(h, kh, stride[0], ph), output_size(width, kw, stride[1], pw))
        x_padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
        cols = im2col(x_padded, (kh, kw), stride)
        w_mat = w.reshape(f, -1)
        y = np.matmul(w_mat, cols)  # (N, F, OH*OW)
        y += b[:, None]
        return y.reshape((n, f) + out_shape), (cols, w, x_padded.shape, stride, padding)

    def backward(self, dy, cache, need_dx=True):
        cols, w, x_padded_shape, stride, padding = cache
        n, f, oh, ow = dy.shape
        dy_mat = dy.reshape(n, f, oh * ow)
        dw = np.tensordot(dy_mat, cols, axes=([0, 2], [0, 2])).reshape(w.shape)
        db = dy.sum(axis=(0, 2, 3))
        if not need_dx:
            return None, dw, db
        dcols = np.matmul(w.reshape(f, -1).T, dy_mat)  # (N, C*kh*kw, OH*OW)
        dx_padded = col2im(dcols, x_padded_shape, w.shape[2:], stride, (oh, ow))
        ph, pw = padding
        return dx_padded[:, :, ph:x_padded_shape[2] - ph, pw:x_padded_shape[3] - pw], dw, db
