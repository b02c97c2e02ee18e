"""Two variants of convlab's code, A and B, timed on real training steps in one process.

A change to a training step's speed of a few percent is smaller than what a shared VM
drifts from minute to minute, so two runs of ``epoch_vs_torch.py``, one before and one after,
cannot show it. Here both variants train at once, taking turns in short blocks, so that the
drift falls on both:

* A is the code as it is; B is A with a *variant* applied: a Python file that defines
  ``apply_b()`` and ``undo_b()`` (patch what B changes, and put it back), and optionally
  ``setup_b(model, optimizer)`` (called once with B's own network and optimizer, for a
  variant that changes what they hold), ``MODEL`` (a model name or spec string, default
  ``reference``) and ``BACKEND`` (default ``im2col``). The variant is applied before each
  of B's blocks and undone after it.
* Each side trains its own copy of the network, from the same seed, on real MNIST batches
  (``convlab.training.train_step``, as ``convlab train`` runs it), in blocks of ``--block``
  steps, ``--rounds`` rounds, who goes first alternating. No pause between blocks: a real
  epoch never idles either.
* ``--evaluate`` times evaluation instead: a step is then one forward-only pass over a batch
  of 128 test images (``convlab.training.predict_logits``, as ``convlab train`` evaluates
  after each epoch and ``convlab evaluate`` runs), which takes each convolution's inference
  pass; nothing is trained.
* Printed: the median of the per-round ratios of the blocks' median step times (B / A),
  with its quartiles, then each side's median and mean step. Below 1: B is faster.

On the 2-core Zen 3 EPYC of 2026-12-03, blocks of 40 steps and 12-16 rounds moved by +-5 %
between runs of one comparison (an A/A run: 1.012); blocks of 10 steps, 60 rounds (the
default) agreed to about 1 %. ``benchmarks/variants/`` holds the variants quoted in the docs:

    python benchmarks/ab_steps.py benchmarks/variants/same_code.py          # A/A: the noise
    python benchmarks/ab_steps.py benchmarks/variants/dense_c_order.py      # Dense before 0.14.0
    python benchmarks/ab_steps.py benchmarks/variants/one_stage_unroll.py --evaluate  # im2col's unroll before 0.15.0
"""

from __future__ import annotations

import argparse
import importlib.machinery
import sys
import time
import types
from pathlib import Path

import numpy as np

from convlab import keep_freed_memory
from convlab.data import load_mnist
from convlab.optimizers import SGD
from convlab.run import build_model
from convlab.settings import TrainSettings
from convlab.threads import machine_summary
from convlab.training import EVALUATION_BATCH, epoch_order, predict_logits, train_step

# Run as a file, Python puts benchmarks/ on sys.path, not the checkout that holds it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reference_run import BATCH_SIZE, LR, MOMENTUM, SEED


