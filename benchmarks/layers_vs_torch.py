"""Each conv and pooling layer of a network against PyTorch CPU: forward + backward, in one run.

For every Conv2D, MaxPool2D and AvgPool2D layer of ``--model``, at its input shape for a
batch of 64 (the first layer without dx, as in training), convlab and PyTorch run
forward + backward on the same arrays, taking turns call by call: a conv layer on every
backend that supports it (``naive`` aside) against ``F.conv2d``, a pooling layer against
``F.max_pool2d``/``F.avg_pool2d``, PyTorch with autograd. Printed: the median time of a
call per side and its ratio to PyTorch's, so that an epoch's ratio
(``epoch_vs_torch.py --model``) can be traced to the layers that make it. (The pooling
input is a ReLU's output, ties at zero included, as in the named networks.)

Times are the process's CPU time (``time.process_time``), which another job on a shared
machine disturbs much less than wall time; run it single-threaded (both sides follow
``OPENBLAS_NUM_THREADS``, as in ``epoch_vs_torch.py``), or pass ``--clock wall``.

    OPENBLAS_NUM_THREADS=1 python benchmarks/layers_vs_torch.py --model vgg3x3
"""

from __future__ import annotations

import argparse
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
from convlab.layers import AvgPool2D, Conv2D, MaxPool2D
from convlab.models import describe_layer, get_model, output_shape
from convlab.registry import get_backend, list_backends
from convlab.threads import machine_summary

# Run as a file, Python puts benchmarks/ on sys.path, not the checkout that holds it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reference_run import BATCH_SIZE, SEED


def layer_calls(layer, x_shape, need_dx, backends):
    """{name: a function running one forward + backward of ``layer`` on a batch}, PyTorch
    last; a conv layer once per backend of ``backends``."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal(x_shape).astype(np.float32)
    dy = rng.standard_normal(output_shape(layer, x_shape)).astype(np.float32)
    tx, tdy = torch.from_numpy(x).requires_grad_(need_dx), torch.from_numpy(dy)
    calls = {}
    if isinstance(layer, Conv2D):
        w, b = layer.params["w"], layer.params["b"]
        stride, padding = layer.stride, layer.padding
        for backend in backends:
            def ours(backend=backend):
                backend.backward(dy, backend.forward(x, w, b, stride, padding)[1], need_dx)

            calls[backend.name] = ours
        tw, tb = (torch.from_numpy(a.copy()).requires_grad_() for a in (w, b))

        def theirs():
            tx.grad = tw.grad = tb.grad = None
            F.conv2d(tx, tw, tb, stride=stride, padding=padding).backward(tdy)
    else:
        np.maximum(x, 0, out=x)  # a ReLU's output, as the pools of the named networks see
        pool = F.max_pool2d if isinstance(layer, MaxPool2D) else F.avg_pool2d

        def ours():
            layer.forward(x)
            layer.backward(dy, need_dx)

        calls["convlab"] = ours

        def theirs():
            tx.grad = None
            pool(tx, layer.kernel_size, layer.stride, layer.padding).backward(tdy)
    calls["torch"] = theirs
    return calls


def median_times(calls, rounds, clock):
    """Median seconds of a call of each of ``calls``, taking turns (who goes first rotates)."""
    names = list(calls)
    for call in calls.values():
        call()  # warm-up: plans, caches, first-touch of buffers
    times = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            started = clock()
            calls[name]()
            times[name].append(clock() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vgg3x3", help="network: a name (`convlab models`) or a spec string")
    parser.add_argument("--backends", help="comma-separated backends to time (default: all but naive and auto)")
    parser.add_argument("--rounds", type=int, default=7, help="calls per side and layer (default 7)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="CPU time (default) or wall time")
    args = parser.parse_args()
    keep_freed_memory()  # as `convlab train` and epoch_vs_torch.py do
    torch.set_num_threads(int(os.environ.get("OPENBLAS_NUM_THREADS", len(os.sched_getaffinity(0)))))
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    names = args.backends.split(",") if args.backends else [n for n in list_backends() if n not in ("naive", "auto")]
    backends = [get_backend(name) for name in names]
    model = get_model(args.model).build(seed=SEED)
    shapes = model.input_shapes(BATCH_SIZE)
    print(machine_summary())
    print(f"torch {torch.__version__} threads {torch.get_num_threads()}; {args.clock} ms per forward + backward, "
          f"median of {args.rounds}; ratio to torch in brackets")
    for i, layer in enumerate(model.layers):
        if not isinstance(layer, (Conv2D, MaxPool2D, AvgPool2D)):
            continue
        supported = [b for b in backends if isinstance(layer, Conv2D) and
                     b.supports(shapes[i], layer.params["w"].shape, layer.stride, layer.padding) is None]
        medians = median_times(layer_calls(layer, shapes[i], i > 0, supported), args.rounds, clock)
        torch_ms = 1e3 * medians.pop("torch")
        cells = ", ".join(f"{name} {1e3 * s:.1f} ({1e3 * s / torch_ms:.2f}x)" for name, s in medians.items())
        print(f"layer {i} ({describe_layer(layer, shapes[i])}{'' if i else ', without dx'}): {cells}; "
              f"torch {torch_ms:.1f}", flush=True)


if __name__ == "__main__":
    main()
