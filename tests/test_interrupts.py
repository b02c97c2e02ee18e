"""Real signals on a real `convlab` process: Ctrl-C keeps the last checkpoint and says how to
resume; SIGKILL at any moment, even mid-write, leaves a loadable checkpoint."""

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from convlab.checkpoints import ctrl_c_at_safe_points, load_checkpoint, save_checkpoint
from convlab.cli import main
from convlab.models import reference_net
from convlab.optimizers import SGD
from convlab.training import EpochMetrics
from tests.test_checkpoints import RUN_SETTINGS

REPO = Path(__file__).resolve().parent.parent
# Saves checkpoints of the reference net in a loop; version k has every bias of layer 3 equal to k.
CHECKPOINT_WRITER = """
import json
import sys
from convlab.checkpoints import save_checkpoint
from convlab.models import reference_net
from convlab.optimizers import SGD
from convlab.training import EpochMetrics
model = reference_net()
optimizer, history = SGD(model), []
for epoch in range(1, 10 ** 6):
    history.append(EpochMetrics(epoch, 1.0, 0.5, 0.5, 0.0))
    model.layers[3].params["b"][...] = epoch
    save_checkpoint(sys.argv[1], model, optimizer, history, json.loads(sys.argv[2]))
    print(epoch, flush=True)
"""

# The lines of the `convlab` console script (pip writes them for `convlab.cli:main`), after
# a finder that sends this process SIGINT as the module argv[1] starts to be imported: a
# Ctrl-C at that moment of start-up, every time. With argv[2] "ImportError" the import then
# fails as a C extension's can when Ctrl-C lands in its own imports (numpy, h5py); "broken"
# is an ImportError with no Ctrl-C (a broken install).
CTRL_C_AT_IMPORT = """
import signal
import sys

module, how = sys.argv[1:3]
del sys.argv[1:3]
if sys.argv[1:2] == ["--under-ulimit-v"]:  # a process limit far above what convlab takes
    import resource

    del sys.argv[1]
    resource.setrlimit(resource.RLIMIT_AS, (64 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))


class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name != module:
            return None
        sys.meta_path.remove(self)
        if how == "broken":
            raise ImportError(f"{name} is broken")
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            if how == "ImportError":
                raise ImportError(f"{name} failed to import") from None
            raise


sys.meta_path.insert(0, CtrlC())
from convlab.cli import main
sys.exit(main())
"""

