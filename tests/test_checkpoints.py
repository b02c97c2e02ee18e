"""HDF5 checkpoints: round trip, exact resume, resume rules, and every bad checkpoint file."""

import dataclasses
import hashlib
import os

import h5py
import numpy as np
import pytest

from convlab.checkpoints import (
    CheckpointError,
    check_new_checkpoint_path,
    interrupted_message,
    load_checkpoint,
    save_checkpoint,
)
from convlab.files import writer
from convlab.layers import Conv2D, Dense, Flatten, ReLU
from convlab.models import Sequential, reference_net
from convlab.optimizers import SGD
from convlab.training import EpochMetrics, epoch_order
from tests.conftest import file_size_limit
from tests.test_atomic_writes import dead_pid
from tests.test_cli import run_cli

RUN_SETTINGS = dict(backend="im2col", dataset="mnist", epochs=5, batch_size=64, lr=0.01, lr_schedule="cosine",
                    momentum=0.9, seed=0, train_size=256, test_size=128)
SMALL = ("--train-size", "192", "--test-size", "64", "--progress", "False")
def make_checkpoint(path, epochs_done=1, model=None, seed=0):
    """A checkpoint of an untrained ``model`` (default: the reference net) with made-up
    momentum buffers and metrics: what a real one holds, without spending time training."""
    model = reference_net(seed=seed) if model is None else model
    optimizer = SGD(model, lr=0.01, momentum=0.9)
    rng = np.random.default_rng(seed)
    for buffer in optimizer.velocity.values():
        buffer[...] = rng.standard_normal(buffer.shape)
    history = [EpochMetrics(e, 1.0 / e, 0.5, 0.25 + e / 100, 0.5) for e in range(1, epochs_done + 1)]
    save_checkpoint(path, model, optimizer, history, RUN_SETTINGS)
    return model, optimizer, history


def test_round_trip_keeps_weights_momentum_metrics_and_settings(tmp_path):
    path = tmp_path / "ck.h5"
    model, optimizer, history = make_checkpoint(path, epochs_done=3)
    loaded = load_checkpoint(path)
    assert loaded.epoch == 3 and loaded.history == history
    assert loaded.settings["lr"] == 0.01 and loaded.settings["batch_size"] == 64
    assert loaded.settings["format"] == "convlab-checkpoint" and loaded.settings["format_version"] == 1
    assert loaded.settings["network"].startswith("Conv2D(1, 32, kernel_size=(7, 7)")
    fresh = reference_net(seed=99)
    fresh_optimizer = SGD(fresh)
    loaded.restore(fresh, fresh_optimizer)
    for name, param, _ in model.named_parameters():
        assert param.dtype == np.float32
        np.testing.assert_array_equal(fresh.state_dict()[name], param)
        np.testing.assert_array_equal(fresh_optimizer.velocity[name], optimizer.velocity[name])
    # Copied into the arrays: the dense layer's weights and momentum keep their (out, in) layout.
    assert fresh.layers[3].params["w"].T.flags.c_contiguous and fresh_optimizer.velocity["3.w"].T.flags.c_contiguous
    with h5py.File(path) as f:  # the layout h5dump shows
        assert sorted(f["weights"]) == ["0.b", "0.w", "3.b", "3.w"]
        assert f["weights/0.w"].dtype == np.float32
        assert list(f["metrics"].dtype.names) == ["epoch", "train_loss", "train_accuracy", "test_accuracy", "seconds"]


