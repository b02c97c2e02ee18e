"""The anchors: other libraries' convolutions that the benchmarks measure convlab against.

Each is an optional reference row, skipped (or left out of a script's table) where it cannot
run; convlab and its backends never import any of them. ``pip install torch==2.13.0 scipy
fft-conv-pytorch==1.2.0`` adds them all (a CPU build of PyTorch; NNPACK comes inside it).

- ``torch``: ``torch.nn.functional.conv2d``, backward by autograd. On the CPU build of
  PyTorch 2.13.0 it runs oneDNN (``aten::mkldnn_convolution``) on every benchmark shape.
- ``scipy.fftconvolve``: ``scipy.signal.fftconvolve`` on every (image, filter, channel)
  plane at once, whole-image FFT; forward only (SciPy has no backward).
- ``nnpack``: ``torch._nnpack_spatial_convolution``, which PyTorch's CPU build carries:
  NNPACK's ``nnp_convolution_output`` with algorithm auto, float32 only. NNPACK takes FFT
  16x16 tiles for kernels over 8; otherwise 8x8 tiles while they number at most 4 times
  the 16x16 ones would (Winograd F(6x6, 3x3) for a 3x3 kernel, FFT 8x8 for the others),
  else FFT 16x16. Kernels of at most 16, padding less than the kernel. Forward only:
  PyTorch's autograd for it is ``aten::convolution_backward``, PyTorch's own backward, not
  NNPACK's. (Batch 1 and strides over 1 go to another NNPACK call,
  ``nnp_convolution_inference``, image by image; no benchmark shape has either.)
- ``fft-conv-pytorch``: ``fft_conv_pytorch.fft_conv`` (1.2.0), a whole-image FFT
  convolution written in PyTorch (``torch.fft.rfftn``, per-bin products as real matmuls,
  ``irfftn``), correlation with zero padding and bias as ``F.conv2d``; it computes in
  float32 whatever it is given. Forward and backward (autograd through ``torch.fft``).

:func:`anchor_pass` returns a no-argument function, as :func:`convlab.timing.conv_pass`
does: it returns y (N, F, OH, OW), or (y, dx, dw, db) given the output gradient dy, for x
(N, C, H, W), w (F, C, kh, kw), b (F,) as numpy arrays, stride 1, padding (ph, pw).
"""

import importlib.util
import warnings

import numpy as np

ANCHORS = ("torch", "scipy.fftconvolve", "nnpack", "fft-conv-pytorch")
TORCH = "pip install torch==2.13.0 (a CPU build)"
NO_BACKWARD = {
    "scipy.fftconvolve": "has no backward",
    "nnpack": "is forward only: PyTorch's backward for it is aten::convolution_backward, not NNPACK",
}
NNPACK_MAX_KERNEL = 16  # its largest tile, FFT 16x16


def installed(module):
    return importlib.util.find_spec(module) is not None


def missing(row):
    """Why anchor ``row`` cannot run in this process, in words that follow its name, or None.

    ``nnpack``'s check imports PyTorch (a second or two) and initialises NNPACK.
    """
    if row == "scipy.fftconvolve":
        return None if installed("scipy") else "is not installed: pip install scipy"
    if not installed("torch"):
        return f"is not installed: {TORCH}" if row == "torch" else f"needs PyTorch, which is not installed: {TORCH}"
    if row == "nnpack":
        import torch

        if not torch.backends.nnpack.is_available():
            return "is not in this PyTorch build, or not for this CPU (on x86-64 NNPACK needs AVX2 and FMA3)"
    if row == "fft-conv-pytorch" and not installed("fft_conv_pytorch"):
        return "is not installed: pip install fft-conv-pytorch==1.2.0"
    return None


def unsupported(row, w_shape, padding, backward):
    """Why anchor ``row`` cannot compute this convolution (w (F, C, kh, kw), padding
    (ph, pw), stride 1), in words that follow its name, or None."""
    if backward and row in NO_BACKWARD:
        return NO_BACKWARD[row]
    if row == "nnpack":
        if max(w_shape[2:]) > NNPACK_MAX_KERNEL:
            return f"takes kernels of at most {NNPACK_MAX_KERNEL}x{NNPACK_MAX_KERNEL} (its largest FFT tile)"
        if padding[0] >= w_shape[2] or padding[1] >= w_shape[3]:
            return "pads by less than the kernel's size only"
    return None


def anchor_pass(row, x, w, b, padding, dy=None):
    """One pass of anchor ``row`` on these arrays (see the module's docstring)."""
    if row == "scipy.fftconvolve":
        return fftconvolve_forward(x, w, b, padding)
    import torch

    if row == "torch":
        def conv(xt, wt, bt):
            return torch.nn.functional.conv2d(xt, wt, bt, padding=padding)
    elif row == "nnpack":
        # nnp_initialize: without it every call fails, "NNPACK SpatialConvolution_updateOutput failed".
        torch.backends.nnpack.is_available()

        def conv(xt, wt, bt):
            return torch._nnpack_spatial_convolution(xt, wt, bt, padding=list(padding))
    elif row == "fft-conv-pytorch":
        from fft_conv_pytorch import fft_conv

        # fft_conv crops its output with a list of slices, which PyTorch 2.13 still reads as
        # a tuple (the results match the reference), with a UserWarning.
        warnings.filterwarnings("ignore", "Using a non-tuple sequence for multidimensional indexing", UserWarning)

        def conv(xt, wt, bt):
            return fft_conv(xt, wt, bt, padding=padding)
    else:
        raise ValueError(f"{row} is not one of the anchors {', '.join(ANCHORS)}")
    return autograd_pass(conv, x, w, b, dy)


def autograd_pass(conv, x, w, b, dy=None):
    """``conv(x, w, b)`` on tensors sharing the arrays' memory; given dy, also its gradients
    by ``torch.autograd``."""
    import torch

    xt, wt, bt = (torch.from_numpy(a).requires_grad_(dy is not None) for a in (x, w, b))
    dyt = None if dy is None else torch.from_numpy(dy)

    def run():
        y = conv(xt, wt, bt)
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
