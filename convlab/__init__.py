"""convlab: a from-scratch convolution lab.

One :class:`Conv2D` layer, many hand-written convolution strategies ("backends")::

    import convlab
    convlab.list_backends()   # ['auto', 'fft', 'fft-tiled', 'im2col', 'naive', 'winograd']
    y = convlab.conv2d(x, w, b, stride=1, padding=1, backend="naive")
    with convlab.use_backend("fft"):
        logits = model.forward(x)               # every unpinned Conv2D uses fft here
"""

import importlib.metadata

from convlab.allocator import keep_freed_memory
from convlab.data import DataError, Dataset, load_mnist
from convlab.layers import AvgPool2D, Conv2D, Dense, Flatten, Layer, MaxPool2D, ReLU
from convlab.losses import softmax, softmax_cross_entropy
from convlab.models import Sequential, get_model, list_models, reference_net
from convlab.optimizers import SGD
from convlab.registry import (
    Backend,
    Unsupported,
    conv2d,
    get_backend,
    list_backends,
    register_backend,
    use_backend,
)

__all__ = [
    "AvgPool2D", "MaxPool2D", "get_model", "list_models",
    "Backend", "Conv2D", "DataError", "Dataset", "Dense", "Flatten", "Layer", "ReLU", "SGD",
    "Sequential", "Unsupported", "conv2d", "get_backend", "list_backends", "load_mnist", "reference_net",
    "keep_freed_memory", "register_backend", "softmax", "softmax_cross_entropy", "use_backend",
]


def installed_version() -> str:
    """The installed convlab's version (``convlab --version``; recorded with each auto pick)."""
    try:
        return importlib.metadata.version("convlab")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"
