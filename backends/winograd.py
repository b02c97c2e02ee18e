"""``winograd``: minimal filtering on tiles, F(m x m, r x r), forward and backward.

The output is cut into m x m tiles. Each tile needs an alpha_h x alpha_w input tile
(alpha = m + r - 1 per axis, neighbouring tiles overlap by r - 1), and Winograd's
minimal filtering computes it with alpha_h * alpha_w multiplications where the direct
method needs m² r_h r_w::

    Y_tile = Aᵀ_h [ (G_h g Gᵀ_w) ⊙ (Bᵀ_h d B_w) ] A_w      (one axis: y = Aᵀ[(G g) ⊙ (Bᵀ d)])

Summed over the C input channels, the elementwise product becomes, for each of the
P = alpha_h * alpha_w transform points, one matrix product across channels:
U (P, F, C) @ V (P, C, N * tiles) -> M (P, F, N * tiles), a single ``np.matmul`` over the
stack, where the time goes. Data flow, shapes for x (N, C, H, W) and w (F, C, r_h, r_w):

1. ``x`` is copied once, channel-major, into a zero canvas (C, N, Hc, Wc) holding the
   padding and the round-up to whole tiles (a negative padding crops: the backward uses it).
2. Input transform, one axis at a time, each one strided view (the overlapping tiles) and
   one ``tensordot`` with the small matrix: V (alpha_w, alpha_h, C, N, th, tw).
3. Filter transform once per call, in float64, then cast: U (alpha_w, alpha_h, F, C).
4. The batched GEMM, then the output transform, again one axis at a time, and one copy
   into (N, F, OH, OW) with the crop and the bias.

Transforms (see :func:`transforms`) are generated, not typed in: the Cook-Toom
construction from interpolation points, in exact rationals (``fractions``), then cast.
The points are :data:`POINTS`, taken in that order, plus the point at infinity: 0, ±1,
±1/2, ±2 for F(6, 3) and F(4, 5) (8 points, those of NNPACK and wincnn), then ±1/4
for F(6, 5) (10 points). F(m, 1) needs no transform (identity). The two axes use separate
1-D transforms, F(m, r_h) and F(m, r_w), so any kernel of sides 1 to 5 works (3 x 5, 1 x 3).

Backward, in the Winograd domain too:

* ``dx`` is the full correlation of ``dy`` with the flipped, channel-swapped kernel (``dy``
  padded by r - 1 - p per side): the same forward algorithm, F(m, r) on tiles of ``dy``.
* ``dw`` is Lavin's F(r x r, m x m): the roles swapped, ``dy``'s m x m tiles are the
  "filters" and ``dw`` the r x r output. With the same points its data transform is the
  forward's Bᵀ (a one-line proof: y = Aᵀ[(Gg) ⊙ (Bᵀd)] for all g, h gives
  ∑ h·y = gᵀ Gᵀ[(Ah) ⊙ (Bᵀd)], so dw_tile = Gᵀ[(A dy_tile Aᵀ) ⊙ (Bᵀ d B)]G), so the
  forward's transformed input V is kept and reused: only ``dy`` is transformed (by A),
  then one batched GEMM per point sums over the batch and the tiles,
  (P, F, N * tiles) @ (P, N * tiles, C), and Gᵀ(.)G is applied once to the (P, F, C) sum.
  Exact up to float rounding, and cheaper than an F(m, r) correlation of x with dy.

Error (float32 against float64, max |got - ref| / max |ref| of y, dx and dw on random normal
data with 32 to 128 channels, ``convlab bench --accuracy``): it grows with the number of
points per axis, m + r - 1, not with m alone. F(2x2, 3x3) 2e-7 to 1e-6, as the direct
methods (im2col 1e-7 to 7e-7); F(4x4, 3x3) and F(2x2, 5x5) (6 points) 4e-6 to 1e-5;
F(6x6, 3x3) and F(4x4, 5x5) (8 points) 4e-6 to 1.4e-5; F(6x6, 5x5) (10 points) 2e-4.
Bound, asserted in ``tests/test_winograd.py``: :data:`ERROR_BOUND_FLOAT32`, by points.
Default tile m = 4: the fastest on the 3x3 and 5x5 layers measured, at the error level
NNPACK's Winograd gates accept (1e-5 to 3e-5); F(6x6, 3x3) is no more accurate than
F(4x4, 3x3) here and not faster on 16-32 pixel images. See docs/winograd.md.

Stride 1 only, kernel sides 1 to 5: :meth:`Winograd.supports` says so up front.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from convlab.checks import int_choice
from convlab.registry import register_backend
from convlab.threads import share_chunks, single_threaded_blas, worker_count

# Interpolation points in the order they are taken; the point at infinity is always added.
POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-1, 2), Fraction(2), Fraction(-2),
          Fraction(3, 2), Fraction(-3, 2))
MAX_KERNEL_SIDE = 5
TILES = (2, 3, 4, 5, 6)
DEFAULT_TILE = 4
ENV_TILE = "CONVLAB_WINOGRAD_TILE"
# Multiply-adds per slice of a transform product (see small_product): with 6 x 6 matrices,
# about 170 kB in and out, within the L2 cache.
SLICE_MULTIPLY_ADDS = 1 << 18
# max |got - ref| / max |ref| of y, dx, dw in float32 on random normal data, by points per axis
# (m + r - 1): about 3-5x the largest median measured (docs/winograd.md).
ERROR_BOUND_FLOAT32 = {2: 3e-6, 3: 3e-6, 4: 3e-6, 5: 2e-5, 6: 5e-5, 7: 5e-5, 8: 5e-5, 9: 1e-3, 10: 1e-3}


@dataclass(frozen=True)
class Settings:
    """``tile``: the output tile side m of F(m x m, r x r), one of :data:`TILES`."""

    tile: int


_settings: Settings | None = None


def _tile(value, source) -> int:
    return int_choice(value, TILES, source, "the output tile side m of F(m x m, r x r)")


def configure(tile=None) -> Settings:
    """Set the winograd backend's output tile side m; returns the settings.

    ``tile`` not given comes from ``CONVLAB_WINOGRAD_TILE``, else :data:`DEFAULT_TILE`.
    Larger tiles multiply less per output (F(6x6, 3x3): 64 products for 36 outputs, 5.1x
    fewer than direct; F(4x4, 3x3) 4x; F(2x2, 3x3) 2.25x) but use more points, and the
    float32 error grows with them (see the module docstring).
    """
    global _settings
    env = os.environ.get(ENV_TILE)
    _settings = Settings(tile=_tile(tile, "tile") if tile is not None
                         else _tile(env, ENV_TILE) if env else DEFAULT_TILE)
    return _settings


def settings() -> Settings:
    """The settings in force (from :func:`configure`, or the environment on first use)."""
    return _settings or configure()


def _poly_times_root(coefficients, root):
    """Coefficients (lowest first) of p(x) * (x - root)."""
    shifted = [Fraction(0)] + list(coefficients)
    return [high - root * low for high, low in zip(shifted, list(coefficients) + [Fraction(0)])]


@functools.lru_cache(maxsize=None)
def cook_toom(m: int, r: int) -> tuple[tuple, tuple, tuple]:
    """Exact (Aᵀ (m, alpha), G (alpha, r), Bᵀ (alpha, alpha)) of F(m, r), alpha = m + r - 1,
    as tuples of rows of ``Fraction``: y = Aᵀ [(G g) ⊙ (Bᵀ d)] is the correlation of d
    (alpha) with g (r), y[i] = sum_k g[k] d[i + k].

    Cook-Toom: the linear convolution s = g * h (h of length m) is s = C[(V_r g) ⊙ (V_m h)],
    V_k the (alpha, k) matrix evaluating a polynomial of k coefficients at the points (row
    [1, p, p², ...]; at infinity, its leading coefficient) and C = V_alpha⁻¹ interpolating.
    Transposed, that is the correlation: A = V_m, G = V_r, Bᵀ = Cᵀ. C's column for a finite
    point p_i is N_i(x) / N_i(p_i), N_i = prod_{k != i} (x - p_k) over the finite points;
    for infinity, prod_k (x - p_k). The scale 1 / N_i(p_i) is moved into G, so Bᵀ's rows
    are the coefficients of the N_i.
    """
    alpha = m + r - 1
    if r == 1:  # one tap: y = g d, no transform at all
        identity = tuple(tuple(Fraction(int(i == j)) for j in range(m)) for i in range(m))
        return identity, tuple((Fraction(1),) for _ in range(m)), identity
    if alpha - 1 > len(POINTS):
        raise ValueError(f"F({m}, {r}) needs {alpha - 1} finite points; {len(POINTS)} are defined")
    points = POINTS[:alpha - 1]

    def powers(p, count):
        return [p ** j for j in range(count)]

    def infinity_row(count):
        return [Fraction(0)] * (count - 1) + [Fraction(1)]

    numerators, scales = [], []
    for i, p in enumerate(points):
        poly = [Fraction(1)]
        for k, q in enumerate(points):
            if k != i:
                poly = _poly_times_root(poly, q)
        numerators.append(poly + [Fraction(0)])  # degree alpha - 2, padded to alpha coefficients
        scales.append(1 / sum(c * p ** j for j, c in enumerate(poly)))
    everything = [Fraction(1)]
    for q in points:
        everything = _poly_times_root(everything, q)
    numerators.append(everything)
    scales.append(Fraction(1))
    a_t = [powers(p, m) for p in points] + [infinity_row(m)]
    g = [[s * v for v in powers(p, r)] for s, p in zip(scales, points)] + [infinity_row(r)]
    a_t = [list(col) for col in zip(*a_t)]
    return tuple(map(tuple, a_t)), tuple(map(tuple, g)), tuple(map(tuple, numerators))


@functools.lru_cache(maxsize=None)
def transforms(m: int, r: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`cook_toom` cast to ``dtype``: read-only Aᵀ (m, alpha), G (alpha, r), Bᵀ (alpha, alpha)."""
    arrays = tuple(np.array([[float(v) for v in row] for row in matrix], dtype=dtype) for matrix in cook_toom(m, r))
    for a in arrays:
        a.flags.writeable = False
    return arrays


