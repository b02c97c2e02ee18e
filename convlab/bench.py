"""``convlab bench``: time the convolution backends on chosen layer shapes.

Each (shape, backend, pass) is timed by :func:`convlab.timing.interleaved_best`: the
fastest of ``repeat`` runs after one warm-up run, on random float32 arrays, the backends
of a shape and pass taking turns run by run. The table gives each time
and its ratio to the fastest backend on that shape; a tuner backend (``auto``) is not timed
unless asked for, but its pick for each shape is shown. The ``naive`` oracle is skipped on
shapes above ``ORACLE_MAX_MACS`` multiply-adds unless asked for by name.

JSON output (``--json PATH``, written atomically)::

    {"rows": [{"shape": "64x1->32 28x28 k7 p1", "backend": "im2col",
               "pass": "forward", "seconds": 0.0123}, ...],
     "picks": [{"shape": "64x1->32 28x28 k7 p1", "tuner": "auto", "backend": "im2col"}, ...],
     "accuracy": [{"shape": ..., "backend": "fft", "y": 3e-07, "dx": 3e-07, "dw": 1e-07}, ...]}

``accuracy`` (with ``--accuracy``): the float32 error of each timed backend on each shape,
see :mod:`convlab.accuracy`.

``shape`` is :attr:`ConvShape.label`: batch N x input channels C -> F filters, input
H x W, kernel k x k, zero padding p, stride 1. ``pass`` is ``"forward"`` (the inference
pass, keeping nothing for a backward, as PyTorch's forward without autograd) or
``"forward+backward"`` (the training forward, then a backward computing dx, dw and db);
``seconds`` is wall time.
With ``--memory`` each row also has ``"peak_extra_bytes"``: the workspace of one call,
measured on a call before the timed ones (see :mod:`convlab.memory`).
Skipped pairs have no row, nor has a backend that raised on a shape and pass (a plugin's
bug, say): the table says what it raised, and the other backends are timed all the same.

Two sweeps: ``kernel`` (time against kernel size on one image size, the default) and
``image`` (time against image size, at each of a few kernel sizes: where whole-image
``fft`` loses to ``fft-tiled`` and to the direct methods).
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field, replace
from pathlib import Path

from convlab.accuracy import format_accuracy, run_accuracy
from convlab.files import atomic_path
from convlab.memory import peak_extra_bytes
from convlab.registry import Unsupported, get_backend, list_backends, skipped_backends
from convlab.settings import list_items, one_of
from convlab.timing import (ORACLE, ORACLE_MAX_MACS, ConvShape, conv_pass, interleaved_best, is_tuner,
                            output_gradient, strategies)

MNIST_LAYER = ConvShape(n=64, c=1, f=32, size=28, k=7, padding=1)
DEFAULT_KERNEL_SIZES = (3, 5, 7, 11, 15, 21)
SWEEPS = ("kernel", "image")
# The image sweep: a few channels, as in the layers after an RGB input, and image sizes
# from MNIST's to ImageNet's.
DEFAULT_IMAGE_SIZES = (16, 32, 64, 128, 256)
IMAGE_SWEEP_KERNEL_SIZES = (5, 9)
# The layer of each sweep, unless given (the image sweep has no one image size).
SWEEP_LAYER = {"kernel": dict(batch_size=64, image_size=28, in_channels=1, out_channels=32),
               "image": dict(batch_size=8, image_size=None, in_channels=3, out_channels=16)}
PASSES = ("forward", "forward+backward")
# Layers of modern CNNs: 3x3 (and 5x5) with many channels, Winograd's home ground.
MANY_CHANNEL_LAYERS = (ConvShape(32, 64, 64, 32, 3, 1), ConvShape(16, 128, 128, 16, 3, 1),
                       ConvShape(64, 32, 32, 28, 3, 1), ConvShape(32, 32, 32, 28, 5, 2))
# Past this many seconds on one (shape, backend, pass), no more runs are timed.
MAX_SECONDS_PER_CELL = 0.5
# Training steps run before a profile records (FFTW plans, auto's timing, first-touch page faults).
PROFILE_WARMUP_STEPS = 5


def kernel_sweep(kernel_sizes, n=64, c=1, f=32, size=28) -> list[ConvShape]:
    """One shape per kernel size, "same" padded (p = k // 2): for odd k the output stays
    size x size, so a direct method's work grows as k² while an FFT's barely grows."""
    return [ConvShape(n, c, f, size, k, k // 2) for k in kernel_sizes]


def image_sweep(image_sizes, kernel_sizes, n=8, c=3, f=16) -> list[ConvShape]:
    """One shape per (kernel size, image size), "same" padded (p = k // 2)."""
    return [ConvShape(n, c, f, size, k, k // 2) for k in kernel_sizes for size in image_sizes]


def parse_names(value, what: str, allowed, kind: str, also=()) -> list[str]:
    """A comma-separated string (or a list) of names, each one of ``allowed`` (a ``kind``
    of thing: "pass") or of ``also`` (accepted, not offered: installed backends that were
    skipped, for :func:`~convlab.registry.get_backend` to say why), checked by
    :func:`list_items`; each once, in the order given."""
    names = list_items(value, f"--{what}", "name", f"give comma-separated names from: {', '.join(allowed)}",
                       [*allowed, *also], kind)
    return list(dict.fromkeys(str(name).strip() for name in names))


def backend_list(value) -> list[str]:
    """The backends named by ``--backends`` (see :func:`parse_names`)."""
    return parse_names(value, "backends", list_backends(), "backend", skipped_backends())


def parse_kernel_sizes(value, option="--kernel-sizes", example="3,5,7") -> list[int]:
    """Kernel sizes (or image sizes) from "3,5,7", a list, or one int; each a positive
    whole number. An empty item ("3,", "3,,5") is refused, as in :func:`list_items`."""
    items = list_items(value, option, "size", f"give comma-separated whole numbers, e.g. {example}")
    try:
        parsed = [int(s) if isinstance(s, str) else s for s in items]
    except ValueError:
        parsed = None
    if (not parsed or not all(isinstance(k, numbers.Integral) and not isinstance(k, bool) and k > 0
                              for k in parsed)):
        typed = ",".join(map(str, items))
        raise ValueError(f"{option} must be positive whole numbers separated by commas, "
                         f"got {typed if typed.replace(',', '').strip() else 'nothing'}")
    return sorted({int(k) for k in parsed})


def check_plot_path(path) -> Path:
    """``path`` if matplotlib can write its format (from the extension)."""
    from matplotlib.figure import Figure

    path = Path(path)
    formats = Figure().canvas.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise ValueError(f"--plot {str(path)!r}: the extension must be one of {', '.join(sorted(formats))}")
    return path


@dataclass
class BenchResult:
    """Rows and picks as in the module docstring; ``skipped``: (shape label, backend) of
    the oracle on big shapes; ``unsupported``: (shape label, backend, reason); ``failed``:
    (shape label, backend, what it was doing: a pass, "tuning" or "its pick", error) of a
    backend that raised."""

    rows: list[dict] = field(default_factory=list)
    picks: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unsupported: list[tuple[str, str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, str, str]] = field(default_factory=list)
    accuracy: list[dict] = field(default_factory=list)

    def seconds(self, shape, backend, pass_):
        return next((r["seconds"] for r in self.rows
                     if (r["shape"], r["backend"], r["pass"]) == (shape, backend, pass_)), None)


def check_something_to_time(shapes, backends):
    """A ValueError, before anything is timed, when none of ``backends`` supports any of
    ``shapes``: such a bench printed "not timed" lines, wrote a result of no rows and
    exited 0 (``--backends winograd --kernel-sizes 7 --mnist-layer no``), which
    ``convlab report --bench`` then refused."""
    reasons = {}
    for shape in shapes:
        x_shape, w_shape = (shape.n, shape.c, shape.size, shape.size), (shape.f, shape.c, shape.k, shape.k)
        for backend in backends:
            reason = get_backend(backend).supports(x_shape, w_shape, (1, 1), (shape.padding, shape.padding))
            if reason is None:
                return
            reasons.setdefault(backend, f"{backend} does not support {reason} ({shape.label})")
    raise ValueError(f"--backends {','.join(backends)} can time none of the layers asked for: "
                     f"{'; '.join(reasons.values())}; give other --kernel-sizes or --backends")


def run_bench(shapes, backends=None, passes=PASSES, repeat=3, progress=None, memory=False) -> BenchResult:
    """Time ``backends`` (default: every strategy, the oracle only on small shapes) on
    ``shapes`` and ask every tuner for its pick. ``progress(message)`` is called per shape.
    With ``memory``, each row also gets its pass's peak extra memory."""
    explicit = backends is not None
    backends = list(backends) if explicit else strategies()
    result = BenchResult()
    for shape in shapes:
        if progress:
            progress(f"timing {shape.label}")
        x, w, b = shape.arrays()
        stride, padding = (1, 1), (shape.padding, shape.padding)
        dy = output_gradient(x, w, stride, padding)
        timed = []
        for backend in backends:
            if backend == ORACLE and not explicit and shape.macs > ORACLE_MAX_MACS:
                result.skipped.append((shape.label, backend))
                continue
            reason = get_backend(backend).supports(x.shape, w.shape, stride, padding)
            if reason is not None:
                result.unsupported.append((shape.label, backend, reason))
                continue
            timed.append(backend)

        def failed(backend, error, what):
            """A backend (a plugin, maybe) that raised on this shape: a skipped cell and a
            line saying so, not the end of every other backend's timing. Running out of
            memory still ends the bench, naming the sizes to lower."""
            if isinstance(error, MemoryError):
                raise error
            result.failed.append((shape.label, backend, what, f"{type(error).__name__}: {error}"))

        picked = {}  # tuner -> its pick for this shape, None if it raised

        def pick(tuner, what):
            """``tuner``'s pick for this shape, asked once; None if it raised (said once, by
            :func:`failed`)."""
            if tuner not in picked:
                try:
                    picked[tuner] = get_backend(tuner).impl.pick(x, w, stride, padding)
                except Exception as error:  # noqa: BLE001 - handed to failed
                    failed(tuner, error, what)
                    picked[tuner] = None
            return picked[tuner]

        # Tuned first, so that memory and time are the pick's (its first call timed every candidate).
        timed = [backend for backend in timed if not is_tuner(backend) or pick(backend, "tuning") is not None]
        for pass_ in passes:
            runs = {backend: conv_pass(backend, x, w, b, stride, padding, dy if pass_ == "forward+backward" else None)
                    for backend in timed}
            extra = {backend: {} for backend in runs}
            if memory:
                for backend, run in list(runs.items()):
                    try:
                        extra[backend]["peak_extra_bytes"] = peak_extra_bytes(run)
                    except Exception as error:  # noqa: BLE001 - handed to failed
                        failed(backend, error, pass_)
                        del runs[backend]
            best = interleaved_best(runs, repeat, max_seconds=MAX_SECONDS_PER_CELL,
                                    on_error=lambda backend, error: failed(backend, error, pass_))
            result.rows += [{"shape": shape.label, "backend": backend, "pass": pass_, "seconds": seconds,
                             **extra[backend]} for backend, seconds in best.items()]
        for tuner in filter(is_tuner, list_backends()):
            chosen = pick(tuner, "its pick")
            if chosen is not None:
                result.picks.append({"shape": shape.label, "tuner": tuner, "backend": chosen})
    return result


def format_table(result: BenchResult, shapes, passes=PASSES) -> str:
    """One table per pass: a row per shape, a column per backend with "time (ratio to the
    fastest on that shape)", then each tuner's pick."""
    backends = list(dict.fromkeys(r["backend"] for r in result.rows))
    tuners = list(dict.fromkeys(p["tuner"] for p in result.picks))
    picks = {(p["shape"], p["tuner"]): p["backend"] for p in result.picks}
    label_width = max(len("shape"), *(len(s.label) for s in shapes))
    lines = []
    for pass_ in passes:
        lines += [f"{pass_}: milliseconds (ratio to the fastest on the shape)",
                  "  ".join([f"{'shape':<{label_width}}"] + [f"{b:>17}" for b in backends]
                            + [f"{t + ' picks':>12}" for t in tuners])]
        for shape in shapes:
            times = {b: result.seconds(shape.label, b, pass_) for b in backends}
            # A shape none of the named backends supports (say --backends winograd and the
            # 7x7 MNIST layer) is a row of skipped cells, not an error.
            fastest = min((t for t in times.values() if t is not None), default=None)
            cells = [f"{'skipped':>17}" if t is None else f"{t * 1e3:9.2f} ({t / fastest:4.2f}x)"
                     for t in times.values()]
            lines.append("  ".join([f"{shape.label:<{label_width}}"] + cells
                                   + [f"{picks.get((shape.label, t), '-'):>12}" for t in tuners]))
        lines.append("")
    if any("peak_extra_bytes" in r for r in result.rows):
        lines += format_memory_table(result, shapes, passes, backends, label_width)
    return "\n".join(lines).rstrip()


def format_memory_table(result, shapes, passes, backends, label_width) -> list[str]:
    """Lines of one table per pass: peak extra memory in MiB, a column per backend."""
    memory = {(r["shape"], r["backend"], r["pass"]): r.get("peak_extra_bytes") for r in result.rows}
    lines = []
    for pass_ in passes:
        lines += [f"{pass_}: peak extra memory, MiB (beyond the results; see convlab/memory.py)",
                  "  ".join([f"{'shape':<{label_width}}"] + [f"{b:>17}" for b in backends])]
        for shape in shapes:
            cells = [memory.get((shape.label, b, pass_)) for b in backends]
            lines.append("  ".join([f"{shape.label:<{label_width}}"] + [
                f"{'skipped':>17}" if m is None else f"{m / 2 ** 20:17.1f}" for m in cells]))
        lines.append("")
    return lines


def save_json(result: BenchResult, path):
    with atomic_path(path) as tmp:
        saved = {"rows": result.rows, "picks": result.picks}
        if result.accuracy:
            saved["accuracy"] = result.accuracy
        tmp.write_text(json.dumps(saved, indent=2) + "\n")


def save_plot(result: BenchResult, sweep, path, passes=PASSES, along="k"):
    """Time vs kernel size (``along="k"``) or image size (``along="size"``) on the
    ``sweep`` shapes, one line per backend, log scale, a panel per pass (and, along image
    size, a row of panels per kernel size). A dotted line marks the crossover: the smallest
    size from which one backend is fastest on every larger one (when that backend is not
    fastest throughout)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    groups = [sweep] if along == "k" else [[s for s in sweep if s.k == k] for k in sorted({s.k for s in sweep})]
    fig = Figure(figsize=(6 * len(passes), 4.5 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), len(passes), squeeze=False)
    for group, row in zip(groups, axes):
        for ax, pass_ in zip(row, passes):
            draw_panel(ax, result, sorted(group, key=lambda s: getattr(s, along)), pass_, along)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix[1:].lower(), dpi=120)


def draw_panel(ax, result, shapes, pass_, along):
    """One panel of :func:`save_plot`: ``shapes`` sorted by ``along`` ("k" or "size")."""
    from matplotlib.ticker import FuncFormatter

    backends = list(dict.fromkeys(r["backend"] for r in result.rows))
    xs = [getattr(s, along) for s in shapes]
    for backend in backends:
        points = [(x, result.seconds(s.label, backend, pass_)) for x, s in zip(xs, shapes)]
        points = [(x, t) for x, t in points if t is not None]
        if points:
            ax.plot(*zip(*[(x, t * 1e3) for x, t in points]), marker="o", label=backend)
    winners = [min(backends, key=lambda b: result.seconds(s.label, b, pass_) or float("inf")) for s in shapes]
    first_of_last_run = next(i for i in range(len(winners)) if len(set(winners[i:])) == 1)
    if first_of_last_run > 0:
        x = (xs[first_of_last_run - 1] + xs[first_of_last_run]) / 2
        ax.axvline(x, color="gray", linestyle=":")
        on_the_right = x > (xs[0] + xs[-1]) / 2
        ax.annotate(f" {winners[-1]} fastest from {'k=' if along == 'k' else ''}{xs[first_of_last_run]}"
                    f"{'' if along == 'k' else chr(178)} ", (x, 0.97),
                    xycoords=("data", "axes fraction"), ha="right" if on_the_right else "left", va="top")
    first = shapes[0]
    if along == "k":
        ax.set(xlabel="kernel size k (k x k, padding k // 2)",
               title=f"{pass_}: {first.n}x{first.c}->{first.f}, {first.size}x{first.size} input")
    else:
        ax.set(xscale="log", xlabel="image size (size x size, padding k // 2)",
               title=f"{pass_}: {first.n}x{first.c}->{first.f}, kernel {first.k}x{first.k}")
    ax.set(yscale="log", ylabel="milliseconds (fastest run)", xticks=xs)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()


def bench_command(backends=None, kernel_sizes=None, batch_size=None, image_size=None, in_channels=None,
                  out_channels=None, mnist_layer=True, passes=None, repeat=3, json_path=None,
                  plot_path=None, progress=None, memory=False, sweep="kernel", image_sizes=None,
                  accuracy=False, many_channels=False):
    """Parse the lists, run the bench on the MNIST layer and the sweep (``"kernel"`` or
    ``"image"``), print the tables and write the requested files. None means the default
    (the layer sizes of :data:`SWEEP_LAYER`); integers are expected already checked.
    ``accuracy``: also measure each timed backend's float32 error; ``many_channels``: also
    time :data:`MANY_CHANNEL_LAYERS`. A file that cannot be written is a ValueError naming
    its option, raised after the tables are printed (the other file is written)."""
    if backends is not None:
        backends = backend_list(backends)
    # Every tuner is asked for its pick whatever --backends names (run_bench), and may time any candidate.
    for name in dict.fromkeys([*(backends or list_backends()), *filter(is_tuner, list_backends())]):
        get_backend(name).check_settings(warn_if_broken=name not in (backends or ()))  # else timed as it runs
    passes = PASSES if passes is None else parse_names(passes, "passes", PASSES, "pass")
    sweep = one_of("sweep", sweep, SWEEPS)
    layer = SWEEP_LAYER[sweep]
    n, size, c, f = (layer[name] if given is None else given for name, given in
                     zip(layer, (batch_size, image_size, in_channels, out_channels)))
    if sweep == "kernel":
        kernel_sizes = DEFAULT_KERNEL_SIZES if kernel_sizes is None else parse_kernel_sizes(kernel_sizes)
        shapes_swept = kernel_sweep(kernel_sizes, n, c, f, size)
    else:
        kernel_sizes = IMAGE_SWEEP_KERNEL_SIZES if kernel_sizes is None else parse_kernel_sizes(kernel_sizes)
        image_sizes = (DEFAULT_IMAGE_SIZES if image_sizes is None
                       else parse_kernel_sizes(image_sizes, "--image-sizes", "16,32,64"))
        shapes_swept = image_sweep(image_sizes, kernel_sizes, n, c, f)
    if plot_path is not None:
        plot_path = check_plot_path(plot_path)
    mnist = [replace(MNIST_LAYER, n=batch_size or MNIST_LAYER.n)] if mnist_layer else []
    shapes = mnist + [s for s in shapes_swept if s not in mnist]
    if many_channels:
        shapes += [s for s in MANY_CHANNEL_LAYERS if s not in shapes]
    if backends is not None:
        check_something_to_time(shapes, backends)
    result = run_bench(shapes, backends, passes, repeat, progress, memory)
    if accuracy:
        timed = lambda shape: list(dict.fromkeys(r["backend"] for r in result.rows if r["shape"] == shape.label))  # noqa: E731
        result.accuracy = run_accuracy(shapes, timed, progress)
    # The files first: a closed stdout (`| head`) ends the process at its first print. One
    # that cannot be written (a full disk) is said after the tables: the timings, maybe
    # minutes of them, are not lost with it.
    saves = {"--json": (json_path, lambda: save_json(result, json_path)),
             "--plot": (plot_path, lambda: save_plot(result, shapes_swept, plot_path, passes,
                                                     along="k" if sweep == "kernel" else "size"))}
    written, unsaved = [], []
    for option, (path, save) in saves.items():
        if path is not None:
            try:
                save()
                written.append(path)
            except OSError as e:
                unsaved.append(f"cannot write {option} {path}: {e.strerror or e}")
    from convlab.threads import machine_summary

    print(f"on {machine_summary()}")
    print(format_table(result, shapes, passes))
    if result.accuracy:
        print(format_accuracy(result.accuracy))
    if result.skipped:
        print(f"{ORACLE} skipped on {len(result.skipped)} shape(s) of over {ORACLE_MAX_MACS:.0e} multiply-adds "
              f"(name it in --backends to time it anyway)")
    for label, backend, reason in result.unsupported:
        print(f"{backend} not timed on {label}: it does not support {reason}")
    for label, backend, what, error in result.failed:
        print(f"{backend} failed on {label} ({what}): {error}")
    for path in written:
        print(f"wrote {path}")
    if unsaved:
        raise ValueError(f"{'; '.join(unsaved)} (the results are the tables printed above)")
    return result


def profile_command(backends=None, steps=100, batch_size=64):
    """``convlab bench --profile``: the per-phase profile (:mod:`convlab.profile`) of
    ``steps`` real training steps of the reference network on MNIST, per backend (default:
    every strategy but the oracle that supports the reference network's layer; ``auto``, a
    tuner, is not a strategy). Each backend gets a fresh network (seed 0, SGD lr 0.02,
    momentum 0.9) and :data:`PROFILE_WARMUP_STEPS` unrecorded steps first (plans, tuning, first-touch
    page faults). Prints the machine, then one table per backend (or the line of what it
    raised: the others are still profiled); returns the profiles."""
    from convlab.data import load_mnist
    from convlab.models import reference_net
    from convlab.optimizers import SGD
    from convlab.profile import recording
    from convlab.threads import machine_summary
    from convlab.training import train_epoch

    layer = MNIST_LAYER  # the reference network's convolution
    layer_shapes = ((batch_size, layer.c, layer.size, layer.size), (layer.f, layer.c, layer.k, layer.k))
    if backends is None:
        names = [b for b in strategies()
                 if b != ORACLE and get_backend(b).supports(*layer_shapes, 1, layer.padding) is None]
    else:
        names = backend_list(backends)
        for name in names:  # before anything runs, not after the tables of the backends before it
            try:
                get_backend(name).check_supported(*layer_shapes, 1, layer.padding)
            except Unsupported as e:
                raise Unsupported(f"--profile trains the reference network, whose conv layer is 1 -> {layer.f} "
                                  f"filters {layer.k}x{layer.k}, padding {layer.padding}, on 28x28: {e}") from None
    for name in names:
        get_backend(name).check_settings(warn_if_broken=backends is None)  # else profiled as it runs
    data = load_mnist()
    x, y = data.x_train, data.y_train
    recorded, longest = steps * batch_size, max(steps, PROFILE_WARMUP_STEPS)
    if longest * batch_size > len(x):  # never fewer steps than asked for, silently
        most = len(x) // batch_size
        runs = f"--steps {steps}" if steps >= PROFILE_WARMUP_STEPS else f"its {PROFILE_WARMUP_STEPS} warm-up steps"
        raise ValueError(f"--profile runs {longest} steps ({runs}) of --batch-size {batch_size}, "
                         f"{longest * batch_size} training images, but MNIST has {len(x)}; use "
                         + (f"--steps {most} or fewer" if most >= PROFILE_WARMUP_STEPS
                            else f"--batch-size {len(x) // PROFILE_WARMUP_STEPS} or smaller"))
    print(f"profile of {steps} training steps of batch {batch_size} (reference network, MNIST) "
          f"on {machine_summary()}")
    profiles = {}
    for name in names:
        model = reference_net(seed=0, backend=name)
        optimizer = SGD(model, lr=0.02, momentum=0.9)
        warmup = PROFILE_WARMUP_STEPS * batch_size
        print()
        try:
            train_epoch(model, optimizer, x[:warmup], y[:warmup], batch_size, seed=0, epoch=0, progress=False)
            with recording(model) as profile:
                train_epoch(model, optimizer, x[:recorded], y[:recorded], batch_size, seed=0, epoch=1,
                            progress=False)
        except Exception as error:  # noqa: BLE001 - a plugin's bug, said; the other backends are still profiled
            if isinstance(error, MemoryError):
                raise
            print(f"backend {name} failed: {type(error).__name__}: {error}")
            continue
        profiles[name] = profile
        print(profile.table(f"backend {name}: milliseconds per step, seconds in all, share of the steps' time"))
    return profiles
