"""fft-tiled against the float64 oracle on dense random shapes (kernels close to the tile,
odd and rectangular sizes, padding beyond k // 2, many blocks and threads), its settings
and refusals, and the exact outputs of fft and fft-tiled where a direct method is exact."""

import numpy as np
import pytest

import convlab
from backends import fft_tiled
from convlab import exact, fftw

TILED = convlab.get_backend("fft-tiled")
ORACLE = convlab.get_backend("naive")
TOLERANCE = {np.float64: 1e-9, np.float32: 3e-4}


@pytest.fixture(autouse=True)
def default_tile(monkeypatch):
    monkeypatch.delenv(fft_tiled.ENV_TILE, raising=False)
    yield
    TILED.impl.tile = None


def random_case(rng, tile, dtype):
    """A stride-1 problem whose kernel is close to ``tile`` (or anything up to it)."""
    kh = int(rng.integers(max(1, tile - 3), tile + 1)) if rng.random() < 0.5 else int(rng.integers(1, tile + 1))
    kw = int(rng.integers(1, tile + 1))
    ph, pw = (int(p) for p in rng.integers(0, [kh + 2, kw + 2]))   # padding up to k + 1
    h = int(rng.integers(max(1, kh - 2 * ph), 3 * tile))
    w = int(rng.integers(max(1, kw - 2 * pw), 3 * tile))
    n, c, f = (int(v) for v in rng.integers(1, [3, 6, 6]))
    return (rng.standard_normal((n, c, h, w)).astype(dtype), rng.standard_normal((f, c, kh, kw)).astype(dtype),
            rng.standard_normal(f).astype(dtype), (1, 1), (ph, pw))


def passes(backend, case, dy):
    y, cache = backend.forward(*case)
    return (y,) + tuple(backend.backward(dy.astype(y.dtype), cache))


@pytest.mark.parametrize("tile", [8, 16, 32])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_naive_with_kernels_close_to_the_tile(tile, dtype):
    TILED.impl.tile = tile
    rng = np.random.default_rng(tile)
    for _ in range(6):
        case = random_case(rng, tile, dtype)
        y, cache = ORACLE.forward(*(a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in case))
        dy = rng.standard_normal(y.shape)
        ref = (y,) + tuple(ORACLE.backward(dy, cache))
        note = f"tile {tile}, x {case[0].shape} w {case[1].shape} padding {case[4]}"
        for name, ours, want in zip(("y", "dx", "dw", "db"), passes(TILED, case, dy), ref):
            assert ours.dtype == dtype and ours.shape == want.shape, f"{name}: {note}"
            scale = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(ours, want, rtol=0, atol=TOLERANCE[dtype] * scale, err_msg=f"{name}: {note}")


def test_sum_in_order_adds_parts_in_their_order_whatever_order_they_come_in():
    rng = np.random.default_rng(5)
    parts = [rng.standard_normal(50) * 10.0 ** rng.integers(-8, 8) for _ in range(9)]
    in_order = parts[0].copy()
    for part in parts[1:]:
        in_order += part
    for arrival in ([8, 0, 7, 1, 6, 2, 5, 3, 4], list(range(9))[::-1]):
        total = fft_tiled.SumInOrder()
        for number in arrival:
            total.add(number, parts[number].copy())
        assert total.expected == 9 and not total.early
        np.testing.assert_array_equal(total.total, in_order)


def test_many_blocks_on_two_threads_match_im2col(monkeypatch):
    """Blocks of one tile row each, shared by two threads; dx's overlap-add in phases."""
    monkeypatch.setattr(fft_tiled, "BLOCK_POINTS", 1)
    fftw.configure(threads=2, planner="estimate")
    try:
        rng = np.random.default_rng(3)
        for tile, (c, f) in [(8, (2, 5)), (16, (6, 7))]:  # broadcast and matmul products
            TILED.impl.tile = tile
            case = (rng.standard_normal((3, c, 41, 37)), rng.standard_normal((f, c, 5, 7)),
                    rng.standard_normal(f), (1, 1), (4, 2))
            y, cache = convlab.get_backend("im2col").forward(*case)
            dy = rng.standard_normal(y.shape)
            ref = (y,) + tuple(convlab.get_backend("im2col").backward(dy, cache))
            for ours, want in zip(passes(TILED, case, dy), ref):
                np.testing.assert_allclose(ours, want, rtol=0, atol=1e-9 * np.abs(want).max())
    finally:
        fftw.configure()


