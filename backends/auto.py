"""``auto``: time the other backends once per problem and use the fastest.

The first call with a new problem (x.shape, w.shape, stride, padding, dtype, and whether
the backward computes dx) runs each candidate's forward+backward on the call's own
arrays (one warm-up run, then up to ``TIMED_RUNS`` timed runs, the candidates taking
turns, cut short after ``TIME_CAP`` seconds, only two when the faster of them is
``LOST_FACTOR`` times slower than the fastest) and picks the fastest. Candidates are
every other registered strategy; the ``naive`` oracle only when there is no other.

A network's first layer needs no dx (``backward(..., need_dx=False)``), which changes
the race: dx is a third of the backward's work. A forward cannot know what its backward
will be asked, so ``auto`` learns it from the layer's first backward: the first step
uses the pick timed with dx, every later one the pick timed for what the backward
really computes (for a problem some layer backpropagates through, that stays "with dx").

The pick is kept in memory and in a JSON cache file, so later runs on the same
machine do not time again (unless the set of candidates, or convlab's version, changed
since: a new version's backends may be faster or slower). ``convlab auto show`` lists
the stored picks, ``convlab auto retune`` times them again, ``convlab auto clear``
deletes them. The file is

* ``$CONVLAB_AUTO_CACHE`` if set, else ``$XDG_CACHE_HOME/convlab/auto.json`` (default
  ``~/.cache/convlab/auto.json``); ``Auto(cache_path=...)`` or setting ``cache_path`` on
  the registered instance (``convlab.get_backend("auto").impl``) overrides both;
* shaped ``{"picks": {key: {"backend": name, "seconds": {candidate: seconds},
  "convlab": version, "problem": {"x": shape, "w": shape, "stride": pair, "padding":
  pair, "dtype": name, "need_dx": bool}}}}``; entries that are not valid are ignored;
* shared by concurrent runs, and best effort: see :mod:`convlab.cachefile`.

Each pick is logged (logger ``convlab.auto``, level INFO) the first time a process uses
it, and ``picks`` lists them. A forward and its backward always run on the same chosen
backend, so results are exactly that backend's.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convlab import installed_version as convlab_version
from convlab.cachefile import clear_cache, read_cache, update_cache
from convlab.checks import FLOAT_DTYPES, is_number
from convlab.files import user_cache_dir
from convlab.registry import get_backend, register_backend
from convlab.timing import ORACLE, conv_pass, interleaved_best, output_gradient, strategies

CACHE_ENV = "CONVLAB_AUTO_CACHE"
CACHE_KIND = "auto pick cache"
# The fastest of several runs: on the MNIST layer fft and im2col are within 1.2x, and two
# runs on a shared machine picked the slower one now and then.
TIMED_RUNS = 5
TIME_CAP = 0.5
# A candidate whose first two timed runs (not its warm-up: see interleaved_best) are both
# this many times slower than the fastest one's is not run again.
LOST_FACTOR = 4

log = logging.getLogger("convlab.auto")


def default_cache_path() -> Path:
    """``$CONVLAB_AUTO_CACHE``, else ``auto.json`` in the user cache dir (XDG)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return user_cache_dir() / "auto.json"


@dataclass(frozen=True)
class Problem:
    """One convolution problem as ``auto`` times it: x (N, C, H, W) * w (F, C, kh, kw),
    forward and backward, the backward with or without dx."""

    x_shape: tuple
    w_shape: tuple
    stride: tuple
    padding: tuple
    dtype: str
    need_dx: bool = True

    @classmethod
    def of(cls, x, w, stride, padding, need_dx=True):
        return cls(tuple(x.shape), tuple(w.shape), tuple(stride), tuple(padding), str(x.dtype), bool(need_dx))

    @property
    def key(self) -> str:
        """The cache key, readable in the JSON file."""
        dims = lambda shape: "x".join(map(str, shape))  # noqa: E731
        return (f"x {dims(self.x_shape)} w {dims(self.w_shape)} stride {dims(self.stride)} "
                f"padding {dims(self.padding)} {self.dtype} {'with' if self.need_dx else 'without'} dx")

    def as_json(self) -> dict:
        return {"x": self.x_shape, "w": self.w_shape, "stride": self.stride, "padding": self.padding,
                "dtype": self.dtype, "need_dx": self.need_dx}

    @classmethod
    def from_json(cls, fields: dict):
        """The problem :meth:`as_json` wrote; ValueError (or KeyError, TypeError) if it is not one."""
        shapes = [tuple(fields[name]) for name in ("x", "w", "stride", "padding")]
        if [len(shape) for shape in shapes] != [4, 4, 2, 2] or not all(
                isinstance(n, int) and not isinstance(n, bool) for shape in shapes for n in shape):
            raise ValueError(f"not a convolution problem: {fields}")
        (x, w, stride, padding), dtype = shapes, np.dtype(fields["dtype"])
        # What a convolution checks of its arguments (convlab.checks): a hand-edited stride
        # of 0 made `auto show` refuse it as if it were the user's call, and `retune` divide by zero.
        if (min(x + w + stride) < 1 or min(padding) < 0 or x[1] != w[1] or w[2] > x[2] + 2 * padding[0]
                or w[3] > x[3] + 2 * padding[1] or dtype.type not in FLOAT_DTYPES):
            raise ValueError(f"not a convolution problem: {fields}")
        return cls(*shapes, dtype.name, bool(fields["need_dx"]))

    def candidates(self) -> list[str]:
        """The backends ``auto`` times for this problem (those that support it)."""
        return candidates(self.x_shape, self.w_shape, self.stride, self.padding)

    def arrays(self, seed=0):
        """Random x, w, b of this problem (times do not depend on the values)."""
        rng = np.random.default_rng(seed)
        return (rng.standard_normal(self.x_shape).astype(self.dtype),
                rng.standard_normal(self.w_shape).astype(self.dtype),
                np.zeros(self.w_shape[0], self.dtype))


