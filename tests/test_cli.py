"""The command line: training end to end on small subsets, and one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convlab.cli import main


def run_cli(capsys, *argv):
    """Run ``convlab argv`` in-process; returns (exit code, stdout, stderr)."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_backends_lists_names_and_descriptions(capsys):
    code, out, _ = run_cli(capsys, "backends")
    assert code == 0
    assert any(line.startswith("naive ") and "oracle" in line for line in out.splitlines())
    assert any(line.startswith("im2col ") and "GEMM" in line for line in out.splitlines())


def test_backends_names_the_package_a_plugin_comes_from(tmp_path):
    """A plugin installed as pip installs one (a dist-info folder on the path): its backend
    gets a third line, the distribution and its version; convlab's own get none."""
    site = tmp_path / "site"
    info = site / "convlab_mine-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: convlab-mine\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[convlab.backends]\nmine = mine_backend:Mine\n")
    (site / "mine_backend.py").write_text('class Mine:\n    """A throwaway plugin."""\n\n'
                                          "    def forward(self, x, w, b, stride, padding): ...\n\n"
                                          "    def backward(self, dy, cache, need_dx=True): ...\n")
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "convlab.cli", "backends"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(repo)])), timeout=120)
    assert done.returncode == 0 and not done.stderr, done.stderr
    lines = done.stdout.splitlines()
    mine = next(i for i, line in enumerate(lines) if line.startswith("mine "))
    assert lines[mine].split(maxsplit=1) == ["mine", "A throwaway plugin."]
    assert lines[mine + 1].split(maxsplit=1) == ["supports:", "any problem"]
    assert lines[mine + 2].split(maxsplit=1) == ["from:", "convlab-mine 0.3"]
    assert lines[mine + 2].index("from:") == lines[mine + 1].index("supports:")
    assert [line for line in lines if "from:" in line] == [lines[mine + 2]]  # built-ins: no such line

def test_train_smoke_beats_chance_and_writes_metrics(capsys, tmp_path, data_read_once):
    metrics = tmp_path / "out" / "metrics.json"
    code, out, _ = run_cli(capsys, "train", "--train-size", "2000", "--test-size", "500", "--epochs", "1",
                           "--progress", "False", "--metrics-out", str(metrics))
    assert code == 0
    assert "epoch 1/1" in out and "test accuracy:" in out
    result = json.loads(metrics.read_text())
    assert result["backend"] == "im2col"
    assert result["test_accuracy"] > 0.6  # chance is 0.1
    (epoch,) = result["epochs"]
    assert set(epoch) == {"epoch", "train_loss", "train_accuracy", "test_accuracy", "seconds", "backend"}
    assert epoch["test_accuracy"] == result["test_accuracy"]


def test_naive_and_im2col_train_identically(capsys, tmp_path, data_read_once):
    runs = {}
    for backend in ("naive", "im2col"):
        path = tmp_path / f"{backend}.json"
        code, _, _ = run_cli(capsys, "train", "--backend", backend, "--train-size", "320", "--test-size", "200",
                             "--epochs", "2", "--progress", "False", "--metrics-out", str(path))
        assert code == 0
        runs[backend] = json.loads(path.read_text())["epochs"]
    for naive, im2col in zip(runs["naive"], runs["im2col"]):
        assert naive["test_accuracy"] == im2col["test_accuracy"]
        assert naive["train_accuracy"] == im2col["train_accuracy"]
        assert naive["train_loss"] == pytest.approx(im2col["train_loss"], rel=1e-4)


