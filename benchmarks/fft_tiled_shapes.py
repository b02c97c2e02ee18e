"""fft-tiled against fft, im2col and the anchors (PyTorch, NNPACK, fft-conv-pytorch) on the
big-image shapes of issue 10: ``python benchmarks/fft_tiled_shapes.py [--cpu] [--repeat 5]``.

Prints the machine and its BLAS kernel (see docs/benchmarks.md), then, per shape, each
row's milliseconds (forward / forward+backward; "–" where a row has no such pass: NNPACK's
backward is PyTorch's, see ``benchmarks/anchors.py``) and fft-tiled's ratios to the faster
of fft and im2col and to each anchor, all measured in one run, in rounds of one call of
each (see :func:`convlab.timing.interleaved_best`). Default: wall time with every thread
(the fastest of ``--repeat`` rounds after a warm-up). ``--cpu``:
single-thread CPU time (``time.process_time``; BLAS, FFTW, convlab's pool and PyTorch, whose
thread count NNPACK takes at its first call, at one thread), which a busy shared machine
disturbs far less than the wall clock.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy  # noqa: F401 (loaded first, so that threadpoolctl finds its BLAS)
import threadpoolctl

# Run as a file, Python puts benchmarks/ on sys.path, not the checkout that holds it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.anchors import anchor_pass, missing, unsupported

BACKENDS = ("fft-tiled", "fft", "im2col")
ANCHORS = ("torch", "nnpack", "fft-conv-pytorch")
ROWS = BACKENDS + ANCHORS


def cell(pair, fmt, width):
    """A (forward, forward+backward) pair as "f / fb", "–" for a pass that is None."""
    parts = [format(v, fmt) if v is not None else "–" for v in pair]
    return f"{parts[0]} /{parts[1]:>{len(format(1.0, fmt))}}".rjust(width)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="single-thread CPU time instead of wall time")
    parser.add_argument("--repeat", type=int, default=5)
    # The anchors are in no extra of pyproject.toml: a row is left out where it cannot run.
    parser.add_argument("--rows", help="comma-separated backends and anchors; default: all of " + ",".join(ROWS)
                        + ", the anchors only where installed")
    args = parser.parse_args()
    if args.cpu:  # before convlab is imported: its chunk pool takes the BLAS threads it finds then
        threadpoolctl.threadpool_limits(1)
    from convlab import fftw, keep_freed_memory, list_backends
    from convlab.bench import kernel_sweep
    from convlab.threads import machine_summary
    from convlab.timing import conv_pass, interleaved_best, output_gradient

    # Asked after parsing, so that --help and usage errors do not import PyTorch (nnpack's check does).
    if args.rows:
        rows = args.rows.split(",")
        for row in rows:
            if row in ANCHORS and (reason := missing(row)):
                parser.error(f"--rows names {row}, which {reason}")
            if row not in ANCHORS and row not in list_backends():
                parser.error(f"--rows names {row!r}, which is neither a backend ({', '.join(list_backends())}) "
                             f"nor an anchor ({', '.join(ANCHORS)})")
    else:
        rows = [r for r in ROWS if r not in ANCHORS or not missing(r)]
    shapes = kernel_sweep([5, 7, 11], n=8, c=3, f=16, size=224) + kernel_sweep([5, 9], n=16, c=16, f=16, size=128)
    keep_freed_memory()  # as the other benchmarks and `convlab train` do (PyTorch gets it too)
    if args.cpu:
        fftw.configure(threads=1)
        if any(r in ANCHORS for r in rows):
            import torch
            torch.set_num_threads(1)
    clock = time.process_time if args.cpu else time.perf_counter
    # Which OpenBLAS kernel ran: its products are fft-tiled's per-bin products too, and
    # OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU moved the k = 7 ratio from 0.60 to 1.04.
    print(machine_summary())
    print(f"{'cpu' if args.cpu else 'wall'} time, ms forward / forward+backward; load {os.getloadavg()[0]:.1f}")
    rivals = [r for r in ("fft", "im2col") if r in rows] if "fft-tiled" in rows else []
    ratio_columns = []  # (label, width, the rows fft-tiled is divided by)
    if rivals:
        label = f"tiled/min({','.join(rivals)})" if len(rivals) > 1 else f"tiled/{rivals[0]}"
        ratio_columns.append((label, 24, rivals))
    if "fft-tiled" in rows:
        ratio_columns += [(f"tiled/{r}", max(14, len(f"tiled/{r}") + 2), [r]) for r in rows if r in ANCHORS]
    print(f"{'shape':<24}" + "".join(f"{r:>18}" for r in rows) + "".join(f"{c:>{w}}" for c, w, _ in ratio_columns))
    for shape in shapes:
        x, w, b = shape.arrays()
        stride, padding = (1, 1), (shape.padding, shape.padding)
        dy = output_gradient(x, w, stride, padding)
        runs = {}
        for row in rows:
            for i, d in enumerate((None, dy)):
                if row not in ANCHORS:
                    runs[row, i] = conv_pass(row, x, w, b, stride, padding, d)
                elif not unsupported(row, w.shape, padding, backward=d is not None):
                    runs[row, i] = anchor_pass(row, x, w, b, padding, d)
        best = interleaved_best(runs, args.repeat, clock)
        times = {row: [best.get((row, i)) for i in (0, 1)] for row in rows}
        cells = [cell([None if t is None else t * 1e3 for t in times[r]], "7.1f", 18) for r in rows]
        for _, width, over in ratio_columns:
            ratios = []
            for i in (0, 1):
                theirs = [times[r][i] for r in over if times[r][i] is not None]
                ratios.append(times["fft-tiled"][i] / min(theirs) if theirs else None)
            cells.append(cell(ratios, "5.2f", width))
        print(f"{shape.label:<24}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
