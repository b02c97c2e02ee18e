"""Where fft-tiled's time goes on the big-image shapes of issue 10, phase by phase:
``python benchmarks/fft_tiled_phases.py [--repeat 5] [--shapes 224x224]``.

Everything on one thread (BLAS, FFTW, convlab's pool), so that the phases add up to the
pass and a busy shared machine disturbs them least. Per shape: a Conv2D layer on
``fft-tiled`` runs forward and backward (with dx, as the benchmark rows do) under
:func:`convlab.profile.recording`, ``--repeat`` times after a warm-up; the pass of least
CPU time (``time.process_time``) is shown, each phase's milliseconds (the wall clock of
that one thread) and share, ``other`` being what no phase covers (the layer's input
checks, Python between the phases). ``fft``'s forward+backward CPU time, measured in the
same rounds, gives the ratio. The tile size is the cost model's choice
(``backends/fft_tiled.py``: ``tile_size_for``), printed with each shape; set
``CONVLAB_FFT_TILE`` to force a square one.
"""

import argparse
import time

import numpy  # noqa: F401 (loaded first, so that threadpoolctl finds its BLAS)
import threadpoolctl

threadpoolctl.threadpool_limits(1)  # before convlab is imported: its chunk pool takes BLAS's threads then

import convlab  # noqa: E402
from convlab import fftw, keep_freed_memory, profile  # noqa: E402
from convlab.bench import kernel_sweep  # noqa: E402
from convlab.threads import machine_summary  # noqa: E402
from convlab.timing import output_gradient  # noqa: E402

SHAPES = kernel_sweep([5, 7, 11], n=8, c=3, f=16, size=224) + kernel_sweep([5, 9], n=16, c=16, f=16, size=128)


def layer_for(shape, backend):
    layer = convlab.Conv2D(shape.c, shape.f, shape.k, padding=shape.padding, backend=backend)
    x, layer.params["w"], layer.params["b"] = shape.arrays()
    return convlab.Sequential(layer), x


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed passes per shape and backend (default 5)")
    parser.add_argument("--shapes", default="", help="only shapes whose label contains this text")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be a whole number >= 1, got {args.repeat}")
    labels = [shape.label for shape in SHAPES]
    if not any(args.shapes in label for label in labels):
        parser.error(f"--shapes {args.shapes!r} matches none of the shapes: {', '.join(labels)}")
    fftw.configure(threads=1)
    keep_freed_memory()
    from backends.fft_tiled import FFTTiled

    print(machine_summary())
    print("one thread; ms of the pass of least CPU time; fft-tiled's phases")
    for shape in SHAPES:
        if args.shapes not in shape.label:
            continue
        models = {name: layer_for(shape, name) for name in ("fft-tiled", "fft")}
        dy = output_gradient(models["fft"][1], models["fft"][0].layers[0].params["w"], (1, 1),
                             (shape.padding, shape.padding))
        best = {}
        for round_ in range(args.repeat + 1):
            for name, (model, x) in models.items():
                layer = model.layers[0]
                with profile.recording(model) as recorded:
                    started = time.process_time()
                    layer.forward(x)
                    layer.backward(dy)
                    cpu = time.process_time() - started
                if round_ and cpu < best.get(name, (float("inf"),))[0]:
                    best[name] = (cpu, recorded)
        tiled, fft = best["fft-tiled"], best["fft"]
        tile = FFTTiled().tiling(models["fft"][1].shape, models["fft"][0].layers[0].params["w"].shape,
                                 (shape.padding, shape.padding)).tile
        print(f"\n{shape.label}: fft-tiled ({tile[0]}x{tile[1]} tiles) {tiled[0] * 1e3:.1f} ms CPU, "
              f"fft {fft[0] * 1e3:.1f} ms CPU, ratio {tiled[0] / fft[0]:.2f}")
        rows = tiled[1].rows()
        wall = sum(seconds for _, _, seconds in rows)
        for label, name, seconds in rows:
            print(f"  {label.split()[-1]:<9}{name:<18}{seconds * 1e3:8.2f} ms {seconds / wall:7.1%}")


if __name__ == "__main__":
    main()