@pytest.mark.parametrize("argv, message", [
    (["train", "--backend", "nope"], "--backend: unknown backend 'nope' in 'nope' (give one backend for every conv "
                                     "layer, or one per conv layer, comma-separated, from: auto, "),
    (["train", "--epochs", "0"], "--epochs must be a positive whole number, got 0"),
    (["train", "--epochs", "two"], "--epochs must be a positive whole number, got 'two'"),
    (["train", "--batch-size", "-3"], "--batch-size must be a positive whole number"),
    (["train", "--lr", "0"], "--lr must be a positive number"),
    (["train", "--lr", "fast"], "--lr must be a positive number, got 'fast'"),
    (["train", "--momentum", "1.5"], "--momentum must be a number in [0, 1)"),
    (["train", "--train-size", "70000"], "--train-size is 70000 but the data set has only 60000 images"),
    (["train", "--test-size", "0"], "--test-size must be a positive whole number"),
    (["train", "--data-dir", "/no/such/dir"], "data directory /no/such/dir does not exist"),
])
def test_user_mistakes_give_one_error_line(capsys, tmp_path, argv, message):
    metrics = tmp_path / "metrics.json"
    code, _, err = run_cli(capsys, *argv, "--metrics-out", str(metrics))
    assert code == 2
    assert err.startswith("convlab: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not metrics.exists()


def test_python_dash_m_convlab_is_the_command():
    """As the README says: ``python -m convlab`` where the console script is not on PATH."""
    version = subprocess.run([sys.executable, "-m", "convlab", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("convlab ")
    bad = subprocess.run([sys.executable, "-m", "convlab", "train", "--", "--epochs", "2"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("convlab: error: `convlab train` takes no bare --") and "Traceback" not in bad.stderr


@pytest.mark.parametrize("extra", [["extra"], ["a", "b"], ["--help"]])
def test_version_with_other_arguments_is_one_error_line(capsys, extra):
    """It was "`convlab` takes no option --version here; give a command first"."""
    code, out, err = run_cli(capsys, "--version", *extra)
    assert code == 2 and out == ""
    assert err == (f"convlab: error: --version takes no other arguments (got {' '.join(extra)!r}); "
                   "`convlab --version` prints the version\n")
    code, out, err = run_cli(capsys, "--version")
    assert code == 0 and out.startswith("convlab ") and out.count("\n") == 1 and err == ""


def test_console_script_help_and_error():
    help_text = subprocess.run([sys.executable, "-m", "convlab.cli", "train", "--help"],
                               capture_output=True, text=True, env={"PAGER": "cat", "PATH": ""})
    assert "--backend" in help_text.stdout + help_text.stderr
    bad = subprocess.run([sys.executable, "-m", "convlab.cli", "train", "--backend", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.startswith("convlab: error: --backend: unknown backend 'nope'") and "Traceback" not in bad.stderr


@pytest.mark.parametrize("argv, message", [
    (["train", "--", "--epochs", "2"], "`convlab train` takes no bare --; give its options without it, as in "
                                       "`convlab train --epochs 2` (`convlab train --help` lists them)"),
    (["train", "--epochs", "1", "--", "--trace"], "as in `convlab train --epochs 1 --trace`"),
    (["train", "--model", "c8k3 dense10", "--"], "as in `convlab train --model 'c8k3 dense10'`"),
    (["--", "--help"], "`convlab` takes no bare --; give a command without it, as in `convlab --help` (one of: auto, "),
    (["data", "--", "download"], "`convlab data` takes no bare --; give a command without it, as in "
                                 "`convlab data download` (one of: download)"),
    (["help", "train", "--epochs", "2"], "`convlab help` takes a command's name only (such as `convlab train --help` "
                                         "or `convlab help train`), got --epochs 2 after it"),
])
def test_a_bare_double_dash_is_refused_before_anything_runs(capsys, argv, message):
    """fire would read what follows ``--`` as its own flags: ``train -- --epochs 2`` trained
    5 epochs, then printed fire's page on the result."""
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("convlab: error: ") and message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv", [["train"], ["data", "download"], ["data"], []])
def test_help_before_a_command_is_its_help(capsys, argv):
    code, out, err = run_cli(capsys, "help", *argv)
    assert code == 0 and err == ""
    assert out == run_cli(capsys, *argv, "--help")[1]
    assert out.startswith(f"usage: {' '.join(['convlab', *argv])} ")
    if argv in ([], ["data"]):  # a group's help offers both ways
        assert out.endswith(f"`{' '.join(['convlab', *argv])} COMMAND --help` (or "
                            f"`{' '.join(['convlab', 'help', *argv])} COMMAND`) describes a command's options.\n")
