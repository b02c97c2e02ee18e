"""Sharing a pass's work among the cores, without two thread pools fighting over them.

numpy's BLAS (OpenBLAS) threads each big GEMM over every core, and its idle threads spin
for a while after each call. A backend that runs cache-sized chunks in threads of its own
(one chunk: unroll, GEMM and bias, back to back, while the chunk is in L2) must therefore
keep BLAS to one thread inside each chunk, or the two pools oversubscribe the cores.

:func:`share_chunks` does both: it runs ``work(index, lo, hi)`` for every ``(lo, hi)`` of its
``chunks`` on :func:`worker_count` threads, with BLAS held at one thread meanwhile. The number of
threads is what BLAS itself would use (so ``OPENBLAS_NUM_THREADS=1`` makes everything
single-threaded), and the chunks are handed out in order to whichever thread is free; a
caller that sums per-chunk results must keep one result per chunk (never per thread) to
stay deterministic.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController

_blas = ThreadpoolController().select(user_api="blas")
# What BLAS was started with (OPENBLAS_NUM_THREADS and the like), read before anything here
# limits it: the chunk pool keeps this many threads busy while BLAS itself runs on one.
_blas_threads_at_start = min([lib.num_threads for lib in _blas.lib_controllers] or [os.cpu_count() or 1])
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def worker_count() -> int:
    """Threads a pass may use: as many as numpy's BLAS was started with (its environment
    variables included), at most the cores this process may run on."""
    return max(1, min(len(os.sched_getaffinity(0)), _blas_threads_at_start))


@contextlib.contextmanager
def single_threaded_blas():
    """Within the block, BLAS calls run on the calling thread only.

    Set and restored through the BLAS libraries' own calls, and not at all when BLAS is
    already on one thread (nested blocks, a training step that holds one around its
    layers): ``threadpoolctl``'s ``limit()`` took 31 us a call, which LeNet-5's ~20 shared
    passes a step turned into 0.6 ms of a ~6 ms step (AMD EPYC).
    """
    previous = [lib.get_num_threads() for lib in _blas.lib_controllers]
    if all(threads == 1 for threads in previous):
        yield
        return
    for lib in _blas.lib_controllers:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, threads in zip(_blas.lib_controllers, previous):
            lib.set_num_threads(threads)


def _forget_pool():
    """In a forked child, which has none of the parent's threads: start a new pool when needed."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _executor(threads) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < threads:
            _pool = ThreadPoolExecutor(threads, thread_name_prefix="convlab-chunks")
        return _pool


# A pass of one or two chunks runs in the calling thread: handing the second chunk to a
# helper (a queue put, a wake-up, the GIL passed back and forth) cost more than it saved
# on small layers. LeNet-5's training step, 2 threads on the 2-core AMD EPYC, three
# alternating runs of 500 steps: 12.9 / 10.3 / 11.9 ms sharing every pass, 10.4 / 9.3 /
# 7.5 ms with this rule; the reference network's 10.5 / 9.3 / 7.4 against 8.3 / 9.6 / 8.0.
MIN_CHUNKS_TO_SHARE = 3


def chunk_bounds(n, per_chunk) -> list[tuple[int, int]]:
    """``range(n)`` cut into consecutive (lo, hi) pieces of ``per_chunk`` (the last may be shorter)."""
    per_chunk = max(1, int(per_chunk))
    return [(lo, min(lo + per_chunk, n)) for lo in range(0, n, per_chunk)]