def fail(message):
    """A user's mistake: one line on stderr, exit status 2 (as argparse's own errors)."""
    print(f"ab_steps.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def load_variant(path):
    """The variant file's module: ``apply_b``, ``undo_b``, and optionally ``setup_b``,
    ``MODEL`` and ``BACKEND``; a bad file ends the script with a one-line error."""
    try:
        loader = importlib.machinery.SourceFileLoader("convlab_ab_variant", str(path))
        variant = types.ModuleType(loader.name)
        variant.__file__ = str(path)
        loader.exec_module(variant)
    except OSError as e:
        fail(f"cannot read the variant file {path}: {e.strerror or e}")
    except Exception as e:  # a syntax error, or any error running the file: the variant's, said in one line
        fail(f"the variant file {path} failed to load: {type(e).__name__}: {e}")
    for name in ("apply_b", "undo_b"):
        if not callable(getattr(variant, name, None)):
            fail(f"{path} must define {name}()")
    if hasattr(variant, "setup_b") and not callable(variant.setup_b):
        fail(f"{path}'s setup_b must be a function setup_b(model, optimizer)")
    return variant


class Side:
    """One variant's network (``model``, built from the seed) and its optimizer, training on
    the epoch's batches in order; or, with ``evaluate``, evaluating (x, y) batch after batch
    of :data:`~convlab.training.EVALUATION_BATCH` images."""

    def __init__(self, model, x, y, evaluate=False):
        self.model = model
        self.optimizer = SGD(model, lr=LR, momentum=MOMENTUM)
        self.x, self.y, self.evaluate = x, y, evaluate
        self.batch_size = EVALUATION_BATCH if evaluate else BATCH_SIZE
        self.order = np.arange(len(x)) if evaluate else epoch_order(len(x), SEED, 1)
        self.batches = len(x) // self.batch_size
        self.step = 0

    def run(self, steps):
        """Seconds of each of the next ``steps`` training steps (or evaluation batches)."""
        seconds = []
        for _ in range(steps):
            start = self.step % self.batches * self.batch_size
            idx = self.order[start:start + self.batch_size]
            self.step += 1
            started = time.perf_counter()
            if self.evaluate:
                predict_logits(self.model, self.x[idx])
            else:
                train_step(self.model, self.optimizer, self.x[idx], self.y[idx])
            seconds.append(time.perf_counter() - started)
        return seconds


def main():
    keep_freed_memory()  # as `convlab train` does
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", help="Python file defining apply_b() and undo_b() (see the module doc)")
    parser.add_argument("--rounds", type=int, default=60, help="turns per side (default 60)")
    parser.add_argument("--block", type=int, default=10, help="training steps a turn (default 10)")
    parser.add_argument("--warm-up", type=int, default=30, help="untimed steps per side first (default 30)")
    parser.add_argument("--evaluate", action="store_true",
                        help=f"time evaluation batches of {EVALUATION_BATCH} test images instead of training steps")
    args = parser.parse_args()
    if args.rounds < 1 or args.block < 1 or args.warm_up < 0:
        fail("--rounds and --block must be at least 1, --warm-up at least 0")
    variant = load_variant(args.variant)
    model_name, backend = getattr(variant, "MODEL", "reference"), getattr(variant, "BACKEND", "im2col")
    try:  # both networks built before the data set is read: a bad MODEL or BACKEND is said first
        models = [build_model(TrainSettings(model=model_name, backend=backend, seed=SEED, memory_check=False))[0]
                  for _ in "AB"]
    except ValueError as e:
        fail(f"{args.variant}'s MODEL {model_name!r} or BACKEND {backend!r}: {e}")
    data = load_mnist()
    x, y = (data.x_test, data.y_test) if args.evaluate else (data.x_train, data.y_train)
    a, b = (Side(model, x, y, args.evaluate) for model in models)
    if callable(getattr(variant, "setup_b", None)):
        variant.setup_b(b.model, b.optimizer)

    def run_b(steps):
        variant.apply_b()
        try:
            return b.run(steps)
        finally:
            variant.undo_b()

    print(machine_summary())
    steps = f"evaluation batches of {EVALUATION_BATCH}" if args.evaluate else "steps"
    print(f"{args.variant}: {model_name}, {backend}, blocks of {args.block} {steps}, {args.rounds} rounds", flush=True)
    a.run(args.warm_up)
    run_b(args.warm_up)
    times, ratios = {"A": [], "B": []}, []
    for round_ in range(args.rounds):
        block = {}
        for side in ("AB" if round_ % 2 == 0 else "BA"):
            block[side] = a.run(args.block) if side == "A" else run_b(args.block)
            times[side] += block[side]
        ratios.append(np.median(block["B"]) / np.median(block["A"]))
    a_ms, b_ms = (np.array(times[side]) * 1e3 for side in "AB")
    print(f"B / A: median of the rounds' ratios {np.median(ratios):.3f} (quartiles {np.percentile(ratios, 25):.3f}, "
          f"{np.percentile(ratios, 75):.3f}); steps: A median {np.median(a_ms):.3f} ms, mean {a_ms.mean():.3f}; "
          f"B median {np.median(b_ms):.3f} ms, mean {b_ms.mean():.3f}")


if __name__ == "__main__":
    main()
