"""The ``convlab`` command line (fire). User mistakes print one ``convlab: error: ...``
line and exit 2."""

from __future__ import annotations

import contextlib
import logging
import numbers
import sys
import time

import fire

from convlab.arguments import check_command_line
from convlab.registry import get_backend, list_backends


class UsageError(ValueError):
    """A command-line argument that is not allowed."""


def positive_int(name, value):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise UsageError(f"--{name} must be a positive whole number, got {value!r}")
    return int(value)


def positive_float(name, value):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value > 0 or value == float("inf"):
        raise UsageError(f"--{name} must be a positive number, got {value!r}")
    return float(value)


def subset_size(name, value, available):
    if value is None:
        return available
    value = positive_int(name, value)
    if value > available:
        raise UsageError(f"--{name} is {value} but the data set has only {available} images")
    return value


@contextlib.contextmanager
def backend_log_to_stdout():
    """Within the block, INFO lines of the ``convlab`` loggers (such as the backend that
    ``auto`` picked for a shape) are printed to stdout."""
    logger, handler = logging.getLogger("convlab"), logging.StreamHandler(sys.stdout)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def required(name, value):
    if value is None:
        raise UsageError(f"{name if name.isupper() else '--' + name} is required")
    return value


# `convlab train` settings left out (None) take these values, or on --resume the checkpoint's.
TRAIN_DEFAULTS = dict(backend="im2col", dataset="mnist", epochs=5, batch_size=64, lr=0.02, lr_schedule="cosine",
                      momentum=0.9, seed=0)


class DataCommands:
    """Data sets: where they are, and fetching MNIST."""

    def download(self, dest=None, mirror=None):
        """Download MNIST's four idx files, checking each payload's sha256.

        Args:
            dest: folder to write them to (default: the repository's data/mnist).
            mirror: base URL, or comma-separated URLs, to try in order (default: the
                well-known public mirrors).
        """
        from convlab.download import MNIST_MIRRORS, download_mnist

        download_mnist(dest, MNIST_MIRRORS if mirror is None else mirror)


