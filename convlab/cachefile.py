"""Cache files that several ``convlab`` processes share: the ``auto`` backend's picks and
the FFTW wisdom.

A cache is a JSON object with a marker key that says it is ours (``"picks"``,
``"wisdom"``). Writes are merges: under an exclusive lock on the cache's folder
(``fcntl.flock``, released when a writer dies), the file is read again,
``merge(stored)`` computes the new content from what is there now, and that is renamed
into place (:func:`convlab.files.atomic_path`). Two processes writing at once thus both
keep their entries, and a reader, who takes no lock, sees the old file or the new one,
never half of one.

A cache is only an optimisation, so nothing here stops a run: a file that cannot be
read or written (a read-only home, a full disk) gives one warning per file and
process, and the run goes on without it. A file that exists but is not ours (no marker
key: say ``CONVLAB_AUTO_CACHE`` names someone's notes) is never overwritten, unless it
sits in convlab's own cache folder (:func:`convlab.files.user_cache_dir`), where only a
damaged cache of ours can be.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import warnings
from pathlib import Path
from typing import Callable

from convlab.files import (JSON_KIND_NAMES, atomic_path, is_special, json_kind, parse_json, user_cache_dir,
                           write_target)

_warned: set[str] = set()


class NotOurs(ValueError):
    """An existing file that is not a cache of this kind: it is left as it is."""


def warn_once(path, message: str):
    """Warn ``message`` about the cache ``path``, unless this process has warned about it before."""
    if str(path) not in _warned:
        _warned.add(str(path))
        warnings.warn(message, stacklevel=3)


def _not_ours_message(kind, path, error):
    return f"not using the {kind} {path}: {error}; the file is left as it is (point the setting at another file)"


def read_cache(path, kind: str, marker: str) -> dict:
    """The JSON object in ``path`` if it is a cache holding ``marker``; ``{}`` when there is
    no file, and (with one warning) when it cannot be read or is not such a cache.
    ``kind`` names the cache in warnings ("auto pick cache")."""
    try:
        return _load(Path(path), marker)
    except FileNotFoundError:
        return {}
    except NotOurs as e:
        warn_once(path, _not_ours_message(kind, path, e))
    except OSError as e:
        warn_once(path, f"could not read the {kind} {path} ({e}); going on without it")
    return {}


def update_cache(path, kind: str, marker: str, merge: Callable[[dict], dict]) -> bool:
    """Replace the cache ``path`` with ``merge(stored)``, where ``stored`` is what it holds
    now (``{}``: nothing usable), atomically and under the file's lock; the result must
    hold ``marker``. Returns whether it was written: a file that is not ours is left
    intact, and a failed write is a warning (see the module doc)."""
    path = Path(path)
    try:
        with _locked(path):
            try:
                stored = _load(path, marker)
            except FileNotFoundError:
                stored = {}
            except OSError as e:
                warn_once(path, f"could not read the {kind} {path} ({e}); it is rewritten")
                stored = {}
            content = merge(stored)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(content, indent=1) + "\n")
        return True
    except NotOurs as e:
        warn_once(path, _not_ours_message(kind, path, e))
    except OSError as e:
        warn_once(path, f"could not save the {kind} to {path} ({e}); going on without saving it")
    return False


def clear_cache(path, marker: str) -> dict:
    """Delete the cache ``path`` (under its lock); returns what it held (``{}`` if there was
    none), so that a caller counts it from this one read instead of a :func:`read_cache`
    first, whose warning would come before the refusal below. Raises :class:`NotOurs` (a
    ValueError) for a file that is not such a cache, and a ValueError saying why for one
    that cannot be deleted (a folder, a read-only one's file)."""
    path = Path(path)
    if not path.exists():
        return {}
    with _locked(path):
        try:
            content = _load(path, marker)
            path.unlink()
        except FileNotFoundError:
            return {}
        except NotOurs as e:
            raise NotOurs(f"not deleting {path}: {e}") from None
        except OSError as e:
            raise ValueError(f"cannot delete {path}: {e.strerror or e}") from None
    return content


def _load(path: Path, marker: str) -> dict:
    """The JSON object in ``path``; :class:`NotOurs` if it is not a cache with ``marker``
    (the key, and the kind's name in :data:`convlab.files.JSON_KINDS`).
    An empty file (a crash before atomic writes, or ``touch``) counts as an empty cache.
    A device, FIFO or socket is not ours, and never opened: ``/dev/null`` reads as empty,
    and the write that followed renamed a file over it (as root, in a container: the
    system's ``/dev/null``); a FIFO would block the read."""
    if is_special(path):  # nothing there: the read's FileNotFoundError (no cache yet); a folder: its OSError
        raise NotOurs("it is not a regular file (a device, a FIFO or a socket)")
    text = path.read_bytes()
    if not text.strip():
        return {}
    try:
        content = parse_json(text)
    except ValueError:
        content = None
    # The rule check_outputs applies to --metrics-out and --json (convlab.files.json_kind):
    # a bench result holds "picks" too, but is not a pick cache.
    found = json_kind(content)
    if found != marker:
        if path.absolute().parent == user_cache_dir().absolute():  # a damaged cache of ours
            warn_once(path, f"ignoring the damaged cache file {path}; it is rewritten at the next save")
            return {}
        raise NotOurs(f"it exists and is not a convlab cache file (a JSON object with {marker!r})"
                      + (f"; it is {JSON_KIND_NAMES[found][0]}" if found else ""))
    return content


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on the folder of ``path`` (made if missing) for the block: a lock
    on the file itself would be lost when the file is replaced, and a lock file would be
    left behind in the user's folder. A symlinked cache is locked at its target's folder,
    where it is written (:func:`convlab.files.atomic_path`), so that writers through the
    link and through the target exclude each other."""
    folder = write_target(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
