"""Writing user files safely: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The rename is atomic on POSIX, so an interrupted write leaves the previous file
    intact, and on error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates the file private (0600); give it the mode a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable(path, option: str, folder=False) -> Path:
    """``path`` as a place ``atomic_path`` can write a file to (or, with ``folder``, create
    files in), checked before any work is done; a :class:`ValueError` naming ``option``
    (e.g. "--out") otherwise."""
    path = Path(str(path))
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} exists and is not a folder")
    if not folder and path.is_dir():
        raise ValueError(f"{option} {path} is a directory; give a file path such as {path / 'out'}")
    # The nearest existing ancestor is where the missing folders (if any) will be made.
    ancestor = next(p for p in path.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise ValueError(f"{option} {path}: {ancestor} is a file, so nothing can be written under it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: no permission to write in {ancestor}")
    return path


def write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def user_cache_dir() -> Path:
    """convlab's folder in the user cache: ``$XDG_CACHE_HOME/convlab`` (else ``~/.cache/convlab``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "convlab"
