"""The fft backend's own behaviour: plan cache, FFTW settings, wisdom file, spectra reuse.

Its numbers are checked against naive by the shared oracle suite (tests/test_backends.py).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyfftw
import pytest

import convlab
from backends import fft
from convlab import fftw


@pytest.fixture(autouse=True)
def private_settings(tmp_path):
    """Each test plans with its own wisdom file under tmp_path, never the user's cache;
    afterwards the settings come from the real environment again."""
    with pytest.MonkeyPatch.context() as mp:
        for name in (fftw.ENV_THREADS, fftw.ENV_PLANNER):
            mp.delenv(name, raising=False)
        mp.setenv(fftw.ENV_WISDOM, str(tmp_path / "wisdom.json"))
        mp.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        fftw.configure(planner="estimate")
        yield mp
    fftw.configure()


@pytest.fixture
def planned(monkeypatch):
    """Records the keyword arguments of every FFTW plan built."""
    built = []
    real_fftw = pyfftw.FFTW

    def recording_fftw(*args, **kwargs):
        built.append(kwargs)
        return real_fftw(*args, **kwargs)

    monkeypatch.setattr(pyfftw, "FFTW", recording_fftw)
    return built


def conv_case(dtype=np.float64, n=2, c=3, f=4, size=(9, 7), kernel=(3, 2)):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, c) + size).astype(dtype),
            rng.standard_normal((f, c) + kernel).astype(dtype),
            rng.standard_normal(f).astype(dtype), (2, 1), (1, 2))


def forward_backward(case):
    backend = fft.FFT()
    y, cache = backend.forward(*case)
    return (y, cache) + backend.backward(np.ones_like(y), cache)


def test_plans_are_built_once_per_shape(planned):
    forward_backward(conv_case())
    first = len(planned)
    assert first > 0
    forward_backward(conv_case())
    assert len(planned) == first, "the second call with the same shapes built new plans"
    forward_backward(conv_case(n=3))
    assert len(planned) > first, "a new batch size needs new plans"


def test_plan_cache_keeps_the_most_recently_used(planned, monkeypatch):
    monkeypatch.setattr(fftw, "MAX_PLANS", 4)
    for n in (1, 2, 3):  # three forwards of three plans each (input, kernel, inverse)
        fft.FFT().forward(*conv_case(n=n))
    assert len(fftw._plans.cache) == 4
    built = len(planned)
    fft.FFT().forward(*conv_case(n=3))
    assert len(planned) == built, "the latest shape's plans were dropped"


def test_threads_keep_their_own_plans_and_do_not_evict_each_other_s(planned, monkeypatch):
    """Whole-transform plans belong to the thread that asked (no two threads in one plan's
    buffers), and each thread has its own budget of MAX_PLANS: with one shared budget, two
    threads alternating on their shapes rebuilt their plans at every call."""
    monkeypatch.setattr(fftw, "MAX_PLANS", 4)
    monkeypatch.setattr(fftw, "MAX_OWNERS", 2)
    shapes = [(8, 8), (8, 10), (10, 10), (12, 12)]
    thread = [1]
    monkeypatch.setattr(fftw.threading, "get_ident", lambda: thread[0])
    for owner in (1, 2, 1, 2):
        thread[0] = owner
        for shape in shapes:
            fftw.plan("FFTW_FORWARD", (1,), shape, np.float64)
    assert len(planned) == 8, "each thread's 4 plans built once"
    thread[0] = 3  # a third thread: the least recently used thread's plans make room
    fftw.plan("FFTW_FORWARD", (1,), (8, 8), np.float64)
    owners = [key[-1] for key in fftw._plans.cache]
    assert len(owners) == 8 and owners.count(3) == 1 and owners.count(1) == 3


def test_paired_plans_share_buffers_and_the_forward_sees_them_written():
    """A forward and an inverse plan of one pair share their buffers (fft-tiled's x and dx,
    y and dy); another pair, or no pair, has its own; after the inverse runs, where the
    real buffer holds data is unknown (the forward must zero it again)."""
    grid, batch = (8, 8), (2, 3)
    forward = fftw.plan("FFTW_FORWARD", batch, grid, np.float32, slot=0, bins_first=True, pair="test")
    inverse = fftw.plan("FFTW_BACKWARD", batch, grid, np.float32, slot=0, bins_first=True, pair="test")
    other = fftw.plan("FFTW_BACKWARD", batch, grid, np.float32, slot=0, bins_first=True, pair="other")
    alone = fftw.plan("FFTW_BACKWARD", batch, grid, np.float32, slot=0, bins_first=True)
    assert forward.input is inverse.fftw.output_array and forward.bins is inverse.bins
    assert forward.buffers is inverse.buffers
    assert not np.shares_memory(other.bins, forward.bins) and not np.shares_memory(alone.bins, forward.bins)
    forward.region = "written"
    assert inverse.region == "written"
    inverse.bins[...] = 1
    inverse.execute()
    assert forward.region is None
    np.testing.assert_allclose(forward.input[0, 0], np.eye(1, 64).reshape(8, 8) * 64, atol=1e-4)  # a flat spectrum


def test_execute_into_writes_the_spectra_elsewhere_and_leaves_the_plan_as_it_was():
    plan = fftw.plan("FFTW_FORWARD", (2, 3), (8, 6), np.float64, slot=0, bins_first=True)
    plan.input[...] = np.random.default_rng(0).standard_normal(plan.input.shape)
    kept = plan.empty_bins()
    plan.bins[...] = 0
    plan.execute_into(kept)
    want = np.fft.rfft2(plan.input).reshape(2, 3, -1).transpose(2, 0, 1)
    np.testing.assert_allclose(kept, want, atol=1e-12)
    assert not plan.bins.any(), "the plan's own buffer was written"
    plan.execute()
    np.testing.assert_allclose(plan.bins, want, atol=1e-12)


@pytest.mark.parametrize("padded, grid", [
    ((30, 30), (32, 32)),    # the MNIST layer: 32 = 2^5 beats the nearest fast length 30 = 2*3*5
    ((66, 66), (72, 72)),    # 72 = 2^3*3^2 beats 66 = 2*3*11, and 128 would be wasteful
    ((36, 17), (36, 18)),    # nearest fast lengths where they are cheap; axes chosen together
    ((148, 30), (160, 32)),
])
def test_fft_sizes_are_the_cheapest_fast_lengths(padded, grid):
    assert fft.fft_shape_for(padded) == grid
    assert all(pyfftw.next_fast_len(n) == n for n in grid)


def test_forward_uses_the_chosen_grid():
    # 5 + 2*1 = 7 and 13 + 2*2 = 17 padded
    _, cache, *_ = forward_backward(conv_case(size=(5, 13)))
    assert cache[6] == fft.fft_shape_for((7, 17))


def test_backward_transforms_only_dy(monkeypatch):
    """The forward's input and kernel spectra are reused: one new transform, of dy."""
    backend = fft.FFT()
    case = conv_case()
    y, cache = backend.forward(*case)
    transformed = []
    real_rfft2 = fft.rfft2

    def recording_rfft2(signal, *args, **kwargs):
        transformed.append(signal.shape)
        return real_rfft2(signal, *args, **kwargs)

    monkeypatch.setattr(fft, "rfft2", recording_rfft2)
    backend.backward(np.ones_like(y), cache)
    assert transformed == [y.shape]


