"""Training checkpoints in HDF5: everything needed to continue a run exactly.

One file per run, rewritten atomically after every epoch (see :func:`save_checkpoint`)::

    /                      attributes: format, format_version, epoch, network, rng, and the run's
                           settings (convlab.settings.RECORDED): model, backend, backends (each
                           conv layer's, auto's picks resolved), dataset, epochs, batch_size,
                           lr, lr_schedule, momentum, seed, train_size, test_size
                           (no model: the reference network, as before there were others)
    /weights/<name>        one float32 dataset per parameter, named as in
                           ``Sequential.named_parameters()`` ("0.w", "0.b", "3.w", "3.b")
    /optimizer/velocity/<name>   the SGD momentum buffers, same names and shapes
    /metrics               one row per finished epoch (a compound dataset, fields of EpochMetrics)
    /backends              the backend that computed each finished epoch (strings, one per row
                           of /metrics: one name, or one per conv layer "fft,winograd", auto's
                           picks resolved; a run resumed with another backend has several). Older
                           checkpoints lack it: only their last epoch's backend is known.
    /layer_times           (optional) JSON text: each layer's mean forward and backward ms per
                           batch in the last epoch, [{"layer", "backend", "forward_ms", "backward_ms"}]

The only randomness in training is the weight initialisation (done once, captured by the
weights) and the batch order, a pure function of (seed, epoch) (``training.epoch_order``),
so the seed is the whole RNG state. ``h5dump -A ck.h5`` shows the attributes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shlex
import signal
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from convlab.checks import is_number
from convlab.files import atomic_path, check_file_name, parse_json
from convlab.models import check_state
from convlab.training import EpochMetrics

FORMAT = "convlab-checkpoint"
FORMAT_VERSION = 1
RNG_NOTE = "batch order = numpy.random.default_rng([seed, epoch]).permutation(train_size)"
# What resuming and evaluating cannot do without (a setting added later, such as
# lr_schedule or model, may be missing from older checkpoints).
REQUIRED_SETTINGS = ("epoch", "epochs", "backend", "network", "dataset", "batch_size", "lr", "momentum", "seed",
                     "train_size", "test_size")
# The type of each root attribute convlab reads (missing ones are checked by REQUIRED_SETTINGS):
# another type (text where a number belongs, an array) would fail far from the read, as
# "can only concatenate str (not "int") to str", or be blamed on the user's option on resume.
ATTRIBUTE_TYPES = {
    **dict.fromkeys(("format_version", "epoch", "epochs", "batch_size", "seed", "train_size", "test_size"),
                    (int, "a whole number (0 or more)")),
    **dict.fromkeys(("lr", "momentum"), ((int, float), "a finite number (0 or more)")),
    **dict.fromkeys(("model", "backend", "backends", "dataset", "lr_schedule", "network"), (str, "text")),
}
METRICS_DTYPE = np.dtype([(f.name, np.int64 if f.type in ("int", int) else np.float64)
                          for f in dataclasses.fields(EpochMetrics)])


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, written or used with this network."""