def start(tmp_path, *argv):
    """``python argv`` with this repository's convlab, Ctrl-C raising KeyboardInterrupt even
    when the test runner ignores SIGINT (a child inherits an ignored signal).

    Its stdout is a pipe, block-buffered as in a user's ``convlab train | tee log``: a line
    arrives when convlab flushes it, whatever PYTHONUNBUFFERED the test runner has (set on
    some machines, not on CI: a test syncing on a line convlab does not flush passed there
    and failed here)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    return subprocess.Popen([sys.executable, *argv], cwd=tmp_path,
                            env=dict(env, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_line(process, prefix, timeout=300):
    """Read the process's output up to a line starting with ``prefix`` and return what was
    read (an epoch's line is flushed after its checkpoint was written; see :func:`start`).
    A process that has not printed it after ``timeout`` seconds (hung, or blocked writing to
    its unread stderr pipe) is killed: the test fails instead of holding CI to its cap."""
    lines = []
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith(prefix):
                return "".join(lines)
    finally:
        watchdog.cancel()
    pytest.fail(f"the process ended (or was killed after {timeout} s) without printing {prefix!r}: "
                f"{''.join(lines)!r} {process.communicate()}")


def train_argv(data, *extra):
    """``convlab train`` on ``data`` with batches of 32 unless ``extra`` sets --batch-size (an
    option may be given once)."""
    batch = [] if "--batch-size" in extra else ["--batch-size", "32"]
    return ["-m", "convlab.cli", "train", "--data-dir", str(data), *batch, "--progress", "False", *extra]


def test_ctrl_c_keeps_the_last_checkpoint_and_prints_the_resume_command(tmp_path, tiny_data, capsys):
    path = tmp_path / "ck.h5"
    process = start(tmp_path, *train_argv(tiny_data, "--epochs", "100000", "--checkpoint", str(path)))
    out = wait_for_line(process, "epoch 2/")
    process.send_signal(signal.SIGINT)
    rest, err = process.communicate(timeout=30)
    out += rest
    assert process.returncode == 130, err
    assert "Traceback" not in err
    held = load_checkpoint(path)
    command = (f"convlab train --resume {path} --epochs 100000 --backend im2col --data-dir {tiny_data} "
               "--progress no")
    assert err.splitlines()[-1] == (f"convlab: interrupted; {path} holds the run after epoch {held.epoch}; "
                                    f"resume with: {command}")
    assert f"epoch {held.epoch}/100000" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.h5", "tiny.hdf5"]  # no temp file left behind

    argv = shlex.split(command)[1:]
    argv[argv.index("--epochs") + 1] = str(held.epoch + 1)  # the printed command, one epoch further
    main(argv)
    assert f"epoch {held.epoch + 1}/{held.epoch + 1}" in capsys.readouterr().out
    assert load_checkpoint(path).epoch == held.epoch + 1


def test_sigkill_during_training_leaves_a_loadable_checkpoint(tmp_path, tiny_data):
    path = tmp_path / "ck.h5"
    rng = random.Random(0)
    epochs = []
    for run in range(2):
        resume = ["--resume", str(path)] if path.exists() else ["--checkpoint", str(path)]
        process = start(tmp_path, *train_argv(tiny_data, "--epochs", "100000", *resume))
        wait_for_line(process, "epoch ")
        time.sleep(rng.uniform(0, 0.5))
        process.kill()
        process.communicate()
        epochs.append(load_checkpoint(path).epoch)
    assert epochs == sorted(epochs)


def test_sigkill_mid_write_leaves_the_previous_checkpoint_intact(tmp_path):
    """Most of the writer's time is spent writing, so most kills land inside a write."""
    path = tmp_path / "ck.h5"
    rng = random.Random(0)
    for kill in range(6):
        process = start(tmp_path, "-c", CHECKPOINT_WRITER, str(path), json.dumps(RUN_SETTINGS))
        wait_for_line(process, "1")
        time.sleep(rng.uniform(0, 0.3))
        process.kill()
        process.communicate()
        held = load_checkpoint(path)  # never half-written
        assert (held.weights["3.b"] == held.epoch).all()  # and never a mix of two versions
    # The temporary files of the killed writes are recognisable, and the next save removes them.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ck.h5"]
    assert all(name.startswith(".ck.h5.") and name.endswith(".tmp") for name in leftovers)
    model = reference_net()
    save_checkpoint(path, model, SGD(model), [EpochMetrics(1, 1.0, 0.5, 0.5, 0.0)], RUN_SETTINGS)
    assert [p.name for p in tmp_path.iterdir()] == ["ck.h5"]


def test_first_ctrl_c_waits_for_a_safe_point_and_a_second_one_does_not():
    # As in a terminal: a test run started in the background (`cmd &`, as some CI runners
    # do) inherits an ignored SIGINT, which ctrl_c_at_safe_points rightly leaves alone.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with ctrl_c_at_safe_points() as stop_if_asked:
            stop_if_asked()
            signal.raise_signal(signal.SIGINT)  # recorded, not raised here
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)  # a second one, before the safe point: at once
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


