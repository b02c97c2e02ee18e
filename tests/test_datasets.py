"""More data: Fashion-MNIST (verified against recorded sha256 sums) and the original
assignment's MNISTdata.hdf5 layout, from the library and from `convlab train`."""

import json

import h5py
import numpy as np
import pytest

from convlab.data import DATASETS, HDF5_NAME, load_dataset, load_hdf5
from tests.test_cli import run_cli

FASHION_FOLDER = next((f for f in DATASETS["fashion-mnist"].folders if f.is_dir()), None)
needs_fashion = pytest.mark.skipif(FASHION_FOLDER is None, reason="Fashion-MNIST is not installed "
                                   "(apt-get install dataset-fashion-mnist)")


@needs_fashion
def test_fashion_mnist_loads_and_verifies():
    data = load_dataset("fashion-mnist")
    assert data.name == "fashion-mnist"
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and data.x_train.max() == 1
    assert list(data.y_train[:10]) == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # ankle boot, T-shirt, T-shirt, dress, ...
    assert np.bincount(data.y_test).tolist() == [1000] * 10


@needs_fashion
def test_train_on_fashion_mnist(capsys, tmp_path):
    metrics = tmp_path / "m.json"
    code, out, err = run_cli(capsys, "train", "--dataset", "fashion-mnist", "--train-size", "300", "--test-size",
                             "100", "--epochs", "1", "--progress", "False", "--metrics-out", str(metrics))
    assert code == 0, err
    assert json.loads(metrics.read_text())["test_accuracy"] > 0.3  # chance is 0.1


def write_assignment_file(path, n_train=96, n_test=40, labels_dtype=np.float64):
    """A small file in the assignment's layout (x float32 in [0, 1], y (N, 1)); returns
    its arrays."""
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.random((n_train, 784), np.float32), y_train=rng.integers(0, 10, (n_train, 1)),
                  x_test=rng.random((n_test, 784), np.float32), y_test=rng.integers(0, 10, (n_test, 1)))
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value.astype(labels_dtype) if key.startswith("y") else value
    return arrays


def test_assignment_hdf5_by_path_and_by_folder(tmp_path):
    arrays = write_assignment_file(tmp_path / HDF5_NAME)
    for source in (tmp_path / HDF5_NAME, tmp_path):
        data = load_dataset("mnist", source)
        np.testing.assert_array_equal(data.x_train.reshape(96, 784), arrays["x_train"])
        np.testing.assert_array_equal(data.y_test, arrays["y_test"][:, 0])
        assert data.y_train.dtype == np.int64 and data.x_test.shape == (40, 1, 28, 28)


def test_hdf5_uint8_images_and_flat_labels(tmp_path):
    path = tmp_path / "d.h5"
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    with h5py.File(path, "w") as f:
        f["x_train"] = f["x_test"] = images.astype(np.uint8)
        f["y_train"] = f["y_test"] = np.array([7, 0, 9], np.int32)
    data = load_hdf5(path)
    np.testing.assert_allclose(data.x_train[:, 0], images / 255, rtol=1e-6)
    assert data.y_test.tolist() == [7, 0, 9]


def test_train_on_the_assignment_file(capsys, tmp_path):
    write_assignment_file(tmp_path / HDF5_NAME, n_train=128, n_test=32, labels_dtype=np.int64)
    code, out, err = run_cli(capsys, "train", "--data-dir", str(tmp_path / HDF5_NAME), "--epochs", "1",
                             "--progress", "False")
    assert code == 0, err
    assert "training on 128 images, testing on 32" in out


def test_idx_files_win_over_an_hdf5_file_in_the_same_folder(tmp_path):
    for f in DATASETS["mnist"].folders[0].iterdir():
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / HDF5_NAME).write_bytes(b"not even HDF5")  # never opened
    assert len(load_dataset("mnist", tmp_path).x_train) == 60000
