"""convlab against PyTorch CPU on the reference network, timed in one run.

Two measurements, each printed as a ratio (convlab time / PyTorch time; below 1 means
convlab is faster):

* ``layer``: the MNIST convolution alone, x (64, 1, 28, 28), w (32, 1, 7, 7), padding 1:
  the forward alone, then forward + backward, once without the input gradient (as in
  the network, where the first layer needs none) and once with it. Ours goes through the
  public, checked backend API; PyTorch's is ``F.conv2d`` (without autograd for the
  forward alone, with it otherwise).
* ``epoch``: one epoch of training on the full training set: conv 1->32 7x7 pad 1 ->
  ReLU -> Flatten -> Dense 18432->10, softmax cross-entropy, SGD with momentum, batches
  of 64. Both networks start from the same weights and see the same batches in the same
  order; every timed step gathers its batch by index, computes the loss, the gradients
  and the update, and counts correct predictions (ours is ``convlab.training.train_step``,
  the step ``convlab train`` runs). The mean losses printed at the end must agree. With
  several backends (``--backend im2col,fft``) each trains its own copy, and each later
  one's epoch is also compared with the first's. With ``--model`` the epoch trains another
  network (``lenet5``, ``vgg3x3`` or a spec string), each backend on all its conv layers as
  ``convlab train --model M --backend B`` would put it (``auto`` picks per layer), and
  PyTorch trains the same layers with the same weights.

PyTorch runs in this process, which calls ``convlab.keep_freed_memory()`` as ``convlab
train`` does, so PyTorch gets that allocator setting too (it makes it faster); with
``--torch-process own`` (or ``both``) the epoch's PyTorch runs in a fresh process of its own
instead (or as well), as a user runs it, taking its turns like any other side.

The first line printed names the machine (CPU, cores, numpy's BLAS, FFTW). The machine
may be shared, so the sides take turns: 5 calls a turn for the layer, a chunk of batches
a turn for the epoch (who goes first rotates too), with an untimed pause before each turn
so that none starts while another's idle threads still spin, then an untimed busy-wait so
that none starts on cores slowed by that idle pause (see ``alternate``). The
medians of the per-turn ratios are printed next to the ratio of the totals.
Threads: convlab shares its layers' work among as many threads as numpy's OpenBLAS was
started with (every core, unless ``OPENBLAS_NUM_THREADS`` says otherwise; it is read
when numpy is imported), BLAS itself on one thread; PyTorch gets the same number of
threads, so set the variable to compare at one thread on both sides.

    python benchmarks/epoch_vs_torch.py                  # both measurements, ~1-3 min
    python benchmarks/epoch_vs_torch.py --only layer     # just the layer, a few seconds
    python benchmarks/epoch_vs_torch.py --backend im2col,fft --only epoch   # fft against im2col too
    python benchmarks/epoch_vs_torch.py --train-size 6400 --chunk 20   # a quick epoch
    python benchmarks/epoch_vs_torch.py --only epoch --model lenet5 --backend auto   # another network
    python benchmarks/epoch_vs_torch.py --only epoch --torch-process both   # PyTorch also in its own process
    OPENBLAS_NUM_THREADS=1 python benchmarks/epoch_vs_torch.py         # one thread each
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    raise SystemExit("this benchmark compares convlab with PyTorch, which is not installed: "
                     "pip install torch==2.13.0 (a CPU build)") from None

from convlab import keep_freed_memory
from convlab.data import load_mnist
from convlab.layers import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from convlab.models import get_model
from convlab.run import build_model
from convlab.settings import TrainSettings
from convlab.optimizers import SGD
from convlab.registry import get_backend
from convlab.threads import machine_summary
from convlab.training import epoch_order, train_step

# Run as a file, Python puts benchmarks/ on sys.path, not the checkout that holds it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reference_run import BATCH_SIZE, LR, MOMENTUM, SEED


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


def alternate(sides, rounds, pause, warm=0.0):
    """Time each of ``sides`` (functions of i) for i in range(rounds), taking turns (who
    goes first rotates). Returns one list of seconds per side.

    Before each turn the process sleeps ``pause`` seconds, untimed: worker threads may spin
    for a while after their last job (OpenBLAS ~0.1 s, OpenMP less), and a side that starts
    while another's threads still spin finds its cores taken. On a busy 2-core machine that
    made the side going second up to 50x slower.

    Then it keeps the calling thread busy ``warm`` seconds, untimed (:func:`busy_wait`):
    after the pause's idle the cores start slow. On a 2-core AMD EPYC Zen 3 VM (2026-12-03)
    the first three training steps after a 0.5 s sleep took 1.4-1.6x a step of the middle
    of a turn, the fourth 1.05x (im2col: 15.0, 15.9, 16.1, 11.0 ms, then 10-10.8; medians
    of 12 turns), on either side (PyTorch's extra time per turn 13 ms, convlab's 20 ms), and
    not after PyTorch's own steps with no sleep between. A real epoch never idles between
    its steps. After the sleep and 0.1 s of busy-waiting in one thread: 10.9, 10.0, 9.7,
    then 9.2-9.5 ms. The busy-wait runs in this process: whether a PyTorch side in a process
    of its own (``--torch-process own``) still starts slow was not measured.
    """
    times = [[] for _ in sides]
    for i in range(rounds):
        for j in range(len(sides)):
            side = (i + j) % len(sides)
            time.sleep(pause)
            busy_wait(warm)
            started = time.perf_counter()
            sides[side](i)
            times[side].append(time.perf_counter() - started)
    return times


def busy_wait(seconds):
    """Spin in this thread for ``seconds``: a core kept busy, unlike ``time.sleep``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def summarize(label, ours, theirs, reference="torch"):
    """Print total times and ratios for paired timings ``ours[i]``, ``theirs[i]``."""
    pair_ratios = [a / b for a, b in zip(ours, theirs)]
    print(f"{label}: convlab {sum(ours):.3f} s, {reference} {sum(theirs):.3f} s over {len(ours)} pairs; "
          f"ratio of totals {sum(ours) / sum(theirs):.2f}x, median pair ratio {statistics.median(pair_ratios):.2f}x",
          flush=True)


