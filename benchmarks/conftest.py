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
# Untimed calls go on while each is this many times faster than the one before (one-off costs
# still wearing off), up to WARM_UP_CALLS in all.
SETTLED = 2.0
WARM_UP_CALLS = 4


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

    Untimed calls first absorb one-off costs (FFT plans, page faults, PyTorch's first call,
    auto's tuning): at least two, and more while each is over ``SETTLED`` times faster than
    the one before, up to ``WARM_UP_CALLS``. The last of them tells how many rounds fit in
    ``SECONDS_PER_BENCHMARK``. Judging by the first call alone gave PyTorch's training step
    one round, timed straight after a first call of over a second (2026-12-02). ``setup()``,
    if given, runs untimed before every call (to reset state that ``run`` changes).
    """
    times = []
    while len(times) < 2 or (len(times) < WARM_UP_CALLS and times[-2] > SETTLED * times[-1]):
        if setup:
            setup()
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    rounds = int(np.clip(SECONDS_PER_BENCHMARK // max(times[-1], 1e-9), 1, MAX_ROUNDS))
    return benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)


def assert_close(ours, reference, what):
    """float32 results against a float64 reference, relative to the reference's scale."""
    for name, a, r in zip(("y", "dx", "dw", "db"), ours, reference):
        scale = float(np.abs(r).max()) or 1.0
        np.testing.assert_allclose(np.asarray(a, np.float64), r, rtol=1e-3, atol=2e-4 * scale,
                                   err_msg=f"{name} of {what} differs from the reference")
