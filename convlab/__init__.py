"""convlab: a from-scratch convolution lab.

One :class:`Conv2D` layer, many hand-written convolution strategies ("backends")::

    import convlab
    convlab.list_backends()   # ['auto', 'fft', 'fft-tiled', 'im2col', 'naive', 'winograd']
    y = convlab.conv2d(x, w, b, stride=1, padding=1, backend="naive")
    with convlab.use_backend("fft"):
        logits = model.forward(x)               # every unpinned Conv2D uses fft here

The names below are imported at their first use (PEP 562), not by ``import convlab``:
the ``convlab`` command imports this package before any code of its own can run, and
numpy and h5py take about 0.2 s to import: imported later, by ``convlab.cli.main``, a
Ctrl-C during them ends in ``convlab: interrupted``, not a traceback.
"""

import importlib

# Each public name -> the module that defines it.
_EXPORTS = {
    "keep_freed_memory": "convlab.allocator",
    **dict.fromkeys(("DataError", "Dataset", "load_mnist"), "convlab.data"),
    **dict.fromkeys(("AvgPool2D", "Conv2D", "Dense", "Flatten", "Layer", "MaxPool2D", "ReLU"), "convlab.layers"),
    **dict.fromkeys(("softmax", "softmax_cross_entropy"), "convlab.losses"),
    **dict.fromkeys(("Sequential", "get_model", "list_models", "reference_net"), "convlab.models"),
    "SGD": "convlab.optimizers",
    **dict.fromkeys(("Backend", "Unsupported", "conv2d", "get_backend", "list_backends", "register_backend",
                     "use_backend"), "convlab.registry"),
}

__all__ = [
    "AvgPool2D", "MaxPool2D", "get_model", "list_models",
    "Backend", "Conv2D", "DataError", "Dataset", "Dense", "Flatten", "Layer", "ReLU", "SGD",
    "Sequential", "Unsupported", "conv2d", "get_backend", "list_backends", "load_mnist", "reference_net",
    "keep_freed_memory", "register_backend", "softmax", "softmax_cross_entropy", "use_backend",
]


def __getattr__(name):
    """A public name, imported from its module at its first use (see the module doc), or
    a submodule, as ``import convlab`` used to import them all (``convlab.layers.forward_only()``)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":  # a submodule that needs something missing
                raise
            raise AttributeError(f"module 'convlab' has no attribute {name!r}") from None
    globals()[name] = value  # later uses find it without this function
    return value


def __dir__():
    return sorted({*globals(), *_EXPORTS})


def installed_version() -> str:
    """The installed convlab's version (``convlab --version``; recorded with each auto pick)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("convlab")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"
