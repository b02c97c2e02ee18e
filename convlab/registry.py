"""The backend registry: named convolution strategies behind one contract.

A backend is any object with a ``forward`` and a ``backward``::

    forward(x, w, b, stride, padding) -> (y, cache)
        x (N, C, H, W), w (F, C, kh, kw), b (F,)  ->  y (N, F, OH, OW)
        stride, padding: (h, w) pairs of ints (already checked and normalised)
    backward(dy, cache, need_dx=True) -> (dx, dw, db)
        dy (N, F, OH, OW) -> dx (N, C, H, W) or None when need_dx is False,
        dw (F, C, kh, kw), db (F,)

It computes the cross-correlation of ``torch.nn.functional.conv2d``: zero padding,
``OH = (H + 2*ph - kh) // sh + 1``. Arrays keep their dtype (float32 or float64).
The cache may keep x and w themselves (not copies) or anything computed from them, but
not y: y belongs to the caller, who may overwrite it. x and w stay as they are until the
backward (the caller's part, as torch's autograd keeps the tensors it saves; it refuses a
changed one, numpy cannot tell): changed in between, they give a silently wrong dw or dx.
Of convlab's own, ``winograd``'s cache keeps x (its backward transforms x's tiles again
for dw: keeping the forward's, 2.25x x for F(4x4, 3x3), or a copy of x would cost every
forward that memory and its writing), and ``naive``'s, ``im2col``'s and ``winograd``'s keep
w (for dx); ``fft``'s and ``fft-tiled``'s keep spectra of both; ``auto``'s, its pick's.

A backend may also apply a ReLU to its output itself, chunk by chunk while the output is
still in cache (as cuDNN's and oneDNN's fused convolution-activation)::

    fuses_relu = True
    forward(x, w, b, stride, padding, relu=False) -> (y, cache)
        with relu, y = max(conv(x) + b, 0); the cache may then keep y, which the caller
        leaves as it is until the backward
    backward(dy, cache, need_dx=True)
        after a forward with relu, dy is the gradient of the ReLU's output: the backend
        first keeps it only where y > 0

For any other backend :meth:`Backend.forward` with ``relu=True`` applies the ReLU after
the whole pass, and :meth:`Backend.backward` its gradient before (:mod:`convlab.relu`).

A backend may also take dy as the two factors of a dense layer's input gradient, and form
each chunk's rows where it uses them (the reference network's dy is 4.7 MB, written whole
by the dense layer and read again by the convolution otherwise)::

    takes_factored_dy = True
    backward(dy, cache, need_dx=True)
        dy may be a :class:`convlab.factored.FactoredGradient`: ``dy.rows(lo, hi)`` is
        dy[lo:hi] as a new array, ``dy.array()`` the whole of it (``im2col`` forms each
        chunk's rows, ``fft`` each tile's as it writes them into the transforms' grid)

Any other backend gets the whole array from :meth:`Backend.backward`.

A backend whose forward keeps something it would not need without a backward (``im2col``
its unrolled windows, 7.4 MB a batch on the MNIST layer) may also have an inference pass,
as NNPACK has ``nnp_convolution_inference`` beside ``nnp_convolution_output``::

    inference(x, w, b, stride, padding, relu=False) -> y
        y exactly as ``forward`` computes it (``relu`` only if it ``fuses_relu``), keeping
        nothing: evaluation, prediction, and the forward timed against PyTorch's
        forward without autograd

Without one, :meth:`Backend.inference` runs ``forward`` and lets its cache go.

A backend that cannot do every problem (Winograd: stride 1 and the kernel sizes it has
transforms for) also has::

    supports(x_shape, w_shape, stride, padding) -> None or a reason
        None when it can compute the problem; else what it cannot do, said so that
        "backend 'NAME' does not support <reason>" reads as a sentence, e.g.
        "stride 2 (stride 1 only)"
    limits: str, optional: one line on what it supports, shown by ``convlab backends``

and the checked :meth:`Backend.forward` raises :class:`Unsupported` before any work, never
a wrong answer and never a silent fallback to another backend. ``auto``, and another
backend's refusal listing those that can, ask every backend's ``supports``: one that raises,
or returns anything but None or a reason, is taken to support nothing (with a
:class:`PluginWarning`), so that its bug does not stop the others.

A backend that reads settings from the environment (``fft``'s and ``fft-tiled``'s FFTW
threads, planner and wisdom file, ``fft-tiled``'s and ``winograd``'s tile; ``auto`` those of
the backends it may time) checks them in::

    check_settings() -> None, or raises ValueError saying what is wrong and what is allowed

which ``convlab train`` and ``convlab bench`` call before they start
(:meth:`Backend.check_settings`), so a bad value stops a run before its first epoch. Any
other exception from it is a :class:`BackendError` naming the backend (which ``auto``,
checking every backend it may time, and ``convlab bench`` (``--profile`` too), of those not
named, only warn of).

A tuner, which runs another backend's passes rather than computing its own (``auto``), has::

    pick(x, w, stride, padding, need_dx=True) -> the name of the registered backend it
        runs for this problem

Any backend with a callable ``pick`` is taken for one: ``auto`` does not time tuners,
``convlab bench`` shows each tuner's pick (and times it only if named), and ``convlab
train`` runs each layer on its tuner's pick and records that.

The registry is a plain dict from name to a :class:`Backend`, which wraps the
implementation with the input checks, so no strategy has to repeat them, and checks what
it returns, from attributes alone (a few microseconds a call): a forward's (y, cache) pair
with y (N, F, OH, OW) in x's dtype and writeable, an inference's y alike, a backward's
(dx, dw, db) shaped as x, w and b in that dtype. Anything else is a :class:`BackendError` (a
ValueError) naming the backend and its class, never a wrong array passed on. Built-in and
third-party strategies alike are found through the entry-point group
``convlab.backends`` (convlab's own first: a plugin cannot take a built-in's name; how to
package and test one: docs/plugins.md); ``@register_backend(name)`` adds one from code.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import threading
import types
import warnings
from importlib.metadata import entry_points

import numpy as np

from convlab.checks import as_flag, as_pair, check_backward_inputs, check_forward_inputs, output_size
from convlab.factored import FactoredGradient
from convlab.profile import phase
from convlab import relu as relu_passes

ENTRY_POINT_GROUP = "convlab.backends"

_registry: dict[str, Backend] = {}
_entry_points_loaded = False
# Held while the entry points load: another thread's first list_backends() or get_backend()
# waits for all of them. Reentrant, and _entry_points_loading set meanwhile: a plugin that
# asks for the backends as it is imported gets what is registered so far, as before. So a
# plugin whose import waits for a thread it started that asks for them hangs (docs/plugins.md).
_entry_points_lock = threading.RLock()
_entry_points_loading = False
_skipped: dict[str, str] = {}  # name -> why its entry point was not loaded
_active_backend = contextvars.ContextVar("convlab_backend", default=None)
DEFAULT_BACKEND = "im2col"
# The loop-per-output-position definition: the test oracle, minutes on big layers.
ORACLE = "naive"


class Unsupported(ValueError):
    """A backend was asked for a problem it cannot compute (see ``Backend.supports``)."""


class BackendError(ValueError):
    """A backend broke the contract of the module doc: it returned something of the wrong
    type, shape or dtype. A bug in that backend, not in the caller's input; a ValueError
    all the same, so that ``convlab`` says it in one line (the fix at hand: another backend).
    :attr:`backend` is the name of the backend that broke (``convlab train`` names another
    in the command that resumes the run). Optional, as an exception's extra arguments must
    be for pickle and copy, which make it again from its message alone (the name follows)."""

    def __init__(self, message, backend=None):
        super().__init__(message)
        self.backend = backend


class Backend:
    """A named strategy wrapped with the input checks every strategy shares."""

    def __init__(self, name: str, impl):
        self.name = name
        self.impl = impl
        doc = (getattr(impl, "description", None) or impl.__doc__ or "").strip()
        self.description = doc.splitlines()[0] if doc else ""
        self.limits = getattr(impl, "limits", None) or "any problem"
        self.fuses_relu = bool(getattr(impl, "fuses_relu", False))
        self.takes_factored_dy = bool(getattr(impl, "takes_factored_dy", False))
        # The installed package ("name version") whose entry point provided it, if another
        # than convlab: which plugin to update or uninstall (`convlab backends` shows it).
        self.distribution = None

    def supports(self, x_shape, w_shape, stride=1, padding=0) -> str | None:
        """None if this backend can compute the convolution of an ``x_shape``
        (N, C, H, W) input with ``w_shape`` (F, C, kh, kw) filters; else the reason it cannot."""
        check = getattr(self.impl, "supports", None)
        if check is None:
            return None
        problem = tuple(x_shape), tuple(w_shape), as_pair(stride, "stride", 1), as_pair(padding, "padding", 0)
        try:
            reason = check(*problem)
        except Exception as e:  # noqa: BLE001 - a plugin's bug: auto and others' refusals ask every backend
            reason = e
        if reason is None or (isinstance(reason, str) and reason):
            return reason
        # A backend that cannot say is taken at its word for none of its problems.
        did = f"raised {type(reason).__name__}: {reason}" if isinstance(reason, Exception) else f"returned {reason!r}"
        warnings.warn(f"backend {self.name!r} ({qualified_name(self.impl)}) is broken: its supports() {did}, "
                      "where it must return None or a reason (str); it is not used", PluginWarning)
        return (f"x {problem[0]} with w {problem[1]}, stride {problem[2]}, padding {problem[3]}: its supports() "
                f"{did} (a bug in the backend: supports() must return None or a reason)")

    def check_settings(self, warn_if_broken=False):
        """Raise ``ValueError`` if a setting this backend reads from the environment (its
        threads, tile size, ...) is not allowed: called before a run starts, so that a bad
        value stops it then, not at the first pass. Optional for a backend (``check_settings``).

        Any other exception is the backend's bug: a :class:`BackendError`, or, with
        ``warn_if_broken`` (a check on behalf of a run that may not use this backend: ``auto``
        checking every candidate), a :class:`PluginWarning`, shown once however many ask."""
        check = getattr(self.impl, "check_settings", None)
        if check is None:
            return
        try:
            check()
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - a plugin's bug, said as one: which backend, what it raised
            what = (f"its check_settings() raised {type(e).__name__}: {e}, where it must return None or raise "
                    "ValueError saying which setting is wrong")
            if not warn_if_broken:
                raise self.broken(what) from e
            warnings.warn(str(self.broken(what, advice="its settings go unchecked and this run goes on")),
                          PluginWarning, stacklevel=1)  # here: once, however many ask

    def own_threads(self) -> int:
        """Threads this backend may start of its own (not convlab's chunk pool,
        :mod:`convlab.threads`, counted for every run): their stacks count against a process
        limit (``ulimit -v``) in the memory check. Optional for a backend (``own_threads``); 0
        without it."""
        count = getattr(self.impl, "own_threads", None)
        return 0 if count is None else int(count())

    def check_supported(self, x_shape, w_shape, stride=1, padding=0):
        """Raise :class:`Unsupported`, naming the backends that can, unless this one can."""
        reason = self.supports(x_shape, w_shape, stride, padding)
        if reason is None:
            return
        # The loop-per-output oracle is suggested only when nothing else can.
        able = [name for name in list_backends()
                if name != self.name and get_backend(name).supports(x_shape, w_shape, stride, padding) is None]
        able = [name for name in able if name != ORACLE] or able
        hint = f"; try {', '.join(able[:-1])} or {able[-1]}" if len(able) > 1 else (
            f"; try {able[0]}" if able else "")
        raise Unsupported(f"backend {self.name!r} does not support {reason}{hint}")

    def forward(self, x, w, b=None, stride=1, padding=0, relu=False):
        """Checked forward: ``x`` (N, C, H, W), ``w`` (F, C, kh, kw), ``b`` (F,) or None.
        ``relu=True``: the output is max(conv + b, 0) (see the module doc).
        Raises :class:`Unsupported` for a problem this backend cannot compute."""
        x, w, b, stride, padding, relu = self.checked_problem(x, w, b, stride, padding, relu)
        y, cache = self.unchecked_forward(x, w, b, stride, padding, relu)
        return y, _CheckedCache(self, x.shape, w.shape, y.shape, y.dtype, cache)

    def inference(self, x, w, b=None, stride=1, padding=0, relu=False):
        """Checked forward that keeps nothing for a backward: y as :meth:`forward` computes it."""
        return self.unchecked_inference(*self.checked_problem(x, w, b, stride, padding, relu))

    def checked_problem(self, x, w, b, stride, padding, relu):
        """(x, w, b, stride, padding, relu) checked and normalised, or a ValueError (an
        :class:`Unsupported` for a problem this backend cannot compute)."""
        x, w, b, stride, padding = check_forward_inputs(x, w, b, stride, padding)
        relu = as_flag(relu, "relu")
        self.check_supported(x.shape, w.shape, stride, padding)
        return x, w, b, stride, padding, relu

    def backward(self, dy, cache, need_dx=True):
        """Checked backward: ``dy`` shaped like the forward's ``y``; returns (dx, dw, db)."""
        if not isinstance(cache, _CheckedCache):
            raise ValueError(f"cache must be the second value returned by {self.name}.forward")
        # Each backend keeps its own layout in its cache: the same name and class (a module
        # reloaded registers an equal one), not necessarily the same object.
        if cache.backend is not self and (
                (cache.backend.name, qualified_name(cache.backend.impl)) != (self.name, qualified_name(self.impl))):
            if cache.backend.name == self.name:
                raise ValueError(f"cache comes from {qualified_name(cache.backend.impl)}.forward, registered as "
                                 f"{self.name!r} before {qualified_name(self.impl)} replaced it; run the forward again")
            raise ValueError(f"cache comes from {cache.backend.name}.forward; pass it to {cache.backend.name}'s "
                             f"backward, or run {self.name}.forward for {self.name}'s")
        need_dx = as_flag(need_dx, "need_dx")
        dy = check_backward_inputs(dy, cache.y_shape, cache.y_dtype)
        return self.checked_gradients(self.unchecked_backward(dy, cache.impl_cache, need_dx), cache, need_dx)

    def unchecked_forward(self, x, w, b, stride, padding, relu=False):
        """The implementation's forward on inputs already checked, with the ReLU fused when
        it can, else applied after the pass (then the cache keeps y for the backward); what
        it returned is checked (:meth:`checked_output`)."""
        if relu and self.fuses_relu:
            return self.checked_output(self.impl.forward(x, w, b, stride, padding, relu=True), x, w, stride, padding)
        y, cache = self.checked_output(self.impl.forward(x, w, b, stride, padding), x, w, stride, padding)
        if not relu:
            return y, cache
        with phase("ReLU"):
            relu_passes.relu(y, y)
        return y, _ReluApplied(y, cache)

    def unchecked_inference(self, x, w, b, stride, padding, relu=False):
        """The implementation's inference pass (else its forward, the cache let go) on
        inputs already checked, with the ReLU as in :meth:`unchecked_forward`."""
        inference = getattr(self.impl, "inference", None)
        if inference is None:
            return self.unchecked_forward(x, w, b, stride, padding, relu)[0]
        if self.fuses_relu:
            y = inference(x, w, b, stride, padding, relu=relu)
            return self.checked_output(y, x, w, stride, padding, "inference")
        y = self.checked_output(inference(x, w, b, stride, padding), x, w, stride, padding, "inference")
        if relu:
            with phase("ReLU"):
                relu_passes.relu(y, y)
        return y

    def unchecked_backward(self, dy, cache, need_dx=True):
        """The backward of :meth:`unchecked_forward`, for its cache."""
        if isinstance(dy, FactoredGradient) and (isinstance(cache, _ReluApplied) or not self.takes_factored_dy):
            with phase("GEMM dy"):
                dy = dy.array()
        if isinstance(cache, _ReluApplied):
            with phase("ReLU"):
                dy_kept = np.empty_like(dy)
                relu_passes.relu_gradient(dy, cache.y, dy_kept)
            dy, cache = dy_kept, cache.impl_cache
        return self.impl.backward(dy, cache, need_dx)

    def checked_output(self, returned, x, w, stride, padding, method="forward"):
        """What the implementation's ``method`` returned, if it is (y, cache) from
        ``"forward"`` (just y from ``"inference"``) with y (N, F, OH, OW) in x's dtype; else a
        :class:`BackendError`. A wrong y would otherwise pass silently: a (N, OH, OW, F) one
        flattens for a dense layer as well as the right one does. Attributes only, no pass
        over y: a few microseconds a call."""
        y = returned
        if method == "forward":
            if not isinstance(returned, (tuple, list)) or len(returned) != 2:
                raise self.broken(f"its forward returned {described(returned)}, not a pair (y, cache)")
            y = returned[0]
        shape = (x.shape[0], w.shape[0], output_size(x.shape[2], w.shape[2], stride[0], padding[0]),
                 output_size(x.shape[3], w.shape[3], stride[1], padding[1]))
        if not isinstance(y, np.ndarray) or y.shape != shape or y.dtype != x.dtype or not y.flags.writeable:
            raise self.broken(f"its {method} returned y {described(y)} for x {x.shape} and w {w.shape}, stride "
                              f"{stride}, padding {padding}, where y must be {shape} (N, F, OH, OW) {x.dtype}, "
                              "writeable (the caller's to overwrite)")
        return tuple(returned) if method == "forward" else y

    def checked_gradients(self, returned, cache, need_dx):
        """What the implementation's backward returned, if it is (dx, dw, db) shaped as x,
        w and b of the forward whose :class:`_CheckedCache` is ``cache``, in its dtype (dx
        may be None when ``need_dx`` is False); else a :class:`BackendError`: numpy would
        broadcast a db of one number over every filter's bias without a word."""
        if not isinstance(returned, (tuple, list)) or len(returned) != 3:
            raise self.broken(f"its backward returned {described(returned)}, not a triple (dx, dw, db)")
        for name, gradient, shape in zip(("dx", "dw", "db"), returned, (cache.x_shape, cache.w_shape,
                                                                          cache.w_shape[:1])):
            if gradient is None and name == "dx" and not need_dx:
                continue
            if not isinstance(gradient, np.ndarray) or gradient.shape != shape or gradient.dtype != cache.y_dtype:
                raise self.broken(f"its backward returned {name} {described(gradient)}, where {name} must be "
                                  f"{shape} {cache.y_dtype}" + (" (need_dx was True)" if name == "dx" else ""))
        return tuple(returned)

    def broken(self, what, advice="use another backend") -> BackendError:
        """The :class:`BackendError` saying that this backend did ``what``, and what to do."""
        return BackendError(f"backend {self.name!r} ({qualified_name(self.impl)}) is broken: {what}; "
                            f"{advice}, and tell its authors", self.name)

    def __repr__(self):
        return f"<convlab backend {self.name!r}: {self.description}>"


