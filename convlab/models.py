"""Models: a small Sequential container, the networks it builds, and their registry.

A network is found by name through the entry-point group ``convlab.models`` (exactly like
backends, so a third-party package can add one): the entry point names a function
``build(seed=0, dtype=numpy.float32) -> Sequential`` whose weights are a pure function of
the seed; the first line of its docstring describes it. Built in: ``reference`` (the
assignment's network), ``lenet5`` and ``vgg3x3``. Anything else can be written as a spec
string (see :func:`parse_spec` and docs/networks.md)::

    c32k3p1 relu c32k3p1 relu maxpool2 flatten dense10

Every network reads 1x28x28 images (MNIST, Fashion-MNIST) and ends in 10 logits.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import entry_points

import numpy as np

from convlab.checks import output_size
from convlab.layers import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, as_rng
from convlab.registry import PluginWarning, get_backend

INPUT_SHAPE = (1, 28, 28)
CLASSES = 10
# The layer types whose arrays Sequential.least_memory counts.
MEMORY_COUNTED_LAYERS = (Conv2D, Dense, ReLU, Flatten, MaxPool2D, AvgPool2D)


class Sequential:
    """Layers applied in order; ``backward`` runs them in reverse.

    A ``ReLU`` right after a ``Conv2D`` is fused into it (the convolution's ``relu``), one
    between two ``Dense`` runs in place: see :class:`convlab.layers.ReLU`. None is made to
    write over the ``dy`` given to ``backward``.
    So the layers given to a Sequential belong to it, each at one position (the same object
    at two is refused: a layer keeps its last forward's input or output for its backward,
    which a second forward would overwrite): the fusion changes them for good. The
    ``Conv2D`` then has ``relu=True`` and, called alone or in another Sequential, applies
    the ReLU itself; the fused ``ReLU`` passes x through untouched and the in-place one
    writes over its x. Make new layers for another network.
    The first layer's input gradient is never needed, so it is not computed. Each layer's
    time is measured (two clock reads per layer and pass, well under a microsecond): the
    forward of a training step and its backward are added to ``layer_seconds`` when the
    backward runs, so forward-only passes (evaluation) do not count; ``steps`` counts them.
    """

    def __init__(self, *layers):
        for position, layer in enumerate(layers):
            check_layer(layer, position)
        check_distinct(layers)
        self.layers = list(layers)
        for before, layer, after in zip(self.layers, self.layers[1:], self.layers[2:] + [None]):
            if isinstance(layer, ReLU) and isinstance(before, Conv2D):
                # Applied by the convolution, chunk by chunk while its output is in cache.
                before.relu = layer.fused = True
            elif isinstance(layer, ReLU) and isinstance(before, Dense) and type(after) is Dense:
                # Its output is nobody else's and its dy the next Dense's new dx: no new array
                # each way. Not a last ReLU: its dy is the caller's, which it would overwrite.
                layer.inplace = True
        self.reset_timing()

    def reset_timing(self):
        """Start counting ``layer_seconds`` (one [forward, backward] per layer) and ``steps`` anew."""
        self.layer_seconds = np.zeros((len(self.layers), 2))
        self.steps = 0
        self._forward_seconds = np.zeros(len(self.layers))

    def forward(self, x):
        clock = time.perf_counter
        first = x
        for i, layer in enumerate(self.layers):
            started = clock()
            try:
                x = layer.forward(x)
            except ValueError as e:
                # A later layer refusing its input because the image has the wrong size: say
                # which layer, and what size of image the network reads. Any other error (a
                # backend's Unsupported, a bad setting, an input the network does fit) as it is.
                if i == 0 or type(e) is not ValueError or self._fits(first):
                    raise
                raise ValueError(self._forward_error(i, first, e)) from None
            self._forward_seconds[i] = clock() - started
        return x

    def _fits(self, x) -> bool:
        """Whether images shaped like ``x`` (N, ...) pass through every layer (:meth:`input_shapes`)."""
        try:
            self.input_shapes(1, tuple(x.shape[1:]))
        except (ValueError, AttributeError, TypeError):
            return False
        return True

    def _forward_error(self, i, x, error) -> str:
        """What forward says when layer ``i`` refuses its input, the network's being ``x``."""
        named = str(error).startswith(repr(self.layers[i]))  # Dense's own message names it
        message = f"layer {i} of the network{'' if named else f', {self.layers[i]!r},'} cannot take its input: {error}"
        shape = getattr(x, "shape", None)
        try:
            self.input_shapes(1, INPUT_SHAPE)
        except ValueError:
            return message  # not a network of 1x28x28 images: nothing more to say
        if shape is not None and tuple(shape[1:]) != INPUT_SHAPE:
            message += (f"; this network reads {'x'.join(map(str, INPUT_SHAPE))} images "
                        f"(N, {', '.join(map(str, INPUT_SHAPE))}), got {tuple(shape)}")
        return message

    __call__ = forward

    def backward(self, dy):
        clock = time.perf_counter
        for i in range(len(self.layers) - 1, -1, -1):
            started = clock()
            if self._factored_dx(i):
                dy = self.layers[i].backward(dy, need_dx=True, factored=True)
            else:
                dy = self.layers[i].backward(dy, need_dx=i > 0)
            self.layer_seconds[i, 1] += clock() - started
        self.layer_seconds[:, 0] += self._forward_seconds
        self.steps += 1

    def _factors_to(self, i) -> Conv2D | None:
        """The ``Conv2D`` to which layer i, if a ``Dense``, sends its input gradient through
        nothing but reshapes (``Flatten``) and fused ReLUs; else None. convlab's own classes
        only: a subclass's own ``backward`` may not take ``factored=`` or a factored dy."""
        if type(self.layers[i]) is not Dense:
            return None
        for layer in reversed(self.layers[:i]):
            if type(layer) is Flatten or (type(layer) is ReLU and layer.fused):
                continue
            return layer if type(layer) is Conv2D else None
        return None

    def _factored_dx(self, i) -> bool:
        """Whether layer i hands its input gradient on as its factors (:mod:`convlab.factored`):
        a ``Dense`` sending it to a ``Conv2D`` (:meth:`_factors_to`) whose backend takes them."""
        conv = self._factors_to(i)
        return conv is not None and conv.takes_factored_dy

    def named_parameters(self):
        """Yield (name, param, grad) with names like ``"0.w"``; grad is None before a backward."""
        for i, layer in enumerate(self.layers):
            for key, param in layer.params.items():
                yield f"{i}.{key}", param, layer.grads.get(key)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: param for name, param, _ in self.named_parameters()}

    def load_state_dict(self, state: dict[str, np.ndarray]):
        """Copy ``state`` into the parameters; names and shapes must match exactly.

        Each value must be a numpy array of floats; it is cast to the parameter's dtype (a
        float64 state loads into a float32 model, as ``torch``'s ``load_state_dict`` copies),
        but an int, bool or object array, or a list, is refused rather than converted, and so
        is a NaN or infinite value, or one beyond the model's dtype (1e300 into float32): the
        model would carry it until a forward refused it, far from here, or give NaN logits.
        Every value is checked (:func:`check_state`) before any is copied, so a refused state
        leaves the model as it was.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"state must be a dict of numpy arrays by parameter name (as state_dict() gives), "
                             f"got {type(state).__name__}")
        own = self.state_dict()
        check_state(state, own)
        for name, param in own.items():
            param[...] = state[name]

    def conv_layers(self):
        return [layer for layer in self.layers if isinstance(layer, Conv2D)]

    def indexed_conv_layers(self) -> list[tuple[int, Conv2D]]:
        """(position in ``layers``, layer) of each Conv2D layer, in order."""
        return [(i, layer) for i, layer in enumerate(self.layers) if isinstance(layer, Conv2D)]

    def set_backends(self, names):
        """Pin the Conv2D layers, in order, to the backends ``names`` (one per conv layer).

        A string is refused, not read as its letters ("fft" as three names); every name is
        looked up before any layer is pinned, so an unknown one leaves the model as it was."""
        convs = self.conv_layers()
        if isinstance(names, str):
            raise ValueError(f"set_backends takes a list of backend names, one per conv layer ({len(convs)}), "
                             f"got the string {names!r}; for every layer: [{names!r}] * {len(convs)}")
        names = list(names)
        if len(names) != len(convs):
            raise ValueError(f"{len(names)} backends given for {len(convs)} conv layers")
        names = [None if name is None else get_backend(name).name for name in names]
        for layer, name in zip(convs, names):
            layer.backend = name

    def input_shapes(self, batch=1, input_shape=INPUT_SHAPE) -> list[tuple]:
        """The shape of each layer's input, for a batch of ``batch`` images, without
        running anything; raises ValueError where a layer cannot take its input."""
        shapes, shape = [], (batch, *input_shape)
        for layer in self.layers:
            shapes.append(shape)
            shape = output_shape(layer, shape)
        return shapes

    def least_memory(self, batch, training=True) -> int:
        """A lower bound of the bytes one pass over a batch of ``batch`` images needs at its
        peak: what must be held at once whatever the backends do. Counted only what the
        layers below are known to hold (shapes from :meth:`input_shapes`, each array once):

        * forward only (``training=False``): the weights, the batch, and one layer's input
          and the new array it writes its output into;
        * a training step: the weights and their momentum; the activations the layers keep
          for the backward (a ``Dense``'s input, a ``MaxPool2D``'s padded input and output, a
          ``ReLU``'s output; a convolution's backend keeps what it chooses, so none) and the
          batch; and the larger of the weights' gradients (all held at the optimizer's step)
          and the gradients of one layer's output and input (held together in its backward).

        Views (``Flatten``, a fused or in-place ``ReLU``) are no new arrays, and neither is a
        ``Dense``'s input gradient that it may hand on as factors to a convolution
        (:meth:`_factors_to`; whether it does is the backend's to say). A layer of
        another type counts as nothing. Not counted at all: backends' workspaces (im2col's
        unrolled windows, FFT spectra), numpy's temporaries, the data set, Python. So a
        pass never needs less, and a network this refuses could not have run.
        """
        shapes = self.input_shapes(batch)
        shapes.append(output_shape(self.layers[-1], shapes[-1]))
        weights = [param for _, param, _ in self.named_parameters()]
        itemsize = weights[0].itemsize if weights else np.dtype(np.float32).itemsize
        params = sum(param.nbytes for param in weights)

        def size(shape) -> int:  # Python ints: no overflow, whatever the network
            return math.prod(shape) * itemsize

        # Each layer's input is an array (by number; 0 is the batch) or a view of one;
        # unknown holds the numbers of arrays some other layer type made (not counted).
        arrays, unknown, kept = [0], set(), {0: size(shapes[0])}
        # The Dense layers that may hand on their dx as factors, and the layers whose dy that
        # dx is (the convolution it goes to and the views between).
        factored, factored_dy = set(), set()
        for i in range(len(self.layers)):
            conv = self._factors_to(i)
            if conv is not None:
                factored.add(i)
                factored_dy.update(range(next(j for j in range(i) if self.layers[j] is conv), i))
        forward_peak = gradient_peak = 0
        for i, layer in enumerate(self.layers):
            x, y, source = shapes[i], shapes[i + 1], arrays[i]
            view = isinstance(layer, Flatten) or isinstance(layer, ReLU) and (layer.fused or layer.inplace)
            known = isinstance(layer, MEMORY_COUNTED_LAYERS)
            arrays.append(source if view else len(arrays))
            if not known:
                unknown.add(arrays[-1])
            held_input = 0 if source == 0 or source in unknown else size(x)  # the batch is held throughout
            forward_peak = max(forward_peak, held_input + (0 if view or not known else size(y)))
            if isinstance(layer, Dense):
                kept[source] = size(x)
            elif isinstance(layer, ReLU) and not layer.fused:
                kept[arrays[-1]] = size(y)
            elif isinstance(layer, MaxPool2D):
                kept[arrays[-1]] = size(y)
                padded = (x[0], x[1], *(side + 2 * pad for side, pad in zip(x[2:], layer.padding)))
                kept[source if padded == x else -i - 1] = size(padded)  # a padded copy is another array
            # Its dy is the loss's gradient or the next layer's dx (unknown from another type).
            dy = size(y) if i + 1 == len(self.layers) or isinstance(self.layers[i + 1], MEMORY_COUNTED_LAYERS) else 0
            if i in factored_dy:
                dy = 0  # perhaps never an array: formed chunk by chunk from a Dense's factors
            dx = size(x) if i > 0 and known and not view and i not in factored else 0
            gradient_peak = max(gradient_peak, dy + dx)
        if not training:
            return params + kept[0] + forward_peak
        activations = sum(nbytes for array, nbytes in kept.items() if array not in unknown)
        return 2 * params + activations + max(params, gradient_peak)

    def __repr__(self):
        return "Sequential(\n" + "".join(f"  {layer!r}\n" for layer in self.layers) + ")"


def check_state(state, own, what="parameter", owner="this model"):
    """Refuse ``state`` (arrays by name) unless it holds, for each name of ``own`` (the arrays
    it is to be copied into) and no other, a numpy array of floats of that array's shape
    whose values stay finite in its dtype (see :meth:`Sequential.load_state_dict`, and
    ``Checkpoint.restore`` for an optimizer's momentum buffers). Each error names ``what``
    was refused ("parameter 0.w") and whose arrays they were to go into (``owner``)."""
    if set(state) != set(own):
        raise ValueError(f"{what} names {sorted(state)} do not match {owner}'s {sorted(own)}")
    for name, param in own.items():
        value = state[name]
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{what} {name} must be a numpy array of shape {param.shape}, "
                             f"got {type(value).__name__}")
        if value.shape != param.shape:
            raise ValueError(f"{what} {name} has shape {value.shape}, {owner} needs {param.shape}")
        if value.dtype.kind != "f":
            raise ValueError(f"{what} {name} must be an array of floats (float32 or float64; {owner} "
                             f"is {param.dtype}), got {value.dtype}")
        with np.errstate(over="ignore"):  # a value too big for the target's dtype: said below
            finite = np.isfinite(value.astype(param.dtype, copy=False)).all()
        if not finite:
            beyond = f" or beyond {param.dtype}'s range" if np.isfinite(value).all() else ""
            raise ValueError(f"{what} {name} holds NaN or infinite values{beyond}; every value must be finite")


def check_layer(layer, position):
    """A TypeError, up front, for what ``Sequential`` cannot run as its layer ``position``:
    else the first forward fails with an AttributeError deep inside, or, for a class
    (``ReLU`` for ``ReLU()``), a TypeError about a missing ``x``."""
    what = f"Sequential's argument {position} ({layer!r})"
    if isinstance(layer, (list, tuple)):
        raise TypeError(f"{what} is a {type(layer).__name__}; pass the layers as separate arguments: "
                        "Sequential(*layers)")
    if isinstance(layer, type):
        raise TypeError(f"{what} is a class, not a layer; make one: {layer.__name__}(...)")
    missing = [name for name in ("forward", "backward") if not callable(getattr(layer, name, None))]
    missing += [name for name in ("params", "grads") if not isinstance(getattr(layer, name, None), Mapping)]
    if missing:
        raise TypeError(f"{what} is not a layer: it has no {', '.join(missing)}; a layer has forward(x), "
                        "backward(dy, need_dx) and dicts params and grads, as convlab.Layer's subclasses")


def check_distinct(layers):
    """A ValueError, up front, if one layer object is at two of ``Sequential``'s positions: a
    layer keeps what its backward needs from its last forward, which the second position's
    forward overwrote (wrong gradients, or a shape error in the backward), and a ReLU fused
    into the convolution before one position passed the other's input through untouched
    (a wrong forward, silently)."""
    first = {}
    for position, layer in enumerate(layers):
        earlier = first.setdefault(id(layer), position)
        if earlier != position:
            raise ValueError(f"Sequential's arguments {earlier} and {position} are the same layer object "
                             f"({layer!r}); a layer keeps its last input or output for its backward, so make a new "
                             f"layer for each position ({type(layer).__name__}(...) each time)")


def output_shape(layer, shape) -> tuple:
    """The output shape of ``layer`` for an input of ``shape``."""
    if isinstance(layer, Conv2D):
        f, c, kh, kw = layer.params["w"].shape
        if len(shape) != 4 or shape[1] != c:
            raise ValueError(f"{layer!r} needs an input of {c} channels (N, {c}, H, W), gets {shape}")
        oh, ow = (output_size(size, k, s, p) for size, k, s, p in zip(shape[2:], (kh, kw), layer.stride, layer.padding))
        if oh < 1 or ow < 1:
            raise ValueError(f"{layer!r}: its {kh}x{kw} kernel is larger than its padded input {shape[2:]}")
        return shape[0], f, oh, ow
    if isinstance(layer, (MaxPool2D, AvgPool2D)):
        if len(shape) != 4:
            raise ValueError(f"{layer!r} needs an image input (N, C, H, W), gets {shape}")
        return layer.output_shape(shape)
    if isinstance(layer, Flatten):
        return shape[0], int(np.prod(shape[1:]))
    if isinstance(layer, Dense):
        if len(shape) != 2 or shape[1] != layer.params["w"].shape[0]:
            raise ValueError(f"{layer!r} needs an input of {layer.params['w'].shape[0]} features, gets {shape}")
        return shape[0], layer.params["w"].shape[1]
    return shape


def describe_layer(layer, x_shape) -> str:
    """A layer in a few words, given its input shape, e.g. "conv 6 -> 16 filters 5x5,
    stride 1, padding 0, on 14x14" or "max-pool 2x2, stride 2, on 6x28x28"."""
    def pair(values):
        return str(values[0]) if values[0] == values[1] else "x".join(map(str, values))

    if isinstance(layer, Conv2D):
        f, c, kh, kw = layer.params["w"].shape
        return (f"conv {c} -> {f} filters {kh}x{kw}, stride {pair(layer.stride)}, padding {pair(layer.padding)}, "
                f"on {x_shape[2]}x{x_shape[3]}")
    if isinstance(layer, (MaxPool2D, AvgPool2D)):
        kind = "max-pool" if isinstance(layer, MaxPool2D) else "avg-pool"
        padding = f", padding {pair(layer.padding)}" if any(layer.padding) else ""
        return (f"{kind} {layer.kernel_size[0]}x{layer.kernel_size[1]}, stride {pair(layer.stride)}{padding}, "
                f"on {'x'.join(map(str, x_shape[1:]))}")
    if isinstance(layer, Dense):
        return "dense {} -> {}".format(*layer.params["w"].shape)
    return type(layer).__name__ if isinstance(layer, ReLU) else type(layer).__name__.lower()


def reference_net(seed=0, dtype=np.float32, *, backend=None) -> Sequential:
    """The assignment's network: 1x28x28 -> conv 32@7x7 (stride 1, padding 1) -> ReLU -> dense 10.

    Dense 10 gives the logits (softmax is in the loss). Same seed, same weights.
    ``backend`` pins the conv layer's (default: it follows :func:`convlab.use_backend`)."""
    rng = as_rng(seed, "seed", none_ok=False)
    conv = Conv2D(1, 32, 7, stride=1, padding=1, backend=backend, rng=rng, dtype=dtype)
    return Sequential(conv, ReLU(), Flatten(), Dense(32 * 24 * 24, 10, rng=rng, dtype=dtype))


# --- spec strings ------------------------------------------------------------------------

# One pattern per kind of token; the groups are its numbers (stride and padding optional).
TOKENS = {
    "conv": (re.compile(r"c(\d+)k(\d+)(?:s(\d+))?(?:p(\d+))?"), "c<filters>k<kernel>[s<stride>][p<padding>]"),
    "maxpool": (re.compile(r"maxpool(\d+)(?:s(\d+))?(?:p(\d+))?"), "maxpool<kernel>[s<stride>][p<padding>]"),
    "avgpool": (re.compile(r"avgpool(\d+)(?:s(\d+))?(?:p(\d+))?"), "avgpool<kernel>[s<stride>][p<padding>]"),
    "dense": (re.compile(r"dense(\d+)"), "dense<units>"),
    "relu": (re.compile(r"relu"), "relu"),
    "flatten": (re.compile(r"flatten"), "flatten"),
}
EXPECTED = ", ".join(form for _, form in TOKENS.values())
# How many of a token's leading numbers are sizes, which must be at least 1.
SIZES = {"conv": 2, "maxpool": 1, "avgpool": 1, "dense": 1}


class SpecError(ValueError):
    """A model spec string that does not describe a network convlab can build."""


@dataclass(frozen=True)
class LayerSpec:
    """One token of a spec: its kind (a key of :data:`TOKENS`) and numbers."""

    kind: str
    numbers: tuple = field(default=())


def parse_spec(spec: str) -> list[LayerSpec]:
    """The layers of a spec string: whitespace-separated tokens, in order (case ignored).

    ``c<F>k<K>[s<S>][p<P>]``  convolution, F filters K x K, stride S (1), zero padding P (0)
    ``maxpool<K>[s<S>][p<P>]``, ``avgpool<K>[s<S>][p<P>]``  pooling, stride S (default K)
    ``relu``, ``flatten``, ``dense<N>``  (a dense layer after an image layer flattens first)

    Input is 1x28x28; the last layer must give the 10 class logits. Raises
    :class:`SpecError` naming the first token that is wrong and what was expected.
    """
    tokens = spec.lower().split() if isinstance(spec, str) else []
    if not tokens:
        raise SpecError(f"a model spec is a string of layers such as \"c32k3p1 relu maxpool2 dense10\", got {spec!r}")
    layers = []
    for position, token in enumerate(tokens, start=1):
        for kind, (pattern, _) in TOKENS.items():
            match = pattern.fullmatch(token)
            if match:
                layers.append(LayerSpec(kind, tuple(None if g is None else int(g) for g in match.groups())))
                break
        else:
            raise SpecError(f"model spec token {position} {token!r} is not a layer; expected one of: {EXPECTED}")
        if any(n < 1 for n in layers[-1].numbers[:SIZES.get(layers[-1].kind, 0)]):  # strides: checked by the layers
            raise SpecError(f"model spec token {position} {token!r}: sizes must be at least 1")
    return layers


def weightless(layer, **shapes):
    """``layer`` (made with the smallest sizes its kind takes) given parameters of ``shapes``
    that take no memory: read-only views of one zero (``np.broadcast_to``), whose shape,
    size and nbytes are those of the real arrays. Enough to check, describe and count a
    network; not to run it."""
    for name, shape in shapes.items():
        layer.params[name] = np.broadcast_to(np.zeros((), layer.params[name].dtype), shape)
    return layer


def spec_network(layers: list[LayerSpec], spec: str, seed=0, dtype=np.float32, weights=True) -> Sequential:
    """The network of parsed spec ``layers`` (from :func:`parse_spec` of ``spec``), with
    weights drawn in layer order from one generator seeded with ``seed``. ``weights=False``:
    its parameters take no memory (:func:`weightless`; the same shapes, the same checks), for
    checking a spec and describing its network (``c100000k3 dense10`` has 3 GB of weights)."""
    rng = as_rng(seed, "seed", none_ok=False)
    built, shape = [], (1, *INPUT_SHAPE)
    for position, (layer, token) in enumerate(zip(layers, spec.lower().split()), start=1):
        numbers = layer.numbers
        if layer.kind == "dense" and len(shape) == 4:
            built.append(Flatten())
            shape = output_shape(built[-1], shape)
        try:
            if layer.kind == "conv":
                filters, kernel, stride, padding = numbers
                stride = 1 if stride is None else stride  # 0 is refused by Conv2D, not read as 1
                if weights:
                    new = Conv2D(shape[1], filters, kernel, stride, padding or 0, rng=rng, dtype=dtype)
                else:  # Conv2D checks the kernel, stride and padding; the sizes are >= 1 (parse_spec)
                    new = weightless(Conv2D(1, 1, kernel, stride, padding or 0, dtype=dtype),
                                     w=(filters, shape[1], kernel, kernel), b=(filters,))
            elif layer.kind in ("maxpool", "avgpool"):
                kernel, stride, padding = numbers
                new = (MaxPool2D if layer.kind == "maxpool" else AvgPool2D)(kernel, stride, padding or 0)
            elif layer.kind == "dense":
                new = (Dense(shape[1], numbers[0], rng=rng, dtype=dtype) if weights else
                       weightless(Dense(1, 1, dtype=dtype), w=(shape[1], numbers[0]), b=(numbers[0],)))
            else:
                new = ReLU() if layer.kind == "relu" else Flatten()
            if len(shape) == 2 and layer.kind in ("conv", "maxpool", "avgpool", "flatten"):
                raise ValueError("it needs an image (C, H, W) but comes after the network was flattened")
            shape = output_shape(new, shape)
        except ValueError as e:
            raise SpecError(f"model spec token {position} {token!r} does not fit its input "
                            f"{'x'.join(map(str, shape[1:]))}: {e}") from None
        except MemoryError as e:  # a spec's layers can be any size
            raise SpecError(f"model spec token {position} {token!r} on its input {'x'.join(map(str, shape[1:]))} "
                            f"needs more memory than there is ({e}); use fewer filters or features") from None
        built.append(new)
    if shape != (1, CLASSES):
        raise SpecError(f"a model spec must end in the {CLASSES} class logits (such as dense{CLASSES}); "
                        f"{spec!r} ends in {'x'.join(map(str, shape[1:]))} values")
    return Sequential(*built)


def normal_spec(spec: str) -> str:
    """A spec string as recorded: lower case, single spaces."""
    return " ".join(spec.lower().split())


def spec_model(spec: str) -> Sequential:
    """A builder for the network of ``spec``: checks it once (raising :class:`SpecError`),
    without weights (it allocated them all, 3 GB for ``c100000k3 dense10``, to check shapes)."""
    layers = parse_spec(spec)
    spec_network(layers, spec, weights=False)  # refuses a spec whose shapes do not fit, before anything runs
    return partial(spec_network, layers, normal_spec(spec))


LENET5 = "c6k5p2 relu maxpool2 c16k5 relu maxpool2 flatten dense120 relu dense84 relu dense10"
VGG3X3 = "c32k3p1 relu c32k3p1 relu maxpool2 c64k3p1 relu c64k3p1 relu maxpool2 flatten dense10"


def lenet5(seed=0, dtype=np.float32) -> Sequential:
    """LeNet-5: conv 6@5x5 pad 2 -> ReLU -> max-pool 2 -> conv 16@5x5 -> ReLU -> max-pool 2 -> dense 120 -> ReLU -> dense 84 -> ReLU -> dense 10."""
    return spec_network(parse_spec(LENET5), LENET5, seed, dtype)


def vgg3x3(seed=0, dtype=np.float32) -> Sequential:
    """VGG-style 3x3 stack: 2 x conv 32@3x3 pad 1 (ReLU) -> max-pool 2 -> 2 x conv 64@3x3 pad 1 (ReLU) -> max-pool 2 -> dense 10."""
    return spec_network(parse_spec(VGG3X3), VGG3X3, seed, dtype)


# --- the registry ------------------------------------------------------------------------

ENTRY_POINT_GROUP = "convlab.models"
DEFAULT_MODEL = "reference"


@dataclass(frozen=True)
class Model:
    """A network by name (registered, or a normalised spec string): ``build(seed, dtype)``
    makes it with fresh weights."""

    name: str
    build: object
    description: str = ""
    layout: object = None  # () -> the network without weights (see spec_network), where the builder can

    def shape_only(self):
        """The network as far as its layers and their parameters' shapes go: without weights
        for a spec (:func:`weightless`), else (a registered builder) built as it is."""
        return self.layout() if self.layout is not None else self.build()


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
    """The network called ``name``, or described by ``name`` as a spec string (see
    :func:`parse_spec`). An unknown name raises ValueError listing the valid ones; a bad
    spec, :class:`SpecError` naming the token."""
    models = installed_models()
    if name in models:
        return models[name]
    if not isinstance(name, str) or len(name.split()) < 2 and not any(
            pattern.fullmatch(name.lower()) for pattern, _ in TOKENS.values()):
        raise ValueError(f"unknown model {name!r}; valid models are: {', '.join(sorted(models))}, or a spec string "
                         "such as \"c32k3p1 relu maxpool2 dense10\" (see docs/networks.md)")
    build = spec_model(name)
    return Model(normal_spec(name), build, f"the network of the spec {normal_spec(name)!r}",
                 partial(build, weights=False))
