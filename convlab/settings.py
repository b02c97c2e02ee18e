"""The settings of one ``convlab train`` run: one validated object.

The command line, the checkpoint, the metrics file and the report all read the run's
settings from a :class:`TrainSettings`; every value is checked once, in ``__post_init__``,
with the message the user sees (a :class:`UsageError` becomes one ``convlab: error:``
line). A value left out (None) takes its default, or on ``--resume`` the checkpoint's
(:meth:`TrainSettings.from_options`).

Fields are of two kinds:

* what the run *is* (:data:`RECORDED`): written into its checkpoint and metrics file, so a
  resumed run, ``evaluate``, ``predict`` and ``report`` know it;
* where it reads and writes, what it shows and whether its memory is checked
  (``data_dir``, ``metrics_out``, ``checkpoint``, ``resume``, ``progress``,
  ``memory_check``): not recorded, free to change on resume.
"""

from __future__ import annotations

import contextlib
import copy
import numbers
from dataclasses import dataclass

from convlab.headroom import RLIMITS, available_memory, in_units
from convlab.optimizers import LR_SCHEDULES


class UsageError(ValueError):
    """A setting or command-line argument that is not allowed, said as the option that set it."""


# What a run is: stored in its checkpoint and metrics file. ``backends`` is derived (the
# backend each conv layer ran on, auto's picks resolved), so it is not merged on resume.
RECORDED = ("model", "backend", "backends", "dataset", "epochs", "batch_size", "lr", "lr_schedule", "momentum",
            "seed", "train_size", "test_size")
# Settings a resumed run must keep: changing any of them would make the continuation a
# different run than the one the checkpoint started (the weights are a function of them).
FIXED_ON_RESUME = ("dataset", "batch_size", "lr", "lr_schedule", "momentum", "seed", "train_size", "test_size")


# An integer a checkpoint records is an HDF5 attribute of at most 64 bits (h5py stores
# 2^63 and up as unsigned): one beyond 2^64 - 1 has no HDF5 type, and its save would fail
# only after the first epoch had been trained.
RECORDABLE_INT_LIMIT = 2**64


