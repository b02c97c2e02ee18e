"""FFTW machinery shared by the FFT backends (``fft``, ``fft-tiled``): one plan cache,
one set of settings, one wisdom file.

- :func:`configure` / :func:`settings`: FFTW threads, planner effort and the wisdom file
  (environment variables ``CONVLAB_FFT_THREADS``, ``CONVLAB_FFT_PLANNER``,
  ``CONVLAB_FFT_WISDOM``), the same for every FFT backend.
- :func:`plan`: an FFTW plan (with its own aligned buffers) per (direction, batch shape,
  FFT shape, dtype, slot for a tile's plan or Python thread for a whole transform's, spectra
  bin-major or not, and the pair of plans sharing buffers), the :data:`MAX_PLANS` most
  recently used of each owner kept: no two threads ever use one plan's buffers at once.
- :func:`run_tiles`: cache-sized tiles of work shared among threads
  (:func:`convlab.threads.share_chunks`), each running tile with plans no other uses.
- :func:`binwise_matmul`: the per-frequency-bin complex matrix products that sum over
  channels (and, for weight gradients, over the batch).
- :func:`cost_per_point`: a fitted model of FFTW's time per point for a length, which the
  backends use to choose their FFT sizes.

Importing this module imports pyfftw, with FFTW's OpenMP threads told to sleep when idle
(see :func:`_import_pyfftw_with_passive_threads`). The core never imports it by itself:
only the FFT backends do.
"""

from __future__ import annotations

import contextlib
import heapq
import importlib
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convlab.cachefile import read_cache, update_cache, warn_once
from convlab.factored import FactoredGradient
from convlab.files import user_cache_dir
from convlab.profile import phase, shared_among_threads
from convlab.relu import relu_gradient_block
from convlab.threads import chunk_bounds, share_chunks, worker_count


def _import_pyfftw_with_passive_threads():
    """``import pyfftw``, its OpenMP runtime told to let idle threads sleep.

    FFTW's threads are OpenMP threads (pyfftw's wheels bundle libgomp). At libgomp's
    default, each one spins for milliseconds after every transform, holding a core that
    numpy and BLAS then wait for: a training step of the reference network took a quarter
    longer. The runtime reads its settings once, when pyfftw loads it, so the setting is
    made for that moment only (the environment is left as it was), and not at all if the
    user chose a policy or pyfftw was loaded before.
    """
    chosen = {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & os.environ.keys()
    if chosen or "pyfftw" in sys.modules:
        return importlib.import_module("pyfftw")
    os.environ["OMP_WAIT_POLICY"] = "passive"
    try:
        return importlib.import_module("pyfftw")
    finally:
        del os.environ["OMP_WAIT_POLICY"]


pyfftw = _import_pyfftw_with_passive_threads()

PLANNERS = ("estimate", "measure", "patient", "exhaustive")
DEFAULT_PLANNER = "measure"
ENV_THREADS, ENV_PLANNER, ENV_WISDOM = "CONVLAB_FFT_THREADS", "CONVLAB_FFT_PLANNER", "CONVLAB_FFT_WISDOM"
WISDOM_KIND = "FFTW wisdom file"
WISDOM_OFF = "off"
MIN_POINTS_PER_THREAD = 1 << 16
MIN_POINTS_TO_MEASURE = 1 << 14
COPY_BLOCK_BYTES = 1 << 16
# Operands and products of the per-bin matmuls handed to one thread at a time: small
# problems stay one block (run in the calling thread, see convlab.threads), big ones are
# shared. 144 bins of 64 x 64 complex products, the matmuls alone: 1.95 ms in 4 blocks,
# 3.8 ms in 2 (which share_chunks runs in one thread), 2.1 ms in 18; binwise_matmul with its
# bin-major copies, 7 blocks: 7.05 against 7.79 ms (2-core AMD EPYC, BLAS on one thread).
MATMUL_BLOCK_BYTES = 1 << 21
# A training run uses 8-12 plans (training, last and evaluation batch sizes); a sweep of
# `convlab bench` many more, each with its own buffers. Kept per owner (the tiles' slot
# plans, and each Python thread's whole-transform plans), so that threads convolving at once
# do not evict each other's plans at every call (4 threads on 3 problems rebuilt 627 plans in
# 10 rounds with one shared budget); at most MAX_OWNERS owners' worth in all, the least
# recently used dropped first (a finished thread's plans, say).
MAX_PLANS = 32
MAX_OWNERS = 4
# Per-bin products with a dimension this small are faster broadcast than matmul'd (at 3,
# on the 28 x 28 shapes, both ways take the same time).
BROADCAST_MAX_DIM = 3
# Grid points per tile of transforms (see run_tiles, rows_per_tile): about an L2 cache's worth.
TILE_POINTS = 1 << 18
# The same for tiles whose spectra FFTW writes bin-major (rfft2's bins_first), each bin's
# values scattered over the tile's planes: smaller tiles keep those writes in cache. Reference
# network, fft training steps (wall, medians of 8 alternating blocks in one process, 2-core
# AMD EPYC, 2 threads): 2^16 10.8, 2^17 10.5, 2^18 11.5 ms, plane-major spectra 12.0 ms;
# on one thread 16.8, 16.4, 18.6 and 18.7 ms.
BINS_FIRST_TILE_POINTS = 1 << 17


@dataclass(frozen=True)
class Settings:
    """FFTW settings: ``threads`` >= 1, ``planner`` one of :data:`PLANNERS`, and the
    wisdom file (``None``: no wisdom file is read or written)."""

    threads: int
    planner: str
    wisdom_path: Path | None


def default_wisdom_path() -> Path:
    """``$XDG_CACHE_HOME/convlab/`` (else ``~/.cache/convlab/``) ``fftw-wisdom-<version>.json``."""
    return user_cache_dir() / f"fftw-wisdom-{pyfftw.fftw_version}.json"


def _threads(value, source) -> int:
    try:
        threads = int(value)
        valid = threads >= 1 and not isinstance(value, (bool, float))
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"{source} must be a positive integer (FFTW threads, e.g. {os.cpu_count()}), got {value!r}")
    return threads


