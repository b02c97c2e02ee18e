"""Input checks shared by every convolution backend: each error says what was wrong
and what is allowed."""

from __future__ import annotations

import math
import numbers

import numpy as np

from convlab.factored import FactoredGradient

FLOAT_DTYPES = (np.float32, np.float64)


def as_pair(value, what: str, minimum: int) -> tuple[int, int]:
    """An int or an (h, w) pair of ints, each >= ``minimum``, as a pair."""
    pair = (value, value) if isinstance(value, numbers.Integral) else value
    try:
        ok = len(pair) == 2 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pair
        )
    except TypeError:
        ok = False
    if not ok or isinstance(value, bool):
        raise ValueError(f"{what} must be an int or a pair of ints (h, w), got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value!r}")
    return int(pair[0]), int(pair[1])


def as_flag(value, what: str) -> bool:
    """``value`` if it is a bool (Python's or numpy's); a string such as "no" or a number
    would otherwise switch a flag on silently."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{what} must be True or False, got {value!r}")
    return bool(value)


def int_choice(value, allowed, source: str, what: str) -> int:
    """``value`` (an int, or text of one, as from an environment variable) if it is one of
    ``allowed``; else a ValueError naming ``source``, the allowed values and ``what`` they are."""
    try:
        number = int(value)
        valid = number in allowed and not isinstance(value, (bool, float))
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"{source} must be one of {', '.join(map(str, allowed))} ({what}), got {value!r}")
    return number


def _check_array(a, name: str, ndim: int, layout: str) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array {layout}, got {type(a).__name__}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions {layout}, got shape {a.shape}")
    if a.dtype.type not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32 or float64, got {a.dtype}")
    if not a.dtype.isnative:  # FFTW has no plans for swapped bytes; the other backends would return them
        raise ValueError(f"{name} must be in this machine's byte order, got {a.dtype.str}; convert it with "
                         f"{name}.astype({name}.dtype.newbyteorder('='))")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values; every value must be finite")
    return a


def check_forward_inputs(x, w, b, stride, padding):
    """Checked (x, w, b, stride, padding); ``b=None`` becomes zeros."""
    stride = as_pair(stride, "stride", 1)
    padding = as_pair(padding, "padding", 0)
    x = _check_array(x, "x", 4, "(N, C, H, W)")
    w = _check_array(w, "w", 4, "(F, C, kh, kw)")
    if w.dtype != x.dtype:
        raise ValueError(f"x is {x.dtype} but w is {w.dtype}; use one dtype for both")
    n, c, h, width = x.shape
    f, wc, kh, kw = w.shape
    if min(x.shape) == 0 or min(w.shape) == 0:
        raise ValueError(f"x {x.shape} and w {w.shape} must have no empty dimension")
    if wc != c:
        raise ValueError(f"x has {c} channels but w expects {wc} (w is (F, C, kh, kw) = {w.shape})")
    ph, pw = padding
    if kh > h + 2 * ph or kw > width + 2 * pw:
        raise ValueError(
            f"kernel {kh}x{kw} is larger than the padded input "
            f"{h + 2 * ph}x{width + 2 * pw}; the kernel must fit inside it"
        )
    if b is None:
        b = np.zeros(f, dtype=x.dtype)
    else:
        b = _check_array(b, "b", 1, "(F,)")
        if b.shape != (f,):
            raise ValueError(f"b must have shape ({f},) to match w's {f} filters, got {b.shape}")
        if b.dtype != x.dtype:
            raise ValueError(f"x is {x.dtype} but b is {b.dtype}; use one dtype for both")
    return x, w, b, stride, padding


def check_backward_inputs(dy, y_shape, y_dtype):
    """A convolution's ``dy``: a finite float array (:func:`_check_array`) of the forward
    output's shape and dtype (:func:`check_output_gradient`), or a
    :class:`~convlab.factored.FactoredGradient` of that shape and dtype whose values are sure
    to be finite (else its whole array, checked as an array is). Its shape and dtype are
    checked first: factors of another dtype (an int one has no largest float to bound its
    product by) or shape are refused as such, before any pass over them."""
    if isinstance(dy, FactoredGradient):
        check_output_gradient(dy, y_shape, y_dtype, factored_ok=True)
        if dy.sure_finite():
            return dy
        dy = dy.array()
    return check_output_gradient(_check_array(dy, "dy", 4, "(N, F, OH, OW)"), y_shape, y_dtype)


def check_output_gradient(dy, y_shape, y_dtype=None, where="", factored_ok=False):
    """``dy`` if it is an array (or, with ``factored_ok``, a
    :class:`~convlab.factored.FactoredGradient`, which carries its shape and dtype) of the
    forward output's shape ``y_shape`` (and dtype
    ``y_dtype``, if given), from attributes alone (no pass over it): numpy would otherwise
    broadcast a (1, F) dy over a whole batch without a word, or fail with a matmul error that
    does not say which array was wrong, and a float64 ``dy`` into a float32 layer would
    silently change the precision of every gradient. ``where`` starts the message
    ("ReLU.backward: ")."""
    if not isinstance(dy, (np.ndarray, FactoredGradient) if factored_ok else np.ndarray):
        raise ValueError(f"{where}dy must be a numpy array of the forward output's shape {tuple(y_shape)}, "
                         f"got {type(dy).__name__}")
    if dy.shape != tuple(y_shape):
        raise ValueError(f"{where}dy must have the forward output's shape {tuple(y_shape)}, got {dy.shape}")
    if y_dtype is not None and dy.dtype != y_dtype:
        raise ValueError(f"{where}dy is {dy.dtype} but the forward computed {y_dtype}; pass dy as {y_dtype} "
                         f"(e.g. dy.astype(np.{y_dtype}))")
    return dy


def is_number(value, least=0.0, above=False) -> bool:
    """Whether ``value`` (read from a file: JSON, a cache) is a finite number (not a bool)
    of at least ``least`` (``above``: more than it)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            and (value > least if above else value >= least))


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length along one axis: ``(size + 2*padding - kernel) // stride + 1``."""
    return (size + 2 * padding - kernel) // stride + 1
