"""The up-front memory check: a network whose training step (or, for evaluate and predict,
forward pass) cannot fit in the memory available is refused in one line, before it can drive
the machine into the OOM killer. Nothing here allocates more than a few MB: the available
memory is faked small, and a huge network's weights are broadcast views of one number."""

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import convlab.data
import convlab.settings
from convlab.layers import Conv2D, Dense, Flatten
from convlab.models import Sequential, get_model
from convlab.optimizers import SGD
from convlab.headroom import Headroom, available_memory, stat_fields
from convlab.settings import TrainSettings, UsageError, check_memory
from convlab.training import predict_logits, train_step
from tests.conftest import random_digits
from tests.test_checkpoints import make_checkpoint
from tests.test_cli import run_cli

MiB, GiB = 2**20, 2**30
# Every kind of layer least_memory knows: fused and in-place ReLUs and one of its own,
# padded and unpadded max-pooling, average pooling, a flatten before a dense layer.
NETWORKS = ["reference", "lenet5", "vgg3x3", "c4k3p1 relu maxpool2p1 c6k3 avgpool2 relu flatten dense16 relu dense10",
            "c3k5s2 maxpool3s2 relu dense10"]


REAL_HELD_BYTES = convlab.data.held_bytes


@pytest.fixture
def memory(monkeypatch):
    """Set the memory available (bytes, or None: unknown) that the check reads, and the
    container's memory limit that sets it (None: the machine's memory). The data set then
    counts nothing, so that the network's own bytes decide (its 210 MiB are tested in
    test_the_data_set_the_run_holds_is_counted)."""
    def set_memory(available, limit=None, kind="cgroup", in_use=0, reserved=0):
        headroom = None if available is None else Headroom(available, limit, kind if limit else "memory", in_use,
                                                           reserved)
        monkeypatch.setattr(convlab.settings, "available_memory", lambda reserved=0: headroom)
        monkeypatch.setattr(convlab.data, "held_bytes", lambda sizes: 0)
    return set_memory


def test_the_data_set_the_run_holds_is_counted(capsys, memory, monkeypatch, tmp_path):
    """A run holds its whole data set (MNIST's 70 000 float32 images and int64 labels: 209.9
    MiB, far more than the reference network's 6.8 MiB), whatever --train-size uses of it:
    in a container limited to 400 MiB, a network whose step alone would fit was refused
    by nothing and ended by the OOM killer."""
    assert REAL_HELD_BYTES(convlab.data.split_sizes("mnist", None)) == 70000 * (784 * 4 + 8)
    assert REAL_HELD_BYTES(convlab.data.split_sizes("mnist", tmp_path)) == 0  # no data there: counts nothing (loading says why)
    step = get_model("reference").build().least_memory(64)
    memory(step + REAL_HELD_BYTES(convlab.data.split_sizes("mnist", None)) - 1, limit=400 * MiB)
    monkeypatch.setattr(convlab.data, "held_bytes", REAL_HELD_BYTES)
    code, out, err = run_cli(capsys, "train", "--train-size", "640", "--progress", "no")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(
        "convlab: error: the reference network needs at least 216.7 MiB of memory for a training step on 64 images "
        "(weights, momentum, activations, gradients), with the data set loaded (209.9 MiB), but 216.7 MiB is "
        "available under the container's memory limit of 400.0 MiB (cgroup)")
    memory(step + REAL_HELD_BYTES(convlab.data.split_sizes("mnist", None)) + 5 * MiB)
    monkeypatch.setattr(convlab.data, "held_bytes", REAL_HELD_BYTES)
    TrainSettings(train_size=640)  # fits, the evaluation's pass on 128 images (4 MiB more than a step) too
    # evaluate reads the data set after the network, and counts it too.
    make_checkpoint(tmp_path / "ck.h5")
    memory(get_model("reference").build().least_memory(128, training=False) + MiB)
    monkeypatch.setattr(convlab.data, "held_bytes", REAL_HELD_BYTES)
    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", str(tmp_path / "ck.h5"))
    assert code == 2 and "with the data set loaded (209.9 MiB)" in err


def test_images_become_floats_in_place_with_the_same_bits():
    """The uint8 -> float32 conversion divides in place (one float32 copy of MNIST's training
    images at a time, not two), giving what dividing into a new array gave."""
    images = (np.arange(3 * 28 * 28) % 256).astype(np.uint8).reshape(3, 28, 28)
    floats = convlab.data.images_to_float(images)
    assert floats.dtype == np.float32 and floats.shape == (3, 1, 28, 28)
    assert np.array_equal(floats, (images.astype(np.float32) / 255.0)[:, None])
    tracemalloc.start()
    try:
        convlab.data.images_to_float(np.zeros((1000, 28, 28), np.uint8))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * 1000 * 784 * 4


