"""Floors: the part of an algorithm that no rearrangement around it removes, timed alone
in one run with what it is compared with, so that a target ratio can be told reachable or
not on this machine.

Sides take turns as in ``epoch_vs_torch.py`` (its ``alternate``: an untimed pause and
busy-wait before each turn, who goes first rotating); printed are the medians per call.

* ``layer``: the MNIST layer's forward (x (64, 1, 28, 28), w (32, 1, 7, 7), padding 1) by
  PyTorch's ``F.conv2d`` (no autograd), by ``im2col``'s inference pass, and by that pass's
  GEMMs alone: the same per-image products (32 x 50 by 50 x 576, the bias a column of the
  filters), in the same chunks on the same threads, on windows unrolled before the clock
  starts. An im2col forward's ratio to PyTorch cannot go below its GEMMs' ratio, whatever
  its unroll costs.
* ``step``: a training step of the reference network (batch 64, as
  ``benchmarks/test_training_step.py``) by ``im2col`` and by ``fft``; ``im2col``'s
  convolution alone as the step runs it (the forward with its ReLU, the backward without
  dx, from a plain dy); and ``fft``'s FFTW transforms alone: the plans ``fft`` executes in
  that step (64 input spectra, 32 kernel spectra, 64 x 32 inverse transforms of the
  products, 64 x 32 spectra of dy, 32 inverse transforms for dw), in its tiles on its
  threads, executed on zeros, nothing else. ``fft``'s step does what ``im2col``'s does
  outside the convolution (the dense layer, the loss, the update, forming dy) plus at
  least those transforms, so ``(im2col step - im2col convolution + fft transforms) /
  im2col step`` bounds ``fft / im2col`` from below. A second, higher bound adds to
  the transforms the one numpy call each of them needs at least around it (the products
  before an inverse transform, the crop with the ReLU after it, dy placed in the grid
  with the ReLU's gradient): see :func:`transforms_of_a_step`.

The batch is random, so no data set is needed; it has no windows of zeros, which spares
``fft`` its snap to the bias (``convlab.exact``) that MNIST's background costs it: its
step here is a little faster than in a real epoch (``epoch_vs_torch.py --backend
im2col,fft``). Threads as in ``epoch_vs_torch.py``: as many as numpy's OpenBLAS was started
with, PyTorch the same.

    python benchmarks/floors.py                  # both, ~1 min
    python benchmarks/floors.py --only layer     # a few seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    raise SystemExit("this benchmark compares convlab with PyTorch, which is not installed: "
                     "pip install torch==2.13.0 (a CPU build)") from None

import convlab
from convlab import fftw, keep_freed_memory
from convlab.registry import get_backend
from convlab.relu import relu_block, relu_gradient_block
from convlab.threads import chunk_bounds, machine_summary, share_chunks
from convlab.training import train_step

# Run as a file, Python puts benchmarks/ on sys.path, not the checkout that holds it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backends.fft import dy_spectra, fft_shape_for  # noqa: E402  (the fft backend's own choices)
from backends.im2col import INFERENCE_CHUNK_BYTES, images_per_chunk, windows  # noqa: E402
from benchmarks.epoch_vs_torch import alternate  # noqa: E402
from benchmarks.reference_run import BATCH_SIZE, LR, MOMENTUM, SEED  # noqa: E402

X_SHAPE, W_SHAPE, PADDING = (BATCH_SIZE, 1, 28, 28), (32, 1, 7, 7), 1


def mnist_layer_arrays():
    """Random float32 x, w, b of the MNIST layer."""
    rng = np.random.default_rng(SEED)
    return (rng.random(X_SHAPE, dtype=np.float32), rng.random(W_SHAPE, dtype=np.float32) - 0.5,
            rng.random(W_SHAPE[0], dtype=np.float32))


def unrolled_windows(x, w, b):
    """(w_aug (F, K + 1), cols (N, K + 1, OH * OW)): im2col's operands, the bias a column of
    the filters against a row of ones, unrolled here rather than in the timed calls."""
    n, f = x.shape[0], w.shape[0]
    padded = np.pad(x, ((0, 0), (0, 0), (PADDING, PADDING), (PADDING, PADDING)))
    cols = windows(padded, w.shape[2:], (1, 1)).reshape(n, w[0].size, -1)  # im2col's own view, copied
    cols = np.concatenate([cols, np.ones((n, 1, cols.shape[2]), x.dtype)], axis=1)
    return np.concatenate([w.reshape(f, -1), b[:, None]], axis=1), cols


def bench_layer(rounds, pause, warm, per_round=20):
    """Medians per call of PyTorch's forward, im2col's inference pass and its GEMMs alone."""
    x, w, b = mnist_layer_arrays()
    backend = get_backend("im2col")
    w_aug, cols = unrolled_windows(x, w, b)
    y = np.empty((x.shape[0], w.shape[0], cols.shape[2]), x.dtype)
    per_chunk = images_per_chunk(cols.shape[1] - 1, w.shape[0], cols.shape[2], x.itemsize, INFERENCE_CHUNK_BYTES)
    chunks = chunk_bounds(x.shape[0], per_chunk)
    xt, wt, bt = map(torch.from_numpy, (x, w, b))

    def torch_forward():
        with torch.no_grad():
            F.conv2d(xt, wt, bt, padding=PADDING)

    def gemms_alone():
        share_chunks(lambda _, lo, hi: np.matmul(w_aug, cols[lo:hi], out=y[lo:hi]), chunks)

    gemms_alone()  # they give the layer's output
    np.testing.assert_allclose(y, backend.inference(x, w, b, (1, 1), (PADDING, PADDING)).reshape(y.shape),
                               rtol=1e-4, atol=1e-4)
    sides = {"PyTorch F.conv2d": torch_forward,
             "im2col inference pass": lambda: backend.inference(x, w, b, (1, 1), (PADDING, PADDING)),
             "its GEMMs alone": gemms_alone}
    medians = timed_in_turns(sides, rounds, pause, warm, per_round)
    report(f"MNIST layer forward, {per_round} calls a turn, {rounds} turns", medians, "PyTorch F.conv2d")
    print(f"  floor: an im2col forward takes at least {medians['its GEMMs alone'] / medians['PyTorch F.conv2d']:.2f}x "
          f"PyTorch's time here (its GEMMs alone), {medians['im2col inference pass'] / medians['PyTorch F.conv2d']:.2f}x "
          f"with its unroll", flush=True)


def bench_step(rounds, pause, warm, per_round=10):
    """Medians per step of im2col's and fft's training steps, of im2col's convolution in
    the step, of fft's transforms alone and with their least passes, and the floors they
    give fft / im2col."""
    rng = np.random.default_rng(SEED)
    x, labels = rng.random(X_SHAPE, dtype=np.float32), rng.integers(0, 10, BATCH_SIZE)
    sides = {name: training_steps(name, x, labels) for name in ("im2col", "fft")}
    sides["im2col convolution alone"] = convolution_passes("im2col", x)
    sides["fft transforms alone"] = transforms_of_a_step(x.shape, W_SHAPE)
    sides["fft transforms, least passes"] = transforms_of_a_step(x.shape, W_SHAPE, least_passes=True)
    medians = timed_in_turns(sides, rounds, pause, warm, per_round)
    report(f"training step of the reference network, batch {BATCH_SIZE}, {per_round} steps a turn, {rounds} turns",
           medians, "im2col")
    outside = medians["im2col"] - medians["im2col convolution alone"]
    measured = medians["fft"] / medians["im2col"]
    for side, what in (("fft transforms alone", "fft's transforms"),
                       ("fft transforms, least passes", "fft's transforms and least passes")):
        print(f"  floor: fft / im2col >= (im2col step - its convolution + {what}) / im2col step = "
              f"{(outside + medians[side]) / medians['im2col']:.2f} (measured: {measured:.2f})", flush=True)


def training_steps(backend, x, labels):
    """One training step of the reference network on ``backend`` per call (the weights go
    on training: a step's time does not depend on them)."""
    model = convlab.reference_net(seed=SEED, backend=backend)
    optimizer = convlab.SGD(model, lr=LR, momentum=MOMENTUM)
    return lambda: train_step(model, optimizer, x, labels)


def convolution_passes(backend_name, x):
    """The reference network's convolution as a training step runs it: the forward with its
    ReLU fused, the backward without dx, from a plain dy."""
    backend = get_backend(backend_name)
    layer = convlab.reference_net(seed=SEED).layers[0]
    w, b = layer.params["w"], layer.params["b"]
    dy = np.random.default_rng(SEED).standard_normal((x.shape[0], w.shape[0], 24, 24), dtype=np.float32)

    def passes():
        _, cache = backend.forward(x, w, b, (1, 1), (PADDING, PADDING), relu=True)
        backend.backward(dy, cache, need_dx=False)

    return passes


def transforms_of_a_step(x_shape, w_shape, least_passes=False):
    """The FFTW plans ``fft`` executes in one training step of the layer (x_shape, w_shape)
    without dx, executed on zeros in ``fft``'s tiles and threads, nothing else: the
    input's spectra (N x C), the kernel's (F x C), the forward's inverse transforms (N x F),
    dy's spectra (N x F) and dw's inverse transforms (F x C).

    With ``least_passes``, each transform that has data to take or give also gets the one
    numpy call that it needs at least, as ``fft`` makes it, on the tile it works on:

    - the forward's inverse transforms: before each, the tile's per-bin products written
      into its input (``binwise_matmul``); after, its outputs cropped with the ReLU, one
      ``np.maximum`` (``fft`` crops, then snaps to the bias, then applies the ReLU);
    - dy's spectra: before each, the tile's dy written into the grid with the ReLU's
      gradient, one multiply (as ``fft``; im2col's convolution pays the same gradient);
    - dw's inverse transforms: before, their per-bin products, one batched matmul on dy's
      spectra taken as already in one bin-major array (``fft`` copies them there out of the
      tiles' buffers: that copy is left out).

    Left out as well: x's and w's placement in their grids, the snap to the bias (random
    data has no windows of zeros), db, and Python between the calls. What is timed is a
    lower bound on ``fft``'s convolution in numpy, not a way to compute it: the values are
    zeros throughout."""
    (n, c, h, width), (f, _, kh, kw) = x_shape, w_shape
    grid = fft_shape_for((h + 2 * PADDING, width + 2 * PADDING))
    oh, ow = h + 2 * PADDING - kh + 1, width + 2 * PADDING - kw + 1
    bins = grid[0] * (grid[1] // 2 + 1)
    dy = np.zeros((n, f, oh, ow), np.float32)
    y = np.zeros_like(dy)
    x_spec, w_spec = np.zeros((n, c, bins), np.complex64), np.zeros((c, f, bins), np.complex64)
    bins_first = fftw.is_bin_major(dy_spectra(dy, slice(0, oh), slice(0, ow), grid, None, c))  # as fft makes them
    dy_spec = (np.zeros((bins, n, f), np.complex64).transpose(2, 1, 0) if bins_first  # (F, N, bins)
               else np.zeros((f, n, bins), np.complex64))

    def products(lo, hi, plan):  # the forward's inverse transforms take them
        fftw.binwise_matmul(x_spec[lo:hi], w_spec, out=plan.input.reshape(hi - lo, f, bins))

    def crop_and_relu(lo, hi, plan):
        relu_block(plan.fftw.output_array[:, :, kh - 1:kh - 1 + oh, kw - 1:kw - 1 + ow], y[lo:hi])

    def dy_into_grid(lo, hi, plan):
        relu_gradient_block(dy[lo:hi], y[lo:hi], plan.input[:, :, :oh, :ow])

    def dw_products(lo, hi, plan):
        fftw.binwise_matmul(dy_spec, np.conj(x_spec), out=plan.input.reshape(f, c, bins))

    def least(before, after=None):
        """The passes run (before, after) a transform, if asked for."""
        return (before, after) if least_passes else (None, None)

    batches = [("FFTW_FORWARD", n, c, fftw.TILE_POINTS, False, (None, None)),  # x's spectra
               ("FFTW_FORWARD", f, c, fftw.TILE_POINTS, False, (None, None)),  # w's
               ("FFTW_BACKWARD", n, f, fftw.TILE_POINTS, False, least(products, crop_and_relu)),
               ("FFTW_FORWARD", n, f, fftw.BINS_FIRST_TILE_POINTS if bins_first else fftw.TILE_POINTS, bins_first,
                least(dy_into_grid)),
               ("FFTW_BACKWARD", f, c, None, False, least(dw_products))]  # in one piece: its products are matmuls
    zeroed = set()

    def execute(direction, columns, bins_first, passes):
        before, after = passes

        def work(index, lo, hi, slot):
            plan = fftw.plan(direction, (hi - lo, columns), grid, np.float32, slot, bins_first)
            if id(plan) not in zeroed:  # FFTW takes as long on any finite values
                plan.input.fill(0)
                zeroed.add(id(plan))
            if before:
                before(lo, hi, plan)
            plan.fftw.execute()
            if after:
                after(lo, hi, plan)
        return work

    def transforms():
        for direction, rows, columns, points, bins_first, passes in batches:
            tile_rows = rows if points is None else fftw.rows_per_tile(columns, grid, points)
            fftw.run_tiles(execute(direction, columns, bins_first, passes), rows, tile_rows)

    return transforms


def timed_in_turns(sides, rounds, pause, warm, per_round):
    """{name: median seconds per call} of the ``sides`` (name: function), ``per_round``
    calls a turn, after ``per_round`` untimed calls each."""
    for side in sides.values():
        for _ in range(per_round):
            side()
    times = alternate([lambda i, side=side: [side() for _ in range(per_round)] for side in sides.values()],
                      rounds, pause, warm)
    return {name: statistics.median(times) / per_round for name, times in zip(sides, times)}


def report(title, medians, reference):
    print(title + ":")
    for name, seconds in medians.items():
        print(f"  {name:28s} {seconds * 1e3:8.3f} ms  {seconds / medians[reference]:5.2f}x {reference}")


def main():
    keep_freed_memory()  # as `convlab train` does
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["layer", "step"], help="run just one of the two measurements")
    parser.add_argument("--rounds", type=int, default=12, help="turns per side (default 12)")
    parser.add_argument("--pause", type=float, default=0.5, help="untimed seconds before each turn (default 0.5)")
    parser.add_argument("--warm", type=float, default=0.1,
                        help="untimed seconds of busy-waiting after each pause (default 0.1)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be a whole number >= 1, got {args.rounds}")
    for option, value in (("--pause", args.pause), ("--warm", args.warm)):
        if not value >= 0:
            parser.error(f"{option} must be a number of seconds >= 0, got {value}")
    torch.set_num_threads(int(os.environ.get("OPENBLAS_NUM_THREADS", len(os.sched_getaffinity(0)))))
    print(machine_summary())
    print(f"torch {torch.__version__} threads {torch.get_num_threads()}", flush=True)
    if args.only in (None, "layer"):
        bench_layer(args.rounds, args.pause, args.warm)
    if args.only in (None, "step"):
        bench_step(args.rounds, args.pause, args.warm)


if __name__ == "__main__":
    main()
