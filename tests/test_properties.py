"""Property-based tests (hypothesis): every registered backend against the float64 naive
oracle on generated problems (shapes, strides, paddings, dtypes), forward and backward,
and the supported/unsupported contract: a problem a backend does not support is refused
up front with ``convlab.Unsupported``, one it supports is computed right.

Examples per test: the ``convlab-ci`` profile (default, deterministic, a few seconds per
backend); ``HYPOTHESIS_PROFILE=convlab-thorough python -m pytest tests/test_properties.py``
searches much longer.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convlab
from tests.test_backends import ORACLE, TOLERANCE, run

settings.register_profile("convlab-ci", max_examples=50, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("convlab-thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "convlab-ci"))


@st.composite
def conv_problems(draw):
    """(x, w, b, stride, padding): any valid problem up to 3 x 4 -> 4 channels, 12 x 12
    inputs, kernels as large as the padded input, strides up to 3, paddings up to 3."""
    n, c, f = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    kh, kw = draw(st.integers(1, h + 2 * padding[0])), draw(st.integers(1, w + 2 * padding[1]))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weights = rng.standard_normal((f, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    return x, weights, b, stride, padding


def check_against_the_oracle(backend, problem):
    x, w, b, stride, padding = problem
    note = f"{backend.name}: x {x.shape} w {w.shape} stride {stride} padding {padding} {x.dtype}"
    reason = backend.supports(x.shape, w.shape, stride, padding)
    if reason is not None:
        assert isinstance(reason, str) and reason, note
        with pytest.raises(convlab.Unsupported, match=f"backend '{backend.name}' does not support"):
            backend.forward(x, w, b, stride, padding)
        return
    ours = run(backend, *problem)
    ref = run(ORACLE, *(a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in problem))
    for name, a, r in zip(("y", "dy", "dx", "dw", "db"), ours, ref):
        assert a.dtype == x.dtype and a.shape == r.shape, f"{name} of {note}"
        scale = max(1.0, float(np.abs(r).max()))
        np.testing.assert_allclose(a, r, **{k: v * scale for k, v in TOLERANCE[x.dtype.type].items()},
                                   err_msg=f"{name} differs from naive ({note})")


@pytest.mark.parametrize("name", convlab.list_backends())
def test_every_backend_matches_the_oracle_or_refuses_up_front(name):
    backend = convlab.get_backend(name)

    @given(conv_problems())
    def check(problem):
        check_against_the_oracle(backend, problem)

    check()


class StrideOneOnly:
    """im2col that supports stride 1 only: the contract of a backend with limits."""

    def __init__(self):
        self.computed = 0

    def supports(self, x_shape, w_shape, stride, padding):
        return None if stride == (1, 1) else f"stride {stride} (stride 1 only)"

    def forward(self, x, w, b, stride, padding):
        self.computed += 1
        return convlab.get_backend("im2col").impl.forward(x, w, b, stride, padding)

    def backward(self, dy, cache, need_dx=True):
        return convlab.get_backend("im2col").impl.backward(dy, cache, need_dx)


@given(conv_problems())
def test_a_backend_with_limits_refuses_before_any_work_and_computes_the_rest(problem):
    impl = StrideOneOnly()
    backend = convlab.Backend("stride1", impl)
    check_against_the_oracle(backend, problem)
    assert impl.computed == (problem[3] == (1, 1))
