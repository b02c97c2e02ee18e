"""`convlab data download` against HTTP servers on 127.0.0.1 only: never the real network."""

import functools
import gzip
import hashlib
import http.server
import re
import shutil

import numpy as np
import pytest

from convlab.data import DEFAULT_DATA_DIR, MNIST_FILES, DataError, load_mnist
from convlab.download import MNIST_MIRRORS, DownloadError, download_files, mirror_list
from tests.conftest import local_servers
from tests.conftest import file_size_limit
from tests.test_cli import run_cli


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve(tmp_path):
    """``serve(folder)`` -> base URL of an HTTP server on 127.0.0.1 serving ``folder``."""
    with local_servers() as add:
        yield lambda folder: add(http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder))))


@pytest.fixture
def garbage_server():
    """``garbage_server(answer)`` -> base URL of a server on 127.0.0.1 that reads the request
    (unless ``answer`` is a banner sent first, as SSH's is), sends ``answer`` and hangs up."""
    import socketserver

    def start(answer, banner=False):
        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                if not banner:
                    self.request.recv(65536)
                self.request.sendall(answer)

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        return add(server)

    with local_servers() as add:
        yield start


def fake_files(folder, count=2):
    """Small gzip files in ``folder``; returns {stem: payload sha256}."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(count):
        payload = np.arange(100 * (i + 1), dtype=np.uint8).tobytes()
        (folder / f"file{i}.gz").write_bytes(gzip.compress(payload))
        files[f"file{i}"] = hashlib.sha256(payload).hexdigest()
    return files


def quiet(_):
    pass


def test_downloads_and_verifies(serve, tmp_path):
    files = fake_files(tmp_path / "mirror")
    dest = tmp_path / "dest"
    paths = download_files(files, dest, serve(tmp_path / "mirror"), log=quiet)
    assert [p.name for p in paths] == ["file0.gz", "file1.gz"]
    for p in paths:
        assert p.read_bytes() == (tmp_path / "mirror" / p.name).read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["file0.gz", "file1.gz"]  # no temporary files left



def test_a_file_that_cannot_be_written_is_named_and_the_ones_before_it_stay(serve, tmp_path, capsys):
    """A full --dest (a real 2 MiB tmpfs, MNIST's 9.7 MB first file) ended in "convlab: error:
    [Errno 28] No space left on device", naming no file. Here a real file-size limit refuses
    the second file (EFBIG, as ENOSPC an OSError from the write)."""
    mirror, dest = tmp_path / "mirror", tmp_path / "dest"
    files = fake_files(mirror, count=1)
    payload = np.random.default_rng(0).bytes(64 << 10)  # random: its gzip stays over the limit
    (mirror / "big.gz").write_bytes(gzip.compress(payload))
    files["big"] = hashlib.sha256(payload).hexdigest()
    with file_size_limit(16 << 10), \
            pytest.raises(DataError, match=f"^cannot write {dest / 'big.gz'}: File too large$"):
        download_files(files, dest, serve(mirror), log=quiet)
    assert sorted(p.name for p in dest.iterdir()) == ["file0.gz"]


def test_404_falls_through_to_the_next_mirror(serve, tmp_path):
    files = fake_files(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    lines = []
    download_files(files, tmp_path / "dest", [serve(tmp_path / "empty"), serve(tmp_path / "good")], log=lines.append)
    done = [line for line in lines if "downloaded from" in line]
    assert len(done) == 2 and all(str(tmp_path) not in line.split("from")[1] for line in done)
    assert (tmp_path / "dest" / "file1.gz").is_file()


def test_corrupt_payload_is_a_checksum_error_and_leaves_nothing(serve, tmp_path):
    files = fake_files(tmp_path / "mirror")
    (tmp_path / "mirror" / "file1.gz").write_bytes(gzip.compress(b"not what was promised"))
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="could not download file1.gz.*checksum mismatch.*expected " + files["file1"]):
        download_files(files, dest, serve(tmp_path / "mirror"), log=quiet)
    assert sorted(p.name for p in dest.iterdir()) == ["file0.gz"]


def test_corrupt_mirror_then_good_mirror(serve, tmp_path):
    files = fake_files(tmp_path / "good", count=1)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "file0.gz").write_bytes(b"\x1f\x8b garbage")
    download_files(files, tmp_path / "dest", [serve(tmp_path / "bad"), serve(tmp_path / "good")], log=quiet)
    assert (tmp_path / "dest" / "file0.gz").read_bytes() == (tmp_path / "good" / "file0.gz").read_bytes()


def test_every_mirror_failing_names_each(serve, tmp_path):
    files = fake_files(tmp_path / "unused", count=1)
    (tmp_path / "empty").mkdir()
    empty = serve(tmp_path / "empty")
    with pytest.raises(DownloadError, match=r"(?s)HTTP 404.*HTTP 404") as e:
        download_files(files, tmp_path / "dest", [empty, empty + "other/"], log=quiet)
    assert str(e.value).count("file0.gz") == 3
    assert not (tmp_path / "dest" / "file0.gz").exists()


def test_present_file_is_kept_and_an_empty_one_replaced(serve, tmp_path):
    files = fake_files(tmp_path / "mirror", count=3)
    dest = tmp_path / "dest"
    dest.mkdir()
    shutil.copy(tmp_path / "mirror" / "file0.gz", dest)
    (dest / "file1.gz").write_bytes(b"")  # nothing in it to lose
    (dest / "file2.gz").write_bytes(gzip.compress(b""))  # nor in this
    lines = []
    download_files(files, dest, serve(tmp_path / "mirror"), log=lines.append)
    assert "already present" in lines[0] and "downloading" in lines[1] and "downloaded" in lines[2]
    for name in ("file1.gz", "file2.gz"):
        assert (dest / name).read_bytes() == (tmp_path / "mirror" / name).read_bytes()


def fashion_file(monkeypatch, payload):
    """Makes ``payload`` known as Fashion-MNIST's train-images (its real files are not here)."""
    from convlab.data import FASHION_MNIST_FILES

    stem = FASHION_MNIST_FILES["train_images"][0]
    monkeypatch.setitem(FASHION_MNIST_FILES, "train_images", (stem, hashlib.sha256(payload).hexdigest()))
    return stem


@pytest.mark.parametrize("content, message", [
    # Each of these was replaced by the download without a word.
    ("fashion", "holds fashion-mnist's train-images-idx3-ubyte, not MNIST's file1 "),
    ("mnist", "holds mnist's t10k-labels-idx1-ubyte, not MNIST's file1 "),
    ("other", "holds other data (sha256 of its payload "
                                             + hashlib.sha256(b"the user's own data").hexdigest()),
    # A truncated file cannot be told from the user's own: convlab writes whole files only.
    ("truncated", "cannot read it (Compressed file ended before the end-of-stream marker"),
    (b"damaged", "cannot read it (Not a gzipped file"),
])
def test_a_file_that_is_not_the_expected_one_is_refused_before_any_download(serve, tmp_path, monkeypatch, capsys,
                                                                           content, message):
    files = fake_files(tmp_path / "mirror")
    dest = tmp_path / "dest"
    dest.mkdir()
    if content == "fashion":
        payload = b"pretend fashion images"
        fashion_file(monkeypatch, payload)
        content = gzip.compress(payload)
    elif content == "mnist":
        content = (DEFAULT_DATA_DIR / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    elif content == "other":
        content = gzip.compress(b"the user's own data")
    elif content == "truncated":
        content = (tmp_path / "mirror" / "file1.gz").read_bytes()[:-10]
    (dest / "file1.gz").write_bytes(content)
    lines = []
    with pytest.raises(DownloadError, match=f"^--dest {re.escape(str(dest))}: {re.escape(str(dest / 'file1.gz'))}"
                                            f"(:| ).*{re.escape(message)}") as e:
        download_files(files, dest, serve(tmp_path / "mirror"), log=lines.append)
    assert "give another --dest, or move the file away" in str(e.value)
    assert lines == []  # nothing downloaded, not even file0
    assert sorted(p.name for p in dest.iterdir()) == ["file1.gz"]
    assert (dest / "file1.gz").read_bytes() == content


@pytest.mark.parametrize("kind", ["fifo", "socket", "folder"])
def test_a_fifo_a_socket_or_a_folder_at_a_name_is_refused_unopened(serve, tmp_path, monkeypatch, kind):
    import os
    import socket

    files = fake_files(tmp_path / "mirror")
    dest = tmp_path / "dest"
    dest.mkdir()
    if kind == "fifo":
        os.mkfifo(dest / "file1.gz")  # opening it to read would block
    elif kind == "folder":
        (dest / "file1.gz").mkdir()
    else:  # as a device would be (/dev/null reads as empty), it was replaced
        monkeypatch.chdir(dest)  # a socket's path has at most 107 bytes
        sock = socket.socket(socket.AF_UNIX)
        sock.bind("file1.gz")
        sock.close()
    lines = []
    what = "is a folder" if kind == "folder" else "exists and is not a regular file (a device, a FIFO or a socket)"
    with pytest.raises(DownloadError, match=re.escape(f"{dest / 'file1.gz'} {what}") + ".*refusing to replace it "
                                            r"\(give another --dest"):
        download_files(files, dest, serve(tmp_path / "mirror"), log=lines.append)
    assert lines == [] and sorted(p.name for p in dest.iterdir()) == ["file1.gz"]
    assert not (dest / "file1.gz").is_file()


def test_a_fashion_mnist_file_in_dest_is_refused_through_the_cli(serve, tmp_path, capsys, monkeypatch):
    payload = b"pretend fashion images"
    stem = fashion_file(monkeypatch, payload)
    dest = tmp_path / "fashion"
    dest.mkdir()
    (dest / f"{stem}.gz").write_bytes(content := gzip.compress(payload))
    shutil.copytree(DEFAULT_DATA_DIR / "mnist", tmp_path / "mirror")
    code, out, err = run_cli(capsys, "data", "download", "--dest", str(dest), "--mirror", serve(tmp_path / "mirror"))
    assert code == 2 and out == ""
    assert err == (f"convlab: error: --dest {dest}: {dest / stem}.gz holds fashion-mnist's {stem}, not MNIST's {stem} "
                   f"(sha256 {MNIST_FILES['train_images'][1]}); refusing to replace it (give another --dest, or move "
                   "the file away and run again)\n")
    assert (dest / f"{stem}.gz").read_bytes() == content
    assert [p.name for p in dest.iterdir()] == [f"{stem}.gz"]


@pytest.mark.parametrize("answer, banner, reason", [
    # Each ended in a traceback (exit 1), the next mirror untried.
    (b"SSH-2.0-OpenSSH_8.9\r\n", True, "not an HTTP server: it answered 'SSH-2.0-OpenSSH_8.9'"),
    (b"HTTP/1.1 200 OK" + b"x" * 70000 + b"\r\n\r\n", False,
     "not a valid HTTP answer (LineTooLong: got more than 65536 bytes when reading status line)"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n", False,
     "not a valid HTTP answer (IncompleteRead: IncompleteRead(0 bytes read))"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", False,
     "not a valid HTTP answer after 2 bytes (IncompleteRead: "),
    (b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:abc/\r\nContent-Length: 0\r\n\r\n", False,
     "bad URL (nonnumeric port: 'abc')"),
], ids=["ssh-banner", "line-too-long", "bad-chunk-size", "chunk-cut-short", "redirect-to-bad-port"])
def test_a_mirror_that_does_not_speak_http_fails_and_the_next_is_tried(serve, garbage_server, tmp_path, answer,
                                                                       banner, reason):
    files = fake_files(tmp_path / "good", count=1)
    bad = garbage_server(answer, banner)
    lines = []
    download_files(files, tmp_path / "dest", [bad, serve(tmp_path / "good")], log=lines.append)
    assert lines[1].startswith(f"file0.gz: mirror {bad} failed ({reason}")
    assert (tmp_path / "dest" / "file0.gz").read_bytes() == (tmp_path / "good" / "file0.gz").read_bytes()
    with pytest.raises(DownloadError, match=f"^could not download file0.gz from any mirror: {re.escape(bad)}"
                                            f"file0.gz: {re.escape(reason)}"):
        download_files(files, tmp_path / "dest2", bad, log=quiet)


def test_an_ssh_server_as_mirror_through_the_cli(serve, garbage_server, tmp_path, capsys):
    bad = garbage_server(b"SSH-2.0-OpenSSH_8.9\r\n", banner=True)
    code, out, err = run_cli(capsys, "data", "download", "--dest", str(tmp_path / "mnist"), "--mirror", bad)
    assert code == 2 and "Traceback" not in err
    assert err == (f"convlab: error: could not download train-images-idx3-ubyte.gz from any mirror: "
                   f"{bad}train-images-idx3-ubyte.gz: not an HTTP server: it answered 'SSH-2.0-OpenSSH_8.9'\n")


def test_fetch_of_a_url_with_a_non_numeric_port_is_a_download_error():
    from convlab.download import fetch

    with pytest.raises(DownloadError, match=r"^bad URL \(nonnumeric port: 'abc'\)$"):
        fetch("http://127.0.0.1:abc/file0.gz", 1, 1)


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1:abc/", "Port could not be cast to integer value as 'abc'"),
    ("http://[::1", "Invalid IPv6 URL"),
    ("http://example.org:99999/", "Port out of range 0-65535"),
])
def test_a_malformed_mirror_url_is_refused_up_front(tmp_path, capsys, url, reason):
    code, out, err = run_cli(capsys, "data", "download", "--dest", str(tmp_path / "mnist"),
                             "--mirror", f"http://127.0.0.1:9/,{url}")
    assert code == 2 and out == ""
    assert err == (f"convlab: error: --mirror: {url!r} is not a valid URL ({reason}); give an http:// or https:// "
                   "URL such as https://example.org/mnist/, with a port, if any, from 1 to 65535\n")
    assert not (tmp_path / "mnist").exists()