class _ReluApplied:
    """The cache of a forward whose ReLU was applied after the backend's pass."""
    __slots__ = ("y", "impl_cache")

    def __init__(self, y, impl_cache):
        self.y = y
        self.impl_cache = impl_cache


class _CheckedCache:
    """What :meth:`Backend.forward` returns as the cache: the implementation's own, with
    what the backward checks dy, the cache and its result against (x's, w's and y's shapes,
    the dtype, and the backend whose layout the cache is in)."""
    __slots__ = ("backend", "x_shape", "w_shape", "y_shape", "y_dtype", "impl_cache")

    def __init__(self, backend, x_shape, w_shape, y_shape, y_dtype, impl_cache):
        self.backend = backend
        self.x_shape = x_shape
        self.w_shape = w_shape
        self.y_shape = y_shape
        self.y_dtype = y_dtype
        self.impl_cache = impl_cache


def register_backend(name: str):
    """Class or object decorator: ``@register_backend("mine")`` makes it a backend.

    ``name`` has no spaces or commas (``--backend a,b`` is one name per conv layer).
    A class is instantiated with no arguments. Its ``description`` attribute, or else the
    first line of its docstring, is the one-line description ``convlab backends`` shows.
    A TypeError refuses an object without ``forward`` and ``backward``, with a
    ``supports``, ``check_settings`` or ``inference`` that is not a method, or that
    ``fuses_relu`` with a pass taking no ``relu`` argument.
    """

    if not isinstance(name, str) or not name or any(c.isspace() or c == "," for c in name):
        # A comma separates one name per conv layer in --backend and in a run's recorded backends.
        raise ValueError(f"a backend name must be a non-empty string without spaces or commas (--backend reads "
                         f"'a,b' as a per-layer list), got {name!r}")

    def decorate(impl):
        instance = impl() if isinstance(impl, type) else impl
        for method in ("forward", "backward"):
            if not callable(getattr(instance, method, None)):
                raise TypeError(f"backend {name!r} has no {method}() method")
        for method in ("supports", "check_settings", "inference"):
            if getattr(instance, method, None) is not None and not callable(getattr(instance, method)):
                raise TypeError(f"backend {name!r}: {method} must be a method, got "
                                f"{type(getattr(instance, method)).__name__}")
        if getattr(instance, "fuses_relu", False):  # else the first forward with a ReLU fails
            for method in ("forward", "inference"):
                if hasattr(instance, method) and not takes_relu(getattr(instance, method)):
                    raise TypeError(f"backend {name!r} says it fuses_relu, but its {method}() takes no relu argument")
        previous = _registry.get(name)
        if (previous is not None and qualified_name(previous.impl) != qualified_name(instance)
                and not _entry_points_loading):  # else _load_entry_points puts it back, and says so
            # The same class registered again (a module reloaded) replaces itself silently.
            warnings.warn(f"backend {name!r} ({qualified_name(previous.impl)}) is replaced by "
                          f"{qualified_name(instance)}", RuntimeWarning, stacklevel=2)
        _registry[name] = Backend(name, instance)
        return impl

    return decorate