def bench_layer(backend, rounds, pause, warm, per_round=5):
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
        times = alternate([lambda i: [ours(need_dx) for _ in range(per_round)],
                           lambda i: [theirs(need_dx) for _ in range(per_round)]], rounds, pause, warm)
        summarize(f"MNIST layer forward+backward {'with' if need_dx else 'without'} dx ({backend.name}, "
                  f"{per_round} calls a turn)", *times)


def bench_layer_forward(backend, rounds, pause, warm, per_round=20):
    """The MNIST layer's forward alone, keeping nothing for a backward on either side:
    convlab's inference pass, PyTorch without autograd."""
    rng = np.random.default_rng(SEED)
    x = rng.random((BATCH_SIZE, 1, 28, 28), dtype=np.float32)
    w = (rng.standard_normal((32, 1, 7, 7)) * 0.2).astype(np.float32)
    b = np.zeros(32, np.float32)
    tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))

    def theirs():
        with torch.no_grad():
            return F.conv2d(tx, tw, tb, padding=1)

    backend.inference(x, w, b, 1, 1), theirs()  # warm-up
    times = alternate([lambda i: [backend.inference(x, w, b, 1, 1) for _ in range(per_round)],
                       lambda i: [theirs() for _ in range(per_round)]], rounds, pause, warm)
    summarize(f"MNIST layer forward ({backend.name}, {per_round} calls a turn)", *times)


def epoch_data(train_size, chunk):
    """The training images and labels of the epoch, and its batches' indices grouped in
    chunks of ``chunk`` batches (one turn each)."""
    data = load_mnist()
    x, y = data.x_train[:train_size], data.y_train[:train_size]
    order = epoch_order(len(x), SEED, 1)
    chunks = [[order[i:i + BATCH_SIZE] for i in range(start, min(start + chunk * BATCH_SIZE, len(x)), BATCH_SIZE)]
              for start in range(0, len(x), chunk * BATCH_SIZE)]
    return x, y, chunks


class TorchSide:
    """PyTorch's twin network training chunk after chunk (``side(i)`` runs chunk i); its
    losses go to ``losses``."""

    def __init__(self, model_name, train_size, chunk):
        x, y, self.chunks = epoch_data(train_size, chunk)
        self.tx, self.ty = torch.from_numpy(x), torch.from_numpy(y)
        self.net = torch_twin(get_model(model_name).build(seed=SEED))
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM)
        self.losses = []

    def __call__(self, i):
        self.losses.extend(torch_train_step(self.net, self.optimizer, self.tx[idx], self.ty[idx])[0]
                           for idx in map(torch.from_numpy, self.chunks[i]))


def torch_in_own_process(conn, model_name, train_size, chunk, threads):
    """PyTorch's side in a process of its own, started fresh (``spawn``): no
    ``keep_freed_memory()``, PyTorch as a user runs it. Runs chunk i for each i received,
    answers with the chunk's losses, until it receives None."""
    torch.set_num_threads(threads)
    side = TorchSide(model_name, train_size, chunk)
    while (i := conn.recv()) is not None:
        side(i)
        conn.send(side.losses[-len(side.chunks[i]):])


class TorchElsewhere:
    """A :class:`TorchSide` run in its own process (see :func:`torch_in_own_process`); the
    parent's timing of a chunk includes a pipe round trip (well under a millisecond)."""

    def __init__(self, model_name, train_size, chunk):
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=torch_in_own_process, daemon=True,
                                       args=(child_conn, model_name, train_size, chunk, torch.get_num_threads()))
        self.process.start()
        self.losses = []

    def __call__(self, i):
        self.conn.send(i)
        self.losses.extend(self.conn.recv())

    def close(self):
        self.conn.send(None)
        self.process.join()