def problem_key(x, w, stride, padding, need_dx=True) -> str:
    """The cache key of one convolution problem (see :class:`Problem`)."""
    return Problem.of(x, w, stride, padding, need_dx).key


def candidates(x_shape=None, w_shape=None, stride=1, padding=0) -> list[str]:
    """The backends ``auto`` chooses among: every strategy but the oracle, unless it is
    alone; given a problem, only those that support it (see ``Backend.supports``)."""
    names = strategies()
    if x_shape is not None:
        names = [name for name in names if get_backend(name).supports(x_shape, w_shape, stride, padding) is None]
    return [name for name in names if name != ORACLE] or names


def stale_because(entry) -> str | None:
    """Why a stored pick is not used any more (None: it is used)."""
    now = Problem.from_json(entry["problem"]).candidates() if "problem" in entry else candidates()
    if entry["backend"] not in now:
        return f"{entry['backend']} is not a backend for it now"
    if sorted(entry["seconds"]) != sorted(now):
        return f"timed among {', '.join(sorted(entry['seconds']))}, now {', '.join(now)}"
    if entry.get("convlab") != convlab_version():
        return f"timed with convlab {entry.get('convlab')}, now {convlab_version()}"
    return None


def valid_entries(stored: dict) -> dict:
    """The entries of a cache file's content that are shaped as the module doc says."""
    picks = stored.get("picks")
    if not isinstance(picks, dict):
        return {}
    return {key: entry for key, entry in picks.items()
            if isinstance(entry, dict) and isinstance(entry.get("backend"), str)
            and isinstance(entry.get("seconds"), dict) and all(map(is_number, entry["seconds"].values()))
            and ("problem" not in entry or describes(entry["problem"], key))}


def describes(problem, key) -> bool:
    """Whether a stored problem can be read back (see :meth:`Problem.from_json`) and is the
    one its key names. An entry whose problem is another (a hand-edited or damaged cache)
    would have its pick checked against that problem's candidates, then run on the key's
    problem, which the pick may not support: a stride-2 layer ran winograd, and the error
    blamed winograd as broken."""
    try:
        return Problem.from_json(problem).key == key
    except (KeyError, TypeError, ValueError):
        return False