def positive_int(name, value, recorded=False):
    """``value`` as an int, if it is a whole number of at least 1; ``recorded`` (a setting
    a checkpoint records, :data:`RECORDED`): also below :data:`RECORDABLE_INT_LIMIT`."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise UsageError(f"--{name} must be a positive whole number, got {value!r}")
    if recorded and value >= RECORDABLE_INT_LIMIT:
        raise UsageError(f"--{name} must be a whole number from 1 to 2^64 - 1 (what a checkpoint can record), "
                         f"got {value!r}")
    return int(value)


def positive_float(name, value, at_most=None, limit_note=""):
    """``value`` as a float, if it is a finite positive number; with ``at_most``, also no
    more than that (said with ``limit_note``, why, in the message)."""
    limit = float("inf") if at_most is None else at_most
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 < value < float("inf") or value > limit:
        bound = "" if at_most is None else f" up to {at_most:g}{limit_note}"
        raise UsageError(f"--{name} must be a positive number{bound}, got {value!r}")
    return float(value)


def one_of(name, value, allowed) -> str:
    """``value``, the option ``--name``'s one choice (spaces around it dropped), if it is
    one of ``allowed``: a single name, not a comma-separated list of them."""
    choice = str(value).strip()
    if choice not in allowed:
        raise UsageError(f"--{name} takes one of: {', '.join(allowed)} (got {value!r})")
    return choice


def subset_size(name, value, available):
    """``value`` images of a split of ``available`` (None: all of them)."""
    if value is None:
        return available
    value = positive_int(name, value)
    if value > available:
        raise UsageError(f"--{name} is {value} but the data set has only {available} images")
    return value


def option(field: str) -> str:
    return "--" + field.replace("_", "-")


@dataclass(frozen=True)
class TrainSettings:
    """One training run's settings, checked and normalised on construction.

    ``model`` is a registered network's name or a spec string (recorded normalised).
    ``backend`` is one backend name for every conv layer, or one per conv layer,
    comma-separated (``auto`` times each layer's own shape); each layer's backend must
    support its layer's problem. ``backends`` is what each conv layer ended up on (set when
    training starts, :meth:`with_backends`). ``train_size``/``test_size`` None mean the
    whole split; :meth:`with_data_sizes` makes them the numbers of images used.

    A network whose training step, or evaluation of the test images after an epoch, cannot
    fit in the memory available is refused (:func:`check_memory`) when the settings are
    made, unless ``memory_check`` is False (the user knows more will be there); not their
    copies made during the run (:meth:`with_backends`, :meth:`with_data_sizes`).
    """

    model: str = "reference"
    backend: str = "im2col"
    backends: str | None = None
    dataset: str = "mnist"
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.02
    lr_schedule: str = "cosine"
    momentum: float = 0.9
    seed: int = 0
    train_size: int | None = None
    test_size: int | None = None
    data_dir: str | None = None
    metrics_out: str | None = None
    checkpoint: str | None = None
    resume: str | None = None
    progress: bool = True
    memory_check: bool = True

    def __post_init__(self):
        from convlab.data import DATASETS, held_bytes, split_sizes
        from convlab.models import get_model
        from convlab.registry import get_backend
        from convlab.training import evaluation_batch_size

        model = get_model(self.model)
        backend = ",".join(get_backend(name).name for name in backend_names(self.backend))
        normalised = dict(
            model=model.name,
            backend=backend,
            epochs=positive_int("epochs", self.epochs, recorded=True),
            batch_size=positive_int("batch-size", self.batch_size, recorded=True),
            lr=positive_float("lr", self.lr),
            lr_schedule=one_of("lr-schedule", self.lr_schedule, LR_SCHEDULES),
            dataset=one_of("dataset", self.dataset, tuple(DATASETS)),
        )
        momentum = self.momentum
        if not isinstance(momentum, numbers.Real) or isinstance(momentum, bool) or not 0 <= momentum < 1:
            raise UsageError(f"--momentum must be a number in [0, 1), got {momentum!r}")
        seed = self.seed
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= seed < RECORDABLE_INT_LIMIT:
            # 2^64 and up: numpy would seed with it, but no checkpoint could record it.
            raise UsageError(f"--seed must be a whole number from 0 to 2^64 - 1, got {seed!r}")
        if not isinstance(self.memory_check, bool):  # a string "no" would be true
            raise UsageError(f"--memory-check takes yes or no (True or False), got {self.memory_check!r}")
        for name in ("train_size", "test_size"):
            if getattr(self, name) is not None:
                normalised[name] = positive_int(name.replace("_", "-"), getattr(self, name), recorded=True)
        memory_batch = evaluation_batch = None
        data_bytes = 0
        if self.memory_check:
            sizes = split_sizes(normalised["dataset"], self.data_dir)
            data_bytes = held_bytes(sizes)
            # A step's batch: --batch-size images, or all the images used if fewer: --train-size,
            # at most the data set's (where its files can tell; else --batch-size is counted).
            memory_batch = min(filter(None, (normalised["batch_size"], normalised.get("train_size"), sizes["train"])))
            # The test images' evaluation after each epoch (convlab.training.fit).
            evaluation_batch = evaluation_batch_size(normalised.get("test_size"), sizes["test"])
        layer_backends(model, backend, normalised["batch_size"], memory_batch=memory_batch,
                       resumed=self.resume is not None, evaluation_batch=evaluation_batch, data_bytes=data_bytes)
        for name, value in normalised.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_options(cls, **given):
        """The settings of ``convlab train`` called with ``given`` (None: left out), and
        the checkpoint being resumed (None without ``resume``): returns (settings, checkpoint).

        Paths are checked before anything else, so that a mistake costs no time and
        changes no file; on resume, the checkpoint's settings fill in what is left out.
        """
        from convlab.checkpoints import check_new_checkpoint_path, load_checkpoint
        from convlab.files import check_train_files

        resume = given.get("resume")
        resumed = load_checkpoint(resume) if resume is not None else None
        if given.get("checkpoint") is None:
            given["checkpoint"] = resume
        check_new_checkpoint_path(given["checkpoint"], resume)
        check_train_files(given["checkpoint"], resume, given.get("metrics_out"), given.get("data_dir"))
        if resumed is not None:
            given = dict(given, **resumed_settings(resumed, {key: given.get(key) for key in RECORDED
                                                             if key != "backends"}))
        return cls(**{key: value for key, value in given.items() if value is not None}), resumed

    @classmethod
    @contextlib.contextmanager
    def claimed(cls, **given):
        """:meth:`from_options`, with the run's outputs (checkpoint, metrics file) claimed for
        the block (:func:`convlab.files.sole_writer`: another run writing one is refused up
        front); yields (settings, checkpoint). Checked once before the claim, so that a
        mistake makes no lock file, and again under it: a run that held the files until
        just now may have created the checkpoint, or saved more epochs into it."""
        from convlab.files import sole_writer

        settings = cls.from_options(**given)[0]  # not its checkpoint: that would be held (weights and momentum) all run
        claimed_as = "--resume" if settings.checkpoint == settings.resume else "--checkpoint"
        with sole_writer({claimed_as: settings.checkpoint, "--metrics-out": settings.metrics_out}):
            yield cls.from_options(**given)

    def with_data_sizes(self, n_train: int, n_test: int) -> TrainSettings:
        """These settings with the numbers of training and test images used, out of a
        data set with ``n_train`` and ``n_test``."""
        return self.copy_with(train_size=subset_size("train-size", self.train_size, n_train),
                              test_size=subset_size("test-size", self.test_size, n_test))

    def with_backends(self, names) -> TrainSettings:
        """These settings with ``names``, the backend each conv layer runs on."""
        return self.copy_with(backends=",".join(names))

    def copy_with(self, **checked) -> TrainSettings:
        """A copy of these settings with the values in ``checked`` (already checked by the
        caller). Not made through ``__post_init__`` (as ``dataclasses.replace`` would): the
        other settings were checked when these were made, and by now the run's model,
        momentum and data take memory, which the memory check would count a second time."""
        copied = copy.copy(self)
        for name, value in checked.items():
            object.__setattr__(copied, name, value)
        return copied

    def conv_backends(self) -> list[str]:
        """The backend asked for each conv layer of the model (``auto`` still unresolved)."""
        from convlab.models import get_model

        return layer_backends(get_model(self.model), self.backend, self.batch_size)

    def record(self) -> dict:
        """What the run is (:data:`RECORDED`), as a dict for a checkpoint or metrics file."""
        return {key: getattr(self, key) for key in RECORDED}

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` under the schedule."""
        return LR_SCHEDULES[self.lr_schedule](self.lr, epoch, self.epochs)

    def summary(self) -> str:
        """One line saying what the run does (after :meth:`with_data_sizes`)."""
        model = "" if self.model == "reference" else f"model {self.model}, "
        return (f"training on {self.train_size} images, testing on {self.test_size}, {model}backend {self.backend}, "
                f"{self.epochs} epoch{'s' * (self.epochs != 1)} of batch {self.batch_size}, "
                f"lr {self.lr} ({self.lr_schedule}), momentum {self.momentum}, seed {self.seed}")