def _planner(value, source) -> str:
    planner = str(value).strip().lower().removeprefix("fftw_")
    if planner not in PLANNERS:
        raise ValueError(f"{source} must be one of {', '.join(PLANNERS)} (FFTW planner effort), got {value!r}")
    return planner


def _wisdom_path(value, source) -> Path | None:
    # Anything but a str path (an int, bytes, a bool) would reach Path(), whose TypeError
    # names neither the setting nor what it takes.
    if not isinstance(value, (str, os.PathLike)) or not isinstance(os.fspath(value), str):
        raise ValueError(f"{source} must be a file path (a str or pathlib.Path; the FFTW wisdom cache), "
                         f"or \"{WISDOM_OFF}\" for none, got {value!r}")
    return None if str(value).strip().lower() in (WISDOM_OFF, "") else Path(value).expanduser()


def configure(threads=None, planner=None, wisdom_path=None) -> Settings:
    """Set the FFTW settings of every FFT backend; returns them.

    A setting not given comes from its environment variable, else its default:

    - ``threads`` (``CONVLAB_FFT_THREADS``): FFTW's threads, and the threads that share
      tiles (see :func:`run_tiles`), default ``os.cpu_count()``.
    - ``planner`` (``CONVLAB_FFT_PLANNER``): ``estimate``, ``measure`` (default),
      ``patient`` or ``exhaustive``; an ``FFTW_`` prefix and any case are accepted.
    - ``wisdom_path`` (``CONVLAB_FFT_WISDOM``): the FFTW wisdom cache file, default
      :func:`default_wisdom_path`; ``"off"`` uses none.

    Plans built under the previous settings are dropped.
    """
    env = os.environ
    settings = Settings(
        threads=_threads(threads, "threads") if threads is not None
        else _threads(env[ENV_THREADS], ENV_THREADS) if env.get(ENV_THREADS)
        else os.cpu_count() or 1,
        planner=_planner(planner, "planner") if planner is not None
        else _planner(env[ENV_PLANNER], ENV_PLANNER) if env.get(ENV_PLANNER)
        else DEFAULT_PLANNER,
        wisdom_path=_wisdom_path(wisdom_path, "wisdom_path") if wisdom_path is not None
        else _wisdom_path(env[ENV_WISDOM], ENV_WISDOM) if ENV_WISDOM in env
        else default_wisdom_path(),
    )
    _plans.reset(settings)
    return settings