@register_backend("auto")
class Auto:
    """Times the other backends once per shape (forward+backward) and uses the fastest."""

    limits = "whatever one of the backends it times supports"
    fuses_relu = True  # handed to the pick, which fuses it or has it applied after
    takes_factored_dy = True  # handed to the pick, which takes it or is given the whole array

    def check_settings(self):
        for name in candidates():  # any of them may be timed (one that raises is skipped), and then run
            get_backend(name).check_settings(warn_if_broken=True)

    def own_threads(self):  # any of them may be timed: FFTW's threads are shared by the FFT backends
        return max((get_backend(name).own_threads() for name in candidates()), default=0)

    def supports(self, x_shape, w_shape, stride, padding):
        if candidates(x_shape, w_shape, stride, padding):
            return None
        return f"x {x_shape} with w {w_shape}, stride {stride}, padding {padding}: no backend does"

    def __init__(self, cache_path=None):
        self.cache_path = cache_path
        self._picks: dict[str, str] = {}
        # Problem (with need_dx True) -> whether its backward has ever been asked for dx.
        self._need_dx: dict[Problem, bool] = {}

    @property
    def picks(self) -> dict[str, str]:
        """{problem key: chosen backend} for every problem this process has run."""
        return dict(self._picks)

    def cache_file(self) -> Path:
        return Path(self.cache_path) if self.cache_path is not None else default_cache_path()

    def pick(self, x, w, stride, padding, need_dx=True) -> str:
        """The name of the backend used for this problem; times the candidates if it is new."""
        problem = Problem.of(x, w, stride, padding, need_dx)
        if problem.key not in self._picks:
            self._picks[problem.key] = self._stored_pick(problem.key) or self._timed_pick(problem, x, w)
        return self._picks[problem.key]

    def forward(self, x, w, b, stride, padding, relu=False):
        problem = Problem.of(x, w, stride, padding)
        chosen = self.chosen(problem, x, w, stride, padding)
        y, cache = chosen.unchecked_forward(x, w, b, stride, padding, relu)
        return y, (chosen, cache, problem)

    def inference(self, x, w, b, stride, padding, relu=False):
        """The pick's inference pass (the pick as for a forward: timed with its backward)."""
        chosen = self.chosen(Problem.of(x, w, stride, padding), x, w, stride, padding)
        return chosen.unchecked_inference(x, w, b, stride, padding, relu)

    def chosen(self, problem, x, w, stride, padding):
        """The backend a forward of ``problem`` runs on: the pick for what its backward computes."""
        return get_backend(self.pick(x, w, stride, padding, self._need_dx.get(problem, True)))

    def backward(self, dy, cache, need_dx=True):
        chosen, chosen_cache, problem = cache
        self._need_dx[problem] = self._need_dx.get(problem, False) or need_dx
        return chosen.unchecked_backward(dy, chosen_cache, need_dx)

    def stored(self) -> dict[str, dict]:
        """{key: entry} of the valid entries in the cache file (see the module doc)."""
        return valid_entries(read_cache(self.cache_file(), CACHE_KIND, "picks"))

    @staticmethod
    def describe(key, entry) -> str:
        """One line for a stored pick: its problem, pick and times (and why it is stale)."""
        times = ", ".join(f"{name} {seconds * 1e3:.2f} ms" for name, seconds in entry["seconds"].items())
        stale = stale_because(entry)
        return f"{key}: {entry['backend']} ({times})" + (f" [not used: {stale}]" if stale else "")

    def clear(self) -> int:
        """Delete the cache file and forget this process's picks; returns how many
        entries the file held. A file that is not a pick cache is refused (ValueError)."""
        count = len(valid_entries(clear_cache(self.cache_file(), "picks")))
        self._picks.clear()
        return count

    def retune(self) -> dict[str, str]:
        """Time every stored problem again (on random arrays of its shapes) and store the
        new picks; entries without a problem (from before convlab 0.2) are dropped.
        Returns {key: pick}."""
        stored = self.stored()
        update_cache(self.cache_file(), CACHE_KIND, "picks",
                     lambda current: {"picks": {key: entry for key, entry in valid_entries(current).items()
                                                if "problem" in entry}})
        picks = {}
        for key, entry in stored.items():
            if "problem" in entry:
                problem = Problem.from_json(entry["problem"])
                x, w, _ = problem.arrays()
                picks[problem.key] = self._picks[problem.key] = self._timed_pick(problem, x, w)
        return picks

    def _stored_pick(self, key):
        entry = self.stored().get(key)
        if entry is None or stale_because(entry):
            return None  # never timed, or timed before a backend was added, removed or changed
        log.info("auto uses %s for %s (timed earlier, cached in %s)", entry["backend"], key, self.cache_file())
        return entry["backend"]

    def _timed_pick(self, problem: Problem, x, w):
        b = np.zeros(w.shape[0], dtype=x.dtype)
        dy = output_gradient(x, w, problem.stride, problem.padding)
        failures = []

        def failed(name, e):  # a candidate (a plugin, maybe) that fails is not picked
            failures.append(f"{name} ({type(e).__name__}: {e})")
            warnings.warn(f"auto skips backend {name!r} for {problem.key}: it raised {type(e).__name__}: {e}",
                          stacklevel=5)  # at the caller of _timed_pick, as before

        runs = {name: conv_pass(name, x, w, b, problem.stride, problem.padding, dy, problem.need_dx)
                for name in problem.candidates()}
        # In turns, one call of each candidate per round, so that a busy spell of the
        # machine falls on all of them.
        seconds = interleaved_best(runs, TIMED_RUNS, max_seconds=TIME_CAP, lost_factor=LOST_FACTOR, on_error=failed)
        if not seconds:
            raise ValueError(f"auto found no backend that computes {problem.key}: " + "; ".join(failures))
        chosen = min(seconds, key=seconds.get)
        timings = ", ".join(f"{name} {s * 1e3:.1f} ms" for name, s in seconds.items())
        log.info("auto picked %s for %s (forward+backward: %s)", chosen, problem.key, timings)
        entry = {"backend": chosen, "seconds": seconds, "convlab": convlab_version(), "problem": problem.as_json()}
        # Merged into what is in the file now: another process may have added picks since.
        update_cache(self.cache_file(), CACHE_KIND, "picks",
                     lambda current: {"picks": {**valid_entries(current), problem.key: entry}})
        return chosen