def resumed_settings(checkpoint, given: dict) -> dict:
    """The recorded settings for continuing ``checkpoint``'s run: ``given`` (None: not given)
    completed from the checkpoint. Refuses a change of model or of a setting in
    :data:`FIXED_ON_RESUME`; ``epochs`` may be raised, ``backend`` may change. A setting
    that older checkpoints lack (model, lr_schedule) stays None: its default."""
    from convlab.checkpoints import CheckpointError

    stored = {key: checkpoint.settings.get(key) for key in given}
    stored["model"] = stored["model"] or "reference"  # checkpoints from before there were models
    if given["model"] is not None:
        from convlab.models import get_model

        given["model"] = get_model(given["model"]).name  # a spec as recorded
    for key, value in given.items():
        if value is not None and key in FIXED_ON_RESUME and value != stored[key]:
            raise CheckpointError(
                f"{option(key)} {value} differs from the checkpoint's {stored[key]}; a resumed run keeps the "
                f"{', '.join(option(k)[2:] for k in FIXED_ON_RESUME)} it started with "
                f"(leave {option(key)} out, or start a new run to change it)")
    if given["model"] is not None and given["model"] != stored["model"]:
        raise CheckpointError(f"--model {given['model']} differs from the checkpoint's {stored['model']}; a checkpoint "
                              "holds the weights of one network (leave --model out, or start a new run)")
    settings = {key: stored[key] if value is None else value for key, value in given.items()}
    if given.get("backend") is None and isinstance(stored.get("backend"), str):
        # Said as the checkpoint's, not as an --backend the user never typed.
        from convlab.registry import list_backends, skipped_backends

        missing = [name.strip() for name in stored["backend"].split(",")
                   if name.strip() not in [*list_backends(), *skipped_backends()]]
        if missing:
            raise CheckpointError(f"{checkpoint.path} was trained on backend {stored['backend']!r}, and "
                                  f"{', '.join(missing)} is not installed here; give --backend to resume on another, "
                                  f"from: {', '.join(list_backends())}")
    # An --epochs that is not a whole number is refused with the other settings' checks.
    if isinstance(settings["epochs"], numbers.Integral) and settings["epochs"] <= checkpoint.epoch:
        raise CheckpointError(f"{checkpoint.path} already holds {checkpoint.epoch} epoch{'s' * (checkpoint.epoch != 1)}"
                              f"; pass --epochs greater than {checkpoint.epoch} to train further")
    return settings


