"""How much memory a run can still take before it is ended or refused: the machine's
(``MemAvailable`` and ``SwapFree`` in /proc/meminfo), in a container what its cgroup's memory
limit leaves (:func:`cgroup_headroom`), and under a process limit (``ulimit -v``, ``ulimit -d``)
what that leaves of the process's address space (:func:`rlimit_headroom`).
:func:`convlab.settings.check_memory` compares it with what a network needs
(:meth:`convlab.models.Sequential.least_memory`); :func:`out_of_room` says which limit a
failed allocation or thread start ran into.

Linux only: where these files cannot be read, the headroom is not known (None), never a guess.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import NamedTuple

try:
    import resource
except ImportError:  # not a Unix: no process limits to read
    resource = None

# The process limits read, by the shell command that sets them: (resource's name, the
# /proc/self/status field that counts what the process takes of it, what it limits).
# RLIMIT_AS counts every mapping, reserved or touched (VmSize: thread stacks, malloc's
# arenas, a buffer BLAS maps and never fills); RLIMIT_DATA, since Linux 4.7, the private
# writable ones (VmData: thread stacks and buffers too, but not the arenas' reservations).
RLIMITS = {"ulimit -v": ("RLIMIT_AS", "VmSize", "address-space"),
           "ulimit -d": ("RLIMIT_DATA", "VmData", "data-segment")}


class Headroom(NamedTuple):
    """Memory a run can still take (:func:`available_memory`), and what sets it."""

    nbytes: int
    limit: int | None = None  # the limit that sets it, in bytes; None: the machine's memory
    kind: str = "memory"  # the machine's "memory", a container's "cgroup", or a key of RLIMITS
    in_use: int = 0  # under a process limit: what the process already takes of it
    reserved: int = 0  # under a process limit: what the run's threads will take of it (see available_memory)


def available_memory(root="/", limits=None, reserved=0) -> Headroom | None:
    """The least of: what the kernel can still give this process before its OOM killer ends
    it, the machine's ``MemAvailable`` (in /proc/meminfo; it counts the page cache the kernel
    can drop) or, if less, the headroom under its cgroup's memory limit
    (:func:`cgroup_headroom`: a container's), plus ``SwapFree`` (slow, but a run that swaps
    still finishes); and what a process limit leaves (:func:`rlimit_headroom`, ``limits``
    as :func:`process_limits`, less ``reserved`` bytes the run's threads will map: they are
    address space, not memory, so only a process limit counts them). None where none can be
    read. ``root`` is where / is (a test gives a made-up tree). The memory this process freed
    but kept is given back first, to be counted as available."""
    from convlab.allocator import give_back_freed_memory

    give_back_freed_memory()
    meminfo = stat_fields(Path(root, "proc/meminfo"), ("MemAvailable", "SwapFree"))  # in kB
    machine = meminfo["MemAvailable"] * 1024 if "MemAvailable" in meminfo else None
    swap, container = meminfo.get("SwapFree", 0) * 1024, cgroup_headroom(root)
    if container is not None and (machine is None or container[0] < machine):
        memory = Headroom(container[0] + swap, container[1], "cgroup")
    else:
        memory = None if machine is None else Headroom(machine + swap)
    process = rlimit_headroom(root, process_limits() if limits is None else limits, reserved)
    return min(filter(None, (memory, process)), key=lambda headroom: headroom.nbytes, default=None)


def process_limits() -> dict[str, int]:
    """The process limits set on this process (soft, the ones that bind), in bytes, by the
    :data:`RLIMITS` key that names them: {} where none is set."""
    if resource is None:
        return {}
    limits = {}
    for kind, (name, _, _) in RLIMITS.items():
        soft = resource.getrlimit(getattr(resource, name))[0]
        if soft != resource.RLIM_INFINITY:
            limits[kind] = soft
    return limits


def rlimit_headroom(root, limits: dict[str, int], reserved=0) -> Headroom | None:
    """The least headroom under the process limits ``limits`` ({kind: bytes}, as
    :func:`process_limits`): each limit less what the process takes of it
    (``/proc/self/status`` under ``root``) and less ``reserved``. A kernel that refuses a
    mapping beyond the limit makes it a MemoryError, a thread that cannot start, or a
    native library's abort, however much memory is free. None where none is set or what
    the process takes cannot be read."""
    if not limits:
        return None
    used = taken_of_limits(root)
    found = [Headroom(max(0, limit - used[kind] - reserved), limit, kind, used[kind], reserved)
             for kind, limit in limits.items() if kind in used]
    return min(found, key=lambda headroom: headroom.nbytes, default=None)


def taken_of_limits(root="/") -> dict[str, int]:
    """Bytes this process takes of what each of :data:`RLIMITS` counts ({kind: bytes}), from
    ``/proc/self/status`` under ``root``; a kind whose field cannot be read is left out."""
    status = stat_fields(Path(root, "proc/self/status"), {field for _, field, _ in RLIMITS.values()})  # in kB
    return {kind: status[field] * 1024 for kind, (_, field, _) in RLIMITS.items() if field in status}


# The message of the RuntimeError Python raises when the kernel refuses a new thread (its stack).
THREAD_NOT_STARTED = "can't start new thread"


def out_of_room(error: MemoryError | RuntimeError) -> str:
    """The one line that says what ``error`` is, an allocation (MemoryError) or a thread
    start (RuntimeError :data:`THREAD_NOT_STARTED`) the system refused, and the process
    limit it ran into (:func:`limits_note`)."""
    if isinstance(error, MemoryError):
        return f"out of memory: {str(error) or 'an allocation failed'}{limits_note()}"
    return f"a thread could not start ({error}){limits_note()}"


def limits_note() -> str:
    """The end of the message of an allocation or a thread start that failed: the process
    limits set, each with what the process takes of it now, and that raising them is the way
    out (under a limit it is that, not the machine's memory, which ran out); "" where none is set."""
    limits = process_limits()
    if not limits:
        return ""
    used = taken_of_limits()
    said = [f"{kind} {limit // 1024} (the {RLIMITS[kind][2]} limit, {in_units(limit)}"
            + (f", {in_units(used[kind])} of it in use)" if kind in used else ")")
            for kind, limit in limits.items()]
    return f"; this process runs under {' and '.join(said)}: raise it"


def in_units(nbytes: int) -> str:
    """``nbytes`` for a message: in GiB from 1 GiB, else in MiB."""
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def stat_fields(path, names) -> dict[str, int]:
    """The fields in ``names`` that the file ``path`` of ``name value`` lines has (/proc/meminfo's
    ``Name:  value kB``, a cgroup's memory.stat); none where it cannot be read."""
    fields = {}
    try:
        with open(path) as file:
            for line in file:
                words = line.split()
                if len(words) >= 2 and words[0].rstrip(":") in names:
                    fields[words[0].rstrip(":")] = int(words[1])
    except (OSError, ValueError):
        return {}
    return fields


# Per cgroup version: the files of the memory limit and usage, and the page cache's fields of
# memory.stat (v1's total_*: of the cgroup and those below it, as its usage; v2's are so).
CGROUP_FILES = {"v2": ("memory.max", "memory.current", ("active_file", "inactive_file")),
                "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes", ("total_active_file", "total_inactive_file"))}


