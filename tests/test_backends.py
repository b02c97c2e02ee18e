"""Every registered backend against the naive oracle, and against finite differences."""

import numpy as np
import pytest

import convlab
from tests.conftest import supported_conv_cases

ORACLE = convlab.get_backend("naive")
TOLERANCE = {np.float64: dict(rtol=1e-9, atol=1e-9), np.float32: dict(rtol=2e-4, atol=2e-4)}


def run(backend, x, w, b, stride, padding, dy_seed=0):
    y, cache = backend.forward(x, w, b, stride, padding)
    dy = np.random.default_rng(dy_seed).standard_normal(y.shape).astype(x.dtype)
    return (y, dy) + tuple(backend.backward(dy, cache))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_naive_on_random_shapes(backend, dtype):
    for case in supported_conv_cases(backend, np.random.default_rng(1234), 40, dtype):
        ours = run(backend, *case)
        # The oracle runs in float64 whatever the dtype under test.
        ref = run(ORACLE, *[a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in case])
        shape_note = f"x {case[0].shape} w {case[1].shape} stride {case[3]} padding {case[4]}"
        for name, a, r in zip(("y", "dy", "dx", "dw", "db"), ours, ref):
            assert a.dtype == dtype, f"{name} changed dtype to {a.dtype} ({shape_note})"
            assert a.shape == r.shape, f"{name} shape {a.shape} != {r.shape} ({shape_note})"
            scale = max(1.0, float(np.abs(r).max()))
            np.testing.assert_allclose(a, r, **{k: v * scale for k, v in TOLERANCE[dtype].items()},
                                       err_msg=f"{name} differs from naive ({shape_note})")


@pytest.mark.parametrize("shape", [
    # (N, C, H, W, F, kh, kw, stride, padding)
    (2, 1, 28, 28, 4, 7, 7, 1, 1),        # the MNIST layer, fewer filters
    (1, 2, 5, 9, 3, 5, 9, 1, 0),          # kernel = input, 1x1 output
    (2, 3, 7, 6, 2, 9, 8, 1, 2),          # kernel = padded input
    (1, 1, 4, 4, 1, 3, 3, 1, 3),          # padding > kernel / 2
    (2, 2, 13, 11, 3, 4, 3, (3, 2), (2, 0)),
    (2, 20, 5, 3, 20, 3, 2, (5, 4), (8, 6)),   # stride > image, padding > kernel, 20 channels
    (2, 20, 6, 9, 20, 5, 3, 1, (8, 7)),        # stride 1, padding > kernel (winograd crops dy's padding)
])
def test_matches_naive_on_chosen_shapes(backend, shape):
    n, c, h, wd, f, kh, kw, stride, padding = shape
    if backend.supports((n, c, h, wd), (f, c, kh, kw), stride, padding) is not None:
        pytest.skip(f"{backend.name} does not support this shape (refusals are tested with random shapes)")
    rng = np.random.default_rng(7)
    case = (rng.standard_normal((n, c, h, wd)), rng.standard_normal((f, c, kh, kw)),
            rng.standard_normal(f), stride, padding)
    for a, r in zip(run(backend, *case), run(ORACLE, *case)):
        np.testing.assert_allclose(a, r, rtol=1e-9, atol=1e-9)


def test_gradients_pass_dot_product_check(backend):
    """<dy, J v> computed by central differences equals <J^T dy, v> from backward."""
    rng = np.random.default_rng(99)
    for x, w, b, stride, padding in supported_conv_cases(backend, np.random.default_rng(98), 8):
        y, cache = backend.forward(x, w, b, stride, padding)
        dy = rng.standard_normal(y.shape)
        dx, dw, db = backend.backward(dy, cache)
        vx, vw, vb = rng.standard_normal(x.shape), rng.standard_normal(w.shape), rng.standard_normal(b.shape)
        eps = 1e-6
        plus, _ = backend.forward(x + eps * vx, w + eps * vw, b + eps * vb, stride, padding)
        minus, _ = backend.forward(x - eps * vx, w - eps * vw, b - eps * vb, stride, padding)
        numeric = np.sum(dy * (plus - minus)) / (2 * eps)
        analytic = np.sum(dx * vx) + np.sum(dw * vw) + np.sum(db * vb)
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-6)


