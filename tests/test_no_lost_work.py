"""No lost work: every command run the way a user runs it (a real subprocess, real
read-only folders, a real pipe closed early) refuses up front what it could not finish,
with one ``convlab: error:`` line and exit 2, and never destroys a file it was given.

Root ignores file modes, so the read-only cases run the command as root *without
capabilities* (``setpriv --bounding-set=-all``): the kernel then applies the folder's mode
to it like to any user.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from convlab.checkpoints import load_checkpoint, save_checkpoint
from convlab.data import DEFAULT_DATA_DIR
from convlab.models import reference_net
from convlab.optimizers import SGD
from convlab.report import curves_figure, load_run, summary_paragraph, write_report
from convlab.training import EpochMetrics
from tests.conftest import local_servers
from tests.test_cli import run_cli

HISTORY = [EpochMetrics(1, 0.8, 0.74, 0.83, 9.0), EpochMetrics(2, 0.3, 0.91, 0.90, 8.5),
           EpochMetrics(3, 0.2, 0.93, 0.92, 8.0)]
SETTINGS = dict(backend="fft", dataset="mnist", epochs=3, batch_size=64, lr=0.01, lr_schedule="cosine", momentum=0.9,
                seed=0, train_size=2000, test_size=500)
TINY = ("--train-size", "128", "--test-size", "64", "--progress", "no")
HAS_MNIST = (DEFAULT_DATA_DIR / "mnist").is_dir()
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason="needs MNIST in data/mnist")


def drop_powers():
    """The command prefix under which a folder's mode binds: none for an ordinary user; for
    root, setpriv without capabilities. None where a write in a read-only folder still goes
    through under it: root without setpriv, or where setpriv cannot drop capabilities (a
    container without CAP_SETPCAP, where it keeps them, says nothing and exits 0)."""
    prefix = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] if os.geteuid() == 0 else []
    if prefix and not shutil.which("setpriv"):
        return None
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o555)
        probe = subprocess.run([*prefix, "sh", "-c", 'true 2>/dev/null > "$1/probe" || echo denied', "sh", folder],
                               capture_output=True, text=True)
        os.chmod(folder, 0o755)
    return prefix if probe.stdout == "denied\n" else None


DROP_POWERS = drop_powers()
needs_mode_bits = pytest.mark.skipif(DROP_POWERS is None, reason="folder modes do not bind here (root whose "
                                                                 "capabilities setpriv cannot drop)")


def convlab(*args, cwd=None, powerless=False, timeout=120):
    """Run the console command ``convlab args`` in a subprocess: (exit code, stdout, stderr)."""
    env = dict(os.environ, CONVLAB_FFT_WISDOM="off", PYTHONWARNINGS="ignore")
    command = [*(DROP_POWERS if powerless else []), sys.executable, "-m", "convlab.cli", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def assert_one_error_line(code, err, *fragments):
    assert code == 2, err
    assert err.startswith("convlab: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def write_checkpoint(path, backends=None, history=HISTORY, settings=SETTINGS):
    model = reference_net(seed=3)
    save_checkpoint(path, model, SGD(model), history, settings, backends)
    return path


@pytest.fixture
def files(tmp_path):
    """A checkpoint, a bench result, a metrics file and a read-only folder, with their bytes."""
    paths = {"run": write_checkpoint(tmp_path / "run.h5"), "bench": tmp_path / "b2.json",
             "metrics": tmp_path / "m.json", "readonly": tmp_path / "readonly", "a-file": tmp_path / "a-file"}
    paths["bench"].write_text(json.dumps({"rows": [{"shape": "s", "backend": "im2col", "pass": "forward",
                                                    "seconds": 0.01}]}))
    paths["metrics"].write_text(json.dumps({"backend": "im2col", "epochs": [m.as_dict() for m in HISTORY]}))
    paths["a-file"].write_text("a file")
    for name, file, content in (("gz", "gz", b"\x1f\x8b\x08\x00 an idx file, compressed"),
                                ("notes-pdf", "notes.pdf", b"my notes"),
                                ("notes-json", "notes.json", b"my notes, not JSON"),
                                ("package-json", "package.json", b'{"name": "web", "version": "1"}'),
                                ("n-curves", "n-curves.png", b"my picture, not a PNG")):  # report --out n.pdf's
        paths[name] = tmp_path / file
        paths[name].write_bytes(content)
    paths["readonly"].mkdir()
    paths["readonly"].chmod(0o555)
    tmp_path.chmod(0o755)
    yield paths
    paths["readonly"].chmod(0o755)


def contents(paths):
    return {name: path.read_bytes() for name, path in paths.items() if path.is_file()}


# --- 1. outputs checked before any work -------------------------------------------------

@pytest.mark.parametrize("argv, fragments", [
    (["report", "{run}", "{bench}"], ["got unexpected argument(s) {bench}", "takes 1 positional argument(s) (SOURCE)"]),
    (["report", "{run}", "--out", "{run}"], ["--out {run}: a PDF is written there, so the name must end in .pdf"]),
    (["report", "{run}", "--out", "{bench}"], ["must end in .pdf"]),
    (["report", "{metrics}", "--out", "{tmp}/m-curves.pdf", "--bench", "{tmp}/m-curves-timing.png"],
     ["--out's timing figure {tmp}/m-curves-timing.png is the same file as the input --bench"]),
    (["report", "{run}", "--out", "{a-file}/r.pdf"], ["{a-file} is a file, so nothing can be written under it"]),
    (["train", "--resume", "{run}", "--epochs", "4", "--metrics-out", "{run}"],
     ["--metrics-out {run} is the same file as the input --resume {run}"]),
    (["train", "--checkpoint", "{tmp}/same.h5", "--metrics-out", "{tmp}/./same.h5"],
     ["--metrics-out {tmp}/same.h5 is the same file as the output --checkpoint {tmp}/same.h5"]),
    (["train", "--metrics-out", "{run}"],
     ["--metrics-out {run} exists and is not a metrics file (", "refusing to replace"]),
    (["train", "--metrics-out", "{a-file}"], ["--metrics-out {a-file} exists and is not a metrics file"]),
    (["train", "--metrics-out", "{gz}"], ["--metrics-out {gz} exists and is not a metrics file"]),
    (["train", "--metrics-out", "{package-json}"],
     ['--metrics-out {package-json} exists and is not a metrics file (the JSON object with "backend" and "epochs" '
      "that `convlab train --metrics-out` writes); refusing to replace it with the metrics written there"]),
    (["train", "--metrics-out", "{bench}"], ["--metrics-out {bench} exists and is not a metrics file"]),
    (["report", "{run}", "--out", "{notes-pdf}"], ["--out {notes-pdf} exists and is not a PDF file"]),
    (["report", "{run}", "--out", "{tmp}/n.pdf"],
     ["--out's curves figure {n-curves} exists and is not a PNG file; refusing to replace it with the PNG"]),
    (["bench", "--json", "{notes-json}"], ["--json {notes-json} exists and is not a bench result"]),
    (["bench", "--json", "{package-json}"],
     ['--json {package-json} exists and is not a bench result (the JSON object with "rows" that `convlab bench '
      '--json` writes); refusing to replace it with the bench result written there']),
    (["bench", "--json", "{metrics}"], ["--json {metrics} exists and is not a bench result"]),
    (["bench", "--plot", "{run}"], ["--plot {run} exists and is an HDF5 file (a checkpoint or data set?)"]),
    (["train", "--checkpoint", "{a-file}/c.h5"], ["--checkpoint {a-file}/c.h5: {a-file} is a file"]),
    (["bench", "--json", "{a-file}/b.json"], ["--json {a-file}/b.json: {a-file} is a file"]),
    (["bench", "--plot", "{a-file}/p.png"], ["--plot {a-file}/p.png: {a-file} is a file"]),
    (["bench", "--json", "{tmp}/b.txt"], ["--json {tmp}/b.txt: JSON is written there, so the name must end in .json"]),
    (["bench", "--json", "{tmp}/x.json", "--plot", "{tmp}/x.json"], ["is the same file as the output --json"]),
])
def test_a_bad_output_is_refused_before_any_work_and_nothing_changes(files, tmp_path, argv, fragments):
    names = {**{k: str(v) for k, v in files.items()}, "tmp": str(tmp_path)}
    before = contents(files)
    code, out, err = convlab(*(a.format(**names) for a in argv))
    assert_one_error_line(code, err, *(f.format(**names) for f in fragments))
    assert "training on" not in out and not err.startswith("timing ")  # refused before the work
    assert contents(files) == before
    assert not (tmp_path / "same.h5").exists()


def test_an_existing_output_of_the_same_kind_is_replaced(files, tmp_path):
    from convlab.files import check_outputs

    (tmp_path / "old.png").write_bytes(b"\x89PNG\r\n\x1a\n...")
    (tmp_path / "empty.json").touch()
    assert check_outputs({"--metrics-out": files["metrics"], "--plot": tmp_path / "old.png",
                          "--out": tmp_path / "new.pdf", "--json": files["bench"]})
    assert check_outputs({"--json": tmp_path / "empty.json"})  # an empty file is of any kind


@needs_mode_bits
@pytest.mark.parametrize("argv, fragment", [
    (["train", "--checkpoint", "{readonly}/c.h5"], "--checkpoint {readonly}/c.h5: cannot write in {readonly}"),
    (["train", "--metrics-out", "{readonly}/sub/m.json"], "--metrics-out {readonly}/sub/m.json: cannot write in"),
    (["bench", "--plot", "{readonly}/p.png"], "--plot {readonly}/p.png: cannot write in {readonly}"),
    (["bench", "--json", "{readonly}/b.json"], "--json {readonly}/b.json: cannot write in {readonly}"),
    (["report", "{metrics}", "--out", "{readonly}/r.pdf"], "--out {readonly}/r.pdf: cannot write in {readonly}"),
    (["data", "download", "--dest", "{readonly}", "--mirror", "http://127.0.0.1:9/"],
     "--dest {readonly}: cannot write in {readonly} (Permission denied)"),
])
def test_a_read_only_folder_is_refused_up_front(files, argv, fragment):
    names = {k: str(v) for k, v in files.items()}
    code, out, err = convlab(*(a.format(**names) for a in argv), powerless=True)
    assert_one_error_line(code, err, fragment.format(**names))
    assert "training on" not in out and not err.startswith("timing ") and "downloading" not in out
    assert os.listdir(files["readonly"]) == []


@needs_mode_bits
def test_resuming_a_checkpoint_in_a_read_only_folder_is_refused_up_front(files):
    ro_run = files["readonly"] / "run.h5"
    files["readonly"].chmod(0o755)
    shutil.copy(files["run"], ro_run)
    files["readonly"].chmod(0o555)
    code, out, err = convlab("train", "--resume", ro_run, "--epochs", "4", *TINY, powerless=True)
    assert_one_error_line(code, err, f"--resume {ro_run}: cannot write in {files['readonly']}")
    assert load_checkpoint(ro_run).epoch == 3


# --- 2. order of saving: a closed stdout loses nothing ----------------------------------

@needs_mnist
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash (for PIPESTATUS)")
def test_a_closed_stdout_ends_quietly_with_checkpoint_and_metrics_saved(tmp_path):
    """`convlab train ... | head -1`: head exits after the first line; convlab ends as if by
    SIGPIPE at its next print (the epoch line), after saving that epoch, and removes its
    lock files (SIGPIPE's default action, which ended it at the print, left them)."""
    command = [sys.executable, "-m", "convlab.cli", "train", "--checkpoint", "c.h5", "--metrics-out", "m.json",
               "--epochs", "10", *TINY]
    env = dict(os.environ, CONVLAB_FFT_WISDOM="off")
    shell = subprocess.run(["bash", "-c", " ".join(command) + ' 2>err.txt | head -1; echo "${PIPESTATUS[0]}" >status'],
                           cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert shell.stdout.startswith("training on 128 images")
    assert (tmp_path / "status").read_text().strip() == str(128 + signal.SIGPIPE)  # killed by SIGPIPE
    err = (tmp_path / "err.txt").read_text()
    assert "Traceback" not in err and "Broken pipe" not in err and "BrokenPipeError" not in err, err
    saved = load_checkpoint(tmp_path / "c.h5")
    metrics = json.loads((tmp_path / "m.json").read_text())
    # Ended at the first epoch line printed after head exited (the first, unless head was
    # slow to exit), with that epoch in both files: the line is printed after the saves.
    assert 1 <= saved.epoch < 10 and len(metrics["epochs"]) == saved.epoch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "err.txt", "m.json", "status"]


@needs_mnist
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("argv", [["models"], ["train", "--epochs", "1", "--checkpoint", "c.h5", *TINY]])
def test_a_full_stdout_is_said_to_be_standard_output(tmp_path, argv):
    """`convlab train ... > /dev/full` said only "[Errno 28] No space left on device", naming
    nothing; now as bench names a file it cannot write. Nothing is left behind (the run
    stopped at its first line, before any epoch; its lock file is gone)."""
    env = dict(os.environ, CONVLAB_FFT_WISDOM="off", PYTHONWARNINGS="ignore")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "convlab.cli", *argv], stdout=full, stderr=subprocess.PIPE,
                              text=True, cwd=tmp_path, env=env, timeout=120)
    assert_one_error_line(done.returncode, done.stderr)
    assert done.stderr == "convlab: error: cannot write standard output: No space left on device\n"
    assert list(tmp_path.iterdir()) == []


