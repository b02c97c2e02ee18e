"""The MNIST idx loader: real files verified, every kind of broken file named in the error."""

import gzip
import hashlib
import shutil

import numpy as np
import pytest

from convlab.data import DEFAULT_DATA_DIR, MNIST_FILES, DataError, load_idx, load_mnist, parse_idx


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_shipped_mnist_loads_and_verifies():
    data = load_mnist()
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.x_train.dtype == np.float32 and 0 <= data.x_train.min() and data.x_train.max() == 1
    assert data.y_train.shape == (60000,) and set(np.unique(data.y_test)) == set(range(10))
    assert list(data.y_train[:5]) == [5, 0, 4, 1, 9]


def test_parse_idx_round_trip():
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(idx_bytes(a), "mem"), a)


@pytest.fixture
def mnist_copy(tmp_path):
    for stem, _ in MNIST_FILES.values():
        shutil.copy(DEFAULT_DATA_DIR / "mnist" / f"{stem}.gz", tmp_path)
    return tmp_path


def test_missing_file_is_named(mnist_copy):
    (mnist_copy / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing data file.*t10k-labels-idx1-ubyte"):
        load_mnist(mnist_copy)


def test_missing_directory():
    with pytest.raises(DataError, match="does not exist"):
        load_mnist("/no/such/dir")


def test_corrupt_gzip(tmp_path):
    (tmp_path / "labels.gz").write_bytes(b"\x1f\x8b\x08\x00garbage that is not deflate")
    with pytest.raises(DataError, match="labels.gz.*cannot read.*gzip"):
        load_idx(tmp_path, "labels", None)


def test_truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.zeros((100, 28, 28))))
    (tmp_path / "images.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read"):
        load_idx(tmp_path, "images", None)


def test_an_unreadable_file_says_it_cannot_be_read_not_that_it_is_no_gzip(tmp_path, monkeypatch):
    from pathlib import Path

    (tmp_path / "labels").write_bytes(idx_bytes(np.zeros((2, 3))))
    (tmp_path / "images.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((2, 3)))))

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError) as plain:
        load_idx(tmp_path, "labels", None)
    assert str(plain.value) == f"{tmp_path / 'labels'}: cannot read it (Permission denied)"
    monkeypatch.setattr(gzip, "open", lambda path, mode: denied(path))
    with pytest.raises(DataError) as gz:
        load_idx(tmp_path, "images", None)
    assert str(gz.value) == f"{tmp_path / 'images.gz'}: cannot read it (Permission denied)"


def test_a_gzip_file_named_without_gz_is_named_as_such(tmp_path):
    (tmp_path / "labels").write_bytes(gzip.compress(idx_bytes(np.zeros((2, 3)))))
    with pytest.raises(DataError) as e:
        load_idx(tmp_path, "labels", None)
    assert str(e.value) == (f"{tmp_path / 'labels'}: is gzip-compressed but its name does not end in .gz; "
                            "expected a plain idx file (or rename it labels.gz)")


def test_a_gz_file_that_is_no_gzip_says_what_a_gz_name_means(tmp_path):
    (tmp_path / "labels.gz").write_bytes(idx_bytes(np.zeros((2, 3))))  # a plain idx file, misnamed
    with pytest.raises(DataError, match=r"labels.gz: cannot read it \(Not a gzipped file .*\); a file named .gz "
                                        r"must be a gzip-compressed idx file \(a plain one is named labels\)"):
        load_idx(tmp_path, "labels", None)


def test_truncated_idx_payload(tmp_path):
    (tmp_path / "images").write_bytes(idx_bytes(np.zeros((10, 28, 28)))[:-5])
    with pytest.raises(DataError, match="truncated.*expected 7856"):
        load_idx(tmp_path, "images", None)


def test_wrong_magic_number(tmp_path):
    (tmp_path / "images").write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(DataError, match="wrong magic number 12345678"):
        load_idx(tmp_path, "images", None)


