"""One convolution layer, forward and forward+backward, every backend on the layer
shapes of the FFT issues (whole-image and tiled) and on 3x3 / 5x5 layers with many channels
(``MANY_CHANNEL_LAYERS``, Winograd's ground; select them with
``-k "32x64to64 or 16x128to128 or 64x32to32 or 32x32to32"``); PyTorch CPU and
``scipy.signal.fftconvolve`` as optional reference rows. Groups are named "<pass> <shape>" so each table compares the backends
on one shape (see ``ConvShape.label``: N x C -> F, input size, kernel k, padding p).

Padding: the MNIST layer has its own (1); every other shape is "same" padded (k // 2),
so the output has the input's size and the direct methods' work grows as k².
A backend that does not support a shape (``Backend.supports``) is skipped there.
"""

import numpy as np
import pytest

import convlab
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
REFERENCE_ROWS = ["torch", "scipy.fftconvolve"]
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
            _references[shape] = torch_pass(x, w, b, padding, dy)()
        except ImportError:
            _references[shape] = conv_pass("im2col", x, w, b, stride, padding, dy)()
    return _references[shape]


def torch_pass(x, w, b, padding, dy=None):
    """Like ``conv_pass`` for ``torch.nn.functional.conv2d`` (backward by autograd)."""
    import torch

    xt, wt, bt = (torch.from_numpy(a).requires_grad_(dy is not None) for a in (x, w, b))
    dyt = None if dy is None else torch.from_numpy(dy)

    def run():
        y = torch.nn.functional.conv2d(xt, wt, bt, padding=padding)
        if dyt is None:
            return y.detach().numpy()
        return (y.detach().numpy(),) + tuple(g.numpy() for g in torch.autograd.grad(y, (xt, wt, bt), dyt))

    return run


def fftconvolve_forward(x, w, b, padding):
    """The forward by ``scipy.signal.fftconvolve``, vectorised: every (image, filter,
    channel) plane in one call, broadcast over N and F, then summed over channels."""
    from scipy.signal import fftconvolve

    ph, pw = padding
    flipped = np.ascontiguousarray(w[None, :, :, ::-1, ::-1])  # (1, F, C, kh, kw): correlation as convolution

    def run():
        x_padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))[:, None]  # (N, 1, C, Hp, Wp)
        return fftconvolve(x_padded, flipped, mode="valid", axes=(-2, -1)).sum(axis=2) + b[:, None, None]

    return run


def runner(row, shape, backward):
    x, w, b, stride, padding, dy = problem(shape)
    dy = dy if backward else None
    if row == "torch":
        pytest.importorskip("torch")
        return torch_pass(x, w, b, padding, dy)
    if row == "scipy.fftconvolve":
        pytest.importorskip("scipy.signal")
        if backward:
            pytest.skip("scipy.signal.fftconvolve has no backward")
        return fftconvolve_forward(x, w, b, padding)
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
