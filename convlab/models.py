"""Models: a small Sequential container, the networks it builds, and their registry.

A network is registered under a name through the entry-point group ``convlab.models``
(exactly like backends: a third-party package can add one); the entry point names a
function ``build(seed=0, dtype=numpy.float32) -> Sequential`` whose weights are a pure
function of the seed. :func:`get_model` finds one by name.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points

import numpy as np

from convlab.layers import Conv2D, Dense, Flatten, ReLU
from convlab.registry import PluginWarning


class Sequential:
    """Layers applied in order; ``backward`` runs them in reverse.

    The first layer's input gradient is never needed, so it is not computed.
    """

    def __init__(self, *layers):
        self.layers = list(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward

    def backward(self, dy):
        for i, layer in reversed(list(enumerate(self.layers))):
            dy = layer.backward(dy, need_dx=i > 0)

    def named_parameters(self):
        """Yield (name, param, grad) with names like ``"0.w"``; grad is None before a backward."""
        for i, layer in enumerate(self.layers):
            for key, param in layer.params.items():
                yield f"{i}.{key}", param, layer.grads.get(key)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: param for name, param, _ in self.named_parameters()}

    def load_state_dict(self, state: dict[str, np.ndarray]):
        """Copy ``state`` into the parameters; names and shapes must match exactly."""
        own = self.state_dict()
        if set(state) != set(own):
            raise ValueError(f"parameter names {sorted(state)} do not match this model's {sorted(own)}")
        for name, param in own.items():
            if state[name].shape != param.shape:
                raise ValueError(f"parameter {name} has shape {state[name].shape}, this model needs {param.shape}")
            param[...] = state[name]

    def conv_layers(self):
        return [layer for layer in self.layers if isinstance(layer, Conv2D)]

    def set_backend(self, name):
        """Pin every Conv2D layer to backend ``name`` (None: follow ``use_backend``)."""
        for layer in self.conv_layers():
            layer.backend = name

    def __repr__(self):
        return "Sequential(\n" + "".join(f"  {layer!r}\n" for layer in self.layers) + ")"


def reference_net(seed=0, backend=None, dtype=np.float32) -> Sequential:
    """The assignment's network: 1x28x28 -> conv 32 filters 7x7, stride 1, padding 1
    -> ReLU -> dense 10 (logits; softmax is in the loss). Same seed, same weights."""
    rng = np.random.default_rng(seed)
    conv = Conv2D(1, 32, 7, stride=1, padding=1, backend=backend, rng=rng, dtype=dtype)
    return Sequential(conv, ReLU(), Flatten(), Dense(32 * 24 * 24, 10, rng=rng, dtype=dtype))


ENTRY_POINT_GROUP = "convlab.models"
DEFAULT_MODEL = "reference"


@dataclass(frozen=True)
class Model:
    """A network by name: ``build(seed, dtype)`` makes it with fresh weights."""

    name: str
    build: object
    description: str = ""


def installed_models() -> dict[str, Model]:
    """The registered networks (entry-point group ``convlab.models``) by name; one that
    fails to load is skipped with one warning naming it, as a broken backend plugin is."""
    models = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            build = ep.load()
        except Exception as e:  # noqa: BLE001 - any error of third-party code
            warnings.warn(f"skipping model {ep.name!r} (entry point {ep.value}): it failed to load: "
                          f"{type(e).__name__}: {e}", PluginWarning)  # one location: shown once
            continue
        doc = (build.__doc__ or "").strip()
        models[ep.name] = Model(ep.name, build, doc.splitlines()[0] if doc else "")
    return models


def list_models() -> list[str]:
    """Names of the registered networks that load, sorted."""
    return sorted(installed_models())


def get_model(name: str) -> Model:
    """The network called ``name``."""
    models = installed_models()
    if name in models:
        return models[name]
    raise ValueError(f"unknown model {name!r}; valid models are: {', '.join(sorted(models))}")