def takes_relu(method) -> bool:
    """Whether ``method`` can be called with ``relu=...`` (True if its signature is unknown)."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "relu" or p.kind is p.VAR_KEYWORD for p in parameters)


def described(value) -> str:
    """What a backend returned, for an error: an array's shape and dtype, else its type."""
    if isinstance(value, np.ndarray):
        return f"{value.shape} {value.dtype}" + ("" if value.flags.writeable else " read-only")
    return f"of type {type(value).__name__}" if value is not None else "None"


def qualified_name(instance) -> str:
    """``module.Class`` of a backend implementation, to tell two of them apart."""
    return f"{type(instance).__module__}.{type(instance).__qualname__}"


class PluginWarning(RuntimeWarning):
    """An installed plugin (a backend or model entry point) that could not be loaded."""


def _load_entry_points():
    """Load the backends of the entry points, once (see :data:`_entry_points_lock`)."""
    global _entry_points_loaded, _entry_points_loading
    if _entry_points_loaded:
        return
    with _entry_points_lock:
        if _entry_points_loaded or _entry_points_loading:
            return
        _entry_points_loading = True
        try:
            _load_each_entry_point()
        finally:
            _entry_points_loading = False
            _entry_points_loaded = True


def _load_each_entry_point():
    """Register the backend of each entry point of :data:`ENTRY_POINT_GROUP` whose name is
    free, warning about those that are not loaded (:func:`_skip`)."""
    # convlab's own first, so that a plugin cannot take a built-in's name, whichever comes
    # first on sys.path: `--backend im2col` is always convlab's im2col.
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: distribution(ep) != "convlab"):
        taken = _registry.get(ep.name)
        if taken is not None:
            # Registered by its own package imported first (or by one of its entry points
            # loaded before, a module of several backends): nothing to load. By other code:
            # that is said, even for a built-in (register_backend says so once they are loaded).
            if top_package(type(taken.impl).__module__) != top_package(ep.module):
                _skip(ep, f"the name is taken by {qualified_name(taken.impl)}"
                          + ("" if distribution(ep) == "convlab" else "; a plugin needs a name of its own"))
            else:
                taken.distribution = plugin_distribution(ep)
            continue
        before = dict(_registry)
        # One broken plugin must not take the others (and every command) down with it.
        try:
            loaded = ep.load()
            # Loading a module that uses @register_backend registers it; an entry point may
            # also name a plain object or class with forward/backward.
            if ep.name not in _registry:
                if isinstance(loaded, types.ModuleType):
                    others = ", ".join(repr(name) for name in _registry if name not in before)
                    raise TypeError(f"module {loaded.__name__} registered no backend {ep.name!r}"
                                    + (f" (it registered {others})" if others else "")
                                    + "; name the entry point as its @register_backend does, or point it at the "
                                    "class (module:Class)")
                register_backend(ep.name)(loaded)
            _registry[ep.name].distribution = plugin_distribution(ep)
        except Exception as e:  # noqa: BLE001 - any error of third-party code
            _skip(ep, f"it failed to load: {type(e).__name__}: {e}")
        # What else its import registered comes from the same package: `convlab backends`
        # names it, rather than listing it as if it were convlab's own.
        for name in _registry.keys() - before.keys():
            if _registry[name].distribution is None:
                _registry[name].distribution = plugin_distribution(ep)
        # Nor take a name by registering it as its module is imported: what was there stays.
        replaced = [name for name, backend in before.items() if _registry.get(name) is not backend]
        if replaced:
            _registry.update((name, before[name]) for name in replaced)
            warnings.warn(f"kept backend {', '.join(map(repr, replaced))} as it was: loading {origin(ep)} "
                          "registered another under that name; a plugin needs a name of its own", PluginWarning,
                          stacklevel=3)