# --- 3. a rewrite changes the file the user named: through a symlink, with its mode ------

@needs_mnist
def test_resuming_through_a_symlink_updates_its_target_and_keeps_modes(tmp_path, capsys, data_read_once):
    """`ln -s tgt.h5 link.h5; convlab train --resume link.h5`: the link stays a link, the
    target holds the new epoch, and a private (0600) checkpoint or metrics file stays private."""
    target, metrics = tmp_path / "runs" / "tgt.h5", tmp_path / "runs" / "m.json"
    target.parent.mkdir()
    assert run_cli(capsys, "train", "--epochs", "1", "--checkpoint", str(target), "--metrics-out", str(metrics),
                   *TINY)[0] == 0
    target.chmod(0o600)
    metrics.chmod(0o640)
    (tmp_path / "link.h5").symlink_to(target)
    (tmp_path / "m-link.json").symlink_to(Path("runs") / "m.json")  # relative, as `ln -s` makes them
    code, out, err = run_cli(capsys, "train", "--resume", str(tmp_path / "link.h5"), "--epochs", "2",
                             "--metrics-out", str(tmp_path / "m-link.json"))
    assert code == 0, err
    assert (tmp_path / "link.h5").is_symlink() and (tmp_path / "m-link.json").is_symlink()
    assert load_checkpoint(target).epoch == 2
    assert len(json.loads(metrics.read_text())["epochs"]) == 2
    assert target.stat().st_mode & 0o777 == 0o600 and metrics.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["link.h5", "m-link.json", "m.json", "runs", "tgt.h5"]


