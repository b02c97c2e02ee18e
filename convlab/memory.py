"""Peak extra memory of one pass of a backend: what it allocates beyond the results it
returns, the way cuDNN reports an algorithm's workspace.

numpy reports every array buffer it allocates to :mod:`tracemalloc` (pyfftw's aligned
buffers are numpy arrays too, so plans' buffers are counted), so the peak of traced memory
during the call, less the memory traced before it and the bytes of the arrays the call
returns, is the workspace: temporaries, a forward's cache kept for its backward, and the
buffers of FFT plans built for the problem. Plans cached by an earlier problem would hide
their buffers, so the shared FFTW plan cache (:mod:`convlab.fftw`, if an FFT backend has
loaded it) is emptied first: the call builds the plans it needs, as a first call does.
Memory allocated outside numpy and Python (FFTW's own plan tables, BLAS buffers) is not seen.
"""

from __future__ import annotations

import sys
import tracemalloc

import numpy as np


def returned_bytes(result) -> int:
    """Bytes of the arrays in ``result`` (an array, or a tuple/list of arrays and None)."""
    if isinstance(result, np.ndarray):
        return result.nbytes
    if isinstance(result, (tuple, list)):
        return sum(returned_bytes(item) for item in result)
    return 0


def peak_extra_bytes(run) -> int:
    """Peak bytes ``run()`` allocates beyond the arrays it returns (see the module docstring)."""
    fftw = sys.modules.get("convlab.fftw")  # loaded only by an FFT backend; never imported here
    if fftw is not None:
        fftw.drop_plans()
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        if not tracing:
            tracemalloc.stop()
    return max(0, peak - before - returned_bytes(result))
