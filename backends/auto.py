"""``auto``: time the other backends once per problem and use the fastest.

The first call with a new key (x.shape, w.shape, stride, padding, dtype) runs each
candidate's forward+backward on the call's own arrays (one warm-up run, then up to
``TIMED_RUNS`` timed runs, cut short after ``TIME_CAP`` seconds, none at all when the
warm-up is ``LOST_FACTOR`` times slower than the best so far) and picks the fastest.
Candidates are every other registered strategy; the ``naive`` oracle only when there is
no other. The pick is kept in memory and in a JSON cache file, so later runs on the same
machine do not time again (unless the set of candidates, or convlab's version, changed
since: a new version's backends may be faster or slower). The file is

* ``$CONVLAB_AUTO_CACHE`` if set, else ``$XDG_CACHE_HOME/convlab/auto.json`` (default
  ``~/.cache/convlab/auto.json``); ``Auto(cache_path=...)`` or setting ``cache_path`` on
  the registered instance (``convlab.get_backend("auto").impl``) overrides both;
* shaped ``{"picks": {key: {"backend": name, "seconds": {candidate: seconds},
  "convlab": version}}}``; a file that is not valid is ignored with a warning and
  rewritten at the next pick.

Each pick is logged (logger ``convlab.auto``, level INFO) the first time a process uses
it, and ``picks`` lists them. A forward and its backward always run on the same chosen
backend, so results are exactly that backend's.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np

from convlab.files import user_cache_dir, write_json
from convlab.registry import get_backend, register_backend
from convlab.timing import ORACLE, best_time, conv_pass, output_gradient, strategies

CACHE_ENV = "CONVLAB_AUTO_CACHE"
# The fastest of several runs: on the MNIST layer fft and im2col are within 1.2x, and two
# runs on a shared machine picked the slower one now and then.
TIMED_RUNS = 5
TIME_CAP = 0.5
# A candidate whose warm-up is this many times slower than the best so far is not run again.
LOST_FACTOR = 4

log = logging.getLogger("convlab.auto")


def default_cache_path() -> Path:
    """``$CONVLAB_AUTO_CACHE``, else ``auto.json`` in the user cache dir (XDG)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return user_cache_dir() / "auto.json"


def problem_key(x, w, stride, padding) -> str:
    """The cache key of one convolution problem, readable in the JSON file."""
    dims = lambda shape: "x".join(map(str, shape))  # noqa: E731
    return f"x {dims(x.shape)} w {dims(w.shape)} stride {dims(stride)} padding {dims(padding)} {x.dtype}"


def convlab_version() -> str:
    """The installed convlab's version, recorded with each pick."""
    try:
        return importlib.metadata.version("convlab")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"


def candidates(x_shape=None, w_shape=None, stride=1, padding=0) -> list[str]:
    """The backends ``auto`` chooses among: every strategy but the oracle, unless it is
    alone; given a problem, only those that support it (see ``Backend.supports``)."""
    names = strategies()
    if x_shape is not None:
        names = [name for name in names if get_backend(name).supports(x_shape, w_shape, stride, padding) is None]
    return [name for name in names if name != ORACLE] or names


@register_backend("auto")
class Auto:
    """Times the other backends once per shape (forward+backward) and uses the fastest."""

    limits = "whatever one of the backends it times supports"

    def supports(self, x_shape, w_shape, stride, padding):
        if candidates(x_shape, w_shape, stride, padding):
            return None
        return f"x {x_shape} with w {w_shape}, stride {stride}, padding {padding}: no backend does"

    def __init__(self, cache_path=None):
        self.cache_path = cache_path
        self._picks: dict[str, str] = {}

    @property
    def picks(self) -> dict[str, str]:
        """{problem key: chosen backend} for every problem this process has run."""
        return dict(self._picks)

    def cache_file(self) -> Path:
        return Path(self.cache_path) if self.cache_path is not None else default_cache_path()

    def pick(self, x, w, stride, padding) -> str:
        """The name of the backend used for this problem; times the candidates if it is new."""
        key = problem_key(x, w, stride, padding)
        if key not in self._picks:
            problem = (x.shape, w.shape, stride, padding)
            self._picks[key] = self._stored_pick(key, problem) or self._timed_pick(key, x, w, stride, padding)
        return self._picks[key]

    def forward(self, x, w, b, stride, padding):
        chosen = get_backend(self.pick(x, w, stride, padding))
        y, cache = chosen.impl.forward(x, w, b, stride, padding)
        return y, (chosen, cache)

    def backward(self, dy, cache, need_dx=True):
        chosen, chosen_cache = cache
        return chosen.impl.backward(dy, chosen_cache, need_dx)

    def _stored_pick(self, key, problem):
        entry = self._read_cache().get(key)
        names = candidates(*problem)
        if (entry is None or sorted(entry["seconds"]) != sorted(names) or entry["backend"] not in names
                or entry.get("convlab") != convlab_version()):
            return None  # never timed, timed before a backend was added, removed or changed, or edited
        log.info("auto uses %s for %s (timed earlier, cached in %s)", entry["backend"], key, self.cache_file())
        return entry["backend"]

    def _timed_pick(self, key, x, w, stride, padding):
        b = np.zeros(w.shape[0], dtype=x.dtype)
        dy = output_gradient(x, w, stride, padding)
        seconds, failures = {}, []
        for name in candidates(x.shape, w.shape, stride, padding):
            lost_above = LOST_FACTOR * min(seconds.values(), default=math.inf)
            try:
                seconds[name] = best_time(conv_pass(name, x, w, b, stride, padding, dy), TIMED_RUNS, TIME_CAP,
                                          lost_above)
            except Exception as e:  # noqa: BLE001 - a candidate (a plugin, maybe) that fails is not picked
                failures.append(f"{name} ({type(e).__name__}: {e})")
                warnings.warn(f"auto skips backend {name!r} for {key}: it raised {type(e).__name__}: {e}",
                              stacklevel=2)
        if not seconds:
            raise RuntimeError(f"auto found no backend that computes {key}: " + "; ".join(failures))
        chosen = min(seconds, key=seconds.get)
        timings = ", ".join(f"{name} {s * 1e3:.1f} ms" for name, s in seconds.items())
        log.info("auto picked %s for %s (forward+backward: %s)", chosen, key, timings)
        self._write_cache(key, {"backend": chosen, "seconds": seconds, "convlab": convlab_version()})
        return chosen

    def _read_cache(self) -> dict:
        """{key: entry} from the cache file; {} when there is none or it is not valid."""
        path = self.cache_file()
        try:
            picks = json.loads(path.read_text())["picks"]
            if not all(isinstance(e["backend"], str) and isinstance(e["seconds"], dict) for e in picks.values()):
                raise TypeError("an entry lacks a backend name or timings")
            return picks
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            warnings.warn(f"ignoring the auto backend's cache file {path}, which is not valid "
                          f"({type(e).__name__}: {e}); it will be rewritten", stacklevel=2)
            return {}

    def _write_cache(self, key, entry):
        # Re-read first: another process may have added picks since we last looked.
        picks = self._read_cache()
        picks[key] = entry
        try:
            write_json(self.cache_file(), {"picks": picks})
        except OSError as e:
            warnings.warn(f"could not save the auto backend's pick to {self.cache_file()}: {e}", stacklevel=2)
