"""``fft``: the convolution theorem on pyfftw, forward and backward in the frequency domain.

Every signal is placed in a zeroed real buffer of the FFT size (Hf, Wf) >= the padded
input (Hp, Wp) and transformed once with a real-to-complex FFTW plan. The kernel is written
*flipped*, so the forward is a plain product of spectra; the backward's correlations take
the complex conjugate of the forward's spectra, which are the small ones (one axis shown;
positions are taken modulo the grid, ``*`` is the conjugate)::

    x  at [ph, ph+H)        ->  X        forward  y[i]  = irfft(X  W )[kh-1 + i]
    w  flipped at [0, kh)   ->  W        weights  dw[p] = irfft(D  X*)[-p]
    dy at [0, Ho)           ->  D        input    dx[m] = irfft(D  W*)[m + ph - (kh-1)]

(``Ho = Hp - kh + 1`` is the stride-1 output length; none of the three wraps onto a value
it needs.) Stride: the forward keeps every ``sh``-th stride-1 output; the backward writes
``dy`` on every ``sh``-th place of the stride-1 grid (zeros between), which is the same
thing. The sums over channels (and, for ``dw``, over the batch) are complex matrix products
per frequency bin: ``Y = X W^T`` (N, C) @ (C, F), ``dW = D^T X*`` and ``dX = D W*``.
Spectra stay in FFTW's plane-major layout (planes, bins), but for dy's, which FFTW writes
bin-major on small grids (see :func:`dy_spectra`); see :func:`binwise_matmul` for how the
products are formed, and :func:`rfft2` and :func:`inverse_of_products` for how the
transforms are shared among threads. The forward's spectra X and W are kept for the backward.

The FFT size is not simply the next fast length: see :func:`fft_shape_for`.

Outputs over an input window of zeros come out as exactly the bias, as a direct method gives
them, not as FFT rounding noise around it: see :func:`convlab.exact.snap_to_bias`.

Plans, threads, planner effort and the wisdom file come from :mod:`convlab.fftw`, shared
with ``fft-tiled``; its :func:`~convlab.fftw.configure` sets them.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from convlab import fftw
from convlab.exact import snap_to_bias, zero_windows
from convlab.fftw import (binwise_matmul, broadcasts, cost_per_point, flipped, has_tiny_side, pyfftw, rfft2,
                          rows_per_tile, run_tiles)
from convlab.profile import phase
from convlab.registry import register_backend
from convlab.relu import relu_block

# dy's spectra are made bin-major on grids of at most this many bins: see dy_spectra.
BIN_MAJOR_MAX_BINS = 1024


def inverse_of_products(a, b, fft_shape, rows, cols, label, offset=None, finish=None):
    """The crop ``[rows, cols]`` (see :func:`cropped`) of the inverse of :func:`rfft2`,
    without its 1/(Hf*Wf) scale, of the per-bin matrix products of spectra ``a``
    (I, K, bins) and ``b`` (K, J, bins): real (I, J, h, w). ``offset`` (J,), if given, is
    added to every value of column j. ``finish(out, lo, hi)``, if given, is called on the
    rows lo:hi of the result as soon as they are cropped, while they are in cache.
    ``label`` (``"y"``, ``"dw"``, ``"dx"``) names its profile phases: ``"y products"``,
    ``"y inverse FFTs"``, ``"y crop"``.

    Products that broadcast (see :func:`binwise_matmul`) run in tiles of a's rows: a
    tile's products, inverse transforms and crop follow one another while the tile is in
    cache, and threads share the tiles (:func:`convlab.fftw.run_tiles`). A batched matmul wants the whole
    batch at once, so other products run in one piece, with a multi-threaded transform.
    """
    i, j = a.shape[0], b.shape[1]
    dtype = np.finfo(a.dtype).dtype
    out = np.empty((i, j, np.arange(fft_shape[0])[rows].size, np.arange(fft_shape[1])[cols].size), dtype)

    products_phase, inverse_phase, crop_phase = (f"{label} {step}" for step in ("products", "inverse FFTs", "crop"))

    def transform(index, lo, hi, slot):
        plan = fftw.plan("FFTW_BACKWARD", (hi - lo, j), fft_shape, dtype, slot)
        with phase(products_phase):
            products = binwise_matmul(a[lo:hi], b, out=plan.input.reshape(hi - lo, j, -1))
            if offset is not None:
                # Through the zero-frequency bin, which adds its value to every point: adding
                # it to the crop would be a broadcast over a strided view, twice a plain copy.
                products[:, :, 0] += offset
        with phase(inverse_phase):
            plan.fftw.execute()
        with phase(crop_phase):
            out[lo:hi] = cropped(plan.fftw.output_array, rows, cols)
        if finish is not None:
            finish(out[lo:hi], lo, hi)

    run_tiles(transform, i, rows_per_tile(j, fft_shape) if broadcasts(a, b) else i)
    return out


def cropped(full, rows, cols):
    """``full[:, :, rows, cols]`` for two slices, or for two arrays of grid positions
    (negative ones count from the end: circular convolution wraps them there)."""
    if isinstance(rows, slice):
        return full[:, :, rows, cols]
    return full[:, :, rows[:, None], cols]


@functools.lru_cache(maxsize=None)
def fft_shape_for(padded_shape):
    """The FFT grid (Hf, Wf) >= the padded input that FFTW should transform fastest: of the
    fast lengths (``pyfftw.next_fast_len``) up to twice each padded length, the pair of
    least estimated time, ``Hf * Wf * (cost_per_point(Hf) + cost_per_point(Wf))``.

    The nearest fast lengths are not always the fastest: FFTW's batched 30 x 30 transforms
    take twice as long as its 32 x 32 ones, and 66 x 66 a third longer than 72 x 72.
    """
    def estimated_time(shape):
        return shape[0] * shape[1] * (cost_per_point(shape[0]) + cost_per_point(shape[1]))

    return min(itertools.product(*(fast_lengths(int(n)) for n in padded_shape)), key=estimated_time)


def dy_spectra(dy, rows, cols, fft_shape, relu_output, channels):
    """The spectra of dy (N, F, OH, OW) (see :func:`convlab.fftw.rfft2`), as (N, F, bins):
    plane-major, or a view of bin-major ones (bins, N, F), which makes the backward's
    per-bin products matmuls on them in place (see :func:`convlab.fftw.binwise_matmul`).

    Bin-major when those products are matmuls anyway (no N, F or C of 3 or less: no
    bin-major copy of dy's spectra is then made), or when the grid has at most
    :data:`BIN_MAJOR_MAX_BINS` bins. On bigger grids, broadcast products of plane-major
    spectra won: single-thread backward without dx, 2-core AMD EPYC, bin-major against
    plane-major: 64 x 1 -> 32 on 28^2, k 7 (544 bins) 4.8 against 5.4 ms, 64 x 1 -> 8 1.0
    against 1.2 ms; 8 x 3 -> 16 on 64^2 (2664 bins) 3.4 against 3.2 ms, on 128^2 22.4 against
    15.7 ms, 8 x 3 -> 64 on 128^2 76 against 56 ms; but 16 x 16 -> 16 on 128^2, k 9 (matmuls
    either way) 116 against 129 ms with dx.
    """
    n, f = dy.shape[:2]
    bins = fft_shape[0] * (fft_shape[1] // 2 + 1)
    if not has_tiny_side(n, f, channels) or bins <= BIN_MAJOR_MAX_BINS:
        return rfft2(dy, rows, cols, fft_shape, relu_output, bins_first=True, label="dy").transpose(1, 2, 0)
    return rfft2(dy, rows, cols, fft_shape, relu_output, label="dy")


def fast_lengths(n):
    """The fast lengths from n up to twice the first of them."""
    lengths = [pyfftw.next_fast_len(n)]
    while (length := pyfftw.next_fast_len(lengths[-1] + 1)) <= 2 * lengths[0]:
        lengths.append(length)
    return lengths


@register_backend("fft")
class FFT:
    """FFT convolution on pyfftw: products of spectra, forward and backward."""

    # A ReLU after the layer is applied to each tile of outputs as it is cropped, and its
    # gradient to dy as dy is written into the transforms' grid.
    fuses_relu = True
    # A dense layer's input gradient handed on as its factors (convlab.factored): each
    # tile's rows of dy are formed as they are written into the transforms' grid.
    takes_factored_dy = True

    def check_settings(self):
        fftw.settings()  # CONVLAB_FFT_THREADS, _PLANNER, _WISDOM

    def own_threads(self):
        return fftw.own_threads()

    def forward(self, x, w, b, stride, padding, relu=False):
        h, width = x.shape[2:]
        kh, kw = w.shape[2:]
        (ph, pw), (sh, sw) = padding, stride
        padded = (h + 2 * ph, width + 2 * pw)
        grid = fft_shape_for(padded)
        with phase("x, w spectra"):
            x_spec = rfft2(x, slice(ph, ph + h), slice(pw, pw + width), grid)             # (N, C, bins)
            # The kernel spectra carry the inverse transform's 1/(Hf*Wf): they are the smallest.
            w_spec = rfft2(w, flipped(kh), flipped(kw), grid) * (1.0 / (grid[0] * grid[1]))  # (F, C, bins)
        with phase("exact bias"):
            exact = zero_windows(x, (kh, kw), padding, stride)

        def finish(y_rows, lo, hi):
            with phase("exact bias"):
                snap_to_bias(y_rows, b, exact[lo:hi])  # exact where a direct method is
            if relu:
                with phase("ReLU"):
                    relu_block(y_rows, y_rows)

        y = inverse_of_products(x_spec, w_spec.transpose(1, 0, 2), grid,                    # (N, F, OH, OW)
                                slice(kh - 1, padded[0], sh), slice(kw - 1, padded[1], sw), "y", offset=b,
                                finish=finish)
        return y, (x_spec, w_spec, x.shape, w.shape, stride, padding, grid, y if relu else None)

    def backward(self, dy, cache, need_dx=True):
        x_spec, w_spec, x_shape, w_shape, (sh, sw), (ph, pw), grid, relu_output = cache
        h, width = x_shape[2:]
        kh, kw = w_shape[2:]
        padded = (h + 2 * ph, width + 2 * pw)
        stride1_out = (padded[0] - kh + 1, padded[1] - kw + 1)
        dy_spec = dy_spectra(dy, slice(0, stride1_out[0], sh), slice(0, stride1_out[1], sw), grid,  # (N, F, bins)
                             relu_output, x_shape[1])
        with phase("db"):
            db = dy_spec[:, :, 0].real.sum(axis=0)  # a plane's zero-frequency bin is its sum
        dw = inverse_of_products(dy_spec.transpose(1, 0, 2), np.conj(x_spec), grid,             # (F, C, kh, kw)
                                 -np.arange(kh), -np.arange(kw), "dw")
        dw *= 1.0 / (grid[0] * grid[1])
        if not need_dx:
            return None, dw, db
        dx = inverse_of_products(dy_spec, np.conj(w_spec), grid,                                  # (N, C, H, W)
                                 np.arange(h) + ph - kh + 1, np.arange(width) + pw - kw + 1, "dx")
        return dx, dw, db
