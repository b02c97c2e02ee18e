"""Writing user files safely: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import platform
import re
import secrets
import socket
import stat
import struct
import sys
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
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``: the
    one-file case of :func:`atomic_paths`, which says what is guaranteed."""
    with atomic_paths(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(*paths):
    """Yield a list of temporary paths, one beside each of ``paths``; when the block ends
    without an error, each is synced to the disk and then all are renamed onto their
    paths, in the order given (list last the file whose being new says the others are:
    a report's PDF).

    The rename is atomic on POSIX, so an interrupted write leaves the previous file
    intact, and on error the temporary files not yet renamed are removed: an error
    before the renames (a full disk at the third file) leaves every path as it was; a
    rename refused leaves the paths before it new and the others old. A symlink is
    written through: the temporary file sits beside the link's target (a rename cannot
    cross file systems) and replaces the target, so the link stays and points at the new
    content. Each new file gets the permission bits of the file it replaces (a ``chmod
    600`` checkpoint stays private), else the mode a plain ``open()`` would give. Its
    content is on the disk before any rename, and the renames are before this returns
    (:func:`flush_to_disk`: each file once, then each folder once). An error in that
    finishing (a sync, a rename) names the path written, not its temporary file.

    The temporary files are named for their writer (:func:`temporary_name`); those that
    writers killed mid-write (``kill -9``, a power cut) left beside a path are removed
    before it is written (:func:`remove_abandoned_temporaries`).
    """
    targets = [write_target(path) for path in paths]
    modes = [_mode_for(target) for target in targets]
    temporaries = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_abandoned_temporaries(target)
            temporaries.append(_new_temporary(target))
        yield list(temporaries)
        for target, tmp, mode in zip(targets, temporaries, modes):
            with _naming(target):
                flush_to_disk(tmp)  # before the chmod: the new file's 0600 can be read, the old file's 0200 not
                os.chmod(tmp, mode)  # after the write: the old file's bits may not allow writing (0444)
        for i, (target, tmp) in enumerate(zip(targets, temporaries)):
            with _naming(target):
                os.replace(tmp, target)
            temporaries[i] = None
        for folder in dict.fromkeys(target.parent for target in targets):
            flush_to_disk(folder)
    except BaseException:
        # What stopped the write (a second Ctrl-C, a full disk) is what the user must read,
        # not that a temporary file could not go too (its folder made read-only meanwhile);
        # one left behind is hidden, and goes at the next write of its path.
        for tmp in temporaries:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        raise


def _mode_for(target: Path) -> int:
    """The permission bits the new ``target`` gets: those of the file it replaces, else
    ``open()``'s (``0666 & ~umask``; the temporary file's own 0600 would make it private)."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def _naming(target: Path):
    """An OSError in the block names ``target`` alone: a sync (which names no file) or a
    rename (which names the temporary file first) of the file written there."""
    try:
        yield
    except OSError as e:
        e.filename, e.filename2 = os.fspath(target), None
        raise


# A temporary file's name says who writes it, so that one its writer will never finish
# can be told from one being written:  .<name>.<pid>@<host>.<random>.tmp  in the initial
# pid namespace (or a system without them), .<name>.<pid>-<namespace>@<host>.<random>.tmp
# in another one (a container: its process ids are its own), where <namespace> is the
# namespace's inode number, or "x" where it cannot be read (never judged abandoned).
TEMPORARY = re.compile(r"(?P<pid>[0-9]+)(?:-(?P<namespace>[0-9]+|x))?@(?P<host>[A-Za-z0-9._-]+)\.[0-9a-f]{8}\.tmp")
# The temporary files of convlab 0.11 and before (tempfile.mkstemp's): no writer in the name.
UNNAMED_TEMPORARY = re.compile(r"[a-z0-9_]{8}\.tmp")
PROC_PID_INIT_INO = 0xEFFFFFFC  # the initial pid namespace's inode number (Linux's proc_ns.h)
NAME_MAX = 255  # bytes in a file name, on nearly every file system
# Room kept after a hidden name's stem (hidden_stem) for the longest writer part: ".", a
# pid (at most 7 digits: Linux's pid_max is 2**22), "-", a namespace (10 digits), "@", a
# host name (64 characters at most), ".", 8 random digits, ".tmp".
WRITER_ROOM = 1 + 7 + 1 + 10 + 1 + 64 + 1 + 8 + 4


def writer() -> str:
    """This process as the writer part of its temporary files' names: ``<pid>@<host>`` or
    ``<pid>-<namespace>@<host>`` (see :data:`TEMPORARY` and :func:`_namespace_and_host`)."""
    namespace, host = _namespace_and_host()
    return f"{os.getpid()}{namespace and '-' + namespace}@{host}"


def _namespace_and_host() -> tuple[str, str]:
    """Where this process's ids mean something, as :func:`writer` spells it: its pid
    namespace ("" for the initial one, or where there are none), and the host name with
    anything but letters, digits, dots and dashes as "_", at most 64 characters."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
        namespace = "" if namespace == PROC_PID_INIT_INO else str(namespace)
    except OSError:  # no /proc: no pid namespaces off Linux, an unknown one on it
        namespace = "x" if sys.platform.startswith("linux") else ""
    return namespace, re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "_"


def hidden_stem(name: str) -> str:
    """How the hidden files convlab keeps beside the file ``name`` begin (its temporary
    files, ``<stem>.<writer>.<random>.tmp``, and its lock file, ``<stem>.lock``):
    ``.<name>``; for a name too long to leave :data:`WRITER_ROOM` within the 255 bytes a
    file name may have, its start and a hash of the whole, ``.<start>~<16 hex digits>``,
    one stem per name."""
    stem = f".{name}"
    if len(os.fsencode(stem)) + WRITER_ROOM <= NAME_MAX:
        return stem
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    start = name
    while len(os.fsencode(f".{start}~{digest}")) + WRITER_ROOM > NAME_MAX:
        start = start[:-1]
    return f".{start}~{digest}"


def temporary_name(target: Path) -> str:
    """A new name for a temporary file of ``target``: ``<stem>.<writer>.<random>.tmp``
    (:func:`hidden_stem`, :func:`writer`), at most 255 bytes."""
    return f"{hidden_stem(target.name)}.{writer()}.{secrets.token_hex(4)}.tmp"


def _new_temporary(target: Path) -> Path:
    """An empty temporary file beside ``target``, made by this call (``O_EXCL``), mode 0600."""
    for _ in range(100):
        tmp = target.with_name(temporary_name(target))
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", os.fspath(target))


def remove_abandoned_temporaries(target: Path) -> list[Path]:
    """Remove the temporary files beside ``target`` whose writers will never finish them;
    returns those removed. Called before every write (:func:`atomic_paths`): a writer
    killed mid-write (``kill -9``, the OOM killer) leaves its temporary file, which only
    the next write can remove, and which may be as big as a checkpoint.

    A temporary file is abandoned if its name (:data:`TEMPORARY`) says it was written on
    this host, in this pid namespace, by a process that no longer exists. Another host's
    (a shared folder), another namespace's (a container's) or a live process's is left:
    this process cannot tell whether its writer is alive, or knows it is. Unless this
    process holds ``target``'s claim (:func:`sole_writer`): then no other convlab writes
    it, and every temporary file of ``target`` is one nobody will finish, including those
    of convlab 0.11 and before, whose names say no writer. Only regular files are removed;
    one that cannot be is left (a courtesy: it does not stop the write)."""
    stem = hidden_stem(target.name)
    claimed = _place(target) in _claims
    here = _namespace_and_host()
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(f"{stem}."):
            continue
        rest = entry.name[len(stem) + 1:]
        found = TEMPORARY.fullmatch(rest)
        if found is None:
            abandoned = claimed and UNNAMED_TEMPORARY.fullmatch(rest) is not None
        else:
            abandoned = claimed or ((found["namespace"] or "", found["host"]) == here and here[0] != "x"
                                    and not _alive(int(found["pid"])))
        with contextlib.suppress(OSError):
            if abandoned and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    """Whether the process ``pid`` (of this pid namespace) exists; yes when it cannot be
    told."""
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's process
        return True
    return True


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


def check_file_name(path, option: str) -> Path:
    """``path`` as a :class:`Path`, if it can name a file to write: not an existing folder,
    and not ending in a separator, which says a folder was meant (``--checkpoint runs/``).
    ``Path("runs/")`` is ``runs``, so unchecked that run would write its checkpoint as a
    file named ``runs``. A :class:`ValueError` naming ``option`` otherwise."""
    text = str(path)
    if not text.strip():  # Path("") is ".": it was refused as "names a folder" of that name
        raise ValueError(f"{option} is empty ({text!r}); give a file name such as {EXAMPLE_NAMES.get(option, 'out')}")
    check_name_lengths(text, option)  # before is_dir(), which raises on a name too long
    if text.endswith(tuple(filter(None, (os.sep, os.altsep)))) or Path(text).is_dir():
        if "'s " in option:  # a name made from an option's ("--out's curves figure"): only that option can change it
            owner = option.split("'s ")[0]
            raise ValueError(f"{option} {text} is a folder; give {owner} another name (its figures are named after it)")
        raise ValueError(f"{option} {text} names a folder; give a file name such as "
                         f"{Path(text) / EXAMPLE_NAMES.get(option, 'out')}")
    return Path(text)


def check_writable(path, option: str, folder=False) -> Path:
    """``path`` as a place ``atomic_path`` can write a file to (or, with ``folder``, create
    files in), checked before any work is done; a :class:`ValueError` naming ``option``
    (e.g. "--out") otherwise.

    The folder that will receive the file (or the nearest existing ancestor, where the
    missing folders will be made) is probed by creating and removing an empty file in it:
    permission bits do not tell (root ignores them; ACLs and read-only mounts refuse
    regardless), the attempt does. For a symlink, that is the folder of its target, where
    the file is written (:func:`write_target`). An immutable or append-only folder or
    existing file (``chattr +i``, ``+a``), whose replacement would fail only at the end
    of the work, is refused too (:func:`check_not_locked`), and so is a name longer than
    the folder's file system allows."""
    if folder:
        check_name_lengths(str(path), option, folder=True)
    path = Path(str(path)) if folder else check_file_name(path, option)
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} exists and is not a folder")
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
    check_not_locked(place, f"{option} {path}", "no file can be created in it", "no file in it can be replaced")
    try:
        fd, probe = tempfile.mkstemp(prefix=".convlab-probe-", dir=place)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot write in {place} ({e.strerror or e})") from None
    if not folder:
        target = write_target(path)
        _check_length(target.name, _name_max(place), option, path, "the file name")
        check_not_special(target, f"{option} {path}")  # a folder was refused by check_file_name
        if target.is_file():
            check_not_locked(target, f"{option} {path}", "it cannot be replaced", "it cannot be replaced")
    return path