@dataclass
class Checkpoint:
    """What a checkpoint file holds; ``settings`` are its root attributes (see the module doc)."""

    path: Path
    settings: dict
    weights: dict[str, np.ndarray]
    velocity: dict[str, np.ndarray]
    history: list[EpochMetrics]
    backends: list = None
    layer_times: list[dict] | None = None

    def __post_init__(self):
        if self.backends is None:  # not recorded: only the backend of the last save is known
            self.backends = [None] * (len(self.history) - 1) + [self.settings["backend"]]
        self.backends = tuners_resolved(self.backends, self.settings)

    def trained_with(self) -> str:
        """The backends that computed the run: "im2col" (or one per conv layer,
        "fft,winograd"), or with the epochs of each when a resumed run changed them."""
        ranges = epoch_ranges(self.backends)
        if len(ranges) == 1:
            asked = self.settings.get("backends") or self.settings["backend"]
            return ranges[0][0] or backends_record(str(asked).split(","))
        return ", ".join(f"{name or 'not recorded'} (epoch{'s' * (first != last)} "
                         f"{first if first == last else f'{first}-{last}'})" for name, first, last in ranges)

    @property
    def epoch(self) -> int:
        """The number of finished epochs."""
        return self.settings["epoch"]

    def restore(self, model, optimizer=None):
        """Copy the weights (and the momentum buffers) into ``model`` (and ``optimizer``).

        Everything is checked before anything is copied (the weights, then the momentum
        buffers, with :func:`convlab.models.check_state`, as ``load_state_dict`` does): an
        optimizer of another network used to get the weights into the model first and then
        fail with numpy's "could not broadcast", and a (1,) buffer was broadcast over its
        parameter's whole buffer. Refused, the model and the optimizer stay as they were.
        """
        try:
            check_state(self.weights, model.state_dict())
        except ValueError as e:
            raise CheckpointError(f"{self.path} is a checkpoint of a different network: {e}; "
                                  f"it holds {self.settings['network']!r}") from None
        if optimizer is not None:
            try:
                check_state(self.velocity, optimizer.velocity, "momentum buffer", "this optimizer")
            except ValueError as e:
                raise CheckpointError(f"{self.path}'s momentum buffers do not fit this optimizer: {e}; the "
                                      f"checkpoint is damaged, or of another network than the optimizer's "
                                      f"(it holds {self.settings['network']!r})") from None
        model.load_state_dict(self.weights)  # checks the weights again (a pass over them), then copies
        if optimizer is not None:
            for name, buffer in optimizer.velocity.items():
                buffer[...] = self.velocity[name]


def backends_record(names) -> str:
    """How a run records the backends of its conv layers ``names`` (in order): one name if
    they are all the same, else comma-separated ("fft,winograd")."""
    names = list(names)
    return names[0] if len(set(names)) == 1 else ",".join(names)


def tuners_resolved(backends: list, settings: dict) -> list:
    """Per-epoch records as convlab writes them since 0.8.0, the backends that ran: older
    files recorded the ``--backend`` asked for, such as "auto", whose picks only the file's
    ``backends`` setting knows (the last session's, one per conv layer). They stand in for
    the trailing epochs that name a tuner (all of them, back to the last epoch that names
    another backend: consecutive sessions on "auto" cannot be told apart)."""
    from convlab.registry import list_backends
    from convlab.timing import is_tuner

    ran, last = settings.get("backends"), backends[-1] if backends else None
    installed = set(list_backends())
    if (not isinstance(ran, str) or not ran or last is None
            or not any(name in installed and is_tuner(name) for name in last.split(","))):
        return backends
    ran = backends_record(ran.split(","))
    resolved, i = list(backends), len(backends) - 1
    while i >= 0 and resolved[i] == last:
        resolved[i], i = ran, i - 1
    return resolved


def epoch_ranges(backends: list) -> list[tuple[str | None, int, int]]:
    """Runs of equal names in ``backends`` (one per epoch, from epoch 1): (name, first, last)."""
    runs = []
    for epoch, name in enumerate(backends, 1):
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1], epoch)
        else:
            runs.append((name, epoch, epoch))
    return runs


