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
    (e.g. "--out") otherwise.

    The folder that will receive the file (or the nearest existing ancestor, where the
    missing folders will be made) is probed by creating and removing an empty file in it:
    permission bits do not tell (root ignores them; ACLs and read-only mounts refuse
    regardless), the attempt does."""
    path = Path(str(path))
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} exists and is not a folder")
    if not folder and path.is_dir():
        raise ValueError(f"{option} {path} is a directory; give a file path such as {path / 'out'}")
    place = path.absolute() if folder and path.is_dir() else next(p for p in path.absolute().parents if p.exists())
    if not place.is_dir():
        raise ValueError(f"{option} {path}: {place} is a file, so nothing can be written under it")
    try:
        fd, probe = tempfile.mkstemp(prefix=".convlab-probe-", dir=place)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot write in {place} ({e.strerror or e})") from None
    return path


def check_suffix(path, option: str, suffix: str, what: str) -> Path:
    """``path`` if it ends in ``suffix`` (any case): a file named for what it holds."""
    path = Path(str(path))
    if path.suffix.lower() != suffix:
        raise ValueError(f"{option} {path}: {what} is written there, so the name must end in {suffix} "
                         f"(such as {path.with_suffix(suffix) if path.name else 'out' + suffix})")
    return path


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MAX_JSON_BYTES = 64 << 20  # a metrics or bench file is a few kB; anything this big is not one


def holds(path: Path, kind: str) -> bool:
    """Whether the existing file ``path`` is a ``kind`` file ("json", "pdf", "png", "svg",
    "hdf5"), judged by its content; an empty file is of any kind."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        return False
    if size == 0:
        return True
    if kind == "json":
        if size > MAX_JSON_BYTES:
            return False
        try:
            json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return False
        return True
    signatures = {"pdf": b"%PDF-", "png": b"\x89PNG\r\n\x1a\n", "hdf5": HDF5_SIGNATURE}
    if kind == "svg":
        return b"<svg" in head
    return head.startswith(signatures[kind])


KINDS_BY_SUFFIX = {".json": "json", ".pdf": "pdf", ".png": "png", ".svg": "svg"}


def check_outputs(outputs: dict, inputs: dict = None, kinds: dict = None) -> dict[str, Path]:
    """Check every output before any work starts: each writable (:func:`check_writable`),
    none the same file as an input or as another output (paths compared resolved, so
    ``./a`` and ``a`` or a symlink match), and none an existing file of another kind than
    the one written there (``kinds[option]``, else the suffix's: .json, .pdf, .png, .svg;
    where neither says, an existing HDF5 file, a checkpoint or data set, is protected).
    ``outputs`` and ``inputs`` map what the user typed (``"--metrics-out"``) to a path or
    None (not given). Returns the outputs given, as paths; raises :class:`ValueError`
    naming the option (and the other one) otherwise."""
    inputs = {option: Path(str(p)) for option, p in (inputs or {}).items() if p is not None}
    seen = dict(inputs)
    checked = {}
    for option, path in outputs.items():
        if path is None:
            continue
        path = check_writable(path, option)
        for other_option, other in seen.items():
            if same_file(path, other):
                role = "the input" if other_option in inputs else "the output"
                raise ValueError(f"{option} {path} is the same file as {role} {other_option} {other}; "
                                 "refusing to overwrite it (choose another path)")
        kind = (kinds or {}).get(option) or KINDS_BY_SUFFIX.get(path.suffix.lower())
        if path.is_file() and (not holds(path, kind) if kind else holds(path, "hdf5")):
            what = f"not a {kind.upper()} file" if kind else "an HDF5 file (a checkpoint or data set?)"
            raise ValueError(f"{option} {path} exists and is {what}; refusing to replace it with "
                             f"{'the ' + kind.upper() + ' written there' if kind else 'another kind of file'} "
                             "(choose another path, or remove the file first)")
        seen[option] = checked[option] = path
    return checked


def check_train_files(checkpoint, resume, metrics_out, data_dir):
    """``convlab train``'s files, checked before it starts: the checkpoint (saved after every
    epoch; when it is the resumed one, its folder must take the new version) and the
    metrics file are writable and neither overwrites the other, the resumed checkpoint or
    the data. (That a new checkpoint does not exist yet is checked by
    :func:`convlab.checkpoints.check_new_checkpoint_path`.)"""
    outputs = {"--checkpoint": checkpoint, "--metrics-out": metrics_out}
    if checkpoint is not None and resume is not None and same_file(Path(str(checkpoint)), Path(str(resume))):
        check_writable(resume, "--resume")
        outputs["--checkpoint"] = None
    check_outputs(outputs, {"--resume": resume, "--data-dir": data_dir}, kinds={"--metrics-out": "json"})


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (existing or not)."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def user_cache_dir() -> Path:
    """convlab's folder in the user cache: ``$XDG_CACHE_HOME/convlab`` (else ``~/.cache/convlab``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "convlab"
