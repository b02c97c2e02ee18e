"""``winograd``: minimal filtering on tiles, F(m x m, r x r), forward and backward.

The output is cut into m x m tiles. Each tile needs an alpha_h x alpha_w input tile
(alpha = m + r - 1 per axis, neighbouring tiles overlap by r - 1), and Winograd's
minimal filtering computes it with alpha_h * alpha_w multiplications where the direct
method needs m² r_h r_w::

    Y_tile = Aᵀ_h [ (G_h g Gᵀ_w) ⊙ (Bᵀ_h d B_w) ] A_w      (one axis: y = Aᵀ[(G g) ⊙ (Bᵀ d)])

Summed over the C input channels, the elementwise product becomes, for each of the
P = alpha_h * alpha_w transform points, one matrix product across channels:
V (P, tiles, C) @ U (P, C, F) -> M (P, tiles, F), where the time should go. Everything
else is memory traffic, so the whole pipeline runs on a chunk at a time (a few images, or a
band of tile rows of a large one: :func:`tile_rows_per_chunk`), from x to y while the
chunk's arrays are in cache, the chunks shared among the cores
(:func:`convlab.threads.share_chunks`, BLAS single-threaded inside). Per chunk, shapes for
x (n, C, H, W) and w (F, C, r_h, r_w):

1. canvas: x copied to a zero canvas holding the padding and the round-up to whole tiles,
   channels last, with the tiles' columns unrolled, (alpha_w, Hc, n, tw, C + 1), and a
   channel of ones for the bias (:func:`unrolled_canvas`; a negative padding crops);
2. input transform Bᵀ d B (:func:`transform_tiles`): across, one GEMM over the unrolled
   window columns; down, one GEMM per (b, tile row) over a contiguous block of rows,
   written straight into V (P, tiles, C), point-major: each point's (tiles, C) matrix
   contiguous, ready for BLAS;
3. the per-point GEMMs with U (P, C + 1, F), the filters transformed once per call (G g Gᵀ,
   in float64, then cast), the bias their last row, written as (P, F, tiles);
4. output transform Aᵀ M A (:func:`untransform_tiles`): down and across as GEMMs, giving
   the tiles as whole output rows (u, F, i, n, j * m + v), then one copy into y
   (n, F, OH, OW) with the crop.

The old whole-batch version (each stage one pass over arrays of 19 MB) took 0.6-1.4x
im2col's time on the 3x3 layers with many channels; this one 0.3-0.5x (docs/winograd.md).

Transforms (see :func:`transforms`) are generated, not typed in: the Cook-Toom
construction from interpolation points, in exact rationals (``fractions``), then cast.
The points are :data:`POINTS`, taken in that order, plus the point at infinity: 0, ±1,
±1/2, ±2 for F(6, 3) and F(4, 5) (8 points, those of NNPACK and wincnn), then ±3/2
for F(6, 5) (10 points). F(m, 1) needs no transform (identity). The two axes use separate
1-D transforms, F(m, r_h) and F(m, r_w), so any kernel of sides 1 to 5 works (3 x 5, 1 x 3).

Backward, in the Winograd domain too:

* ``dx`` is the full correlation of ``dy`` with the flipped, channel-swapped kernel (``dy``
  padded by r - 1 - p per side): the same forward algorithm, F(m, r) on tiles of ``dy``.
* ``dw`` is Lavin's F(r x r, m x m): the roles swapped, ``dy``'s m x m tiles are the
  "filters" and ``dw`` the r x r output. With the same points its data transform is the
  forward's Bᵀ (a one-line proof: y = Aᵀ[(Gg) ⊙ (Bᵀd)] for all g, h gives
  ∑ h·y = gᵀ Gᵀ[(Ah) ⊙ (Bᵀd)], so dw_tile = Gᵀ[(A dy_tile Aᵀ) ⊙ (Bᵀ d B)]G). Per group of
  images, V is computed again from x (keeping the forward's V instead, 2.25x the input,
  costs the forward its writing to memory and dw its reading back), ``dy``'s tiles are transformed by A, one GEMM per point,
  (F, tiles) @ (tiles, C), sums over the group's tiles, and Gᵀ(.)G is applied once to the
  (P, F, C) sum of the groups. Exact up to float rounding, and cheaper than an F(m, r)
  correlation of x with dy.

Error (float32 against float64, max |got - ref| / max |ref| of y, dx and dw on random normal
data with 32 to 128 channels, ``convlab bench --accuracy``): it grows with the number of
points per axis, m + r - 1, not with m alone. F(2x2, 3x3) 2e-7 to 1e-6, as the direct
methods (im2col 1e-7 to 7e-7); F(4x4, 3x3) and F(2x2, 5x5) (6 points) 4e-6 to 1e-5;
F(6x6, 3x3) and F(4x4, 5x5) (8 points) 4e-6 to 1.4e-5; F(6x6, 5x5) (10 points) 2e-4.
Bound, asserted in ``tests/test_winograd.py``: :data:`ERROR_BOUND_FLOAT32`, by points.
Default tile m = 4: the fastest or as fast on the 3x3 and 5x5 layers measured, at the error
level NNPACK's Winograd gates accept (1e-5 to 3e-5); F(6x6, 3x3) is no more accurate than
F(4x4, 3x3) and not faster on 12-48 pixel images (it wins on 96 x 96). See docs/winograd.md.

Stride 1 only, kernel sides 1 to 5: :meth:`Winograd.supports` says so up front.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from convlab.checks import int_choice
from convlab.exact import snap_to_bias, zero_windows
from convlab.registry import register_backend
from convlab.profile import phase, shared_among_threads
from convlab.relu import relu_gradient_block
from convlab.threads import chunk_bounds, item_chunks, share_chunks, single_threaded_blas

# Interpolation points in the order they are taken; the point at infinity is always added.
POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-1, 2), Fraction(2), Fraction(-2),
          Fraction(3, 2), Fraction(-3, 2))
MAX_KERNEL_SIDE = 5
TILES = (2, 3, 4, 5, 6)
DEFAULT_TILE = 4
ENV_TILE = "CONVLAB_WINOGRAD_TILE"
# Bytes of one chunk's transformed input tiles (points x tiles x channels): a chunk (images, or
# a band of tile rows of one) is unrolled, transformed, multiplied and transformed back while it
# is mostly in cache (L2: 1 MiB a core on the 2-core AMD EPYC measured). 1 MiB against 512 KiB:
# 64x32->32 28x28 0.50 -> 0.48x im2col's time forward, the 5x5 row 0.31 -> 0.28x, the others alike.
CHUNK_BYTES = 1 << 20
# Columns of one block of the float64 filter transforms (:func:`in_float64`): 36 x 2048 float64
# values of a result, 590 KB, stay in cache until cast.
FLOAT64_COLUMNS = 2048
# The backward's groups of tile rows (see tile_rows_per_group): at least this many, for the cores to share.
MIN_GROUPS = 4
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


@dataclass(frozen=True)
class Tiling:
    """Tiles on a canvas of (Hc, Wc) pixels: tile (i, j), i < counts[0],
    j < counts[1], is the window of (rows, cols) pixels whose first pixel is at
    ``step`` * (i, j). Neighbouring tiles overlap when the window is larger than the step
    (the input tiles of F(m, r): window m + r - 1, step m)."""

    window: tuple[int, int]
    step: int
    counts: tuple[int, int]

    @property
    def extent(self) -> tuple[int, int]:
        """The canvas (rows, cols) the tiles reach."""
        return tuple((c - 1) * self.step + w for c, w in zip(self.counts, self.window))

    def band(self, first, stop) -> Tiling:
        """Tile rows first ... stop - 1 only (on a canvas that starts at tile row ``first``)."""
        return Tiling(self.window, self.step, (stop - first, self.counts[1]))


def correlation_tiling(image, kernel, pads, m) -> tuple[tuple[int, int], Tiling]:
    """The output size (OH, OW) of the stride-1 correlation of an image (H, W) padded by
    ``pads`` ((top, bottom), (left, right), negative crops) with a kernel (r_h, r_w), and
    its F(m, r) input tiles on the padded image."""
    out = tuple(size + lo + hi - r + 1 for size, (lo, hi), r in zip(image, pads, kernel))
    return out, Tiling(tuple(m + r - 1 for r in kernel), m, tuple(_tile_count(o, m) for o in out))


def tile_rows_per_chunk(tiling, channels, itemsize):
    """Tile rows whose transformed tiles, (alpha_h * alpha_w, tiles, ``channels``), fit in
    :data:`CHUNK_BYTES`; but at least ``channels`` / 4 tiles, so that each per-point GEMM,
    (tiles, C) @ (C, F), has rows enough to pay for packing its (C, F) operand: with 256
    channels, 9 tiles ran at half the speed of 72 (21 against 40 GMAC/s, 2-core EPYC).

    An image of more tile rows than that is cut into bands of equal size, but only when it
    is more than two chunks: 32 x 32 images with 64 channels (8 tile rows; 7 to a chunk of
    the 512 KiB then, 14 of today's 1 MiB, so whole images) ran 0.49x im2col's time forward
    in whole images, 0.59x in bands of 7 and 1, 0.69x of 4.
    """
    points, (down, across) = tiling.window[0] * tiling.window[1], tiling.counts
    rows = max(1, CHUNK_BYTES // (points * across * channels * itemsize), -(-channels // (4 * across)))
    if rows >= down:
        return rows
    bands = -(-down // rows)
    return down if bands <= 2 else -(-down // bands)


def tile_rows_per_group(n, per_chunk, tiling, f, c):
    """Tile rows in one group of the backward, which sums dw_hat (P, F, C) over the group's
    tiles with one GEMM per point and adds the groups' sums at the end: each group's sum is
    written and read once more, so a group has at least 2 max(F, C) tiles (the sums then
    move at most half the bytes of the tiles), but at most 1 / :data:`MIN_GROUPS` of all, and
    at least a chunk. It depends on the shapes only: dw is the same whatever the threads."""
    down, across = tiling.counts
    return max(per_chunk, min(-(-2 * max(f, c) // across), -(-n * down // MIN_GROUPS)))


def piece(lo, hi, down):
    """A chunk (lo, hi) of :func:`convlab.threads.item_chunks` over n images of ``down``
    tile rows each: whole images, or a band of one image's tile rows, as
    (images slice, first tile row, stop)."""
    image, row = divmod(lo, down)
    if hi - lo >= down:
        return slice(image, hi // down), 0, down
    return slice(image, image + 1), row, row + hi - lo


def unrolled_canvas(x, placement, tiling, ones=False):
    """x (n, K, H, W) on a zero canvas, stored as its tiles' columns, channels last:
    (window cols, Hc, n, tw, K), where [q, h, i, j] is the canvas pixel (h, j * step + q) of
    image i; x's pixel (0, 0) is at canvas position ``placement`` (negative: that much of x is
    cut off), Hc the rows the tiles reach. With ``ones``, one more channel of ones
    everywhere: K + 1 (see :func:`correlate`).

    A tile's columns are unrolled (window / step times x, 1.5x for F(4, 3)) so that the
    transform across is one GEMM over the window column q, and the transform down, over a
    window of contiguous rows, needs no copy either (:func:`transform_tiles`); a canvas
    with columns in place needed a gather of the tiles' columns after the first transform,
    and the two took 25 % longer (64x32->32 28x28, 2-core EPYC). Channels last, so that the
    per-point GEMMs get (tiles, K) matrices.

    x is first copied (contiguous runs) into zero channel planes of the canvas's size, an
    odd number of cache lines apart (:func:`spaced_planes`); then one transposing copy
    reads them, from cache, through a view of their overlapping windows. Two copies a chunk
    rather than one per window column (the canvas zeroed first, then six copies): the
    same single-thread time, fewer numpy calls for the two threads to take turns between
    (64x32->32 28x28 forward 0.56 -> 0.53x im2col's wall time, the 64- and 128-channel
    layers 0.45-0.50 -> 0.44-0.45x; 2-core EPYC). Timed as the phase "canvas".
    """
    n, k, h, w = x.shape
    (top, left), ww, step, tw = placement, tiling.window[1], tiling.step, tiling.counts[1]
    hc, wc = tiling.extent
    with phase("canvas"):
        padded = spaced_planes((n, k, hc, wc), x.dtype)
        rows, cols = (slice(max(0, o), min(e, o + size)) for o, e, size in ((top, hc, h), (left, wc, w)))
        if rows.start < rows.stop and cols.start < cols.stop:
            np.copyto(padded[:, :, rows, cols], x[:, :, rows.start - top:rows.stop - top, cols.start - left:cols.stop - left])
        item, (image, plane, row, _) = x.itemsize, padded.strides
        windows = np.lib.stride_tricks.as_strided(padded, (ww, hc, n, tw, k), (item, row, image, step * item, plane),
                                                  writeable=False)
        out = np.empty((ww, hc, n, tw, k + ones), x.dtype)
        np.copyto(out[..., :k], windows)
        if ones:
            out[..., k:] = 1
    return out


def spaced_planes(shape, dtype):
    """Zeros (n, K, H, W) whose channel planes lie an odd number of cache lines (64
    bytes) apart, so that reading one pixel of each of the K planes uses all the L1 cache's
    sets. The transposing copies of :func:`unrolled_canvas` read such K streams: from 32 x 32
    float32 images (planes 4 KiB apart, all in one set) they took 4x longer; from 16 x 16
    ones with 128 channels (1 KiB apart, 4 sets), 1.3x. Copying x into them first brings
    it into cache, which also made the transposing copies from 28 x 28 images faster than
    straight from memory (64x32->32: 2.4 -> 2.1 ms of a 9 ms forward, 2-core EPYC).
    """
    n, k, h, w = shape
    size = np.dtype(dtype).itemsize
    lines = -(-h * w * size // 64) | 1
    return np.zeros((n, k, lines * 64 // size), dtype)[:, :, :h * w].reshape(n, k, h, w)


def transform_tiles(canvas, tiling, left, right, origin=(0, 0)):
    """``left`` (alpha_h, window rows) applied down and ``right`` (alpha_w, window cols)
    across every tile of an :func:`unrolled_canvas` (Q, Hc, n, tw, K), the tiles' first
    pixel at canvas position ``origin`` (their columns origin[1] ... of the Q unrolled):
    -> (alpha_h * alpha_w, th * n * tw, K), the transform point (a, b) first, then the tile
    (tile row i, image, tile column j), then the channel.
    That is the layout the per-point GEMMs take ((tiles, K) matrices, unit stride along K).

    Two GEMMs, no copy: across, ``right`` @ the whole (window cols, Hc * n * tw * K)
    canvas; down, ``left`` @ the (window rows, n * tw * K) block of each (b, tile row),
    written straight into its place in the result: the images side by side in one product, 4x
    fewer BLAS calls than a product per image (168 calls of (6, 6) @ (6, 231) a chunk of 4
    images on 64x32->32 28x28). Separable: alpha (window rows + window cols)
    multiply-adds per tile and channel, 2 x 6 x 6 for F(4, 3). One product by kron(Bᵀ, Bᵀ)
    (36 x 36) did 3x the work and took 2-3x longer on the EPYC measured.
    """
    (wh, ww), step, (th, tw) = tiling.window, tiling.step, tiling.counts
    hc, n, k = canvas.shape[1], canvas.shape[2], canvas.shape[4]
    ah, aw, row = left.shape[0], right.shape[0], n * tw * k
    columns, across = canvas[origin[1]:origin[1] + ww], np.empty((aw, hc, row), canvas.dtype)
    if columns.flags.c_contiguous:
        np.matmul(right, columns.reshape(ww, hc * row), out=across.reshape(aw, hc * row))
    else:  # some of a canvas's images (the backward's dx, a chunk of a group): a product per row
        np.matmul(right, columns.reshape(ww, hc, row, copy=False).transpose(1, 0, 2), out=across.transpose(1, 0, 2))
    item = across.itemsize  # strides from the shapes (numpy's of a length-1 axis can be anything)
    blocks = np.ndarray((aw, th, wh, row), across.dtype, across, origin[0] * row * item,
                        (hc * row * item, step * row * item, row * item, item))
    out = np.empty((ah * aw, th * n * tw, k), canvas.dtype)
    np.matmul(left, blocks, out=out.reshape(ah, aw, th, row, copy=False).transpose(1, 2, 0, 3))
    return out


def untransform_tiles(products, a_t_h, a_t_w, counts, out, relu=False):
    """Aᵀ M A of every tile, written into out (n, F, OH, OW) with the crop: products
    (alpha_h * alpha_w, F, th * n * tw), point (a, b) first, then the output channel, then
    the tile in :func:`transform_tiles`'s order. With ``relu``, max(., 0) of it: the last
    copy takes the maximum against a row of zeros instead (one pass either way).

    Down first (one GEMM over all the a rows), then across, the tile's columns last:
    (u, F * tiles, b) @ A_w, one GEMM per output row u, gives the tiles as (u, F, i, n, j, v),
    where (j, v) are whole output rows. One copy then moves runs of OW values into out.
    Products with the tiles last come out of the per-point GEMMs at about the same speed
    as with F last, and spare the (pixels, F) -> (F, pixels) transpose that took half the
    output transform's time (64x32->32 28x28, 2-core EPYC).
    """
    m, ah, aw = a_t_w.shape[0], a_t_h.shape[1], a_t_w.shape[1]
    (th, tw), (n, f, oh, ow) = counts, out.shape
    down = np.matmul(a_t_h, products.reshape(ah, -1))  # (u, b * F * tiles)
    tiles = np.matmul(down.reshape(m, aw, -1).transpose(0, 2, 1), a_t_w.T)  # (u, F * tiles, v)
    tiles = tiles.reshape(m, f, th, n, tw * m)[..., :ow]
    whole = min(th, oh // m)  # tile rows entirely inside out
    zeros = np.zeros(ow, out.dtype) if relu else None  # broadcast: numpy's inner loop stays contiguous

    def place(source, target):
        if relu:
            np.maximum(source, zeros, out=target)
        else:
            np.copyto(target, source)

    place(tiles[:, :, :whole].transpose(3, 1, 2, 0, 4), out[:, :, :whole * m].reshape(n, f, whole, m, ow, copy=False))
    if whole < th:
        place(tiles[:oh - whole * m, :, whole].transpose(2, 1, 0, 3), out[:, :, whole * m:])


@functools.lru_cache(maxsize=None)
def filter_matrix(m, kernel) -> np.ndarray:
    """G_h ⊗ G_w in float64, read-only (alpha_h * alpha_w, r_h * r_w): row (a, b), column
    (i, j) is G_h[a, i] G_w[b, j], so that G_h g G_wᵀ of every filter is one product."""
    g_h, g_w = transforms(m, kernel[0], np.float64)[1], transforms(m, kernel[1], np.float64)[1]
    matrix = np.einsum("ai,bj->abij", g_h, g_w).reshape(g_h.shape[0] * g_w.shape[0], -1)
    matrix.flags.writeable = False
    return matrix


def filter_transform(w, m):
    """G g Gᵀ of every filter, in float64 then cast: w (F, C, r_h, r_w) -> U (alpha_h * alpha_w, C, F),
    each point's (C, F) contiguous: the right-hand operand of the per-point GEMMs."""
    f, c, rh, rw = w.shape
    u = np.empty(((m + rh - 1) * (m + rw - 1), c, f), w.dtype)
    in_float64(filter_matrix(m, (rh, rw)), w.transpose(2, 3, 1, 0).reshape(rh * rw, c * f), u.reshape(-1, c * f))
    return u