def test_a_fused_relu_on_random_shapes_gives_naive_and_a_relu_layer_s_results(backend):
    """relu=True (fused by im2col, fft, winograd and auto's pick, applied around the pass
    for the others) on random shapes, strides included (tests/test_speed_paths.py has
    stride-1 shapes only): y = max(conv, 0), and the backward of naive's convolution with
    the ReLU's gradient applied to dy first, in float64."""
    rng = np.random.default_rng(21)
    for x, w, b, stride, padding in supported_conv_cases(backend, np.random.default_rng(20), 8):
        y_ref, cache = ORACLE.forward(x, w, b, stride, padding)
        dy = rng.standard_normal(y_ref.shape)
        refs = (np.maximum(y_ref, 0),) + tuple(ORACLE.backward(dy * (y_ref > 0), cache))
        y, cache = backend.forward(x, w, b, stride, padding, relu=True)
        shape_note = f"x {x.shape} w {w.shape} stride {stride} padding {padding}"
        for name, got, want in zip(("y", "dx", "dw", "db"), (y,) + tuple(backend.backward(dy, cache)), refs):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * max(1.0, float(np.abs(want).max())),
                                       err_msg=f"{name} with a fused ReLU differs from naive's ({shape_note})")


def chunked_mnist_case(backend, dtype):
    """(x, w, b, stride, padding): 12 images of 28 x 28, 8 filters 5 x 5 (3 or more chunks
    in im2col), or a smaller kernel where the backend's are smaller."""
    rng = np.random.default_rng(5)
    k = 5 if backend.supports((12, 1, 28, 28), (8, 1, 5, 5), (1, 1), (2, 2)) is None else 3
    return (rng.standard_normal((12, 1, 28, 28)).astype(dtype), rng.standard_normal((8, 1, k, k)).astype(dtype),
            rng.standard_normal(8).astype(dtype), (1, 1), (k // 2, k // 2))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inference_gives_the_forwards_output_exactly(backend, dtype):
    """The pass that keeps nothing (Backend.inference) computes y as the forward does, bit
    for bit, with and without a fused ReLU: on random shapes, and on a batch of MNIST-sized
    images that im2col cuts into several chunks (shared among the threads)."""
    for x, w, b, stride, padding in supported_conv_cases(backend, np.random.default_rng(77), 12, dtype) + [
            chunked_mnist_case(backend, dtype)]:
        for relu in (False, True):
            y, _ = backend.forward(x, w, b, stride, padding, relu=relu)
            np.testing.assert_array_equal(backend.inference(x, w, b, stride, padding, relu=relu), y,
                                          err_msg=f"x {x.shape} w {w.shape} stride {stride} padding {padding}")


def test_need_dx_false_skips_dx_only(backend):
    [(x, w, b, stride, padding)] = supported_conv_cases(backend, np.random.default_rng(3), 1)
    y, cache = backend.forward(x, w, b, stride, padding)
    dy = np.ones_like(y)
    full = backend.backward(dy, cache)
    y, cache = backend.forward(x, w, b, stride, padding)
    dx, dw, db = backend.backward(dy, cache, need_dx=False)
    assert dx is None
    np.testing.assert_allclose(dw, full[1], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, full[2], rtol=1e-10, atol=1e-10)


def handed_over(a, layout):
    """``a``'s values in the memory layout numpy may hand a caller's array over in: Fortran
    order, negative strides (a flip of a flipped copy), every other element of a larger
    array, read-only, or broadcast along the first axis (``a`` must be equal along it)."""
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "reversed":
        return np.flip(np.flip(a).copy())
    if layout == "strided":
        spaced = np.zeros(a.shape + (2,), a.dtype)
        spaced[..., 0] = a
        return spaced[..., 0]
    if layout == "read-only":
        a = a.copy()
        a.flags.writeable = False
        return a
    return np.broadcast_to(a[:1], a.shape)


@pytest.mark.parametrize("layout", ["fortran", "reversed", "strided", "read-only", "broadcast"])
def test_inputs_in_any_memory_layout_give_the_contiguous_results_and_stay_as_they_were(backend, layout):
    """x, w, b and dy as a caller may pass them (a transpose's Fortran order, a flip, a slice,
    a read-only array, np.broadcast_to): the results of contiguous copies, forward, inference
    and backward, and the inputs left as they were."""
    rng = np.random.default_rng(4)
    shapes = ((3, 3, 9, 8), (4, 3, 3, 3), (4,), (3, 4, 9, 8))
    arrays = [rng.standard_normal(shape) for shape in shapes]
    if layout == "broadcast":  # equal along the first axis (one image, one filter, one bias, one dy)
        arrays = [np.repeat(a[:1], len(a), axis=0) for a in arrays]
    x, w, b, dy = arrays
    y, cache = backend.forward(x, w, b, 1, 1)
    want = (y, *backend.backward(dy, cache))
    given = [handed_over(a, layout) for a in arrays]
    y, cache = backend.forward(*given[:3], 1, 1)
    np.testing.assert_array_equal(backend.inference(*given[:3], 1, 1), y)
    for name, got, wanted in zip(("y", "dx", "dw", "db"), (y, *backend.backward(given[3], cache)), want):
        np.testing.assert_allclose(got, wanted, rtol=1e-12, atol=1e-12, err_msg=f"{name} of {layout} inputs")
    for name, a, original in zip(("x", "w", "b", "dy"), given, arrays):
        np.testing.assert_array_equal(a, original, err_msg=f"{name} was changed")


def test_matches_torch_conv2d(backend):
    torch = pytest.importorskip("torch")
    for x, w, b, stride, padding in supported_conv_cases(backend, np.random.default_rng(5), 10):
        ours = convlab.conv2d(x, w, b, stride, padding, backend=backend.name)
        ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                         stride=stride, padding=padding).numpy()
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)