def list_items(value, option=None, item="item", give="", choices=None, kind=None) -> list:
    """The items of a command-line list: "a,b" as typed (the list options reach their checks
    as the string typed), or a list, tuple or one value (from Python). With ``option``, an
    empty item (two commas in a row, or one at an end: "3,", "3,,5") is refused, naming it
    and saying what to ``give``, unless every item is empty (the caller's "got nothing").
    With ``choices`` too (the names an item may be, each a ``kind`` of thing: "backend"),
    also a value of no item at all, and an item not among them (spaces around it dropped)."""
    if isinstance(value, str):
        items = value.split(",")
    else:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
    empty = [isinstance(i, str) and not i.strip() for i in items]
    typed = value if isinstance(value, str) else ",".join(map(str, items))
    if option is not None and any(empty) and not all(empty):
        raise UsageError(f"{option}: empty {item} in {typed!r} ({give})")
    if option is not None and choices is not None:
        if all(empty):
            raise UsageError(f"{option} got nothing ({give})")
        unknown = next((name for name in map(str, items) if name.strip() not in choices), None)
        if unknown is not None:
            raise UsageError(f"{option}: unknown {kind or item} {unknown.strip()!r} in {typed!r} ({give})")
    return items


def backend_names(value) -> list[str]:
    """The names in a ``--backend`` value: one name, or names separated by commas (from
    Python, also a list or tuple of them). An empty item ("im2col,", "im2col,,fft"), a value
    of nothing but commas and spaces, and a name no backend has are refused
    (:func:`list_items`); an installed backend that was skipped passes, for
    :func:`convlab.registry.get_backend` to say why it was skipped."""
    from convlab.registry import list_backends, skipped_backends

    give = ("give one backend for every conv layer, or one per conv layer, comma-separated, from: "
            + ", ".join(list_backends()))
    choices = [*list_backends(), *skipped_backends()]
    return [str(item).strip() for item in list_items(value, "--backend", "name", give, choices, "backend")]