@pytest.mark.parametrize("mirrors, message", [
    ("ftp://example.org/mnist/", "is not an http:// or https:// URL"),
    ("not a url", "is not an http:// or https:// URL"),
    ([], "no mirror given"),
    (42, "must be a URL or a list of URLs"),
])
def test_bad_mirror_arguments(mirrors, message):
    with pytest.raises(DownloadError, match=message):
        mirror_list(mirrors)


@pytest.mark.parametrize("mirrors, message", [
    # An empty item was "mirror '' is not an http:// or https:// URL", as if one had been named.
    ("http://x,", "--mirror: empty URL in 'http://x,' (give one http:// or https:// URL, or several separated by "
                  "commas)"),
    ("http://x,,https://y", "--mirror: empty URL in 'http://x,,https://y' (give one http:// or https:// URL"),
    (["http://x", " "], "--mirror: empty URL in 'http://x, ' (give one http:// or https:// URL"),
    (",", "no mirror given; pass at least one http:// or https:// URL"),
])
def test_an_empty_mirror_is_refused_by_name(mirrors, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        mirror_list(mirrors)


def test_real_mnist_through_the_cli(serve, tmp_path, capsys):
    """The real payload checksums, end to end, from a local copy of the shipped files."""
    mirror = tmp_path / "mirror"
    shutil.copytree(DEFAULT_DATA_DIR / "mnist", mirror)
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(capsys, "data", "download", "--dest", str(tmp_path / "mnist"),
                             "--mirror", serve(tmp_path / "empty") + "," + serve(mirror))
    assert code == 0, err
    assert out.count("checksum ok") == len(MNIST_FILES)
    assert load_mnist(tmp_path / "mnist").x_test.shape == (10000, 1, 28, 28)


def test_default_mirrors_are_well_formed():
    assert len(mirror_list(MNIST_MIRRORS)) >= 3