@pytest.mark.parametrize("ends_process", [False, True])
@pytest.mark.parametrize("second_before_the_safe_point", [False, True])
def test_once_the_stop_is_raised_further_ctrl_cs_are_ignored(monkeypatch, ends_process, second_before_the_safe_point):
    """Ctrl-C pressed a few times, ms apart, as the run stops: one of them landing in an atexit
    callback printed "Exception ignored in atexit callback" and a KeyboardInterrupt traceback
    after the interrupted line. From the stop on they are ignored: to the block's end, and on
    the command line (whose process ends with the stop) to the exit."""
    import convlab.checkpoints

    monkeypatch.setattr(convlab.checkpoints, "STOP_ENDS_PROCESS", ends_process)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with ctrl_c_at_safe_points() as stop_if_asked:
                signal.raise_signal(signal.SIGINT)
                try:
                    if second_before_the_safe_point:
                        signal.raise_signal(signal.SIGINT)
                    stop_if_asked()
                finally:
                    for _ in range(3):
                        signal.raise_signal(signal.SIGINT)  # while cleaning up: nothing raised
                    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        expected = signal.SIG_IGN if ends_process else signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is expected
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_the_command_line_ignores_stop_signals_to_its_exit_once_interrupted(monkeypatch, capsys):
    """main() as the command line runs it (argv None): after the interrupted line, SIGINT and
    SIGTERM stay ignored as the process exits. Its `finally` used to put SIGTERM's default
    back, so a SIGTERM in the exit's atexit callbacks ended it with 143."""
    import convlab.checkpoints
    import convlab.cli

    def interrupted(_argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(convlab.cli, "imported_commands", lambda: (interrupted, convlab.checkpoints.raise_terminated))
    monkeypatch.setattr(convlab.checkpoints, "STOP_ENDS_PROCESS", False)  # main sets it; put back after
    monkeypatch.setattr(sys, "argv", ["convlab", "train"])
    inherited = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as exit_:
            main()
        assert exit_.value.code == 130 and capsys.readouterr().err.startswith("convlab: interrupted")
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        for signum, handler in inherited.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize("module, how", [("numpy", "KeyboardInterrupt"), ("h5py", "KeyboardInterrupt"),
                                         ("fire", "KeyboardInterrupt"), ("pyfftw", "KeyboardInterrupt"),
                                         ("numpy", "ImportError"), ("h5py", "ImportError")])
def test_ctrl_c_while_convlab_starts_ends_as_at_any_other_moment(tmp_path, module, how):
    # pyfftw is imported as `convlab backends` loads the backends, the others before any command.
    process = start(tmp_path, "-c", CTRL_C_AT_IMPORT, module, how, "backends")
    out, err = process.communicate(timeout=60)
    assert (process.returncode, err, out) == (130, "convlab: interrupted\n", "")


def test_an_import_that_fails_without_ctrl_c_is_not_taken_for_one(tmp_path):
    process = start(tmp_path, "-c", CTRL_C_AT_IMPORT, "numpy", "broken", "backends")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1 and err.splitlines()[-1] == "ImportError: numpy is broken", err


def test_under_a_process_limit_an_interrupted_or_failed_start_names_the_limit(tmp_path):
    # Under ulimit -v, OpenBLAS raises SIGINT itself when it cannot start its threads, and a
    # library whose code cannot be mapped fails to import: neither is a Ctrl-C or a broken install.
    process = start(tmp_path, "-c", CTRL_C_AT_IMPORT, "numpy", "KeyboardInterrupt", "--under-ulimit-v", "backends")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.startswith("convlab: interrupted; if not by Ctrl-C, then by OpenBLAS"), err
    assert "ulimit -v 67108864 (the address-space limit, 64.0 GiB" in err and err.count("\n") == 1, err
    process = start(tmp_path, "-c", CTRL_C_AT_IMPORT, "h5py", "broken", "--under-ulimit-v", "backends")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and err.count("\n") == 1, err
    assert err.startswith("convlab: error: out of memory: a library could not be loaded (h5py is broken); "
                          "this process runs under ulimit -v 67108864"), err


def test_import_convlab_imports_nothing_until_a_name_is_used(tmp_path):
    process = start(tmp_path, "-c", "import sys, convlab; print(sorted({'numpy', 'h5py', 'fire'} & set(sys.modules))); "
                                    "print([getattr(convlab, name).__name__ for name in convlab.__all__] == "
                                    "convlab.__all__, sorted(convlab.__all__) == sorted(convlab._EXPORTS))")
    out, err = process.communicate(timeout=60)
    assert out.splitlines() == ["[]", "True True"], err


def test_import_convlab_still_reaches_its_submodules_as_attributes(tmp_path):
    # As when __init__ imported them all: `import convlab; convlab.layers.forward_only()`.
    process = start(tmp_path, "-c", "import convlab; print(convlab.layers.forward_only.__name__, "
                                    "convlab.registry.BackendError.__name__); convlab.no_such_module")
    out, err = process.communicate(timeout=60)
    assert out == "forward_only BackendError\n", err
    assert err.splitlines()[-1] == "AttributeError: module 'convlab' has no attribute 'no_such_module'", err