def traced_peak(run) -> int:
    """The peak of the memory numpy and Python allocate while ``run()`` builds and runs a network."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", NETWORKS)
def test_the_estimate_is_below_what_training_steps_and_forward_passes_take(name):
    batch, rng = 16, np.random.default_rng(0)
    x, y = rng.random((batch, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, batch)
    model = get_model(name)

    def two_steps():  # from the second on, last step's gradients are held too
        network = model.build()
        optimizer = SGD(network, lr=0.01, momentum=0.9)
        for _ in range(2):
            train_step(network, optimizer, x.copy(), y)

    least = model.build().least_memory(batch)
    # Backends' workspaces (im2col's unrolled windows, 9x a 3x3 layer's input) are not counted.
    assert 0.1 * traced_peak(two_steps) < least <= traced_peak(two_steps)
    forward = model.build().least_memory(batch, training=False)
    assert forward <= traced_peak(lambda: predict_logits(model.build(), x.copy())) and forward < least


def test_the_estimate_of_a_small_network_by_hand():
    network = get_model("c8k3 dense10").build()  # conv 1 -> 8, 26x26 (not fused: no ReLU), flatten, dense 5408 -> 10
    batch, weights, conv_out = 4 * 784 * 4, (8 * 9 + 8 + 5408 * 10 + 10) * 4, 4 * 8 * 26 * 26 * 4
    gradients = max(weights, 4 * 10 * 4 + conv_out)  # all the weights', or dense's dy and dx
    assert network.least_memory(4) == 2 * weights + batch + conv_out + gradients  # dense keeps the conv's output
    assert network.least_memory(4, training=False) == weights + batch + conv_out + 4 * 10 * 4  # dense's x and y


def huge_network(filters=100_000) -> Sequential:
    """``c100000k3 dense10`` without its 2.7 GB of weights: read-only views of a zero."""
    conv, dense = Conv2D(1, 1, 3), Dense(1, 10)
    conv.params.update(w=np.broadcast_to(np.float32(0), (filters, 1, 3, 3)),
                       b=np.broadcast_to(np.float32(0), (filters,)))
    dense.params.update(w=np.broadcast_to(np.float32(0), (filters * 26 * 26, 10)), b=np.zeros(10, np.float32))
    return Sequential(conv, Flatten(), dense)


def test_the_network_that_the_oom_killer_ended_is_refused_on_this_machine(memory):
    """`train --model "c100000k3 dense10"`: 17 GB of activations for a batch of 64, the weights
    (2.7 GB) three times (with their momentum and gradients): more than this 24 GB machine
    has. (Their gradients, 17 GB more, need not be an array: the dense layer may hand them on
    as factors, convlab.factored.)"""
    needed = huge_network().least_memory(64)
    assert 23 * GiB < needed < 24 * GiB
    memory(22 * GiB)
    with pytest.raises(UsageError) as refused:
        check_memory(needed, "c100000k3 dense10", 64)
    assert str(refused.value) == (
        "the c100000k3 dense10 network needs at least 23.7 GiB of memory for a training step on 64 images "
        "(weights, momentum, activations, gradients), but 22.0 GiB is available on this machine; lower "
        "--batch-size, or the network's size (the filters of c<F>k<K> and units of dense<N> in its spec) (if more "
        "memory will be there than the kernel reports now, --memory-check no skips this check)")
    assert huge_network().least_memory(1, training=False) < 3 * GiB  # predict would fit


@pytest.mark.parametrize("name, mib", [("reference", 6.8), ("lenet5", 4.1), ("vgg3x3", 24.7)])
def test_the_built_in_networks_need_a_small_fraction_of_the_memory(name, mib):
    """At the default batch, tens of MB (as docs/training.md says): far below any machine's
    available memory (and this one's)."""
    assert round(get_model(name).build().least_memory(64) / MiB, 1) == mib
    available = available_memory()
    assert available is None or available.nbytes > 1 * GiB
    TrainSettings(model=name)  # checked against this machine's memory, and passes


def test_train_refuses_in_one_line_before_anything_runs(capsys, memory, tmp_path):
    memory(29 * MiB)  # its evaluation's pass on 128 test images needs 28.7 MiB
    code, out, err = run_cli(capsys, "train", "--model", "c64k3p1 relu dense10", "--batch-size", "128",
                             "--checkpoint", str(tmp_path / "run.h5"), "--progress", "no")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("convlab: error: the c64k3p1 relu dense10 network needs at least 30.6 MiB of memory for "
                          "a training step on 128 images (weights, momentum, activations, gradients), but 29.0 MiB "
                          "is available on this machine; lower --batch-size")
    assert list(tmp_path.iterdir()) == []
    # The batch is at most --train-size images; and a smaller one fits.
    assert TrainSettings(model="c64k3p1 relu dense10", batch_size=128, train_size=32).batch_size == 128
    settings = TrainSettings(model="c64k3p1 relu dense10", batch_size=32)
    # Once the run's model and data take memory, the settings' copies are not checked again.
    memory(1 * MiB)
    copied = settings.with_backends(["im2col"]).with_data_sizes(60000, 10000)
    assert (copied.backends, copied.train_size, copied.model) == ("im2col", 60000, "c64k3p1 relu dense10")
    assert (settings.backends, settings.train_size) == (None, None)  # copies: the settings stay as they were
    with pytest.raises(UsageError, match="needs at least"):
        TrainSettings(model="c64k3p1 relu dense10", batch_size=32)


def test_a_resumed_run_is_checked_and_not_told_to_lower_what_it_cannot_change(capsys, memory, tmp_path):
    """Its network and --batch-size are the checkpoint's (a resume refuses another)."""
    path = tmp_path / "ck.h5"
    make_checkpoint(path)  # the reference network, batches of 64
    memory(4 * MiB)
    code, out, err = run_cli(capsys, "train", "--resume", str(path), "--epochs", "3", "--progress", "no")
    assert code == 2 and out == "" and err == (
        "convlab: error: the reference network needs at least 6.8 MiB of memory for a training step on 64 images "
        "(weights, momentum, activations, gradients), but 4.0 MiB is available on this machine; a resumed run keeps "
        "the network and --batch-size it started with: free memory, or resume it on a machine with more (if more "
        "memory will be there than the kernel reports now, --memory-check no skips this check)\n")


def test_a_training_run_is_checked_for_its_evaluation_after_each_epoch(capsys, memory, tmp_path):
    """fit evaluates the test images 128 at a time after every epoch, the momentum held: with
    a small --batch-size that pass needs more than a step, and a run checked for its steps
    alone would be ended by the OOM killer at the end of its first epoch."""
    spec = "c512k3p1 relu dense10"
    network = get_model(spec).build()
    momentum = sum(param.nbytes for _, param, _ in network.named_parameters())
    evaluation = network.least_memory(128, training=False) + momentum
    assert network.least_memory(8) < evaluation / 3
    memory(evaluation - 1)
    code, out, err = run_cli(capsys, "train", "--model", spec, "--batch-size", "8", "--progress", "no")
    assert code == 2 and out == "" and err == (
        f"convlab: error: the {spec} network needs at least 227.1 MiB of memory for the evaluation after each "
        "epoch, a forward pass on 128 test images (weights, momentum and activations), but 227.1 MiB is available "
        "on this machine; lower --test-size below 128, or the network's size (the filters of c<F>k<K> and units "
        "of dense<N> in its spec) (if more memory will be there than the kernel reports now, --memory-check no "
        "skips this check)\n")
    memory(evaluation)
    TrainSettings(model=spec, batch_size=8)
    memory(network.least_memory(64, training=False) + momentum)
    TrainSettings(model=spec, batch_size=8, test_size=64)  # evaluated all at once
    with pytest.raises(UsageError, match="for the evaluation after each epoch, a forward pass on 65 test images"):
        TrainSettings(model=spec, batch_size=8, test_size=65)
    # A resumed run's step fits, its evaluation (its --test-size is the checkpoint's) does not.
    path = tmp_path / "ck.h5"
    make_checkpoint(path)  # the reference network, batches of 64, 128 test images
    memory(get_model("reference").build().least_memory(64))
    code, out, err = run_cli(capsys, "train", "--resume", str(path), "--epochs", "3", "--progress", "no")
    assert code == 2 and "needs at least 10.8 MiB of memory for the evaluation after each epoch" in err
    assert "; a resumed run keeps the network and --test-size it started with: free memory, or resume it " in err


def test_a_resumed_run_holds_one_copy_of_its_checkpoint(monkeypatch, tmp_path):
    """The settings are read twice (before and after the outputs are claimed), the checkpoint
    with them: the first copy of its weights and momentum is let go, not held all run."""
    import gc
    import weakref

    import convlab.checkpoints

    path = tmp_path / "ck.h5"
    make_checkpoint(path)
    load, loaded = convlab.checkpoints.load_checkpoint, []
    monkeypatch.setattr(convlab.checkpoints, "load_checkpoint", lambda p: loaded.append(load(p)) or loaded[-1])
    with TrainSettings.claimed(resume=str(path), epochs=3) as (_, resumed):
        first = weakref.ref(loaded.pop(0))
        gc.collect()
        assert first() is None and loaded == [resumed]


def test_without_a_reading_of_the_memory_nothing_is_checked(memory, tmp_path):
    memory(None)
    TrainSettings(model="c64k3p1 relu dense10", batch_size=4096)
    assert available_memory(tmp_path) is None  # not Linux: no /proc
    meminfo = made_up_root(tmp_path, meminfo="MemTotal:       24683652 kB\nMemAvailable:   1024 kB\n")
    assert available_memory(tmp_path) == Headroom(1024 * 1024)
    meminfo.write_text("MemAvailable:   1024 kB\nSwapTotal:    8192 kB\nSwapFree:    2048 kB\n")
    assert available_memory(tmp_path) == Headroom(3072 * 1024)  # a run that swaps is slow, but finishes
    meminfo.write_text("MemTotal:       24683652 kB\n")  # a kernel before 3.14
    assert available_memory(tmp_path) is None


def test_evaluate_and_predict_check_one_forward_pass(capsys, memory, tmp_path):
    path = tmp_path / "ck.h5"
    make_checkpoint(path)  # the reference network
    np.save(tmp_path / "digit.npy", np.eye(28, dtype=np.float32))
    memory(4 * MiB)
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", str(path))
    assert code == 2 and err == ("convlab: error: the reference network needs at least 10.1 MiB of memory for a "
                                 "forward pass on 128 images (weights and activations), but 4.0 MiB is available on "
                                 "this machine; "
                                 "free memory, or run it on a machine with more (if more memory will be there than "
                                 "the kernel reports now, --memory-check no skips this check)\n")
    memory(1 * MiB)
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", str(path), "--test-size", "8")
    assert code == 2 and "at least 1.3 MiB of memory for a forward pass on 8 images (" in err
    code, out, err = run_cli(capsys, "predict", str(tmp_path / "digit.npy"), "--checkpoint", str(path))
    assert code == 0 and out.startswith("digit: "), err  # one image fits
    memory(MiB // 2)
    code, _, err = run_cli(capsys, "predict", str(tmp_path / "digit.npy"), "--checkpoint", str(path))
    assert code == 2 and "at least 0.8 MiB of memory for a forward pass on 1 image (" in err


def test_memory_check_no_skips_the_check(capsys, data_read_once, memory, monkeypatch, tmp_path):
    """For a user who knows more memory will be there than the kernel reports (overcommit, a
    swap file that grows): train, evaluate and predict run on; on a resume it is given again,
    and the command that resumes an interrupted run keeps it."""
    import convlab.run

    memory(1024)
    assert TrainSettings(model="c64k3p1 relu dense10", memory_check=False).memory_check is False
    code, out, err = run_cli(capsys, "train", "--model", "c2k3 dense10", "--train-size", "32", "--test-size", "32",
                             "--epochs", "1", "--progress", "no", "--memory-check", "no")
    assert code == 0 and "epoch 1/1" in out, err
    path = tmp_path / "ck.h5"
    make_checkpoint(path)
    np.save(tmp_path / "digit.npy", np.eye(28, dtype=np.float32))
    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", str(path), "--test-size", "8", "--memory-check", "no")
    assert code == 0 and "test accuracy" in out, err
    code, out, err = run_cli(capsys, "predict", str(tmp_path / "digit.npy"), "--checkpoint", str(path),
                             "--memory-check", "no")
    assert code == 0 and out.startswith("digit: "), err

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convlab.run, "fit", interrupted)
    code, _, err = run_cli(capsys, "train", "--resume", str(path), "--epochs", "3", "--progress", "no",
                           "--memory-check", "no")
    assert code == 130 and err.endswith(f"resume with: convlab train --resume {path} --epochs 3 --backend im2col "
                                        "--progress no --memory-check no\n")


@pytest.mark.parametrize("value", ["no", 0, None])
def test_memory_check_is_yes_or_no(capsys, value):
    with pytest.raises(UsageError, match=f"--memory-check takes yes or no \\(True or False\\), got {value!r}"):
        TrainSettings(memory_check=value)
    code, _, err = run_cli(capsys, "train", "--memory-check", "maybe")
    assert code == 2 and err.startswith("convlab: error: --memory-check takes yes or no (also true/false, on/off, "
                                        "1/0), got 'maybe'")


def test_the_batch_counted_is_at_most_the_images_used(capsys, memory, tmp_path):
    """A training batch is a slice of the training images (train_epoch), an evaluation batch
    one of the test images (predict_logits): --batch-size beyond them is not counted."""
    step = get_model("reference").build().least_memory
    memory((step(60000) + step(100000)) // 2)  # MNIST's 60 000 training images fit, 100 000 would not
    assert TrainSettings(batch_size=100000).batch_size == 100000
    memory(step(60000) - 1)
    with pytest.raises(UsageError, match="for a training step on 60000 images"):
        TrainSettings(batch_size=100000)
    data = str(random_digits(tmp_path / "tiny.hdf5"))  # 64 training images, 32 test images
    memory(step(64))
    TrainSettings(batch_size=1000, data_dir=data)
    memory(step(47))
    with pytest.raises(UsageError, match="for a training step on 48 images"):  # --train-size, if fewer
        TrainSettings(batch_size=1000, data_dir=data, train_size=48)
    path = tmp_path / "ck.h5"
    make_checkpoint(path)  # the reference network on mnist
    forward = get_model("reference").build().least_memory(32, training=False)
    memory(forward)
    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", str(path), "--data-dir", data)
    assert code == 0 and "/32)" in out, err  # batches of 128 images: all 32 at once
    memory(forward - 1)
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", str(path), "--data-dir", data)
    assert code == 2 and "for a forward pass on 32 images (" in err


def test_the_number_of_images_is_read_from_the_files_headers(tmp_path):
    from convlab.data import DEFAULT_DATA_DIR, split_size

    assert (split_size("mnist", None, "train"), split_size("mnist", None, "test")) == (60000, 10000)  # .gz
    plain = tmp_path / "plain"
    plain.mkdir()
    header = bytes.fromhex("00000803 0000002a 0000001c 0000001c")
    (plain / "t10k-images-idx3-ubyte").write_bytes(header + bytes(42 * 784))
    assert split_size("mnist", plain, "test") == 42 and split_size("mnist", plain, "train") is None  # missing
    # A damaged header, or a cut file: not a count (the load says what is wrong, not the memory check).
    (plain / "t10k-images-idx3-ubyte").write_bytes(header + bytes(41 * 784))
    assert split_size("mnist", plain, "test") is None
    (plain / "t10k-images-idx3-ubyte").write_bytes(bytes.fromhex("00000803 7fffffff 0000001c 0000001c"))
    assert split_size("mnist", plain, "test") is None
    (plain / "t10k-images-idx3-ubyte").write_bytes(bytes.fromhex("00000803 0000002a 0000001c 0000001d") + bytes(42 * 812))
    assert split_size("mnist", plain, "test") is None  # 28 x 29 images: not this data set's
    data = random_digits(tmp_path / "tiny.hdf5", train=20, test=30)
    assert (split_size("mnist", data, "train"), split_size("mnist", tmp_path, "test")) == (20, None)
    (tmp_path / "MNISTdata.hdf5").write_bytes(data.read_bytes())  # a folder holding it
    assert split_size("mnist", tmp_path, "test") == 30
    (plain / "t10k-images-idx3-ubyte").write_bytes(b"not an idx file")
    (plain / "train-images-idx3-ubyte.gz").write_bytes((DEFAULT_DATA_DIR / "mnist" / "SHA256SUMS").read_bytes())
    # Neither can be loaded (the load says why), nor read here: not known.
    assert split_size("mnist", plain, "test") is None and split_size("mnist", plain, "train") is None
    assert split_size("mnist", tmp_path / "nowhere", "train") is None


def made_up_root(root, cgroup="", files=(), meminfo="MemAvailable: 8388608 kB\nSwapFree: 0 kB\n"):
    """A made-up / in ``root``: /proc/meminfo (8 GiB available), /proc/self/cgroup holding
    ``cgroup``, and ``files`` (path under /sys/fs/cgroup, text). Returns /proc/meminfo's path."""
    (root / "proc" / "self").mkdir(parents=True, exist_ok=True)
    if cgroup:
        (root / "proc" / "self" / "cgroup").write_text(cgroup)
    for name, text in dict(files).items():
        path = root / "sys" / "fs" / "cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "proc" / "meminfo").write_text(meminfo)
    return root / "proc" / "meminfo"


def v2(folder, limit, current=GiB, active_file=0, inactive_file=0):
    """The memory files of the cgroup v2 ``folder`` ("" for the root of the mount)."""
    prefix = folder + "/" if folder else ""
    return {prefix + "memory.max": f"{limit}\n", prefix + "memory.current": f"{current}\n",
            prefix + "memory.stat": f"anon {current}\nfile {active_file + inactive_file}\nactive_file {active_file}\n"
                                    f"inactive_file {inactive_file}\nshmem 0\n"}


def test_a_container_s_memory_limit_is_read_from_its_cgroup(tmp_path):
    """cgroup v2: the limit on the process's own cgroup (/proc/self/cgroup's 0::/path)."""
    made_up_root(tmp_path, "0::/docker/abc\n", v2("docker/abc", 2 * GiB, current=GiB + 512 * MiB))
    assert available_memory(tmp_path) == Headroom(512 * MiB, 2 * GiB, "cgroup")  # below the machine's 8 GiB
    made_up_root(tmp_path, files=v2("docker/abc", 16 * GiB))
    assert available_memory(tmp_path) == Headroom(8 * GiB)  # the machine has less: it sets the headroom
    made_up_root(tmp_path, files=v2("docker/abc", "max"))
    assert available_memory(tmp_path) == Headroom(8 * GiB)  # "max": no limit
    made_up_root(tmp_path, files=v2("docker/abc", 2 * GiB, current=GiB + 512 * MiB),
                 meminfo="MemAvailable: 8388608 kB\nSwapFree: 1048576 kB\n")
    assert available_memory(tmp_path) == Headroom(GiB + 512 * MiB, 2 * GiB, "cgroup")  # and the swap it may use


def test_the_page_cache_counts_as_available_under_a_limit(tmp_path):
    """memory.current counts the files the cgroup read (the data set, a pip install); the
    kernel reclaims that cache, active or inactive, before its OOM killer ends a process."""
    made_up_root(tmp_path, "0::/\n", v2("", 2 * GiB, current=2 * GiB, active_file=GiB, inactive_file=256 * MiB))
    assert available_memory(tmp_path) == Headroom(GiB + 256 * MiB, 2 * GiB, "cgroup")


def test_a_limit_on_a_parent_cgroup_binds_a_nested_one(tmp_path):
    """A systemd slice, or a container whose runtime nests the process's cgroup."""
    made_up_root(tmp_path, "0::/user.slice/user-1000.slice/session-1.scope\n", {
        **v2("user.slice", 8 * GiB, current=5 * GiB), **v2("user.slice/user-1000.slice", 4 * GiB, current=3 * GiB),
        **v2("user.slice/user-1000.slice/session-1.scope", "max")})
    assert available_memory(tmp_path) == Headroom(GiB, 4 * GiB, "cgroup")


def test_in_a_container_without_a_cgroup_namespace_the_mount_root_is_its_cgroup(tmp_path):
    """/proc/self/cgroup names the host's path, which is not under the container's mount."""
    made_up_root(tmp_path, "0::/system.slice/docker-abc.scope\n", v2("", GiB, current=256 * MiB))
    assert available_memory(tmp_path) == Headroom(768 * MiB, GiB, "cgroup")
    made_up_root(tmp_path, "0::/../../elsewhere\n")  # outside the namespace: not read
    assert available_memory(tmp_path) == Headroom(8 * GiB)


def test_cgroup_v1_memory_controller(tmp_path):
    made_up_root(tmp_path, "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n", {
        "memory/docker/abc/memory.limit_in_bytes": f"{GiB}\n", "memory/docker/abc/memory.usage_in_bytes": f"{GiB}\n",
        "memory/docker/abc/memory.stat": f"cache {GiB}\nactive_file 0\ninactive_file 0\n"
                                         f"total_active_file {128 * MiB}\ntotal_inactive_file {128 * MiB}\n"})
    assert available_memory(tmp_path) == Headroom(256 * MiB, GiB, "cgroup")  # the hierarchy's page cache: total_*
    made_up_root(tmp_path, files={"memory/docker/abc/memory.limit_in_bytes": "9223372036854771712\n"})
    assert available_memory(tmp_path) == Headroom(8 * GiB)  # v1's "no limit": the largest page count


@pytest.mark.parametrize("broken", ["memory.max", "memory.current", "memory.stat", "cgroup"])
@pytest.mark.parametrize("how", ["missing", "a folder", "garbage", "not text"])
def test_a_cgroup_file_that_cannot_be_read_means_not_known(tmp_path, broken, how):
    """Never a crash, never a refusal on a guess: the machine's figure stands."""
    made_up_root(tmp_path, "0::/\n", v2("", GiB, current=GiB - MiB))
    assert available_memory(tmp_path) == Headroom(MiB, GiB, "cgroup")
    path = tmp_path / ("proc/self/cgroup" if broken == "cgroup" else f"sys/fs/cgroup/{broken}")
    path.unlink()
    if how == "a folder":  # as root, a file's mode does not stop reading it; a folder in its place does
        path.mkdir()
    elif how == "garbage":
        path.write_text({"cgroup": "0:\n", "memory.stat": "active_file many\n"}.get(broken, "lots\n"))
    elif how == "not text":
        path.write_bytes(b"0::/\xff\xfe\n")
    assert available_memory(tmp_path) == Headroom(8 * GiB)


def test_the_refusal_names_the_container_s_limit(capsys, memory, tmp_path):
    memory(4 * MiB, limit=512 * MiB)
    code, _, err = run_cli(capsys, "train", "--progress", "no")
    assert code == 2 and err == (
        "convlab: error: the reference network needs at least 6.8 MiB of memory for a training step on 64 images "
        "(weights, momentum, activations, gradients), but 4.0 MiB is available under the container's memory limit "
        "of 512.0 MiB (cgroup); lower --batch-size, or the network's size (the filters of c<F>k<K> and units of "
        "dense<N> in its spec) (if more memory will be there than the kernel reports now, --memory-check no skips "
        "this check)\n")
    path = tmp_path / "ck.h5"
    make_checkpoint(path)
    code, _, err = run_cli(capsys, "train", "--resume", str(path), "--epochs", "3", "--progress", "no")
    assert code == 2 and "free memory, or resume it under a higher memory limit (" in err
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", str(path))
    assert code == 2 and "free memory, or run it under a higher memory limit (" in err


def test_the_refusal_names_a_process_limit_and_the_limit_that_would_do(capsys, memory, tmp_path):
    """Under ulimit -v (or -d) the address space runs out, not the memory: the message says
    which limit, what the process takes of it already, what its threads will, and the
    ulimit (in KiB, as the shell takes it) that would let the run start."""
    memory(4 * MiB, limit=300 * MiB, kind="ulimit -v", in_use=200 * MiB, reserved=96 * MiB)
    code, _, err = run_cli(capsys, "train", "--progress", "no")
    needed = get_model("reference").build().least_memory(64)
    assert code == 2 and err == (
        "convlab: error: the reference network needs at least 6.8 MiB of memory for a training step on 64 images "
        "(weights, momentum, activations, gradients), but 4.0 MiB is available under the address-space limit of "
        "300.0 MiB (ulimit -v; 200.0 MiB in use already, 96.0 MiB kept for the stacks, buffers and malloc arenas of "
        f"the threads it starts); raise it (ulimit -v {-(-(296 * MiB + needed) // 1024)} at least), or lower "
        "--batch-size, or the network's size (the filters of c<F>k<K> and units of dense<N> in its spec) (if more "
        "memory will be there than the kernel reports now, --memory-check no skips this check)\n")
    memory(4 * MiB, limit=300 * MiB, kind="ulimit -d", in_use=200 * MiB)
    path = tmp_path / "ck.h5"
    make_checkpoint(path)
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", str(path))
    assert code == 2 and "but 4.0 MiB is available under the data-segment limit of 300.0 MiB (ulimit -d; 200.0 MiB " \
        "in use already); raise it (ulimit -d " in err and "free memory, or run it under a higher ulimit -d (" in err


def made_up_status(root, vm_size, vm_data):
    """A made-up /proc/self/status under ``root`` (sizes in bytes, written in kB as the kernel does)."""
    (root / "proc" / "self").mkdir(parents=True, exist_ok=True)
    (root / "proc" / "self" / "status").write_text(
        f"Name:\tpython\nVmPeak:\t{vm_size // 512} kB\nVmSize:\t{vm_size // 1024} kB\nVmRSS:\t1024 kB\n"
        f"VmData:\t{vm_data // 1024} kB\nThreads:\t3\n")


def test_a_process_limit_leaves_the_limit_less_what_the_process_takes(tmp_path):
    """ulimit -v bounds VmSize (every mapping, reserved or touched), ulimit -d VmData; what
    the run's threads will map is taken off too. Swap does not help: the least headroom wins."""
    made_up_root(tmp_path)  # 8 GiB available
    made_up_status(tmp_path, vm_size=200 * MiB, vm_data=120 * MiB)
    assert available_memory(tmp_path, limits={}) == Headroom(8 * GiB)
    assert available_memory(tmp_path, limits={"ulimit -v": 600 * MiB}, reserved=50 * MiB) == Headroom(
        350 * MiB, 600 * MiB, "ulimit -v", 200 * MiB, 50 * MiB)
    assert available_memory(tmp_path, limits={"ulimit -v": 600 * MiB, "ulimit -d": 300 * MiB}) == Headroom(
        180 * MiB, 300 * MiB, "ulimit -d", 120 * MiB)
    assert available_memory(tmp_path, limits={"ulimit -v": 100 * MiB}) == Headroom(0, 100 * MiB, "ulimit -v", 200 * MiB)
    assert available_memory(tmp_path, limits={"ulimit -v": 64 * GiB}) == Headroom(8 * GiB)  # the machine has less
    made_up_root(tmp_path, "0::/\n", v2("", GiB, current=GiB - 100 * MiB))  # a container's limit, lower still
    assert available_memory(tmp_path, limits={"ulimit -v": 600 * MiB}) == Headroom(100 * MiB, GiB, "cgroup")
    (tmp_path / "proc" / "meminfo").unlink()  # the machine's memory not known: the limit's headroom stands
    (tmp_path / "proc" / "self" / "cgroup").unlink()
    assert available_memory(tmp_path, limits={"ulimit -v": 600 * MiB}).kind == "ulimit -v"
    (tmp_path / "proc" / "self" / "status").write_text("Name:\tpython\n")  # not Linux's: not known
    assert available_memory(tmp_path, limits={"ulimit -v": 600 * MiB}) is None


def test_the_process_limits_are_the_soft_ones_set(monkeypatch):
    import resource

    limits = {resource.RLIMIT_AS: (resource.RLIM_INFINITY, resource.RLIM_INFINITY),
              resource.RLIMIT_DATA: (300 * MiB, resource.RLIM_INFINITY)}
    monkeypatch.setattr(resource, "getrlimit", limits.get)
    assert convlab.headroom.process_limits() == {"ulimit -d": 300 * MiB}
    limits[resource.RLIMIT_AS] = (GiB, 2 * GiB)
    assert convlab.headroom.process_limits() == {"ulimit -v": GiB, "ulimit -d": 300 * MiB}


def test_the_threads_a_run_starts_are_counted_under_a_process_limit(monkeypatch):
    """Each chunk-pool helper not yet started: a stack (RLIMIT_STACK's size; 2 MiB where it
    is unlimited), an OpenBLAS buffer and a malloc arena (fewer under MALLOC_ARENA_MAX);
    the calling thread's OpenBLAS buffer; a backend's own threads (FFTW's): a stack each."""
    import resource

    import convlab.threads as threads

    monkeypatch.setattr(threads, "_pool", None)
    monkeypatch.setattr(threads, "worker_count", lambda: 3)
    monkeypatch.setattr(threads.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    stack = {resource.RLIMIT_STACK: (8 * MiB, resource.RLIM_INFINITY)}
    monkeypatch.setattr(resource, "getrlimit", stack.get)
    openblas = any(lib.internal_api == "openblas" for lib in threads._blas.lib_controllers)
    buffers = 3 * 32 * MiB if openblas else 0
    assert threads.reserved_by_threads() == 2 * 8 * MiB + buffers + 2 * 64 * MiB
    assert threads.reserved_by_threads(own_threads=1) == 3 * 8 * MiB + buffers + 2 * 64 * MiB
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # the main arena and one more
    stack[resource.RLIMIT_STACK] = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    assert threads.reserved_by_threads() == 2 * 2 * MiB + buffers + 64 * MiB


def test_a_backend_s_own_threads_are_counted(monkeypatch):
    """FFTW's threads (CONVLAB_FFT_THREADS) but the calling one, and the tile helpers beyond
    the chunk pool's; auto may time the FFT backends, so it counts theirs; im2col starts
    none but the pool's."""
    import convlab.fftw
    from convlab.registry import get_backend

    monkeypatch.setattr(convlab.fftw, "settings", lambda: convlab.fftw.Settings(3, "measure", None))
    monkeypatch.setattr(convlab.fftw, "worker_count", lambda: 2)
    assert get_backend("fft").own_threads() == get_backend("fft-tiled").own_threads() == 2 + 1
    assert get_backend("auto").own_threads() == 3 and get_backend("im2col").own_threads() == 0


def own_v1_memory_cgroup() -> Path | None:
    """This process's cgroup v1 memory folder where a child can be made here (root, a
    writable hierarchy, as on these CI machines), else None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            folder = Path("/sys/fs/cgroup", controllers) / path.lstrip("/")
            if (folder / "memory.limit_in_bytes").is_file() and os.access(folder, os.W_OK):
                return folder
    return None


def test_a_real_container_limit_refuses_what_would_be_oom_killed(tmp_path, tiny_data):
    """In a real cgroup v1 memory limit of 300 MiB (the machine has GBs free), a network that
    needs ~460 MiB is refused in one line naming the limit, instead of being ended by the OOM
    killer (exit 137): the real /proc/self/cgroup and cgroup files are read as the fake trees
    above say. Made only where this process may make a child cgroup (root, cgroup v1's
    memory controller, as on this project's machines); skipped elsewhere."""
    parent = own_v1_memory_cgroup()
    if parent is None:
        pytest.skip("needs a writable cgroup v1 memory controller (root)")
    # The check counts free swap as room (a run that swaps finishes), and names the machine
    # where it has less free than the limit: either would make this another test.
    meminfo = stat_fields("/proc/meminfo", ("MemAvailable", "SwapFree"))
    if meminfo.get("SwapFree", 0) * 1024 > 100 * MiB or meminfo.get("MemAvailable", 0) * 1024 < 600 * MiB:
        pytest.skip(f"needs no free swap and 600 MiB free; /proc/meminfo has {meminfo} (kB)")
    limited = parent / f"convlab-test-{os.getpid()}"
    try:
        limited.mkdir()
    except OSError as e:
        pytest.skip(f"cannot make a cgroup here: {e}")
    try:
        (limited / "memory.limit_in_bytes").write_text(str(300 * MiB))
    except OSError as e:
        limited.rmdir()  # not left behind
        pytest.skip(f"cannot limit a cgroup here: {e}")
    try:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        # A shell enters the cgroup, then becomes convlab (exec): limited from its first byte.
        # (Not preexec_fn, which runs Python in a child forked from a process with threads.)
        result = subprocess.run(
            ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(limited), sys.executable, "-m", "convlab.cli",
             "train", "--model", "c1200k3 dense10", "--data-dir", str(tiny_data), "--epochs", "1", "--progress", "no"],
            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    finally:
        limited.rmdir()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.startswith("convlab: error: the c1200k3 dense10 network needs at least ")
    assert "under the container's memory limit of 300.0 MiB (cgroup)" in result.stderr


# --- under ulimit -v: what fails after the check is one line naming the limit -------------

THREAD_REFUSED = "can't start new thread"


@pytest.fixture
def limited(monkeypatch):
    """A made-up ulimit -v of 600 MiB, as the failure messages read it."""
    monkeypatch.setattr(convlab.headroom, "process_limits", lambda: {"ulimit -v": 600 * MiB})


def refusing_pool(monkeypatch):
    """convlab's chunk pool, as under a ulimit -v too low for one more thread's stack: every
    helper it is asked for fails to start as Python says it. Returns the chunks done."""
    import convlab.threads

    class Refusing:
        def submit(self, fn):
            raise RuntimeError(THREAD_REFUSED)

    monkeypatch.setattr(convlab.threads, "_executor", lambda threads: Refusing())
    monkeypatch.setattr(convlab.threads, "worker_count", lambda: 2)


def test_a_helper_thread_that_cannot_start_stops_the_pass(monkeypatch):
    """No chunk more is taken once a helper could not start, and the error is the caller's
    (after the helpers that did start are done), not a helper's chunk missing silently."""
    from convlab.threads import share_chunks

    refusing_pool(monkeypatch)
    done = []
    with pytest.raises(RuntimeError, match=THREAD_REFUSED):
        share_chunks(lambda index, lo, hi: done.append(index), [(0, 1), (1, 2), (2, 3)])
    assert done == []


def test_a_thread_that_cannot_start_in_training_is_one_line_naming_the_limit(capsys, memory, monkeypatch, limited,
                                                                                tiny_data, tmp_path):
    memory(None)
    refusing_pool(monkeypatch)
    code, out, err = run_cli(capsys, "train", "--data-dir", str(tiny_data), "--epochs", "1", "--progress", "no")
    assert code == 2 and "training on 64 images" in out and err.count("\n") == 1, err
    assert err.startswith("convlab: error: a thread could not start (can't start new thread); this process runs "
                          "under ulimit -v 614400 (the address-space limit, 600.0 MiB, "), err
    assert err.endswith(" of it in use): raise it\n")  # this process's VmSize, whatever it is


def test_out_of_memory_anywhere_is_one_line_naming_the_limit(capsys, memory, monkeypatch, limited, tiny_data):
    """In a training step (the batch size named) or before it (loading the data set)."""
    import convlab.training

    memory(None)

    def no_room(*args, **kwargs):
        raise MemoryError("Unable to allocate 179. MiB for an array with shape (60000, 28, 28) and data type float32")

    monkeypatch.setattr(convlab.training, "train_step", no_room)
    code, _, err = run_cli(capsys, "train", "--data-dir", str(tiny_data), "--epochs", "1", "--progress", "no")
    assert code == 2 and err.count("\n") == 1 and err.startswith(
        "convlab: error: out of memory with --batch-size 64: Unable to allocate 179. MiB for an array with shape "
        "(60000, 28, 28) and data type float32; try smaller values; this process runs under ulimit -v 614400 (the "
        "address-space limit, 600.0 MiB, "), err
    monkeypatch.setattr(convlab.data, "load_dataset", no_room)
    code, _, err = run_cli(capsys, "train", "--data-dir", str(tiny_data), "--epochs", "1", "--progress", "no")
    assert code == 2 and err.count("\n") == 1 and err.startswith(
        "convlab: error: out of memory: Unable to allocate 179. MiB for an array with shape (60000, 28, 28) and data "
        "type float32; this process runs under ulimit -v 614400 (the address-space limit, 600.0 MiB, "), err
    monkeypatch.setattr(convlab.headroom, "process_limits", lambda: {})  # no limit: the machine's memory ran out
    code, _, err = run_cli(capsys, "train", "--data-dir", str(tiny_data), "--epochs", "1", "--progress", "no")
    assert code == 2 and err == ("convlab: error: out of memory: Unable to allocate 179. MiB for an array with "
                                 "shape (60000, 28, 28) and data type float32\n")


def test_a_memory_error_without_words_is_said_to_be_a_failed_allocation(monkeypatch):
    # As Python raises it where even its message cannot be made (an import under ulimit -v).
    monkeypatch.setattr(convlab.headroom, "process_limits", lambda: {})
    assert convlab.headroom.out_of_room(MemoryError()) == "out of memory: an allocation failed"


def test_another_runtime_error_is_not_taken_for_a_thread_start(capsys, memory, monkeypatch, tiny_data):
    """A bug stays a traceback: only Python's own message for a refused thread is read as one."""
    import convlab.training

    memory(None)
    monkeypatch.setattr(convlab.training, "train_step", lambda *args: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(capsys, "train", "--data-dir", str(tiny_data), "--epochs", "1", "--progress", "no")


def test_tqdm_starts_no_monitor_thread():
    """One thread less to fit under ulimit -v (and tqdm's three-line warning where it cannot start)."""
    import threading

    from convlab.training import ProgressBar

    before = set(threading.enumerate())
    list(ProgressBar(range(3), disable=True))
    assert set(threading.enumerate()) <= before


@pytest.mark.parametrize("check", ["yes", "no"])
def test_a_real_ulimit_v_ends_in_one_line(tmp_path, check):
    """The reported bug: under `ulimit -v` the run ended in a traceback (a thread that could
    not start) or an abort. Under a real limit of 450 MiB (convlab's imports take about 200,
    MNIST 210, the threads' stacks, buffers and arenas 136 on two BLAS threads) the check
    refuses the run up front, naming the limit; skipped, the run's first allocation that does
    not fit (loading the data set, before any BLAS call) is one line too. A shell sets the
    limit and becomes convlab (exec): not preexec_fn, which runs Python in a child forked
    from a process with threads. Two BLAS threads, whatever the machine's cores: OpenBLAS
    maps each one's stack and buffer at import, which on a many-core machine would not fit."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(OPENBLAS_NUM_THREADS="2", CONVLAB_FFT_THREADS="2", CONVLAB_FFT_WISDOM="off")
    result = subprocess.run(
        ["sh", "-c", 'ulimit -v 460800 && exec "$@"', "sh", sys.executable, "-m", "convlab.cli", "train", "--epochs",
         "1", "--progress", "no", "--memory-check", check], capture_output=True, text=True, timeout=60, env=env,
        cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, (result.returncode, result.stderr)
    if check == "yes":
        assert result.stdout == "" and result.stderr.startswith(
            "convlab: error: the reference network needs at least 216.7 MiB of memory for a training step on 64 "
            "images (weights, momentum, activations, gradients), with the data set loaded (209.9 MiB), but "), \
            result.stderr
        assert "is available under the address-space limit of 450.0 MiB (ulimit -v; " in result.stderr
    else:
        assert result.stderr.startswith("convlab: error: out of memory: Unable to allocate "), result.stderr
        assert result.stderr.endswith(" MiB of it in use): raise it\n") and "ulimit -v 460800 (the address-space " \
            "limit, 450.0 MiB, " in result.stderr
