"""One ``convlab train`` run from its :class:`~convlab.settings.TrainSettings`: build the
network, load the data, fit, and after every epoch save the checkpoint and the metrics
file. Printed lines go to stdout (the CLI's output)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

import numpy as np

from convlab.arguments import check_fits_dtype, out_of_memory_names
from convlab.checkpoints import (CheckpointError, backends_record, ctrl_c_at_safe_points, interrupted_message,
                                 save_checkpoint)
from convlab.files import write_json
from convlab.models import describe_layer, get_model
from convlab.optimizers import SGD
from convlab.profile import recording
from convlab.registry import DEFAULT_BACKEND, ORACLE, BackendError, get_backend, list_backends
from convlab.settings import TrainSettings
from convlab.threads import machine_summary
from convlab.timing import is_tuner
from convlab.training import TrainingDiverged, fit


class SaveFailed(ValueError):
    """An epoch's checkpoint or metrics file that could not be written (a full disk, a folder
    made read-only during the run)."""


class StdoutHandler(logging.StreamHandler):
    """A handler printing to stdout, whose failed write (a closed pipe, a full disk) is raised
    as a ``print`` would raise it: logging's own handlers print it as a "--- Logging error ---"
    traceback and go on."""

    def handleError(self, record):
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            raise error
        super().handleError(record)


@contextlib.contextmanager
def backend_log_to_stdout():
    """Within the block, INFO lines of the ``convlab`` loggers (such as the backend that
    ``auto`` picked for a shape) are printed to stdout."""
    logger, handler = logging.getLogger("convlab"), StdoutHandler(sys.stdout)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def build_model(settings: TrainSettings):
    """The settings' network with fresh weights from its seed, each conv layer pinned to
    its backend (:func:`pin_backends`); returns (model, settings with ``backends`` set)."""
    model = get_model(settings.model).build(seed=settings.seed)
    return model, pin_backends(model, settings)


def pin_backends(model, settings: TrainSettings, resumed=None) -> TrainSettings:
    """Pin each conv layer of ``model`` to its backend in ``settings`` (:func:`pin_layers`, at
    the training batch size); returns the settings with ``backends`` set. Continuing the
    checkpoint ``resumed`` on the backends it was asked for, a layer on ``auto`` keeps the
    one it ran on there: a pick timed again (the cache cleared, a new convlab version) may
    be another backend, which rounds differently, and the continuation would not be the run's."""
    same_ask = resumed is not None and resumed.settings["backend"] == settings.backend
    ran = str(resumed.settings.get("backends") or "").split(",") if same_ask else []
    return settings.with_backends(pin_layers(model, settings.conv_backends(), settings.batch_size, ran))


def pin_layers(model, asked, batch, kept=(), training=True) -> list[str]:
    """Pin each conv layer of ``model`` to its backend in ``asked`` (one name per conv layer);
    returns the names. A layer on a tuner (``auto``) gets the backend it picks for that
    layer's own problem on ``batch`` images, or ``kept``'s (one name per conv layer: what it
    picked before the resume) if installed. In ``training`` the first layer is timed without
    dx, which the network never computes; otherwise (an evaluation) as the tuner's inference
    pass asks, and one pick per layer is all it times, not another for a last, smaller batch.

    One line per conv layer a tuner picked for says which backend; in ``training`` one per
    conv layer of a network with several (its summary line names only what was asked)."""
    shapes = model.input_shapes(batch)
    names = []
    convs = model.indexed_conv_layers()
    before = list(kept) if len(kept) == len(convs) else [None] * len(convs)
    for number, ((i, layer), asked_here, kept_here) in enumerate(zip(convs, asked, before), start=1):
        name, how = asked_here, ""
        if is_tuner(asked_here) and kept_here in list_backends():
            name, how = kept_here, f" (picked by {asked_here} before the resume)"
        elif is_tuner(asked_here):
            x = np.random.default_rng(0).standard_normal(shapes[i]).astype(layer.params["w"].dtype)
            name = get_backend(asked_here).impl.pick(x, layer.params["w"], layer.stride, layer.padding,
                                                     need_dx=i > 0 or not training)
            how = f" (picked by {asked_here})"
        layer.backend = name
        names.append(name)
        if how or (training and len(convs) > 1):  # the reference network on a named backend prints what it always did
            print(f"conv layer {number} ({describe_layer(layer, shapes[i])}): {name}{how}")
    return names


def pin_for_inference(model, batch) -> list[str]:
    """:func:`pin_layers` for ``convlab evaluate`` or ``predict`` on ``batch`` images at once:
    each conv layer of ``model`` stays on its backend, one on ``auto`` goes to its pick, which
    is said (with auto's own line) as ``convlab train`` says it."""
    with backend_log_to_stdout():
        return pin_layers(model, [layer.backend for layer in model.conv_layers()], batch, training=False)


def layer_times(model) -> list[dict]:
    """Each layer's mean time per training step since ``model.reset_timing()``: a row
    {"layer", "backend" (conv layers; else None), "forward_ms", "backward_ms"}."""
    shapes = model.input_shapes()
    steps = max(model.steps, 1)
    return [{"layer": describe_layer(layer, shape), "backend": getattr(layer, "backend", None),
             "forward_ms": 1e3 * seconds[0] / steps, "backward_ms": 1e3 * seconds[1] / steps}
            for layer, shape, seconds in zip(model.layers, shapes, model.layer_seconds)]


