"""Timing convolution backends: shared by ``convlab bench``, the ``auto`` backend and
``benchmarks/``.

Times are wall-clock seconds of the fastest run after one untimed warm-up run: the
warm-up absorbs one-off costs (FFT plans, first-touch page faults, BLAS thread start-up),
and the minimum is the estimate least disturbed by other processes on a shared machine.
Where several runs are compared, :func:`interleaved_best` takes them in turns, so that a
busy spell of the machine falls on all of them rather than on whichever ran during it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from convlab.checks import output_size
from convlab.registry import ORACLE, get_backend, list_backends  # noqa: F401 (ORACLE: re-exported for bench and auto)

# Above this many multiply-adds per forward, the oracle takes a good part of a second per call.
ORACLE_MAX_MACS = 1e8


@dataclass(frozen=True)
class ConvShape:
    """One convolution problem: x (n, c, size, size) * w (f, c, k, k), stride 1, zero
    padding ``padding`` on every side."""

    n: int
    c: int
    f: int
    size: int
    k: int
    padding: int

    @property
    def out_size(self) -> int:
        return output_size(self.size, self.k, 1, self.padding)

    @property
    def macs(self) -> int:
        """Multiply-adds of one forward pass computed directly."""
        return self.n * self.f * self.c * self.k ** 2 * self.out_size ** 2

    @property
    def label(self) -> str:
        return f"{self.n}x{self.c}->{self.f} {self.size}x{self.size} k{self.k} p{self.padding}"

    def arrays(self, dtype=np.float32, seed=0):
        """Random (x, w, b) of this shape; same seed, same arrays."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.n, self.c, self.size, self.size)).astype(dtype)
        w = (rng.standard_normal((self.f, self.c, self.k, self.k)) / self.k).astype(dtype)
        b = rng.standard_normal(self.f).astype(dtype)
        return x, w, b


def is_tuner(name: str) -> bool:
    """A tuner (like ``auto``) delegates to other backends; it says which through ``pick``."""
    return callable(getattr(get_backend(name).impl, "pick", None))


def strategies() -> list[str]:
    """The registered backends that compute convolutions themselves (every non-tuner)."""
    return [name for name in list_backends() if not is_tuner(name)]


def output_gradient(x, w, stride, padding, seed=1) -> np.ndarray:
    """A fixed random dy (N, F, OH, OW) for the forward of x (N, C, H, W) and w (F, C, kh, kw)."""
    oh = output_size(x.shape[2], w.shape[2], stride[0], padding[0])
    ow = output_size(x.shape[3], w.shape[3], stride[1], padding[1])
    return np.random.default_rng(seed).standard_normal((x.shape[0], w.shape[0], oh, ow)).astype(x.dtype)


def conv_pass(backend, x, w, b, stride, padding, dy=None, need_dx=True):
    """A no-argument function running one pass of ``backend`` on these arrays.

    With ``dy`` None it runs the inference pass (:meth:`convlab.registry.Backend.inference`:
    the forward keeping nothing for a backward, as PyTorch's forward without autograd) and
    returns y; otherwise forward then backward (``need_dx`` False: as for a network's first
    layer, without dx), returning (y, dx, dw, db).
    """
    backend = get_backend(backend)

    def forward():
        return backend.inference(x, w, b, stride, padding)

    def forward_backward():
        y, cache = backend.forward(x, w, b, stride, padding)
        return (y,) + tuple(backend.backward(dy, cache, need_dx))

    return forward if dy is None else forward_backward


def interleaved_best(runs, repeat=3, clock=time.perf_counter, max_seconds=math.inf, lost_factor=math.inf,
                     on_error=None) -> dict:
    """The fastest of ``repeat`` timed calls of each of ``runs`` (key -> function), after
    one untimed warm-up call each, taken in rounds of one call per run: a load that comes
    and goes on a shared machine (this VM's speed drifts by 20-40 % within minutes) then
    falls on every run alike. ``clock`` is the timer (``time.process_time`` for CPU time).

    A run gets no more calls after its first timed one once its calls, warm-up included,
    have taken ``max_seconds`` (a slow run costs two calls, not ``repeat + 1``), nor after
    its second when the faster of its two timed calls is over ``lost_factor`` times the
    fastest run's (a lost cause). The first calls alone never decide: they carry one-time
    costs (FFTW's planner measuring new plans, first-touch page faults). On 224 x 224
    images, k = 7, fft-tiled's warm-up took 482 ms against fft's 105 ms forward+backward,
    though it then runs in 40-60 ms; on the MNIST layer one first timed call of fft took
    38 ms, planning a thread's tile plans that the warm-up had not needed (it runs in 8-11).

    ``on_error(key, error)``, if given, is told of a run that raises, which is then left
    out of the result; without it the error propagates.

    Each run's last result stays alive until its next call returns, as a training loop
    holds its last step's arrays: freed first, glibc can hand that memory back to the OS,
    and the call pays page faults to get it again (im2col's forward+backward on the MNIST
    layer then took 12 ms instead of 8).
    """
    kept, spent, best = {}, {}, {}
    live = dict(runs)

    def call(key):
        started = clock()
        try:
            kept[key] = live[key]()
        except Exception as error:  # noqa: BLE001 - handed to on_error, or re-raised
            if on_error is None:
                raise
            on_error(key, error)
            del live[key]
            kept.pop(key, None)
            return None
        return clock() - started

    for key in list(live):
        seconds = call(key)
        if seconds is not None:
            spent[key] = seconds
    for round_ in range(repeat):
        for key in list(live):
            if key in best and spent[key] > max_seconds:
                continue
            seconds = call(key)
            if seconds is None:
                best.pop(key, None)
                continue
            spent[key] += seconds
            best[key] = min(best.get(key, math.inf), seconds)
        if round_ == 1 and best:
            bound = lost_factor * min(best.values())
            for key in [key for key in live if best.get(key, 0) > bound]:
                del live[key]
    return best