def in_float64(matrix, operand, out):
    """out (R, N) = matrix (R, K, float64) @ operand (K, N), computed in float64 and cast to
    out's dtype, in blocks of :data:`FLOAT64_COLUMNS` columns shared among the cores.

    The filter transforms (K = r_h * r_w) and dw's last one (K = P): with 128 channels, one
    (36, 9) @ (9, 16 512) float64 product and its casts took 0.5-1 ms on one core while the
    other waited, a quarter of a 4 ms forward on two threads (16x128->128 16x16, 2-core EPYC).
    """
    share_chunks(lambda _, lo, hi: np.copyto(out[:, lo:hi], matrix @ operand[:, lo:hi].astype(np.float64)),
                 chunk_bounds(operand.shape[1], FLOAT64_COLUMNS))


def with_bias(w, b):
    """w (F, C, r_h, r_w) with one more input channel, the bias b (F,) at its tap (0, 0):
    (F, C + 1, r_h, r_w). Correlated with a channel of ones, that channel gives b everywhere."""
    f, c, rh, rw = w.shape
    out = np.zeros((f, c + 1, rh, rw), w.dtype)
    out[:, :c] = w
    out[:, c, 0, 0] = b
    return out


def correlate_tiles(canvas, tiling, kernel, u, out, relu=False):
    """One chunk of a correlation by F(m x m, r x r): the input tiles of an
    :func:`unrolled_canvas` transformed (Bᵀ d B) into V (P, tiles, C), one GEMM per point
    with U (P, C, F), (tiles, C) @ (C, F), written as (P, F, tiles), and the output
    transform into out (n, F, OH, OW), with ``relu`` max(., 0) of it.

    The canvas and V are freed as soon as they are used (the forward hands the canvas over
    and keeps no reference to it), so that the chunk's next arrays take their memory while
    it is still in cache: 64x32->32 28x28 forward 0.58-0.60 -> 0.50-0.57x im2col's wall
    time with two threads, 0.47 -> 0.46x its single-thread CPU time (2-core EPYC)."""
    m, dtype = tiling.step, canvas.dtype
    (a_t_h, _, b_t_h), (a_t_w, _, b_t_w) = transforms(m, kernel[0], dtype), transforms(m, kernel[1], dtype)
    with phase("input transform"):
        v = transform_tiles(canvas, tiling, b_t_h, b_t_w)
        del canvas
    with phase("GEMM"):
        products = np.empty((u.shape[0], u.shape[2], v.shape[1]), dtype)
        np.matmul(v, u, out=products.transpose(0, 2, 1))
        del v
    with phase("output transform"):
        untransform_tiles(products, a_t_h, a_t_w, tiling.counts, out, relu)