def test_every_writer_of_user_files_writes_through_symlinks_and_keeps_the_mode(files, tmp_path):
    """Checkpoints, metrics, bench --json, the report's PDF and PNGs, the pick cache: each
    replaces the link's target (temporary file beside the target), never the link."""
    from convlab.bench import BenchResult, save_json
    from convlab.cachefile import update_cache
    from convlab.files import write_json

    real, links = tmp_path / "real", tmp_path / "links"
    real.mkdir()
    links.mkdir()

    def linked(name, content=b""):
        (real / name).write_bytes(content)
        (real / name).chmod(0o600)
        (links / name).symlink_to(real / name)
        return links / name

    model = reference_net(seed=3)
    save_checkpoint(linked("c.h5"), model, SGD(model), HISTORY, SETTINGS)
    write_json(linked("m.json"), {"backend": "im2col", "epochs": []})
    save_json(BenchResult(rows=[{"shape": "s", "backend": "im2col", "pass": "forward", "seconds": 0.01}]),
              linked("b.json"))
    update_cache(linked("picks.json"), "auto pick cache", "picks", lambda stored: {"picks": {}})
    linked("r-curves.png")
    write_report(files["run"], linked("r.pdf"), files["bench"])
    for name in ("c.h5", "m.json", "b.json", "picks.json", "r.pdf", "r-curves.png"):
        assert (links / name).is_symlink() and (links / name).resolve() == real / name, name
        assert (real / name).stat().st_size > 0 and (real / name).stat().st_mode & 0o777 == 0o600, name
    assert load_checkpoint(links / "c.h5").epoch == 3
    assert sorted(p.name for p in real.iterdir()) == sorted(  # and no temporary file left
        ["c.h5", "m.json", "b.json", "picks.json", "r.pdf", "r-curves.png"])
    assert (links / "r-filters.png").is_file() and not (links / "r-filters.png").is_symlink()  # beside --out