def save_checkpoint(path, model, optimizer, history, settings, backends=None, layer_times=None):
    """Write a checkpoint of ``model`` and ``optimizer`` after ``history[-1].epoch`` epochs.

    ``settings`` is the run's record (``TrainSettings.record()``: model, backend, backends,
    dataset, lr, lr_schedule, momentum, batch_size, seed, train_size, test_size and target
    epochs); ``backends``
    the backend that computed each epoch of ``history`` (None: ``settings["backend"]`` for
    all; an entry None: not known); ``layer_times`` (rows as in the module doc) are kept
    beside the settings, not among them (they are measurements). Atomic
    (:func:`convlab.files.atomic_path`): a reader (or a crash at any moment) sees the
    previous checkpoint or this one, and the temporary files of killed writers go first.
    """
    path = checkpoint_path(path)
    attrs = dict(settings, format=FORMAT, format_version=FORMAT_VERSION, epoch=history[-1].epoch,
                 network=describe_network(model), rng=RNG_NOTE)
    try:
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.attrs.update(attrs)
            for name, param, _ in model.named_parameters():
                f.create_dataset(f"weights/{name}", data=param)
                f.create_dataset(f"optimizer/velocity/{name}", data=optimizer.velocity[name])
            f["optimizer"].attrs.update(name=type(optimizer).__name__, lr=optimizer.lr, momentum=optimizer.momentum)
            rows = [dataclasses.astuple(m) for m in history]
            f.create_dataset("metrics", data=np.array(rows, dtype=METRICS_DTYPE))
            backends = [settings["backend"]] * len(history) if backends is None else backends
            f.create_dataset("backends", data=[name or "" for name in backends], dtype=h5py.string_dtype())
            if layer_times is not None:
                f.create_dataset("layer_times", data=json.dumps(layer_times))
    except (OSError, RuntimeError) as e:
        reason = write_failure(e)
        if reason is None:  # not the system refusing a write: a bug, shown with its traceback
            raise
        raise CheckpointError(f"cannot write checkpoint {path}: {reason}") from None


HDF5_ERRNO = re.compile(r"errno = (\d+)")  # in HDF5's report of a failed system call


def write_failure(error: Exception) -> str | None:
    """Why a checkpoint could not be written, in one line: the errno's words ("No space
    left on device"); None if ``error`` is not the system refusing a write.

    h5py's OSError for a failed write carries the errno, but its text is HDF5's report of
    the call, over two lines ("Can't close file (file write failed: time = Wed Dec  2
    15:50:14 2026\\n, filename = ..., errno = 28, ..., buf = 0x55a5ea634290, ...)"), which
    would break the one-line error. A write past a file-size limit (``ulimit -f``, FAT32's
    4 GiB) fails as an OSError too, but the close that follows, which cannot extend the
    file either, replaces it with a RuntimeError ("Can't decrement id ref count (unable to
    extend file properly, errno = 27, error message = 'File too large')"), whose errno is
    only in its text. An OSError without an errno: its text's first line."""
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    found = HDF5_ERRNO.search(str(error))
    if found:
        return os.strerror(int(found[1]))
    return str(error).partition("\n")[0] if isinstance(error, OSError) else None


def checkpoint_path(value) -> Path:
    """A checkpoint path as given on the command line, where fire turns ``--checkpoint``
    without a value into True and ``7`` into the number 7."""
    if isinstance(value, bool):
        raise CheckpointError(f"a checkpoint needs a file path (such as --checkpoint run.h5), got {value}")
    if not str(value).strip():  # Path("") is ".", which would be reported as a folder named "."
        raise CheckpointError(f"a checkpoint needs a file path (such as --checkpoint run.h5), got an empty one "
                              f"({str(value)!r})")
    return Path(str(value))