def correlate(x, u, kernel, pads, m, ones=False, relu=False):
    """y (N, F, OH, OW), the stride-1 correlation of x (N, C, H, W), padded by ``pads``
    ((top, bottom), (left, right), negative crops), with the filters (F, C, r_h, r_w) whose
    transform is u (P, C, F), by F(m x m, r x r).

    With ``ones``, x gets one more channel, of ones everywhere (padding too), and u has a
    row for it (P, C + 1, F): the forward's bias, as a one-tap filter b at tap (0, 0) of that
    channel (:func:`with_bias`). So the bias comes out of the GEMMs, as in ``im2col`` (a row
    of ones there), and costs no pass over y: adding it while transposing into y had made
    that copy 1.5x slower, 5 % of a forward.

    In chunks (:func:`piece`: a few images, or a band of tile rows of a large image)
    shared among the cores, each taken from x to y while in cache: canvas, input transform,
    GEMMs, output transform. The forward, and ``dx`` of the backward. With ``relu``, y is
    max(., 0), taken in the chunk's last copy into y.
    """
    (top, _), (left, _) = pads
    n, (k, f) = x.shape[0], u.shape[1:]  # k: x's channels with the ones
    out, tiling = correlation_tiling(x.shape[2:], kernel, pads, m)
    y = np.empty((n, f) + out, x.dtype)

    def chunk(_, lo, hi):
        images, first, stop = piece(lo, hi, tiling.counts[0])
        band = tiling.band(first, stop)
        correlate_tiles(unrolled_canvas(x[images], (top - first * m, left), band, ones), band, kernel, u,
                        y[images, :, first * m:stop * m], relu)  # the canvas handed over

    with shared_among_threads():
        share_chunks(chunk, item_chunks(n, tiling.counts[0], tile_rows_per_chunk(tiling, max(k, f), x.itemsize)))
    return y


