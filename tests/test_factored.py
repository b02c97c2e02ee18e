"""A dense layer's input gradient handed on as its factors (convlab.factored): what it is,
when a network does it, and that a training step gives what the whole array gives."""

import numpy as np
import pytest

import convlab
from convlab.factored import FactoredGradient
from convlab.layers import AvgPool2D, Conv2D, Dense, Flatten, ReLU
from convlab.losses import softmax_cross_entropy
from convlab.models import reference_net


def factors(rng, n=5, j=3, shape=(4, 3, 2), dtype=np.float64):
    g = rng.standard_normal((n, j)).astype(dtype)
    w = rng.standard_normal((int(np.prod(shape)), j)).astype(dtype)
    return FactoredGradient(g, w, (n,) + shape)


def test_its_rows_and_array_are_the_product_reshaped():
    dy = factors(np.random.default_rng(0))
    whole = (dy.g @ dy.w.T).reshape(dy.shape)
    np.testing.assert_allclose(dy.array(), whole, rtol=1e-14)
    np.testing.assert_allclose(dy.rows(1, 4), whole[1:4], rtol=1e-14)
    flat = dy.reshape((5, 24))
    assert flat.shape == (5, 24) and flat.g is dy.g and flat.w is dy.w
    np.testing.assert_allclose(flat.rows(0, 2), whole.reshape(5, 24)[:2], rtol=1e-14)
    rows = dy.rows(0, 2)
    rows[...] = 0  # a new array each time: the caller's to overwrite
    np.testing.assert_allclose(dy.rows(0, 2), whole[:2], rtol=1e-14)
    assert dy.dtype == np.float64


@pytest.mark.parametrize("g_shape, w_shape, shape, message", [
    ((5, 3), (24, 2), (5, 24), r"factors must be g \(N, J\) and w \(K, J\)"),
    ((5, 3), (24, 3), (5, 25), r"shape \(5, 25\) does not hold g @ w.T, \(5, 24\)"),
    ((5, 3), (24, 3), (4, 24), r"shape \(4, 24\) does not hold"),
])
def test_factors_that_do_not_make_the_shape_are_refused(g_shape, w_shape, shape, message):
    with pytest.raises(ValueError, match=message):
        FactoredGradient(np.zeros(g_shape), np.zeros(w_shape), shape)


def test_it_is_sure_finite_only_when_no_value_can_overflow():
    rng = np.random.default_rng(1)
    assert factors(rng).sure_finite()
    dy = factors(rng)
    dy.w[3, 1] = np.nan
    assert not dy.sure_finite()
    dy = factors(rng)
    dy.g[2, 0] = -np.inf
    assert not dy.sure_finite()
    big = factors(rng, dtype=np.float32)
    big.g[...] = 1e20
    big.w[...] = 1e20  # each product 1e40 overflows float32
    assert not big.sure_finite()
    big.g[...], big.w[...] = 1.0, 1.0
    big.g[0, 0] = -1e20  # the largest magnitude is negative
    big.w[5, 0] = -1e20
    assert not big.sure_finite()
    big.w[5, 0] = -1e17  # 3 * 1e20 * 1e17 < 3.4e38: no sum of 3 products can overflow
    assert big.sure_finite()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype, j", [(np.float32, 100), (np.float64, 1000)])
def test_it_is_not_sure_finite_where_rounding_alone_can_overflow(dtype, j):
    """Factors whose exact bound, J * max|g| * max|w|, is just below the largest number: the
    sum as computed can round past it (1.51 and 2.25e36, J 100, made an infinite float32),
    so the whole array must be checked. Well inside the range, they are sure."""
    largest = float(np.finfo(dtype).max)
    rng = np.random.default_rng(7)
    for _ in range(20):
        a = dtype(rng.uniform(1, 2))
        b = dtype(largest / j / float(a))
        while float(a) * float(b) * j >= largest:
            b = np.nextafter(b, dtype(0))
        dy = FactoredGradient(np.full((1, j), a, dtype), np.full((2, j), -b, dtype), (1, 2))
        assert not dy.sure_finite()
        dy.w[...] = -b / 8
        assert dy.sure_finite() and np.isfinite(dy.array()).all()
    if dtype is np.float32:  # the case above: its exact bound is below the largest float32
        a, b = np.float32(1.5118216), np.float32(2.2508101e36)
        assert float(a) * float(b) * 100 < largest
        assert not FactoredGradient(np.full((1, 100), a), np.full((1, 100), b), (1, 1)).sure_finite()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("bad", ["nan", "overflow"])