def describe_network(model) -> str:
    """One line naming each layer, e.g. "Conv2D(1, 32, ...) -> ReLU -> Flatten -> Dense(18432, 10)"."""
    return " -> ".join(type(layer).__name__ if type(layer).__repr__ is object.__repr__ else repr(layer)
                       for layer in model.layers)


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, or raise :class:`CheckpointError`
    saying what is wrong with the file. The file is only read, never modified."""
    path = checkpoint_path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:  # h5py's "Unable to determine if file is accessible as hdf5" says less than errno
        with open(path, "rb"):
            pass
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if not is_hdf5:
        raise CheckpointError(f"{path} is not an HDF5 file; a checkpoint is the HDF5 file written by "
                              "`convlab train --checkpoint PATH`")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise CheckpointError(f"{path} is an HDF5 file but not a convlab checkpoint (no attribute "
                                      f"format={FORMAT!r}); a checkpoint is written by "
                                      "`convlab train --checkpoint PATH`")
            check_attribute_types(path, f.attrs)
            version = f.attrs["format_version"]
            if version > FORMAT_VERSION:
                raise CheckpointError(f"{path} has checkpoint format version {version}; this convlab reads "
                                      f"versions up to {FORMAT_VERSION} (upgrade convlab)")
            missing = [key for key in REQUIRED_SETTINGS if key not in f.attrs]
            if missing:
                raise CheckpointError(f"{path} is a damaged checkpoint: attribute(s) {', '.join(missing)} missing")
            settings = {key: python_value(value) for key, value in f.attrs.items()}
            weights = read_group(f, "weights")
            velocity = read_group(f, "optimizer/velocity")
            history = [EpochMetrics(*(python_value(v) for v in row)) for row in f["metrics"][()]]
            backends = [name.decode() or None for name in f["backends"][()]] if "backends" in f else None
            layer_times = parse_json(f["layer_times"][()]) if "layer_times" in f else None
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is a damaged or truncated checkpoint (cannot read it: {e})") from None
    if [m.epoch for m in history] != list(range(1, settings["epoch"] + 1)):
        raise CheckpointError(f"{path} is a damaged checkpoint: its metrics are for epochs "
                              f"{[m.epoch for m in history]}, not 1 to {settings['epoch']}")
    if set(velocity) != set(weights):
        raise CheckpointError(f"{path} is a damaged checkpoint: momentum buffers {sorted(velocity)} "
                              f"do not match the weights {sorted(weights)}")
    for name, weight in weights.items():  # numpy would broadcast a (1,) buffer over its parameter's
        if velocity[name].shape != weight.shape:
            raise CheckpointError(f"{path} is a damaged checkpoint: optimizer/velocity/{name} has shape "
                                  f"{velocity[name].shape}, but weights/{name} has {weight.shape} (a momentum "
                                  f"buffer has its parameter's shape)")
    for group, arrays in (("weights", weights), ("optimizer/velocity", velocity)):
        for name, array in arrays.items():
            if not np.isfinite(array).all():
                raise CheckpointError(f"{path} is a damaged checkpoint: {group}/{name} holds NaN or infinite values")
    if layer_times is not None and (problem := layer_times_problem(layer_times)):
        raise CheckpointError(f"{path} is a damaged checkpoint: its layer_times {problem}")
    if backends is not None and len(backends) != len(history):
        raise CheckpointError(f"{path} is a damaged checkpoint: {len(backends)} backend names for "
                              f"{len(history)} epochs")
    return Checkpoint(path, settings, weights, velocity, history, backends, layer_times)


def check_attribute_types(path, attrs):
    """Raise :class:`CheckpointError` for a root attribute of ``attrs`` whose value is not of
    its type in :data:`ATTRIBUTE_TYPES` (a bool is not a number here), or a negative or
    non-finite number (an epoch count, a size, a seed, lr or momentum never is)."""
    for key in ATTRIBUTE_TYPES:
        if key in attrs and (problem := setting_problem(key, python_value(attrs[key]))):
            raise CheckpointError(f"{path} is a damaged checkpoint: attribute {key} {problem}")


def setting_problem(key: str, value) -> str | None:
    """What is wrong with ``value`` as the recorded setting ``key`` (its type in
    :data:`ATTRIBUTE_TYPES`; a bool is not a number, a number is finite and not negative), as
    "is 'x', not a whole number (0 or more)"; None if nothing is, or ``key`` is not one of
    them. A checkpoint's attributes and a metrics file's "settings" are the same record."""
    if key not in ATTRIBUTE_TYPES:
        return None
    types, what = ATTRIBUTE_TYPES[key]
    valid = isinstance(value, types) and not isinstance(value, bool)
    if valid and types is not str:
        # A NaN or negative lr was blamed on --lr on resume, an option the user never typed.
        valid = math.isfinite(value) and value >= 0
    return None if valid else f"is {brief(value)}, not {what}"


def brief(value) -> str:
    """``repr(value)``, cut to 40 characters: what a refusal quotes of a file's bad value."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def rows_problem(rows, fields) -> str | None:
    """What is wrong with ``rows`` as a list of JSON objects holding ``fields``, each
    (key, test, what it must be), as "row 2's "pass" is 1, not text"; None if nothing is."""
    if not isinstance(rows, list):
        return f"is {brief(rows)}, not a list of rows"
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            return f"row {i} is {brief(row)}, not an object"
        for key, ok, what in fields:
            if key not in row:
                return f'row {i} has no "{key}"'
            if not ok(row[key]):
                return f'row {i}\'s "{key}" is {brief(row[key])}, not {what}'
    return None