def test_restore_checks_the_momentum_buffers_before_copying_anything(tmp_path):
    """An optimizer of another network got the weights into the model, then failed with
    numpy's "could not broadcast"; a (1,) buffer was broadcast over its parameter's."""
    path = tmp_path / "ck.h5"
    make_checkpoint(path)
    loaded = load_checkpoint(path)
    model, other = reference_net(seed=5), Sequential(Conv2D(1, 32, 5), ReLU(), Flatten(), Dense(18432, 10))
    float64_net = reference_net(seed=5, dtype=np.float64)
    cases = [
        (loaded, SGD(other), "momentum buffer 0.w has shape (32, 1, 7, 7), this optimizer needs (32, 1, 5, 5)"),
        (dataclasses.replace(loaded, velocity=dict(loaded.velocity, **{"3.b": np.ones(1, np.float32)})), SGD(model),
         "momentum buffer 3.b has shape (1,), this optimizer needs (10,)"),
        (dataclasses.replace(loaded, velocity=dict(loaded.velocity, **{"3.b": np.ones(10, np.int64)})), SGD(model),
         "momentum buffer 3.b must be an array of floats (float32 or float64; this optimizer is float32), got int64"),
        (dataclasses.replace(loaded, velocity=dict(loaded.velocity, **{"3.b": np.full(10, 1e300)})), SGD(model),
         "momentum buffer 3.b holds NaN or infinite values or beyond float32's range"),
        (dataclasses.replace(loaded, velocity={"0.w": loaded.velocity["0.w"]}), SGD(model),
         "momentum buffer names ['0.w'] do not match this optimizer's ['0.b', '0.w', '3.b', '3.w']"),
    ]
    for checkpoint, optimizer, message in cases:
        before = {name: p.copy() for name, p in model.state_dict().items()}
        buffers = {name: v.copy() for name, v in optimizer.velocity.items()}
        with pytest.raises(CheckpointError) as e:
            checkpoint.restore(model, optimizer)
        assert str(e.value).startswith(f"{path}'s momentum buffers do not fit this optimizer: {message}"), e.value
        assert "the checkpoint is damaged, or of another network than the optimizer's (it holds 'Conv2D(1, 32" \
            in str(e.value)
        for name, p in model.state_dict().items():
            np.testing.assert_array_equal(p, before[name])
        for name, v in optimizer.velocity.items():
            np.testing.assert_array_equal(v, buffers[name])
    optimizer = SGD(float64_net)  # float32 buffers into float64 ones: cast, as the weights are
    loaded.restore(float64_net, optimizer)
    np.testing.assert_array_equal(optimizer.velocity["0.w"], loaded.velocity["0.w"].astype(np.float64))


def test_save_removes_temp_files_left_by_a_killed_writer_and_no_others(tmp_path):
    """Through atomic_path's rule (tests/test_atomic_writes.py); the save's own loop removed
    every ``.ck.h5.*.tmp`` before, a live writer's too."""
    path = tmp_path / "ck.h5"
    stale, live = (tmp_path / f".ck.h5.{writer().replace(str(os.getpid()), str(pid), 1)}.0123abcd.tmp"
                   for pid in (dead_pid(), os.getppid()))
    unrelated = tmp_path / f".other.h5.{stale.name[len('.ck.h5.'):]}"
    for temporary in (stale, live, unrelated):
        temporary.write_bytes(b"half a checkpoint")
    make_checkpoint(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, unrelated.name, "ck.h5"])


def test_resume_is_bit_identical_to_an_uninterrupted_run(capsys, tmp_path, data_read_once):
    straight, first, resumed = tmp_path / "straight.h5", tmp_path / "first.h5", tmp_path / "resumed.h5"
    assert run_cli(capsys, "train", "--epochs", "2", *SMALL, "--checkpoint", str(straight))[0] == 0
    assert run_cli(capsys, "train", "--epochs", "1", *SMALL, "--checkpoint", str(first))[0] == 0
    code, out, _ = run_cli(capsys, "train", "--resume", str(first), "--epochs", "2", "--progress", "False",
                           "--checkpoint", str(resumed))
    assert code == 0 and f"resuming from {first} after epoch 1" in out and "epoch 2/2" in out
    assert "(im2col, epoch 2, " in out.splitlines()[-1]  # the seconds it gives are this process's epoch's
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert load_checkpoint(first).epoch == 1 and a.epoch == b.epoch == 2
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name])
        np.testing.assert_array_equal(a.velocity[name], b.velocity[name])
    without_seconds = [[(m.epoch, m.train_loss, m.train_accuracy, m.test_accuracy) for m in c.history] for c in (a, b)]
    assert without_seconds[0] == without_seconds[1]
    assert a.settings == b.settings