def gradients(dy, x, w, padding, m, need_dx=True, relu_output=None):
    """(dx or None, dw, db) for dy (N, F, OH, OW) of the forward of x (N, C, H, W), w (F, C, r_h, r_w).

    ``dw`` in groups of tiles (:func:`tile_rows_per_group`) shared among the cores. A group's
    input tiles are transformed again (V, as in the forward), and so are dy's m x m tiles, by
    A on each axis; then one GEMM per point, (F, tiles) @ (tiles, C), sums dw_hat over the
    group's tiles. The groups' (P, F, C) sums are added in group order, then Gᵀ (.) G.
    Keeping the forward's V instead (2.25x the input for F(4x4, 3x3)) cost the forward the
    writing of it to memory, and dw the reading: 64x32->32 28x28 forward 0.50 -> 0.55x
    im2col's time, forward+backward 0.45 -> 0.42x (one thread, 2-core EPYC).

    ``dx`` is the correlation of dy, padded by q = r - 1 - p, with the flipped, channel-swapped
    kernel (:func:`correlate`). When its tile rows are the forward's (OH and H round up to as
    many tiles, as with "same" padding) and q >= 0, the group's dy canvas (dy padded by q)
    serves both, dw's tiles starting at q: one transposing copy of dy fewer.

    ``db`` is summed per group too, from the group's dy while it is in cache, the groups'
    sums added in group order: a separate pass over dy after the groups took 0.3-0.5 ms of
    64x32->32 28x28's backward on one core, while the other waited.

    After a forward with a fused ReLU, ``relu_output`` is its y: each group first keeps the
    rows of dy it reads (its own, and for the shared canvas the r - 1 rows around them) only
    where y > 0, in a copy of its own; when dx is computed after the groups, each group also
    writes its own rows of that into one array for it.
    """
    (ph, pw), (n, c), (f, _, kh, kw), dtype = padding, x.shape[:2], w.shape, dy.dtype
    _, tiling = correlation_tiling(x.shape[2:], (kh, kw), ((ph, ph), (pw, pw)), m)
    q = (kh - 1 - ph, kw - 1 - pw)
    _, dx_tiling = correlation_tiling(dy.shape[2:], (kh, kw), ((q[0], q[0]), (q[1], q[1])), m)
    shared = need_dx and min(q) >= 0 and dx_tiling.counts == tiling.counts
    dy_tiling = Tiling((m, m), m, tiling.counts)
    (a_t_h, _, b_t_h), (a_t_w, _, b_t_w) = transforms(m, kh, dtype), transforms(m, kw, dtype)
    per = tile_rows_per_chunk(tiling, max(c, f), dtype.itemsize)
    groups = item_chunks(n, tiling.counts[0], tile_rows_per_group(n, per, tiling, f, c))
    points = (m + kw - 1) * (m + kh - 1)
    parts, db_parts = np.empty((len(groups), points, f, c), dtype), np.empty((len(groups), f), dtype)
    flipped = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (C, F, kh, kw)
    u_dx = filter_transform(flipped, m) if need_dx else None
    dx = np.empty(x.shape, dtype) if shared else None
    kept = np.empty_like(dy) if relu_output is not None and need_dx and not shared else None

    def group(index, lo, hi):
        images, first, stop = piece(lo, hi, tiling.counts[0])
        band, dy_band, dx_band = (t.band(first, stop) for t in (tiling, dy_tiling, dx_tiling))
        source, top = dy[images], 0  # the dy rows this group reads, from row top of dy
        if relu_output is not None:
            top = max(0, first * m - q[0]) if shared else first * m
            rows = slice(top, stop * m + kh - 1 - q[0] if shared else stop * m)
            source = np.empty_like(dy[images, :, rows])
            relu_gradient_block(dy[images, :, rows], relu_output[images, :, rows], source)
        own = source[:, :, first * m - top:stop * m - top]
        if kept is not None:
            np.copyto(kept[images, :, first * m:stop * m], own)
        db_parts[index] = own.sum(axis=(0, 2, 3))
        canvas = unrolled_canvas(x[images], (ph - first * m, pw), band)
        if shared:
            dy_canvas, origin = unrolled_canvas(source, (q[0] - first * m + top, q[1]), dx_band), q
        else:
            dy_canvas, origin = unrolled_canvas(source, (top - first * m, 0), dy_band), (0, 0)
        with phase("input transform"):
            v = transform_tiles(canvas, band, b_t_h, b_t_w)  # (P, tiles, C)
            del canvas
            dy_hat = transform_tiles(dy_canvas, dy_band, a_t_h.T, a_t_w.T, origin)  # (P, tiles, F)
        with phase("GEMM dw"):
            np.matmul(dy_hat.transpose(0, 2, 1), v, out=parts[index])
            del v, dy_hat  # (their memory, still in cache, then taken by dx's arrays)
        if shared:  # in chunks of the group's images, as the forward's (a group may be larger)
            for a, b in chunk_bounds(images.stop - images.start, max(1, per // tiling.counts[0])):
                correlate_tiles(dy_canvas[:, :, a:b], dx_band, (kh, kw), u_dx,
                                dx[images.start + a:images.start + b, :, first * m:stop * m])

    with shared_among_threads():
        share_chunks(group, groups)
    with phase("dw transform"):
        # The parts added in group order, in 4 blocks of points shared among the cores (one
        # block per point made 36 small tasks, whose hand-offs and GIL waits cost more).
        dw_hat = np.empty((points, f, c), dtype)
        share_chunks(lambda _, lo, hi: np.sum(parts[:, lo:hi], axis=0, out=dw_hat[lo:hi]),
                     chunk_bounds(points, -(-points // 4)))
        dw = np.empty((kh * kw, f * c), dtype)
        in_float64(filter_matrix(m, (kh, kw)).T, dw_hat.reshape(points, -1), dw)
    if need_dx and not shared:
        dx = correlate(dy if kept is None else kept, u_dx, (kh, kw), ((q[0], q[0]), (q[1], q[1])), m)
    return dx, dw.T.reshape(w.shape), db_parts.sum(axis=0)


@register_backend("winograd")
class Winograd:
    """Winograd minimal filtering F(m x m, r x r) on tiles, one GEMM per transform point (backward too)."""

    limits = (f"stride 1, kernel sides 1 to {MAX_KERNEL_SIDE} (3x3, 5x5, 3x5, ...), any padding; "
              f"tile m from backends.winograd.configure (default {DEFAULT_TILE})")

    def check_settings(self):
        settings()  # CONVLAB_WINOGRAD_TILE

    def supports(self, x_shape, w_shape, stride, padding):
        if stride != (1, 1):
            return f"stride {stride[0]}x{stride[1]} (stride 1 only)"
        kh, kw = w_shape[2:]
        if max(kh, kw) > MAX_KERNEL_SIDE:
            return f"kernel {kh}x{kw} (kernel sides 1 to {MAX_KERNEL_SIDE} only)"
        return None

    # A ReLU after the layer is taken in each chunk's last copy into y, and its gradient
    # applied to each group's rows of dy as the backward reads them.
    fuses_relu = True

    def forward(self, x, w, b, stride, padding, relu=False):
        # BLAS on the calling thread only, also outside the shared chunks (the filter
        # transform): a threaded BLAS call leaves BLAS's threads spinning for a while on the
        # core the chunks' second thread needs.
        (ph, pw), m = padding, settings().tile
        with single_threaded_blas():
            y = correlate(x, filter_transform(with_bias(w, b), m), w.shape[2:], ((ph, ph), (pw, pw)), m,
                          ones=True, relu=relu)
        with phase("exact bias"):  # where a direct method is exact (convlab.exact), after the fused ReLU
            snap_to_bias(y, np.maximum(b, 0) if relu else b, zero_windows(x, w.shape[2:], padding))
        # x and w themselves, which the caller leaves as they are (convlab/registry.py): the
        # forward makes no whole-batch copy to keep instead (its canvas and V are a chunk's,
        # freed as used), and V for all of x (2.25x x) or a copy of x would cost every forward.
        return y, (x, w, padding, m, y if relu else None)

    def backward(self, dy, cache, need_dx=True):
        x, w, padding, m, relu_output = cache
        with single_threaded_blas():
            return gradients(dy, x, w, padding, m, need_dx, relu_output)
