"""The winograd backend: exact transforms, dense random shapes against the oracle for every
tile size, the float32 error bound, refusals, settings, and training next to im2col."""

import re
from fractions import Fraction

import numpy as np
import pytest

import convlab
import convlab.data
import convlab.threads
from backends import winograd
from convlab.layers import Conv2D, Dense, Flatten, ReLU
from convlab.models import Sequential
from convlab.optimizers import SGD
from convlab.training import fit
from tests.test_cli import run_cli

ORACLE = convlab.get_backend("naive")
WINOGRAD = convlab.get_backend("winograd")


@pytest.fixture
def tile():
    """Sets the tile size for one test; the setting in force before is restored after."""
    before = winograd.settings()
    yield lambda m: winograd.configure(tile=m)
    winograd.configure(tile=before.tile)


def run(backend, x, w, b, padding, dy, relu=False):
    y, cache = backend.forward(x, w, b, 1, padding, relu=relu)
    return (y,) + tuple(backend.backward(dy, cache))


def run_oracle_then_relu(x, w, b, padding, dy):
    """naive's (y, dx, dw, db) with a ReLU layer after it."""
    y, cache = ORACLE.forward(x, w, b, 1, padding)
    return (np.maximum(y, 0),) + tuple(ORACLE.backward(dy * (y > 0), cache))


@pytest.mark.parametrize("m", winograd.TILES)
@pytest.mark.parametrize("r", range(1, winograd.MAX_KERNEL_SIDE + 1))
def test_cook_toom_is_exact_in_rationals(m, r):
    a_t, g, b_t = winograd.cook_toom(m, r)
    rng = np.random.default_rng(m * 10 + r)
    for _ in range(3):
        d = [Fraction(int(v)) for v in rng.integers(-9, 10, m + r - 1)]
        k = [Fraction(int(v)) for v in rng.integers(-9, 10, r)]
        gk = [sum(gi * ki for gi, ki in zip(row, k)) for row in g]
        bd = [sum(bi * di for bi, di in zip(row, d)) for row in b_t]
        y = [sum(ai * gki * bdi for ai, gki, bdi in zip(row, gk, bd)) for row in a_t]
        assert y == [sum(k[j] * d[i + j] for j in range(r)) for i in range(m)]


def test_points_are_the_documented_ones():
    assert [str(p) for p in winograd.POINTS[:7]] == ["0", "1", "-1", "1/2", "-1/2", "2", "-2"]
    # F(2, 3) with 0, 1, -1, infinity: Lavin & Gray's Bᵀ up to the sign of a row.
    b_t = np.array(winograd.cook_toom(2, 3)[2], dtype=float)
    lavin = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
    assert np.array_equal(np.abs(b_t), np.abs(lavin))


@pytest.mark.parametrize("m", winograd.TILES)
def test_matches_naive_on_dense_random_shapes(tile, m):
    """Random N, C, F, odd and rectangular images (some smaller than a tile), every kernel
    side 1..5 (non-square too), padding from 0 to beyond r // 2: forward, dx, dw, db."""
    tile(m)
    rng = np.random.default_rng(m)
    for _ in range(25):
        kh, kw = (int(v) for v in rng.integers(1, winograd.MAX_KERNEL_SIDE + 1, 2))
        ph, pw = int(rng.integers(0, kh // 2 + 3)), int(rng.integers(0, kw // 2 + 3))
        h = int(rng.integers(max(1, kh - 2 * ph), 20))
        w = int(rng.integers(max(1, kw - 2 * pw), 20))
        n, c, f = (int(v) for v in rng.integers(1, 5, 3))
        x, wt = rng.standard_normal((n, c, h, w)), rng.standard_normal((f, c, kh, kw))
        b = rng.standard_normal(f)
        y, _ = ORACLE.forward(x, wt, b, 1, (ph, pw))
        dy = rng.standard_normal(y.shape)
        for name, ours, ref in zip(("y", "dx", "dw", "db"), run(WINOGRAD, x, wt, b, (ph, pw), dy),
                                   run(ORACLE, x, wt, b, (ph, pw), dy)):
            scale = max(1.0, float(np.abs(ref).max()))
            np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9 * scale,
                                       err_msg=f"{name}, m={m}, x {x.shape} w {wt.shape} padding {(ph, pw)}")


def test_chunks_and_groups_match_naive(tile, monkeypatch):
    """Chunks that are bands of tile rows, groups of several images (the shapes above fit in
    one chunk), dy's canvas shared by dw and dx ("same" padding) or not: the chunk edges, the
    groups' dw sums and dx agree with naive too; also with the ReLU fused (each group keeps
    dy's rows it reads, those around a band too, where y > 0)."""
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 1)
    rng = np.random.default_rng(7)
    bands = several = banded_groups = False
    for m, kernel, padding, n, image, f in ((4, (3, 3), (1, 1), 7, (13, 10), 24), (6, (3, 5), (0, 4), 9, (5, 6), 24),
                                            (2, (5, 3), (3, 0), 5, (13, 10), 4), (2, (3, 3), (1, 1), 2, (40, 6), 3)):
        tile(m)
        x, w = rng.standard_normal((n, 3) + image), rng.standard_normal((f, 3) + kernel)
        b = rng.standard_normal(f)
        tiling = winograd.correlation_tiling(image, kernel, tuple((p, p) for p in padding), m)[1]
        per = winograd.tile_rows_per_chunk(tiling, f, 8)
        chunks = [winograd.piece(lo, hi, tiling.counts[0]) for lo, hi in
                  convlab.threads.item_chunks(n, tiling.counts[0], per)]
        groups = [winograd.piece(lo, hi, tiling.counts[0]) for lo, hi in convlab.threads.item_chunks(
                  n, tiling.counts[0], winograd.tile_rows_per_group(n, per, tiling, f, 3))]
        bands |= any(stop - first < tiling.counts[0] for _, first, stop in chunks)
        several |= any(images.stop - images.start > 1 for images, _, _ in groups)
        banded_groups |= any(stop - first < tiling.counts[0] for _, first, stop in groups)
        y, _ = ORACLE.forward(x, w, b, 1, padding)
        dy = rng.standard_normal(y.shape)
        for relu, refs in ((False, run(ORACLE, x, w, b, padding, dy)), (True, run_oracle_then_relu(x, w, b, padding, dy))):
            for name, ours, ref in zip(("y", "dx", "dw", "db"), run(WINOGRAD, x, w, b, padding, dy, relu), refs):
                np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max(),
                                           err_msg=f"{name}, m={m}, relu={relu}")
    assert bands and several and banded_groups


