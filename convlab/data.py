"""Datasets: MNIST in its original idx format, checked against known sha256 sums."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# sha256 of each decompressed idx payload: gzip headers differ between copies, payloads do not.
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train_labels": ("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "test_images": ("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "test_labels": ("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}

# The repository's own copy, next to the package (present in a source checkout).
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data"

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ValueError):
    """A data file is missing, unreadable or not what was expected."""


@dataclass
class Dataset:
    """Images (N, 1, 28, 28) float32 in [0, 1] and labels (N,) int64, train and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str = "mnist"


def read_payload(path: Path) -> bytes:
    """The bytes of ``path``, decompressed if it ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read it ({e}); expected a gzip-compressed idx file") from None


def parse_idx(payload: bytes, source: str) -> np.ndarray:
    """An idx payload (magic 0x0000TTDD: type TT, DD dimensions) as a numpy array."""
    if len(payload) < 4 or payload[0:2] != b"\x00\x00" or payload[2] not in _IDX_DTYPES:
        raise DataError(f"{source}: wrong magic number {payload[:4].hex() or '(empty)'}; expected an idx file "
                        "(00 00, a type byte 08-0e, a dimension count)")
    dtype = np.dtype(_IDX_DTYPES[payload[2]])
    ndim = payload[3]
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise DataError(f"{source}: truncated idx header ({len(payload)} bytes, need {header})")
    shape = tuple(int.from_bytes(payload[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + dtype.itemsize * int(np.prod(shape))
    if len(payload) != expected:
        raise DataError(f"{source}: truncated or oversized idx data: {len(payload)} bytes, "
                        f"expected {expected} for shape {shape}")
    return np.frombuffer(payload, dtype=dtype, offset=header).reshape(shape)


def load_idx(data_dir: Path, stem: str, sha256: str | None) -> np.ndarray:
    """Read ``stem`` or ``stem.gz`` from ``data_dir`` and verify its payload's sha256."""
    candidates = [data_dir / f"{stem}.gz", data_dir / stem]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise DataError(f"missing data file: {candidates[0]} (or {candidates[1].name}) not found")
    payload = read_payload(path)
    if sha256 is not None:
        actual = hashlib.sha256(payload).hexdigest()
        if actual != sha256:
            raise DataError(f"{path}: checksum mismatch: sha256 of the payload is {actual}, expected {sha256}")
    return parse_idx(payload, str(path))


def load_mnist(data_dir=None, verify=True) -> Dataset:
    """MNIST from ``data_dir`` (a folder with the four idx files, or one holding ``mnist/``)."""
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist")
    if (data_dir / "mnist").is_dir():
        data_dir = data_dir / "mnist"
    arrays = {key: load_idx(data_dir, stem, sha if verify else None) for key, (stem, sha) in MNIST_FILES.items()}
    return Dataset(
        x_train=images_to_float(arrays["train_images"]),
        y_train=arrays["train_labels"].astype(np.int64),
        x_test=images_to_float(arrays["test_images"]),
        y_test=arrays["test_labels"].astype(np.int64),
    )


def images_to_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[:, None, :, :]