def test_a_rewrite_keeps_a_read_only_mode_and_a_dangling_link_gets_its_target(tmp_path):
    from convlab.files import check_outputs, write_json

    kept = tmp_path / "kept.json"
    write_json(kept, {"backend": "im2col", "epochs": []})
    kept.chmod(0o444)
    write_json(kept, {"backend": "fft", "epochs": []})  # the mode is set after the write
    assert json.loads(kept.read_text())["backend"] == "fft" and kept.stat().st_mode & 0o777 == 0o444
    (tmp_path / "dangling.json").symlink_to(tmp_path / "sub" / "new.json")
    assert check_outputs({"--metrics-out": tmp_path / "dangling.json"})
    write_json(tmp_path / "dangling.json", {"backend": "fft", "epochs": []})
    assert (tmp_path / "dangling.json").is_symlink() and (tmp_path / "sub" / "new.json").is_file()


# --- 4. arguments as typed --------------------------------------------------------------

@needs_mnist
def test_paths_that_look_like_numbers_are_file_names(tmp_path, capsys, data_read_once):
    (tmp_path / "2025").symlink_to(DEFAULT_DATA_DIR / "mnist")  # a data folder named like a year
    code, out, err = convlab("train", "--epochs", "1", "--metrics-out", "1e3", "--checkpoint", "0x10",
                             "--data-dir", "2025", *TINY, cwd=tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / "1e3").read_text())["epochs"][0]["epoch"] == 1
    assert load_checkpoint(tmp_path / "0x10").epoch == 1
    code, _, err = run_cli(capsys, "train", "--epochs", "1", "--metrics-out", str(tmp_path / "True"), *TINY)
    assert code == 0 and (tmp_path / "True").is_file()


@pytest.mark.parametrize("word, on", [("no", False), ("false", False), ("off", False), ("0", False),
                                     ("yes", True), ("True", True), ("on", True), ("1", True)])
def test_progress_takes_the_usual_spellings(capsys, monkeypatch, word, on):
    import convlab.run

    runs = []
    monkeypatch.setattr(convlab.run, "train", lambda settings, *rest, **options: runs.append(settings))
    code, _, err = run_cli(capsys, "train", "--progress", word)
    assert code == 0, err
    assert runs[0].progress is on


def test_a_flag_refuses_other_words(capsys):
    code, _, err = run_cli(capsys, "train", "--progress", "maybe")
    assert_one_error_line(code, err, "--progress takes yes or no (also true/false, on/off, 1/0), got 'maybe'")


@pytest.mark.parametrize("argv, fragment", [
    (["train", "im2col"], "`convlab train` got unexpected argument(s) im2col: it takes no positional arguments"),
    (["evaluate", "run.h5"], "`convlab evaluate` got unexpected argument(s) run.h5"),
    (["predict", "a.png", "b.png"], "`convlab predict` got unexpected argument(s) b.png: it takes 1 positional"),
    (["train", "--metrics-out"], "`convlab train` option --metrics-out needs a value"),
])
def test_surplus_positional_arguments_are_refused_as_such(argv, fragment):
    code, _, err = convlab(*argv)
    assert_one_error_line(code, err, fragment)
    assert "unknown backend" not in err


@pytest.mark.parametrize("command, options, argument", [
    ("predict", "--checkpoint, --backend, --invert, --memory-check", "FILE"), ("report", "--out, --bench", "SOURCE")])
def test_an_unknown_option_lists_the_options_help_shows(command, options, argument):
    """The positional argument is named as --help names it (FILE), not offered as --file."""
    code, _, err = convlab(command, "--bogus", "1")
    assert_one_error_line(code, err, f"`convlab {command}` has no option --bogus; its options are: {options} "
                                     f"(and the argument {argument}, given by position)")
    _, help_text, _ = convlab(command, "--help")
    assert f"usage: convlab {command} {argument} [options]" in help_text
    assert all(f"  {option} " in help_text for option in options.split(", "))
    assert f"--{argument.lower()}" not in help_text + err


def test_version_and_help_as_users_type_options():
    code, out, err = convlab("--version")
    assert code == 0 and re.fullmatch(r"convlab \d+\.\d+\.\d+\S*\n", out), out + err
    code, out, _ = convlab("train", "--help")
    assert code == 0 and "--batch-size" in out and "--metrics-out" in out and "--progress yes|no" in out
    assert "batch_size" not in out and "Optional[" not in out
    code, out, _ = convlab("--help")
    assert code == 0 and "train" in out and "bench" in out