def _skip(ep, why):
    """Warn (once: the entry points are read once) that entry point ``ep`` was not loaded,
    and remember ``why`` for :func:`get_backend`'s error."""
    _skipped[ep.name] = why
    warnings.warn(f"skipping backend {ep.name!r} ({origin(ep)}): {why}", PluginWarning, stacklevel=4)


def origin(ep) -> str:
    """Entry point ``ep`` and the distribution that declares it, for a warning."""
    return f"entry point {ep.value}{' of ' + distribution(ep) if distribution(ep) else ''}"


def distribution(ep) -> str | None:
    """The name of the distribution (installed package) that declares entry point ``ep``."""
    return getattr(getattr(ep, "dist", None), "name", None)


def plugin_distribution(ep) -> str | None:
    """``name version`` of the distribution that declares entry point ``ep``, unless it is
    convlab (or unknown)."""
    dist = getattr(ep, "dist", None)
    if distribution(ep) in (None, "convlab"):
        return None
    version = getattr(dist, "version", None)
    return f"{dist.name} {version}" if version else dist.name


def top_package(module: str) -> str:
    """``pkg`` of ``pkg.sub.module``: a plugin's entry point and its classes share it."""
    return module.partition(".")[0]


def list_backends() -> list[str]:
    """Names of every registered backend, sorted."""
    _load_entry_points()
    return sorted(_registry)