def test_a_convolution_refuses_a_factored_dy_with_values_that_are_not_finite(bad):
    """As it refuses such an array: a NaN factor, or finite factors whose product overflows
    (the whole array is then formed and checked)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    w = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    backend = convlab.get_backend("im2col")
    y, cache = backend.forward(x, w, None, 1, 0)
    g = np.ones((2, 2), np.float32)
    wd = np.full((y[0].size, 2), 1e20 if bad == "overflow" else 1.0, np.float32)
    if bad == "nan":
        wd[0, 0] = np.nan
    if bad == "overflow":
        g[...] = 1e20
    with pytest.raises(ValueError, match="dy contains NaN or infinite values"):
        backend.backward(FactoredGradient(g, wd, y.shape), cache)


def test_a_convolution_refuses_a_factored_dy_of_another_shape_or_dtype():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 1, 6, 6))
    backend = convlab.get_backend("im2col")
    y, cache = backend.forward(x, rng.standard_normal((3, 1, 3, 3)), None, 1, 0)
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(2, 3, 4, 4\)"):
        backend.backward(FactoredGradient(np.ones((2, 2)), np.ones((3 * 16, 2)), (2, 16, 3)), cache)
    with pytest.raises(ValueError, match="dy is float32 but the forward computed float64"):
        backend.backward(FactoredGradient(np.ones((2, 2), np.float32), np.ones((48, 2), np.float32), y.shape), cache)
    # Before the check of its values: int factors have no largest float to bound them by.
    with pytest.raises(ValueError, match="dy is int64 but the forward computed float64"):
        backend.backward(FactoredGradient(np.ones((2, 2), np.int64), np.ones((48, 2), np.int64), y.shape), cache)


def test_a_layer_that_cannot_take_factors_says_so():
    """Only a Flatten and a convolution take a factored dy; a Dense or a non-fused ReLU
    names what it got rather than failing inside numpy."""
    rng = np.random.default_rng(4)
    dense = Dense(6, 4, rng=rng, dtype=np.float64)
    dense.forward(rng.standard_normal((5, 6)))
    dy = FactoredGradient(rng.standard_normal((5, 2)), rng.standard_normal((4, 2)), (5, 4))
    with pytest.raises(ValueError, match="Dense.backward: dy must be a numpy array .* got FactoredGradient"):
        dense.backward(dy)


def gradients(model, x, y, factored=True):
    """Every parameter's gradient after one backward (the dense layer's factored dx turned off
    when ``factored`` is False), and what each Dense.backward was asked."""
    asked = []
    for layer in model.layers:
        if isinstance(layer, Dense):
            original = layer.backward

            def spy(dy, need_dx=True, factored=False, original=original):
                asked.append(factored)
                return original(dy, need_dx, factored)
            layer.backward = spy
    if not factored:
        model._factored_dx = lambda i: False
    _, dlogits = softmax_cross_entropy(model.forward(x), y)
    model.backward(dlogits)
    return [grad.copy() for _, _, grad in model.named_parameters()], asked


@pytest.mark.parametrize("backend", ["im2col", "fft", "naive", "auto"])
def test_the_reference_network_hands_on_the_factors_and_trains_as_with_the_array(backend, tmp_path, monkeypatch):
    """The reference network's Dense hands its input gradient on as factors when its
    convolution's backend takes them (im2col, fft; auto for its pick), and the gradients are
    those of the whole array (to float64 rounding; the same bits where the backend is given
    the array)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # auto's picks
    rng = np.random.default_rng(5)
    x, y = rng.random((20, 1, 28, 28)), rng.integers(0, 10, 20)  # im2col: chunks of 8, 8 and 4 images
    factored, asked = gradients(reference_net(0, np.float64, backend=backend), x, y)
    plain, asked_plain = gradients(reference_net(0, np.float64, backend=backend), x, y, factored=False)
    takes = convlab.get_backend(backend).takes_factored_dy
    assert asked == [takes] and asked_plain == [False]
    for a, b in zip(factored, plain):
        if takes:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
        else:
            np.testing.assert_array_equal(a, b)


def test_only_a_dense_layer_after_a_convolution_through_reshapes_and_relus_hands_on_factors():
    rng = np.random.default_rng(6)
    conv = Conv2D(1, 2, 3, backend="im2col", rng=rng, dtype=np.float64)
    pooled = convlab.Sequential(Conv2D(1, 2, 3, backend="im2col", rng=rng, dtype=np.float64), ReLU(),
                                AvgPool2D(2), Flatten(), Dense(2 * 3 * 3, 4, rng=rng, dtype=np.float64))
    stacked = convlab.Sequential(conv, ReLU(), Flatten(), Dense(2 * 6 * 6, 5, rng=rng, dtype=np.float64), ReLU(),
                                 Dense(5, 4, rng=rng, dtype=np.float64))
    x, y = rng.random((3, 1, 8, 8)), rng.integers(0, 4, 3)
    assert gradients(pooled, x, y)[1] == [False]  # a pooling layer in between needs the array
    assert gradients(stacked, x, y)[1] == [False, True]  # a Dense after a Dense: the array


def test_a_subclass_of_a_layer_gets_arrays_as_before():
    """A Dense, Flatten or Conv2D subclass may have a backward of its own that knows nothing
    of factors: the network passes it arrays, as before 0.13.0."""
    class MyDense(Dense):
        def backward(self, dy, need_dx=True):  # no factored=
            return super().backward(dy, need_dx)

    class MyFlatten(Flatten):
        def backward(self, dy, need_dx=True):
            assert isinstance(dy, np.ndarray)
            return super().backward(dy, need_dx)

    rng = np.random.default_rng(8)
    x, y = rng.random((3, 1, 8, 8)), rng.integers(0, 4, 3)
    for model in (convlab.Sequential(Conv2D(1, 2, 3, backend="im2col", rng=rng, dtype=np.float64), ReLU(), Flatten(),
                                     MyDense(2 * 6 * 6, 4, rng=rng, dtype=np.float64)),
                  convlab.Sequential(Conv2D(1, 2, 3, backend="im2col", rng=rng, dtype=np.float64), ReLU(), MyFlatten(),
                                     Dense(2 * 6 * 6, 4, rng=rng, dtype=np.float64))):
        _, dlogits = softmax_cross_entropy(model.forward(x), y)
        model.backward(dlogits)
        assert all(grad is not None for _, _, grad in model.named_parameters())