# A layer_times row (the module doc), as a checkpoint or metrics file holds it.
LAYER_TIME_FIELDS = (("layer", lambda v: isinstance(v, str), "text"),
                     ("backend", lambda v: v is None or isinstance(v, str), "text or null"),
                     *((key, is_number, "a finite number of milliseconds (0 or more)")
                       for key in ("forward_ms", "backward_ms")))


def layer_times_problem(rows) -> str | None:
    """What is wrong with ``rows`` as recorded layer times (:data:`LAYER_TIME_FIELDS`), or None."""
    return rows_problem(rows, LAYER_TIME_FIELDS)


def read_group(f, group) -> dict[str, np.ndarray]:
    """Every dataset of ``f[group]`` by name, as stored (float32 as trained)."""
    arrays = {}
    for name, dataset in f[group].items():
        if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind != "f":
            raise CheckpointError(f"{f.filename} is a damaged checkpoint: {group}/{name} is not an array of floats")
        arrays[name] = dataset[()]
    return arrays


def python_value(value):
    """An HDF5 attribute or field as a plain Python int, float or str."""
    return value.item() if isinstance(value, np.generic) else value


def check_new_checkpoint_path(path, resume=None):
    """Refuse a ``--checkpoint`` path that would overwrite anything but the run being resumed."""
    if path is None:
        return
    checkpoint_path(path)  # a path, not fire's True for a bare --checkpoint
    path = check_file_name(path, "--checkpoint")  # as typed: Path() drops a trailing /
    if path.exists() and (resume is None or not path.samefile(resume)):
        raise CheckpointError(f"--checkpoint {path} already exists; refusing to overwrite it (continue the run "
                              f"saved there with --resume {path}, or choose another path)")


def checkpoint_epoch(path) -> int:
    """The number of finished epochs the checkpoint ``path`` records: its root attribute
    ``epoch`` alone, not the weights, metrics and checks :func:`load_checkpoint` reads.
    Raises OSError or KeyError on a file that cannot be read (opened first by Python: its
    errno says why in fewer words than h5py's "unable to open file: name = ...")."""
    with open(path, "rb") as file, h5py.File(file, "r") as f:
        return int(f.attrs["epoch"])