def skipped_backends() -> list[str]:
    """Names of the installed backends whose entry point was not loaded, sorted
    (:func:`get_backend` says why)."""
    _load_entry_points()
    return sorted(_skipped)


def get_backend(name: str | Backend | None = None) -> Backend:
    """The backend called ``name``; ``None`` means the active one (see :func:`use_backend`)."""
    if isinstance(name, Backend):
        return name
    if name is None:
        active = _active_backend.get()
        if isinstance(active, Backend):  # one use_backend was given, not a registered name
            return active
        name = active or DEFAULT_BACKEND
    _load_entry_points()
    try:
        return _registry[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(_registry))
        unknown = (f"backend {name!r} is installed but was skipped: {_skipped[name]}"
                   if isinstance(name, str) and name in _skipped else f"unknown backend {name!r}")
        raise ValueError(f"{unknown}; valid backends are: {valid}") from None


@contextlib.contextmanager
def use_backend(name: str | Backend):
    """Within the block, layers not pinned to a backend (and ``conv2d``) use ``name`` (a
    registered name, or a :class:`Backend` as :func:`get_backend` returns it). A pinned
    layer keeps its own backend inside the block.

    The setting is a :mod:`contextvars` variable, as :func:`decimal.localcontext`'s: it holds
    in the thread (or asyncio task) that opened the block, so two threads' blocks do not
    meet, and a thread started inside the block does not see it (it starts with the
    default, ``im2col``, unless it opens a block of its own). As with ``localcontext``, a
    generator that yields inside the block leaves its backend active in the code that
    iterates it until it resumes: open the block around the work, not around a ``yield``."""
    if name is None:  # get_backend(None) is the active backend: the block would change nothing
        raise ValueError(f"use_backend needs a backend; valid backends are: {', '.join(list_backends())}")
    backend = get_backend(name)
    # A name is looked up at each use (a backend registered again replaces the old one).
    token = _active_backend.set(name if isinstance(name, str) else backend)
    try:
        yield backend
    finally:
        _active_backend.reset(token)


def conv2d(x, w, b=None, stride=1, padding=0, backend=None) -> np.ndarray:
    """Functional 2-D convolution (cross-correlation), like ``torch.nn.functional.conv2d``.

    x (N, C, H, W), w (F, C, kh, kw), b (F,) or None -> (N, F, OH, OW). It keeps nothing
    for a backward (:meth:`Backend.inference`).
    """
    return get_backend(backend).inference(x, w, b, stride, padding)