@pytest.mark.parametrize("tile", [(16, 8), (8, 16), (32, 16)])
@pytest.mark.parametrize("blocks", ["one", "many"])
def test_rectangular_tiles_match_naive(tile, blocks, monkeypatch):
    """(Th, Tw) tiles, as the cost model may choose them, in one block or one tile row per
    block on two threads (spectra kept per block, the backward on the forward's blocks)."""
    monkeypatch.setattr(fft_tiled, "tile_size_for", lambda *args: tile)
    if blocks == "many":
        monkeypatch.setattr(fft_tiled, "BLOCK_POINTS", 1)
        fftw.configure(threads=2, planner="estimate")
    try:
        rng = np.random.default_rng(sum(tile))
        for _ in range(4):
            kh, kw = int(rng.integers(1, tile[0] + 1)), int(rng.integers(1, tile[1] + 1))
            ph, pw = (int(p) for p in rng.integers(0, [kh + 2, kw + 2]))
            x = rng.standard_normal((2, 3, int(rng.integers(max(1, kh - 2 * ph), 50)),
                                     int(rng.integers(max(1, kw - 2 * pw), 50))))
            case = (x, rng.standard_normal((4, 3, kh, kw)), rng.standard_normal(4), (1, 1), (ph, pw))
            y, cache = ORACLE.forward(*case)
            dy = rng.standard_normal(y.shape)
            ref = (y,) + tuple(ORACLE.backward(dy, cache))
            for name, ours, want in zip(("y", "dx", "dw", "db"), passes(TILED, case, dy), ref):
                np.testing.assert_allclose(ours, want, rtol=0, atol=1e-9 * max(1.0, np.abs(want).max()),
                                           err_msg=f"{name}: tile {tile}, x {x.shape} k {kh}x{kw} padding {ph},{pw}")
    finally:
        fftw.configure()


