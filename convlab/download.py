"""Fetching MNIST from its public mirrors: every payload checked against its sha256
before it is written, and written atomically, so a bad download never lands in the
data folder."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from convlab.data import DEFAULT_DATA_DIR, MNIST_FILES, DataError, known_payload, read_payload
from convlab.files import atomic_path, check_not_special, check_writable
from convlab.settings import list_items

# Tried in order; each serves the four ``<stem>.gz`` files of the original distribution.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",   # torchvision's mirror
    "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TensorFlow's tutorial mirror
    "http://yann.lecun.com/exdb/mnist/",               # the original site
)


# Seconds a mirror may stay silent before it counts as stalled, and that one file may take
# in all (the largest, train-images, is 9.9 MB: 10 minutes is 17 kB/s).
TIMEOUT = 30.0
DEADLINE = 600.0
# The longest --timeout: a mirror silent for a day is down. The socket's own limit is far
# higher but platform-dependent (its timeout must fit a time_t in nanoseconds: 1e12 s
# failed in socket.settimeout with "timestamp out of range for platform time_t").
MAX_TIMEOUT = 86400.0
# The longest --deadline, also a day: the largest file in a day is 115 B/s, a mirror no
# download should wait on (the default, 600 s, is 17 kB/s). Any more was no deadline at all
# (1e300 was taken), and a deadline as long as the longest --timeout stays possible.
MAX_DEADLINE = 86400.0
CHUNK_BYTES = 1 << 16


class DownloadError(DataError):
    """No mirror gave a file with the expected payload."""


def mirror_list(mirrors) -> list[str]:
    """``mirrors`` (a URL, a comma-separated string of URLs or a sequence of them), checked
    to be http(s) URLs, each ending in ``/``. An empty item ("http://x,") is refused as the
    other list options' are (:func:`convlab.settings.list_items`)."""
    if not isinstance(mirrors, str):
        try:
            mirrors = list(mirrors)
        except TypeError:
            raise DownloadError(f"--mirror must be a URL or a list of URLs, got {mirrors!r}") from None
    urls = [str(m).strip() for m in list_items(mirrors, "--mirror", "URL", "give one http:// or https:// URL, or "
                                                                         "several separated by commas")]
    if not any(urls):
        raise DownloadError("no mirror given; pass at least one http:// or https:// URL")
    for url in urls:
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # a ValueError if not a number from 0 to 65535
        except ValueError as e:  # "Invalid IPv6 URL" (http://[::1), a port such as :abc
            raise DownloadError(f"--mirror: {url!r} is not a valid URL ({e}); give an http:// or https:// URL "
                                "such as https://example.org/mnist/, with a port, if any, from 1 to 65535") from None
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DownloadError(f"mirror {url!r} is not an http:// or https:// URL")
    return [url if url.endswith("/") else url + "/" for url in urls]


def fetch(url: str, timeout: float, deadline: float) -> bytes:
    """The body at ``url``; any network or HTTP failure is a :class:`DownloadError`, among
    them a server that does not speak HTTP or breaks it (an SSH banner, a line too long,
    malformed chunks) and a malformed URL (``http.client.InvalidURL``, a redirect's).

    ``timeout``: seconds the server may stay silent (connecting, or between two pieces of
    the body) before the mirror counts as stalled. ``deadline``: seconds the whole file may
    take, so that a server trickling a byte at a time cannot hold the download forever."""
    started = time.monotonic()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            chunks = []
            while chunk := response.read1(CHUNK_BYTES):
                chunks.append(chunk)
                received += len(chunk)
                if time.monotonic() - started > deadline:
                    raise DownloadError(f"too slow: {received:,} bytes in {deadline:g} s, the deadline per file "
                                        "(--deadline)")
            return b"".join(chunks)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            raise DownloadError(f"stalled: no data for {timeout:g} s after {received:,} bytes "
                                "(--timeout)") from None
        raise DownloadError(str(reason)) from None
    except http.client.BadStatusLine as e:  # an SSH or SMTP server, say, at that port
        raise DownloadError(f"not an HTTP server: it answered {str(e).strip()[:80]!r}") from None
    except http.client.InvalidURL as e:  # "nonnumeric port" (mirror_list refuses it in --mirror; a redirect)
        raise DownloadError(f"bad URL ({e})") from None
    except http.client.HTTPException as e:  # LineTooLong, IncompleteRead (bad chunks), too many headers
        raise DownloadError(f"not a valid HTTP answer{f' after {received:,} bytes' if received else ''} "
                            f"({type(e).__name__}: {e})") from None
    except DownloadError:
        raise
    except ValueError as e:  # a redirect to a malformed URL ("Invalid IPv6 URL")
        raise DownloadError(f"bad URL ({e})") from None


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