def layer_backends(model, backend, batch_size=64, memory_batch=None, training=True, resumed=False,
                   evaluation_batch=None, data_bytes=0) -> list[str]:
    """The backend of each conv layer of ``model`` (a :class:`convlab.models.Model`) from
    ``--backend``: one name for all, or a comma-separated name per conv layer. Refuses a
    list of the wrong length and a layer its backend cannot compute, naming the layer.
    With ``memory_batch``, also refuses a network that cannot fit in memory for a training
    step (or, ``training=False``, a forward pass) on that many images (:func:`check_memory`;
    ``resumed``: of a run resumed from its checkpoint); then, with ``evaluation_batch``, a
    training run's evaluation of its test images after each epoch: a forward pass on that
    many at once while the momentum is held, which can need more than a small batch's step
    (the reference network's on 128 images, 10.8 MiB; its step on 64, 6.8 MiB). Both are
    counted with ``data_bytes``, the data set the run holds throughout
    (:func:`convlab.data.held_bytes`; 210 MiB for MNIST, far more than the network), and,
    under a process limit, the threads the backends start (:meth:`convlab.registry.Backend.own_threads`)."""
    from convlab.registry import get_backend

    network = model.build()
    names = network_backends(network, model.name, backend, batch_size)
    if memory_batch is not None:
        needed = network.least_memory(memory_batch, training) + data_bytes
        if evaluation_batch is not None:
            momentum = sum(param.nbytes for _, param, _ in network.named_parameters())
            evaluation = network.least_memory(evaluation_batch, training=False) + momentum + data_bytes
        del network  # its weights go back before the free memory is read: the run builds its own
        threads = max(get_backend(name).own_threads() for name in names)
        check_memory(needed, model.name, memory_batch, training, resumed, data_bytes=data_bytes, own_threads=threads)
        if evaluation_batch is not None:  # second: a step that does not fit is the first thing to lower
            check_memory(evaluation, model.name, evaluation_batch, training, resumed, evaluation=True,
                         data_bytes=data_bytes, own_threads=threads)
    return names


def network_backends(network, model_name, backend, batch_size) -> list[str]:
    """:func:`layer_backends` of ``network``, a built :class:`convlab.models.Sequential`."""
    from convlab.models import describe_layer
    from convlab.registry import Unsupported, get_backend

    convs = network.indexed_conv_layers()
    names = [get_backend(name).name for name in backend_names(backend)]
    if not convs:  # no backend would run: the run would still name one (and its report, a conv layer's filters)
        raise UsageError(f"the {model_name} network has no conv layer, so no backend would compute anything in it; "
                         "convlab trains convolutional networks: give it one (such as c8k3p1 relu before dense10)")
    if len(names) == 1:
        names *= len(convs)
    elif len(names) != len(convs):
        raise UsageError(f"--backend lists {len(names)} backends but the {model_name} network has {len(convs)} conv "
                         f"layer{'s' * (len(convs) != 1)}; give one backend for all of them or one per conv layer, "
                         "comma-separated, in order")
    for name in dict.fromkeys(names):
        get_backend(name).check_settings()
    shapes = network.input_shapes(batch=64 if not isinstance(batch_size, int) or batch_size < 1 else batch_size)
    for number, ((i, layer), name) in enumerate(zip(convs, names), start=1):
        try:
            get_backend(name).check_supported(shapes[i], layer.params["w"].shape, layer.stride, layer.padding)
        except Unsupported as e:
            raise Unsupported(f"conv layer {number} of {model_name} ({describe_layer(layer, shapes[i])}): {e}") from None
    return names