def test_each_epoch_has_its_own_batch_order_a_pure_function_of_seed_and_epoch():
    """What a checkpoint keeps instead of an RNG state (its seed): the same shuffle for the same
    (seed, epoch), another one for every other epoch or seed."""
    orders = {(seed, epoch): epoch_order(200, seed, epoch) for seed in (0, 1) for epoch in (1, 2)}
    assert all(sorted(order) == list(range(200)) for order in orders.values())
    np.testing.assert_array_equal(orders[0, 1], epoch_order(200, 0, 1))
    assert len({order.tobytes() for order in orders.values()}) == len(orders)


def test_resume_under_another_backend(capsys, tmp_path, data_read_once):
    path = tmp_path / "ck.h5"
    make_checkpoint(path)
    code, out, err = run_cli(capsys, "train", "--resume", str(path), "--epochs", "2", "--backend", "naive",
                             "--progress", "False")
    assert code == 0, err
    assert "training on 256 images, testing on 128, backend naive, 2 epochs of batch 64" in out
    resumed = load_checkpoint(path)
    assert resumed.epoch == 2 and resumed.settings["backend"] == "naive" and resumed.history[0].seconds == 0.5


def test_resuming_on_auto_keeps_the_backends_auto_picked_before(capsys, tmp_path, data_read_once):
    """A pick timed again (the cache cleared, a new convlab version) may be another backend,
    which rounds differently: the continuation would not be the run's."""
    path = tmp_path / "ck.h5"
    model = reference_net(seed=0)
    save_checkpoint(path, model, SGD(model, lr=0.01), [EpochMetrics(1, 1.0, 0.5, 0.3, 0.5)],
                    dict(RUN_SETTINGS, backend="auto", backends="fft"))  # this machine's cache knows no pick
    code, out, err = run_cli(capsys, "train", "--resume", str(path), "--epochs", "2", "--progress", "no")
    assert code == 0, err
    assert ("conv layer 1 (conv 1 -> 32 filters 7x7, stride 1, padding 1, on 28x28): fft (picked by auto before "
            "the resume)") in out and "auto picked" not in out
    assert load_checkpoint(path).backends == ["fft", "fft"]


@pytest.mark.parametrize("argv, message", [
    (["--lr", "0.1"], "--lr 0.1 differs from the checkpoint's 0.01; a resumed run keeps the dataset, batch-size, "
                      "lr, lr-schedule, momentum, seed, train-size, test-size it started with"),
    (["--batch-size", "32"], "--batch-size 32 differs from the checkpoint's 64"),
    (["--train-size", "100"], "--train-size 100 differs from the checkpoint's 256"),
    (["--epochs", "2"], "already holds 2 epochs; pass --epochs greater than 2 to train further"),
    (["--epochs", "two"], "--epochs must be a positive whole number, got 'two'"),
    (["--checkpoint", "{other}"],
     "already exists; refusing to overwrite it (continue the run saved there with --resume"),
])
def test_resume_refuses_changed_settings(capsys, tmp_path, argv, message):
    path, other = tmp_path / "ck.h5", tmp_path / "other.h5"
    make_checkpoint(path, epochs_done=2)
    other.write_text("someone's file")
    before = path.read_bytes()
    argv = [a.format(other=other) for a in argv]
    code, _, err = run_cli(capsys, "train", "--resume", str(path), "--progress", "False", *argv)
    assert code == 2 and message in err and err.startswith("convlab: error: ") and err.count("\n") == 1
    assert path.read_bytes() == before and other.read_text() == "someone's file"


def test_resuming_a_one_epoch_run_to_one_epoch_says_one_epoch(capsys, tmp_path):
    path = tmp_path / "ck.h5"
    make_checkpoint(path, epochs_done=1)
    code, _, err = run_cli(capsys, "train", "--resume", str(path), "--epochs", "1")
    assert code == 2 and err == (f"convlab: error: {path} already holds 1 epoch; pass --epochs greater than 1 "
                                 "to train further\n")


