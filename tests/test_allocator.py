"""keep_freed_memory(): big arrays freed and allocated again cost no page faults."""

import subprocess
import sys

import pytest

PROGRAM = """
import resource, sys
import numpy as np
from convlab import keep_freed_memory
kept = keep_freed_memory()
def touch():
    a = np.empty(3 << 20, np.float32)  # 12 MB, written all through
    a.fill(1.0)
    return float(a[-1])
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    touch()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults():
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True).stdout
    kept, count = out.split()
    return kept, int(count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_big_arrays_are_reused_without_page_faults():
    kept, with_it = faults()
    assert kept == "True"
    # Without it, each of the ten 12 MB arrays is fresh pages: ~3,000 faults each (6 with huge pages).
    assert with_it < 50


def test_calling_it_twice_is_harmless():
    import numpy as np

    from convlab import keep_freed_memory

    assert keep_freed_memory() == keep_freed_memory()
    assert np.ones(5 << 20, np.float32).sum() == 5 << 20


GIVE_BACK = """
import numpy as np
from convlab import keep_freed_memory
from convlab.headroom import available_memory
def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096
keep_freed_memory()
np.ones(16 << 20, np.float32)  # 64 MB, freed at once: kept
kept = resident()
available_memory()
print(kept - resident())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim, /proc")
def test_the_memory_check_counts_freed_memory_the_process_kept_as_available():
    """A network the check builds to size it up (its weights) and lets go is kept in the
    process; it goes back before MemAvailable is read, which would count it as taken."""
    out = subprocess.run([sys.executable, "-c", GIVE_BACK], capture_output=True, text=True, check=True).stdout
    assert int(out) > 60 << 20


@pytest.mark.parametrize("libc", [None, "no-such-libc.so", "libc-without-glibc-functions"])
def test_without_glibc_nothing_is_given_back_and_the_memory_is_still_read(monkeypatch, libc):
    """musl and macOS have a C library without malloc_trim (or none ctypes finds, or one it
    cannot load): give_back_freed_memory says False, and the memory check reads on."""
    import ctypes
    import ctypes.util

    import convlab.settings
    from convlab.allocator import _c_library, give_back_freed_memory

    class WithoutGlibcFunctions:  # as ctypes.CDLL of macOS's libSystem or musl: no malloc_trim, no mallopt
        def __init__(self, name):
            if name != "libc-without-glibc-functions":
                raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes.util, "find_library", lambda name: libc)
    monkeypatch.setattr(ctypes, "CDLL", WithoutGlibcFunctions)
    _c_library.cache_clear()  # the C library is looked up once a process: again here, and after
    try:
        assert give_back_freed_memory() is False
        if sys.platform.startswith("linux"):
            assert convlab.headroom.available_memory().nbytes > 0
    finally:
        _c_library.cache_clear()