def every_command(component=None, usage="convlab"):
    """(usage, command) of every command of the CLI, groups opened."""
    import inspect

    from convlab.arguments import commands_of
    from convlab.commands import Commands

    component = Commands() if component is None else component
    for name in commands_of(component):
        child = getattr(component, name.replace("-", "_"))
        if inspect.isroutine(child):
            yield f"{usage} {name}", child
        else:
            yield from every_command(child, f"{usage} {name}")


def test_help_shows_the_default_of_every_yes_no_option():
    from convlab.arguments import help_text

    lines = [line for usage, command in every_command() for line in help_text(command, usage).splitlines()
             if " yes|no " in line]
    assert len(lines) >= 8  # progress, profile (train, bench), invert, mnist-layer, accuracy, many-channels, memory
    assert [line for line in lines if not re.search(r"\(default:? (yes|no)\)\.?$", line)] == []
    assert any(line.startswith("  --invert yes|no") and line.endswith("(default: no)") for line in lines)


# --- 6. numbers at the edges ------------------------------------------------------------

@pytest.mark.parametrize("lr, what", [("1e39", "overflows to inf"), ("1e-50", "rounds to 0")])
def test_an_lr_that_does_not_fit_float32_is_refused_up_front(capsys, lr, what):
    code, out, err = run_cli(capsys, "train", "--lr", lr)
    assert_one_error_line(code, err, f"--lr {float(lr)!r} {what} in the model's float32 arithmetic")
    assert "training on" not in out


def test_out_of_memory_names_the_options_and_what_was_needed():
    code, _, err = convlab("bench", "--image-size", "100000", "--backends", "im2col", "--kernel-sizes", "3",
                           "--mnist-layer", "no")
    *progress, last = err.splitlines(keepends=True)
    assert progress == ["timing 64x1->32 100000x100000 k3 p1\n"]
    assert_one_error_line(code, last, "out of memory with --batch-size 64, --image-size 100000",
                          "Unable to allocate", "TiB")


def test_out_of_memory_names_the_sweep_s_kernel_sizes_that_set_the_size():
    """--kernel-sizes 100000 needed 2.33 TiB of filters, and the message named only the
    layer's other sizes, none of which the user could lower to help."""
    code, _, err = convlab("bench", "--kernel-sizes", "100000", "--backends", "im2col", "--mnist-layer", "no")
    assert_one_error_line(code, err.splitlines(keepends=True)[-1], "out of memory with --batch-size 64, "
                          "--image-size 28, --in-channels 1, --out-channels 32, --kernel-sizes 100000: Unable to allocate")


def test_out_of_memory_in_training_names_the_batch_size(tmp_path):
    resource = pytest.importorskip("resource")
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "small.h5", "w") as f:
        f["x_train"], f["y_train"] = rng.random((5000, 784), dtype=np.float32), rng.integers(0, 10, (5000, 1))
        f["x_test"], f["y_test"] = rng.random((10, 784), dtype=np.float32), rng.integers(0, 10, (10, 1))

    def cap_memory():  # 1 GiB of address space: enough for convlab and its memory check, not for a batch of 5000
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))

    done = subprocess.run([sys.executable, "-m", "convlab.cli", "train", "--batch-size", "5000", "--data-dir",
                           tmp_path / "small.h5", "--epochs", "1", "--progress", "no", "--checkpoint",
                           tmp_path / "c.h5"], preexec_fn=cap_memory, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                                   CONVLAB_FFT_WISDOM="off"))
    assert_one_error_line(done.returncode, done.stderr, "out of memory with --batch-size 5000: Unable to allocate")


# --- 8. the report tells the truth ------------------------------------------------------

def pdf_strings(path) -> str:
    """The text drawn in a matplotlib PDF: the string pieces of every TJ/Tj operator in its
    (zlib-compressed) content streams, joined per text object."""
    data = Path(path).read_bytes()
    text = []
    for stream in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S):
        try:
            content = zlib.decompress(stream.group(1))
        except zlib.error:
            continue
        for block in re.findall(rb"BT(.*?)ET", content, re.S):
            pieces = re.findall(rb"\(((?:\\.|[^\\)])*)\)", block)
            text.append(b"".join(pieces).decode("latin-1").replace("\\(", "(").replace("\\)", ")"))
    return "\n".join(text)


def test_the_report_says_which_backend_computed_which_epochs(tmp_path):
    run = load_run(write_checkpoint(tmp_path / "run.h5", backends=["im2col", "im2col", "fft"]))
    assert run.backends == ["im2col", "im2col", "fft"]
    text = summary_paragraph(run, run.model)
    assert "epochs 1\u20132 by the \u201cim2col\u201d backend and in epoch 3 by the \u201cfft\u201d backend" in text


def test_resuming_with_another_backend_is_recorded(tmp_path, capsys, data_read_once):
    if not HAS_MNIST:
        pytest.skip("needs MNIST")
    ck, metrics = tmp_path / "c.h5", tmp_path / "m.json"
    assert run_cli(capsys, "train", "--epochs", "1", "--checkpoint", str(ck), "--backend", "naive",
                   "--train-size", "64", "--test-size", "32", "--progress", "no")[0] == 0
    assert run_cli(capsys, "train", "--resume", str(ck), "--epochs", "2", "--backend", "im2col",
                   "--metrics-out", str(metrics))[0] == 0
    assert load_checkpoint(ck).backends == ["naive", "im2col"]
    assert [e["backend"] for e in json.loads(metrics.read_text())["epochs"]] == ["naive", "im2col"]
    assert load_run(metrics).backends == ["naive", "im2col"]