def train(settings: TrainSettings, resumed=None, profile=False):
    """Run the training ``settings`` describe, continuing the checkpoint ``resumed`` if
    given; returns the metrics of every epoch (the resumed ones included). ``profile``:
    record the per-phase profile of the training steps (:mod:`convlab.profile`) and print
    it at the end."""
    model = get_model(settings.model).build(seed=settings.seed)
    check_fits_dtype("--lr", settings.lr, next(model.named_parameters())[1].dtype)
    optimizer = SGD(model, lr=settings.lr, momentum=settings.momentum)
    history, backends = [], []
    if resumed is not None:
        resumed.restore(model, optimizer)
        history, backends = resumed.history, resumed.backends
        print(f"resuming from {settings.resume} after epoch {resumed.epoch}")
    with backend_log_to_stdout():
        settings = pin_backends(model, settings, resumed)

    from convlab.data import load_dataset  # looked up at call time: tests share one reading of the data

    data = load_dataset(settings.dataset, settings.data_dir)
    settings = settings.with_data_sizes(len(data.x_train), len(data.x_test))
    data.x_train, data.y_train = data.x_train[:settings.train_size], data.y_train[:settings.train_size]
    data.x_test, data.y_test = data.x_test[:settings.test_size], data.y_test[:settings.test_size]
    # Flushed: to a pipe or file, the run's first lines would otherwise wait for epoch 1's.
    print(settings.summary(), flush=True)

    def after_epoch(m):
        # Saved before the line is printed: a closed stdout (`| head`) ends the run at the
        # print, with every finished epoch on disk.
        history.append(m)
        # What ran, not what was asked (auto's picks resolved): one name, or one per conv layer.
        backends.append(backends_record(settings.backends.split(",")))
        times = layer_times(model)
        model.reset_timing()
        if settings.checkpoint is not None:
            try:
                save_checkpoint(settings.checkpoint, model, optimizer, history, settings.record(), backends, times)
            except CheckpointError as e:
                raise SaveFailed(e) from None
        if settings.metrics_out is not None:
            try:
                write_json(settings.metrics_out, {
                    "backend": settings.backend, "test_accuracy": m.test_accuracy, "settings": settings.record(),
                    "layer_times": times, "epochs": [dict(e.as_dict(), backend=b) for e, b in zip(history, backends)]})
            except OSError as e:
                raise SaveFailed(f"cannot write --metrics-out {settings.metrics_out}: {e.strerror or e}") from None
        print(f"epoch {m.epoch}/{settings.epochs}  loss {m.train_loss:.4f}  train acc {m.train_accuracy:.4f}  "
              f"test acc {m.test_accuracy:.4f}  {m.seconds:.1f} s", flush=True)

    # What an interrupted or failed run's message needs to say how to go on from its checkpoint.
    resume_options = dict(epochs=settings.epochs, backend=settings.backend, data_dir=settings.data_dir,
                          metrics_out=settings.metrics_out, progress=None if settings.progress else False,
                          memory_check=None if settings.memory_check else False)
    started, epochs_before = time.perf_counter(), len(history)
    try:
        with backend_log_to_stdout(), ctrl_c_at_safe_points() as stop_if_asked, \
                out_of_memory_names(dict(batch_size=settings.batch_size)), \
                (recording(model) if profile else contextlib.nullcontext()) as recorded:
            fit(model, optimizer, data, settings.epochs, settings.batch_size, settings.seed,
                start_epoch=len(history) + 1, progress=settings.progress, on_epoch=after_epoch,
                on_batch=stop_if_asked, lr_at=settings.lr_at)
    except TrainingDiverged as e:  # the diverging epoch was not saved
        if settings.checkpoint is None or not history:
            raise
        raise TrainingDiverged(f"{e}; {settings.checkpoint} still holds the run after epoch {history[-1].epoch}") from None
    except SaveFailed as e:  # what the epochs before saved stands
        # os.path: False where the folder cannot be searched any more (Path.exists raises on
        # Python 3.11, which would replace the failed save's message): the message stands alone.
        if settings.checkpoint is None or not (os.path.exists(settings.checkpoint) or settings.resume):
            raise
        raise SaveFailed(f"{e}; {interrupted_message(settings.checkpoint, settings.resume, resume_options)}") from None
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (a subclass)
        raise type(stop)(interrupted_message(settings.checkpoint, settings.resume, resume_options)) from None
    except Exception as e:  # a backend that broke or raised (or a bug of convlab's): the epochs saved stand
        if settings.checkpoint is None:
            raise
        if isinstance(e, BackendError):  # it would break again: go on on another, one that computes any problem
            resume_options["backend"] = DEFAULT_BACKEND if e.backend != DEFAULT_BACKEND else ORACLE
        # As e.add_note (Python 3.11+) does: the CLI's one-line error ends with it, and so does
        # a traceback (on 3.11+), which keeps the backend's own code in view.
        e.__notes__ = [*getattr(e, "__notes__", ()),
                       interrupted_message(settings.checkpoint, settings.resume, resume_options)]
        raise
    if recorded is not None:
        print(f"profile on {machine_summary()}")
        print(recorded.table(f"backend {settings.backend}: milliseconds per step, seconds in all, "
                             f"share of the steps' time"))
    ran = settings.backend if backends[-1] == settings.backend else f"{settings.backend}: {backends[-1]}"
    # The seconds are those of this process's epochs: after a resume, say which they were.
    done = len(history) - epochs_before
    epochs = (f"{done} epoch{'s' * (done != 1)}" if not epochs_before
              else f"epochs {epochs_before + 1}-{len(history)}" if done > 1 else f"epoch {len(history)}")
    print(f"test accuracy: {history[-1].test_accuracy:.4f} ({ran}, {epochs}, {time.perf_counter() - started:.1f} s)")
    return history