def cgroup_headroom(root="/") -> tuple[int, int] | None:
    """(bytes, limit): the least headroom under a memory limit of this process's cgroup or of
    one above it (a limit on a parent binds a nested cgroup too), and that limit; None where
    none is set or none could be read (never a guess: a file that cannot be read adds nothing).

    The cgroups are those /proc/self/cgroup names: v2's ``0::/path`` (read under
    /sys/fs/cgroup) and v1's memory controller's ``N:memory:/path`` (under
    /sys/fs/cgroup/memory). Every level up to the mount's root is read: in a container
    without its own cgroup namespace the path is the host's, and the container's cgroup is
    the mount's root. A level's headroom is its limit (v2 ``memory.max``, where ``max`` is
    none; v1 ``memory.limit_in_bytes``) less its usage (``memory.current``,
    ``memory.usage_in_bytes``), plus its page cache (``active_file`` and ``inactive_file`` of
    ``memory.stat``): the usage counts the page cache, which the kernel reclaims (the active
    list too, aged onto the inactive one) before its OOM killer ends a process there, as
    ``MemAvailable`` counts the machine's. So a cgroup that has read big files is not taken
    as full; a level whose memory.stat cannot be read counts as not known, not as full."""
    try:
        with open(Path(root, "proc/self/cgroup")) as file:
            lines = [line.rstrip("\n").split(":", 2) for line in file]
    except (OSError, ValueError):  # ValueError: not text
        return None
    found = []
    for hierarchy_id, controllers, path in (line for line in lines if len(line) == 3):
        if hierarchy_id == "0" and controllers == "":
            version, mount = "v2", Path(root, "sys/fs/cgroup")
        elif "memory" in controllers.split(","):
            version, mount = "v1", Path(root, "sys/fs/cgroup", controllers)
        else:
            continue
        cgroup = PurePosixPath(path)
        if ".." in cgroup.parts:  # outside this process's cgroup namespace: not under the mount
            continue
        for level in (cgroup, *cgroup.parents):
            headroom = cgroup_level_headroom(mount / str(level).lstrip("/"), *CGROUP_FILES[version])
            if headroom is not None:
                found.append(headroom)
    return min(found, default=None)


def cgroup_level_headroom(folder: Path, limit_file, usage_file, cache_fields) -> tuple[int, int] | None:
    """(bytes, limit) of the cgroup ``folder`` (see :func:`cgroup_headroom`), or None."""
    try:
        limit = (folder / limit_file).read_text().strip()
        if limit == "max":
            return None
        limit, usage = int(limit), int((folder / usage_file).read_text())
    except (OSError, ValueError):
        return None
    cache = stat_fields(folder / "memory.stat", cache_fields)
    if len(cache) != len(cache_fields):
        return None
    return max(0, limit - usage + sum(cache.values())), limit