def bench_epoch(backend_names, train_size, chunk, pause, warm, model_name="reference", torch_process="same"):
    """One epoch per backend and one of PyTorch, all taking turns chunk by chunk. PyTorch
    runs in this process (``torch_process="same"``), in one of its own (``"own"``), or both."""
    x, y, chunks = epoch_data(train_size, chunk)
    torch_sides = {}
    if torch_process in ("same", "both"):
        torch_sides["torch"] = TorchSide(model_name, train_size, chunk)
    if torch_process in ("own", "both"):
        torch_sides["torch (own process)"] = TorchElsewhere(model_name, train_size, chunk)
    sides, losses = [], {}
    for name in backend_names:
        # The network `convlab train --model M --backend B` trains, conv layers pinned as it pins them.
        # Not memory-checked: the data set is loaded already, and the check would count it again.
        model, _ = build_model(TrainSettings(model=model_name, backend=name, seed=SEED, memory_check=False))
        optimizer = SGD(model, lr=LR, momentum=MOMENTUM)
        losses[name] = []

        def run_ours(i, model=model, optimizer=optimizer, out=losses[name]):
            out.extend(train_step(model, optimizer, x[idx], y[idx])[0] for idx in chunks[i])

        sides.append(run_ours)

    times = alternate(sides + list(torch_sides.values()), len(chunks), pause, warm)
    ours, theirs = times[:len(sides)], dict(zip(torch_sides, times[len(sides):]))
    for reference, reference_times in theirs.items():
        for name, times in zip(backend_names, ours):
            summarize(f"one epoch of {model_name}, {len(x)} images, batch {BATCH_SIZE} ({name})", times,
                      reference_times, reference)
    for name, times in zip(backend_names[1:], ours[1:]):
        summarize(f"one epoch, {name} against {backend_names[0]}", times, ours[0], backend_names[0])
    print("mean training loss: " + ", ".join(f"convlab {name} {np.mean(losses[name]):.4f}" for name in backend_names)
          + "".join(f", {reference} {np.mean(side.losses):.4f}" for reference, side in torch_sides.items()))
    for side in torch_sides.values():
        getattr(side, "close", lambda: None)()


def main():
    keep_freed_memory()  # as `convlab train` does; PyTorch, in the same process, gets it too
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="im2col",
                        help="convlab backend(s) to time, comma-separated (default im2col); the layer is timed "
                             "with the first, the epoch with each, and each later one is compared with the first")
    parser.add_argument("--only", choices=["layer", "epoch"], help="run just one of the two measurements")
    parser.add_argument("--model", default="reference",
                        help="network of the epoch: a name (`convlab models`) or a spec string (default reference); "
                             "each --backend runs on every conv layer (auto: picks per layer, as `convlab train` does)")
    parser.add_argument("--train-size", type=int, default=60000, help="training images in the epoch (default all)")
    parser.add_argument("--chunk", type=int, default=50, help="batches per alternation chunk (default 50)")
    parser.add_argument("--rounds", type=int, default=10, help="layer turns per side: 20 calls each for the forward, 5 for forward+backward (default 10)")
    parser.add_argument("--pause", type=float, default=0.5, help="untimed seconds before each turn (default 0.5)")
    parser.add_argument("--warm", type=float, default=0.1,
                        help="untimed seconds of busy-waiting after each pause, so that no turn starts on idle, "
                             "slowed cores (default 0.1; 0 for none, as before 0.14.0)")
    parser.add_argument("--torch-process", choices=["same", "own", "both"], default="same",
                        help="the epoch's PyTorch in this process, which has convlab's keep_freed_memory() "
                             "(same, the default), in a fresh process of its own, as a user runs it (own), or both")
    args = parser.parse_args()
    for option, value in (("--pause", args.pause), ("--warm", args.warm)):
        if not value >= 0:  # a negative (or NaN) time: time.sleep would fail late, a busy-wait do nothing
            parser.error(f"{option} must be a number of seconds >= 0, got {value}")
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(int(os.environ.get("OPENBLAS_NUM_THREADS", cores)))
    blas_env = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL_"))}
    backends = [get_backend(name.strip()) for name in args.backend.split(",")]
    print(machine_summary())
    print(f"torch {torch.__version__} threads {torch.get_num_threads()}, BLAS/OpenMP environment {blas_env or 'unset'}",
          flush=True)
    if args.only in (None, "layer"):
        bench_layer_forward(backends[0], args.rounds, args.pause, args.warm)
        bench_layer(backends[0], args.rounds, args.pause, args.warm)
    if args.only in (None, "epoch"):
        bench_epoch([backend.name for backend in backends], args.train_size, args.chunk, args.pause, args.warm,
                    args.model, args.torch_process)


if __name__ == "__main__":
    main()