def limit_in_force(headroom) -> str:
    """Where a :class:`~convlab.headroom.Headroom`'s bytes are available, as a message says it."""
    if headroom.kind == "memory":
        return "on this machine"
    if headroom.kind == "cgroup":
        return f"under the container's memory limit of {in_units(headroom.limit)} (cgroup)"
    threads = f", {in_units(headroom.reserved)} kept for the stacks, buffers and malloc arenas of the threads it starts" \
        if headroom.reserved else ""
    return (f"under the {RLIMITS[headroom.kind][2]} limit of {in_units(headroom.limit)} ({headroom.kind}; "
            f"{in_units(headroom.in_use)} in use already{threads})")


def check_memory(needed: int, name: str, batch: int, training=True, resumed=False, evaluation=False,
                 data_bytes=0, own_threads=0):
    """Refuse, up front, the network called ``name`` when a pass over ``batch`` images needs
    ``needed`` bytes at least (:meth:`convlab.models.Sequential.least_memory`) and less is
    available (:func:`available_memory`; where that cannot be read, nothing is checked). The
    message says which limit it was: the machine's memory or the container's limit.
    ``evaluation``: the pass is a training run's evaluation of its test images after each
    epoch (``training`` then too), not its step: what to lower is then --test-size.
    ``data_bytes`` of ``needed`` are the data set's (:func:`convlab.data.held_bytes`), named
    in the message. Under a process limit (``ulimit -v``, ``ulimit -d``), what the run's threads
    will map counts too (:func:`convlab.threads.reserved_by_threads`, with ``own_threads``: a
    backend's own threads), and the message says how much the process takes already.

    Without this the run starts, and the kernel's OOM killer ends it (exit 137, no message)
    once the machine has been driven into swapping, or numpy's MemoryError comes in the
    middle of an epoch. ``needed`` is a lower bound, so a run this refuses could not have fit
    in the memory there is now. What to lower is said only where it can change: not for a
    ``resumed`` run, whose network and batch size are its checkpoint's. The message ends with
    ``--memory-check no``, which skips the check: for a user who knows that more will be there
    than the kernel reports now (memory overcommit, a swap file that grows when needed).
    """
    from convlab.threads import reserved_by_threads

    available = available_memory(reserved=reserved_by_threads(own_threads))
    if available is None or needed <= available.nbytes:
        return
    elsewhere = {"memory": "on a machine with more", "cgroup": "under a higher memory limit"}.get(
        available.kind, f"under a higher {available.kind}")
    if evaluation:
        what = (f"the evaluation after each epoch, a forward pass on {batch} test image{'s' * (batch != 1)} "
                "(weights, momentum and activations)")
        lower = (f"a resumed run keeps the network and --test-size it started with: free memory, or resume it "
                 f"{elsewhere}" if resumed else f"lower --test-size below {batch}, or the network's size (the "
                 "filters of c<F>k<K> and units of dense<N> in its spec)")
    elif training:
        what = f"a training step on {batch} image{'s' * (batch != 1)} (weights, momentum, activations, gradients)"
        lower = (f"a resumed run keeps the network and --batch-size it started with: free memory, or resume it "
                 f"{elsewhere}" if resumed else "lower --batch-size, or the network's size (the filters "
                 "of c<F>k<K> and units of dense<N> in its spec)")
    else:
        what = f"a forward pass on {batch} image{'s' * (batch != 1)} (weights and activations)"
        lower = f"free memory, or run it {elsewhere}"
    if data_bytes:
        what += f", with the data set loaded ({in_units(data_bytes)})"
    if available.kind in RLIMITS:  # the limit that would let it start, in the KiB the shell's ulimit takes
        lower = f"raise it ({available.kind} {-(-(available.limit - available.nbytes + needed) // 1024)} at least), or " \
            + lower
    where = limit_in_force(available)
    raise UsageError(f"the {name} network needs at least {in_units(needed)} of memory for {what}, but "
                     f"{in_units(available.nbytes)} is available {where}; {lower} (if more memory will be there "
                     "than the kernel reports now, --memory-check no skips this check)")