def _tile_count(size, m):
    return -(-size // m)


def _canvas(x, pads, kernel, m):
    """x (N, C, H, W) zero-padded by ``pads`` ((top, bottom), (left, right); negative crops)
    and rounded up to whole tiles: (C, N, th*m + r_h - 1, tw*m + r_w - 1), and (oh, ow)."""
    n, c, h, w = x.shape
    (top, bottom), (left, right) = pads
    oh, ow = h + top + bottom - kernel[0] + 1, w + left + right - kernel[1] + 1
    hc, wc = _tile_count(oh, m) * m + kernel[0] - 1, _tile_count(ow, m) * m + kernel[1] - 1
    canvas = np.zeros((c, n, hc, wc), x.dtype)
    # The part of x inside the canvas: rows [max(0, -top), min(h, hc - top)) go to max(0, top).
    rows = slice(max(0, -top), min(h, hc - top))
    cols = slice(max(0, -left), min(w, wc - left))
    canvas[:, :, max(0, top):max(0, top) + rows.stop - rows.start,
           max(0, left):max(0, left) + cols.stop - cols.start] = x[:, :, rows, cols].transpose(1, 0, 2, 3)
    return canvas, (oh, ow)


def _tiles(a, axis, m, alpha):
    """The overlapping tiles of ``a`` along ``axis``, a view: that axis of length
    t*m + alpha - m becomes two, (t, alpha), tile i starting at i*m."""
    count = (a.shape[axis] - alpha) // m + 1
    step = a.strides[axis]
    shape = a.shape[:axis] + (count, alpha) + a.shape[axis + 1:]
    strides = a.strides[:axis] + (step * m, step) + a.strides[axis + 1:]
    return np.lib.stride_tricks.as_strided(a, shape, strides, writeable=False)


def small_product(matrix, x, q_first=True, p_first=True):
    """``matrix`` (p, q) applied to the q axis of ``x``, a long array of small vectors:
    x (q, L, ...) if ``q_first`` else (L, ..., q); the result (p, L, ...) if ``p_first``
    else (L, ..., p), contiguous. ``x`` may be a strided view (the overlapping tiles).

    Computed in slices of L of at most :data:`SLICE_MULTIPLY_ADDS`, each gathered (when
    strided) and multiplied while in cache: OpenBLAS took 10x longer over one
    (6, 6) @ (6, 550000) product than over slices of it (2-core EPYC, float32). The slices
    are shared among the cores (:func:`convlab.threads.share_chunks`).
    """
    p, q = matrix.shape
    long_axis = 1 if q_first else 0
    length = x.shape[long_axis]
    rest = x.shape[1:] if q_first else x.shape[:-1]
    out = np.empty((p,) + rest if p_first else rest + (p,), np.result_type(matrix, x))
    step = max(1, SLICE_MULTIPLY_ADDS // (p * max(1, x.size // length)))

    def run(index, lo, hi):
        part = x[:, lo:hi] if q_first else x[lo:hi]
        part = part.reshape(q, -1) if q_first else part.reshape(-1, q).T  # (q, S), a copy if strided
        if p_first:
            np.matmul(matrix, part, out=out[:, lo:hi].reshape(p, -1))
        else:
            np.matmul(part.T, matrix.T, out=out[lo:hi].reshape(-1, p))

    share_chunks(run, [(lo, min(lo + step, length)) for lo in range(0, length, step)])
    return out


def batched_matmul(a, b):
    """a (P, I, K) @ b (P, K, J) -> (P, I, J): the P products shared among the cores."""
    out = np.empty((a.shape[0], a.shape[1], b.shape[2]), np.result_type(a, b))
    points, parts = a.shape[0], worker_count()
    size = -(-points // parts)

    def run(index, lo, hi):
        np.matmul(a[lo:hi], b[lo:hi], out=out[lo:hi])

    share_chunks(run, [(lo, min(lo + size, points)) for lo in range(0, points, size)])
    return out


def input_transform(canvas, m, kernel):
    """Bᵀ d B on every tile: canvas (C, N, Hc, Wc) -> V (alpha_w, alpha_h, C, N, th, tw).

    Each axis is one product with the small matrix (see :func:`small_product`) over a
    strided view of the overlapping tiles. The second takes its operand transposed, so
    BLAS, not a copy with a short inner run, puts the transform point first.
    """
    (rh, rw), dtype = kernel, canvas.dtype
    b_t_h, b_t_w = transforms(m, rh, dtype)[2], transforms(m, rw, dtype)[2]
    ah, aw = m + rh - 1, m + rw - 1
    c, n, hc, wc = canvas.shape
    # Rows: the (C*N, th, alpha_h, Wc) view of tiles, alpha_h first -> (alpha_h, C*N, th, Wc).
    rows = small_product(b_t_h, _tiles(canvas.reshape(c * n, hc, wc), 1, m, ah).transpose(2, 0, 1, 3))
    # Columns: the (alpha_h*C*N*th, tw, alpha_w) view -> (alpha_w, alpha_h*C*N*th, tw).
    v = small_product(b_t_w, _tiles(rows.reshape(-1, wc), 1, m, aw), q_first=False)
    return v.reshape(aw, ah, c, n, -1, v.shape[-1])


@functools.lru_cache(maxsize=None)
def filter_matrix(m, kernel) -> np.ndarray:
    """G_w ⊗ G_h in float64, read-only (alpha_w * alpha_h, r_h * r_w): row (b, a), column
    (i, j) is G_w[b, j] G_h[a, i], so that G_h g G_wᵀ of every filter is one product."""
    g_h, g_w = transforms(m, kernel[0], np.float64)[1], transforms(m, kernel[1], np.float64)[1]
    matrix = np.einsum("bj,ai->baij", g_w, g_h).reshape(g_w.shape[0] * g_h.shape[0], -1)
    matrix.flags.writeable = False
    return matrix


def filter_transform(w, m):
    """G g Gᵀ of every filter, in float64 then cast: w (F, C, r_h, r_w) -> U (alpha_w * alpha_h, F, C)."""
    f, c, rh, rw = w.shape
    u = filter_matrix(m, (rh, rw)) @ w.reshape(f * c, rh * rw).T.astype(np.float64)
    return u.reshape(-1, f, c).astype(w.dtype)


def output_transform(products, m, kernel, out_shape, bias=None):
    """Aᵀ M A of every tile and the crop: products (alpha_w, alpha_h, F, N, th, tw) ->
    y (N, F, OH, OW), plus ``bias`` (F,) if given.

    Columns first, as (.)ᵀ @ A_w, which leaves the tile's column innermost; then rows; the
    copy into y then moves runs of whole output rows.
    """
    (rh, rw), dtype = kernel, products.dtype
    a_t_h, a_t_w = transforms(m, rh, dtype)[0], transforms(m, rw, dtype)[0]
    aw, ah, f, n, th, tw = products.shape
    cols = small_product(a_t_w, products.reshape(aw, -1, tw), p_first=False)  # (alpha_h*F*N*th, tw, m_w)
    tiles = small_product(a_t_h, cols.reshape(ah, -1, tw * m)).reshape(m, f, n, th, tw * m)  # (m_h, F, N, th, tw*m_w)
    oh, ow = out_shape
    y = np.empty((n, f, oh, ow), dtype)
    # (u, F, N, i, j*m + v) -> (N, F, i*m + u, j*m + v), cropped to (OH, OW).
    y[...] = tiles.transpose(2, 1, 3, 0, 4).reshape(n, f, th * m, tw * m)[:, :, :oh, :ow]
    if bias is not None:
        y += bias[:, None, None]
    return y


def correlate(x, w, pads, m, bias=None):
    """Stride-1 correlation of x (N, C, H, W) with w (F, C, r_h, r_w), x padded by
    ``pads`` ((top, bottom), (left, right), negative crops), by F(m x m, r x r):
    returns y (N, F, OH, OW) and the transformed input V (P, C, N * tiles)."""
    kernel = w.shape[2:]
    canvas, out_shape = _canvas(x, pads, kernel, m)
    v = input_transform(canvas, m, kernel)
    aw, ah, c, n, th, tw = v.shape
    v = v.reshape(aw * ah, c, n * th * tw)
    u = filter_transform(w, m)
    products = batched_matmul(u, v).reshape(aw, ah, w.shape[0], n, th, tw)
    return output_transform(products, m, kernel, out_shape, bias), v


def weight_gradient(dy, v, kernel, m):
    """dw (F, C, r_h, r_w) by F(r x r, m x m): dy (N, F, OH, OW) tiled m x m and
    transformed by A on each axis, the forward's V (P, C, N * tiles) reused, one GEMM per
    point summing over the batch and tiles, then Gᵀ (.) G."""
    (rh, rw), dtype = kernel, dy.dtype
    n, f, oh, ow = dy.shape
    th, tw = _tile_count(oh, m), _tile_count(ow, m)
    a_h, a_w = transforms(m, rh, dtype)[0].T, transforms(m, rw, dtype)[0].T  # (alpha, m)
    tiled = np.zeros((f, n, th * m, tw * m), dtype)
    tiled[:, :, :oh, :ow] = dy.transpose(1, 0, 2, 3)
    rows = small_product(a_h, tiled.reshape(f * n * th, m, tw * m).transpose(1, 0, 2))  # (alpha_h, F*N*th, tw*m)
    d_hat = small_product(a_w, rows.reshape(-1, m), q_first=False)  # (alpha_w, alpha_h*F*N*th*tw)
    aw, ah = a_w.shape[0], a_h.shape[0]
    dw_hat = batched_matmul(d_hat.reshape(aw * ah, f, -1), v.transpose(0, 2, 1))  # (P, F, C)
    dw = dw_hat.reshape(aw * ah, -1).T.astype(np.float64) @ filter_matrix(m, kernel)  # (F*C, r_h*r_w)
    return dw.reshape(f, -1, rh, rw).astype(dtype)


@register_backend("winograd")
class Winograd:
    """Winograd minimal filtering F(m x m, r x r) on tiles, one GEMM per transform point (backward too)."""

    limits = (f"stride 1, kernel sides 1 to {MAX_KERNEL_SIDE} (3x3, 5x5, 3x5, ...), any padding; "
              f"tile m from backends.winograd.configure (default {DEFAULT_TILE})")

    def supports(self, x_shape, w_shape, stride, padding):
        if stride != (1, 1):
            return f"stride {stride[0]}x{stride[1]} (stride 1 only)"
        kh, kw = w_shape[2:]
        if max(kh, kw) > MAX_KERNEL_SIDE:
            return f"kernel {kh}x{kw} (kernel sides 1 to {MAX_KERNEL_SIDE} only)"
        return None

    def forward(self, x, w, b, stride, padding):
        m, (ph, pw) = settings().tile, padding
        # A forward is ~40 GEMMs (F(4x4, 3x3)) and hundreds of small transform products. Each
        # threaded BLAS call waits for all its threads, and on a busy 2-core machine that made
        # a forward 2-10x im2col's wall time at the same CPU time; so BLAS runs on one thread
        # and share_chunks shares the products among the cores: a few hand-offs per call.
        with single_threaded_blas():
            y, v = correlate(x, w, ((ph, ph), (pw, pw)), m, b)
        return y, (v, w, x.shape, padding, m)

    def backward(self, dy, cache, need_dx=True):
        v, w, x_shape, (ph, pw), m = cache
        kh, kw = w.shape[2:]
        db = dy.sum(axis=(0, 2, 3))
        with single_threaded_blas():
            dw = weight_gradient(dy, v, (kh, kw), m)
            if not need_dx:
                return None, dw, db
            flipped = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (C, F, kh, kw)
            dx, _ = correlate(dy, flipped, ((kh - 1 - ph,) * 2, (kw - 1 - pw,) * 2), m)
        return dx, dw, db