def drop_plans():
    """Forget every cached plan (and its buffers); the settings stay. For measuring the
    memory a problem's plans take (:mod:`convlab.memory`)."""
    with _plans.lock:
        _plans.cache.clear()


def settings() -> Settings:
    """The settings in force (from :func:`configure`, or the environment on first use)."""
    if _plans.settings is None:
        configure()
    return _plans.settings


def own_threads() -> int:
    """Threads the FFT backends may start beyond convlab's chunk pool's own helpers (see
    :meth:`convlab.registry.Backend.own_threads`): FFTW's (OpenMP) threads but the calling
    one, and the helpers that share tiles beyond the pool's :func:`convlab.threads.worker_count`."""
    threads = settings().threads
    return threads - 1 + max(0, threads - worker_count())


class _Buffers:
    """A plan's aligned buffers: ``real`` (*batch, *fft_shape), ``spectrum`` (FFTW's view
    of the spectra) and ``bins`` (for a bins-first plan, the spectra as a contiguous
    (bins, *batch) array, else None); ``region`` remembers where ``real`` holds data
    (everywhere else it is zero; None: unknown). A paired forward and inverse plan (see
    :func:`plan`) share one."""

    def __init__(self, real, spectrum, bins):
        self.real, self.spectrum, self.bins = real, spectrum, bins
        self.region = None


class _Plan:
    """One FFTW plan and its :class:`_Buffers`: ``input`` is its input buffer, ``bins``
    its bin-major spectra (bins-first plans), ``region`` where the real buffer holds data."""

    def __init__(self, fftw, buffers):
        self.fftw = fftw
        self.input = fftw.input_array
        self.buffers = buffers
        self.bins = buffers.bins

    @property
    def region(self):
        return self.buffers.region

    @region.setter
    def region(self, value):
        self.buffers.region = value

    def execute(self):
        """Run the transform. An inverse writes the whole real buffer, so where it holds
        data is then unknown to the forward plan that shares it."""
        self.fftw.execute()
        if self.fftw.direction == "FFTW_BACKWARD":
            self.buffers.region = None

    def empty_bins(self):
        """A new aligned array like ``bins``, for :meth:`execute_into`."""
        return pyfftw.empty_aligned(self.bins.shape, self.bins.dtype)

    def execute_into(self, bins):
        """Run this bins-first forward plan with its spectra written into ``bins`` (from
        :meth:`empty_bins`) instead of its own buffer: spectra to be kept need no copy."""
        grid = self.buffers.spectrum.shape[-2:]
        self.fftw.update_arrays(self.input, np.moveaxis(bins.reshape(grid + bins.shape[1:]), (0, 1), (-2, -1)))
        try:
            self.fftw.execute()
        finally:
            self.fftw.update_arrays(self.input, self.buffers.spectrum)