@needs_mnist
def test_each_epoch_records_the_backends_that_ran_per_layer_and_auto_s_picks(tmp_path, capsys, data_read_once):
    """What ran, not what was asked: a resumed LeNet-5 on two backends, and auto's pick."""
    small = ["--train-size", "128", "--test-size", "64", "--progress", "no"]
    ck = tmp_path / "lenet.h5"
    assert run_cli(capsys, "train", "--model", "lenet5", "--backend", "naive", "--epochs", "1", "--checkpoint",
                   str(ck), *small)[0] == 0
    assert run_cli(capsys, "train", "--resume", str(ck), "--epochs", "2", "--backend", "fft,im2col")[0] == 0
    assert load_checkpoint(ck).backends == ["naive", "fft,im2col"]
    run = load_run(ck)
    assert ("computed in epoch 1 by the \u201cnaive\u201d backend and in epoch 2 per layer (conv layer 1 by "
            "\u201cfft\u201d, conv layer 2 by \u201cim2col\u201d)") in summary_paragraph(run, run.model)
    code, out, _ = run_cli(capsys, "evaluate", "--checkpoint", str(ck), "--test-size", "64")
    assert code == 0 and "trained with naive (epoch 1), fft,im2col (epoch 2)" in out

    auto = tmp_path / "auto.h5"
    assert run_cli(capsys, "train", "--backend", "auto", "--epochs", "1", "--checkpoint", str(auto), *small)[0] == 0
    [picked] = load_checkpoint(auto).backends
    assert picked in convlab_strategies()
    run = load_run(auto)
    assert (f"computed by the \u201c{picked}\u201d backend (picked by \u201cauto\u201d)"
            in summary_paragraph(run, run.model))


def convlab_strategies():
    from convlab.timing import strategies

    return strategies()


def test_an_old_checkpoint_without_the_history_still_loads_and_says_what_it_does_not_know(tmp_path):
    import h5py

    path = write_checkpoint(tmp_path / "old.h5")
    with h5py.File(path, "a") as f:
        del f["backends"]
    run = load_run(path)
    assert run.backends == [None, None, "fft"]
    text = summary_paragraph(run, run.model)
    assert "by the \u201cfft\u201d backend in the last epoch" in text and "does not record" in text


def test_an_unknown_backend_reads_cleanly(tmp_path):
    run = load_run(write_checkpoint(tmp_path / "run.h5", settings=dict(SETTINGS, backend="gone"),
                                    backends=["gone"] * 3))
    text = summary_paragraph(run, run.model)
    assert text.endswith("was computed by the \u201cgone\u201d backend.")
    pdf, *_ = write_report(tmp_path / "run.h5", tmp_path / "r.pdf").written
    assert "backend is not installed where this report was made, so it cannot describe itself" in \
        " ".join(pdf_strings(pdf).split())


def test_the_timing_table_is_text_in_the_pdf(files, tmp_path):
    pdf, *pngs = write_report(files["run"], tmp_path / "r.pdf", files["bench"]).written
    assert tmp_path / "r-timing.png" in pngs  # and as an image beside it
    text = pdf_strings(pdf)
    assert re.search(r"shape +pass +backend +ms +vs fastest", text)
    assert re.search(r"s +forward +im2col +10\.00 +1\.0", text)


def test_one_epoch_curves_get_whole_epoch_axes():
    fig = curves_figure(HISTORY[:1])
    loss_ax, acc_ax = fig.axes
    for ax in (loss_ax, acc_ax):
        assert ax.get_xlim() == (0.5, 1.5)
        ticks = [t for t in ax.get_xticks() if 0.5 <= t <= 1.5]
        assert ticks == [1.0]
    assert acc_ax.get_ylim()[0] == 0 and acc_ax.get_ylim()[1] >= 1
    assert loss_ax.get_ylim()[0] == 0


# --- 5. plugins and registry ------------------------------------------------------------

