"""Accuracy of the backends in float32: ``convlab bench --accuracy``.

Speed is half of a backend's story; the other half is how far its float32 results are
from the exact ones. For each (shape, backend), on random normal data (``ConvShape.arrays``
and a normal ``dy``), the float32 forward and backward are compared with a float64
reference computed from the *same* float32-rounded inputs (so only the arithmetic is
measured, not the rounding of the data), by :data:`REFERENCE` (one GEMM in float64: its
own error, about 1e-16, is far below float32's). The error of each output is

    max |got - ref| / max |ref|        (y, dx and dw)

the median over :data:`SEEDS` seeds. Direct methods (naive, im2col) land near 1e-7, a
few float32 roundings; FFT and Winograd pay for their transforms (see docs/winograd.md).

JSON rows (in ``convlab bench --json``, under ``"accuracy"``)::

    {"shape": "64x1->32 28x28 k7 p1", "backend": "fft", "y": 3.1e-07, "dx": 2.9e-07, "dw": 1.2e-07}
"""

from __future__ import annotations

import numpy as np

from convlab.timing import conv_pass, output_gradient

REFERENCE = "im2col"
SEEDS = 3
OUTPUTS = ("y", "dx", "dw")


def relative_error(got, ref) -> float:
    """max |got - ref| / max |ref| (0 when both are zero)."""
    scale = float(np.abs(ref).max())
    error = float(np.abs(np.asarray(got, np.float64) - ref).max())
    return error / scale if scale else error


def float32_errors(backend, shape, seeds=SEEDS) -> dict[str, float]:
    """{"y", "dx", "dw"}: the median over ``seeds`` seeds of the float32 errors of
    ``backend`` on ``shape`` (a :class:`~convlab.timing.ConvShape`)."""
    stride, padding = (1, 1), (shape.padding, shape.padding)
    errors = []
    for seed in range(seeds):
        x, w, b = shape.arrays(np.float32, seed)
        dy = output_gradient(x, w, stride, padding, seed + 1)
        got = conv_pass(backend, x, w, b, stride, padding, dy)()
        ref = conv_pass(REFERENCE, *(a.astype(np.float64) for a in (x, w, b)), stride, padding,
                        dy.astype(np.float64))()
        errors.append([relative_error(g, r) for g, r in zip(got[:3], ref[:3])])
    return dict(zip(OUTPUTS, np.median(errors, axis=0).tolist()))


def run_accuracy(shapes, backends_for, progress=None) -> list[dict]:
    """Rows as in the module docstring; ``backends_for(shape)`` names the backends to
    measure on that shape (those that support it)."""
    rows = []
    for shape in shapes:
        if progress:
            progress(f"measuring the float32 error on {shape.label}")
        for backend in backends_for(shape):
            rows.append({"shape": shape.label, "backend": backend, **float32_errors(backend, shape)})
    return rows


def format_accuracy(rows) -> str:
    """A row per (shape, backend): the errors of y, dx and dw."""
    if not rows:
        return ""
    label_width = max(len("shape"), *(len(r["shape"]) for r in rows))
    backend_width = max(len("backend"), *(len(r["backend"]) for r in rows))
    lines = [f"float32 error, max|got - ref| / max|ref| against float64 (median of {SEEDS} seeds)",
             f"{'shape':<{label_width}}  {'backend':<{backend_width}}" + "".join(f"{o:>10}" for o in OUTPUTS)]
    lines += [f"{r['shape']:<{label_width}}  {r['backend']:<{backend_width}}"
              + "".join(f"{r[o]:10.1e}" for o in OUTPUTS) for r in rows]
    return "\n".join(lines)