def item_chunks(items, parts, parts_per_chunk) -> list[tuple[int, int]]:
    """``range(items * parts)`` (item i's parts are i * parts ... (i + 1) * parts - 1) cut into
    (lo, hi) pieces of about ``parts_per_chunk``: whole items when that is at least one item,
    else consecutive parts of one item. Big items are so cut into cache-sized pieces (the
    tile rows of a large image) without a piece ever spanning two items partly."""
    if parts_per_chunk >= parts:
        return [(lo * parts, hi * parts) for lo, hi in chunk_bounds(items, parts_per_chunk // parts)]
    return [(i * parts + lo, i * parts + hi) for i in range(items) for lo, hi in chunk_bounds(parts, parts_per_chunk)]


def share_chunks(work, chunks, threads=None):
    """Call ``work(index, lo, hi)`` for every ``(lo, hi)`` of ``chunks``, on ``threads``
    threads (default :func:`worker_count`) with BLAS single-threaded; returns when all are
    done, re-raising the first error. With one thread (or one chunk) everything runs in the
    calling thread.

    The calling thread takes chunks too, and waits only for chunks a helper has actually
    taken: on a busy machine a helper may get a core only after the calling thread has
    done all the work, and it then finds nothing left to do instead of being waited for.
    Helpers run under the caller's numpy error settings (``np.errstate`` is per thread).
    Fewer than :data:`MIN_CHUNKS_TO_SHARE` chunks run in the calling thread. A helper thread
    that cannot start (``RuntimeError``) is raised as the first error is.
    """
    threads = min(worker_count() if threads is None else threads, len(chunks))
    if len(chunks) < MIN_CHUNKS_TO_SHARE:
        threads = 1
    with single_threaded_blas():
        if threads <= 1:
            for index, (lo, hi) in enumerate(chunks):
                work(index, lo, hi)
            return
        taken, running, errors = [0], [0], []
        done = threading.Condition()
        caller_errstate = np.geterr()

        def help_out():
            with np.errstate(**caller_errstate):
                drain()

        def drain():
            while True:
                with done:
                    if taken[0] >= len(chunks) or errors:
                        return
                    index = taken[0]
                    taken[0] += 1
                    running[0] += 1
                try:
                    work(index, *chunks[index])
                except BaseException as error:  # handed to the calling thread
                    errors.append(error)
                finally:
                    with done:
                        running[0] -= 1
                        done.notify_all()

        pool = _executor(threads - 1)
        try:
            for _ in range(threads - 1):
                pool.submit(help_out)
        except RuntimeError as error:  # a helper the system would not start (its stack, under ulimit -v)
            with done:
                errors.append(error)  # no chunk more is taken: raised once the running ones are done
        drain()
        with done:
            done.wait_for(lambda: running[0] == 0)
        if errors:
            raise errors[0]


# What a thread the run starts maps, counted against a process limit (ulimit -v, -d): its stack,
# as big as glibc makes it (RLIMIT_STACK's soft value; where that is unlimited, glibc's own
# x86-64 default of 2 MiB); for a helper of the chunk pool, which calls BLAS and allocates,
# OpenBLAS's work buffer (32 MiB on x86-64, mapped at a thread's first BLAS call and kept) and
# the arena glibc's malloc reserves for a new thread (64 MiB on 64-bit systems; ulimit -v counts
# it all, ulimit -d only the part in use, so there it is over-counted). glibc makes do with an
# existing arena where it cannot reserve one, but one reserved early takes the room a later
# stack or buffer then cannot have: a run that passed the check with the arenas left out was
# ended by OpenBLAS ("Memory allocation still failed") under ulimit -v.
UNLIMITED_STACK = 2 << 20
OPENBLAS_BUFFER = 32 << 20
MALLOC_ARENA = 64 << 20


def thread_stack_bytes() -> int:
    """The stack a new thread gets (see :data:`UNLIMITED_STACK`)."""
    import resource

    if threading.stack_size():
        return threading.stack_size()
    soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
    return UNLIMITED_STACK if soft == resource.RLIM_INFINITY else soft


def new_arenas(threads) -> int:
    """How many of ``threads`` new threads that allocate get a malloc arena of their own:
    each, on glibc (up to 8 per core), unless ``MALLOC_ARENA_MAX`` caps the arenas (the main
    one included); none on another C library."""
    if platform.libc_ver()[0] != "glibc":
        return 0
    try:
        return max(0, min(threads, int(os.environ["MALLOC_ARENA_MAX"]) - 1))
    except (KeyError, ValueError):
        return threads


def reserved_by_threads(own_threads=0) -> int:
    """Bytes of address space the threads of a run will map that are not mapped yet: the
    chunk pool's helpers not yet started (:func:`worker_count` - 1), each with a stack, an
    OpenBLAS buffer and a malloc arena; the calling thread's OpenBLAS buffer (counted while
    the pool has not started: a command checks its memory before its first BLAS call); and
    ``own_threads`` threads with a stack each (a backend's own: FFTW's). An estimate of what
    a run cannot do without (see :data:`MALLOC_ARENA`), not a measurement. BLAS's own
    threads start with numpy: they are in the process's use already."""
    with _pool_lock:
        running = 0 if _pool is None else len(_pool._threads)
    helpers = max(0, worker_count() - 1 - running)
    openblas = any(lib.internal_api == "openblas" for lib in _blas.lib_controllers)
    buffers = (helpers + (running == 0)) * OPENBLAS_BUFFER if openblas else 0
    return (helpers + own_threads) * thread_stack_bytes() + buffers + new_arenas(helpers) * MALLOC_ARENA


def blas_kernel() -> str | None:
    """The kernels numpy's BLAS runs, as OpenBLAS names them ("Haswell", "SkylakeX", "Zen",
    ...; ``OPENBLAS_CORETYPE`` chooses them), or None for another BLAS. Which of two
    forms of a product is faster can depend on them (``im2col``'s dw)."""
    return next((lib.architecture for lib in _blas.lib_controllers
                 if lib.internal_api == "openblas" and getattr(lib, "architecture", None)), None)


def cpu_model(cpuinfo="/proc/cpuinfo", caches="/sys/devices/system/cpu/cpu0/cache") -> str:
    """The CPU's model name, with what tells apart CPUs of one name: on x86 its family and
    model numbers, its widest vector instructions and its L2 cache a core, e.g. "AMD EPYC
    (family 25 model 1, AVX2, L2 512 KiB)". Cloud VMs name a Zen 3 and a Zen 4 EPYC alike
    "AMD EPYC", and OpenBLAS's kernels and the BLAS-bound timings differ between them (the
    Zen 4 has AVX-512 and a 1 MiB L2). Read from ``/proc/cpuinfo`` and sysfs on Linux;
    elsewhere, what :mod:`platform` knows."""
    fields = {}
    try:
        with open(cpuinfo) as lines:
            for line in lines:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    details = []
    if "cpu family" in fields and "model" in fields:
        details.append(f"family {fields['cpu family']} model {fields['model']}")
    vector = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags),
                  None)
    if vector:
        details.append(vector)
    l2 = l2_cache_size(caches)
    if l2:
        details.append(f"L2 {l2}")
    return f"{name} ({', '.join(details)})" if details else name


def l2_cache_size(caches) -> str | None:
    """The size of a core's level-2 cache as sysfs spells it ("512K", said "512 KiB"), or None."""
    try:
        for index in sorted(Path(caches).glob("index*")):
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip()
                return f"{size[:-1]} {size[-1]}iB" if size[-1:] in ("K", "M") else size
    except OSError:
        pass
    return None


def machine_summary() -> str:
    """One line naming what a timing depends on: CPU model and cores, numpy and its BLAS
    (library, version, kernel architecture, threads), pyfftw and its FFTW."""
    blas = ", ".join(f"{lib['internal_api']} {lib['version']} ({lib.get('architecture', '?')}, "
                     f"{lib['num_threads']} threads)" for lib in _blas.info()) or "unknown BLAS"
    try:
        fftw = f"pyfftw {version('pyfftw')}"
    except PackageNotFoundError:
        fftw = "pyfftw not installed"
    if "pyfftw" in sys.modules:  # its FFTW version is known only once it is loaded
        fftw += f" (FFTW {getattr(sys.modules['pyfftw'], 'fftw_version', '?')})"
    return (f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores; numpy {np.__version__} with {blas}; {fftw}; "
            f"convlab threads {worker_count()}")