def test_described(backend):
    assert backend.name in convlab.list_backends()
    assert backend.description and "\n" not in backend.description
    assert backend.limits and "\n" not in backend.limits


def test_two_threads_on_the_same_problem_get_their_own_answers(backend):
    """A user's threads (a server's, say) may convolve at once. fft's whole-transform plans
    were shared by the process, so two threads on the same grid got each other's numbers."""
    import threading

    rng = np.random.default_rng(9)
    w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    xs = [rng.standard_normal((2, 3, 16, 16)) for _ in range(2)]
    dys = [rng.standard_normal((2, 4, 16, 16)) for _ in range(2)]
    wanted = [run_pass(ORACLE, x, w, b, dy) for x, dy in zip(xs, dys)]
    wrong = [0, 0]

    def work(i):
        for _ in range(50):
            got = run_pass(backend, xs[i], w, b, dys[i])
            wrong[i] += not all(np.allclose(g, r, rtol=1e-9, atol=1e-9) for g, r in zip(got, wanted[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == [0, 0]


def run_pass(backend, x, w, b, dy):
    """y, dx, dw, db of one forward and backward, and ``convlab.conv2d``'s y (the inference pass)."""
    y, cache = backend.forward(x, w, b, 1, 1)
    return (y, *backend.backward(dy, cache), convlab.conv2d(x, w, b, 1, 1, backend=backend.name))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_over_windows_of_zeros_are_exactly_the_bias(backend, relu, dtype):
    """Where the input window holds only zeros (MNIST's background), a direct method's output
    is exactly the bias (after a fused ReLU, max(b, 0)); so must every backend's be, or a
    ReLU or a max-pool decides on rounding noise and the gradients differ by whole terms
    (winograd's did: LeNet-5's first-step db 10-18 % off im2col's)."""
    rng = np.random.default_rng(0)
    x = np.zeros((2, 3, 28, 28), dtype)
    x[:, :, 6:20, 9:19] = rng.random((2, 3, 14, 10))     # a "digit" on a black background
    w = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(dtype)
    b = rng.standard_normal(8).astype(dtype)
    b[:3] = 0  # as at the start of training
    if backend.supports(x.shape, w.shape, 1, 1) is not None:
        pytest.skip(f"{backend.name} does not support this shape")
    y, _ = backend.forward(x, w, b, 1, 1, relu=relu)
    background = np.broadcast_to(convlab.conv2d(np.abs(x), np.ones_like(w[:1]), padding=1,
                                                backend="naive") == 0, y.shape)
    want = np.broadcast_to((np.maximum(b, 0) if relu else b)[:, None, None], y.shape)
    assert 0.3 < background.mean() < 0.9
    assert np.array_equal(y[background], want[background])


# Which of x and w each built-in's cache keeps themselves, not copies or transforms: what
# convlab/registry.py's docstring, README.md and docs/plugins.md say, kept true here.
KEPT_THEMSELVES = {"naive": {"w"}, "im2col": {"w"}, "fft": set(), "fft-tiled": set(), "winograd": {"x", "w"}}


@pytest.mark.parametrize("name", sorted(KEPT_THEMSELVES))
@pytest.mark.parametrize("changed", ["x", "w"])
def test_which_inputs_a_cache_keeps_themselves_is_as_documented(name, changed):
    """The caller leaves x and w as they are until the backward; one a cache keeps itself,
    changed in between, gives a wrong gradient (x: dw; w: dx), silently."""
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    backend = convlab.get_backend(name)
    y, cache = backend.forward(x, w, b, 1, 1)
    dy = rng.standard_normal(y.shape)
    expected = backend.backward(dy, backend.forward(x.copy(), w.copy(), b, 1, 1)[1])
    {"x": x, "w": w}[changed][...] = 0
    dx, dw, _ = backend.backward(dy, cache)
    wrong = {"x": not np.allclose(dw, expected[1]), "w": not np.allclose(dx, expected[0])}[changed]
    assert wrong == (changed in KEPT_THEMSELVES[name])


@pytest.mark.parametrize("relu", [False, True])
def test_a_factored_dy_gives_what_its_whole_array_gives(backend, relu):
    """dy as a dense layer's factors (convlab.factored.FactoredGradient), which im2col forms
    chunk by chunk, fft tile by tile, and every other backend is given whole by
    Backend.backward: the same dx, dw and db as the array itself, on random shapes with and
    without a fused ReLU and dx, in float64 (equal to rounding: im2col's chunks and fft's
    tiles multiply the factors in other blocks)."""
    from convlab.factored import FactoredGradient

    rng = np.random.default_rng(31)
    for x, w, b, stride, padding in supported_conv_cases(backend, np.random.default_rng(30), 6):
        y, cache = backend.forward(x, w, b, stride, padding, relu=relu)
        g = rng.standard_normal((len(y), 3))
        dy = FactoredGradient(g, rng.standard_normal((y[0].size, 3)), y.shape)
        for need_dx in (True, False):
            want = ORACLE.backward(dy.array() * (y > 0 if relu else 1), ORACLE.forward(x, w, b, stride, padding)[1],
                                   need_dx)
            got = backend.backward(dy, cache, need_dx)
            for name, a, b_ in zip(("dx", "dw", "db"), got, want):
                if b_ is None:
                    assert a is None
                    continue
                np.testing.assert_allclose(a, b_, rtol=1e-10, atol=1e-10 * max(1.0, float(np.abs(b_).max())),
                                           err_msg=f"{name} from a factored dy, x {x.shape} w {w.shape} "
                                                   f"stride {stride} padding {padding} relu {relu}")
