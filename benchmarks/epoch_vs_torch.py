"""convlab against PyTorch CPU on the reference network, timed in one run.

Two measurements, each printed as a ratio (convlab time / PyTorch time; below 1 means
convlab is faster):

* ``layer``: the MNIST convolution alone, x (64, 1, 28, 28), w (32, 1, 7, 7), padding 1:
  forward + backward, once without the input gradient (as in the network, where the
  first layer needs none) and once with it. Ours goes through the public, checked
  backend API; PyTorch's is ``F.conv2d`` + autograd.
* ``epoch``: one epoch of training on the full training set: conv 1->32 7x7 pad 1 ->
  ReLU -> Flatten -> Dense 18432->10, softmax cross-entropy, SGD with momentum, batches
  of 64. Both networks start from the same weights and see the same batches in the same
  order; every timed step gathers its batch by index, computes the loss, the gradients
  and the update, and counts correct predictions (ours is ``convlab.training.train_step``,
  the step ``convlab train`` runs). The mean losses printed at the end must agree.
  With ``--model`` the epoch trains another network (``lenet5``, ``vgg3x3`` or a spec
  string), its conv layers on the backends ``convlab train --model M --backend B`` would
  use (``auto`` picks per layer), and PyTorch trains the same layers with the same weights.

The machine may be shared, so the two sides take turns: 5 calls a turn for the layer, a
chunk of batches a turn for the epoch (who goes first alternates too), with an untimed
pause before each turn so that neither starts while the other's idle threads still spin
(see ``alternate``). The medians of the per-turn ratios are printed next to the ratio of
the totals.
Threads: numpy's OpenBLAS threads its GEMMs over every core unless ``OPENBLAS_NUM_THREADS``
says otherwise (it is read when numpy is imported), and elementwise numpy is
single-threaded; PyTorch gets the same number of threads, so set the variable to compare
at one thread on both sides.

    python benchmarks/epoch_vs_torch.py                  # both measurements, ~1-3 min
    python benchmarks/epoch_vs_torch.py --only layer     # just the layer, a few seconds
    python benchmarks/epoch_vs_torch.py --train-size 6400 --chunk 20   # a quick epoch
    python benchmarks/epoch_vs_torch.py --only epoch --model lenet5 --backend auto   # another network
    OPENBLAS_NUM_THREADS=1 python benchmarks/epoch_vs_torch.py         # one thread each
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from convlab.data import load_mnist
from convlab.layers import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from convlab.run import build_model
from convlab.settings import TrainSettings
from convlab.optimizers import SGD
from convlab.registry import get_backend
from convlab.training import epoch_order, train_step

BATCH_SIZE, LR, MOMENTUM, SEED = 64, 0.01, 0.9, 0


def torch_twin(model):
    """A PyTorch copy of a convlab ``Sequential``: same layers, same weights (Dense w is transposed)."""
    layers = []
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            f, c, kh, kw = layer.params["w"].shape
            twin = torch.nn.Conv2d(c, f, (kh, kw), stride=layer.stride, padding=layer.padding)
            weights = (layer.params["w"], layer.params["b"])
        elif isinstance(layer, Dense):
            twin = torch.nn.Linear(*layer.params["w"].shape)
            weights = (layer.params["w"].T.copy(), layer.params["b"])
        else:
            pools = {MaxPool2D: torch.nn.MaxPool2d, AvgPool2D: torch.nn.AvgPool2d}
            twin = (pools[type(layer)](layer.kernel_size, layer.stride, layer.padding) if type(layer) in pools
                    else {ReLU: torch.nn.ReLU, Flatten: torch.nn.Flatten}[type(layer)]())
            weights = ()
        with torch.no_grad():
            for param, value in zip((getattr(twin, "weight", None), getattr(twin, "bias", None)), weights):
                param.copy_(torch.from_numpy(value))
        layers.append(twin)
    return torch.nn.Sequential(*layers)


def torch_train_step(net, optimizer, x, y):
    """The PyTorch twin of ``convlab.training.train_step``: returns (loss, number correct)."""
    optimizer.zero_grad(set_to_none=True)
    logits = net(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    optimizer.step()
    return loss.item(), int((logits.argmax(dim=1) == y).sum())


def alternate(ours, theirs, rounds, pause):
    """Time ``ours(i)`` and ``theirs(i)`` for i in range(rounds), taking turns (who goes
    first alternates). Returns the two lists of seconds.

    Before each turn the process sleeps ``pause`` seconds, untimed: both libraries' worker
    threads spin for a while after their last job (OpenBLAS ~0.1 s, OpenMP less), and a
    side that starts while the other's threads still spin finds its cores taken. On a busy
    2-core machine that made the side going second up to 50x slower.
    """
    times = ([], [])
    for i in range(rounds):
        for side in ((0, 1) if i % 2 == 0 else (1, 0)):
            time.sleep(pause)
            started = time.perf_counter()
            (ours, theirs)[side](i)
            times[side].append(time.perf_counter() - started)
    return times


def summarize(label, ours, theirs):
    """Print total times and ratios for paired timings ``ours[i]``, ``theirs[i]``."""
    pair_ratios = [a / b for a, b in zip(ours, theirs)]
    print(f"{label}: convlab {sum(ours):.3f} s, torch {sum(theirs):.3f} s over {len(ours)} pairs; "
          f"ratio of totals {sum(ours) / sum(theirs):.2f}x, median pair ratio {statistics.median(pair_ratios):.2f}x")


def bench_layer(backend, rounds, pause, per_round=5):
    rng = np.random.default_rng(SEED)
    x = rng.random((BATCH_SIZE, 1, 28, 28), dtype=np.float32)
    w = (rng.standard_normal((32, 1, 7, 7)) * 0.2).astype(np.float32)
    b = np.zeros(32, np.float32)
    dy = rng.standard_normal((BATCH_SIZE, 32, 24, 24)).astype(np.float32)
    tw, tb, tdy = (torch.from_numpy(a).requires_grad_() for a in (w, b, dy))

    def ours(need_dx):
        y, cache = backend.forward(x, w, b, 1, 1)
        return backend.backward(dy, cache, need_dx)

    def theirs(need_dx):
        tx = torch.from_numpy(x).requires_grad_(need_dx)
        tw.grad = tb.grad = None
        F.conv2d(tx, tw, tb, padding=1).backward(tdy.detach())

    for need_dx in (False, True):
        ours(need_dx), theirs(need_dx)  # warm-up
        times = alternate(lambda i: [ours(need_dx) for _ in range(per_round)],
                          lambda i: [theirs(need_dx) for _ in range(per_round)], rounds, pause)
        summarize(f"MNIST layer forward+backward {'with' if need_dx else 'without'} dx ({backend.name}, "
                  f"{per_round} calls a turn)", *times)


def bench_epoch(backend_name, train_size, chunk, pause, model_name="reference"):
    data = load_mnist()
    x, y = data.x_train[:train_size], data.y_train[:train_size]
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    # The network `convlab train --model M --backend B` trains, conv layers pinned as it pins them.
    model, settings = build_model(TrainSettings(model=model_name, backend=backend_name, seed=SEED))
    backend_name = settings.backends
    net = torch_twin(model)
    ours_opt = SGD(model, lr=LR, momentum=MOMENTUM)
    torch_opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    order = epoch_order(len(x), SEED, 1)
    chunks = [[order[i:i + BATCH_SIZE] for i in range(start, min(start + chunk * BATCH_SIZE, len(x)), BATCH_SIZE)]
              for start in range(0, len(x), chunk * BATCH_SIZE)]
    ours_losses, torch_losses = [], []

    def run_ours(i):
        ours_losses.extend(train_step(model, ours_opt, x[idx], y[idx])[0] for idx in chunks[i])

    def run_torch(i):
        torch_losses.extend(torch_train_step(net, torch_opt, tx[idx], ty[idx])[0]
                            for idx in map(torch.from_numpy, chunks[i]))

    times = alternate(run_ours, run_torch, len(chunks), pause)
    summarize(f"one epoch of {model_name}, {len(x)} images, batch {BATCH_SIZE} ({backend_name})", *times)
    print(f"mean training loss: convlab {np.mean(ours_losses):.4f}, torch {np.mean(torch_losses):.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="im2col", help="convlab backend to time (default im2col)")
    parser.add_argument("--only", choices=["layer", "epoch"], help="run just one of the two measurements")
    parser.add_argument("--model", default="reference",
                        help="network of the epoch: a name (`convlab models`) or a spec string (default reference); "
                             "--backend may then be auto or one name per conv layer, as for `convlab train`")
    parser.add_argument("--train-size", type=int, default=60000, help="training images in the epoch (default all)")
    parser.add_argument("--chunk", type=int, default=50, help="batches per alternation chunk (default 50)")
    parser.add_argument("--rounds", type=int, default=10, help="layer turns per side, 5 calls each (default 10)")
    parser.add_argument("--pause", type=float, default=0.5, help="untimed seconds before each turn (default 0.5)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(int(os.environ.get("OPENBLAS_NUM_THREADS", cores)))
    blas_env = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL_"))}
    print(f"cores {cores}, torch {torch.__version__} threads {torch.get_num_threads()}, numpy {np.__version__}, "
          f"BLAS/OpenMP environment {blas_env or 'unset'}")
    if args.only in (None, "layer"):
        backend = get_backend(args.backend)
        bench_layer(backend, args.rounds, args.pause)
    if args.only in (None, "epoch"):
        bench_epoch(args.backend, args.train_size, args.chunk, args.pause, args.model)


if __name__ == "__main__":
    main()