def test_a_plugin_that_fails_to_load_is_skipped_with_one_warning(tmp_path):
    """Two installed plugins (dist-info folders on the path): one names a module that does
    not exist, one whose import raises. Every command still works with the rest."""
    site = tmp_path / "site"
    info = site / "convlab_broken_plugins-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: convlab-broken-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[convlab.backends]\nmissing = no_such_module_for_convlab\n"
                                           "exploding = exploding_backend\n"
                                           "[convlab.models]\nbroken-net = no_such_model_module:build\n")
    (site / "exploding_backend.py").write_text("raise RuntimeError('boom at import')\n")
    env = dict(os.environ, PYTHONPATH=str(site), CONVLAB_FFT_WISDOM="off")
    done = subprocess.run([sys.executable, "-m", "convlab.cli", "backends"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    names = [line.split()[0] for line in done.stdout.splitlines() if line and not line[0].isspace()]
    assert {"naive", "im2col", "fft", "auto"} <= set(names) and "missing" not in names
    for name, why in (("missing", "ModuleNotFoundError"), ("exploding", "RuntimeError: boom at import")):
        lines = [line for line in done.stderr.splitlines() if f"'{name}'" in line]
        assert len(lines) == 1 and "skipping backend" in lines[0] and why in lines[0], done.stderr
    done = subprocess.run([sys.executable, "-m", "convlab.cli", "models"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0 and "\nreference " in "\n" + done.stdout and "broken-net" not in done.stdout
    assert done.stderr.count("skipping model 'broken-net'") == 1 and "Traceback" not in done.stderr, done.stderr
    code = "import numpy as np, convlab; print(convlab.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2))).sum())"
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.stdout.strip() == "16.0", done.stderr


@pytest.mark.parametrize("name", [None, 3, "", "  ", " fft"])
def test_register_backend_refuses_a_name_that_is_not_one(name):
    import convlab

    with pytest.raises(ValueError, match="a backend name must be a non-empty string"):
        convlab.register_backend(name)


def test_register_backend_warns_before_replacing_another_backend():
    import convlab
    from convlab import registry

    class Impostor:
        """Not the real fft."""

        def forward(self, x, w, b, stride, padding):
            return registry.get_backend("naive").impl.forward(x, w, b, stride, padding)

        def backward(self, dy, cache, need_dx=True):
            return registry.get_backend("naive").impl.backward(dy, cache, need_dx)

    real = convlab.get_backend("fft")
    try:
        with pytest.warns(RuntimeWarning, match=r"backend 'fft' \(backends\.fft\.\w+\) is replaced by .*Impostor"):
            convlab.register_backend("fft")(Impostor)
    finally:
        registry._registry["fft"] = real


def test_auto_ignores_a_cached_pick_of_a_backend_that_is_not_installed(tmp_path):
    from backends.auto import Auto, candidates, convlab_version, problem_key

    x, w = np.ones((2, 1, 8, 8), np.float32), np.ones((3, 1, 3, 3), np.float32)
    key = problem_key(x, w, (1, 1), (0, 0))
    names = candidates(x.shape, w.shape, (1, 1), (0, 0))
    cache = tmp_path / "auto.json"
    cache.write_text(json.dumps({"picks": {key: {"backend": "uninstalled", "seconds": {n: 1.0 for n in names},
                                                 "convlab": convlab_version()}}}))
    auto = Auto(cache_path=cache)
    assert auto.pick(x, w, (1, 1), (0, 0)) in names
    assert json.loads(cache.read_text())["picks"][key]["backend"] in names  # timed again, rewritten


def test_auto_skips_a_candidate_that_raises(tmp_path):
    import convlab
    from backends.auto import Auto
    from convlab import registry

    class Raising:
        """Fails on every problem."""

        def forward(self, x, w, b, stride, padding):
            raise RuntimeError("plugin bug")

        def backward(self, dy, cache, need_dx=True):
            raise RuntimeError("plugin bug")

    convlab.register_backend("raising")(Raising)
    try:
        x, w = np.ones((2, 1, 8, 8), np.float32), np.ones((3, 1, 3, 3), np.float32)
        with pytest.warns(UserWarning, match="auto skips backend 'raising'.*plugin bug"):
            assert Auto(cache_path=tmp_path / "a.json").pick(x, w, (1, 1), (0, 0)) != "raising"
    finally:
        del registry._registry["raising"]


def test_backward_before_forward_and_a_dy_of_another_dtype_are_refused():
    import convlab

    layer = convlab.Conv2D(1, 2, 3, rng=0)
    with pytest.raises(ValueError, match="needs the forward first"):
        layer.backward(np.ones((1, 2, 3, 3), np.float32))
    y = layer.forward(np.ones((1, 1, 5, 5), np.float32))
    with pytest.raises(ValueError, match="dy is float64 but the forward computed float32"):
        layer.backward(np.ones(y.shape))
    layer.backward(np.ones(y.shape, np.float32))


@pytest.mark.parametrize("dtype", [int, np.float16, np.int32, "banana", object])
def test_conv2d_refuses_a_dtype_no_backend_computes_in(dtype):
    import convlab

    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        convlab.Conv2D(1, 2, 3, dtype=dtype)


# --- 7. downloads: a stalled or trickling mirror ends with a clear error, the next is tried --

@pytest.fixture
def slow_server():
    """``slow_server(kind)`` -> base URL of a server on 127.0.0.1 that answers every request
    with headers and 3 bytes, then sends nothing more ("stall") or a byte every 50 ms
    ("trickle"), holding the connection until the test ends."""
    import socketserver
    import threading
    import time

    stop = threading.Event()

    def start(kind):
        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.recv(65536)
                self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nabc")
                while not stop.is_set():
                    if kind == "trickle":
                        self.request.sendall(b"x")
                    time.sleep(0.05)

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        return add(server)

    with local_servers() as add:
        yield start
        stop.set()


@needs_mnist
def test_a_stalled_mirror_ends_with_an_error_naming_it_and_the_next_is_tried(slow_server, tmp_path):
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    good = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        Quiet, directory=str(DEFAULT_DATA_DIR / "mnist")))
    threading.Thread(target=good.serve_forever, args=(0.05,), daemon=True).start()
    stalled = slow_server("stall")
    try:
        code, out, err = convlab("data", "download", "--dest", tmp_path / "mnist", "--timeout", "0.5", "--mirror",
                                 f"{stalled},http://127.0.0.1:{good.server_port}/")
    finally:
        good.shutdown()
        good.server_close()
    assert code == 0, err
    lines = out.splitlines()
    assert sum(f"mirror {stalled} failed (stalled: no data for 0.5 s after 3 bytes" in line for line in lines) == 4
    assert sum("downloading from" in line for line in lines) == 8  # a line as each file starts, per mirror
    assert sum("checksum ok" in line for line in lines) == 4
    assert len(list((tmp_path / "mnist").iterdir())) == 4


def test_a_trickling_mirror_meets_the_deadline_per_file(slow_server, tmp_path):
    from convlab.download import DownloadError, download_files

    trickle = slow_server("trickle")
    lines = []
    with pytest.raises(DownloadError, match=rf"could not download f\.gz from any mirror: {trickle}f\.gz: too slow: "
                                            r"\d+ bytes in 0\.5 s, the deadline per file \(--deadline\)"):
        download_files({"f": "0" * 64}, tmp_path / "dest", [trickle], timeout=5, deadline=0.5, log=lines.append)
    assert lines == [f"f.gz: downloading from {trickle}f.gz"]
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())


def test_every_mirror_stalled_is_one_error_line(slow_server, tmp_path):
    stalled = slow_server("stall")
    code, out, err = convlab("data", "download", "--dest", tmp_path, "--timeout", "0.3", "--mirror", stalled)
    assert_one_error_line(code, err, f"could not download train-images-idx3-ubyte.gz from any mirror: {stalled}"
                                     "train-images-idx3-ubyte.gz: stalled: no data for 0.3 s")


# --- 9. data sanity ---------------------------------------------------------------------

@needs_mnist
def test_mnist_files_given_as_fashion_mnist_are_refused(tmp_path):
    (tmp_path / "fashion-mnist").symlink_to(DEFAULT_DATA_DIR / "mnist")
    code, out, err = convlab("train", "--dataset", "fashion-mnist", "--data-dir", tmp_path, *TINY)
    assert_one_error_line(code, err, "train-images-idx3-ubyte.gz: holds mnist's train-images-idx3-ubyte, not "
                                     "fashion-mnist data (checksum)", "--dataset mnist")
    assert "training on" not in out


@needs_mnist
def test_mnist_in_an_hdf5_file_given_as_fashion_mnist(tmp_path):
    """The exact MNIST test set is recognised (refused); a subset only looks like it (warned)."""
    import h5py

    from convlab.data import DataError, DataWarning, load_dataset, load_hdf5

    mnist = load_dataset("mnist")
    with h5py.File(tmp_path / "all.h5", "w") as f:
        f["x_train"], f["y_train"] = mnist.x_train[:500].reshape(500, 784), mnist.y_train[:500]
        f["x_test"], f["y_test"] = mnist.x_test.reshape(10000, 784), mnist.y_test
    with pytest.raises(DataError, match="x_test holds mnist's images .t10k-images-idx3-ubyte., not fashion-mnist's"):
        load_hdf5(tmp_path / "all.h5", "fashion-mnist")
    with h5py.File(tmp_path / "subset.h5", "w") as f:
        f["x_train"], f["y_train"] = mnist.x_train[:500].reshape(500, 784), mnist.y_train[:500]
        f["x_test"], f["y_test"] = mnist.x_test[:100].reshape(100, 784), mnist.y_test[:100]
    with pytest.warns(DataWarning, match=r"the fashion-mnist images look like mnist \(8\d% black pixels"):
        load_hdf5(tmp_path / "subset.h5", "fashion-mnist")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_hdf5(tmp_path / "subset.h5", "mnist")  # no warning when the name fits


def test_predict_on_a_blank_image_says_it_holds_no_digit(tmp_path):
    write_checkpoint(tmp_path / "run.h5", settings=dict(SETTINGS, backend="im2col"))
    for name, image in (("black.npy", np.zeros((28, 28))), ("white.npy", np.ones((28, 28))),
                        ("speck.npy", np.pad(np.ones((2, 2)), 13))):
        np.save(tmp_path / name, image)
        code, out, err = convlab("predict", tmp_path / name, "--checkpoint", tmp_path / "run.h5")
        assert_one_error_line(code, err, f"{tmp_path / name} holds no digit-like content")
        assert "probability" not in out


def test_an_older_file_s_auto_epochs_are_read_as_its_recorded_picks(tmp_path):
    """Before 0.8.0 each epoch recorded the --backend asked ("auto"); the picks that ran are
    in the file's "backends" setting, and a resume must not read them as another backend."""
    path = write_checkpoint(tmp_path / "old.h5", settings=dict(SETTINGS, backend="auto", backends="im2col"),
                            backends=["naive", "auto", "auto"])
    assert load_checkpoint(path).backends == ["naive", "im2col", "im2col"]
    run = load_run(path)
    assert run.backends == ["naive", "im2col", "im2col"]
    assert ("epoch 1 by the \u201cnaive\u201d backend and in epochs 2\u20133 by the \u201cim2col\u201d backend"
            in summary_paragraph(run, run.model))


def test_resuming_a_run_on_a_backend_not_installed_here_says_it_is_the_checkpoint_s(tmp_path):
    """A run trained on a plugin since uninstalled: the refusal was "--backend: unknown backend
    'cuda' in 'cuda'", with no --backend on the command line."""
    path = write_checkpoint(tmp_path / "run.h5", settings=dict(SETTINGS, backend="cuda"), backends=["cuda"] * 3)
    code, out, err = convlab("train", "--resume", path, "--epochs", "4", "--progress", "no")
    assert_one_error_line(code, err, f"{path} was trained on backend 'cuda', and cuda is not installed here; give "
                                     "--backend to resume on another, from: auto, fft, ")
    assert out == ""
