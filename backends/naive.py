"""``naive``: direct convolution, one output position at a time.

This is the definition every other backend is tested against::

    y[n, f, i, j] = b[f] + sum_{c, p, q} x_pad[n, c, i*sh + p, j*sw + q] * w[f, c, p, q]

The loop runs over output positions (i, j); each step is the dot product of one input
window with every filter, for the whole batch at once. Slow but obviously right.
"""

import numpy as np

from convlab.checks import output_size
from convlab.registry import register_backend


def pad(x, padding):
    """Zero-pad the two spatial axes of ``x`` (N, C, H, W) by ``padding`` = (ph, pw)."""
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def windows(kernel, stride, out_shape):
    """Yield ((i, j), window slices) for each output position."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_shape
    for i in range(oh):
        for j in range(ow):
            yield (i, j), (slice(None), slice(None), slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw))


@register_backend("naive")
class Naive:
    """Direct convolution as explicit loops over output positions (the test oracle)."""

    def forward(self, x, w, b, stride, padding):
        n, _, h, width = x.shape
        f, _, kh, kw = w.shape
        out_shape = (output_size(h, kh, stride[0], padding[0]), output_size(width, kw, stride[1], padding[1]))
        x_padded = pad(x, padding)
        y = np.empty((n, f) + out_shape, dtype=x.dtype)
        for (i, j), window in windows((kh, kw), stride, out_shape):
            # (N, C, kh, kw) . (F, C, kh, kw) over (C, kh, kw) -> (N, F)
            y[:, :, i, j] = np.tensordot(x_padded[window], w, axes=([1, 2, 3], [1, 2, 3])) + b
        return y, (x_padded, w, stride, padding)

    def backward(self, dy, cache, need_dx=True):
        x_padded, w, stride, padding = cache
        kh, kw = w.shape[2:]
        dx_padded = np.zeros_like(x_padded) if need_dx else None
        dw = np.zeros_like(w)
        for (i, j), window in windows((kh, kw), stride, dy.shape[2:]):
            dy_ij = dy[:, :, i, j]  # (N, F)
            dw += np.tensordot(dy_ij, x_padded[window], axes=([0], [0]))
            if need_dx:
                dx_padded[window] += np.tensordot(dy_ij, w, axes=([1], [0]))
        db = dy.sum(axis=(0, 2, 3))
        if not need_dx:
            return None, dw, db
        ph, pw = padding
        h, width = x_padded.shape[2] - 2 * ph, x_padded.shape[3] - 2 * pw
        return dx_padded[:, :, ph:ph + h, pw:pw + width], dw, db
