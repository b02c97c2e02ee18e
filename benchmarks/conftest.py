"""Shared machinery of the benchmarks: rounds sized to a time budget, float32 results
checked against float64 references, and a private cache file for the ``auto`` backend."""

import time

import numpy as np
import pytest

from convlab import keep_freed_memory

# Each benchmark gets about this many seconds of timed rounds, and at least one round:
# the whole suite must stay under 10 minutes on a shared 2-core machine.
SECONDS_PER_BENCHMARK = 0.6
MAX_ROUNDS = 20
# A warm-up slower than this is taken as the calibration: heavy cells cost two calls, not three.
SLOW_CALL = 1.0


@pytest.fixture(autouse=True, scope="session")
def freed_memory_kept():
    """As `convlab` commands do (convlab.allocator); PyTorch's rows, in the same process, get it too."""
    keep_freed_memory()


@pytest.fixture(autouse=True, scope="session")
def private_auto_cache(tmp_path_factory):
    """The auto backend tunes from scratch and never writes the user's cache dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVLAB_AUTO_CACHE", str(tmp_path_factory.mktemp("auto") / "auto.json"))
        yield


def measure(benchmark, run, setup=None):
    """Benchmark ``run()`` and return the value of its last round.

    An untimed warm-up call absorbs one-off costs (FFT plans, page faults, auto's tuning);
    a second untimed call, unless the warm-up was slower than ``SLOW_CALL``, tells how many
    rounds fit in ``SECONDS_PER_BENCHMARK``. ``setup()``, if given, runs untimed before every
    call (to reset state that ``run`` changes).
    """
    seconds = 0.0
    for _ in range(2):
        if seconds < SLOW_CALL:
            if setup:
                setup()
            started = time.perf_counter()
            run()
            seconds = time.perf_counter() - started
    rounds = int(np.clip(SECONDS_PER_BENCHMARK // max(seconds, 1e-9), 1, MAX_ROUNDS))
    return benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)


def assert_close(ours, reference, what):
    """float32 results against a float64 reference, relative to the reference's scale."""
    for name, a, r in zip(("y", "dx", "dw", "db"), ours, reference):
        scale = float(np.abs(r).max()) or 1.0
        np.testing.assert_allclose(np.asarray(a, np.float64), r, rtol=1e-3, atol=2e-4 * scale,
                                   err_msg=f"{name} of {what} differs from the reference")
