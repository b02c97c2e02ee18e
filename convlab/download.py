"""Fetching MNIST from its public mirrors: every payload checked against its sha256
before it is written, and written atomically, so a bad download never lands in the
data folder."""

from __future__ import annotations

import gzip
import hashlib
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from convlab.data import DEFAULT_DATA_DIR, MNIST_FILES, DataError, read_payload
from convlab.files import atomic_path, check_writable

# Tried in order; each serves the four ``<stem>.gz`` files of the original distribution.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",   # torchvision's mirror
    "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TensorFlow's tutorial mirror
    "http://yann.lecun.com/exdb/mnist/",               # the original site
)


class DownloadError(DataError):
    """No mirror gave a file with the expected payload."""


def mirror_list(mirrors) -> list[str]:
    """``mirrors`` (a URL, a comma-separated string of URLs or a sequence of them), checked
    to be http(s) URLs, each ending in ``/``."""
    if isinstance(mirrors, str):
        mirrors = mirrors.split(",")
    try:
        urls = [str(m).strip() for m in mirrors]
    except TypeError:
        raise DownloadError(f"--mirror must be a URL or a list of URLs, got {mirrors!r}") from None
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DownloadError(f"mirror {url!r} is not an http:// or https:// URL")
    if not urls:
        raise DownloadError("no mirror given; pass at least one http:// or https:// URL")
    return [url if url.endswith("/") else url + "/" for url in urls]


def fetch(url: str, timeout: float) -> bytes:
    """The body at ``url``; any network or HTTP failure is a :class:`DownloadError`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        raise DownloadError(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(str(getattr(e, "reason", e))) from None


def checked_payload(body: bytes, sha256: str) -> bytes:
    """The decompressed payload of a downloaded ``.gz`` file, if its sha256 is ``sha256``."""
    try:
        payload = gzip.decompress(body)
    except (OSError, EOFError, zlib.error) as e:
        raise DownloadError(f"not a valid gzip file ({e})") from None
    actual = hashlib.sha256(payload).hexdigest()
    if actual != sha256:
        raise DownloadError(f"checksum mismatch: sha256 of the payload is {actual}, expected {sha256}")
    return payload


def is_present(path: Path, sha256: str) -> bool:
    """Whether ``path`` exists and its payload has the expected checksum."""
    if not path.is_file():
        return False
    try:
        return hashlib.sha256(read_payload(path)).hexdigest() == sha256
    except DataError:
        return False


def download_files(files: dict[str, str], dest, mirrors, timeout=30.0, log=print) -> list[Path]:
    """Fetch each ``<stem>.gz`` of ``files`` (stem -> payload sha256) into ``dest``.

    Files already present with the right payload are kept. For the others, each mirror
    is tried in order until one gives the expected payload; only then is the file
    written (atomically). Returns the paths in ``dest``.
    """
    mirrors = mirror_list(mirrors)
    dest = check_writable(dest, "--dest", folder=True)
    paths = []
    for stem, sha256 in files.items():
        path = dest / f"{stem}.gz"
        paths.append(path)
        if is_present(path, sha256):
            log(f"{path}: already present, checksum ok")
            continue
        failures = []
        for mirror in mirrors:
            url = mirror + path.name
            try:
                body = fetch(url, timeout)
                checked_payload(body, sha256)
            except DownloadError as e:
                failures.append(f"{url}: {e}")
                continue
            with atomic_path(path) as tmp:
                tmp.write_bytes(body)
            log(f"{path}: downloaded from {url}, checksum ok")
            break
        else:
            raise DownloadError(f"could not download {path.name} from any mirror: " + "; ".join(failures))
    return paths


def download_mnist(dest=None, mirrors=MNIST_MIRRORS, timeout=30.0, log=print) -> list[Path]:
    """Fetch the four MNIST files into ``dest`` (default: the repository's ``data/mnist``)."""
    files = {stem: sha256 for stem, sha256 in MNIST_FILES.values()}
    return download_files(files, DEFAULT_DATA_DIR / "mnist" if dest is None else dest, mirrors, timeout, log)
