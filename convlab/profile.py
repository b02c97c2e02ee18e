"""Where a training step's time goes: a per-phase profile, like NNPACK's ``nnp_profile``.

Code marks its phases with ``with phase("GEMM"): ...``. Unless a profile is being
recorded (:func:`recording`), :func:`phase` returns one shared do-nothing context manager,
so marking costs a function call. While recording, each phase's wall time is added to
the profile under the current *scope*: the layer that is running and its pass
(forward/backward), or the training step itself (batch gathering, loss, optimizer).
:func:`recording` finds the layers by wrapping the model's layers' ``forward`` and
``backward`` for the duration, so neither the model nor the layers know about it; the
time of a layer's call not covered by any of its phases is shown as ``other``.

Work shared among threads (see :mod:`convlab.threads`) runs its phases in several threads
at once, so their times add up to more than the wall time. Such code wraps the shared
part in :func:`shared_among_threads`: the phases inside are then scaled down together,
so that they sum to the part's wall time (each keeps its share of the thread time).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict

STEP = "training step"

_recording: Profile | None = None


class _Off:
    """The context manager :func:`phase` returns when nothing is being recorded."""

    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_OFF = _Off()


class _Timed:
    __slots__ = ("profile", "name", "started")

    def __init__(self, profile, name):
        self.profile, self.name = profile, name

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.profile.add(self.name, time.perf_counter() - self.started)
        return False


def phase(name: str):
    """``with phase(name):`` times the block as phase ``name`` of the current scope."""
    profile = _recording
    return _OFF if profile is None else _Timed(profile, name)


@contextlib.contextmanager
def shared_among_threads():
    """Phases timed inside the block (in any thread) are scaled to sum to at most the
    block's wall time, keeping their proportions."""
    profile = _recording
    if profile is None:
        yield
        return
    outer, profile.region = profile.region, defaultdict(float)
    started = time.perf_counter()
    try:
        yield
    finally:
        wall = time.perf_counter() - started
        region, profile.region = profile.region, outer
        thread_seconds = sum(region.values())
        scale = min(1.0, wall / thread_seconds) if thread_seconds else 1.0
        for name, seconds in region.items():
            profile.add(name, seconds * scale)


class Profile:
    """Seconds per (scope, phase), summed over everything recorded.

    ``totals[(scope, phase)]``: scope is ``(label, pass)``, for instance
    ``("0 Conv2D fft", "forward")``, or ``(STEP, "")`` for the step's own phases;
    ``calls[scope]`` and ``seconds[scope]`` count a scope's calls and its whole time.
    """

    def __init__(self):
        self.totals: dict[tuple, float] = defaultdict(float)
        self.seconds: dict[tuple, float] = defaultdict(float)
        self.calls: dict[tuple, int] = defaultdict(int)
        self.scope = (STEP, "")
        self.order: dict[tuple, None] = {}  # scopes in the order they first ran
        self.region = None
        self.steps = 0
        self.wall = 0.0
        self._lock = threading.Lock()

    def add(self, name, seconds):
        with self._lock:
            if self.region is not None:
                self.region[name] += seconds
            else:
                self.order.setdefault(self.scope)
                self.totals[self.scope, name] += seconds

    @contextlib.contextmanager
    def in_scope(self, scope):
        self.order.setdefault(scope)
        outer, self.scope = self.scope, scope
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[scope] += time.perf_counter() - started
            self.calls[scope] += 1
            self.scope = outer

    def rows(self):
        """(scope label, phase, seconds) in scope order of first appearance: every phase of a
        scope, then its ``other`` (the scope's time outside its phases)."""
        by_scope = defaultdict(list)
        for (scope, name), seconds in self.totals.items():
            by_scope[scope].append((name, seconds))
        rows = []
        for scope in self.order:
            label = " ".join(part for part in scope if part)
            phases = by_scope.get(scope, [])
            rows += [(label, name, seconds) for name, seconds in phases]
            if scope in self.seconds:
                rows.append((label, "other", max(0.0, self.seconds[scope] - sum(s for _, s in phases))))
        return rows

    def table(self, title="") -> str:
        """The profile as text: per scope and phase, milliseconds per step, total seconds
        and share of the recorded steps' wall time."""
        steps = max(self.steps, 1)
        wall = self.wall or sum(self.seconds.values())
        rows = self.rows()
        width = max([len("layer / pass")] + [len(label) for label, _, _ in rows])
        phase_width = max([len("phase")] + [len(name) for _, name, _ in rows])
        lines = [title] if title else []
        lines.append(f"{'layer / pass':<{width}}  {'phase':<{phase_width}}  {'ms/step':>8}  {'total s':>8}  {'share':>6}")
        covered = 0.0
        for label, name, seconds in rows:
            covered += seconds
            lines.append(f"{label:<{width}}  {name:<{phase_width}}  {seconds / steps * 1e3:8.3f}  {seconds:8.3f}  "
                         f"{seconds / wall:6.1%}")
        lines.append(f"{'outside the layers and phases':<{width + phase_width + 2}}  "
                     f"{(wall - covered) / steps * 1e3:8.3f}  {wall - covered:8.3f}  {(wall - covered) / wall:6.1%}")
        lines.append(f"{'total':<{width + phase_width + 2}}  {wall / steps * 1e3:8.3f}  {wall:8.3f}  {1:6.1%}"
                     f"   ({self.steps} steps)")
        return "\n".join(lines)


def layer_label(index, layer) -> str:
    """``"0 Conv2D im2col"``: position, class and, for a convolution, its backend."""
    label = f"{index} {type(layer).__name__}"
    backend = getattr(layer, "backend", None)
    if hasattr(layer, "params") and "w" in layer.params and layer.params["w"].ndim == 4:
        from convlab.registry import get_backend

        label += f" {get_backend(backend).name}"
    return label


@contextlib.contextmanager
def recording(model):
    """Record a :class:`Profile` of everything ``model`` (a Sequential) and the marked
    phases do within the block; yields the profile. Not reentrant."""
    global _recording
    if _recording is not None:
        raise RuntimeError("a profile is already being recorded")
    profile = Profile()

    def wrapped(label, pass_, method):
        def timed(*args, **kwargs):
            if _recording is not profile:  # paused
                return method(*args, **kwargs)
            with profile.in_scope((label, pass_)):
                return method(*args, **kwargs)
        return timed

    layers = list(model.layers)
    for index, layer in enumerate(layers):
        label = layer_label(index, layer)
        layer.forward = wrapped(label, "forward", layer.forward)
        layer.backward = wrapped(label, "backward", layer.backward)
    _recording = profile
    started = time.perf_counter()
    try:
        yield profile
    finally:
        _recording = None
        if not profile.wall:
            profile.wall = time.perf_counter() - started
        for layer in layers:
            del layer.forward, layer.backward


@contextlib.contextmanager
def paused():
    """Nothing within the block is recorded (evaluation batches between training steps)."""
    global _recording
    profile, _recording = _recording, None
    try:
        yield
    finally:
        _recording = profile


def count_step(seconds):
    """Called by the training loop after each recorded step, with the step's wall time."""
    profile = _recording
    if profile is not None:
        profile.steps += 1
        profile.wall += seconds
