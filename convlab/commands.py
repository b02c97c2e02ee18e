"""The ``convlab`` commands (fire), which :func:`convlab.cli.main` runs: what each command
does with its options. User mistakes raise ``ValueError`` (mostly
:class:`~convlab.settings.UsageError`), which the entry point prints as one line."""

from __future__ import annotations

import shlex
import sys

import fire

from convlab import installed_version, keep_freed_memory
from convlab.arguments import (CommandLineError, check_command_line, joined_values, option_name,
                               out_of_memory_names, typed)
from convlab.registry import get_backend, list_backends
from convlab.settings import UsageError, one_of, positive_float, positive_int, subset_size


def required(name, value, what):
    """``value``, the argument or option ``name`` (upper case: given by position), unless it
    was left out: then a :class:`UsageError` saying ``what`` it is, to give it."""
    if value is None:
        raise UsageError(f"{name if name.isupper() else '--' + name} is required: {what}")
    return value


CHECKPOINT_IS = "the file `convlab train --checkpoint` saves"


class DataCommands:
    """Data sets: fetching MNIST."""

    @typed(text=("dest", "mirror"))
    def download(self, *, dest=None, mirror=None, timeout=30, deadline=600):
        """Download MNIST's four idx files, checking each payload's sha256.

        Args:
            dest: folder to write them to (default: the repository's data/mnist).
            mirror: base URL, or comma-separated URLs, to try in order (default: the
                well-known public mirrors).
            timeout: seconds a mirror may send nothing before it counts as stalled and the next is tried
                (at most 86400, a day).
            deadline: seconds one file may take in all, however slowly the mirror sends it
                (at most 86400, a day).
        """
        from convlab.download import MAX_DEADLINE, MAX_TIMEOUT, MNIST_MIRRORS, download_mnist

        if dest is not None and not dest.strip():  # an unset shell variable, most likely: not "here"
            raise UsageError("--dest is empty; give a folder (such as data/mnist, or . for this one)")
        download_mnist(dest, MNIST_MIRRORS if mirror is None else mirror,
                       positive_float("timeout", timeout, MAX_TIMEOUT, " (a day)"),
                       positive_float("deadline", deadline, MAX_DEADLINE, " (a day)"))


class AutoCommands:
    """The auto backend's stored picks (its cache file): see, re-time or clear them."""

    def show(self):
        """List the stored picks: problem, chosen backend, the candidates' times."""
        auto = get_backend("auto").impl
        entries = auto.stored()
        print(f"{auto.cache_file()}: {len(entries)} stored pick{'s' * (len(entries) != 1)}")
        for key, entry in entries.items():
            print(auto.describe(key, entry))

    def clear(self):
        """Delete the stored picks; the next run with --backend auto times again."""
        auto = get_backend("auto").impl
        removed = auto.clear()
        print(f"removed {removed} stored pick{'s' * (removed != 1)} ({auto.cache_file()})")

    def retune(self):
        """Time every stored problem again and store the new picks."""
        from convlab.run import backend_log_to_stdout

        auto = get_backend("auto").impl
        with backend_log_to_stdout():
            picks = auto.retune()
        print(f"re-timed {len(picks)} problems ({auto.cache_file()})")


