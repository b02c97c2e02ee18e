"""One convolution layer, forward and forward+backward, every backend on the layer
shapes of the FFT issues (whole-image and tiled) and on 3x3 / 5x5 layers with many channels
(``MANY_CHANNEL_LAYERS``, Winograd's ground; select them with
``-k "32x64to64 or 16x128to128 or 64x32to32 or 32x32to32"``); the anchors of
``benchmarks/anchors.py`` (PyTorch CPU, ``scipy.signal.fftconvolve``, NNPACK,
fft-conv-pytorch) as optional reference rows, skipped where not installed and where they
cannot compute a shape or pass. Groups are named "<pass> <shape>" so each table compares the backends
on one shape (see ``ConvShape.label``: N x C -> F, input size, kernel k, padding p).

Padding: the MNIST layer has its own (1); every other shape is "same" padded (k // 2),
so the output has the input's size and the direct methods' work grows as k².
A backend that does not support a shape (``Backend.supports``) is skipped there.
"""

import numpy as np
import pytest

import convlab
from benchmarks.anchors import ANCHORS, anchor_pass, missing, unsupported
from benchmarks.conftest import assert_close, measure
from convlab.bench import MANY_CHANNEL_LAYERS, MNIST_LAYER, kernel_sweep
from convlab.timing import ORACLE, ORACLE_MAX_MACS, conv_pass, is_tuner, output_gradient

SHAPES = ([MNIST_LAYER]
          + kernel_sweep([3, 5, 9, 11, 15, 21], n=64, c=1, f=32, size=28)
          + kernel_sweep([3, 7, 15], n=16, c=16, f=32, size=64)
          + kernel_sweep([5, 11, 21], n=8, c=3, f=16, size=128)
          # Big images, medium kernels: where overlap-save (fft-tiled) should beat whole-image
          # fft. Select them with -k "224x224 or 16to16_128x128".
          + kernel_sweep([5, 7, 11], n=8, c=3, f=16, size=224)
          + kernel_sweep([5, 9], n=16, c=16, f=16, size=128)
          + list(MANY_CHANNEL_LAYERS))
REFERENCE_ROWS = list(ANCHORS)
_references = {}


def problem(shape):
    """float32 (x, w, b, stride, padding, dy) of the shape."""
    x, w, b = shape.arrays(np.float32)
    stride, padding = (1, 1), (shape.padding, shape.padding)
    return x, w, b, stride, padding, output_gradient(x, w, stride, padding)


def reference(shape):
    """(y, dx, dw, db) in float64, computed once per shape: by PyTorch if installed, else im2col."""
    if shape not in _references:
        x, w, b, stride, padding, dy = (a.astype(np.float64) if isinstance(a, np.ndarray) else a
                                        for a in problem(shape))
        try:
            _references[shape] = anchor_pass("torch", x, w, b, padding, dy)()
        except ImportError:
            _references[shape] = conv_pass("im2col", x, w, b, stride, padding, dy)()
    return _references[shape]


def runner(row, shape, backward):
    x, w, b, stride, padding, dy = problem(shape)
    dy = dy if backward else None
    if row in REFERENCE_ROWS:
        reason = missing(row) or unsupported(row, w.shape, padding, backward)
        if reason is not None:
            pytest.skip(f"{row} {reason}")
        return anchor_pass(row, x, w, b, padding, dy)
    if row == ORACLE and shape != MNIST_LAYER and shape.macs > ORACLE_MAX_MACS:
        pytest.skip(f"{ORACLE} is skipped above {ORACLE_MAX_MACS:.0e} multiply-adds (too slow)")
    reason = convlab.get_backend(row).supports(x.shape, w.shape, stride, padding)
    if reason is not None:
        pytest.skip(f"{row} does not support {reason}")
    if is_tuner(row):  # tune before the warm-up, which then sizes the rounds by the pick's speed
        convlab.get_backend(row).impl.pick(x, w, stride, padding)
    return conv_pass(row, x, w, b, stride, padding, dy)


shapes = pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.label.replace("->", "to").replace(" ", "_"))
rows = pytest.mark.parametrize("row", convlab.list_backends() + REFERENCE_ROWS)


@shapes
@rows
def test_forward(benchmark, shape, row):
    benchmark.group = f"forward {shape.label}"
    y = measure(benchmark, runner(row, shape, backward=False))
    assert_close([y], reference(shape), f"{row} forward on {shape.label}")


@shapes
@rows
def test_forward_backward(benchmark, shape, row):
    benchmark.group = f"forward+backward {shape.label}"
    result = measure(benchmark, runner(row, shape, backward=True))
    assert_close(result, reference(shape), f"{row} forward+backward on {shape.label}")
