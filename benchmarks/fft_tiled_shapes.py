"""fft-tiled against fft, im2col and PyTorch on the big-image shapes of issue 10:
``python benchmarks/fft_tiled_shapes.py [--cpu] [--repeat 5]``.

Prints the machine and its BLAS kernel (see docs/benchmarks.md), then, per shape, each
backend's milliseconds (forward / forward+backward) and fft-tiled's ratios to the faster of
fft and im2col and to PyTorch, all measured in one run, in rounds of one call of each (see :func:`convlab.timing.interleaved_best`). Default: wall time with every thread
(the fastest of ``--repeat`` rounds after a warm-up). ``--cpu``:
single-thread CPU time (``time.process_time``; BLAS, FFTW, convlab's pool and PyTorch at
one thread), which a busy shared machine disturbs far less than the wall clock.
"""

import argparse
import importlib.util
import os
import time

import numpy  # noqa: F401 (loaded first, so that threadpoolctl finds its BLAS)
import threadpoolctl

ROWS = ("fft-tiled", "fft", "im2col", "torch")


def torch_pass(x, w, b, padding, dy):
    import torch

    xt, wt, bt = (torch.from_numpy(a).requires_grad_(dy is not None) for a in (x, w, b))

    def run():
        y = torch.nn.functional.conv2d(xt, wt, bt, padding=padding)
        if dy is None:
            return y
        return torch.autograd.grad(y, (xt, wt, bt), torch.from_numpy(dy))

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="single-thread CPU time instead of wall time")
    parser.add_argument("--repeat", type=int, default=5)
    # PyTorch is a reference in no extra of pyproject.toml: its row is left out where it is not installed.
    has_torch = importlib.util.find_spec("torch") is not None
    parser.add_argument("--rows", default=",".join(r for r in ROWS if r != "torch" or has_torch),
                        help="comma-separated backends (and torch); default: all of " + ",".join(ROWS)
                        + ", torch only if installed")
    args = parser.parse_args()
    rows = args.rows.split(",")
    if "torch" in rows and not has_torch:
        parser.error("--rows names torch, which is not installed: pip install torch==2.13.0 (a CPU build)")
    if args.cpu:  # before convlab is imported: its chunk pool takes the BLAS threads it finds then
        threadpoolctl.threadpool_limits(1)
    from convlab import fftw, keep_freed_memory
    from convlab.bench import kernel_sweep
    from convlab.threads import machine_summary
    from convlab.timing import conv_pass, interleaved_best, output_gradient

    shapes = kernel_sweep([5, 7, 11], n=8, c=3, f=16, size=224) + kernel_sweep([5, 9], n=16, c=16, f=16, size=128)
    keep_freed_memory()  # as the other benchmarks and `convlab train` do (PyTorch gets it too)
    if args.cpu:
        fftw.configure(threads=1)
        if "torch" in rows:
            import torch
            torch.set_num_threads(1)
    clock = time.process_time if args.cpu else time.perf_counter
    # Which OpenBLAS kernel ran: its products are fft-tiled's per-bin products too, and
    # OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU moved the k = 7 ratio from 0.60 to 1.04.
    print(machine_summary())
    print(f"{'cpu' if args.cpu else 'wall'} time, ms forward / forward+backward; load {os.getloadavg()[0]:.1f}")
    rivals = [r for r in ("fft", "im2col") if r in rows] if "fft-tiled" in rows else []
    rival_label = f"tiled/min({','.join(rivals)})" if len(rivals) > 1 else "".join(f"tiled/{r}" for r in rivals)
    torch_label = "tiled/torch" if "fft-tiled" in rows and "torch" in rows else ""
    print(f"{'shape':<24}" + "".join(f"{r:>18}" for r in rows) + (f"{rival_label:>24}" if rivals else "")
          + (f"{torch_label:>14}" if torch_label else ""))
    for shape in shapes:
        x, w, b = shape.arrays()
        stride, padding = (1, 1), (shape.padding, shape.padding)
        dy = output_gradient(x, w, stride, padding)
        runs = {(row, i): torch_pass(x, w, b, padding, d) if row == "torch" else conv_pass(row, x, w, b, stride, padding, d)
                for row in rows for i, d in enumerate((None, dy))}
        best = interleaved_best(runs, args.repeat, clock)
        times = {row: [best[row, 0], best[row, 1]] for row in rows}
        cells = [f"{times[r][0] * 1e3:7.1f} /{times[r][1] * 1e3:7.1f}" for r in rows]
        ratios = ""
        if rivals:
            fastest = [min(times[r][i] for r in rivals) for i in (0, 1)]
            ratios += f"{times['fft-tiled'][0] / fastest[0]:17.2f} /{times['fft-tiled'][1] / fastest[1]:5.2f}"
        if torch_label:
            ratios += f"{times['fft-tiled'][0] / times['torch'][0]:7.2f} /{times['fft-tiled'][1] / times['torch'][1]:5.2f}"
        print(f"{shape.label:<24}" + "".join(f"{c:>18}" for c in cells) + ratios, flush=True)


if __name__ == "__main__":
    main()
