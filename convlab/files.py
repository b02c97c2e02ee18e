"""Writing user files safely: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import stat
import tempfile
import warnings
from pathlib import Path


def write_target(path) -> Path:
    """The file a write to ``path`` must change: ``path`` with its symlinks resolved (a
    dangling link's target is created, as ``open(path, "w")`` would, and so are its missing
    folders, as for any path :func:`atomic_path` writes). Renaming a new file
    onto the link itself would replace the link and leave its target as it was. Any other
    path is kept as given (a symlinked folder on the way is written through anyway)."""
    path = Path(str(path))
    return Path(os.path.realpath(path)) if path.is_symlink() else path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The rename is atomic on POSIX, so an interrupted write leaves the previous file
    intact, and on error the temporary file is removed. A symlink is written through:
    the temporary file sits beside the link's target (a rename cannot cross file
    systems) and replaces the target, so the link stays and points at the new content.
    The new file gets the permission bits of the file it replaces (a ``chmod 600``
    checkpoint stays private), else the mode a plain ``open()`` would give. Its content
    is on the disk before the rename, and the rename after it (:func:`flush_to_disk`).
    """
    path = write_target(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:  # no file yet: mkstemp's 0600 would be private; open()'s mode is 0666 & ~umask
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        flush_to_disk(tmp)  # before the chmod: mkstemp's 0600 can be read, the old file's 0200 not
        os.chmod(tmp, mode)  # after the write: the old file's bits may not allow writing (0444)
        os.replace(tmp, path)
        flush_to_disk(path.parent)
    except BaseException:
        # What stopped the write (a second Ctrl-C, a full disk) is what the user must read,
        # not that the temporary file could not go too (its folder made read-only
        # meanwhile); one left behind is hidden, and a checkpoint's goes at its next save.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def flush_to_disk(path):
    """``fsync`` the file or folder ``path``: what was written to it is on the disk when this
    returns. Without it, a rename can reach the disk before the data it points at (ext4 and
    XFS allocate a file's blocks late), so a power cut or a crash of the machine just after a
    save can leave the checkpoint empty, the old one already gone; and a full disk that this
    late allocation hid from ``write()`` (or an NFS server's error) is reported here, while
    the previous file is still in place. A file system that cannot sync (EINVAL, ENOTSUP:
    some FUSE mounts) is let be: nothing more can be done there; so is a folder that cannot
    be opened to sync (one can write in a ``chmod 333`` folder, a drop box, without reading
    it), where the file has already been renamed into place."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except PermissionError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


# A file name each output option accepts, for a refusal's example.
EXAMPLE_NAMES = {"--metrics-out": "metrics.json", "--out": "report.pdf", "--json": "bench.json", "--plot": "plot.png",
                 "--checkpoint": "run.h5"}


def check_writable(path, option: str, folder=False) -> Path:
    """``path`` as a place ``atomic_path`` can write a file to (or, with ``folder``, create
    files in), checked before any work is done; a :class:`ValueError` naming ``option``
    (e.g. "--out") otherwise.

    The folder that will receive the file (or the nearest existing ancestor, where the
    missing folders will be made) is probed by creating and removing an empty file in it:
    permission bits do not tell (root ignores them; ACLs and read-only mounts refuse
    regardless), the attempt does. For a symlink, that is the folder of its target, where
    the file is written (:func:`write_target`)."""
    path = Path(str(path))
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} exists and is not a folder")
    if not folder and path.is_dir():
        raise ValueError(f"{option} {path} is a directory; give a file path such as "
                         f"{path / EXAMPLE_NAMES.get(option, 'out')}")
    # A missing folder on the way is made; a symlink to a missing one cannot be (mkdir finds
    # the link there), and would end the run with a bare "[Errno 17] File exists".
    for step in ([path] if folder else []) + list(write_target(path).parents):
        if step.exists():
            break
        if step.is_symlink():
            raise ValueError(f"{option} {path}: {step} is a symlink to {os.readlink(step)}, which does not "
                             "exist, so no folder can be made there (create its target, or give another path)")
    place = path.absolute() if folder and path.is_dir() else next(
        p for p in write_target(path).absolute().parents if p.exists())
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
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_JSON_BYTES = 64 << 20  # a metrics or bench file is a few kB; anything this big is not one

# The JSON files convlab writes, each told by the keys its top-level object always has.
# Parsing as JSON is not enough to replace a file (a package.json, a notebook parse too);
# holding these keys is. The order matters: a bench result also has "picks" (auto's
# choices in the run), and is not a pick cache.
JSON_KINDS = {
    "metrics": ("backend", "epochs"),  # train --metrics-out (convlab.run; read by convlab.report)
    "bench": ("rows",),                # bench --json (convlab.bench.save_json)
    "picks": ("picks",),               # the auto backend's pick cache (convlab.cachefile)
    "wisdom": ("wisdom",),             # the FFTW wisdom cache (convlab.cachefile)
}
# What each kind of JSON file is, in refusals: (the file, what is written in its place).
JSON_KIND_NAMES = {
    "metrics": ('a metrics file (the JSON object with "backend" and "epochs" that '
                "`convlab train --metrics-out` writes)", "the metrics"),
    "bench": ('a bench result (the JSON object with "rows" that `convlab bench --json` writes)', "the bench result"),
    "picks": ('an auto pick cache (a JSON object with "picks")', "the picks"),
    "wisdom": ('an FFTW wisdom file (a JSON object with "wisdom")', "the wisdom"),
    "json": ("a JSON file written by convlab (a metrics file, a bench result or a cache)", "the JSON"),
}


def json_kind(content) -> str | None:
    """Which of convlab's JSON files (:data:`JSON_KINDS`) the parsed ``content`` is; None
    for anything else."""
    if isinstance(content, dict):
        for kind, keys in JSON_KINDS.items():
            if all(key in content for key in keys):
                return kind
    return None


def holds(path: Path, kind: str) -> bool:
    """Whether the existing file ``path`` is a ``kind`` file, judged by its content: "pdf",
    "png", "svg", "hdf5" by their signature; "metrics", "bench", "picks", "wisdom" by
    their keys (:data:`JSON_KINDS`), "json" if it is any of those. An empty file is of any
    kind."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        return False
    if size == 0:
        return True
    if kind == "json" or kind in JSON_KINDS:
        if size > MAX_JSON_BYTES:
            return False
        try:
            found = json_kind(json.loads(path.read_bytes()))
        except (OSError, UnicodeDecodeError, ValueError):
            return False
        return found is not None if kind == "json" else found == kind
    signatures = {"pdf": b"%PDF-", "png": PNG_SIGNATURE, "hdf5": HDF5_SIGNATURE}
    if kind == "svg":
        return b"<svg" in head
    return head.startswith(signatures[kind])


KINDS_BY_SUFFIX = {".json": "json", ".pdf": "pdf", ".png": "png", ".svg": "svg"}
# What convlab's options write, where the caller does not say: a .json suffix alone would
# let `bench --json m.json` replace a metrics file, and the reverse.
KINDS_BY_OPTION = {"--metrics-out": "metrics", "--json": "bench"}


def check_outputs(outputs: dict, inputs: dict = None, kinds: dict = None) -> dict[str, Path]:
    """Check every output before any work starts: each writable (:func:`check_writable`),
    none the same file as an input or as another output (paths compared resolved, so
    ``./a`` and ``a`` or a symlink match), and none an existing file of another kind than
    the one written there (``kinds[option]``, else the option's (:data:`KINDS_BY_OPTION`:
    a metrics file, a bench result), else the suffix's: .json, .pdf, .png, .svg; where
    none says, an existing HDF5 file, a checkpoint or data set, is protected).
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
        kind = ((kinds or {}).get(option) or KINDS_BY_OPTION.get(option)
                or KINDS_BY_SUFFIX.get(path.suffix.lower()))
        if path.is_file() and (not holds(path, kind) if kind else holds(path, "hdf5")):
            raise ValueError(f"{option} {path} exists and {refusal(kind)} "
                             "(choose another path, or remove the file first)")
        seen[option] = checked[option] = path
    return checked


def refusal(kind: str | None) -> str:
    """What an existing file in the way is not (or is), and what would replace it, for
    :func:`check_outputs`'s refusal."""
    if kind is None:
        return "is an HDF5 file (a checkpoint or data set?); refusing to replace it with another kind of file"
    what, written = JSON_KIND_NAMES.get(kind, (f"a {kind.upper()} file", f"the {kind.upper()}"))
    return f"is not {what}; refusing to replace it with {written} written there"


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
    check_outputs(outputs, {"--resume": resume, "--data-dir": data_dir}, kinds={"--metrics-out": "metrics"})


@contextlib.contextmanager
def sole_writer(outputs: dict):
    """Within the block, this process is the only convlab run writing each of ``outputs``
    ({option: path or None}, as for :func:`check_outputs`, already checked by it); a
    :class:`ValueError` naming the option and the other process if another run holds one.

    Two runs given one ``--checkpoint`` or ``--metrics-out`` would each replace the other's
    file after every epoch, and the run that ended last would erase the other's. So a run
    claims each output for as long as it runs, by an exclusive ``flock`` on a lock file
    ``.<name>.lock`` beside it (beside a symlink's target, where it is written: see
    :func:`write_target`), which holds the holder's process id and is removed at the end
    of the block, with the folders made for it if nothing was written in them. The lock
    is released when its holder dies (``kill -9``); the file left behind then is claimed
    again by the next run. The lock cannot be on the output itself: that is replaced at
    every save, and HDF5 takes locks of its own on it.
    """
    with contextlib.ExitStack() as claims:
        for option, path in outputs.items():
            if path is not None:
                claims.enter_context(_claimed(Path(str(path)), option))
        yield


@contextlib.contextmanager
def _claimed(path: Path, option: str):
    """An exclusive claim on ``path`` for the block (see :func:`sole_writer`)."""
    target = write_target(path)
    lock = target.with_name(f".{target.name}.lock")
    # The output's missing folders are made now, for the lock file; those the run wrote
    # nothing in (it stopped at a mistake found after the claim) go again at its end.
    made = list(itertools.takewhile(lambda folder: not folder.exists(), [lock.parent, *lock.parent.parents]))
    try:
        fd = _lock(lock, path, option)
        if fd is None:
            yield
            return
        try:
            # The holder's process id is for the refusal of another run to name; the lock
            # holds without it (a full disk then stops the run at its first save, saying so).
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            # Removed before the lock is released, when no one else can hold it. A folder made
            # read-only meanwhile keeps it (the next run claims it again), and the run's own
            # error, if any, is the one the user sees.
            with contextlib.suppress(OSError):
                lock.unlink(missing_ok=True)
            os.close(fd)
    finally:
        for folder in made:  # deepest first; one not empty stays, and so do those above it
            with contextlib.suppress(OSError):
                folder.rmdir()


def _lock(lock: Path, path: Path, option: str) -> int | None:
    """A descriptor of the file ``lock`` (made if missing, with its folders) holding its
    exclusive ``flock``; None, with a warning, where the file system has no locks (some FUSE
    mounts): the run then goes on unclaimed, as it did before claims."""
    while True:
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if isinstance(e, FileNotFoundError) and not lock.parent.is_dir():
                continue  # its folder, made for a run that ended at once, went with it: made again
            raise ValueError(f"{option} {path}: cannot create its lock file {lock} ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise ValueError(f"{option} {path} is being written by another convlab run"
                             f"{f' (process {holder})' if holder else ''}; wait for it to end, or choose "
                             "another path") from None
        except OSError as e:
            os.close(fd)
            lock.unlink(missing_ok=True)
            warnings.warn(f"{option} {path}: cannot lock {lock} ({e.strerror or e}); another run writing "
                          f"{path} at the same time would not be noticed", stacklevel=4)
            return None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # a lock file its holder removed as it left: claim the one there now


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