class Commands:
    """convlab: a from-scratch convolution lab. Train and time a CNN whose convolution
    is computed by interchangeable hand-written backends."""

    data = DataCommands()

    def backends(self):
        """List the convolution backends with their descriptions and what each supports."""
        names = list_backends()
        width = max(map(len, names))
        for name in names:
            backend = get_backend(name)
            print(f"{name:<{width}}  {backend.description}")
            print(f"{'':<{width}}  supports: {backend.limits}")

    def report(self, source=None, out="report.pdf", bench=None):
        """Write a PDF report of a training run, and its figures as PNG beside it.

        Args:
            source: a metrics file (`convlab train --metrics-out`) or a checkpoint
                (`convlab train --checkpoint`; only a checkpoint has the filters to show).
            out: the PDF to write; the PNGs go beside it as <stem>-curves.png,
                <stem>-filters.png and <stem>-timing.png.
            bench: a `convlab bench --json` result, shown as the timing table.
        """
        from convlab.report import write_report

        for path in write_report(required("SOURCE", source), out, bench):
            print(f"wrote {path}")

    def train(self, backend=None, epochs=None, batch_size=None, lr=None, momentum=None, seed=None,
              train_size=None, test_size=None, data_dir=None, metrics_out=None, progress=True,
              dataset=None, checkpoint=None, resume=None, lr_schedule=None):
        """Train the reference network (conv 32@7x7 pad 1 -> ReLU -> dense 10) on MNIST.

        With --resume, every setting left out comes from the checkpoint; dataset, batch
        size, lr, lr schedule, momentum, seed and subset sizes cannot change; epochs may be
        raised (a cosine schedule then stretches over the new total) and the backend may change.

        Args:
            backend: convolution backend (see `convlab backends`); default im2col.
            epochs: train until this many epochs are done; default 5.
            batch_size: minibatch size; default 64.
            lr: SGD learning rate (of the first epoch); default 0.02.
            lr_schedule: cosine (decays the lr per epoch, to near 0 at the last) or constant; default cosine.
            momentum: SGD momentum, in [0, 1); default 0.9.
            seed: seeds the weights and the batch order; same seed, same run; default 0.
            train_size: use only the first N training images.
            test_size: use only the first N test images.
            data_dir: folder with the idx files or MNISTdata.hdf5, or that HDF5 file
                (default: the repository's data/, then the system's datasets).
            metrics_out: write per-epoch metrics as JSON to this path.
            progress: show a progress bar during each epoch.
            dataset: mnist or fashion-mnist; default mnist.
            checkpoint: save an HDF5 checkpoint here after every epoch (atomically); must not exist yet.
            resume: continue the run saved in this checkpoint, and keep saving to it.
        """
        from convlab.checkpoints import (
            check_new_checkpoint_path, ctrl_c_at_safe_points, interrupted_message, load_checkpoint, save_checkpoint)
        from convlab.data import load_dataset
        from convlab.files import check_writable, write_json
        from convlab.models import reference_net
        from convlab.optimizers import LR_SCHEDULES, SGD
        from convlab.training import fit

        resumed = load_checkpoint(resume) if resume is not None else None
        checkpoint = resume if checkpoint is None else checkpoint
        check_new_checkpoint_path(checkpoint, resume)
        if metrics_out is not None:
            check_writable(metrics_out, "--metrics-out")
        settings = dict(backend=backend, dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr,
                        lr_schedule=lr_schedule, momentum=momentum, seed=seed, train_size=train_size,
                        test_size=test_size)
        if resumed is not None:
            settings = resumed.resume_settings(settings)
        settings = {key: TRAIN_DEFAULTS.get(key) if value is None else value for key, value in settings.items()}
        backend, dataset, epochs, batch_size, lr, lr_schedule, momentum, seed, train_size, test_size = (
            settings.values())

        backend = get_backend(backend).name
        epochs = positive_int("epochs", epochs)
        batch_size = positive_int("batch-size", batch_size)
        lr = positive_float("lr", lr)
        if lr_schedule not in LR_SCHEDULES:
            raise UsageError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
        if not isinstance(momentum, numbers.Real) or isinstance(momentum, bool) or not 0 <= momentum < 1:
            raise UsageError(f"--momentum must be a number in [0, 1), got {momentum!r}")
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
            raise UsageError(f"--seed must be a non-negative whole number, got {seed!r}")

        model = reference_net(seed=seed, backend=backend)
        optimizer = SGD(model, lr=lr, momentum=momentum)
        history = []
        if resumed is not None:
            resumed.restore(model, optimizer)
            history = resumed.history
            print(f"resuming from {resume} after epoch {resumed.epoch}")

        data = load_dataset(dataset, data_dir)
        n_train = subset_size("train-size", train_size, len(data.x_train))
        n_test = subset_size("test-size", test_size, len(data.x_test))
        data.x_train, data.y_train = data.x_train[:n_train], data.y_train[:n_train]
        data.x_test, data.y_test = data.x_test[:n_test], data.y_test[:n_test]
        print(f"training on {n_train} images, testing on {n_test}, backend {backend}, "
              f"{epochs} epochs of batch {batch_size}, lr {lr} ({lr_schedule}), momentum {momentum}, seed {seed}")
        settings.update(backend=backend, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                        seed=seed, train_size=n_train, test_size=n_test)

        def report(m):
            history.append(m)
            print(f"epoch {m.epoch}/{epochs}  loss {m.train_loss:.4f}  train acc {m.train_accuracy:.4f}  "
                  f"test acc {m.test_accuracy:.4f}  {m.seconds:.1f} s", flush=True)
            if checkpoint is not None:
                save_checkpoint(checkpoint, model, optimizer, history, settings)

        started = time.perf_counter()
        try:
            with backend_log_to_stdout(), ctrl_c_at_safe_points() as stop_if_asked:
                fit(model, optimizer, data, epochs, batch_size, seed, start_epoch=len(history) + 1,
                    progress=progress, on_epoch=report, on_batch=stop_if_asked,
                    lr_at=lambda epoch: LR_SCHEDULES[lr_schedule](lr, epoch, epochs))
        except KeyboardInterrupt:
            raise KeyboardInterrupt(interrupted_message(checkpoint, resume, dict(
                epochs=epochs, backend=backend, data_dir=data_dir, metrics_out=metrics_out,
                progress=None if progress else False))) from None
        final = history[-1].test_accuracy
        print(f"test accuracy: {final:.4f} ({backend}, {epochs} epochs, {time.perf_counter() - started:.1f} s)")
        if metrics_out is not None:
            write_json(metrics_out, {"backend": backend, "test_accuracy": final, "settings": settings,
                                     "epochs": [m.as_dict() for m in history]})

    def evaluate(self, checkpoint=None, backend=None, data_dir=None, test_size=None):
        """Test accuracy and confusion matrix of a checkpoint written by `convlab train --checkpoint`.

        Args:
            checkpoint: the checkpoint file (required).
            backend: convolution backend to compute with (default: the one it was trained with).
            data_dir: where the checkpoint's data set is (as for `convlab train`).
            test_size: use only the first N test images (default: all).
        """
        from convlab.data import load_dataset
        from convlab.inference import evaluation_report, load_model

        model, saved = load_model(required("checkpoint", checkpoint), backend)
        data = load_dataset(saved.settings["dataset"], data_dir)
        n_test = subset_size("test-size", test_size, len(data.x_test))
        print(evaluation_report(model, saved, data.x_test[:n_test], data.y_test[:n_test]))

    def predict(self, file=None, checkpoint=None, backend=None, invert=False):
        """The class of one 28x28 image, with the probability of each class.

        FILE is a grayscale PNG (white digit on black, as MNIST) or a .npy array of shape
        (28, 28) or (1, 28, 28) with values in [0, 1] or [0, 255].

        Args:
            file: the image.
            checkpoint: the checkpoint file (required).
            backend: convolution backend to compute with (default: the one it was trained with).
            invert: the image is a dark digit on a light background.
        """
        from convlab.inference import load_image, load_model, prediction_report

        if not isinstance(invert, bool):
            raise UsageError(f"--invert takes no value or True/False, got {invert!r}")
        model, saved = load_model(required("checkpoint", checkpoint), backend)
        image = load_image(required("FILE", file), invert)
        print(prediction_report(model, image, "digit" if saved.settings["dataset"] == "mnist" else "class"))

    def bench(self, backends=None, kernel_sizes=None, batch_size=None, image_size=None, in_channels=None,
              out_channels=None, mnist_layer=True, passes=None, repeat=3, json=None, plot=None,
              memory=False, sweep="kernel", image_sizes=None):
        """Time the backends on the MNIST layer and a kernel-size sweep; table of ratios.

        The sweep is batch x in_channels -> out_channels on an image_size² input with
        "same" padding (k // 2); --sweep image sweeps the image size instead, at each
        kernel size. Each time is the fastest of --repeat runs after a warm-up.
        By default every backend is timed except naive on big shapes and auto (whose pick
        per shape is shown instead); name them in --backends to time them.

        Args:
            backends: comma-separated backend names (default: see above).
            kernel_sizes: comma-separated kernel sizes of the sweep (default 3,5,7,11,15,21).
            batch_size: images per batch (N), for every shape (default 64; image sweep 8).
            image_size: input height and width of the kernel sweep (default 28).
            in_channels: input channels (C) of the sweep (default 1; image sweep 3).
            out_channels: filters (F) of the sweep (default 32; image sweep 16).
            mnist_layer: also time the MNIST layer (1 -> 32, 28², k 7, padding 1).
            passes: forward, forward+backward, or both (comma-separated; default both).
            repeat: timed runs per measurement.
            json: write the results to this JSON file (schema: see convlab/bench.py).
            plot: save the time-vs-kernel-size (or image-size) plot here (.png, .svg, .pdf, ...).
            memory: also measure each pass's peak extra memory (workspace beyond the results).
            sweep: kernel (time vs kernel size, default) or image (time vs image size).
            image_sizes: comma-separated image sizes of the image sweep (default 16,32,64,128,256;
                its kernel sizes default to 5,9).
        """
        from convlab.bench import bench_command

        if not isinstance(mnist_layer, bool):
            raise UsageError(f"--mnist-layer takes True or False, got {mnist_layer!r}")
        if not isinstance(memory, bool):
            raise UsageError(f"--memory takes no value or True/False, got {memory!r}")
        optional = lambda name, value: None if value is None else positive_int(name, value)  # noqa: E731
        bench_command(backends, kernel_sizes, optional("batch-size", batch_size),
                      optional("image-size", image_size), optional("in-channels", in_channels),
                      optional("out-channels", out_channels), mnist_layer, passes,
                      positive_int("repeat", repeat), json, plot,
                      progress=lambda message: print(message, file=sys.stderr, flush=True),
                      memory=memory, sweep=sweep, image_sizes=image_sizes)



def main(argv=None):
    try:
        commands = Commands()
        check_command_line(commands, sys.argv[1:] if argv is None else argv)
        fire.Fire(commands, command=argv, name="convlab")
    # Our checks raise ValueError subclasses with user-facing messages; an OSError is the
    # system refusing a read or write our checks could not foresee (disk full, /proc, ...).
    except (ValueError, OSError) as e:
        print(f"convlab: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # a message, if any, says what survived and how to go on
        print("convlab: interrupted" + (f"; {e}" if e.args else ""), file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