def test_tile_rows_of_one_phase_never_overlap():
    """dx's overlap-add runs the tile rows of one phase at once, on several threads: for every
    tile and kernel height, rows of one image in one phase lie a whole tile apart (else two
    threads add to the same rows, a race no comparison with the oracle reliably catches),
    and every tile row is in exactly one phase."""
    for tile in fft_tiled.TILE_SIZES[:3]:
        for k in range(1, tile + 1):
            tiling = fft_tiled.Tiling((tile, 8), (k, 1), (3 * tile + k, 5), (0, 0), 2, (1, 1))
            rows = tiling.count[0]
            assert sorted(tiling.order) == list(range(2 * rows))
            for start, end in tiling.phase_bounds:
                for image in range(2):
                    tops = sorted(int(r) % rows * tiling.m[0] for r in tiling.order[start:end] if r // rows == image)
                    assert all(b - a >= tile for a, b in zip(tops, tops[1:])), f"tile {tile}, k {k}: rows at {tops}"


def test_cut_tiles_are_the_windows_of_the_zero_padded_source():
    """Tile rows above, across and below the source, tiles past either edge of its columns
    (and wholly outside them), steps both shorter and longer than the tile: every tile is
    the window of the zero-padded source at its place, whatever the buffer held before."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        c, height, width = int(rng.integers(1, 4)), int(rng.integers(1, 20)), int(rng.integers(1, 20))
        th, tw, step = int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
        count, top, left = int(rng.integers(1, 6)), int(rng.integers(-10, height + 3)), int(rng.integers(-10, 4))
        src = rng.standard_normal((c, height, width))
        margin = 10 + th + tw + count * step
        padded = np.pad(src, ((0, 0), (margin, margin), (margin, margin)))
        tiles = np.full((count, c, th, tw), np.nan)
        fft_tiled.cut_tiles(tiles, src, top, left, step)
        for j in range(count):
            r, col = margin + top, margin + left + j * step
            np.testing.assert_array_equal(tiles[j], padded[:, r:r + th, col:col + tw],
                                          err_msg=f"tile {j} of {count} at ({top}, {left}) step {step}")


def test_gradients_pass_finite_differences():
    rng = np.random.default_rng(11)
    TILED.impl.tile = 8
    x, w, b = rng.standard_normal((2, 3, 13, 10)), rng.standard_normal((4, 3, 6, 3)), rng.standard_normal(4)
    stride, padding = (1, 1), (5, 1)
    y, cache = TILED.forward(x, w, b, stride, padding)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = TILED.backward(dy, cache)
    for array, grad in ((x, dx), (w, dw), (b, db)):
        for index in map(tuple, rng.integers(0, array.shape, size=(4, array.ndim))):
            saved = array[index]
            array[index] = saved + 1e-6
            plus = np.sum(dy * TILED.forward(x, w, b, stride, padding)[0])
            array[index] = saved - 1e-6
            minus = np.sum(dy * TILED.forward(x, w, b, stride, padding)[0])
            array[index] = saved
            assert (plus - minus) / 2e-6 == pytest.approx(grad[index], rel=1e-5, abs=1e-6)


def test_the_tile_is_chosen_by_cost_and_can_be_set(monkeypatch):
    tiling = TILED.impl.tiling((8, 3, 224, 224), (16, 3, 7, 7), (3, 3))
    assert set(tiling.tile) <= set(fft_tiled.TILE_SIZES) and min(tiling.tile) >= 7
    assert TILED.impl.tiling((1, 1, 6, 6), (1, 1, 3, 3), (1, 1)).tile == (8, 8)  # small image, small tile
    monkeypatch.setenv(fft_tiled.ENV_TILE, "16")
    assert TILED.impl.tiling((8, 3, 224, 224), (16, 3, 7, 7), (3, 3)).tile == (16, 16)
    TILED.impl.tile = 32  # the attribute wins over the environment
    assert TILED.impl.tiling((8, 3, 224, 224), (16, 3, 7, 7), (3, 3)).tile == (32, 32)


@pytest.mark.parametrize("value", ["12", "0", "big", 16.0, True])
def test_a_bad_tile_setting_is_refused(value, monkeypatch):
    TILED.impl.tile = value
    with pytest.raises(ValueError, match=r"must be one of 8, 16, 32, 64, 128 \(fft-tiled's tile size, or auto\)"):
        TILED.forward(np.ones((1, 1, 9, 9)), np.ones((1, 1, 3, 3)))


def test_strides_and_kernels_beyond_the_tile_are_refused_up_front():
    x, w = np.ones((1, 1, 20, 20)), np.ones((1, 1, 9, 9))
    with pytest.raises(convlab.Unsupported, match=r"does not support stride 2x1 \(stride 1 only"):
        TILED.forward(x, w, stride=(2, 1))
    TILED.impl.tile = 8
    with pytest.raises(convlab.Unsupported, match=r"does not support a 9x9 kernel \(kernels up to 8x8"):
        TILED.forward(x, w)
    TILED.impl.tile = None
    assert TILED.supports((1, 1, 200, 200), (1, 1, 129, 129), (1, 1), (0, 0)).startswith("a 129x129 kernel")


@pytest.mark.parametrize("name, k", [("fft", 7), ("fft-tiled", 7), ("winograd", 5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_over_a_zero_background_are_exactly_the_bias(name, k, dtype, monkeypatch):
    """As a direct method gives them (issue 14, item 10): no rounding noise for ReLU to
    keep or drop by its sign; every other output is exactly what the transforms computed.
    (tests/test_backends.py checks the outputs of every backend; this, that the snap is
    what makes them exact and changes nothing else.)"""
    rng = np.random.default_rng(0)
    x = np.zeros((2, 3, 40, 40), dtype)
    x[:, :, 10:22, 8:30] = rng.random((2, 3, 12, 22))      # a "digit" on a black background
    w = rng.standard_normal((4, 3, k, k)).astype(dtype) * 0.1
    b = np.array([0.0, 0.5, -0.25, 0.0], dtype)
    ours = convlab.conv2d(x, w, b, padding=k // 2, backend=name)
    module = "backends." + name.replace("-", "_")
    monkeypatch.setattr(f"{module}.snap_to_bias", lambda y, b, exact: y)
    raw = convlab.conv2d(x, w, b, padding=k // 2, backend=name)
    direct = convlab.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), padding=k // 2,
                            backend="naive")
    background = np.broadcast_to(direct == b[:, None, None], ours.shape)
    assert 0.3 < background.mean() < 0.9
    assert np.array_equal(ours[background], np.broadcast_to(b[:, None, None], ours.shape)[background])
    assert np.any(raw[background] != ours[background]), "the transforms were exact anyway: nothing tested"
    assert np.array_equal(ours[~background], raw[~background])


@pytest.mark.parametrize("stride, padding, kernel", [((1, 1), (3, 3), (7, 7)), ((2, 3), (0, 4), (4, 9))])
def test_zero_windows_are_where_the_input_window_holds_only_zeros(stride, padding, kernel):
    rng = np.random.default_rng(2)
    x = np.where(rng.random((3, 2, 23, 19)) < 0.02, 1.0, 0.0)  # sparse: many all-zero windows
    ones = np.ones((1, 2) + kernel)
    counts = convlab.conv2d(np.abs(x), ones, stride=stride, padding=padding, backend="naive")[:, 0]
    found = exact.zero_windows(x, kernel, padding, stride)
    assert found.shape == counts.shape and found.any() and not found.all()
    assert np.array_equal(found, counts == 0)


@pytest.mark.parametrize("padding, kernel, stride", [((3, 3), (7, 7), (1, 1)), ((1, 0), (2, 3), (2, 1)),
                                                     ((3, 1), (3, 3), (1, 2)), ((0, 4), (2, 4), (1, 1))])
def test_zero_windows_of_an_input_without_zeros_are_only_in_the_padding(padding, kernel, stride):
    """The shortcut for an input with no zero place (no box sums) agrees with the oracle,
    also where a window lies wholly in the padding (padding >= kernel)."""
    x = np.random.default_rng(4).random((2, 3, 11, 9)) + 0.5
    counts = convlab.conv2d(x, np.ones((1, 3) + kernel), stride=stride, padding=padding, backend="naive")[:, 0]
    found = exact.zero_windows(x, kernel, padding, stride)
    assert found.shape == counts.shape
    assert np.array_equal(found, counts == 0)
    assert found.any() == (padding[0] >= kernel[0] or padding[1] >= kernel[1])


def test_tile_buffers_shared_by_problems_of_other_widths_hold_no_stale_values():
    """Two problems with the same tiles and tile count per row but other output widths reuse
    one plan's buffers; the narrower must not see what the wider wrote past its width."""
    rng = np.random.default_rng(8)
    TILED.impl.tile = 8
    for width in (24, 20):  # 4 tiles of 6 columns per row for both, the last one part-filled in the second
        case = (rng.standard_normal((2, 2, 9, width)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3),
                (1, 1), (1, 1))
        y, cache = ORACLE.forward(*case)
        dy = rng.standard_normal(y.shape)
        ref = (y,) + tuple(ORACLE.backward(dy, cache))
        for ours, want in zip(passes(TILED, case, dy), ref):
            np.testing.assert_allclose(ours, want, rtol=0, atol=1e-9 * np.abs(want).max())
