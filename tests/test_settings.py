"""The settings of `convlab train` as one validated object: defaults, checks, resume."""

import re

import h5py
import pytest

from convlab.settings import RECORDED, TrainSettings, UsageError
from tests.test_checkpoints import make_checkpoint
from tests.test_cli import run_cli


def test_defaults_and_record():
    settings = TrainSettings()
    assert settings.record() == dict(model="reference", backend="im2col", backends=None, dataset="mnist", epochs=5, batch_size=64,
                                     lr=0.02, lr_schedule="cosine", momentum=0.9, seed=0, train_size=None,
                                     test_size=None)
    assert list(settings.record()) == list(RECORDED)
    sized = settings.with_data_sizes(60000, 10000)
    assert (sized.train_size, sized.test_size) == (60000, 10000)


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "--epochs must be a positive whole number, got 0"),
    (dict(lr="fast"), "--lr must be a positive number, got 'fast'"),
    (dict(lr_schedule="step"), "--lr-schedule takes one of: cosine, constant (got 'step')"),
    (dict(lr_schedule="cosine,constant"), "--lr-schedule takes one of: cosine, constant (got 'cosine,constant')"),
    (dict(seed=True), "--seed must be a whole number from 0 to 2^64 - 1, got True"),
    (dict(test_size=0), "--test-size must be a positive whole number, got 0"),
    (dict(model="resnet"), "unknown model 'resnet'; valid models are: "),
    (dict(dataset="cifar"), "--dataset takes one of: mnist, fashion-mnist (got 'cifar')"),
    (dict(dataset=None), "--dataset takes one of: mnist, fashion-mnist (got None)"),
    (dict(backend="im2col,"), "--backend: empty name in 'im2col,' (give one backend for every conv layer"),
    (dict(backend=("im2col", "")), "--backend: empty name in 'im2col,' (give one backend for every conv layer"),
])
def test_each_value_is_checked_on_construction(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        TrainSettings(**kwargs)


def test_a_single_choice_is_recorded_without_the_spaces_around_it():
    """--dataset is checked as --lr-schedule is (settings.one_of), spaces around it dropped:
    the run reads, and its checkpoint records, the data set's own name."""
    settings = TrainSettings(dataset=" fashion-mnist ", lr_schedule="constant ", memory_check=False)
    assert (settings.dataset, settings.lr_schedule) == ("fashion-mnist", "constant")
    assert settings.record()["dataset"] == "fashion-mnist"


def test_recorded_whole_numbers_stop_at_what_a_checkpoint_can_record():
    """2^64 - 1 is the largest integer an HDF5 attribute holds; one more has no HDF5 type,
    and the checkpoint's save failed with a traceback after the first epoch."""
    largest = TrainSettings(epochs=2**64 - 1, batch_size=2**64 - 1, seed=2**64 - 1, memory_check=False)
    assert (largest.epochs, largest.batch_size, largest.seed) == (2**64 - 1,) * 3
    for name in ("epochs", "batch_size", "train_size", "test_size"):
        with pytest.raises(UsageError, match=re.escape(f"--{name.replace('_', '-')} must be a whole number from 1 "
                                                       f"to 2^64 - 1 (what a checkpoint can record), got {2**64}")):
            TrainSettings(**{name: 2**64}, memory_check=False)


def test_subset_larger_than_the_data_set():
    with pytest.raises(UsageError, match="--train-size is 70 but the data set has only 60 images"):
        TrainSettings(train_size=70).with_data_sizes(60, 10)


def test_resume_takes_the_checkpoints_settings(tmp_path):
    path = tmp_path / "ck.h5"
    make_checkpoint(path, epochs_done=2)
    settings, resumed = TrainSettings.from_options(resume=str(path), epochs=4, backend="naive")
    assert resumed.epoch == 2
    assert (settings.lr, settings.train_size, settings.backend, settings.epochs) == (0.01, 256, "naive", 4)
    assert settings.checkpoint == str(path)


def test_an_old_checkpoint_without_a_model_is_the_reference_network(tmp_path, capsys):
    path = tmp_path / "ck.h5"
    make_checkpoint(path, epochs_done=1)
    with h5py.File(path) as f:
        assert "model" not in f.attrs  # as written before there were models
    settings, _ = TrainSettings.from_options(resume=str(path), epochs=2)
    assert settings.model == "reference"
    code, _, err = run_cli(capsys, "train", "--resume", str(path), "--epochs", "2", "--model", "lenet5")
    assert code == 2 and err.count("\n") == 1
    assert "differs from the checkpoint's reference" in err or "unknown model 'lenet5'" in err
