"""``fft-tiled``: overlap-save FFT convolution on small T x T tiles, forward and backward.

``fft`` transforms every whole padded image: on a 224 x 224 input its grids are 256 x 256
(k = 7) for each of N*C (and N*F) planes, and it keeps all their spectra. Here, as in NNPACK's ``ft8x8`` /
``ft16x16`` and cuDNN's ``FFT_TILING``, the stride-1 output (Ho, Wo) is cut into blocks of
M = T - k + 1 rows (and Mw = T - kw + 1 columns); the input window of each block is a
T x T tile, and tiles overlap by k - 1 (overlap-save). One axis shown, circular
convolution on the T grid, ``*`` the complex conjugate, w unflipped at [0, k)::

    tile t of x (padded), T values from t*M  ->  X      forward  y[t*M + i] = irfft(X W*)[i],    i < M
    tile t of dy, M values at [0, M)         ->  D      weights  dw[u] = sum_t irfft(D* X)[u],   u < k
                                                        input    dx[t*M + j] += irfft(D W)[j],   j < T

The forward is a correlation whose M valid outputs never wrap; dw sums the same
correlation over all tiles and images *in the frequency domain* (one inverse per (F, C)
plane at the end); dx is overlap-add: each dy tile's full convolution (T = M + k - 1
values) is added where it lands, tiles of one phase at a time so that no two threads add
to the same place. The sums over channels are complex matrix products per frequency bin: ``Y = X W*``
(tiles, C) @ (C, F), ``dX = D W`` (tiles, F) @ (F, C), and ``dW = irfft(D^H X)`` from
(C, tiles) @ (tiles, F) summed over blocks of tiles. FFTW writes (and reads) the spectra
bin-major, (bins, tiles, channels), so each product is one batched matmul with no
transposing copy, done in real arithmetic on the spectra viewed as interleaved floats
(:func:`as_real`, :func:`real_form`; no conjugate is ever copied). The kernel spectra W
(F, C, bins, scaled by 1/T^2) and the tiles' spectra X are computed once per forward and
kept for the backward, X in the order the backward reads it (:class:`Tiling`); dy is
transformed once, and its zero-frequency bins give db.

Work runs in blocks of tile rows (all tiles of rows t of some images) of about an L2
cache's worth (:func:`convlab.fftw.rows_per_tile`), each block's gather, transform,
products, inverse and scatter back to back, the blocks shared among threads
(:func:`convlab.fftw.run_tiles`): memory beyond the results and the kept spectra is a few
blocks, whatever the image size. dw's and db's sums over blocks are added in block order
(:class:`SumInOrder`), whichever thread ran which block.

The tile size T is one of :data:`TILE_SIZES` >= the kernel, chosen per shape by
:func:`estimated_cost` (see :func:`tile_size_for`), or fixed by the ``tile`` attribute
of the registered instance or the ``CONVLAB_FFT_TILE`` environment variable. Plans,
threads, planner and wisdom are ``fft``'s (:mod:`convlab.fftw`).

Stride 1 only: a strided output would still need every stride-1 tile, so strided problems
are refused (``convlab.Unsupported``) rather than computed slowly; ``fft`` takes them.
Outputs over an input window of zeros are exactly the bias (:func:`convlab.exact.snap_to_bias`).
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

from convlab import fftw
from convlab.checks import int_choice
from convlab.exact import snap_to_bias, zero_windows
from convlab.fftw import cost_per_point, rows_per_tile, run_tiles
from convlab.threads import chunk_bounds
from convlab.profile import phase
from convlab.registry import register_backend

TILE_SIZES = (8, 16, 32, 64, 128)
ENV_TILE = "CONVLAB_FFT_TILE"
# Grid points of a block of tile rows (see block_rows): about an L2 cache's worth.
BLOCK_POINTS = fftw.TILE_POINTS
# Nanoseconds in estimated_cost (one thread, 2-core AMD EPYC Zen 4, FFTW 3.3.5), from
# per-phase timings of the big-image shapes (benchmarks/fft_tiled_phases.py): a point of a
# tile transform (r2c or c2r, batched, bin-major spectra) costs TRANSFORM_NS times
# cost_per_point, times 1 + points / CACHE_POINTS as the planes outgrow the L1 cache (about
# 1.1 ns a point at 32 x 32, 1.4 at 64 x 64); a real multiply-add of the per-bin products
# MAC_NS; each of the three per-bin matmuls BIN_CALL_NS per bin and block (numpy's batched
# matmul pays per matrix: these are a few tiles by 2C or 2F), and each float of dw's
# per-block partial sum PARTIAL_ADD_NS to add; each contiguous run (one tile's row) that a
# gather, paste or overlap-add copies RUN_NS beyond its bytes.
TRANSFORM_NS = 1.1
CACHE_POINTS = 16384
MAC_NS = 0.05
BIN_CALL_NS = 40.0
PARTIAL_ADD_NS = 0.5
RUN_NS = 10.0
# The longest tile side the cost model may choose (see tile_size_for).
MAX_AUTO_SIDE = 64


def block_rows(across, c, f, tile) -> int:
    """Tile rows (``across`` tiles of (Th, Tw) each) per block of work: about
    :data:`BLOCK_POINTS` grid points of the larger side's planes. (Blocks of twice that
    were 7-22 % slower with 3 -> 16 channels on 224 x 224, and within the noise, -5 to
    +18 %, with 16 -> 16 on 128 x 128; one thread, interleaved, shared machine.)"""
    return rows_per_tile(across * max(c, f), tile, BLOCK_POINTS)


def tile_setting(value, source) -> int | None:
    """A tile size from the user: one of :data:`TILE_SIZES`, or ``None``/``"auto"`` (by cost)."""
    if value is None or str(value).strip().lower() in ("", "auto"):
        return None
    return int_choice(value, TILE_SIZES, source, "fft-tiled's tile size, or auto")


def estimated_cost(tile, out_shape, kernel, c, f) -> float:
    """Estimated nanoseconds of a forward+backward of one image with (C, F) channels on tiles
    of (Th, Tw) = ``tile`` (see the constants above): 2 (C + F) transforms and three per-bin
    products of C x F per tile, per-bin call overheads and dw's partial sums per block, and
    the runs copied in and out of the tiles."""
    th, tw = tile
    rows, across = (math.ceil(o / (t - k + 1)) for o, t, k in zip(out_shape, tile, kernel))
    tiles, points, bins = rows * across, th * tw, th * (tw // 2 + 1)
    per_point = (cost_per_point(th) + cost_per_point(tw)) / 2 * (1 + points / CACHE_POINTS)
    transforms = tiles * 2 * (c + f) * points * per_point * TRANSFORM_NS
    products = tiles * bins * 12 * c * f * MAC_NS
    blocks = rows / block_rows(across, c, f, tile)
    per_block = blocks * bins * (3 * BIN_CALL_NS + 4 * c * f * PARTIAL_ADD_NS)
    runs = (2 * f * out_shape[0] + 2 * c * rows * th) * across  # y, dy; x, dx
    return transforms + products + per_block + runs * RUN_NS


def tile_size_for(out_shape, kernel, c, f, forced=None) -> tuple[int, int]:
    """(Th, Tw): ``forced`` x ``forced`` if given, else the pair of :data:`TILE_SIZES` that
    holds the kernel, Th >= Tw, of least :func:`estimated_cost`.

    Why not wider than tall: FFTW's batched bin-major 32 x 64 transforms took 15-30 % longer
    a point than 64 x 32 ones, and fft-tiled on 32 x 64 tiles was slower than on 64 x 32
    in three of four interleaved runs on 224 x 224 (k = 7, 11), though it copies half as
    many runs. Why at most :data:`MAX_AUTO_SIDE` (unless the kernel needs more): a block
    holds at least one tile row, so memory grows with the tile; 128 x 32 tiles, as fast as
    64 x 32 on 224 x 224 k = 11, took 0.29 of ``fft``'s memory there (64 x 32: 0.21)."""
    if forced is not None:
        return forced, forced
    fits = [(th, tw) for th in TILE_SIZES for tw in TILE_SIZES if tw <= th and th >= kernel[0] and tw >= kernel[1]]
    small = [tile for tile in fits if tile[0] <= MAX_AUTO_SIDE]
    return min(small or fits, key=lambda tile: estimated_cost(tile, out_shape, kernel, c, f))


