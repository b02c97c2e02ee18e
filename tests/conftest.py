import contextlib
import dataclasses
import functools
import os
import resource
import signal

import h5py
import numpy as np
import pytest

import convlab
import convlab.data

# The fft backend in tests: quick FFTW plans, and no wisdom file in the user's cache dir.
os.environ.setdefault("CONVLAB_FFT_PLANNER", "estimate")
os.environ.setdefault("CONVLAB_FFT_WISDOM", "off")


def random_conv_case(rng, dtype=np.float64):
    """A random valid convolution problem: (x, w, b, stride, padding).

    Covers non-square inputs and kernels, odd sizes, stride > 1, padding beyond
    kernel/2 and kernels as large as the padded input.
    """
    n, c, f = rng.integers(1, 4), rng.integers(1, 5), rng.integers(1, 5)
    h, w = rng.integers(1, 12, size=2)
    stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    padding = (int(rng.integers(0, 4)), int(rng.integers(0, 4)))
    kh = int(rng.integers(1, h + 2 * padding[0] + 1))
    kw = int(rng.integers(1, w + 2 * padding[1] + 1))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((f, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    return x, wt, b, stride, padding


def supported_conv_cases(backend, rng, count, dtype=np.float64, max_draws=5000):
    """``count`` random problems (as :func:`random_conv_case`) that ``backend`` supports.

    The first few it does not support are checked to be refused up front with
    :class:`convlab.Unsupported`, so a backend with limits is tested on both sides of them.
    """
    cases, refused = [], 0
    for _ in range(max_draws):
        case = random_conv_case(rng, dtype)
        x, w, b, stride, padding = case
        if backend.supports(x.shape, w.shape, stride, padding) is None:
            cases.append(case)
            if len(cases) == count:
                break
        elif refused < 3:
            refused += 1
            with pytest.raises(convlab.Unsupported, match=f"backend '{backend.name}' does not support"):
                backend.forward(x, w, b, stride, padding)
    assert cases, f"backend {backend.name!r} supported none of {max_draws} random problems"
    return cases



@contextlib.contextmanager
def file_size_limit(nbytes):
    """A real limit on the size of files this process writes (``ulimit -f``), for the block:
    a write past ``nbytes`` fails in the kernel with EFBIG ("File too large"), an OSError from
    the write as a full disk's ENOSPC is, without mounting a small file system (which CI
    cannot). SIGXFSZ is ignored meanwhile, as Python starts it: the write fails, not the process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.fixture(autouse=True, scope="session")
def private_auto_cache(tmp_path_factory):
    """The auto backend's pick cache goes to a temporary file, never the user's cache dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVLAB_AUTO_CACHE", str(tmp_path_factory.mktemp("auto") / "auto.json"))
        yield


@pytest.fixture(params=convlab.list_backends())
def backend(request):
    return convlab.get_backend(request.param)


_load_dataset_once = functools.lru_cache(convlab.data.load_dataset)


@pytest.fixture
def data_read_once(monkeypatch):
    """In-process `convlab` commands share one reading of each data set (it takes seconds)."""
    def load_dataset(name="mnist", data_dir=None, verify=True):
        return dataclasses.replace(_load_dataset_once(name, data_dir, verify))  # the CLI slices its fields
    monkeypatch.setattr(convlab.data, "load_dataset", load_dataset)


@contextlib.contextmanager
def local_servers():
    """``add(server)`` serves a socketserver on 127.0.0.1 in a daemon thread and returns its
    base URL; every server added is shut down when the block ends."""
    import threading

    servers = []

    def add(server):
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    try:
        yield add
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


SPECIAL_FILES = ["fifo", "character device"]


def make_special_file(path, kind):
    """Make at ``path`` a FIFO or (``"character device"``) a /dev/null of our own, for
    tests of files that are not regular; skips the test where a device node needs root.
    Returns a check that the node is still there, as it was."""
    import stat

    if kind == "fifo":
        os.mkfifo(path)
        return lambda: stat.S_ISFIFO(os.stat(path).st_mode)
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root")
    return lambda: stat.S_ISCHR(os.stat(path).st_mode)


def random_digits(path, train=64, test=32):
    """``train`` + ``test`` random images in the assignment's MNISTdata.hdf5 layout at ``path``."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for split, n in (("train", train), ("test", test)):
            f[f"x_{split}"] = rng.integers(0, 256, (n, 784), dtype=np.uint8)
            f[f"y_{split}"] = rng.integers(0, 10, (n, 1))
    return path


@pytest.fixture
def tiny_data(tmp_path):
    """A 64 + 32 image data set at tmp_path / "tiny.hdf5": loads instantly."""
    return random_digits(tmp_path / "tiny.hdf5")