def is_present(path: Path, stem: str, sha256: str, dest: Path) -> bool:
    """Whether ``path`` (``stem``'s ``.gz`` in ``dest``) already holds the expected payload:
    True if so, False if there is nothing there to lose (no file, an empty one, or a gzip
    file of nothing: what an interrupted copy leaves), so the download may write it.
    Anything else there is the user's, and is refused (a :class:`DownloadError`) rather
    than replaced: a file of other content (another data set's file of the same name,
    named where convlab knows its checksum), one that cannot be read or is not gzip (a
    truncated copy: convlab's own downloads are written whole or not at all), a folder,
    and a device, FIFO or socket, which is not opened."""
    how = "give another --dest, or move the file away and run again"
    try:
        check_not_special(path, f"--dest {dest}: {path}", how)
    except ValueError as e:
        raise DownloadError(str(e)) from None
    if not path.exists():
        return False
    if path.is_dir():
        raise DownloadError(f"--dest {dest}: {path} is a folder, not MNIST's {stem} file; refusing to replace it "
                            f"({how})")
    if path.stat().st_size == 0:
        return False
    try:
        payload = read_payload(path)
    except DataError as e:
        raise DownloadError(f"--dest {dest}: {e}; it is not MNIST's {stem} file (not a whole one, at least), so it "
                            f"is not replaced ({how})") from None
    if not payload:
        return False
    actual = hashlib.sha256(payload).hexdigest()
    if actual == sha256:
        return True
    known = known_payload(actual)
    what = f"holds {known[0]}'s {known[1]}" if known else f"holds other data (sha256 of its payload {actual})"
    raise DownloadError(f"--dest {dest}: {path} {what}, not MNIST's {stem} (sha256 {sha256}); refusing to replace it "
                        f"({how})")


def download_files(files: dict[str, str], dest, mirrors, timeout=TIMEOUT, deadline=DEADLINE, log=print) -> list[Path]:
    """Fetch each ``<stem>.gz`` of ``files`` (stem -> payload sha256) into ``dest``.

    Files already present with the right payload are kept; any other file at one of the
    names is refused before anything is downloaded, unless it is empty (see
    :func:`is_present`). For the others, each mirror
    is tried in order until one gives the expected payload within ``timeout`` and
    ``deadline`` (see :func:`fetch`); only then is the file written (atomically). One line
    is logged when a file starts, one when it is done, one per mirror that failed.
    Returns the paths in ``dest``.
    """
    mirrors = mirror_list(mirrors)
    dest = check_writable(dest, "--dest", folder=True)
    paths = [dest / f"{stem}.gz" for stem in files]
    # Every file already there is judged before anything is downloaded.
    present = [is_present(path, stem, sha256, dest) for path, (stem, sha256) in zip(paths, files.items())]
    for path, sha256, done in zip(paths, files.values(), present):
        if done:
            log(f"{path}: already present, checksum ok")
            continue
        failures = []
        for i, mirror in enumerate(mirrors):
            url = mirror + path.name
            log(f"{path.name}: downloading from {url}")
            started = time.monotonic()
            try:
                body = fetch(url, timeout, deadline)
                checked_payload(body, sha256)
            except DownloadError as e:
                failures.append(f"{url}: {e}")
                if i + 1 < len(mirrors):
                    log(f"{path.name}: mirror {mirror} failed ({e}); trying the next mirror")
                continue
            try:
                with atomic_path(path) as tmp:
                    tmp.write_bytes(body)
            except OSError as e:  # a full disk: the files before this one stay, whole and checked
                raise DataError(f"cannot write {path}: {e.strerror or e}") from None
            log(f"{path}: downloaded from {url}, {len(body):,} bytes in {time.monotonic() - started:.1f} s, "
                "checksum ok")
            break
        else:
            raise DownloadError(f"could not download {path.name} from any mirror: " + "; ".join(failures))
    return paths


def download_mnist(dest=None, mirrors=MNIST_MIRRORS, timeout=TIMEOUT, deadline=DEADLINE, log=print) -> list[Path]:
    """Fetch the four MNIST files into ``dest`` (default: the repository's ``data/mnist``)."""
    files = {stem: sha256 for stem, sha256 in MNIST_FILES.values()}
    return download_files(files, DEFAULT_DATA_DIR / "mnist" if dest is None else dest, mirrors, timeout, deadline,
                          log)
