"""winograd against im2col on the many-channel layers, for each tile size m:
``python benchmarks/winograd_tiles.py [--cpu] [--phases] [--nnpack] [--repeat N]``.

Prints, per layer, im2col's milliseconds and winograd's ratio to them for m = 2, 4, 6,
forward / forward+backward; with ``--nnpack``, NNPACK's forward ratio to them too (the
Winograd anchor: F(6x6, 3x3) on the two 3x3 layers of 16² and 32² images, FFT 16x16 on the
28² ones; forward only, see ``benchmarks/anchors.py``). Default: wall time with every thread, the fastest of ``--repeat``
(7) runs after a warm-up, all the runs of a layer taken in turn (:func:`convlab.timing.interleaved_best`); on a busy
shared machine more runs give the fastest more chances to fall in a quiet moment. ``--cpu``:
single-thread CPU time (``time.process_time``; BLAS and convlab's pool limited to one
thread before convlab is imported), which a busy shared machine disturbs far less.
``--phases``: instead, where winograd's time goes on each layer (default tile): the
:mod:`convlab.profile` table of 20 forward+backward passes (a ReLU in front, so that the
convolution's dx is computed, as in a network's inner layer).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy  # noqa: F401 (loaded first, so that threadpoolctl finds its BLAS)
import threadpoolctl

# Run as a file, Python puts benchmarks/ on sys.path, not the checkout that holds it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.anchors import anchor_pass, missing, unsupported

TILES = (2, 4, 6)


def with_tile(m, run):
    """``run`` with winograd's tile side set to m first."""
    import backends.winograd as winograd

    def tiled():
        winograd.configure(tile=m)
        return run()
    return tiled


def phases(shape, steps=20):
    """The per-phase profile of ``steps`` forward+backward passes of winograd on ``shape``."""
    import numpy as np

    from convlab.layers import Conv2D, ReLU
    from convlab.models import Sequential
    from convlab.profile import count_step, recording

    x, _, _ = shape.arrays()
    model = Sequential(ReLU(), Conv2D(shape.c, shape.f, shape.k, padding=shape.padding, backend="winograd", rng=0))
    dy = np.ones_like(model.forward(x))
    model.backward(dy)
    with recording(model) as profile:
        for _ in range(steps):
            started = time.perf_counter()
            model.forward(x)
            model.backward(dy)
            count_step(time.perf_counter() - started)
    return profile.table(f"{shape.label}: winograd, milliseconds per forward+backward")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="single-thread CPU time instead of wall time")
    parser.add_argument("--phases", action="store_true", help="instead, winograd's time per phase")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs of each configuration (default 7)")
    parser.add_argument("--nnpack", action="store_true", help="NNPACK's forward (in PyTorch) too, taking turns")
    args = parser.parse_args()
    cpu = args.cpu
    # --cpu: BLAS limited before convlab.threads reads its thread count at import (its pool
    # then has one thread too); the limit holds while this object lives.
    limits = threadpoolctl.threadpool_limits(1) if cpu else None  # noqa: F841
    import backends.winograd as winograd
    from convlab import keep_freed_memory
    from convlab.bench import MANY_CHANNEL_LAYERS
    from convlab.threads import machine_summary
    from convlab.timing import conv_pass, interleaved_best, output_gradient

    keep_freed_memory()  # as convlab's commands do
    if args.phases:
        print(machine_summary())
        for shape in MANY_CHANNEL_LAYERS:
            print(phases(shape), flush=True)
        return
    clock = time.process_time if cpu else time.perf_counter
    nnpack = args.nnpack
    if nnpack and (reason := missing("nnpack")):
        parser.error(f"--nnpack: nnpack {reason}")
    if nnpack and cpu:  # NNPACK takes PyTorch's thread count at its first call
        import torch
        torch.set_num_threads(1)
    print(machine_summary())
    print(f"{'cpu' if cpu else 'wall'} time; ratios winograd / im2col, forward / forward+backward"
          + ("; nnpack / im2col, forward only" if nnpack else ""))
    print(f"{'shape':<26}{'im2col ms':>16}" + "".join(f"{f'F({m}x{m})':>16}" for m in TILES)
          + (f"{'nnpack':>16}" if nnpack else ""))
    before = winograd.settings().tile
    for shape in MANY_CHANNEL_LAYERS:
        x, w, b = shape.arrays()
        stride, padding = (1, 1), (shape.padding, shape.padding)
        dy = output_gradient(x, w, stride, padding)
        configs = [("im2col", None)] + [("winograd", m) for m in TILES]
        runs = {}  # (config, 0 forward / 1 forward+backward) -> run
        for backend, m in configs:
            for i, d in enumerate((None, dy)):
                run = conv_pass(backend, x, w, b, stride, padding, d)
                runs[(backend, m), i] = run if m is None else with_tile(m, run)
        anchor = nnpack and not unsupported("nnpack", w.shape, padding, backward=False)
        if anchor:
            runs[("nnpack", None), 0] = anchor_pass("nnpack", x, w, b, padding)
        times = interleaved_best(runs, max(1, args.repeat), clock)
        base = times[("im2col", None), 0], times[("im2col", None), 1]
        cells = [f"{base[0] * 1e3:7.1f} /{base[1] * 1e3:7.1f}"] + [
            f"{times[('winograd', m), 0] / base[0]:7.2f} /{times[('winograd', m), 1] / base[1]:5.2f}" for m in TILES]
        if nnpack:
            cells.append(f"{times[('nnpack', None), 0] / base[0]:7.2f} /{'–':>5}" if anchor else "–")
        print(f"{shape.label:<26}" + "".join(f"{c:>16}" for c in cells), flush=True)
    winograd.configure(tile=before)


if __name__ == "__main__":
    main()