class _Plans:
    """FFTW plans built once per (direction, batch shape, FFT shape, dtype, slot,
    ``bins_first``, ``pair``, owner), the
    :data:`MAX_PLANS` most recently used of each owner kept (each holds buffers the size of its
    transforms); the wisdom file is read before the first plan and rewritten after each
    measured plan, so a plan dropped and built again is quick.

    A plan and its buffers must never be used by two threads at once. A tile's plan is
    single-threaded, one per ``slot``: the number a running tile holds (see
    :func:`run_tiles` and :class:`_Slots`), so whichever thread takes a tile transforms it
    in buffers no running tile shares. A plan for a whole transform (``slot`` None) uses
    the FFTW threads setting and belongs to the Python thread that asked for it (the owner:
    its ident), so that two threads convolving at once (a user's, or a server's) each fill,
    run and read their own buffers; with one thread, as in training, there is one set.
    (Shared, two threads running the same problem got each other's results: 4-96 wrong
    outputs of 200 calls each.)
    """

    def __init__(self):
        self.settings = None
        self.cache: OrderedDict[tuple, _Plan] = OrderedDict()
        self.wisdom_loaded = False
        self.lock = threading.Lock()  # the threads sharing tiles share the cache and the planner

    def reset(self, settings):
        with self.lock:
            self.settings = settings
            self.cache.clear()
            self.wisdom_loaded = False

    def get(self, direction, batch, fft_shape, dtype, slot=None, bins_first=False, pair=None) -> _Plan:
        owner = threading.get_ident() if slot is None else None
        key = (direction, batch, fft_shape, np.dtype(dtype), slot, bins_first, pair, owner)
        current = settings()
        with self.lock:
            plan = self.cache.get(key)
            if plan is None:
                other = ("FFTW_BACKWARD" if direction == "FFTW_FORWARD" else "FFTW_FORWARD",) + key[1:]
                partner = self.cache.get(other) if pair is not None else None
                plan = self.cache[key] = self._build(current, *key[:-2], None if partner is None else partner.buffers)
                owned = [k for k in self.cache if k[-1] == owner]  # least recently used first
                if len(owned) > MAX_PLANS:
                    del self.cache[owned[0]]
                if len(self.cache) > MAX_PLANS * MAX_OWNERS:
                    self.cache.popitem(last=False)
            self.cache.move_to_end(key)
        return plan

    def forget_lock(self):
        """In a forked child, which has none of the parent's threads: a lock that no thread holds."""
        self.lock = threading.Lock()

    def _build(self, current, direction, batch, fft_shape, dtype, slot, bins_first, buffers) -> _Plan:
        """A new plan, on ``buffers`` (its partner's) if given, else on new ones."""
        if not self.wisdom_loaded:
            self.wisdom_loaded = True
            self._load_wisdom(current.wisdom_path)
        if buffers is None:
            real = pyfftw.empty_aligned(batch + fft_shape, dtype)
            bins_shape = (fft_shape[0], fft_shape[1] // 2 + 1)
            complex_dtype = np.result_type(dtype, np.complex64)
            if bins_first:  # FFTW reads or writes the spectra through a transposed view
                bins = pyfftw.empty_aligned(bins_shape + batch, complex_dtype)
                spectrum = np.moveaxis(bins, (0, 1), (-2, -1))
            else:
                bins, spectrum = None, pyfftw.empty_aligned(batch + bins_shape, complex_dtype)
            buffers = _Buffers(real, spectrum, None if bins is None else bins.reshape((-1,) + batch))
        real, spectrum = buffers.real, buffers.spectrum
        arrays = (real, spectrum) if direction == "FFTW_FORWARD" else (spectrum, real)
        # Waking threads costs more than a small transform takes.
        big = slot is None and real.size >= MIN_POINTS_PER_THREAD * current.threads
        threads = current.threads if big else 1
        # Measuring a small transform's plan takes far longer than it could ever save.
        planner = current.planner if real.size >= MIN_POINTS_TO_MEASURE else "estimate"
        fftw = pyfftw.FFTW(*arrays, axes=(-2, -1), direction=direction,
                           flags=(f"FFTW_{planner.upper()}",), threads=threads)
        # Planning by measurement scribbles on the buffers; the input must start zeroed.
        fftw.input_array.fill(0)
        buffers.region = None
        # An estimated plan is instant, so only measured ones are worth remembering.
        if current.wisdom_path is not None and planner != "estimate":
            self._save_wisdom(current.wisdom_path)
        return _Plan(fftw, buffers)

    @staticmethod
    def _load_wisdom(path):
        if path is not None:
            _import_wisdom(read_cache(path, WISDOM_KIND, "wisdom"), path)

    @staticmethod
    def _save_wisdom(path):
        """Merge-on-write (see :mod:`convlab.cachefile`): the wisdom another process saved
        since we loaded the file is imported, so the file we write holds both."""
        def merged(stored):
            _import_wisdom(stored, path)
            return {"fftw": pyfftw.fftw_version, "wisdom": [w.decode("ascii") for w in pyfftw.export_wisdom()]}

        update_cache(path, WISDOM_KIND, "wisdom", merged)


def _import_wisdom(stored, path):
    """Add the wisdom in a wisdom file's content (``{}``: none) to FFTW's."""
    try:
        if stored:
            pyfftw.import_wisdom(tuple(w.encode("ascii") for w in stored["wisdom"]))
    except (ValueError, TypeError, AttributeError) as error:
        warn_once(path, f"ignoring unreadable FFTW wisdom file {path}: {error}")


_plans = _Plans()
os.register_at_fork(after_in_child=_plans.forget_lock)


def plan(direction, batch, fft_shape, dtype, slot=None, bins_first=False, pair=None) -> _Plan:
    """The cached plan transforming (*batch, *fft_shape) grids: ``direction``
    ``"FFTW_FORWARD"`` (real -> complex) or ``"FFTW_BACKWARD"`` (complex -> real, unscaled);
    ``plan.input`` is its input buffer, ``plan.fftw.output_array`` its output; ``slot``
    (given to work by :func:`run_tiles`): a tile's single-threaded plan, see :class:`_Plans`.
    With ``bins_first`` the spectra are laid out bin-major, as
    ``plan.bins`` (bins, *batch): per-bin matrix products then need no transposing copies.

    ``pair`` (a name): the forward and the inverse plan of the same grids and the same
    ``pair`` share their buffers (half the memory), for work that never needs both at
    once; run such a plan with ``plan.execute()``, which keeps ``region`` right for its
    partner."""
    return _plans.get(direction, batch, fft_shape, dtype, slot, bins_first, pair)


def rfft2(signal, rows, cols, fft_shape, relu_output=None, bins_first=False, label=None):
    """Spectra of ``signal`` (B1, B2, h, w) written at ``[rows, cols]`` of a zero (Hf, Wf)
    grid: complex (B1, B2, Hf * (Wf//2 + 1)), a new array, or with ``bins_first`` complex
    (bins, B1, B2) (ready for per-bin matrix products, see :func:`binwise_matmul`). Large
    batches are transformed in tiles of B1, shared among threads like ``fft``'s inverse
    transforms.

    ``relu_output`` (like ``signal``): the signal is kept only where it is positive, as it
    is written into the grid (a ReLU's gradient, applied without a pass of its own).

    ``label`` (say ``"dy"``): the tiles' steps are profile phases of their own
    (:mod:`convlab.profile`): ``"dy rows"`` (a factored gradient's rows formed),
    ``"dy into grid"``, ``"dy FFTs"`` and ``"dy spectra copy"``. Without it the caller times
    the whole call as one phase (phases do not nest)."""
    b1, b2 = signal.shape[:2]
    bins = fft_shape[0] * (fft_shape[1] // 2 + 1)
    dtype = np.result_type(signal.dtype, np.complex64)
    spectra = np.empty((bins, b1, b2) if bins_first else (b1, b2, bins), dtype)

    names = {step: f"{label} {step}" for step in ("rows", "into grid", "FFTs", "spectra copy")} if label else {}

    def timed(step):
        return phase(names[step]) if label else contextlib.nullcontext()

    def transform(index, lo, hi, slot):
        plan = _plans.get("FFTW_FORWARD", (hi - lo, b2), fft_shape, signal.dtype, slot, bins_first)
        region = (rows, cols, signal.shape[2:])
        if plan.region != region:
            plan.input.fill(0)
            plan.region = region
        # A factored gradient's rows are formed here, for this tile (convlab.factored).
        with timed("rows"):
            source = signal.rows(lo, hi) if isinstance(signal, FactoredGradient) else signal[lo:hi]
        with timed("into grid"):
            if relu_output is None:
                plan.input[:, :, rows, cols] = source
            else:
                relu_gradient_block(source, relu_output[lo:hi], plan.input[:, :, rows, cols])
        with timed("FFTs"):
            plan.fftw.execute()
        with timed("spectra copy"):
            if bins_first:
                spectra[:, lo:hi] = plan.bins
            else:
                spectra[lo:hi] = plan.fftw.output_array.reshape(hi - lo, b2, -1)

    points = BINS_FIRST_TILE_POINTS if bins_first else TILE_POINTS
    run_tiles(transform, b1, rows_per_tile(b2, fft_shape, points))
    return spectra


def rows_per_tile(planes_per_row, fft_shape, points=None):
    """How many rows of ``planes_per_row`` grids make a tile of about ``points`` grid
    points (default :data:`TILE_POINTS`)."""
    return max(1, (points or TILE_POINTS) // (planes_per_row * fft_shape[0] * fft_shape[1]))


class _Slots:
    """Numbers for the plans of running tiles: a tile holds one while it runs and no other
    tile gets it meanwhile, so a plan keyed on it never executes in two threads at once
    (whichever threads they are, whatever runs concurrently). The lowest free number is
    given, so there are only as many sets of tile plans as tiles ever ran at once."""

    def __init__(self):
        self.free, self.count, self.lock = [], 0, threading.Lock()

    @contextlib.contextmanager
    def held(self):
        with self.lock:
            if self.free:
                slot = heapq.heappop(self.free)
            else:
                slot, self.count = self.count, self.count + 1
        try:
            yield slot
        finally:
            with self.lock:
                heapq.heappush(self.free, slot)

    def forget_lock(self):
        """In a forked child: a lock that no thread holds."""
        self.lock = threading.Lock()


_slots = _Slots()
os.register_at_fork(after_in_child=_slots.forget_lock)


def run_tiles(work, rows, tile_rows):
    """``work(index, lo, hi, slot)`` for every tile ``[lo, hi)`` (the ``index``-th) of
    ``rows`` rows, shared among as many threads as the threads setting by
    :func:`convlab.threads.share_chunks` (the calling thread takes tiles too; BLAS runs
    single-threaded meanwhile); ``slot`` is the tile's own slot (see :class:`_Slots`), for
    single-threaded plans no running tile shares (``plan(..., slot)``). A lone tile runs in
    the calling thread with ``slot`` None: one transform on FFTW's threads.

    Which thread runs a tile varies from run to run: ``work`` writes only its tile's
    results, and a sum over tiles keeps one partial per ``index``, added in order."""
    tiles = chunk_bounds(rows, tile_rows)
    if len(tiles) == 1:
        work(0, *tiles[0], None)
        return

    def tile(index, lo, hi):
        with _slots.held() as slot:
            work(index, lo, hi, slot)

    # Phases marked in the tiles (fft-tiled's) are thread time: scaled to the wall time
    # they shared, or a profile's phases would add up to more than the pass took.
    with shared_among_threads():
        share_chunks(tile, tiles, settings().threads)


def binwise_matmul(a, b, out):
    """``out[:, :, k] = a[:, :, k] @ b[:, :, k]`` for every frequency bin k: a (I, K, bins)
    and b (K, J, bins) (views are fine), out (I, J, bins).

    When one of I, J, K is tiny (a single input channel, say) and both operands are
    plane-major, K broadcast products summed in place are several times faster than
    numpy's matmul, which pays per bin for such small matrices and needs bin-major
    copies. Otherwise (and whenever an operand is a view of bin-major spectra, see
    :func:`is_bin_major`: numpy's complex multiplies on such strided views are slow, and
    matmul needs no copy of them) the operands are taken bin-major and multiplied there:
    batched matmuls, (bins, I, K) @ (bins, K, J), the bins shared among the cores with BLAS
    single-threaded (called on a whole batch, outside the tile threads, a plain
    ``np.matmul`` ran on OpenBLAS's threads, twice as slow as one thread on a busy 2-core
    machine: 28 against 9.5 ms for 144 bins of 64 x 64 products). The reference layer's
    dw (32 filters x 64 images, one channel, 544 bins) took 0.21 ms so on bin-major dy
    spectra, against 1.23 ms broadcast from plane-major ones (2-core AMD EPYC, one thread).
    """
    i, k = a.shape[:2]
    j = b.shape[1]
    if broadcasts(a, b):
        np.multiply(a[:, 0, None], b[None, 0], out=out)
        term = np.empty_like(out) if k > 1 else None
        for index in range(1, k):
            np.multiply(a[:, index, None], b[None, index], out=term)
            out += term
        return out
    a_bins, b_bins = bin_major(a), bin_major(b)
    product = np.empty((a_bins.shape[0], i, j), np.result_type(a, b))
    bin_bytes = (i * k + k * j + i * j) * product.itemsize
    share_chunks(lambda _, lo, hi: np.matmul(a_bins[lo:hi], b_bins[lo:hi], out=product[lo:hi]),
                 chunk_bounds(len(product), MATMUL_BLOCK_BYTES // bin_bytes))
    copy_in_bin_blocks(out.transpose(2, 0, 1), product)
    return out


def broadcasts(a, b):
    """Whether :func:`binwise_matmul` forms the products of a (I, K, bins) and b (K, J,
    bins) by broadcasting: one of I, K, J is tiny and neither is bin-major."""
    return has_tiny_side(*a.shape[:2], b.shape[1]) and not (is_bin_major(a) or is_bin_major(b))


def has_tiny_side(*sides):
    """Whether per-bin (I, K) @ (K, J) products with these sides have one of at most
    :data:`BROADCAST_MAX_DIM`, too small for a matmul per bin to pay (see binwise_matmul)."""
    return min(sides) <= BROADCAST_MAX_DIM


def is_bin_major(spectra):
    """Whether (R, S, bins) spectra are a view of bin-major ones (bins, ...), such as
    ``rfft2(..., bins_first=True)`` transposed: their bins are not contiguous."""
    return spectra.strides[2] != spectra.itemsize


def bin_major(spectra):
    """Plane-major spectra (R, S, bins) as bin-major (bins, R, S): a copy, or a view if
    they are a view of bin-major ones (:func:`is_bin_major`)."""
    if is_bin_major(spectra):
        return spectra.transpose(2, 0, 1)
    copy = np.empty(spectra.shape[2:] + spectra.shape[:2], spectra.dtype)
    copy_in_bin_blocks(copy, spectra.transpose(2, 0, 1))
    return copy


def copy_in_bin_blocks(dst, src):
    """``dst[...] = src`` for (bins, R, S) arrays of which one is a transposed view, a
    cache-sized block of bins at a time: numpy's one-go transposing copy thrashes the
    cache at these sizes and can be several times slower."""
    step = max(1, COPY_BLOCK_BYTES // (dst[0].size * dst.itemsize))
    for start in range(0, dst.shape[0], step):
        np.copyto(dst[start:start + step], src[start:start + step])


# Time per point of a length's transform, relative to a power of two, from each odd prime
# factor it has (counted with multiplicity) and from being odd (no half-length trick for
# real input). Fitted to r2c + c2r pairs of batched square float32 transforms of 23
# fast lengths from 30 to 192 (FFTW 3.3, 2 threads; a 2-core AMD EPYC), within about 15 %.
ODD_FACTOR_COST = {3: 0.2, 5: 0.25, 7: 0.35, 11: 0.5, 13: 0.6}
ODD_LENGTH_COST = 1.0


def cost_per_point(length):
    """Time per point of an FFT of this length, relative to one of a power of two."""
    cost = 1.0 + (ODD_LENGTH_COST if length % 2 else 0.0)
    for prime, extra in ODD_FACTOR_COST.items():
        while length % prime == 0:
            length //= prime
            cost += extra
    return cost


def flipped(length):
    """Slice of grid places ``0 .. length-1`` taken backwards."""
    return slice(length - 1, None, -1)