def is_special(path) -> bool:
    """Whether ``path`` (followed through symlinks) is a device, a FIFO or a socket, told
    without opening it: a device reads as empty, which is of any kind (see :func:`holds`:
    ``/dev/null`` was replaced by the file written there), and a FIFO blocks the read. False
    when nothing is there (or a dangling symlink, whose target is created) or it cannot be
    looked at: whoever reads or writes it then says why."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def check_not_special(path: Path, subject: str, remedy: str = "choose another path"):
    """A :class:`ValueError` about ``subject`` (e.g. "--out r.pdf") if ``path`` is a device, a
    FIFO or a socket (:func:`is_special`). ``remedy`` says how to proceed."""
    if is_special(path):
        raise ValueError(f"{subject} exists and is not a regular file (a device, a FIFO or a socket); "
                         f"refusing to replace it ({remedy})")


# The inode flags chattr sets that stop a file being replaced (Linux's fs.h).
FS_IMMUTABLE_FL, FS_APPEND_FL = 0x10, 0x20
# FS_IOC_GETFLAGS, _IOR('f', 1, long), where ioctl numbers have the generic encoding: read
# (2 << 30), the argument's size, type, number. Elsewhere (powerpc, mips, sparc encode
# them otherwise) the flags are not read.
FS_IOC_GETFLAGS = ((2 << 30) | (struct.calcsize("l") << 16) | (ord("f") << 8) | 1
                   if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "aarch64") else None)


def inode_flags(path) -> int:
    """The inode flags (``lsattr``) of the file or folder ``path``; 0 where they cannot be
    read: not Linux on x86_64 or aarch64, a file system without them (ENOTTY), a file
    this process may not open for reading. Only a regular file or a folder is opened
    (not a FIFO or a device, where opening can block or act)."""
    if FS_IOC_GETFLAGS is None:
        return 0
    try:
        if not stat.S_ISREG(mode := os.stat(path).st_mode) and not stat.S_ISDIR(mode):
            return 0
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        flags = bytearray(struct.calcsize("l"))  # the kernel writes an int at its start
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags)
        return struct.unpack_from("I", flags)[0]
    except OSError:
        return 0
    finally:
        os.close(fd)


def check_not_locked(path: Path, subject: str, immutable_means: str, append_only_means: str):
    """A :class:`ValueError` about ``subject`` (e.g. "--out r.pdf") if the file or folder
    ``path`` is immutable or append-only (``chattr +i``, ``+a``): renaming a new file
    onto it or into it fails (EPERM, even for root), which would be found only after the
    work. ``immutable_means`` and ``append_only_means`` say what the flag stops."""
    flags = inode_flags(path)
    for flag, word, letter, means in ((FS_IMMUTABLE_FL, "immutable", "i", immutable_means),
                                      (FS_APPEND_FL, "append-only", "a", append_only_means)):
        if flags & flag:
            raise ValueError(f"{subject}: {path} is {word} (chattr +{letter}), so {means}; clear the flag with "
                             f"`chattr -{letter} {path}` (as root), or choose another path")


def check_name_lengths(text: str, option: str, folder=False):
    """A :class:`ValueError` naming ``option`` if a name in the path ``text`` is longer than
    :data:`NAME_MAX` bytes; checked before any look at the path, since Python's ``is_dir()``
    and ``exists()`` raise on such a name (``[Errno 36] File name too long``)."""
    parts = Path(text).parts
    for i, part in enumerate(parts, 1):
        _check_length(part, NAME_MAX, option, Path(text), "the file name" if i == len(parts) and not folder
                      else "a folder name in it")


def _check_length(name: str, limit: int, option: str, path: Path, what: str):
    """A :class:`ValueError` if ``name`` (``what`` in ``path``) is longer than ``limit`` bytes."""
    if len(os.fsencode(name)) > limit:
        raise ValueError(f"{option} {path}: {what} is {len(os.fsencode(name))} bytes long, over the {limit} a file "
                         "system allows (choose a shorter one)")


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, the file system of ``folder`` allows."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return NAME_MAX


def check_suffix(path, option: str, suffix: str, what: str) -> Path:
    """``path`` if it ends in ``suffix`` (any case): a file named for what it holds."""
    path = check_file_name(path, option)
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


def parse_json(text):
    """The JSON value in ``text`` (str or bytes), as :func:`json.loads` gives it; a
    :class:`ValueError` for anything that is not JSON. Every JSON file convlab reads is
    parsed here: one nested too deeply (``[[[[...]]]]`` 100000 deep) made the decoder raise
    RecursionError, a RuntimeError, which no caller took for a bad file (a traceback)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


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
            found = json_kind(parse_json(path.read_bytes()))
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
    ``.<name>.lock`` beside it (:func:`hidden_stem`; beside a symlink's target, where it
    is written: see :func:`write_target`), which holds the holder's process id and is
    removed at the end of the block, with the folders made for it if nothing was written
    in them. While it holds the claim, this process's writes of an output remove every
    temporary file left beside it (:func:`remove_abandoned_temporaries`). The lock
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
    lock = target.with_name(f"{hidden_stem(target.name)}.lock")
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
            place = _place(target)
            _claims.add(place)
            try:
                yield
            finally:
                _claims.discard(place)
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


# The files this process holds the claim of (sole_writer), as (device, inode of the
# folder, name): a spelling of the path through other links still matches.
_claims: set[tuple[int, int, str]] = set()


def _place(target: Path) -> tuple[int, int, str] | None:
    """``target``'s place in :data:`_claims`; None if its folder is not there."""
    try:
        folder = os.stat(target.parent)
    except OSError:
        return None
    return folder.st_dev, folder.st_ino, target.name


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