def test_one_channel_images_with_any_strides(tile):
    """Images of one channel as a data set holds them, (N, 784) viewed (N, 1, 28, 28) with
    stride 0 on the channel axis (numpy's strides of a length-1 axis can be anything; the
    transforms must not read them), also 32 x 32 ones (the channel-first detour)."""
    tile(4)
    rng = np.random.default_rng(3)
    for size in (28, 32):
        x = np.lib.stride_tricks.as_strided(rng.standard_normal((5, size * size)), (5, 1, size, size),
                                            (size * size * 8, 0, size * 8, 8))
        w, b = rng.standard_normal((3, 1, 3, 3)), rng.standard_normal(3)
        y, _ = ORACLE.forward(x, w, b, 1, 1)
        dy = rng.standard_normal(y.shape)
        for ours, ref in zip(run(WINOGRAD, x, w, b, 1, dy), run(ORACLE, x, w, b, 1, dy)):
            np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


def float32_errors(m, kernel, seed, n=4, c=32, f=8, size=14):
    """max |got - ref| / max |ref| of y, dx, dw in float32 against float64 (random normal)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, size, size))
    w = rng.standard_normal((f, c) + kernel) / np.sqrt(c * kernel[0] * kernel[1])
    b = rng.standard_normal(f)
    padding = (kernel[0] // 2, kernel[1] // 2)
    y, _ = ORACLE.forward(x, w, b, 1, padding)
    dy = rng.standard_normal(y.shape)
    ref = run(convlab.get_backend("im2col"), x, w, b, padding, dy)
    got = run(WINOGRAD, *(a.astype(np.float32) for a in (x, w, b)), padding, dy.astype(np.float32))
    assert all(a.dtype == np.float32 for a in got)
    return [float(np.abs(g - r).max() / np.abs(r).max()) for g, r in zip(got[:3], ref[:3])]


@pytest.mark.parametrize("m, kernel", [(2, (3, 3)), (4, (3, 3)), (6, (3, 3)), (2, (5, 5)), (4, (5, 5)),
                                       (6, (5, 5)), (4, (3, 5))])
def test_float32_error_within_the_documented_bound(tile, m, kernel):
    tile(m)
    points = m + max(kernel) - 1
    bound = winograd.ERROR_BOUND_FLOAT32[points]
    errors = np.median([float32_errors(m, kernel, seed) for seed in range(3)], axis=0)
    assert max(errors) <= bound, f"F({m}, {kernel}) float32 errors y, dx, dw = {errors} > {bound}"


def test_gradients_pass_finite_differences_on_3x3_and_5x5(tile):
    tile(4)
    rng = np.random.default_rng(5)
    for kernel, padding in (((3, 3), (1, 1)), ((5, 5), (3, 0)), ((3, 5), (0, 2))):
        x, w = rng.standard_normal((2, 3, 9, 11)), rng.standard_normal((4, 3) + kernel)
        b = rng.standard_normal(4)
        y, cache = WINOGRAD.forward(x, w, b, 1, padding)
        dy = rng.standard_normal(y.shape)
        dx, dw, db = WINOGRAD.backward(dy, cache)
        vx, vw, vb = rng.standard_normal(x.shape), rng.standard_normal(w.shape), rng.standard_normal(b.shape)
        eps = 1e-6
        plus, _ = WINOGRAD.forward(x + eps * vx, w + eps * vw, b + eps * vb, 1, padding)
        minus, _ = WINOGRAD.forward(x - eps * vx, w - eps * vw, b - eps * vb, 1, padding)
        numeric = np.sum(dy * (plus - minus)) / (2 * eps)
        assert numeric == pytest.approx(np.sum(dx * vx) + np.sum(dw * vw) + np.sum(db * vb), rel=1e-7)


@pytest.mark.parametrize("stride, kernel, reason", [
    ((2, 2), (3, 3), "stride 2x2 (stride 1 only)"),
    ((1, 2), (3, 3), "stride 1x2 (stride 1 only)"),
    ((1, 1), (7, 7), "kernel 7x7 (kernel sides 1 to 5 only)"),
    ((1, 1), (3, 6), "kernel 3x6 (kernel sides 1 to 5 only)"),
])
def test_refuses_what_it_cannot_do(stride, kernel, reason):
    x, w = np.ones((1, 1, 12, 12)), np.ones((1, 1) + kernel)
    assert WINOGRAD.supports(x.shape, w.shape, stride, 0) == reason
    able = [name for name in convlab.list_backends() if name not in ("winograd", "naive")
            and convlab.get_backend(name).supports(x.shape, w.shape, stride, 0) is None]
    hint = ", ".join(able[:-1]) + " or " + able[-1]  # e.g. "auto, fft or im2col" (and fft-tiled at stride 1)
    with pytest.raises(convlab.Unsupported, match="^" + re.escape(f"backend 'winograd' does not support {reason}; try {hint}")):
        convlab.conv2d(x, w, stride=stride, backend="winograd")


def test_tile_setting_from_configure_and_environment(tile, monkeypatch):
    assert tile(6).tile == 6
    monkeypatch.setenv(winograd.ENV_TILE, "2")
    assert winograd.configure().tile == 2
    monkeypatch.delenv(winograd.ENV_TILE)
    assert winograd.configure().tile == winograd.DEFAULT_TILE
    for bad in (7, 0, 2.0, "four", True):
        with pytest.raises(ValueError, match="tile must be one of 2, 3, 4, 5, 6"):
            winograd.configure(tile=bad)
    monkeypatch.setenv(winograd.ENV_TILE, "9")
    with pytest.raises(ValueError, match="CONVLAB_WINOGRAD_TILE must be one of"):
        winograd.configure()


def test_keeps_float32_and_a_forward_backward_pair_keeps_its_tile(tile):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 8, 8)).astype(np.float32), rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    tile(6)
    y, cache = WINOGRAD.forward(x, w, None, 1, 1)
    tile(2)  # the backward of a forward run under another tile size still matches it
    dx, dw, db = WINOGRAD.backward(np.ones_like(y), cache)
    assert {a.dtype for a in (y, dx, dw, db)} == {np.dtype(np.float32)}
    ref = run(ORACLE, x.astype(float), w.astype(float), np.zeros(4), 1, np.ones(y.shape))
    for ours, r in zip((y, dx, dw), ref):
        np.testing.assert_allclose(ours, r, rtol=1e-4, atol=1e-4 * np.abs(r).max())


def three_by_three_net(seed, backend):
    rng = np.random.default_rng(seed)
    return Sequential(Conv2D(1, 8, 3, padding=1, backend=backend, rng=rng), ReLU(),
                      Conv2D(8, 8, 3, padding=1, backend=backend, rng=rng), ReLU(),
                      Flatten(), Dense(8 * 28 * 28, 10, rng=rng))


def test_training_a_3x3_network_follows_im2col(data_read_once):
    data = convlab.data.load_dataset("mnist")
    data.x_train, data.y_train = data.x_train[:512], data.y_train[:512]
    data.x_test, data.y_test = data.x_test[:1000], data.y_test[:1000]
    curves = {}
    for backend in ("im2col", "winograd"):
        model = three_by_three_net(0, backend)
        curves[backend] = fit(model, SGD(model, lr=0.02, momentum=0.9), data, 2, 64, seed=0, progress=False)
    for ours, ref in zip(curves["winograd"], curves["im2col"]):
        assert ours.train_loss == pytest.approx(ref.train_loss, rel=1e-2)
        # 0.2 points of test accuracy: two of the 1000 images (float32 roundings differ,
        # so the two runs drift apart by about 1e-4 of the loss per epoch).
        assert abs(ours.test_accuracy - ref.test_accuracy) <= 0.002 + 1e-12
    assert curves["winograd"][-1].test_accuracy > 0.6  # it learned (chance: 0.1)


def test_train_on_the_7x7_reference_network_refuses_in_one_line(capsys, data_read_once):
    code, _, err = run_cli(capsys, "train", "--backend", "winograd", "--train-size", "64", "--test-size", "10",
                           "--epochs", "1", "--progress", "False")
    assert code == 2
    message, _, able = err.strip().partition("; try ")
    assert message == ("convlab: error: conv layer 1 of reference (conv 1 -> 32 filters 7x7, stride 1, padding 1, "
                       "on 28x28): backend 'winograd' does not support kernel 7x7 (kernel sides 1 to 5 only)")
    able = able.replace(" or ", ", ").split(", ")
    assert able == sorted(able) and {"auto", "fft", "fft-tiled", "im2col"} <= set(able)  # and any plugin that can
    assert not {"naive", "winograd"} & set(able)
