"""The per-phase profile, the chunk pool, and the forward-only path: what they promise
(every phase of every layer accounted for, every chunk run once, the same weights on any
number of threads, layers left as they were), never how fast."""

import threading
import time

import numpy as np
import pytest

import convlab
import convlab.threads
import convlab.timing
from convlab import profile
from convlab.cli import main
from convlab.layers import Dense, Flatten, ReLU, forward_only
from convlab.optimizers import SGD
from convlab.training import predict_logits, train_epoch


def small_net(seed=0, backend="im2col"):
    rng = np.random.default_rng(seed)
    return convlab.Sequential(convlab.Conv2D(1, 4, 3, padding=1, rng=rng, backend=backend), ReLU(), Flatten(),
                              Dense(4 * 8 * 8, 10, rng=rng))


def images(n, seed=1):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, n)


def test_phase_marks_cost_nothing_unless_recording():
    assert profile.phase("GEMM") is profile.phase("unroll")  # one shared do-nothing object


def test_a_recorded_epoch_accounts_for_every_layer_and_phase():
    model = small_net()
    x, y = images(40)
    with profile.recording(model) as recorded:
        train_epoch(model, SGD(model), x, y, batch_size=8, seed=0, epoch=1, progress=False)
        predict_logits(model, x)  # evaluation is not recorded
    assert recorded.steps == 5
    rows = {(label, name): seconds for label, name, seconds in recorded.rows()}
    for key in [("training step", "batch gathering"), ("training step", "loss"), ("training step", "optimizer"),
                ("0 Conv2D im2col forward", "unroll"), ("0 Conv2D im2col forward", "GEMM"),
                ("0 Conv2D im2col backward", "GEMM dw"), ("0 Conv2D im2col forward", "ReLU"),
                ("0 Conv2D im2col backward", "ReLU"),
                ("3 Dense forward", "GEMM"), ("3 Dense backward", "GEMM dw"), ("2 Flatten forward", "other"),
                ("0 Conv2D im2col backward", "GEMM dy")]:  # the dense layer's dx, formed chunk by chunk
        assert key in rows, key
    assert ("3 Dense backward", "GEMM dx") not in rows  # handed on as its factors (convlab.factored)
    assert all(seconds >= 0 for seconds in rows.values())
    assert sum(rows.values()) <= recorded.wall * 1.05  # phases never add up to more than the steps took
    assert recorded.calls["0 Conv2D im2col", "forward"] == 5  # the evaluation's forwards are not counted
    table = recorded.table("title")
    assert table.splitlines()[0] == "title" and "(5 steps)" in table and "share" in table
    # The layers are as they were: no wrapper left behind, and nothing records any more.
    assert all("forward" not in vars(layer) and "backward" not in vars(layer) for layer in model.layers)
    assert profile.phase("GEMM") is profile.phase("unroll")


def test_recording_does_not_change_the_training():
    x, y = images(32)
    weights = []
    for record in (False, True):
        model = small_net()
        if record:
            with profile.recording(model):
                train_epoch(model, SGD(model), x, y, batch_size=8, seed=0, epoch=1, progress=False)
        else:
            train_epoch(model, SGD(model), x, y, batch_size=8, seed=0, epoch=1, progress=False)
        weights.append([p.copy() for p in model.state_dict().values()])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", convlab.timing.strategies())
def test_every_backend_s_phases_add_up_to_at_most_the_steps(backend):
    """Phases marked in worker threads (fft-tiled's blocks) are scaled to the wall time they
    shared: unscaled, fft-tiled's summed to 1.4x its steps (outside the layers: -38 %)."""
    from convlab import fftw

    fftw.configure(threads=2, planner="estimate")
    try:
        model = convlab.Sequential(convlab.Conv2D(1, 8, 3, padding=1, rng=0, backend=backend), ReLU(), Flatten(),
                                   Dense(8 * 32 * 32, 10, rng=1))
        x, y = np.random.default_rng(2).random((64, 1, 32, 32), dtype=np.float32), np.arange(64) % 10
        with profile.recording(model) as recorded:
            train_epoch(model, SGD(model), x, y, batch_size=32, seed=0, epoch=1, progress=False)
        assert sum(seconds for _, _, seconds in recorded.rows()) <= recorded.wall * 1.05
    finally:
        fftw.configure()


def test_phases_in_threads_are_scaled_to_the_wall_time():
    model = convlab.Sequential(Flatten())

    def sleeper():
        with profile.phase("work"):
            time.sleep(0.05)

    threads = [threading.Thread(target=sleeper) for _ in range(4)]
    with profile.recording(model) as recorded:
        # The wall time around the whole block: measured inside it, it missed the block's own
        # start and end, which a busy machine can stretch past any fixed slack.
        started = time.perf_counter()
        with profile.shared_among_threads():
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        wall = time.perf_counter() - started
    # Four threads slept 0.05 s each, at once: 0.2 thread-seconds in ~0.05 s of wall time.
    work = recorded.totals[("training step", ""), "work"]
    assert 0.04 <= work <= wall


def test_share_chunks_runs_each_chunk_once_and_passes_errors_on():
    seen = []
    chunks = convlab.threads.chunk_bounds(103, 10)
    assert chunks[0] == (0, 10) and chunks[-1] == (100, 103) and len(chunks) == 11
    convlab.threads.share_chunks(lambda index, lo, hi: seen.append((index, lo, hi)), chunks, threads=2)
    assert sorted(seen) == [(i, lo, hi) for i, (lo, hi) in enumerate(chunks)]

    def fails(index, lo, hi):
        if index == 3:
            raise KeyError("chunk 3")

    with pytest.raises(KeyError, match="chunk 3"):
        convlab.threads.share_chunks(fails, chunks, threads=2)


