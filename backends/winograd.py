"""``winograd``: minimal filtering on tiles, F(m x m, r x r), forward and backward.

The output is cut into m x m tiles. Each tile needs an alpha_h x alpha_w input tile
(alpha = m + r - 1 per axis, neighbouring tiles overlap by r - 1), and Winograd's
minimal filtering computes it with alpha_h * alpha_w multiplications where the direct
method needs m² r_h r_w::

    Y_tile = Aᵀ_h [ (G_h g Gᵀ_w) ⊙ (Bᵀ_h d B_w) ] A_w      (one axis: y = Aᵀ[(G g) ⊙ (Bᵀ d)])

Summed over the C input channels, the elementwise product becomes, for each of the
P = alpha_h * alpha_w transform points, one matrix product across channels:
V (P, tiles, C) @ U (P, C, F) -> M (P, tiles, F), where the time should go. Everything
else is memory traffic, so the whole pipeline runs on a chunk of images at a time
(:func:`images_per_chunk`), from x to y while the chunk's arrays are in the L2 cache, the
chunks shared among the cores (:func:`convlab.threads.share_chunks`, BLAS single-threaded
inside). Per chunk, shapes for x (n, C, H, W) and w (F, C, r_h, r_w):

1. canvas: x copied channels-last into a zero canvas (n, Hc, Wc, C) holding the padding and
   the round-up to whole tiles (:func:`channels_last`; a negative padding crops);
2. input transform Bᵀ d B (:func:`transform_tiles`): down, one GEMM per band of tile rows
   (a contiguous block of the canvas, no copy); the tiles gathered point-first, copying runs
   of C values; across, one GEMM. V (P, tiles, C), point-major: each point's (tiles, C)
   matrix contiguous, ready for BLAS without a transposing copy;
3. the per-point GEMMs with U (P, C, F), the filters transformed once per call (G g Gᵀ, in
   float64, then cast);
4. output transform Aᵀ M A (:func:`untransform_tiles`): across and down as GEMMs, then the
   tiles copied to a channels-last image (runs of F values) and transposed into y's
   (n, F, OH, OW) with the crop and the bias.

The old whole-batch version (each stage one pass over arrays of 19 MB) took 0.6-1.4x
im2col's time on the 3x3 layers with many channels; this one 0.3-0.45x (docs/winograd.md).

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
  images, V is computed again from x (cheaper than keeping the forward's V, 2.25x the input,
  and reading it back from memory), ``dy``'s tiles are transformed by A, one GEMM per point,
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
from convlab.registry import register_backend
from convlab.profile import phase, shared_among_threads
from convlab.threads import chunk_bounds, share_chunks, single_threaded_blas

# Interpolation points in the order they are taken; the point at infinity is always added.
POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-1, 2), Fraction(2), Fraction(-2),
          Fraction(3, 2), Fraction(-3, 2))
MAX_KERNEL_SIDE = 5
TILES = (2, 3, 4, 5, 6)
DEFAULT_TILE = 4
ENV_TILE = "CONVLAB_WINOGRAD_TILE"
# Bytes of one chunk's transformed input tiles (points x tiles x channels): a chunk of images is
# gathered, transformed, multiplied and transformed back while it is in the L2 cache (1 MiB a
# core on the 2-core AMD EPYC measured).
CHUNK_BYTES = 1 << 19
# The backward's groups of images (see images_per_group): at least this many, for the cores to share.
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
    """Where one pass's tiles lie on a channels-last canvas (n, Hc, Wc, K): tile (i, j),
    i < counts[0], j < counts[1], is the window of (rows, cols) pixels whose first pixel is
    at ``origin`` + ``step`` * (i, j). Neighbouring tiles overlap when the window is larger
    than the step (the input tiles of F(m, r): window m + r - 1, step m)."""

    origin: tuple[int, int]
    window: tuple[int, int]
    step: int
    counts: tuple[int, int]

    @property
    def extent(self) -> tuple[int, int]:
        """The canvas (rows, cols) the tiles reach."""
        return tuple(o + (c - 1) * self.step + w for o, c, w in zip(self.origin, self.counts, self.window))


def correlation_tiling(image, kernel, pads, m, placement) -> tuple[tuple[int, int], Tiling]:
    """The output size (OH, OW) of the stride-1 correlation of an image (H, W) padded by
    ``pads`` ((top, bottom), (left, right), negative crops) with a kernel (r_h, r_w), and
    its F(m, r) input tiles on a canvas where the image's pixel (0, 0) is at ``placement``:
    the padded image starts at placement - (top, left)."""
    out = tuple(size + lo + hi - r + 1 for size, (lo, hi), r in zip(image, pads, kernel))
    origin = tuple(at - lo for at, (lo, _) in zip(placement, pads))
    return out, Tiling(origin, tuple(m + r - 1 for r in kernel), m, tuple(_tile_count(o, m) for o in out))


def images_per_chunk(tiling, channels, itemsize):
    """Images whose transformed tiles, (alpha_h * alpha_w, tiles, ``channels``), fit in
    :data:`CHUNK_BYTES`; but at least ``channels`` / 4 tiles, so that each per-point GEMM,
    (tiles, C) @ (C, F), has rows enough to pay for packing its (C, F) operand: with 256
    channels, 9 tiles ran at half the speed of 72 (21 against 40 GMAC/s, 2-core EPYC)."""
    points, tiles = tiling.window[0] * tiling.window[1], tiling.counts[0] * tiling.counts[1]
    return max(1, CHUNK_BYTES // (points * tiles * channels * itemsize), -(-channels // (4 * tiles)))


def images_per_group(n, per_chunk, tiling, f, c):
    """Images in one group of the backward, which sums dw_hat (P, F, C) over the group's tiles
    with one GEMM per point and adds the groups' sums at the end: each group's sum is written
    and read once more, so a group has at least 2 max(F, C) tiles (the sums then move at most
    half the bytes of the tiles), but at most n / :data:`MIN_GROUPS` images, and at least a
    chunk. It depends on the shapes only, so dw is the same whatever the number of threads."""
    tiles = tiling.counts[0] * tiling.counts[1]
    return max(per_chunk, min(-(-2 * max(f, c) // tiles), -(-n // MIN_GROUPS)))


def channels_last(x, placement, size):
    """x (n, K, H, W) on a zero canvas (n, Hc, Wc, K) of ``size`` (Hc, Wc), its pixel (0, 0)
    at canvas position ``placement`` (negative: that much of x is cut off), cut at the edge.

    Channels last, so that a tile's pixel is a run of K contiguous values (the tiles' gather
    copies whole runs) and a band of canvas rows is one contiguous (rows, Wc * K) matrix (the
    row transform's operand, no copy). When x's channel planes lie a multiple of 4 KiB apart
    (32 x 32 float32 images), the transposing copy reads K streams that fall into the same L1
    cache sets and took 4x longer (2-core EPYC); x then goes through a zero channel-first
    canvas first, whose planes (Hc * Wc) apart do not collide.
    """
    n, k, h, w = x.shape
    (hc, wc), (top, left) = size, placement
    rows, cols = slice(max(0, -top), min(h, hc - top)), slice(max(0, -left), min(w, wc - left))
    at = (slice(max(0, top), max(0, top) + rows.stop - rows.start),
          slice(max(0, left), max(0, left) + cols.stop - cols.start))
    if h * w * x.itemsize % 4096 == 0:
        first = np.zeros((n, k, hc, wc), x.dtype)
        first[:, :, at[0], at[1]] = x[:, :, rows, cols]
        return np.ascontiguousarray(first.transpose(0, 2, 3, 1))
    canvas = np.zeros((n, hc, wc, k), x.dtype)
    canvas[:, at[0], at[1]] = x[:, :, rows, cols].transpose(0, 2, 3, 1)
    return canvas


def transform_tiles(canvas, tiling, left, right):
    """``left`` (alpha_h, window rows) applied down and ``right`` (alpha_w, window cols)
    across every tile: canvas (n, Hc, Wc, K) -> (alpha_w * alpha_h, n * th * tw, K), the
    transform point (b, a) first, then the tile, then the channel.

    That is the layout the per-point GEMMs take ((tiles, K) matrices, contiguous), made by
    two plain GEMMs and one gather, all on a chunk in cache:

    1. Down: the window rows of tile row (n, i) are one contiguous (window, width * K)
       block of the canvas, so ``left`` @ block, batched over (n, i), needs no copy:
       -> (n, th, alpha_h, width, K).
    2. Across: the tiles' columns gathered point-first, (window cols, alpha_h, n, th, tw, K)
       (copying runs of K values), then ``right`` @ that as one (window cols, ...) matrix.

    Separable: alpha (window rows + window cols) multiply-adds per tile and channel, 2 x 6 x 6
    for F(4, 3). One product by kron(Bᵀ, Bᵀ) (36 x 36) on the gathered tiles did 3x the
    work and took 2-3x longer on the EPYC measured.
    """
    (oy, ox), (wh, ww), step, (th, tw) = tiling.origin, tiling.window, tiling.step, tiling.counts
    n, k = canvas.shape[0], canvas.shape[3]
    ah, aw = left.shape[0], right.shape[0]
    width = (tw - 1) * step + ww
    band = canvas[:, oy:, ox:ox + width]
    s = band.strides
    blocks = np.lib.stride_tricks.as_strided(band, (n, th, wh, width * k), (s[0], step * s[1], s[1], s[3]),
                                             writeable=False)
    down = np.matmul(left, blocks)  # (n, th, alpha_h, width * K)
    d = down.strides
    columns = np.lib.stride_tricks.as_strided(down, (ww, ah, n, th, tw, k),
                                              (k * d[3], d[2], d[0], d[1], step * k * d[3], d[3]), writeable=False)
    gathered = np.empty(columns.shape, canvas.dtype)
    np.copyto(gathered, columns)
    return np.matmul(right, gathered.reshape(ww, -1)).reshape(aw * ah, n * th * tw, k)


def untransform_tiles(products, a_t_h, a_t_w, counts, out, bias=None):
    """Aᵀ M A of every tile, written into out (n, F, OH, OW) with the crop, plus ``bias``
    (F,): products (alpha_w * alpha_h, n * th * tw, F), point (b, a) first.

    Across first (one GEMM over all the b rows), then down (one GEMM per output column v),
    giving the tiles (v, u, n, i, j, F). Then two copies: to the channels-last image
    (n, i * m + u, j * m + v, F), moving runs of F values, and from there to out, one
    (pixels, F) -> (F, pixels) transpose per image, with the bias added on the way. One
    copy straight from the tiles to out, moving single values, took twice as long.
    """
    m, aw, ah = a_t_w.shape[0], a_t_w.shape[1], a_t_h.shape[1]
    (th, tw), (n, f, oh, ow) = counts, out.shape
    across = np.matmul(a_t_w, products.reshape(aw, -1))  # (v, alpha_h * tiles * F)
    tiles = np.matmul(a_t_h, across.reshape(m, ah, -1))  # (v, u, tiles * F)
    image = np.empty((n, th, m, tw, m, f), out.dtype)
    np.copyto(image, tiles.reshape(m, m, n, th, tw, f).transpose(2, 3, 1, 4, 0, 5))
    image = image.reshape(n, th * m, tw * m, f)[:, :oh, :ow].transpose(0, 3, 1, 2)
    if bias is None:
        np.copyto(out, image)
    else:
        np.add(image, bias[:, None, None], out=out)


@functools.lru_cache(maxsize=None)
def filter_matrix(m, kernel) -> np.ndarray:
    """G_w ⊗ G_h in float64, read-only (alpha_w * alpha_h, r_h * r_w): row (b, a), column
    (i, j) is G_w[b, j] G_h[a, i], so that G_h g G_wᵀ of every filter is one product."""
    g_h, g_w = transforms(m, kernel[0], np.float64)[1], transforms(m, kernel[1], np.float64)[1]
    matrix = np.einsum("bj,ai->baij", g_w, g_h).reshape(g_w.shape[0] * g_h.shape[0], -1)
    matrix.flags.writeable = False
    return matrix


def filter_transform(w, m):
    """G g Gᵀ of every filter, in float64 then cast: w (F, C, r_h, r_w) -> U (alpha_w * alpha_h, C, F),
    each point's (C, F) contiguous: the right-hand operand of the per-point GEMMs."""
    f, c, rh, rw = w.shape
    taps = w.transpose(2, 3, 1, 0).reshape(rh * rw, c * f).astype(np.float64)  # (r_h * r_w, C * F)
    return (filter_matrix(m, (rh, rw)) @ taps).reshape(-1, c, f).astype(w.dtype)


def correlate_tiles(canvas, tiling, kernel, u, out, bias=None):
    """One chunk of a correlation by F(m x m, r x r): the input tiles of ``canvas`` (n, Hc,
    Wc, C) transformed (Bᵀ d B), one GEMM per point with U (P, C, F), (tiles, C) @ (C, F),
    and the output transform into out (n, F, OH, OW) plus ``bias``."""
    m, dtype = tiling.step, canvas.dtype
    (a_t_h, _, b_t_h), (a_t_w, _, b_t_w) = transforms(m, kernel[0], dtype), transforms(m, kernel[1], dtype)
    with phase("input transform"):
        v = transform_tiles(canvas, tiling, b_t_h, b_t_w)
    with phase("GEMM"):
        products = np.matmul(v, u)  # (P, tiles, F)
    with phase("output transform"):
        untransform_tiles(products, a_t_h, a_t_w, tiling.counts, out, bias)


def forward_pass(x, w, b, padding, m):
    """y (N, F, OH, OW) of x (N, C, H, W), w (F, C, r_h, r_w), bias b (F,) by F(m x m, r x r),
    in chunks of images (:func:`images_per_chunk`) shared among the cores, each chunk taken
    from x to y while in cache: canvas, input transform, GEMMs, output transform and bias."""
    (ph, pw), kernel, (n, c), f = padding, w.shape[2:], x.shape[:2], w.shape[0]
    out, tiling = correlation_tiling(x.shape[2:], kernel, ((ph, ph), (pw, pw)), m, placement=(ph, pw))
    u = filter_transform(w, m)
    y = np.empty((n, f) + out, x.dtype)

    def chunk(_, lo, hi):
        with phase("canvas"):
            canvas = channels_last(x[lo:hi], (ph, pw), tiling.extent)
        correlate_tiles(canvas, tiling, kernel, u, y[lo:hi], b)

    with shared_among_threads():
        share_chunks(chunk, chunk_bounds(n, images_per_chunk(tiling, max(c, f), x.itemsize)))
    return y


def backward_pass(dy, x, w, padding, m, need_dx=True):
    """(dx, dw) for dy (N, F, OH, OW) of the forward of x (N, C, H, W), w (F, C, r_h, r_w).

    In groups of images shared among the cores. A group's input tiles are transformed again
    (V, as in the forward: recomputing costs less than keeping the forward's V, 2.25x the
    input, and reading it back), and so are dy's m x m tiles, by A on each axis; then one
    GEMM per point, (F, tiles) @ (tiles, C), sums dw_hat over the group's tiles. The groups'
    (P, F, C) sums are added in group order at the end (:func:`images_per_group`), then Gᵀ (.) G.
    ``dx``, per chunk of the group, is the correlation of dy's canvas with the flipped,
    channel-swapped kernel: the forward's algorithm.
    """
    (ph, pw), (n, c), (f, _, kh, kw), dtype = padding, x.shape[:2], w.shape, dy.dtype
    _, x_tiling = correlation_tiling(x.shape[2:], (kh, kw), ((ph, ph), (pw, pw)), m, placement=(ph, pw))
    # dy's canvas serves two tilings: dw's m x m tiles of dy, and dx's input tiles (dx is the
    # correlation of dy padded by q = r - 1 - p, negative q cropping, with the flipped kernel).
    q = (kh - 1 - ph, kw - 1 - pw)
    placement = (max(q[0], 0), max(q[1], 0))
    dy_tiling = Tiling(placement, (m, m), m, x_tiling.counts)
    _, dx_tiling = correlation_tiling(dy.shape[2:], (kh, kw), ((q[0], q[0]), (q[1], q[1])), m, placement)
    extent = tuple(map(max, dy_tiling.extent, dx_tiling.extent)) if need_dx else dy_tiling.extent
    u_dx = filter_transform(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), m) if need_dx else None
    (a_t_h, _, b_t_h), (a_t_w, _, b_t_w) = transforms(m, kh, dtype), transforms(m, kw, dtype)
    per = images_per_chunk(x_tiling, max(c, f), dtype.itemsize)
    groups = chunk_bounds(n, images_per_group(n, per, x_tiling, f, c))
    points = (m + kw - 1) * (m + kh - 1)
    parts = np.empty((len(groups), points, f, c), dtype)
    dx = np.empty(x.shape, dtype) if need_dx else None

    def group(index, lo, hi):
        with phase("canvas"):
            canvas = channels_last(x[lo:hi], (ph, pw), x_tiling.extent)
            dy_canvas = channels_last(dy[lo:hi], placement, extent)
        with phase("input transform"):
            v = transform_tiles(canvas, x_tiling, b_t_h, b_t_w)  # (P, tiles, C)
            dy_hat = transform_tiles(dy_canvas, dy_tiling, a_t_h.T, a_t_w.T)  # (P, tiles, F)
        with phase("GEMM dw"):
            np.matmul(dy_hat.transpose(0, 2, 1), v, out=parts[index])
        if need_dx:
            for a, b in chunk_bounds(hi - lo, per):
                correlate_tiles(dy_canvas[a:b], dx_tiling, (kh, kw), u_dx, dx[lo + a:lo + b])

    with shared_among_threads():
        share_chunks(group, groups)
    with phase("dw transform"):
        dw_hat = np.empty((points, f, c), dtype)  # the parts added in group order, the points shared
        share_chunks(lambda _, lo, hi: np.sum(parts[:, lo:hi], axis=0, out=dw_hat[lo:hi]), chunk_bounds(points, 1))
        dw = filter_matrix(m, (kh, kw)).T @ dw_hat.reshape(points, -1).astype(np.float64)  # (r_h * r_w, F * C)
    return dx, dw.T.reshape(w.shape).astype(dtype)


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
        # BLAS on the calling thread only, also outside the shared chunks (the filter
        # transform): a threaded BLAS call leaves BLAS's threads spinning for a while on the
        # core the chunks' second thread needs.
        m = settings().tile
        with single_threaded_blas():
            return forward_pass(x, w, b, padding, m), (x, w, padding, m)

    def backward(self, dy, cache, need_dx=True):
        x, w, padding, m = cache
        with single_threaded_blas():
            dx, dw = backward_pass(dy, x, w, padding, m, need_dx)
        return dx, dw, dy.sum(axis=(0, 2, 3))