def test_new_run_refuses_to_overwrite_an_existing_file(tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    with pytest.raises(CheckpointError, match="notes.txt already exists; refusing to overwrite it"):
        check_new_checkpoint_path(existing)
    with pytest.raises(ValueError, match="names a folder; give a file name such as"):
        check_new_checkpoint_path(tmp_path)
    with pytest.raises(ValueError, match="new/ names a folder; give a file name such as"):
        check_new_checkpoint_path(f"{tmp_path}/new/")
    assert existing.read_text() == "keep me"


@pytest.mark.parametrize("argv", [["train", "--checkpoint"], ["train", "--resume"], ["evaluate", "--checkpoint"]])
def test_checkpoint_option_without_a_path(capsys, argv):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    option = argv[1]
    assert err == f"convlab: error: `convlab {argv[0]}` option {option} needs a value ({option} {option[2:].upper()})\n"


def test_interrupted_message_names_the_surviving_checkpoint_and_the_command(tmp_path):
    path = tmp_path / "run 1.h5"
    options = dict(epochs=9, backend="naive", data_dir=None, progress=False)
    assert "train with --checkpoint PATH" in interrupted_message(None, None, options)
    assert "no epoch had finished" in interrupted_message(path, None, options)
    make_checkpoint(path, epochs_done=2)
    assert interrupted_message(path, path, options) == (
        f"{path} holds the run after epoch 2; resume with: convlab train --resume '{path}' --epochs 9 "
        "--backend naive --progress no")
    elsewhere = tmp_path / "new.h5"
    assert interrupted_message(elsewhere, path, options).endswith(f"--progress no --checkpoint {elsewhere}")


def test_interrupted_message_reads_only_the_epoch_and_never_raises(tmp_path):
    """It is said while another error is on its way out: a checkpoint it cannot read is said
    to be so (with the command, whose --resume then says what is wrong with the file), and
    one damaged where the epoch is not (its weights gone) still tells the epoch."""
    path = tmp_path / "ck.h5"
    options = dict(epochs=9)
    command = f"resume with: convlab train --resume {path} --epochs 9"
    edit_checkpoint(lambda f: f.__delitem__("weights"))(path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert interrupted_message(path, None, options) == f"{path} holds the run after epoch 1; {command}"
    unknown = "), so which epoch it holds is not known; "
    for damage in (write_truncated, lambda path: path.write_text("epoch 1 loss 0.3\n")):
        damage(path)
        said = interrupted_message(path, None, options)  # h5py's words: "... (file signature not found)"
        assert said.startswith(f"{path} could not be read (") and said.endswith(unknown + command), said
    # Path.exists() raises here (Python 3.11 to 3.13; 3.14 says False), as in a folder that
    # cannot be searched: the one it cannot read, then, or the damaged one it resumed.
    too_long = tmp_path / ("x" * 300)
    assert "could not be read (" in interrupted_message(too_long, path, options)


def write_different_network(path):
    different = Sequential(Conv2D(1, 16, 5, rng=0), ReLU(), Flatten(), Dense(16 * 24 * 24, 10, rng=0))
    make_checkpoint(path, model=different)


def write_deeper_network(path):
    deeper = Sequential(Conv2D(1, 32, 7, padding=1, rng=0), ReLU(), Flatten(), Dense(32 * 24 * 24, 10, rng=0), ReLU(),
                        Dense(10, 10, rng=0))
    make_checkpoint(path, model=deeper)


def write_truncated(path):
    make_checkpoint(path)
    path.write_bytes(path.read_bytes()[:5000])


def write_hdf5_of_other_kind(path):
    with h5py.File(path, "w") as f:  # like the assignment's MNISTdata.hdf5
        f["x_train"] = np.zeros((3, 784), np.float32)


def edit_checkpoint(change):
    def write(path):
        make_checkpoint(path)
        with h5py.File(path, "r+") as f:
            change(f)
    return write


def replace_dataset(name, data):
    def change(f):
        del f[name]
        f[name] = data
    return change


def set_attribute(name, value):
    def change(f):
        f.attrs[name] = value  # made again, of the value's type (modify would convert the value)
    return change


def set_nan(f):
    f["weights/3.b"][0] = np.nan


BAD_CHECKPOINTS = {
    "missing": (None, "checkpoint {path} does not exist"),
    "directory": (lambda path: path.mkdir(), "checkpoint {path} is not a file"),
    "not HDF5": (lambda path: path.write_text("epoch 1 loss 0.3\n"),
                 "{path} is not an HDF5 file; a checkpoint is the HDF5 file written by "
                 "`convlab train --checkpoint PATH`"),
    "empty": (lambda path: path.write_bytes(b""), "{path} is not an HDF5 file"),
    "truncated": (write_truncated, "{path} is a damaged or truncated checkpoint (cannot read it: "),
    "HDF5 of another kind": (write_hdf5_of_other_kind,
                             "{path} is an HDF5 file but not a convlab checkpoint "
                             "(no attribute format='convlab-checkpoint')"),
    "newer format": (edit_checkpoint(lambda f: f.attrs.modify("format_version", 7)),
                     "{path} has checkpoint format version 7; this convlab reads versions up to 1 (upgrade convlab)"),
    "different network": (write_different_network,
                          "{path} is a checkpoint of a different network: parameter 0.w has shape (16, 1, 5, 5), "
                          "this model needs (32, 1, 7, 7); it holds 'Conv2D(1, 16, kernel_size=(5, 5)"),
    "network with more layers": (write_deeper_network,
                                 "{path} is a checkpoint of a different network: parameter names ['0.b', '0.w', "
                                 "'3.b', '3.w', '5.b', '5.w'] do not match this model's ['0.b', '0.w', '3.b', '3.w']"),
    "weight missing": (edit_checkpoint(lambda f: f.__delitem__("weights/3.b")),
                       "{path} is a damaged checkpoint: momentum buffers ['0.b', '0.w', '3.b', '3.w'] do not match"),
    "metrics missing": (edit_checkpoint(lambda f: f.__delitem__("metrics")),
                        "{path} is a damaged or truncated checkpoint (cannot read it: "),
    "weights not floats": (edit_checkpoint(replace_dataset("weights/0.b", ["a"])),
                           "{path} is a damaged checkpoint: weights/0.b is not an array of floats"),
    "attribute missing": (edit_checkpoint(lambda f: f.attrs.__delitem__("lr")),
                          "{path} is a damaged checkpoint: attribute(s) lr missing"),
    "weights not a group": (edit_checkpoint(replace_dataset("weights", [1.0])),
                            "{path} is a damaged or truncated checkpoint (cannot read it: "),
    "metrics disagree with epoch": (edit_checkpoint(lambda f: f.attrs.modify("epoch", 4)),
                                    "{path} is a damaged checkpoint: its metrics are for epochs [1], not 1 to 4"),
    # Text or an array where a number belongs ended in a TypeError (epoch + 1 in train and
    # report); a wrong type of lr on resume was blamed on --lr.
    "epoch is text": (edit_checkpoint(set_attribute("epoch", "x")),
                      "{path} is a damaged checkpoint: attribute epoch is 'x', not a whole number (0 or more)"),
    "epoch is negative": (edit_checkpoint(set_attribute("epoch", -1)),
                          "{path} is a damaged checkpoint: attribute epoch is -1, not a whole number (0 or more)"),
    "seed is an array": (edit_checkpoint(set_attribute("seed", [1, 2])),
                         "{path} is a damaged checkpoint: attribute seed is array([1, 2]), not a whole number"),
    "lr is text": (edit_checkpoint(set_attribute("lr", "fast")),
                   "{path} is a damaged checkpoint: attribute lr is 'fast', not a finite number (0 or more)"),
    # Blamed on --lr and --momentum on resume, options the user never typed.
    "lr is NaN": (edit_checkpoint(set_attribute("lr", float("nan"))),
                  "{path} is a damaged checkpoint: attribute lr is nan, not a finite number (0 or more)"),
    "momentum is negative": (edit_checkpoint(set_attribute("momentum", -0.5)),
                             "{path} is a damaged checkpoint: attribute momentum is -0.5, not a finite number"),
    "dataset is a number": (edit_checkpoint(set_attribute("dataset", 3)),
                            "{path} is a damaged checkpoint: attribute dataset is 3, not text"),
    "format version is text": (edit_checkpoint(set_attribute("format_version", "1")),
                               "{path} is a damaged checkpoint: attribute format_version is '1', not a whole number"),
    # Loaded, and broadcast over the whole buffer on restore.
    "momentum of another shape": (edit_checkpoint(replace_dataset("optimizer/velocity/0.w", np.ones(1, np.float32))),
                                  "{path} is a damaged checkpoint: optimizer/velocity/0.w has shape (1,), but "
                                  "weights/0.w has (32, 1, 7, 7) (a momentum buffer has its parameter's shape)"),
    "NaN weights": (edit_checkpoint(set_nan),
                    "{path} is a damaged checkpoint: weights/3.b holds NaN or infinite values"),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_bad_checkpoint_is_one_error_line_and_left_untouched(capsys, tmp_path, case, command):
    write, message = BAD_CHECKPOINTS[case]
    path = tmp_path / "ck.h5"
    if write is not None:
        write(path)
    fingerprint = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    argv = ["evaluate", "--checkpoint", str(path)] if command == "evaluate" else ["train", "--resume", str(path)]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("convlab: error: " + message.format(path=path)), err
    assert err.count("\n") == 1 and "Traceback" not in err and out == ""
    if fingerprint is not None:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if write is None else ["ck.h5"])


def test_unreadable_checkpoint_says_it_cannot_be_read(capsys, tmp_path, monkeypatch):
    """Not h5py's "[Errno 13] Unable to determine if file is accessible as hdf5 (...)"."""
    path = tmp_path / "ck.h5"
    make_checkpoint(path)

    def denied(name):
        raise PermissionError(13, "Permission denied", str(name))

    monkeypatch.setattr(h5py, "is_hdf5", denied)
    for argv in (["evaluate", "--checkpoint", str(path)], ["train", "--resume", str(path), "--epochs", "2"]):
        code, out, err = run_cli(capsys, *argv)
        assert (code, out, err) == (2, "", f"convlab: error: cannot read checkpoint {path}: Permission denied\n")


def test_a_checkpoint_without_read_permission_says_so(tmp_path):
    from tests.test_no_lost_work import DROP_POWERS, convlab

    if DROP_POWERS is None:
        pytest.skip("file modes do not bind here (root whose capabilities setpriv cannot drop)")
    path = tmp_path / "ck.h5"
    make_checkpoint(path)
    path.chmod(0)
    code, out, err = convlab("evaluate", "--checkpoint", path, powerless=True)
    assert (code, err) == (2, f"convlab: error: cannot read checkpoint {path}: Permission denied\n")



def test_a_save_past_a_file_size_limit_is_a_checkpoint_error(tmp_path):
    """A real limit (``ulimit -f``, as FAT32's 4 GiB): the write fails with EFBIG and h5py's
    close after it raises a RuntimeError, which ended `convlab train` in a traceback, exit 1.
    Now the save's one-line error, with no temporary file left."""
    with file_size_limit(256 << 10), pytest.raises(CheckpointError) as raised:  # a reference checkpoint is 1.5 MB
        make_checkpoint(tmp_path / "ck.h5")
    assert str(raised.value) == f"cannot write checkpoint {tmp_path / 'ck.h5'}: File too large"
    assert list(tmp_path.iterdir()) == []


def test_unwritable_checkpoint_path_is_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*file/ck.h5"):
        make_checkpoint(blocker / "ck.h5")