def interrupted_message(checkpoint, resume, options) -> str:
    """What an interrupted ``convlab train`` says: which checkpoint survives and the exact
    command that continues from it. ``options`` are extra ``--name value`` pairs (None: left out).

    Never raises: it is said while another error (the backend's, the failed save's, the
    Ctrl-C) is on its way out, and a failure here would replace it. A checkpoint that cannot
    be read (damaged, or in a folder that cannot be searched any more) is said to be so."""
    if checkpoint is None:
        return "nothing to resume from (train with --checkpoint PATH to save a checkpoint after every epoch)"
    try:
        latest = Path(checkpoint) if Path(checkpoint).exists() else resume
    except OSError:  # cannot look (Python 3.11's exists() raises EACCES): reading it below says why
        latest = Path(checkpoint)
    if latest is None:
        return f"no epoch had finished, so {checkpoint} was not written; start the run again"
    if Path(latest) != Path(checkpoint):
        options = dict(options, checkpoint=checkpoint)
    words = ["convlab", "train", "--resume", str(latest)]
    for key, value in options.items():
        if value is not None:
            # A yes/no option as the user types it (`--progress no`), which fire reads as False too.
            words += [f"--{key.replace('_', '-')}", ("yes" if value else "no") if isinstance(value, bool) else str(value)]
    try:
        held = f"{latest} holds the run after epoch {checkpoint_epoch(latest)}"
    except Exception as e:  # anything: see the docstring
        held = f"{latest} could not be read ({getattr(e, 'strerror', None) or e}), so which epoch it holds is not known"
    return f"{held}; resume with: " + " ".join(map(shlex.quote, words))


class Terminated(KeyboardInterrupt):
    """A stop asked for by SIGTERM (``kill``, ``timeout``, systemd, job schedulers) rather
    than Ctrl-C; the process then exits with 128 + :attr:`signum`."""

    signum = signal.SIGTERM


def raise_terminated(signum, frame):
    """SIGTERM's handler in ``convlab`` (see ``cli.main``): raise :class:`Terminated`
    wherever the program is, as Python's own SIGINT handler raises KeyboardInterrupt."""
    raise Terminated


# The signals that ask for a stop, the handler under which each is ours to take over (any
# other: ignored, or someone else's), and what the stop raises.
STOP_SIGNALS = {signal.SIGINT: (signal.default_int_handler, KeyboardInterrupt),
                signal.SIGTERM: (raise_terminated, Terminated)}


# Set by the command line (convlab.cli.main), whose process ends with a stop: the stop
# signals then stay ignored after ctrl_c_at_safe_points's block, to the exit.
STOP_ENDS_PROCESS = False


def ignore_stop_signals(signums=tuple(STOP_SIGNALS)):
    """Ignore further ``signums`` (SIGINT, SIGTERM): a stop is under way. Pressed again while
    the run cleans up (its lock files, the interrupted line) or exits, Ctrl-C raised a second
    KeyboardInterrupt wherever it landed: in an ``atexit`` callback, printed as "Exception
    ignored in atexit callback" and a traceback after the ``convlab: interrupted`` line."""
    for signum in signums:
        signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def ctrl_c_at_safe_points():
    """Within the block, a first Ctrl-C (SIGINT) or SIGTERM only asks to stop; the yielded
    ``check()`` raises KeyboardInterrupt (:class:`Terminated` for SIGTERM) at its next
    call. Python would raise it wherever the program happens to be: halfway through an
    HDF5 write, or inside a weakref callback, where it is printed and swallowed, and
    training goes on; SIGTERM would end the process there and then. A second signal of the
    same kind, before that call, acts at once. Once the stop is raised, further signals
    are ignored (:func:`ignore_stop_signals`) to the block's end, and, where the process
    ends with the stop (:data:`STOP_ENDS_PROCESS`, the command line), beyond it. Where a
    signal is ignored (SIGINT in a background job) or handled by someone else, nothing
    changes for it."""
    requested, stopped = [], []
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    ours = [signum for signum, (default, _) in STOP_SIGNALS.items() if previous[signum] is default]

    def stop(signum):
        stopped.append(signum)
        ignore_stop_signals(ours)
        raise STOP_SIGNALS[signum][1]

    def request(signum, frame):
        requested.append(signum)
        signal.signal(signum, act_now)

    def act_now(signum, frame):
        stop(signum)

    def check():
        if requested:
            stop(requested[0])

    for signum in ours:
        signal.signal(signum, request)
    try:
        yield check
    finally:
        if not (stopped and STOP_ENDS_PROCESS):
            for signum in ours:
                signal.signal(signum, previous[signum])
