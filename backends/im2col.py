"""``im2col``: unroll every input window into a column, then one matrix product.

The windows of all the images become the columns of one matrix ``cols``
(C*kh*kw, N*OH*OW); the filters are the rows of ``w_mat`` (F, C*kh*kw), so the whole
batch is one GEMM, ``w_mat @ cols`` (F, N*OH*OW). One big product keeps BLAS (and all its
threads) busy, where one small product per image would not. Its rows come out filter by
filter, so one copy puts them in the (N, F, OH, OW) order the next layers read.

The backward pass is the two transposed products, ``dw = dy_mat @ cols.T`` and
``dcols = w_mat.T @ dy_mat``, and ``dcols`` folds back onto the input with one strided
add per kernel tap (``col2im``): no Python loop over pixels and no ``np.add.at``.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from convlab.checks import output_size
from convlab.registry import register_backend


def im2col(x_padded, kernel, stride):
    """(N, C, Hp, Wp) -> cols (C*kh*kw, N*OH*OW): row (c, p, q) holds tap (p, q) of
    channel c for every output pixel of every image."""
    (kh, kw), (sh, sw) = kernel, stride
    n, c = x_padded.shape[:2]
    # (N, C, OH, OW, kh, kw) view onto x_padded: no copy until the reshape below, whose
    # innermost axis (OW) is contiguous in x_padded when the stride is 1.
    win = sliding_window_view(x_padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    oh, ow = win.shape[2:4]
    return win.transpose(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, n * oh * ow)


def col2im(dcols, x_padded_shape, kernel, stride, out_shape):
    """Adjoint of :func:`im2col`: sum each column back onto the window it came from.

    dcols (C*kh*kw, N*OH*OW) -> (N, C, Hp, Wp).
    """
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_shape
    n, c, hp, wp = x_padded_shape
    dcols = dcols.reshape(c, kh, kw, n, oh, ow)
    # Accumulate channel-major, the order of dcols' rows, and hand back an (N, C, ...) view.
    dx_padded = np.zeros((c, n, hp, wp), dtype=dcols.dtype)
    for p in range(kh):
        for q in range(kw):
            dx_padded[:, :, p:p + sh * oh:sh, q:q + sw * ow:sw] += dcols[:, p, q]
    return dx_padded.transpose(1, 0, 2, 3)


@register_backend("im2col")
class Im2col:
    """Patches of the whole batch unrolled into one matrix, one GEMM (backward: the transposed GEMMs)."""

    def forward(self, x, w, b, stride, padding):
        n, _, h, width = x.shape
        f, _, kh, kw = w.shape
        (ph, pw) = padding
        oh, ow = output_size(h, kh, stride[0], ph), output_size(width, kw, stride[1], pw)
        x_padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
        cols = im2col(x_padded, (kh, kw), stride)
        y_by_filter = w.reshape(f, -1) @ cols  # (F, N*OH*OW)
        y_by_filter += b[:, None]
        y = y_by_filter.reshape(f, n, oh, ow).transpose(1, 0, 2, 3).copy()
        return y, (cols, w, x_padded.shape, stride, padding)

    def backward(self, dy, cache, need_dx=True):
        cols, w, x_padded_shape, stride, padding = cache
        n, f, oh, ow = dy.shape
        # Filter-major, like the forward's product: (F, N*OH*OW).
        dy_mat = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(f, n * oh * ow)
        dw = (dy_mat @ cols.T).reshape(w.shape)
        db = dy_mat.sum(axis=1)
        if not need_dx:
            return None, dw, db
        dcols = w.reshape(f, -1).T @ dy_mat
        dx_padded = col2im(dcols, x_padded_shape, w.shape[2:], stride, (oh, ow))
        ph, pw = padding
        return dx_padded[:, :, ph:x_padded_shape[2] - ph, pw:x_padded_shape[3] - pw], dw, db