@pytest.mark.parametrize("backend", [name for name in convlab.timing.strategies() if name != "naive"])
def test_same_weights_on_one_thread_and_two(monkeypatch, backend):
    """The chunk pool's threads (OPENBLAS_NUM_THREADS) and FFTW's (CONVLAB_FFT_THREADS, which
    also share the FFT backends' tiles) change no bit: MNIST-sized batches, cut into many
    chunks and tiles, and (the second layer's) transforms big enough for FFTW's own threads."""
    from convlab import fftw

    rng = np.random.default_rng(1)
    x, y = rng.random((128, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 128)
    weights = []
    try:
        for threads in (1, 2):
            monkeypatch.setattr(convlab.threads, "worker_count", lambda threads=threads: threads)
            fftw.configure(threads=threads)
            model = convlab.Sequential(convlab.Conv2D(1, 16, 5, padding=1, rng=0, backend=backend), ReLU(),
                                       convlab.Conv2D(16, 16, 3, padding=1, rng=2, backend=backend), ReLU(),
                                       Flatten(), Dense(16 * 26 * 26, 10, rng=1))
            train_epoch(model, SGD(model), x, y, batch_size=64, seed=0, epoch=1, progress=False)
            weights.append([p.copy() for p in model.state_dict().values()])
    finally:
        fftw.configure()
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_forward_only_gives_the_same_logits_and_keeps_nothing_for_a_backward():
    model = small_net()
    x, _ = images(12)
    expected = model.forward(x)
    with forward_only():
        np.testing.assert_array_equal(model.forward(x), expected)
    with pytest.raises(ValueError, match=r"Conv2D.backward needs the forward first: .*outside forward_only"):
        model.layers[0].backward(np.ones_like(expected, shape=(12, 4, 8, 8)))
    # The model's ReLU is fused into the convolution; a ReLU of its own keeps nothing either.
    relu = ReLU()
    with forward_only():
        relu.forward(x)
    with pytest.raises(ValueError, match=r"ReLU.backward needs the forward first"):
        relu.backward(np.ones_like(x))


def test_bench_profile_prints_the_machine_and_a_table_per_backend(capsys, data_read_once):
    main(["bench", "--profile", "--steps", "2", "--backends", "im2col,fft"])
    out = capsys.readouterr().out
    assert out.startswith("profile of 2 training steps of batch 64") and "cores" in out and "numpy" in out
    assert "backend im2col:" in out and "backend fft:" in out
    assert "0 Conv2D fft forward" in out and "0 Conv2D im2col backward" in out
    # fft's phases apart, as issue 12 asks: transforms, products, inverse transforms, crops
    fft_rows = {" ".join(line.split()[4:-3]) for line in out.split("backend fft:")[1].splitlines()
                if line.startswith("0 Conv2D fft ")}
    assert {"x, w spectra", "y products", "y inverse FFTs", "y crop", "exact bias", "ReLU", "dy rows",
            "dy into grid", "dy FFTs", "dy spectra copy", "dw products", "dw inverse FFTs", "dw crop"} <= fft_rows, fft_rows


def test_bench_profile_goes_on_past_a_backend_that_raises(capsys, data_read_once, monkeypatch):
    from convlab import registry

    class Failing:
        """Raises in every forward (a plugin's bug)."""

        def forward(self, x, w, b, stride, padding):
            raise RuntimeError("plugin bug")

        backward = forward

    monkeypatch.setitem(registry._registry, "failing", registry.Backend("failing", Failing()))
    main(["bench", "--profile", "--steps", "2", "--batch-size", "8", "--backends", "failing,im2col"])
    out = capsys.readouterr().out
    assert "\nbackend failing failed: RuntimeError: plugin bug\n" in out and "backend im2col: milliseconds" in out


def test_bench_profile_of_every_backend_goes_on_past_one_whose_check_settings_is_broken(capsys, data_read_once,
                                                                                          monkeypatch):
    """Not named, a plugin's check_settings bug is a warning (as for the timing tables), not
    the end of every backend's profile."""
    import convlab.bench
    from convlab import registry
    from tests.test_bench import BrokenSettings

    monkeypatch.setitem(registry._registry, "mine", registry.Backend("mine", BrokenSettings()))
    monkeypatch.setattr(convlab.bench, "strategies", lambda: ["im2col", "mine"])  # every backend, kept to two
    with pytest.warns(registry.PluginWarning, match=r"^backend 'mine' .* check_settings\(\) raised KeyError"):
        main(["bench", "--profile", "--steps", "2", "--batch-size", "8"])
    out = capsys.readouterr().out
    assert "backend im2col: milliseconds" in out and "backend mine: milliseconds" in out


def test_train_profile_prints_the_profile_after_training(capsys, data_read_once):
    main(["train", "--train-size", "256", "--test-size", "100", "--epochs", "1", "--progress", "False",
          "--profile"])
    out = capsys.readouterr().out
    assert "profile on" in out and "backend im2col: milliseconds per step" in out and "(4 steps)" in out
    assert out.rstrip().splitlines()[-1].startswith("test accuracy:")


def test_helper_threads_follow_the_callers_numpy_error_settings():
    big = np.full(1000, 3e38, np.float32)

    def overflow_in_helpers(index, lo, hi):
        if threading.current_thread() is threading.main_thread():
            time.sleep(0.01)  # leaves most chunks to the helper
        else:
            big[lo:hi] * np.float32(10)

    with np.errstate(over="raise"):
        with pytest.raises(FloatingPointError):
            convlab.threads.share_chunks(overflow_in_helpers, convlab.threads.chunk_bounds(len(big), 10), threads=2)