def cut_tiles(tiles, src, top, left, step):
    """Fill a row of tiles (count, C, Th, Tw) with the windows of ``src`` (C, H, W) at
    (top, left + j * step), zero where a window leaves ``src`` (padding, or past the last
    tile): one strided copy for the tiles wholly inside ``src``'s columns, a window each for
    the few at its edges.

    Why: cut through a zero-padded copy of the band (as before), each value was written
    three times (the zeros, the band, the tile); this writes it once. Per tile row of 16
    channels, 32 x 32 tiles: 33 against 37 us; with 3 channels, 64 x 32 tiles, the same
    (numpy's copies of 32-value runs cost about the same whatever the rest; one thread,
    2-core AMD EPYC)."""
    count, _, th, tw = tiles.shape
    _, height, width = src.shape
    r0, r1 = max(top, 0), min(top + th, height)
    if r0 >= r1:
        tiles[...] = 0
        return
    tiles[:, :, :r0 - top] = 0
    tiles[:, :, r1 - top:] = 0
    rows, inside = src[:, r0:r1], tiles[:, :, r0 - top:r1 - top]
    first = min(count, max(0, -(left // step)))               # tiles j >= first start at column >= 0
    last = max(first, min(count, (width - tw - left) // step + 1))  # and those < last end inside
    if first < last:
        s0, s1, s2 = rows.strides
        start = left + first * step
        inside[first:last] = as_strided(rows[:, :, start:], (last - first, rows.shape[0], r1 - r0, tw),
                                        (step * s2, s0, s1, s2))
    for j in (*range(first), *range(last, count)):
        col = left + j * step
        c0, c1 = max(col, 0), min(col + tw, width)
        inside[j] = 0
        if c0 < c1:
            inside[j, :, :, c0 - col:c1 - col] = rows[:, :, c0:c1]


class Tiling:
    """Where the tiles of one problem lie: tiles of (Th, Tw) = ``tile``, each with ``m``
    (rows, cols) outputs, ``count`` (rows, cols) of them per image, covering the stride-1
    output ``out`` (Ho, Wo) of a ``padding``-padded input, for ``n`` images of C channels
    into F, ``channels`` (C, F); handled in blocks of at most ``per_block`` tile rows (see
    :func:`block_rows`).

    Tile rows (all tiles at one height of one image) are numbered ``image * count[0] +
    row`` and handled in ``order``: grouped by overlap-add phase (row mod ``phases``, see
    :meth:`FFTTiled.backward`), ``phase_bounds`` (start, end) in that order, in blocks
    (:meth:`run`)."""

    def __init__(self, tile, kernel, out, padding, n, channels):
        self.tile, self.kernel, self.out, self.padding = tile, kernel, out, padding
        self.m = tuple(t - k + 1 for t, k in zip(tile, kernel))
        self.count = tuple(math.ceil(o / m) for o, m in zip(out, self.m))
        self.per_block = block_rows(self.count[1], *channels, tile)
        self.bins = tile[0] * (tile[1] // 2 + 1)
        phases = math.ceil(tile[0] / self.m[0])  # tile rows this far apart never overlap
        rows = np.arange(n * self.count[0])
        groups = [rows[(rows % self.count[0]) % phases == phase] for phase in range(phases)]
        self.order = np.concatenate(groups)
        ends = np.cumsum([len(group) for group in groups])
        self.phase_bounds = [(int(end) - len(group), int(end)) for end, group in zip(ends, groups) if len(group)]

    def run(self, work, phased=True):
        """``work(number, lo, hi, slot)`` for the blocks of at most ``per_block`` tile rows
        ``order[lo:hi]`` (each phase's rows cut in turn), numbered from 0 in order, shared
        among threads (:func:`convlab.fftw.run_tiles`): with ``phased`` (the backward's
        overlap-add) the blocks of one phase together, the phases one after another; else
        all at once (the forward: no two blocks write to the same place, so one wait at the
        end instead of one a phase). The forward and the backward cut the same blocks, so
        the backward finds the forward's spectra of its block under the block's number."""
        phases = [[(start + lo, start + hi) for lo, hi in chunk_bounds(end - start, self.per_block)]
                  for start, end in self.phase_bounds]
        first = 0
        for group in phases if phased else [sum(phases, [])]:
            run_tiles(lambda index, _lo, _hi, slot, first=first, group=group:
                      work(first + index, *group[index], slot), len(group), 1)
            first += len(group)

    def places(self, lo, hi):
        """(i, image, first output row) of the tile rows ``order[lo:hi]``, i counted from 0."""
        return [(i, int(row) // self.count[0], int(row) % self.count[0] * self.m[0])
                for i, row in enumerate(self.order[lo:hi])]


def as_real(spectra):
    """Complex (..., K) spectra as real (..., 2K): each value's real and imaginary part side
    by side, a view."""
    return spectra.view(np.finfo(spectra.dtype).dtype)


def real_form(matrices, conjugate=False):
    """Complex (bins, K, J) matrices w (their conjugates with ``conjugate``) as real
    (bins, 2K, 2J) ones r, such that ``as_real(x) @ r == as_real(x @ w)`` for complex x
    (bins, I, K): each value a + ib becomes the block [[a, b], [-b, a]], whose rows are the
    pairs (a, b) = w and (-b, a) = i w, so two complex writes form it.

    Why: numpy's batched matmul of these small complex matrices (one per bin, a few tiles
    by 3..16 channels) was 2-4x slower than the real one with twice the sides, the same
    multiply-adds (2-core AMD EPYC, one thread)."""
    bins, k, j = matrices.shape
    real = np.empty((bins, k, 2, j, 2), np.finfo(matrices.dtype).dtype)
    pairs = real.view(matrices.dtype)[..., 0]  # (bins, K, 2, J): the rows (a, b) and (-b, a)
    if conjugate:
        np.conjugate(matrices, out=pairs[:, :, 0])
    else:
        pairs[:, :, 0] = matrices
    np.multiply(pairs[:, :, 0], 1j, out=pairs[:, :, 1])
    return real.reshape(bins, 2 * k, 2 * j)


@register_backend("fft-tiled")
class FFTTiled:
    """Overlap-save FFT convolution on small T x T tiles (pyfftw), forward and backward."""

    limits = f"stride 1; kernels up to {TILE_SIZES[-1]}x{TILE_SIZES[-1]} (tiles {', '.join(map(str, TILE_SIZES))})"

    def __init__(self, tile=None):
        self.tile = tile  # None: CONVLAB_FFT_TILE, else chosen per shape by cost

    def forced_tile(self) -> int | None:
        if self.tile is not None:
            return tile_setting(self.tile, "fft-tiled's tile")
        return tile_setting(os.environ.get(ENV_TILE), ENV_TILE)

    def check_settings(self):
        fftw.settings()  # CONVLAB_FFT_THREADS, _PLANNER, _WISDOM
        self.forced_tile()  # CONVLAB_FFT_TILE

    def own_threads(self):
        return fftw.own_threads()

    def supports(self, x_shape, w_shape, stride, padding):
        if stride != (1, 1):
            return (f"stride {stride[0]}x{stride[1]} (stride 1 only: every stride-1 tile would still be "
                    f"computed)")
        try:
            largest = self.forced_tile() or TILE_SIZES[-1]
        except ValueError:  # a bad CONVLAB_FFT_TILE: check_settings' (and the forward's) to report,
            largest = TILE_SIZES[-1]  # not every other backend's refusal that lists who can
        if max(w_shape[2:]) > largest:
            return (f"a {w_shape[2]}x{w_shape[3]} kernel (kernels up to {largest}x{largest}, "
                    f"the {'tile size set' if largest != TILE_SIZES[-1] else 'largest tile'})")
        return None

    def tiling(self, x_shape, w_shape, padding) -> Tiling:
        c, h, width = x_shape[1:]
        f, _, kh, kw = w_shape
        out = (h + 2 * padding[0] - kh + 1, width + 2 * padding[1] - kw + 1)
        tile = tile_size_for(out, (kh, kw), c, f, self.forced_tile())
        return Tiling(tile, (kh, kw), out, padding, x_shape[0], (c, f))

    def forward(self, x, w, b, stride, padding):
        return self.tiled_pass(x, w, b, padding, keep=True)

    def inference(self, x, w, b, stride, padding):
        """The forward keeping nothing: x's tile spectra (N * tiles * C * bins, 40 MB on
        16 x 16 -> 16 at 128^2) stay in each block's plan buffer, in cache, instead of being
        written out to memory for dw. 0.95 (that shape, k 9) and 0.88 (8 x 3 -> 16 at 224^2,
        k 7) of the forward's time (median ratio of 12 alternating calls, 2-core AMD EPYC)."""
        return self.tiled_pass(x, w, b, padding, keep=False)

    def tiled_pass(self, x, w, b, padding, keep):
        """The forward: y, and with ``keep`` the cache for the backward (else y alone)."""
        n, c = x.shape[:2]
        f, _, kh, kw = w.shape
        tiling = self.tiling(x.shape, w.shape, padding)
        grid, (mh, mw), (_, cw), (oh, ow) = tiling.tile, tiling.m, tiling.count, tiling.out
        (th, tw), (ph, pw) = grid, padding
        bins = tiling.bins
        # Kernel spectra with the inverse transform's 1/(Th Tw), in real form (see real_form):
        # W* as (C, F) per bin for the forward, W as (F, C) kept for dx.
        with phase("kernel spectra"):
            w_spec = fftw.rfft2(w, slice(0, kh), slice(0, kw), grid)                     # (F, C, bins)
            w_spec *= 1.0 / (th * tw)
            w_forward = real_form(w_spec.transpose(2, 1, 0), conjugate=True)             # (bins, 2C, 2F)
        x_spec = {}  # block number -> its tiles' spectra (bins, rows, cw * C), kept for dw
        y = np.empty((n, f, oh, ow), x.dtype)

        def block(number, lo, hi, slot):
            # x's plans share their buffers with dx's, y's with dy's (a pair): half the memory.
            plan = fftw.plan("FFTW_FORWARD", (hi - lo, cw * c), grid, x.dtype, slot, bins_first=True, pair="x")
            plan.region = None  # every place is written
            tiles = plan.input.reshape(hi - lo, cw, c, th, tw)
            with phase("x tiles"):
                for i, image, top in tiling.places(lo, hi):
                    cut_tiles(tiles[i], x[image], top - ph, -pw, mw)
            with phase("x FFTs"):
                if keep:  # written straight into the spectra kept for dw
                    kept = x_spec[number] = plan.empty_bins()
                    plan.execute_into(kept)
                else:
                    plan.execute()
                    kept = plan.bins
            inverse = fftw.plan("FFTW_BACKWARD", (hi - lo, cw * f), grid, x.dtype, slot, bins_first=True, pair="y")
            products = inverse.bins.reshape(bins, -1, f)                               # (bins, tiles, F)
            with phase("y products"):
                np.matmul(as_real(kept.reshape(bins, -1, c)), w_forward, out=as_real(products))
                products[0] += b  # the bias, through the zero-frequency bin
            with phase("y inverse FFTs"):
                inverse.execute()
            outputs = inverse.fftw.output_array.reshape(hi - lo, cw, f, th, tw)
            with phase("y paste"):
                for i, image, top in tiling.places(lo, hi):
                    paste_corners(y[image, :, top:top + mh], outputs[i], mw)

        tiling.run(block, phased=False)
        with phase("exact bias"):
            snap_to_bias(y, b, zero_windows(x, (kh, kw), padding))  # exact where a direct method is
        if not keep:
            return y
        with phase("kernel spectra"):
            w_dx = real_form(w_spec.transpose(2, 0, 1))                                   # (bins, 2F, 2C)
        return y, (x_spec, w_dx, tiling, x.shape)

    def backward(self, dy, cache, need_dx=True):
        x_spec, w_dx, tiling, x_shape = cache
        c, f = x_shape[1], dy.shape[1]
        grid, mh, cw, (kh, kw) = tiling.tile, tiling.m[0], tiling.count[1], tiling.kernel
        (th, tw), (ph, pw) = grid, tiling.padding
        bins = tiling.bins
        with phase("dx zeros"):
            dx = np.zeros(x_shape, dy.dtype) if need_dx else None
        # The sum over blocks of as_real(X)^T as_real(D) (bins, 2C, 2F): every product of a
        # real or imaginary part of X with one of D, summed over tiles; D^H X from it below.
        # (This operand order ran twice as fast as D's transposed first.)
        dw_sum = SumInOrder()
        db_sum = SumInOrder()  # of the dy tiles' zero-frequency bins (their sums) over the blocks

        def block(part, lo, hi, slot):
            plan = fftw.plan("FFTW_FORWARD", (hi - lo, cw * f), grid, dy.dtype, slot, bins_first=True, pair="y")
            region = ("dy tiles", tiling.m, tiling.out[1])
            if plan.region != region:  # only [0, M) x [0, Mw) of each tile is written (see cut_into_corners)
                plan.input.fill(0)
                plan.region = region
            tiles = plan.input.reshape(hi - lo, cw, f, th, tw)
            with phase("dy tiles"):
                for i, image, top in tiling.places(lo, hi):
                    # Read in one stream first: cut straight from dy (out of cache), its
                    # scattered short runs were read at a third of the speed.
                    cut_into_corners(tiles[i], np.array(dy[image, :, top:top + mh]), tiling.m)
            with phase("dy FFTs"):
                plan.execute()
            with phase("db"):
                db_sum.add(part, plan.bins[0].real.reshape(-1, f).sum(axis=0, dtype=np.float64))
            d_spec = as_real(plan.bins.reshape(bins, -1, f))                          # (bins, tiles, 2F)
            x_block = as_real(x_spec[part].reshape(bins, -1, c))                      # (bins, tiles, 2C), a view
            with phase("dw products"):
                dw_sum.add(part, np.matmul(x_block.transpose(0, 2, 1), d_spec))            # (bins, 2C, 2F)
            if not need_dx:
                return
            inverse = fftw.plan("FFTW_BACKWARD", (hi - lo, cw * c), grid, dy.dtype, slot, bins_first=True, pair="x")
            with phase("dx products"):
                np.matmul(d_spec, w_dx, out=as_real(inverse.bins.reshape(bins, -1, c)))   # D W: (bins, tiles, 2C)
            with phase("dx inverse FFTs"):
                inverse.execute()
            full = inverse.fftw.output_array.reshape(hi - lo, cw, c, th, tw)
            with phase("dx overlap-add"):
                for i, image, top in tiling.places(lo, hi):
                    add_tiles(dx[image], full[i], top - ph, -pw, tiling.m[1])

        # Overlap-add: tile rows less than T apart overlap, so the rows of one phase run
        # together, and the phases one after another (the forward's blocks).
        tiling.run(block)
        # dw = irfft(D^H X summed)[:kh, :kw] (F, C, kh, kw), one inverse per plane; from the
        # real parts' products, D^H X = (Xr Dr + Xi Di) + i (Xi Dr - Xr Di).
        with phase("dw inverse"):
            parts = dw_sum.total.reshape(bins, c, 2, f, 2).transpose(3, 1, 0, 2, 4)       # (F, C, bins, 2, 2)
            plan = fftw.plan("FFTW_BACKWARD", (f, c), grid, dy.dtype)
            spectra = plan.input.reshape(f, c, bins)
            scale = 1.0 / (th * tw)
            spectra.real = (parts[..., 0, 0] + parts[..., 1, 1]) * scale
            spectra.imag = (parts[..., 1, 0] - parts[..., 0, 1]) * scale
            plan.fftw.execute()
            dw = plan.fftw.output_array[:, :, :kh, :kw].copy()
        db = db_sum.total.astype(dy.dtype)
        return dx, dw, db


class SumInOrder:
    """The sum of parts numbered 0, 1, 2, ..., added in that order whichever thread hands
    one in first, so that it is the same on every run: a part that arrives early waits
    (memory: about one part per thread) until those before it are added."""

    def __init__(self):
        self.total = None
        self.expected = 0  # the number of the next part to add
        self.early = {}    # number -> a part handed in before its turn
        self.lock = threading.Lock()

    def add(self, number, part):
        with self.lock:
            self.early[number] = part
            while self.expected in self.early:
                part = self.early.pop(self.expected)
                if self.total is None:
                    self.total = part
                else:
                    self.total += part
                self.expected += 1


def cut_into_corners(tiles, band, m):
    """Write a band of dy (F, rows <= Mh, W) into the (Mh, Mw) corners of a row of tiles
    (count, F, T, T), ``Mw`` columns to a tile, rows past the band zeroed: one strided copy
    for the whole tiles, one for a last part-tile. The last tile's columns past W are never
    written, so they keep the zeros they were planned with."""
    (mh, mw), (f, rows, width) = m, band.shape
    whole = width // mw
    if whole:
        tiles[:whole, :, :rows, :mw] = band[:, :, :whole * mw].reshape(f, rows, whole, mw).transpose(2, 0, 1, 3)
    if width > whole * mw:
        tiles[whole, :, :rows, :width - whole * mw] = band[:, :, whole * mw:]
    if rows < mh:
        tiles[:, :, rows:mh, :mw] = 0


def paste_corners(band, tiles, mw):
    """The reverse of :func:`cut_into_corners`: ``band`` (F, rows <= Mh, W) of y gets the
    (rows, Mw) corners of a row of tiles (count, F, T, T) side by side, cut at W."""
    f, rows, width = band.shape
    whole = width // mw
    if whole:
        band[:, :, :whole * mw].reshape(f, rows, whole, mw)[...] = tiles[:whole, :, :rows, :mw].transpose(1, 2, 0, 3)
    if width > whole * mw:
        band[:, :, whole * mw:] = tiles[whole, :, :rows, :width - whole * mw]


def add_tiles(dst, tiles, top, left, step):
    """Overlap-add a row of tiles (count, C, Th, Tw) into ``dst`` (C, H, W): tile j at
    (top, left + j * step), the parts outside ``dst`` dropped."""
    _, height, width = dst.shape
    th, tw = tiles.shape[-2:]
    r0, r1 = max(top, 0), min(top + th, height)
    if r0 >= r1:
        return
    for j, tile in enumerate(tiles):
        col = left + j * step
        c0, c1 = max(col, 0), min(col + tw, width)
        if c0 < c1:
            dst[:, r0:r1, c0:c1] += tile[:, r0 - top:r1 - top, c0 - col:c1 - col]