def test_checksum_mismatch(tmp_path):
    payload = idx_bytes(np.zeros((2, 3)))
    (tmp_path / "labels.gz").write_bytes(gzip.compress(payload))
    expected = "0" * 64
    with pytest.raises(DataError, match=f"checksum mismatch.*{hashlib.sha256(payload).hexdigest()}.*expected {expected}"):
        load_idx(tmp_path, "labels", expected)


@pytest.mark.parametrize("name, content, empty", [
    ("labels.gz", b"", "is empty,"), ("labels.gz", gzip.compress(b""), "is empty once decompressed,"),
    ("labels", b"", "is empty,")])
def test_an_empty_file_is_called_empty_not_a_checksum_mismatch(tmp_path, name, content, empty):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as e:
        load_idx(tmp_path, "labels", "0" * 64, "mnist")
    assert str(e.value) == (f"{tmp_path / name}: {empty} as an interrupted download or copy leaves a file; replace "
                            "it with the complete labels file (run `convlab data download`, or put the four MNIST "
                            "idx files in data/mnist/)")


def test_raw_idx_is_read_when_no_gz(tmp_path):
    a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    (tmp_path / "labels").write_bytes(idx_bytes(a))
    np.testing.assert_array_equal(load_idx(tmp_path, "labels", hashlib.sha256(idx_bytes(a)).hexdigest()), a)


def test_atomic_write_reaches_the_disk_before_its_rename_and_a_late_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    """The new content is fsynced before the rename and the folder after it (a power cut just
    after a save finds the old file or the new one, whole); an error only fsync reports (a full
    disk that delayed allocation hid from write()) leaves the old file and no temporary one."""
    import errno
    import os

    from convlab.files import atomic_path

    target = tmp_path / "ck.h5"
    target.write_text("old")
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), target.read_text()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert synced == [(os.path.realpath(tmp), "old"), (str(tmp_path), "new")]

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        with atomic_path(target) as tmp:
            tmp.write_text("newer")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["ck.h5"]
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EINVAL, "Invalid argument")))
    with atomic_path(target) as tmp:  # a file system that cannot sync: written all the same
        tmp.write_text("newest")
    assert target.read_text() == "newest"


def test_atomic_write_syncs_what_it_may_not_read(tmp_path, monkeypatch):
    """A file replacing a write-only one (0200: its temporary file gets those bits) and a
    folder one may write in but not read (0333, a drop box) were written before the fsync
    came, and failed with it: Permission denied, the drop box's file already renamed into
    place. os.open refuses here as it does a user who is not root (the suite may run as root)."""
    import os
    import stat

    from convlab.files import atomic_path

    real_open = os.open

    def open_as_a_user(path, flags, *args, **kwargs):
        if flags & os.O_ACCMODE == os.O_RDONLY and not os.stat(path).st_mode & stat.S_IRUSR:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_as_a_user)
    write_only = tmp_path / "metrics.json"
    write_only.write_text("old")
    write_only.chmod(0o200)
    with atomic_path(write_only) as tmp:
        tmp.write_text("new")
    assert stat.S_IMODE(write_only.stat().st_mode) == 0o200
    drop_box = tmp_path / "drop"
    drop_box.mkdir()
    drop_box.chmod(0o333)
    try:
        with atomic_path(drop_box / "ck.h5") as tmp:
            tmp.write_text("new")
    finally:
        drop_box.chmod(0o755)
    assert write_only.read_text() == "new" and (drop_box / "ck.h5").read_text() == "new"


def test_atomic_write_gets_ordinary_permissions_and_leaves_no_temp_on_error(tmp_path):
    import os

    from convlab.files import atomic_path, write_json

    target = tmp_path / "m.json"
    write_json(target, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text().strip() == '{\n  "a": 1\n}'.strip()
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    with pytest.raises(KeyboardInterrupt):  # not the OSError of a temporary file that cannot go
        with atomic_path(target) as tmp:
            tmp.unlink()
            tmp.mkdir()  # os.unlink() cannot remove it, as in a folder made read-only meanwhile
            raise KeyboardInterrupt