class Commands:
    """convlab: a from-scratch convolution lab. Train and time a CNN whose convolution
    is computed by interchangeable hand-written backends."""

    data = DataCommands()
    auto = AutoCommands()

    def backends(self):
        """List the convolution backends: description, what each supports, a plugin's package.

        A backend from another package (an entry point of convlab.backends) names that
        package and its version, to know which one to update or uninstall."""
        names = list_backends()
        width = max(map(len, names))
        for name in names:
            backend = get_backend(name)
            print(f"{name:<{width}}  {backend.description}")
            print(f"{'':<{width}}  supports: {backend.limits}")
            if backend.distribution is not None:  # a plugin's
                print(f"{'':<{width}}  from: {backend.distribution}")

    def models(self):
        """List the networks `convlab train --model` can train, with their descriptions."""
        from convlab.models import get_model, list_models

        names = list_models()
        width = max(map(len, names))
        for name in names:
            print(f"{name:<{width}}  {get_model(name).description}")

    @typed(positional=("source",), text=("out", "bench"))
    def report(self, source=None, *, out="report.pdf", bench=None):
        """Write a PDF report of a training run, and its figures as PNG beside it.

        Args:
            source: a metrics file (`convlab train --metrics-out`) or a checkpoint
                (`convlab train --checkpoint`; only a checkpoint has the filters to show).
            out: the PDF to write; the PNGs go beside it as <stem>-curves.png,
                <stem>-layers.png (per-layer times), <stem>-filters.png (from a checkpoint)
                and <stem>-timing.png (with --bench). Such a figure an earlier report
                wrote there and this one does not draw is removed.
            bench: a `convlab bench --json` result, shown as the timing table.
        """
        from convlab.report import SOURCE_HINT, write_report

        files = write_report(required("SOURCE", source, SOURCE_HINT), out, bench)
        for path in files.written:
            print(f"wrote {path}")
        for path in files.removed:
            print(f"removed {path} (an earlier report's figure, not drawn by this one)")
        for path, why in files.left.items():
            print(f"left {path}: not this report's figure; {why}")

    @typed(text=("backend", "dataset", "lr_schedule", "data_dir", "metrics_out", "checkpoint", "resume", "model"),
           flags=("progress", "profile", "memory_check"))
    def train(self, *, backend=None, epochs=None, batch_size=None, lr=None, momentum=None, seed=None,
              train_size=None, test_size=None, data_dir=None, metrics_out=None, progress=True,
              dataset=None, checkpoint=None, resume=None, lr_schedule=None, model=None, profile=False,
              memory_check=True):
        """Train a network (default: the reference one, conv 32@7x7 pad 1 -> ReLU -> dense 10) on MNIST.

        With --resume, every setting left out comes from the checkpoint; model, dataset,
        batch size, lr, lr schedule, momentum, seed and subset sizes cannot change; epochs may be
        raised (a cosine schedule then stretches over the new total) and the backend may change
        (on auto, the backends auto picked before are kept).
        Every setting is checked by convlab.settings.TrainSettings before anything runs.

        Args:
            backend: convolution backend (see `convlab backends`) of every conv layer, or one per conv
                layer, comma-separated (fft,im2col); auto picks per layer; default im2col.
            epochs: train until this many epochs are done; default 5.
            batch_size: minibatch size; default 64.
            lr: SGD learning rate (of the first epoch); default 0.02.
            lr_schedule: cosine (decays the lr per epoch, to near 0 at the last) or constant; default cosine.
            momentum: SGD momentum, in [0, 1); default 0.9.
            seed: seeds the weights and the batch order; same seed, same run; default 0.
            train_size: use only the first N training images.
            test_size: use only the first N test images.
            data_dir: folder with the idx files or MNISTdata.hdf5, or that HDF5 file
                (default: the repository's data/<dataset>/; fashion-mnist also
                /usr/share/datasets/fashion-mnist).
            metrics_out: write per-epoch metrics as JSON to this path (rewritten after every epoch).
            progress: show a progress bar during each epoch (on a terminal only: piped output gets one line per epoch).
            dataset: mnist or fashion-mnist; default mnist.
            checkpoint: save an HDF5 checkpoint here after every epoch (atomically); must not exist yet.
            resume: continue the run saved in this checkpoint, and keep saving to it.
            model: the network: a name (see `convlab models`) or a spec string such as
                "c32k3p1 relu maxpool2 dense10" (see docs/networks.md); default reference.
            profile: print where the training steps' time went, per layer and phase, at the end.
            memory_check: refuse, before it starts, a network that cannot fit in the memory
                available (see docs/training.md); no skips the check (give it again with --resume).
        """
        from convlab.run import train
        from convlab.settings import TrainSettings

        with TrainSettings.claimed(
                model=model, backend=backend, dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr,
                lr_schedule=lr_schedule, momentum=momentum, seed=seed, train_size=train_size, test_size=test_size,
                data_dir=data_dir, metrics_out=metrics_out, checkpoint=checkpoint, resume=resume,
                progress=progress, memory_check=memory_check) as (settings, resumed):
            train(settings, resumed, profile)

    @typed(text=("checkpoint", "backend", "data_dir"), flags=("memory_check",))
    def evaluate(self, *, checkpoint=None, backend=None, data_dir=None, test_size=None, memory_check=True):
        """Test accuracy and confusion matrix of a checkpoint written by `convlab train --checkpoint`.

        Args:
            checkpoint: the checkpoint file (required).
            backend: convolution backend to compute with, or one per conv layer, comma-separated
                (default: the ones it was trained with).
            data_dir: where the checkpoint's data set is (as for `convlab train`).
            test_size: use only the first N test images (default: all).
            memory_check: refuse a network that cannot fit in the memory available; no skips the check.
        """
        from convlab.checkpoints import load_checkpoint
        from convlab.data import held_bytes, load_dataset, split_sizes
        from convlab.inference import evaluation_report, layer_backend_names, restore_model
        from convlab.run import pin_for_inference
        from convlab.training import evaluation_batch_size

        test_size = None if test_size is None else positive_int("test-size", test_size)
        saved = load_checkpoint(required("checkpoint", checkpoint, CHECKPOINT_IS))
        batch, data_bytes = None, 0
        if memory_check:  # its batches and the data set it reads, as far as the files tell
            sizes = split_sizes(saved.settings["dataset"], data_dir)
            batch, data_bytes = evaluation_batch_size(test_size, sizes["test"]), held_bytes(sizes)
        model = restore_model(saved, backend, batch=batch, data_bytes=data_bytes)
        data = load_dataset(saved.settings["dataset"], data_dir)
        n_test = subset_size("test-size", test_size, len(data.x_test))
        asked = layer_backend_names(model)
        pin_for_inference(model, evaluation_batch_size(n_test, len(data.x_test)))
        print(evaluation_report(model, saved, data.x_test[:n_test], data.y_test[:n_test], asked))

    @typed(positional=("file",), text=("checkpoint", "backend"), flags=("invert", "memory_check"))
    def predict(self, file=None, *, checkpoint=None, backend=None, invert=False, memory_check=True):
        """The class of one 28x28 image, with the probability of each class.

        FILE is a grayscale PNG (white digit on black, as MNIST) or a .npy array of shape
        (28, 28) or (1, 28, 28) with values in [0, 1] or [0, 255].

        Args:
            file: the image.
            checkpoint: the checkpoint file (required).
            backend: convolution backend to compute with, or one per conv layer, comma-separated
                (default: the ones it was trained with).
            invert: the image is a dark digit on a light background.
            memory_check: refuse a network that cannot fit in the memory available; no skips the check.
        """
        from convlab.inference import ACCEPTED_FILES, check_has_content, load_image, load_model, prediction_report
        from convlab.run import pin_for_inference

        # Before the checkpoint is read: a mistake costs no time.
        required("FILE", file, f"the image to classify, {ACCEPTED_FILES}; as in `convlab predict --checkpoint "
                               f"{shlex.quote(checkpoint or 'run.h5')} digit.png`")
        model, saved = load_model(required("checkpoint", checkpoint, CHECKPOINT_IS), backend,
                                  batch=1 if memory_check else None)
        class_name = "digit" if saved.settings["dataset"] == "mnist" else "class"
        image = check_has_content(load_image(file, invert), file, class_name)
        pin_for_inference(model, 1)
        print(prediction_report(model, image, class_name, inverted=invert))

    @typed(text=("backends", "passes", "json", "plot", "sweep", "kernel_sizes", "image_sizes"),
           flags=("mnist_layer", "profile", "accuracy", "many_channels", "memory"))
    def bench(self, *, backends=None, kernel_sizes=None, batch_size=None, image_size=None, in_channels=None,
              out_channels=None, mnist_layer=None, passes=None, repeat=None, json=None, plot=None, profile=False,
              steps=None, accuracy=None, many_channels=None, memory=None, sweep=None, image_sizes=None):
        """Time the backends on the MNIST layer and a kernel-size sweep; table of ratios.

        The sweep is batch x in_channels -> out_channels on an image_size² input with
        "same" padding (k // 2); --sweep image sweeps the image size instead, at each
        kernel size. Each time is the fastest of --repeat runs after a warm-up.
        By default every backend is timed except naive on big shapes and auto (whose pick
        per shape is shown instead); name them in --backends to time them.

        Args:
            backends: comma-separated backend names (default: see above).
            kernel_sizes: comma-separated kernel sizes of the sweep (default 3,5,7,11,15,21).
            batch_size: images per batch (N) of the MNIST layer and the sweep (default 64;
                image sweep 8; the --many-channels layers keep their own).
            image_size: input height and width of the kernel sweep (default 28).
            in_channels: input channels (C) of the sweep (default 1; image sweep 3).
            out_channels: filters (F) of the sweep (default 32; image sweep 16).
            mnist_layer: also time the MNIST layer (1 -> 32, 28², k 7, padding 1) (default yes).
            passes: forward, forward+backward, or both (comma-separated; default both).
            repeat: timed runs per measurement (default 3).
            json: write the results to this JSON file (schema: see convlab/bench.py).
            plot: save the time-vs-kernel-size (or image-size) plot here (.png, .svg, .pdf, ...).
            profile: instead, profile --steps real training steps of the reference network
                per backend (default: every backend but naive and auto that can run the
                reference layer): time of each phase, per layer.
                Of the other options only --backends and --batch-size apply to it.
            steps: training steps to profile (with --profile; default 100).
            accuracy: also measure each backend's float32 error of y, dx and dw against float64 (default no).
            many_channels: also time 3x3 and 5x5 layers with 32 to 128 channels (default no).
            memory: also measure each pass's peak extra memory (workspace beyond the results)
                (default no).
            sweep: kernel (time vs kernel size, default; --image-size sets its image) or image
                (time vs image size; --image-sizes sets them).
            image_sizes: comma-separated image sizes of the image sweep (default 16,32,64,128,256;
                its kernel sizes default to 5,9).
        """
        from convlab.bench import SWEEP_LAYER, SWEEPS, bench_command, profile_command
        from convlab.files import check_outputs, check_suffix, sole_writer

        # An option that would change nothing in the run asked for is refused, not ignored.
        timing_only = dict(kernel_sizes=kernel_sizes, image_size=image_size, in_channels=in_channels,
                           out_channels=out_channels, mnist_layer=mnist_layer, passes=passes, repeat=repeat,
                           json=json, plot=plot, accuracy=accuracy, many_channels=many_channels, memory=memory,
                           sweep=sweep, image_sizes=image_sizes)
        if profile:
            given = [option_name(name) for name, value in timing_only.items() if value is not None]
            if given:
                raise UsageError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply with "
                                 "--profile yes, which profiles training steps of the reference network; "
                                 "its options are --backends, --steps and --batch-size")
            profile_command(backends, positive_int("steps", 100 if steps is None else steps),
                            positive_int("batch-size", SWEEP_LAYER["kernel"]["batch_size"] if batch_size is None
                                         else batch_size))
            return
        if steps is not None:
            raise UsageError("--steps applies only with --profile yes (the training steps to profile)")
        sweep = one_of("sweep", "kernel" if sweep is None else sweep, SWEEPS)
        if sweep == "kernel" and image_sizes is not None:
            raise UsageError("--image-sizes applies only with --sweep image; the kernel sweep's image size "
                             "is --image-size")
        if sweep == "image" and image_size is not None:
            raise UsageError("--image-size applies only to the kernel sweep; the image sweep's sizes "
                             "are --image-sizes")

        check_outputs({"--json": json if json is None else check_suffix(json, "--json", ".json", "JSON"),
                       "--plot": plot})
        optional = lambda name, value: None if value is None else positive_int(name, value)  # noqa: E731
        sizes = dict(batch_size=optional("batch-size", batch_size), image_size=optional("image-size", image_size),
                     in_channels=optional("in-channels", in_channels),
                     out_channels=optional("out-channels", out_channels))
        # The sizes in force (given, else the sweep's defaults) name what was too big.
        defaults = SWEEP_LAYER[sweep]
        in_force = {name: defaults[name] if given is None else given for name, given in sizes.items()}
        # and the sweep's sizes where given (--kernel-sizes 100000 needed 2.33 TiB of filters)
        in_force.update((name, given) for name, given in (("kernel_sizes", kernel_sizes),
                                                          ("image_sizes", image_sizes)) if given is not None)
        with out_of_memory_names({name: value for name, value in in_force.items() if value is not None}), \
                sole_writer({"--json": json, "--plot": plot}):  # not another bench's result, written at its end
            bench_command(backends, kernel_sizes, *sizes.values(), mnist_layer is not False, passes,
                          positive_int("repeat", 3 if repeat is None else repeat), json, plot,
                          progress=lambda message: print(message, file=sys.stderr, flush=True),
                          accuracy=bool(accuracy), many_channels=bool(many_channels),
                          memory=bool(memory), sweep=sweep, image_sizes=image_sizes)


def run(args):
    """Run the command line ``args`` (without the program name)."""
    keep_freed_memory()  # training steps reuse their big arrays without page faults
    if args[:1] == ["--version"]:
        if args[1:]:  # was "`convlab` takes no option --version here; give a command first"
            raise CommandLineError(f"--version takes no other arguments (got {' '.join(args[1:])!r}); "
                                   "`convlab --version` prints the version")
        print(f"convlab {installed_version()}")
        return
    commands = Commands()
    help_text = check_command_line(commands, args)
    if help_text is not None:
        print(help_text)
        return
    fire.Fire(commands, command=joined_values(args), name="convlab")
