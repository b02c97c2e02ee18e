"""The fast paths keep their promises: float32 stays float32, batches are gathered
rather than the data set copied, evaluation does not depend on its batch size, and the
PyTorch comparison script trains the very same network."""

import contextlib
import os
import platform
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import convlab
from convlab.layers import Dense, Flatten, MaxPool2D, ReLU
from convlab.losses import softmax_cross_entropy
from convlab.optimizers import SGD
from convlab.training import predict_logits, train_epoch, train_step

REPO = Path(__file__).resolve().parent.parent


def small_net(rng, dtype=np.float32):
    return convlab.Sequential(convlab.Conv2D(1, 4, 3, padding=1, rng=rng, dtype=dtype), ReLU(), Flatten(),
                              Dense(4 * 8 * 8, 10, rng=rng, dtype=dtype))


def test_a_training_step_stays_float32_even_with_numpy_float64_hyperparameters():
    rng = np.random.default_rng(0)
    model = small_net(rng)
    optimizer = SGD(model, lr=np.float64(0.05), momentum=np.float64(0.9))
    x = rng.random((6, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 6)
    for _ in range(2):
        logits = model.forward(x)
        loss, dlogits = softmax_cross_entropy(logits, y)
        assert logits.dtype == dlogits.dtype == np.float32
        model.backward(dlogits)
        optimizer.step()
    for name, param, grad in model.named_parameters():
        assert param.dtype == grad.dtype == optimizer.velocity[name].dtype == np.float32, name


def test_relu_leaves_its_input_alone_and_keeps_its_dtype():
    x = np.array([[-2.0, -0.0, 0.0, 3.0]], dtype=np.float32)
    original = x.copy()
    relu = ReLU()
    y = relu.forward(x)
    dx = relu.backward(np.ones_like(x))
    np.testing.assert_array_equal(x, original)
    np.testing.assert_array_equal(y, [[0, 0, 0, 3]])
    np.testing.assert_array_equal(dx, [[0, 0, 0, 1]])
    assert y.dtype == dx.dtype == np.float32


def test_an_inplace_relu_overwrites_x_and_dy_with_the_same_results():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((70, 3, 5, 7)).astype(np.float32)  # several blocks
    dy = rng.standard_normal(x.shape).astype(np.float32)
    plain = ReLU()
    y_ref, dx_ref = plain.forward(x.copy()), plain.backward(dy.copy())
    relu = ReLU(inplace=True)
    x_in, dy_in = x.copy(), dy.copy()
    y = relu.forward(x_in)
    dx = relu.backward(dy_in)
    assert y is x_in and dx is dy_in
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(y_ref, np.maximum(x, 0))
    np.testing.assert_array_equal(dx_ref, dy * (x > 0))


def test_a_network_fuses_a_relu_after_a_convolution_and_runs_one_between_dense_layers_in_place():
    # The last ReLU's dy is the caller's: not in place (test_layers checks that dy is left as it is).
    rng = np.random.default_rng(0)
    model = convlab.Sequential(convlab.Conv2D(1, 2, 3, rng=rng), ReLU(), MaxPool2D(2), ReLU(), Flatten(),
                               Dense(2 * 3 * 3, 4, rng=rng), ReLU(), Dense(4, 3, rng=rng), ReLU())
    relus = [layer for layer in model.layers if isinstance(layer, ReLU)]
    assert [(relu.fused, relu.inplace) for relu in relus] == [(True, False), (False, False), (False, True),
                                                              (False, False)]
    assert model.layers[0].relu


# (x shape, w shape, padding): im2col's small-dw path, its transposed-dy dw path (the
# reference layer's), its kernel-row dx path (kw >= 5, C*kh >= F).
FUSED_RELU_SHAPES = [((5, 2, 7, 6), (3, 2, 3, 3), 1), ((3, 1, 12, 11), (32, 1, 7, 7), 1),
                     ((3, 4, 9, 10), (8, 4, 5, 5), 2)]


@pytest.mark.parametrize("backend", convlab.list_backends())
@pytest.mark.parametrize("x_shape, w_shape, padding", FUSED_RELU_SHAPES)
def test_a_fused_relu_gives_what_the_relu_layer_after_the_convolution_gives(backend, x_shape, w_shape, padding):
    """Fused (im2col, auto's pick) or applied around the pass by the registry: the same
    y, dx, dw and db as the convolution and a separate ReLU, in float64."""
    chosen = convlab.get_backend(backend)
    if chosen.supports(x_shape, w_shape, 1, padding) is not None:
        pytest.skip(f"{backend} does not support this shape")
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    oracle = convlab.get_backend("naive")
    y_ref, cache = oracle.forward(x, w, b, 1, padding)
    dy = rng.standard_normal(y_ref.shape)
    relu = ReLU()
    y_ref = relu.forward(y_ref)
    dx_ref, dw_ref, db_ref = oracle.backward(relu.backward(dy), cache)
    y, cache = chosen.forward(x, w, b, 1, padding, relu=True)
    dx, dw, db = chosen.backward(dy.copy(), cache)
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref), (db, db_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert (y >= 0).all()


def test_an_epoch_gathers_batches_without_copying_the_data_set():
    rng = np.random.default_rng(1)
    x = rng.random((20000, 1, 16, 16), dtype=np.float32)  # 20 MB
    y = rng.integers(0, 10, len(x))
    model = convlab.Sequential(Flatten(), Dense(256, 10, rng=rng))
    optimizer = SGD(model)
    # One-off costs first (tqdm's lazy imports, the thread pool), so that only the epoch counts.
    train_epoch(model, optimizer, x[:256], y[:256], batch_size=64, seed=0, epoch=1, progress=False)
    tracemalloc.start()
    try:
        train_epoch(model, optimizer, x, y, batch_size=64, seed=0, epoch=1, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The shuffled order (160 kB of int64) and a few batches, never a second copy of x.
    assert peak < x.nbytes / 4, f"peak allocation {peak} bytes during an epoch over {x.nbytes} bytes of images"


def test_an_epoch_s_loss_and_accuracy_are_means_over_images_with_a_short_last_batch():
    """train_epoch's mean loss weighs each batch by its images: 10 images in batches of 4, 4
    and 2, with a learning rate of 0 (the model stays as it is), give the loss and accuracy of
    all 10 at once."""
    rng = np.random.default_rng(4)
    model = small_net(rng)
    x, y = rng.random((10, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, 10)
    logits = model.forward(x)
    loss, accuracy = train_epoch(model, SGD(model, lr=0.0), x, y, batch_size=4, seed=0, epoch=1, progress=False)
    assert loss == pytest.approx(softmax_cross_entropy(logits, y)[0], rel=1e-5)
    assert accuracy == np.mean(logits.argmax(axis=1) == y)


def test_predictions_do_not_depend_on_the_evaluation_batch_size():
    rng = np.random.default_rng(2)
    model = small_net(rng)
    x = rng.random((37, 1, 8, 8), dtype=np.float32)
    whole = model.forward(x)
    for batch_size in (1, 7, 128):
        np.testing.assert_allclose(predict_logits(model, x, batch_size), whole, rtol=1e-5, atol=1e-6)


def test_train_step_is_deterministic():
    rng = np.random.default_rng(3)
    x = rng.random((32, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, len(x))
    runs = []
    for _ in range(2):
        model = small_net(np.random.default_rng(4))
        optimizer = SGD(model)
        losses = [train_step(model, optimizer, x[i:i + 8], y[i:i + 8])[0] for i in range(0, len(x), 8)]
        runs.append((losses, [p.copy() for p in model.state_dict().values()]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("variant, options", [("same_code", []), ("dense_c_order", []), ("small_dw_1024", []),
                                             ("one_stage_unroll", ["--evaluate"]),
                                             ("inference_chunks_1mib", ["--evaluate"])])
def test_ab_steps_times_each_variant_the_docs_quote(variant, options):
    """benchmarks/ab_steps.py runs with each variant in benchmarks/variants/ (they patch
    internals, so a change there that breaks one shows here), training or evaluating, and
    prints the machine and the ratio line."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "ab_steps.py"), str(REPO / "benchmarks" / "variants" / f"{variant}.py"),
         "--rounds", "2", "--block", "1", "--warm-up", "1", *options],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "cores" in lines[0] and "numpy" in lines[0], lines[0]
    assert ("evaluation batches of 128" in lines[1]) == bool(options), lines[1]
    assert lines[-1].startswith("B / A: median of the rounds' ratios"), result.stdout


@pytest.mark.parametrize("text, message", [
    ("MODEL = 'reference'\n", "must define apply_b()"),
    ("def apply_b(:\n", "failed to load: SyntaxError"),
    ("def apply_b(): pass\ndef undo_b(): pass\nsetup_b = 3\n", "setup_b must be a function"),
    ("def apply_b(): pass\ndef undo_b(): pass\nMODEL = 'no such net'\n", "MODEL 'no such net'"),
    ("def apply_b(): pass\ndef undo_b(): pass\nBACKEND = 'no-such-backend'\n", "BACKEND 'no-such-backend'"),
    (None, "cannot read the variant file"),
])
def test_ab_steps_refuses_a_bad_variant_file_in_one_line(tmp_path, text, message):
    path = tmp_path / "variant.txt"  # any name: it is read as Python
    if text is not None:
        path.write_text(text)
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ab_steps.py"), str(path)],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.startswith("ab_steps.py: error: ") and len(result.stderr.strip().splitlines()) == 1, \
        result.stderr


@pytest.mark.parametrize("option", ["--pause", "--warm"])
def test_torch_comparison_script_refuses_a_negative_time(option):
    pytest.importorskip("torch")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "epoch_vs_torch.py"), option, "-1"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert f"{option} must be a number of seconds >= 0, got -1.0" in result.stderr.splitlines()[-1], result.stderr


def test_torch_comparison_script_trains_the_same_network():
    pytest.importorskip("torch")
    # One thread each: two-thread BLAS on a busy machine would only make the test slow.
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "epoch_vs_torch.py"), "--train-size", "192", "--chunk", "1",
         "--rounds", "1", "--pause", "0", "--warm", "0"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "cores" in lines[0] and "numpy" in lines[0] and "pyfftw" in lines[0], lines[0]  # the machine
    assert sum("ratio of totals" in line for line in lines) == 4, result.stdout
    losses = next(line for line in lines if line.startswith("mean training loss"))
    ours, theirs = (float(part.split()[-1]) for part in losses.split(":")[1].split(","))
    assert ours == pytest.approx(theirs, rel=1e-4), losses


def test_fft_tiled_shapes_leaves_out_the_torch_row_where_torch_is_not_installed(monkeypatch, capsys):
    """The README's `python benchmarks/fft_tiled_shapes.py` without PyTorch (a reference in
    no extra): its row is left out, not a traceback from `import torch` at the first shape."""
    import runpy

    import convlab.bench

    script = str(REPO / "benchmarks" / "fft_tiled_shapes.py")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed: `import torch` fails
    monkeypatch.setattr(convlab.bench, "kernel_sweep", lambda *args, **kwargs: [])  # the header, no shape timed
    monkeypatch.setattr(sys, "argv", [script])
    runpy.run_path(script, run_name="__main__")
    machine, _, header = capsys.readouterr().out.splitlines()
    assert " cores; numpy " in machine  # the BLAS kernel it ran on, first (see docs/benchmarks.md)
    assert header.split() == ["shape", "fft-tiled", "fft", "im2col", "tiled/min(fft,im2col)"]
    monkeypatch.setattr(sys, "argv", [script, "--rows", "fft-tiled,torch"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(script, run_name="__main__")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--rows names torch, which is not installed: pip install torch" in err
    monkeypatch.setattr(sys, "argv", [script, "--rows", "fft-tiled,fft-tile"])  # a misspelt row: no traceback
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(script, run_name="__main__")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--rows names 'fft-tile', which is neither a backend (auto, fft, " in err


def test_fft_tiled_phases_prints_the_machine_then_each_shape_s_phases():
    """`python benchmarks/fft_tiled_phases.py` says first what it ran on, as every speed
    script does; a shape's table follows (its own process: the script limits BLAS's threads)."""
    script = str(REPO / "benchmarks" / "fft_tiled_phases.py")
    result = subprocess.run([sys.executable, script, "--repeat", "1", "--shapes", "128x128 k5"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert " cores; numpy " in lines[0] and "(FFTW " in lines[0] and "1 threads" in lines[0], lines[0]
    assert lines[1].startswith("one thread;")
    assert "16x16->16 128x128 k5 p2: fft-tiled (" in result.stdout and "ratio" in result.stdout, result.stdout
    assert any("dw" in line and "ms" in line for line in lines), result.stdout


@pytest.mark.parametrize("options, message", [
    (["--repeat", "0"], "--repeat must be a whole number >= 1, got 0"),
    (["--shapes", "64x64"], "--shapes '64x64' matches none of the shapes: 8x3->16 224x224 k5 p2, "),
])
def test_fft_tiled_phases_refuses_a_bad_option_in_one_line(options, message):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fft_tiled_phases.py"), *options],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2 and result.stdout == "", result.stdout
    assert message in result.stderr.splitlines()[-1], result.stderr


@pytest.mark.parametrize("x_shape, w_shape, padding, folded", [
    ((3, 6, 14, 14), (16, 6, 5, 5), 0, True),     # LeNet-5's second layer: kw taps summed in the GEMM
    ((2, 4, 9, 11), (3, 4, 5, 7), (3, 1), True),  # non-square kernel, padding beyond k // 2 on one axis
    ((2, 1, 12, 10), (32, 1, 7, 7), 1, False),    # C * kh < F: the widened GEMM and col2im_rows
    ((2, 3, 8, 9), (2, 3, 3, 3), 2, False),       # kw < 5: the same
])
def test_im2col_input_gradient_paths_agree_with_the_oracle(x_shape, w_shape, padding, folded):
    from backends.im2col import folds_rows

    assert folds_rows(w_shape) == folded
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    results = []
    for name in ("naive", "im2col"):
        backend = convlab.get_backend(name)
        y, cache = backend.forward(x, w, b, 1, padding)
        results.append(backend.backward(np.cos(y), cache))
    for ours, oracle in zip(results[1], results[0]):
        np.testing.assert_allclose(ours, oracle, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, two_stage", [
    ((7, 1, 28, 28), (4, 1, 7, 7), 1, 1, True),          # the MNIST layer's shape, several chunks
    ((3, 3, 11, 16), (2, 3, 3, 5), (1, 2), (2, 1), True),  # non-square kernel, strided across, C > 1
    ((2, 2, 9, 66), (3, 2, 3, 3), 1, 1, False),           # OW 66: wider than TWO_STAGE_MAX_WIDTH
    ((2, 2, 9, 9), (3, 2, 1, 3), 1, 1, False),            # kh 1: nothing for the second stage to gain
    ((2, 2, 9, 9), (3, 2, 3, 3), (2, 1), 1, False),       # strided down the image: taps are not runs
])
def test_im2col_two_stage_unroll_gives_the_windows_bit_for_bit(monkeypatch, x_shape, w_shape, stride, padding,
                                                                 two_stage):
    """The inference pass's two-stage unroll (shifted rows, then each tap as one run) gives
    the same y as the windows copied straight, bit for bit, which is the forward's (whose
    cols, kept for the backward, it never takes); it is taken only where it pays
    (TWO_STAGE_MAX_WIDTH, stride 1 down, kh > 1)."""
    from backends import im2col

    rng = np.random.default_rng(9)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    backend = convlab.get_backend("im2col")
    for budget in ("CHUNK_BYTES", "INFERENCE_CHUNK_BYTES"):  # chunks of a few images: buffers reused
        monkeypatch.setattr(im2col, budget, 4 * 4096)
    results, real = [], im2col.shifted_rows
    for widest in (0, im2col.TWO_STAGE_MAX_WIDTH):
        monkeypatch.setattr(im2col, "TWO_STAGE_MAX_WIDTH", widest)
        calls = []
        monkeypatch.setattr(im2col, "shifted_rows", lambda *args: calls.append(args) or real(*args))
        y, cache = backend.forward(x, w, b, stride, padding)
        dy = np.cos(y)
        results.append((y, *backend.backward(dy, cache), backend.inference(x, w, b, stride, padding)))
        assert len(calls) == (1 if widest and two_stage else 0)
    for two, one in zip(results[1], results[0]):
        np.testing.assert_array_equal(two, one)
    np.testing.assert_array_equal(results[0][4], results[0][0])  # inference as the forward


def test_im2col_inference_chunks_on_two_threads_unroll_into_buffers_of_their_own(monkeypatch):
    """The inference pass unrolls each chunk into a buffer its thread reuses. Two threads that
    both unroll a chunk before either multiplies (forced here by a barrier at the GEMM; on a
    busy machine a matter of timing) must each multiply their own chunk's windows: with one
    buffer between them, a chunk's output was another chunk's."""
    from backends import im2col

    gemm_together = threading.Barrier(2, timeout=10)
    real_phase = im2col.phase

    @contextlib.contextmanager
    def phase(name):
        if name == "GEMM":
            gemm_together.wait()
        with real_phase(name):
            yield

    rng = np.random.default_rng(6)
    x, w, b = rng.standard_normal((4, 2, 9, 9)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    backend = convlab.get_backend("im2col")
    y, _ = backend.forward(x, w, b, 1, 1)
    monkeypatch.setattr(im2col, "INFERENCE_CHUNK_BYTES", 1)  # one image a chunk: 4 chunks, two rounds of two threads
    monkeypatch.setattr(im2col, "phase", phase)
    monkeypatch.setattr(im2col, "share_chunks", lambda work, chunks: convlab.threads.share_chunks(work, chunks, 2))
    np.testing.assert_array_equal(backend.inference(x, w, b, 1, 1), y)


def test_dense_blocks_of_features_give_the_plain_products_on_one_thread_and_two(monkeypatch):
    """The dense layer's products cut into blocks of features (forward parts added in block
    order, dw and dx blocks disjoint): the same numbers on one thread and two, and the plain
    products up to float rounding."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((9, 50))
    dy = rng.standard_normal((9, 4))
    results = []
    dx_blocks = []  # dx is formed by convlab.factored in the layer's blocks too
    monkeypatch.setattr(convlab.factored, "share_chunks",
                        lambda work, chunks: (dx_blocks.append(chunks), convlab.threads.share_chunks(work, chunks)))
    for threads in (1, 2):
        monkeypatch.setattr(convlab.threads, "worker_count", lambda threads=threads: threads)
        layer = Dense(50, 4, rng=np.random.default_rng(8), dtype=np.float64)
        monkeypatch.setattr(layer, "K_BLOCK", 7)
        monkeypatch.setattr(layer, "FEATURE_BLOCK", 6)
        y = layer.forward(x)
        dx = layer.backward(dy)
        assert dx_blocks.pop() == convlab.threads.chunk_bounds(50, 6)
        results.append((y, dx, layer.grads["w"], layer.grads["b"]))
        w, b = layer.params["w"], layer.params["b"]
        np.testing.assert_allclose(y, x @ w + b, rtol=1e-12)
        np.testing.assert_allclose(dx, dy @ w.T, rtol=1e-12)
        np.testing.assert_allclose(layer.grads["w"], x.T @ dy, rtol=1e-12)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_dense_weights_and_their_gradient_are_laid_out_out_by_in_and_any_layout_gives_the_same_numbers():
    """w (in, out) is stored as (out, in) (w.T C-contiguous), and so is dw; a C-ordered w put in
    by hand gives the same outputs and gradients (its own layout is only slower), and the
    optimizer's momentum follows w's layout. (A checkpoint keeps it: test_checkpoints.)"""
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((6, 40)), rng.standard_normal((6, 5))
    layer = Dense(40, 5, rng=np.random.default_rng(4), dtype=np.float64)
    assert layer.params["w"].shape == (40, 5) and layer.params["w"].T.flags.c_contiguous
    assert SGD(convlab.Sequential(layer)).velocity["0.w"].T.flags.c_contiguous
    results = []
    for w in (layer.params["w"], np.ascontiguousarray(layer.params["w"])):
        layer.params["w"] = w
        y = layer.forward(x)
        dx = layer.backward(dy)
        assert layer.grads["w"].T.flags.c_contiguous
        results.append((y, dx, layer.grads["w"]))
    for fortran, c_ordered in zip(*results):
        np.testing.assert_allclose(fortran, c_ordered, rtol=1e-13, atol=1e-15)


def fake_cpu(tmp_path, cpuinfo, l2="512K"):
    """A /proc/cpuinfo text and a sysfs cache folder with an L1 and (unless None) an L2."""
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    for index, (level, size) in enumerate([("1", "32K"), ("2", l2)]):
        if size is not None:
            folder = tmp_path / "cache" / f"index{index}"
            folder.mkdir(parents=True)
            (folder / "level").write_text(level + "\n")
            (folder / "size").write_text(size + "\n")
    return str(tmp_path / "cpuinfo"), str(tmp_path / "cache")


@pytest.mark.parametrize("flags, l2, said", [
    ("fpu sse2 avx avx2 fma", "512K", "AMD EPYC (family 25 model 1, AVX2, L2 512 KiB)"),
    ("fpu sse2 avx avx2 avx512f avx512bw", "1024K", "AMD EPYC (family 25 model 1, AVX-512, L2 1024 KiB)"),
    ("fpu sse2", None, "AMD EPYC (family 25 model 1)"),
])
def test_the_machine_line_tells_apart_cpus_of_one_name(tmp_path, flags, l2, said):
    """Cloud VMs call a Zen 3 and a Zen 4 EPYC both "AMD EPYC"; the timings' machine line says
    which it was: family and model, the widest vector instructions, the L2 cache. Only the
    first processor's block is read."""
    from convlab.threads import cpu_model

    block = f"processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n"
    second = "\nprocessor\t: 1\ncpu family\t: 99\nmodel\t\t: 99\nmodel name\t: Other\nflags\t\t: avx512f\n"
    assert cpu_model(*fake_cpu(tmp_path, block + second, l2)) == said


def test_the_machine_line_without_cpuinfo_names_what_platform_knows(tmp_path):
    from convlab.threads import cpu_model

    absent = str(tmp_path / "absent")
    assert cpu_model(absent, absent) == (platform.processor() or platform.machine() or "unknown CPU")


@pytest.mark.parametrize("kernel, outputs", [("Haswell", 2048), ("Sandybridge", 1024)])
def test_im2col_s_dw_product_follows_openblas_s_kernels(kernel, outputs):
    """Which dw product im2col forms depends on OpenBLAS's kernels (see SMALL_DW_OUTPUTS):
    the AVX2 ones take dy @ cols.T up to 2048 outputs an image, the others up to 1024. Both
    forms are checked against naive by every backend test, on shapes either side."""
    done = subprocess.run([sys.executable, "-c", "import backends.im2col as m; from convlab.threads import "
                           "blas_kernel; print(blas_kernel(), m.SMALL_DW_OUTPUTS)"],
                          env=dict(os.environ, OPENBLAS_CORETYPE=kernel), capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0 or done.stdout.split()[0] == "None":
        pytest.skip(f"numpy's BLAS here is not OpenBLAS, or cannot run its {kernel} kernels")
    assert done.stdout.split() == [kernel, str(outputs)]


def test_floors_script_prints_the_layer_floor_and_both_fft_floors():
    pytest.importorskip("torch")
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "floors.py"), "--rounds", "1", "--pause", "0", "--warm", "0"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "cores" in lines[0] and "numpy" in lines[0] and "pyfftw" in lines[0], lines[0]  # the machine
    floors = [line for line in lines if line.strip().startswith("floor:")]
    assert len(floors) == 3 and "its GEMMs alone" in floors[0], result.stdout
    assert "fft's transforms)" in floors[1] and "fft's transforms and least passes)" in floors[2], result.stdout


def test_floors_transforms_are_the_plans_fft_runs_in_a_step(monkeypatch):
    """The transforms timed alone, and with their least passes, are fft's own: after a step
    of its convolution (forward with ReLU, backward without dx), executing them plans
    nothing new, and planned first they are all the plans that step then uses."""
    pytest.importorskip("torch")
    from benchmarks.floors import W_SHAPE, X_SHAPE, convolution_passes, transforms_of_a_step
    from convlab import fftw

    x = np.random.default_rng(0).random(X_SHAPE, dtype=np.float32)
    monkeypatch.setattr(fftw, "_plans", fftw._Plans())  # a cache of this test's own
    fftw.configure(threads=1)  # one tile at a time: the same slots every run
    try:
        convolution_passes("fft", x)()
        step_plans = set(fftw._plans.cache)
        transforms_of_a_step(X_SHAPE, W_SHAPE)()
        transforms_of_a_step(X_SHAPE, W_SHAPE, least_passes=True)()
        assert set(fftw._plans.cache) == step_plans
        fftw._plans.cache.clear()
        transforms_of_a_step(X_SHAPE, W_SHAPE)()
        timed_plans = set(fftw._plans.cache)
        convolution_passes("fft", x)()
        assert set(fftw._plans.cache) == timed_plans == step_plans
    finally:
        fftw.configure()


@pytest.mark.parametrize("option, value, message", [
    ("--rounds", "0", "--rounds must be a whole number >= 1, got 0"),
    ("--pause", "-1", "--pause must be a number of seconds >= 0, got -1.0"),
    ("--warm", "nan", "--warm must be a number of seconds >= 0, got nan"),
])
def test_floors_script_refuses_a_bad_setting_in_one_line(option, value, message):
    pytest.importorskip("torch")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "floors.py"), option, value],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.splitlines()[-1].endswith(f"error: {message}"), result.stderr