def test_large_batches_match_im2col():
    """Shapes where the transposing copies run in several blocks of bins."""
    case = conv_case(n=16, c=8, f=12, size=(40, 36), kernel=(5, 7))
    y, cache, *grads = forward_backward(case)
    im2col = convlab.get_backend("im2col")
    y_ref, cache_ref = im2col.forward(*case)
    for ours, ref in zip((y, *grads), (y_ref, *im2col.backward(np.ones_like(y), cache_ref))):
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


def test_each_tile_of_images_gets_its_own_images_windows_of_zeros_exactly_the_bias(monkeypatch):
    """The forward's products run in tiles of images (one input channel: they broadcast),
    and each tile's outputs over windows of zeros are set to exactly the bias: with the
    masks of the tile's own images, not of the batch's first ones. The "digits" sit in a
    different place in each image, so another image's mask is wrong both ways."""
    monkeypatch.setattr(fftw, "TILE_POINTS", 1)  # one image per tile
    rng = np.random.default_rng(0)
    x = np.zeros((3, 1, 16, 16))
    for image, (top, left) in enumerate([(1, 1), (8, 2), (3, 9)]):
        x[image, 0, top:top + 6, left:left + 5] = rng.random((6, 5))
    w = rng.standard_normal((4, 1, 3, 3))
    b = rng.standard_normal(4)
    y, _ = fft.FFT().forward(x, w, b, (1, 1), (1, 1))
    background = np.broadcast_to(convlab.conv2d(np.abs(x), np.ones_like(w[:1]), padding=1,
                                                backend="naive") == 0, y.shape)
    assert not np.array_equal(background[0], background[1])
    np.testing.assert_array_equal(y[background], np.broadcast_to(b[:, None, None], y.shape)[background])
    np.testing.assert_allclose(y, convlab.conv2d(x, w, b, padding=1, backend="naive"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("c, f", [(1, 5), (2, 3), (4, 5)])  # products broadcast, broadcast, matmul
def test_dy_spectra_in_either_layout_give_the_same_gradients(monkeypatch, c, f, relu):
    """dy's spectra bin-major (small grids, or matmul-sized products) or plane-major (big
    grids with a channel count of 3 or less): both give im2col's gradients, also after a
    fused ReLU, whose gradient is applied as dy is written into either layout's grids."""
    case = conv_case(n=5, c=c, f=f, size=(12, 10), kernel=(3, 4))
    dy = np.random.default_rng(1).standard_normal(fft.FFT().forward(*case)[0].shape)
    grads = {}
    for layout, max_bins in (("bin-major", 1 << 40), ("plane-major", 0)):
        monkeypatch.setattr(fft, "BIN_MAJOR_MAX_BINS", max_bins)
        backend = fft.FFT()
        grads[layout] = backend.backward(dy, backend.forward(*case, relu=relu)[1])
    im2col = convlab.get_backend("im2col")
    reference = im2col.backward(dy, im2col.forward(*case, relu=relu)[1])
    for layout, ours in grads.items():
        for got, ref in zip(ours, reference):
            np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max(), err_msg=layout)


@pytest.mark.parametrize("i, k, j", [(1, 5, 4), (5, 1, 4), (5, 4, 1), (3, 7, 6),   # broadcast
                                     (6, 7, 5), (40, 30, 20)])                        # matmul
@pytest.mark.parametrize("a_layout", ["plane-major", "bin-major"])
def test_binwise_matmul_is_a_matrix_product_per_bin(i, k, j, a_layout):
    """Either layout of a, as views: plane-major spectra transposed, or bin-major ones (the
    backward's dy spectra), which take the matmul path whatever the sizes."""
    rng = np.random.default_rng(0)
    b = rng.standard_normal((k, j, 300)) + 1j * rng.standard_normal((k, j, 300))
    if a_layout == "plane-major":
        a = rng.standard_normal((k, i, 300)) + 1j * rng.standard_normal((k, i, 300))
        a = a.transpose(1, 0, 2)
    else:
        a = rng.standard_normal((300, k, i)) + 1j * rng.standard_normal((300, k, i))
        a = a.transpose(2, 1, 0)
        assert fftw.is_bin_major(a) and not fftw.broadcasts(a, b)
    out = np.empty((i, j, 300), complex)
    assert fftw.binwise_matmul(a, b, out) is out
    np.testing.assert_allclose(out, np.einsum("ikn,kjn->ijn", a, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_any_tiling_gives_the_numbers_of_one_piece(monkeypatch, threads):
    """Products that broadcast (one input channel here) run in tiles shared among threads;
    one image per tile must change nothing."""
    fftw.configure(threads=threads, planner="estimate")
    case = conv_case(n=7, c=1, f=5, size=(12, 10), kernel=(3, 4))
    monkeypatch.setattr(fftw, "TILE_POINTS", 1 << 40)
    monkeypatch.setattr(fftw, "BINS_FIRST_TILE_POINTS", 1 << 40)
    y, _, *grads = forward_backward(case)
    monkeypatch.setattr(fftw, "TILE_POINTS", 1)
    monkeypatch.setattr(fftw, "BINS_FIRST_TILE_POINTS", 1)
    y_tiled, _, *grads_tiled = forward_backward(case)
    for whole, tiled in zip((y, *grads), (y_tiled, *grads_tiled)):
        np.testing.assert_allclose(tiled, whole, rtol=1e-12, atol=1e-12)


def test_float32_stays_single_precision():
    y, cache, dx, dw, db = forward_backward(conv_case(np.float32))
    x_spec, w_spec = cache[:2]
    assert x_spec.dtype == w_spec.dtype == np.complex64
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == np.float32


def test_threads_used_for_large_transforms_only(planned):
    fftw.configure(threads=2)
    forward_backward(conv_case())
    assert {p["threads"] for p in planned} == {1}, "tiny transforms must not wake threads"
    planned.clear()
    forward_backward(conv_case(n=64, c=4, size=(32, 32), kernel=(5, 5)))
    assert max(p["threads"] for p in planned) == 2


MEDIUM = dict(n=8, c=2, f=2, size=(30, 30), kernel=(3, 3))  # x and dy transforms >= MIN_POINTS_TO_MEASURE


def test_planner_setting_reaches_fftw_for_all_but_small_transforms(planned):
    fftw.configure(planner="FFTW_MEASURE")
    forward_backward(conv_case())
    assert {p["flags"] for p in planned} == {("FFTW_ESTIMATE",)}, "tiny transforms are not worth measuring"
    planned.clear()
    forward_backward(conv_case(**MEDIUM))
    assert ("FFTW_MEASURE",) in {p["flags"] for p in planned}


def test_settings_come_from_environment(private_settings, tmp_path):
    private_settings.setenv(fftw.ENV_THREADS, "3")
    private_settings.setenv(fftw.ENV_PLANNER, "Patient")
    private_settings.setenv(fftw.ENV_WISDOM, "off")
    assert fftw.configure() == fftw.Settings(threads=3, planner="patient", wisdom_path=None)
    assert fftw.configure(threads=1).threads == 1


def test_defaults(private_settings, tmp_path):
    private_settings.delenv(fftw.ENV_WISDOM)
    settings = fftw.configure()
    assert settings.threads == (os.cpu_count() or 1)
    assert settings.planner == fftw.DEFAULT_PLANNER
    assert settings.wisdom_path.parent == tmp_path / "cache" / "convlab"


@pytest.mark.parametrize("kwargs, message", [
    (dict(threads=0), "threads must be a positive integer"),
    (dict(threads="two"), "threads must be a positive integer"),
    (dict(threads=1.5), "threads must be a positive integer"),
    (dict(planner="fast"), "planner must be one of estimate, measure, patient, exhaustive"),
    (dict(wisdom_path=3), "wisdom_path must be a file path .* or \"off\" for none, got 3"),
    (dict(wisdom_path=b"wisdom.json"), "wisdom_path must be a file path"),
    (dict(wisdom_path=True), "wisdom_path must be a file path"),
])
def test_invalid_settings_say_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fftw.configure(**kwargs)


@pytest.mark.parametrize("variable, value", [(fftw.ENV_THREADS, "-1"), (fftw.ENV_PLANNER, "quick")])
def test_invalid_environment_names_the_variable(private_settings, variable, value):
    private_settings.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        fftw.configure()


def test_measured_wisdom_round_trip(tmp_path):
    wisdom_path = tmp_path / "wisdom.json"
    fftw.configure(planner="measure", wisdom_path=wisdom_path)
    forward_backward(conv_case(**MEDIUM))
    saved = json.loads(wisdom_path.read_text())
    assert saved["fftw"] == pyfftw.fftw_version and any(saved["wisdom"])
    assert [p.name for p in tmp_path.iterdir()] == ["wisdom.json"], "a temporary file was left behind"

    # A new run (wisdom forgotten) loads the file: planning from wisdom alone then succeeds.
    pyfftw.forget_wisdom()
    fftw.configure(planner="measure", wisdom_path=wisdom_path)
    forward_backward(conv_case(**MEDIUM))
    hf, wf = fft.fft_shape_for((30 + 2, 30 + 4))  # the input's plan (one thread at this size)
    pyfftw.FFTW(pyfftw.empty_aligned((8, 2, hf, wf), np.float64),
                pyfftw.empty_aligned((8, 2, hf, wf // 2 + 1), np.complex128), axes=(-2, -1),
                flags=("FFTW_MEASURE", "FFTW_WISDOM_ONLY"))


def test_estimate_planner_writes_no_wisdom(tmp_path):
    forward_backward(conv_case())
    assert not (tmp_path / "wisdom.json").exists()


def test_unreadable_wisdom_file_is_ignored_with_a_warning(tmp_path):
    wisdom_path = tmp_path / "wisdom.json"
    wisdom_path.write_text('{"wisdom": 3}')  # a wisdom file of ours, damaged
    fftw.configure(planner="measure", wisdom_path=wisdom_path)
    with pytest.warns(UserWarning, match="ignoring unreadable FFTW wisdom"):
        forward_backward(conv_case(**MEDIUM))
    assert json.loads(wisdom_path.read_text())["wisdom"], "the broken file was not replaced"


def test_a_file_that_is_not_a_wisdom_file_is_left_intact(tmp_path):
    wisdom_path = tmp_path / "notes.txt"
    wisdom_path.write_text("not json: someone's notes")
    fftw.configure(planner="measure", wisdom_path=wisdom_path)
    with pytest.warns(UserWarning, match="not using the FFTW wisdom file .*notes.txt: it exists and is not a convlab"):
        forward_backward(conv_case(**MEDIUM))
    assert wisdom_path.read_text() == "not json: someone's notes"


def test_results_are_not_overwritten_by_the_next_call():
    """Plans reuse their buffers; what a call returns must not live in them."""
    backend = fft.FFT()
    first = forward_backward(conv_case())
    y, _, dx, dw, db = first
    kept = [a.copy() for a in (y, dx, dw, db)]
    x, w, b, stride, padding = conv_case()
    second, cache = backend.forward(-x, w, b, stride, padding)
    backend.backward(-np.ones_like(second), cache)
    for before, now in zip(kept, (y, dx, dw, db)):
        np.testing.assert_array_equal(now, before)


def test_fftw_threads_sleep_when_idle():
    """FFTW's OpenMP threads must not spin for milliseconds after each transform, holding
    a core that numpy and BLAS need; the environment is left as it was."""
    script = """
import os, time
from convlab import fftw
assert "OMP_WAIT_POLICY" not in os.environ
arrays = fftw.pyfftw.empty_aligned((256, 32, 32), "float32"), fftw.pyfftw.empty_aligned((256, 32, 17), "complex64")
plan = fftw.pyfftw.FFTW(*arrays, axes=(-2, -1), threads=2)
busy = []
for _ in range(5):
    plan.execute()
    started = time.process_time()
    time.sleep(0.05)
    busy.append(time.process_time() - started)
print(min(busy))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert float(run.stdout) < 0.005, f"FFTW's threads used {float(run.stdout) * 1e3:.1f} ms of CPU while idle"


@pytest.mark.parametrize("threads", [1, 2])
def test_running_tiles_never_share_a_plan(threads, planned):
    """Whichever thread takes a tile transforms it with a single-threaded plan no running
    tile shares, and there are no more such plans than threads; with one thread the
    caller runs every tile."""
    fftw.configure(threads=threads, planner="estimate")
    runs, busy, lock = [], set(), threading.Lock()

    def work(index, lo, hi, slot):
        plan = fftw.plan("FFTW_FORWARD", (hi - lo, 1), (512, 512), np.float64, slot)  # big enough for threads
        with lock:
            assert id(plan) not in busy, "a plan ran in two threads at once"
            busy.add(id(plan))
        plan.fftw.execute()
        time.sleep(0.002)  # long enough for a helper thread to take tiles too
        with lock:
            busy.remove(id(plan))
            runs.append((index, id(plan), threading.get_ident()))

    fftw.run_tiles(work, 20, 1)
    assert sorted(index for index, _, _ in runs) == list(range(20))
    assert len({plan for _, plan, _ in runs}) <= threads
    assert {p["threads"] for p in planned} == {1}, "a tile's transform must be single-threaded"
    if threads == 1:
        assert {thread for _, _, thread in runs} == {threading.get_ident()}


def test_a_lone_tile_runs_in_the_calling_thread_on_the_shared_plan():
    calls = []
    fftw.run_tiles(lambda *args: calls.append((args, threading.get_ident())), 5, 8)
    assert calls == [((0, 0, 5, None), threading.get_ident())]


def test_a_forked_child_can_share_tiles_among_threads(monkeypatch):
    monkeypatch.setattr(fftw, "TILE_POINTS", 1)  # every forward runs in tiles
    fftw.configure(threads=2, planner="estimate")
    forward_backward(conv_case(c=1))
    pid = os.fork()
    if pid == 0:  # the child: its parent's helper threads do not exist here
        code = 1
        try:
            signal.alarm(60)  # a child waiting on a pool that has no threads would hang
            forward_backward(conv_case(c=1))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child failed or hung"
