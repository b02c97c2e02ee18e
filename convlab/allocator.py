"""Keep freed memory in the process: big arrays reused step after step without page faults.

A training step allocates and frees the same few multi-megabyte arrays every time (the
reference network's unrolled windows, 7.4 MB; its activations and their gradients, 4.7 MB
each). glibc's ``malloc`` serves blocks that big with a fresh ``mmap`` and gives them back
to the kernel on ``free``, so every step touches new pages: a page fault each 4 KiB, the
kernel zeroing every page, and numpy's ``madvise(MADV_HUGEPAGE)`` on each array of 4 MiB
or more (a system call, and the kernel's huge-page work behind it). On the 2-core AMD EPYC
VM that was about 300 faults and 1.4 ms of system time per reference-network step (of
~12 ms); with :func:`keep_freed_memory` it is 0 faults and 0.16 ms
(``getrusage`` over 300 steps of ``convlab.training.train_step``).

:func:`keep_freed_memory` asks glibc to serve big blocks from its heap and never to
return its free top to the kernel (``mallopt(M_MMAP_THRESHOLD)``, ``mallopt(M_TRIM_THRESHOLD)``),
and numpy not to ``madvise`` huge pages. The price: the process keeps its peak heap until
it ends (the memory is reused, not leaked; :func:`give_back_freed_memory` returns it before
the memory check reads what the machine has available). It changes the whole process,
PyTorch in the same process included, so ``convlab``'s commands and benchmarks call it at
start, and a library user opts in by calling it; importing convlab changes nothing.
Elsewhere than glibc (macOS, musl) it does nothing but the numpy part.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Blocks up to 1 GiB from the heap (glibc 2.36 takes it); older glibcs accept at most
# 32 MiB (HEAP_MAX_SIZE / 2). Bigger blocks still get their own mmap, which costs little per byte.
_MMAP_THRESHOLDS = (1 << 30, 32 << 20)


def keep_freed_memory() -> bool:
    """Make freed big arrays reusable without page faults (see the module docstring).

    Returns True if glibc's malloc took the settings (False where there is no glibc).
    Calling it again is harmless.
    """
    set_hugepage = getattr(getattr(np, "_core", None), "multiarray", None)
    set_hugepage = getattr(set_hugepage, "_set_madvise_hugepage", None)
    if set_hugepage is not None:
        set_hugepage(False)
    mallopt = _glibc("mallopt", (ctypes.c_int, ctypes.c_int))
    if mallopt is None:
        return False
    if not any(mallopt(_M_MMAP_THRESHOLD, threshold) for threshold in _MMAP_THRESHOLDS):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def give_back_freed_memory() -> bool:
    """Return the freed memory this process keeps (see the module docstring) to the kernel
    now (glibc's ``malloc_trim``). Before the memory available is read (``MemAvailable``:
    :func:`convlab.headroom.available_memory`), where the kept memory would count as taken,
    though the run would reuse it: a network built to size it up and let go (its weights
    and their float64 draws, hundreds of MB for a big dense layer) would count twice.
    Returns whether memory went back: False where glibc had none to give, and where there
    is no glibc (musl, macOS: nothing to do, as :func:`keep_freed_memory` kept nothing)."""
    malloc_trim = _glibc("malloc_trim", (ctypes.c_size_t,))
    return malloc_trim is not None and bool(malloc_trim(0))


def _glibc(function: str, argtypes: tuple):
    """The C library's ``function`` (returning an int), or None if there is no such library
    or function (not glibc)."""
    library = _c_library()
    found = getattr(library, function, None) if library is not None else None
    if found is None:  # no C library to load, or not glibc's malloc
        return None
    found.argtypes, found.restype = argtypes, ctypes.c_int
    return found


@functools.cache
def _c_library():
    """The C library, loaded once (finding it runs ``ldconfig -p``, about 2 ms), or None."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None
