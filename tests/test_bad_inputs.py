"""Every bad input answered: the library raises a ValueError saying what was wrong and what
is allowed; the command line prints exactly one ``convlab: error:`` line, exits 2, shows
no traceback and leaves every file as it was.

(Checkpoint inputs are tested in test_checkpoints.py; download failures in test_download.py.)
"""

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import convlab
from convlab.data import HDF5_NAME, MNIST_FILES, DataError, load_dataset, load_hdf5
from convlab.training import accuracy, predict_logits
from tests.test_cli import run_cli
from tests.test_data import idx_bytes

# What was there before, of the kind each output is (an output of another kind is refused
# for that reason alone: see tests/test_no_lost_work.py).
OLD_JSON = '{"backend": "old", "epochs": []}\n'  # an earlier metrics file, which a failed run keeps
OLD_PDF = "%PDF-1.4 old content\n"


def make_inputs(root: Path) -> dict[str, Path]:
    """Small broken (and a few good) input files under ``root``, by name."""
    paths = {name: root / name for name in
             ("empty", "bad-checksum", "empty-gz", "corrupt-gzip", "not-hdf5.h5", "no-y-test.h5", "a-folder",
              "metrics.json", "not-json.json", "wrong-schema.json", "list.json", "bad-settings.json", "empty-bench.json",
              "a-file", "image.png", "arrays.npz",
              "dangling-link")}
    for name in ("empty", "bad-checksum", "empty-gz", "corrupt-gzip", "a-folder"):
        paths[name].mkdir()
    for stem, _ in MNIST_FILES.values():
        (paths["empty-gz"] / f"{stem}.gz").write_bytes(b"")  # as an interrupted download leaves them
        (paths["bad-checksum"] / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((3, 28, 28)))))
        (paths["corrupt-gzip"] / f"{stem}.gz").write_bytes(b"\x1f\x8b\x08\x00 not deflate data")
    paths["not-hdf5.h5"].write_bytes(b"just some bytes")
    with h5py.File(paths["no-y-test.h5"], "w") as f:
        f["x_train"] = f["x_test"] = np.zeros((4, 784), np.float32)
        f["y_train"] = np.zeros((4, 1))
    paths["metrics.json"].write_text(json.dumps({"backend": "im2col", "test_accuracy": 0.5, "epochs": [
        {"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.4, "test_accuracy": 0.5, "seconds": 1.0}]}))
    paths["not-json.json"].write_text("{not json")
    paths["wrong-schema.json"].write_text('{"backend": "im2col", "epochs": [{"epoch": 1}]}')
    paths["list.json"].write_text('[{"epoch": 1}]')
    paths["bad-settings.json"].write_text(paths["metrics.json"].read_text()[:-1] + ', "settings": [1]}')
    paths["empty-bench.json"].write_text('{"rows": []}')
    paths["a-file"].write_text("a file, not a folder")
    paths["image.png"].write_bytes(convlab.files.PNG_SIGNATURE + bytes(range(256)))
    np.savez(paths["arrays.npz"], w=np.ones(3, np.float32))
    paths["no-such-folder"] = root / "no-such-folder"  # not made
    paths["dangling-link"].symlink_to(paths["no-such-folder"])
    return paths


# (command line, what the one error line must contain); {name} is a path from make_inputs,
# {out} a file that exists beforehand and must be left untouched.
TRAIN_CASES = [
    (["--data-dir", ""], "the data directory is empty (''); give a folder or file"),
    (["--resume", ""], "a checkpoint needs a file path (such as --checkpoint run.h5), got an empty one ('')"),
    (["--checkpoint", " "], "a checkpoint needs a file path (such as --checkpoint run.h5), got an empty one (' ')"),
    # An unknown name was "unknown backend 'nope'; valid backends are: ...", unlike the list's
    # other messages (an empty item, none at all); now said as they are.
    (["--backend", "nope"], "--backend: unknown backend 'nope' in 'nope' (give one backend for every conv layer, "
                            "or one per conv layer, comma-separated, from: auto, "),
    (["--backend", "im2col, nope"], "--backend: unknown backend 'nope' in 'im2col, nope' (give one backend for every "
                                    "conv layer, or one per conv layer, comma-separated, from: auto, fft, "),
    # An empty item was "unknown backend ''", as if a backend had been named.
    (["--backend", "im2col,"], "--backend: empty name in 'im2col,' (give one backend for every conv layer, or one "
                               "per conv layer, comma-separated, from: auto, fft, "),
    (["--backend", "im2col,,fft"], "--backend: empty name in 'im2col,,fft' (give one backend for every conv layer"),
    (["--backend", ","], "--backend got nothing (give one backend for every conv layer, or one per conv layer, "),
    # Was "unknown dataset 'cifar'; valid datasets are: ...": said as the other single choices.
    (["--dataset", "cifar"], "--dataset takes one of: mnist, fashion-mnist (got 'cifar')\n"),
    (["--dataset", "mnist,fashion-mnist"], "--dataset takes one of: mnist, fashion-mnist (got 'mnist,fashion-mnist')"),
    (["--epochs", "0"], "--epochs must be a positive whole number, got 0"),
    (["--epochs", "-2"], "--epochs must be a positive whole number, got -2"),
    (["--epochs", "two"], "--epochs must be a positive whole number, got 'two'"),
    (["--epochs", "1.5"], "--epochs must be a positive whole number, got 1.5"),
    (["--batch-size", "0"], "--batch-size must be a positive whole number, got 0"),
    (["--batch-size", "big"], "--batch-size must be a positive whole number, got 'big'"),
    (["--lr", "0"], "--lr must be a positive number, got 0"),
    (["--lr", "-0.1"], "--lr must be a positive number, got -0.1"),
    (["--lr", "fast"], "--lr must be a positive number, got 'fast'"),
    (["--lr", "1e999"], "--lr must be a positive number, got inf"),
    (["--lr", "nan"], "--lr must be a positive number, got 'nan'"),
    (["--momentum", "1"], "--momentum must be a number in [0, 1), got 1"),
    (["--seed", "-1"], "--seed must be a whole number from 0 to 2^64 - 1, got -1"),
    # numpy takes any seed, but a checkpoint could not record this one (it failed after an epoch)
    (["--seed", str(2**64)], f"--seed must be a whole number from 0 to 2^64 - 1, got {2**64}"),
    # Beyond 2^64 - 1 no checkpoint could record them: the save after the first epoch failed
    # with a traceback (h5py: "Object dtype dtype('O') has no native HDF5 equivalent").
    (["--epochs", str(10**23)], f"--epochs must be a whole number from 1 to 2^64 - 1 (what a checkpoint can "
                                f"record), got {10**23}"),
    (["--batch-size", str(2**64)], f"--batch-size must be a whole number from 1 to 2^64 - 1 (what a checkpoint "
                                   f"can record), got {2**64}"),
    (["--train-size", str(2**64)], "--train-size must be a whole number from 1 to 2^64 - 1"),
    (["--test-size", str(10**23)], "--test-size must be a whole number from 1 to 2^64 - 1"),
    (["--model", "c32k3s0 dense10"], "model spec token 1 'c32k3s0' does not fit its input 1x28x28: stride must be >= 1"),
    (["--model", "dense99999999999 dense10"], "model spec token 1 'dense99999999999' on its input 784 needs more "
                                               "memory than there is"),
    # fire reads an option alone as True: "--epochs must be a positive whole number, got True"
    (["--epochs"], "`convlab train` option --epochs needs a value (--epochs EPOCHS)"),
    # A negative number is the option's value, refused by its check: -inf and -nan looked like
    # options (fire reads -[letter] as a flag), so these were "option --epochs needs a value".
    (["--epochs", "-inf"], "--epochs must be a positive whole number, got '-inf'"),
    (["--epochs", "-Infinity"], "--epochs must be a positive whole number, got '-Infinity'"),
    (["--lr", "-nan"], "--lr must be a positive number, got '-nan'"),
    (["--lr", "-1e3"], "--lr must be a positive number, got -1000.0"),
    (["--epochs", "-3"], "--epochs must be a positive whole number, got -3"),
    (["--epochs", "--lr", "0.1"], "`convlab train` option --epochs needs a value (--epochs EPOCHS)"),
    (["--epochs", "-inf", "-inf"], "`convlab train` has no option -inf; its options are: "),
    (["--lr"], "`convlab train` option --lr needs a value (--lr LR)"),
    # fire reads None as Python's None, the value of an option not given: 5 epochs were trained
    (["--epochs", "None"], "`convlab train` option --epochs needs a value, got None (leave the option out for its "
                           "default)"),
    (["--seed=None"], "`convlab train` option --seed needs a value, got None"),
    (["--epochs", "1", "--epochs", "2"], "`convlab train` option --epochs is given twice; give it once"),
    (["--progress", "bogus", "--noprogress"], "`convlab train` option --progress is given twice"),
    (["--train-size", "60001"], "--train-size is 60001 but the data set has only 60000 images"),
    (["--test-size", "10001"], "--test-size is 10001 but the data set has only 10000 images"),
    (["--data-dir", "/no/such/dir"], "data directory /no/such/dir does not exist"),
    (["--data-dir", "/dev/null"], "data directory /dev/null is neither a folder nor a file (a device, a FIFO or a "
                                  "socket); give the folder of mnist's idx files or an HDF5 file"),
    (["--data-dir", "{empty}"], "{empty} holds no mnist data: expected the idx files"),
    (["--data-dir", "{bad-checksum}"], "train-images-idx3-ubyte.gz: checksum mismatch: sha256 of the payload is"),
    (["--data-dir", "{empty-gz}"], "train-images-idx3-ubyte.gz: is empty, as an interrupted download or copy "
                                   "leaves a file; replace it with the complete train-images-idx3-ubyte file (run "
                                   "`convlab data download`"),
    (["--data-dir", "{corrupt-gzip}"], "cannot read it (Error -3 while decompressing"),
    (["--data-dir", "{not-hdf5.h5}"], "{not-hdf5.h5}: cannot read it as HDF5"),
    (["--data-dir", "{no-y-test.h5}"], "{no-y-test.h5}: has no dataset y_test; expected an HDF5 file like"),
    (["--bogus", "1"], "`convlab train` has no option --bogus; its options are: --backend, --epochs"),
    (["--epoch", "1"], "`convlab train` has no option --epoch;"),
    (["-b", "1"], "`convlab train` option -b is ambiguous: it could be --backend or --batch-size"),
]
OTHER_CASES = [
    # An empty path was reported as ".", the folder Path("") names
    (["report", ""], "SOURCE is empty (''); `convlab report` reads a checkpoint"),
    (["report", "{metrics.json}", "--out", ""], "--out is empty (''); give a file name such as report.pdf"),
    (["evaluate", "--checkpoint", ""], "a checkpoint needs a file path (such as --checkpoint run.h5), got an empty one"),
    (["bench", "--repeat"], "`convlab bench` option --repeat needs a value (--repeat REPEAT)"),
    (["bench", "--repeat", "None"], "`convlab bench` option --repeat needs a value, got None"),
    (["data", "download", "--timeout"], "`convlab data download` option --timeout needs a value"),
    (["evaluate", "--test-size", "--checkpoint", "x.h5"], "`convlab evaluate` option --test-size needs a value"),
    # 1e12 s ended in socket.settimeout's OverflowError ("timestamp out of range for platform time_t")
    (["data", "download", "--dest", "{no-such-folder}", "--timeout", "1e12"],
     "--timeout must be a positive number up to 86400 (a day), got 1000000000000.0"),
    (["data", "download", "--dest", "{no-such-folder}", "--timeout", "1e999"],
     "--timeout must be a positive number up to 86400 (a day), got inf"),
    (["data", "download", "--dest", "{no-such-folder}", "--mirror", "http://127.0.0.1:9/,"],
     "--mirror: empty URL in 'http://127.0.0.1:9/,' (give one http:// or https:// URL, or several separated by "
     "commas)"),
    (["data", "download", "--dest", "{no-such-folder}", "--timeout", "0"],
     "--timeout must be a positive number up to 86400 (a day), got 0"),
    # Negative numbers given as separate arguments are the options' values: -inf was taken for
    # an option, "option --timeout needs a value".
    (["data", "download", "--dest", "{no-such-folder}", "--timeout", "-1"],
     "--timeout must be a positive number up to 86400 (a day), got -1"),
    (["data", "download", "--dest", "{no-such-folder}", "--timeout", "-inf"],
     "--timeout must be a positive number up to 86400 (a day), got '-inf'"),
    (["data", "download", "--dest", "{no-such-folder}", "--mirror", "http://127.0.0.1:9/", "--deadline", "-inf"],
     "--deadline must be a positive number up to 86400 (a day), got '-inf'"),
    (["data", "download", "--dest", "{no-such-folder}", "--mirror", "http://127.0.0.1:9/", "--deadline", "-0.5"],
     "--deadline must be a positive number up to 86400 (a day), got -0.5"),
    (["bench", "--repeat", "-inf"], "--repeat must be a positive whole number, got '-inf'"),
    # --deadline had no upper bound: 1e300 s was taken, as no deadline at all (a mirror that
    # refuses at once: the previous code went on to download, not to the network)
    (["data", "download", "--dest", "{no-such-folder}", "--mirror", "http://127.0.0.1:9/", "--deadline", "1e300"],
     "--deadline must be a positive number up to 86400 (a day), got 1e+300"),
    (["data", "download", "--dest", "{no-such-folder}", "--mirror", "http://127.0.0.1:9/", "--deadline", "86401"],
     "--deadline must be a positive number up to 86400 (a day), got 86401"),
    (["data", "download", "--dest", "{no-such-folder}", "--mirror", "http://127.0.0.1:9/", "--deadline", "1e999"],
     "--deadline must be a positive number up to 86400 (a day), got inf"),
    (["data", "download", "--dest", "{no-such-folder}", "--mirror", "http://127.0.0.1:9/", "--deadline", "inf"],
     "--deadline must be a positive number up to 86400 (a day), got 'inf'"),
    (["data", "download", "--dest", "{no-such-folder}", "--mirror", "http://127.0.0.1:9/", "--deadline", "nan"],
     "--deadline must be a positive number up to 86400 (a day), got 'nan'"),
    (["data", "download", "--dest", "{no-such-folder}", "--mirror", "http://127.0.0.1:9/", "--deadline=-1"],
     "--deadline must be a positive number up to 86400 (a day), got -1"),
    (["nosuch"], "`convlab` has no command 'nosuch'; valid commands are: auto, backends, "),
    (["data", "upload"], "`convlab data` has no command 'upload'; valid commands are: download"),
    (["--foo"], "`convlab` takes no option --foo here; give a command first (one of: auto, backends, bench, "),
    (["data", "--dest", "x"], "`convlab data` takes no option --dest here; give a command first (one of: download)"),
    (["data", "download", "--dest", "{a-file}"], "--dest {a-file} exists and is not a folder"),
    (["data", "download", "--dest", "{a-file}/x"], "--dest {a-file}/x: {a-file} is a file, so nothing can be written"),
    (["train", "--metrics-out", "{a-folder}"],
     "--metrics-out {a-folder} names a folder; give a file name such as {a-folder}/metrics.json"),
    # A trailing / means a folder, even one not made yet (Path() would drop it: a file named runs)
    (["train", "--checkpoint", "{no-such-folder}/"],
     "--checkpoint {no-such-folder}/ names a folder; give a file name such as {no-such-folder}/run.h5"),
    (["train", "--metrics-out", "{no-such-folder}/"], "--metrics-out {no-such-folder}/ names a folder; give a file"),
    (["bench", "--json", "{no-such-folder}/"],
     "--json {no-such-folder}/ names a folder; give a file name such as {no-such-folder}/bench.json"),
    (["bench", "--plot", "{no-such-folder}/"], "--plot {no-such-folder}/ names a folder; give a file name such as"),
    (["report", "{metrics.json}", "--out", "{no-such-folder}/"],
     "--out {no-such-folder}/ names a folder; give a file name such as {no-such-folder}/report.pdf"),
    (["train", "--metrics-out", "{a-file}/m.json"], "--metrics-out {a-file}/m.json: {a-file} is a file, so nothing"),
    (["report", "{metrics.json}", "--out", "{a-file}/r.pdf"], "--out {a-file}/r.pdf: {a-file} is a file, so nothing"),
    (["train", "--checkpoint", "{dangling-link}/run.h5"],
     "--checkpoint {dangling-link}/run.h5: {dangling-link} is a symlink to {no-such-folder}, which does not exist"),
    (["bench", "--json", "{dangling-link}/b.json"], "--json {dangling-link}/b.json: {dangling-link} is a symlink to"),
    (["report", "{metrics.json}", "--out", "{dangling-link}/r.pdf"], "--out {dangling-link}/r.pdf: {dangling-link} is a "),
    (["data", "download", "--dest", "{dangling-link}"], "--dest {dangling-link}: {dangling-link} is a symlink to"),
    (["report", "{metrics.json}", "--out", "/proc/r.pdf"], "/proc/r.pdf"),  # refused by the system, not our checks
    (["data", "download", "--dest", ""], "--dest is empty; give a folder (such as data/mnist, or . for this one)"),
    (["data", "download", "--mirror", "ftp://example.org/"], "mirror 'ftp://example.org/' is not an http:// or https:// URL"),
    (["report", "--out", "{out}"], "SOURCE is required: `convlab report` reads a checkpoint (`convlab train "
                                   "--checkpoint PATH`, HDF5) or a metrics file"),
    (["report", "/no/such.json", "--out", "{out}"],
     "/no/such.json does not exist or is not a file; `convlab report` reads a checkpoint"),
    (["report", "{not-json.json}", "--out", "{out}"], "{not-json.json}: cannot read it as JSON"),
    (["report", "{wrong-schema.json}", "--out", "{out}"], "{wrong-schema.json}: missing 'train_loss'; `convlab "
                                                          "report` reads a checkpoint (`convlab train --checkpoint "
                                                          "PATH`, HDF5) or a metrics file (the JSON `convlab train "
                                                          "--metrics-out PATH` writes)"),
    # A binary file given for SOURCE (a figure, numpy's arrays): what the report reads, not a codec's byte position
    (["report", "{image.png}", "--out", "{out}"], "{image.png}: is a binary file, neither HDF5 nor JSON; `convlab "
                                                  "report` reads a checkpoint (`convlab train --checkpoint PATH`, "
                                                  "HDF5) or a metrics file (the JSON"),
    (["report", "{arrays.npz}", "--out", "{out}"], "{arrays.npz}: is a binary file, neither HDF5 nor JSON; `convlab "
                                                   "report` reads a checkpoint"),
    (["report", "{metrics.json}", "--out", "{out}", "--bench", "{arrays.npz}"],
     "{arrays.npz}: is a binary file, not JSON; expected the JSON written by `convlab bench --json PATH`"),
    (["report", "{list.json}", "--out", "{out}"], '{list.json}: has no "epochs" list of objects; `convlab report` reads'),
    (["report", "{bad-settings.json}", "--out", "{out}"], '{bad-settings.json}: its "settings" is not an object;'),
    (["report", "{metrics.json}", "--out", "{out}", "--bench", "{empty-bench.json}"],
     "{empty-bench.json}: no usable timing rows"),
    (["report", "{metrics.json}", "--out", "{a-folder}"], "--out {a-folder} names a folder; give a file name such as "
                                                          "{a-folder}/report.pdf"),
    (["report", "{no-y-test.h5}", "--out", "{out}"], "is an HDF5 file but not a convlab checkpoint"),
    (["report", "{metrics.json}", "{out}", "{empty-bench.json}", "extra"],
     "`convlab report` got unexpected argument(s) {out} {empty-bench.json} extra: it takes 1 positional "
     "argument(s) (SOURCE); other values follow their option's name"),
]


def check_one_error_line(code, err, message):
    assert code == 2, err
    assert err.startswith("convlab: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def fill(words, paths):
    """``words`` with each ``{name}`` replaced by ``paths[name]``."""
    def one(word):
        for name, path in paths.items():
            word = word.replace("{" + name + "}", str(path))
        return word

    return [one(w) for w in words]


@pytest.mark.parametrize("argv, message", TRAIN_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_train(capsys, tmp_path, argv, message):
    paths = make_inputs(tmp_path)
    metrics = tmp_path / "metrics-out.json"
    metrics.write_text(OLD_JSON)
    code, _, err = run_cli(capsys, "train", *fill(argv, paths), "--metrics-out", str(metrics))
    check_one_error_line(code, err, fill([message], paths)[0])
    assert metrics.read_text() == OLD_JSON


@pytest.mark.parametrize("argv, message", OTHER_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_other_commands(capsys, tmp_path, argv, message):
    paths = make_inputs(tmp_path)
    paths["out"] = tmp_path / "report.pdf"
    paths["out"].write_text(OLD_PDF)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = run_cli(capsys, *fill(argv, paths))
    check_one_error_line(code, err, fill([message], paths)[0])
    assert paths["out"].read_text() == OLD_PDF
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing created


def test_diverging_training_stops_and_suggests_a_lower_lr(capsys, tmp_path):
    metrics = tmp_path / "metrics-out.json"
    metrics.write_text(OLD_JSON)
    code, _, err = run_cli(capsys, "train", "--lr", "1e20", "--train-size", "256", "--test-size", "50",
                           "--epochs", "1", "--progress", "False", "--metrics-out", str(metrics))
    check_one_error_line(code, err, "training diverged: the loss became nan at epoch 1, batch ")
    assert "try a lower learning rate (now 1e+20)" in err
    assert metrics.read_text() == OLD_JSON


def test_missing_fashion_mnist_says_how_to_get_it(capsys, monkeypatch, tmp_path):
    from convlab.data import DATASETS, DataSource

    source = DATASETS["fashion-mnist"]
    monkeypatch.setitem(DATASETS, "fashion-mnist", DataSource(source.files, (tmp_path / "none",), source.how_to_get))
    code, _, err = run_cli(capsys, "train", "--dataset", "fashion-mnist")
    check_one_error_line(code, err, f"fashion-mnist not found in {tmp_path / 'none'}; install the Debian package "
                                    "with `apt-get install dataset-fashion-mnist`, or put the four Fashion-MNIST "
                                    "idx files in data/fashion-mnist/")


@pytest.mark.parametrize("argv, message", [
    (["train", "--epoch", "1"], "`convlab train` has no option --epoch"),  # a typo must not start a 5-epoch run
    (["train", "--lr", "1e20", "--train-size", "128", "--test-size", "10", "--progress", "False"],
     "training diverged"),
    (["train", "--data-dir", "{corrupt-gzip}"], "cannot read it"),
])
def test_the_real_console_script(tmp_path, argv, message):
    script = Path(sys.executable).with_name("convlab")
    if not script.exists():
        pytest.skip("the convlab console script is not installed next to this Python")
    result = subprocess.run([str(script), *fill(argv, make_inputs(tmp_path))], capture_output=True, text=True,
                            timeout=120)
    check_one_error_line(result.returncode, result.stderr, message)


@pytest.mark.parametrize("variable, value, backend, message", [
    ("CONVLAB_FFT_THREADS", "0", "fft", "CONVLAB_FFT_THREADS must be a positive integer"),
    ("CONVLAB_FFT_TILE", "7", "auto", "CONVLAB_FFT_TILE must be one of 8, 16, 32, 64, 128"),  # auto may time it
    ("CONVLAB_WINOGRAD_TILE", "99", "winograd", "CONVLAB_WINOGRAD_TILE must be one of 2, 3, 4, 5, 6"),
])
def test_a_bad_backend_setting_stops_the_run_before_it_starts(tmp_path, variable, value, backend, message):
    """Backend.check_settings, not the first pass: no "training on" line, no metrics file."""
    script = Path(sys.executable).with_name("convlab")
    if not script.exists():
        pytest.skip("the convlab console script is not installed next to this Python")
    metrics = tmp_path / "m.json"
    result = subprocess.run([str(script), "train", "--model", "c4k3 relu dense10", "--backend", backend, "--epochs", "1",
                             "--train-size", "64", "--test-size", "10", "--metrics-out", str(metrics)],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, variable: value, "XDG_CACHE_HOME": str(tmp_path)})
    check_one_error_line(result.returncode, result.stderr, message)
    assert result.stdout == "" and not metrics.exists()


# --- the library -----------------------------------------------------------------------

X = np.zeros((2, 1, 8, 8), np.float32)
W = np.zeros((4, 1, 3, 3), np.float32)


def with_value(a, index, value):
    a = a.copy()
    a[index] = value
    return a


CONV_MISUSE = [
    (dict(x=X[0]), "x must have 4 dimensions (N, C, H, W), got shape (1, 8, 8)"),
    (dict(w=W[0]), "w must have 4 dimensions (F, C, kh, kw), got shape (1, 3, 3)"),
    (dict(x=np.zeros((2, 3, 8, 8), np.float32)), "x has 3 channels but w expects 1"),
    (dict(w=np.zeros((4, 1, 11, 11), np.float32), padding=1), "kernel 11x11 is larger than the padded input 10x10"),
    (dict(stride=0), "stride must be >= 1, got 0"),
    (dict(stride=(1, 0)), "stride must be >= 1, got (1, 0)"),
    (dict(stride=1.5), "stride must be an int or a pair of ints (h, w), got 1.5"),
    (dict(padding=-1), "padding must be >= 0, got -1"),
    (dict(x=with_value(X, (0, 0, 1, 1), np.nan)), "x contains NaN or infinite values; every value must be finite"),
    (dict(w=with_value(W, (0, 0, 1, 1), np.inf)), "w contains NaN or infinite values; every value must be finite"),
    (dict(b=np.array([0, 0, 0, np.nan], np.float32)), "b contains NaN or infinite values"),
    (dict(x=X.astype(np.int64)), "x must be float32 or float64, got int64"),
    (dict(x=X.astype(np.float16), w=W.astype(np.float16)), "x must be float32 or float64, got float16"),
    # FFTW has no plans for swapped bytes (fft and fft-tiled failed inside pyfftw)
    (dict(x=X.astype(X.dtype.newbyteorder("S")), w=W.astype(W.dtype.newbyteorder("S"))),
     "x must be in this machine's byte order"),
    (dict(w=W.astype(np.float64)), "x is float32 but w is float64; use one dtype for both"),
    (dict(x=X.tolist()), "x must be a numpy array (N, C, H, W), got list"),
    (dict(b=np.zeros(3, np.float32)), "b must have shape (4,) to match w's 4 filters, got (3,)"),
    (dict(x=np.zeros((0, 1, 8, 8), np.float32)), "must have no empty dimension"),
]


@pytest.mark.parametrize("name", convlab.list_backends())
@pytest.mark.parametrize("change, message", CONV_MISUSE, ids=[m for _, m in CONV_MISUSE])
def test_conv2d_misuse(name, change, message):
    args = dict(dict(x=X, w=W, b=None, stride=1, padding=0), **change)
    with pytest.raises(ValueError) as e:
        convlab.conv2d(**args, backend=name)
    assert message in str(e.value)


@pytest.mark.parametrize("args, kwargs, message", [
    ((0, 4, 3), {}, "in_channels must be a positive int, got 0"),
    ((1, -4, 3), {}, "out_channels must be a positive int, got -4"),
    ((1, 4, 0), {}, "kernel_size must be >= 1, got 0"),
    ((1, 4, 3), dict(stride=0), "stride must be >= 1, got 0"),
    ((1, 4, 3), dict(padding=(1, -1)), "padding must be >= 0, got (1, -1)"),
    ((1, 4, 3), dict(backend="nope"), "unknown backend 'nope'; valid backends are: "),
    ((1, 4, 3), dict(relu="no"), "relu must be True or False, got 'no'"),
    ((1, 4, 3), dict(relu=1), "relu must be True or False, got 1"),
])
def test_conv2d_layer_construction(args, kwargs, message):
    with pytest.raises(ValueError) as e:
        convlab.Conv2D(*args, **kwargs)
    assert message in str(e.value)


@pytest.mark.parametrize("args, kwargs, message", [
    ((0, 3), {}, "in_features must be a positive int, got 0"),  # was a ZeroDivisionError
    ((-1, 3), {}, "in_features must be a positive int, got -1"),  # numpy's "negative dimensions"
    ((2.5, 3), {}, "in_features must be a positive int, got 2.5"),  # numpy's TypeError
    ((4, True), {}, "out_features must be a positive int, got True"),
    ((4, 3), dict(dtype=np.int32), "dtype must be float32 or float64 (what every backend and layer computes in), "
                                   "got <class 'numpy.int32'>"),  # was all-zero weights
    ((4, 3), dict(dtype="float16"), "dtype must be float32 or float64 (what every backend and layer computes in), "
                                    "got 'float16'"),
    ((4, 3), dict(dtype="nope"), "dtype must be float32 or float64"),
])
def test_dense_layer_construction(args, kwargs, message):
    with pytest.raises(ValueError) as e:
        convlab.Dense(*args, **kwargs)
    assert message in str(e.value)
    assert convlab.Dense(np.int64(4), 3, dtype="float64").params["w"].dtype == np.float64


def test_conv2d_layer_in_use():
    layer = convlab.Conv2D(3, 4, 3)
    with pytest.raises(ValueError, match=r"x has 1 channels but w expects 3"):
        layer.forward(X)
    y = layer.forward(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(2, 4, 6, 6\), got \(2, 4, 5, 5\)"):
        layer.backward(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="cache must be the second value returned by im2col.forward"):
        convlab.get_backend("im2col").backward(y, cache="not a cache")
    with pytest.raises(ValueError, match="unknown backend 'nope'"), convlab.use_backend("nope"):
        pass


# --- layers, loss, optimizer and state dicts, misused --------------------------------------


@pytest.mark.parametrize("x, message", [
    (np.ones((2, 11), np.float32), "Dense(10, 3): x must have 10 features (N, 10), got shape (2, 11)"),
    (np.ones((2, 9), np.float32), "Dense(10, 3): x must have 10 features (N, 10), got shape (2, 9)"),
    (np.ones((2, 2, 5), np.float32), "x must have 2 dimensions (N, in_features) = (N, 10), got shape (2, 2, 5)"),
    (np.ones((2, 10)), "x is float64 but the layer is float32; pass x as float32 (e.g. x.astype(np.float32))"),
    (np.ones((2, 10), np.int64), "x is int64 but the layer is float32"),
    ([[1.0] * 10], "Dense(10, 3): x must be a numpy array (N, 10), got list"),
])
def test_dense_forward_takes_only_its_features_in_its_dtype(x, message):
    layer = convlab.Dense(10, 3, rng=0)
    with pytest.raises(ValueError) as e:
        layer.forward(x)
    assert message in str(e.value)
    assert layer.forward(np.ones((2, 10), np.float32)).dtype == np.float32


def test_a_network_given_images_of_another_size_says_which_it_reads():
    with pytest.raises(ValueError) as e:
        convlab.reference_net(seed=0).forward(np.ones((2, 1, 30, 30), np.float32))
    assert str(e.value) == ("layer 3 of the network cannot take its input: Dense(18432, 10): x must have 18432 "
                            "features (N, 18432), got shape (2, 21632); this network reads 1x28x28 images "
                            "(N, 1, 28, 28), got (2, 1, 30, 30)")
    # A network that reads no 1x28x28 image: the layer is named, no image size suggested.
    model = convlab.Sequential(convlab.Conv2D(1, 2, 3, rng=0), convlab.Conv2D(3, 4, 3, rng=0))
    with pytest.raises(ValueError) as e:
        model.forward(X)
    assert str(e.value).startswith("layer 1 of the network, Conv2D(3, 4, kernel_size=(3, 3), stride=(1, 1), "
                                   "padding=(0, 0), backend=None), cannot take its input: x has 2 channels but w "
                                   "expects 3")
    assert "images" not in str(e.value)


def ran(layer, shape, dtype=np.float32):
    """``layer`` after a forward of ones of ``shape``."""
    layer.forward(np.ones(shape, dtype))
    return layer


BACKWARD_MISUSE = [
    (lambda: ran(convlab.Dense(10, 3, rng=0), (2, 10)), np.ones((2, 4), np.float32),
     "Dense.backward: dy must have the forward output's shape (2, 3), got (2, 4)"),
    (lambda: ran(convlab.Dense(10, 3, rng=0), (2, 10)), np.ones((1, 3), np.float32), "shape (2, 3), got (1, 3)"),
    (lambda: ran(convlab.Dense(10, 3, rng=0), (2, 10)), [[1.0] * 3] * 2, "shape (2, 3), got list"),
    (lambda: ran(convlab.Dense(10, 3, rng=0), (2, 10)), np.ones((2, 3)),
     "Dense.backward: dy is float64 but the forward computed float32; pass dy as float32"),
    (lambda: ran(convlab.ReLU(), (2, 3)), np.ones((1, 3), np.float32),
     "ReLU.backward: dy must have the forward output's shape (2, 3), got (1, 3)"),
    (lambda: ran(convlab.ReLU(), (2, 3)), np.ones((2, 4), np.float32), "shape (2, 3), got (2, 4)"),
    (lambda: ran(convlab.Flatten(), (2, 2, 3)), np.ones((3, 4), np.float32),
     "Flatten.backward: dy must have the forward output's shape (2, 6), got (3, 4)"),
    (lambda: ran(convlab.MaxPool2D(2), (2, 3, 4, 4)), np.ones((2, 3, 3, 3), np.float32),
     "MaxPool2D.backward: dy must have the forward output's shape (2, 3, 2, 2), got (2, 3, 3, 3)"),
    (lambda: ran(convlab.AvgPool2D(2), (2, 3, 4, 4)), np.ones((1, 3, 2, 2), np.float32),
     "AvgPool2D.backward: dy must have the forward output's shape (2, 3, 2, 2), got (1, 3, 2, 2)"),
]


@pytest.mark.parametrize("make, dy, message", BACKWARD_MISUSE, ids=[m for _, _, m in BACKWARD_MISUSE])
def test_backward_takes_only_a_dy_shaped_like_the_output(make, dy, message):
    with pytest.raises(ValueError) as e:
        make().backward(dy)
    assert message in str(e.value)


@pytest.mark.parametrize("layer", [convlab.Dense(10, 3, rng=0), convlab.ReLU(), convlab.Flatten(), convlab.MaxPool2D(2),
                                   convlab.AvgPool2D(2), convlab.Conv2D(1, 2, 3, rng=0)], ids=repr)
def test_backward_before_forward(layer):
    with pytest.raises(ValueError, match=f"{type(layer).__name__}.backward needs the forward first"):
        layer.backward(np.ones((2, 4)))


@pytest.mark.parametrize("pool", [convlab.MaxPool2D(2), convlab.AvgPool2D(2)], ids=repr)
def test_pooling_takes_images(pool):
    with pytest.raises(ValueError, match=r"x must have 4 dimensions \(N, C, H, W\), got shape \(1, 4, 4\)"):
        pool.forward(np.ones((1, 4, 4)))
    with pytest.raises(ValueError, match=r"x must be a numpy array \(N, C, H, W\), got list"):
        pool.forward(np.ones((1, 1, 4, 4)).tolist())


@pytest.mark.parametrize("pool", [convlab.MaxPool2D(3, 1, 1), convlab.AvgPool2D(2)], ids=repr)
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.float16])
def test_pooling_takes_only_float32_or_float64(pool, dtype):
    # An int x: average pooling's 1/4 became 0 (all zeros, silently), max-pooling's -inf
    # padding an OverflowError.
    name, kind = type(pool).__name__, np.dtype(dtype).name
    with pytest.raises(ValueError, match=f"^{name}: x must be float32 or float64, got {kind}$"):
        pool.forward(np.arange(32).reshape(2, 1, 4, 4).astype(dtype))
    y = pool.forward(np.ones((2, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=f"^{name}.backward: dy must be float32 or float64, got {kind}$"):
        pool.backward(np.ones(y.shape, dtype))


@pytest.mark.parametrize("make, shape", [
    (lambda: convlab.Conv2D(1, 2, 3, rng=0), (2, 1, 8, 8)),
    (lambda: convlab.Dense(10, 3, rng=0), (2, 10)),
    (lambda: convlab.ReLU(), (2, 3)),
    (lambda: convlab.Flatten(), (2, 2, 3)),
    (lambda: convlab.MaxPool2D(2), (2, 3, 4, 4)),
    (lambda: convlab.AvgPool2D(2), (2, 3, 4, 4)),
])
@pytest.mark.parametrize("need_dx", ["no", 1, None])
def test_need_dx_must_be_a_flag(make, shape, need_dx):
    layer = make()
    dy = layer.forward(np.ones(shape, np.float32))
    with pytest.raises(ValueError) as e:
        layer.backward(np.ones_like(dy), need_dx=need_dx)
    assert f"need_dx must be True or False, got {need_dx!r}" in str(e.value)
    layer.backward(np.ones_like(dy), need_dx=np.bool_(False))


@pytest.mark.parametrize("setting", [dict(lr="0.1"), dict(lr=True), dict(lr=-0.1), dict(lr=float("nan")),
                                     dict(momentum=float("inf")), dict(momentum=None)])
def test_sgd_refuses_a_setting_that_is_not_a_finite_number_at_least_0(setting):
    (name, value), = setting.items()
    with pytest.raises(ValueError, match=f"SGD's {name} must be a finite number ≥ 0, got {value!r}"):
        convlab.SGD(convlab.reference_net(seed=1), **setting)
    convlab.SGD(convlab.reference_net(seed=1), lr=np.float32(0.1), momentum=0)  # numpy scalars and 0 are fine


@pytest.mark.parametrize("model", [None, [np.zeros(3, np.float32)], convlab.reference_net])
def test_sgd_refuses_what_is_not_a_model(model):
    with pytest.raises(TypeError, match="SGD takes the model whose parameters it updates \\(a convlab.Sequential, "
                                        f"such as convlab.reference_net\\(\\), or anything with its named_parameters"
                                        f"\\(\\)\\), got {type(model).__name__}"):
        convlab.SGD(model)


def test_sgd_step_before_any_backward():
    model = convlab.reference_net(seed=1)
    before = {name: p.copy() for name, p in model.state_dict().items()}
    with pytest.raises(ValueError, match="step\\(\\) before any backward: parameter 0.w has no gradient; run the "
                                         "model's backward"):
        convlab.SGD(model, 0.1).step()
    model.layers[3].grads.update(w=np.zeros((18432, 10), np.float32), b=np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="parameter 0.w has no gradient"):  # the dense layer's alone: nothing moves
        convlab.SGD(model, 0.1).step()
    for name, p in model.state_dict().items():
        np.testing.assert_array_equal(p, before[name])


@pytest.mark.parametrize("make, message", [
    (lambda: convlab.Conv2D(1, 2, 3, rng="x"),
     "rng must be a non-negative int (a seed) or a numpy.random.Generator or None, got 'x'"),
    (lambda: convlab.Dense(10, 3, rng="x"), "rng must be a non-negative int (a seed) or a numpy.random.Generator or None"),
    (lambda: convlab.Dense(10, 3, rng=-1), "rng must be a non-negative int (a seed)"),
    (lambda: convlab.Dense(10, 3, rng=1.5), "got 1.5"),
    (lambda: convlab.Dense(10, 3, rng=True), "got True"),
    (lambda: convlab.reference_net(seed="a"), "seed must be a non-negative int or a numpy.random.Generator, got 'a'"),
    (lambda: convlab.reference_net(seed=None), "seed must be a non-negative int or a numpy.random.Generator, got None"),
    (lambda: convlab.get_model("lenet5").build(seed=-3), "seed must be a non-negative int or a numpy.random.Generator"),
])
def test_seeds_and_generators(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert message in str(e.value)


def test_seeds_of_any_int_type_and_generators_are_taken():
    np.testing.assert_array_equal(convlab.Dense(4, 2, rng=np.int64(3)).params["w"], convlab.Dense(4, 2, rng=3).params["w"])
    np.testing.assert_array_equal(convlab.Dense(4, 2, rng=np.random.default_rng(3)).params["w"],
                                  convlab.Dense(4, 2, rng=3).params["w"])
    assert convlab.reference_net(seed=np.uint64(2**64 - 1)).state_dict()["0.w"].shape == (32, 1, 7, 7)
    assert convlab.Conv2D(1, 2, 3).params["w"].shape == (2, 1, 3, 3)  # rng=None: seeded by the OS


def test_load_state_dict_refuses_what_is_not_a_float_array_of_the_shape():
    model = convlab.reference_net(seed=0)
    good = {name: p.copy() for name, p in model.state_dict().items()}
    other = convlab.reference_net(seed=1).state_dict()
    for change, message in [
        (dict(good, **{"3.w": good["3.w"].tolist()}), "parameter 3.w must be a numpy array of shape (18432, 10), got list"),
        (dict(good, **{"0.b": other["0.b"].astype(np.int64)}),
         "parameter 0.b must be an array of floats (float32 or float64; this model is float32), got int64"),
        (dict(good, **{"0.b": other["0.b"].astype(object)}), "got object"),
        (dict(good, **{"0.b": other["0.b"] > 0}), "got bool"),
        (dict(good, **{"3.b": np.full(10, np.nan, np.float32)}),
         "parameter 3.b holds NaN or infinite values; every value must be finite"),
        (dict(good, **{"3.b": np.full(10, -np.inf)}), "parameter 3.b holds NaN or infinite values; every"),
        (dict(good, **{"3.b": np.full(10, 1e300)}),
         "parameter 3.b holds NaN or infinite values or beyond float32's range; every value must be finite"),
    ]:
        state = dict(change, **{"0.w": other["0.w"]})  # a good value first: not copied either
        with pytest.raises(ValueError) as e:
            model.load_state_dict(state)
        assert message in str(e.value)
        for name, p in model.state_dict().items():
            np.testing.assert_array_equal(p, good[name])
    with pytest.raises(ValueError, match="state must be a dict of numpy arrays by parameter name .*got list"):
        model.load_state_dict(list(good.values()))


def test_load_state_dict_casts_between_float_types():
    model = convlab.reference_net(seed=0)
    trained = convlab.reference_net(seed=1, dtype=np.float64).state_dict()
    model.load_state_dict(trained)
    for name, p in model.state_dict().items():
        assert p.dtype == np.float32
        np.testing.assert_array_equal(p, trained[name].astype(np.float32))


@pytest.mark.parametrize("labels, message", [
    (np.array([0, -1]), "labels must be class indices from 0 to 9 (logits have 10 columns), got -1"),
    (np.array([0, 10]), "labels must be class indices from 0 to 9 (logits have 10 columns), got 10"),
    (np.array([0.0, 1.0]), "labels must be a numpy array of integers (class indices 0 to 9), got float64"),
    (np.array([True, False]), "labels must be a numpy array of integers (class indices 0 to 9), got bool"),
    ([0, 1], "labels must be a numpy array of integers (class indices 0 to 9), got list"),
    (np.array([0, 1, 2]), "labels must have shape (2,), one per row of logits (2, 10), got (3,)"),
    (np.array([[0, 1]]), "labels must have shape (2,), one per row of logits (2, 10), got (1, 2)"),
])
def test_softmax_cross_entropy_labels(labels, message):
    with pytest.raises(ValueError) as e:
        convlab.softmax_cross_entropy(np.zeros((2, 10)), labels)
    assert message in str(e.value)


def test_softmax_cross_entropy_takes_any_integer_labels_in_range():
    for dtype in (np.uint8, np.int32, np.int64):
        loss, _ = convlab.softmax_cross_entropy(np.zeros((2, 10)), np.array([0, 9], dtype))
        assert loss == pytest.approx(np.log(10))
    with pytest.raises(ValueError, match=r"logits must be a numpy array \(N, classes\) of floats, got shape \(10,\)"):
        convlab.softmax_cross_entropy(np.zeros(10), np.array([0]))


@pytest.mark.parametrize("logits, message", [
    (np.array([[0, 5], [5, 0]]), "logits must be float32 or float64, got int64"),
    (np.array([[0, 5], [5, 0]], np.uint8), "logits must be float32 or float64, got uint8"),
    (np.array([[True, False], [False, True]]), "logits must be float32 or float64, got bool"),
    (np.zeros((2, 2), np.float16), "logits must be float32 or float64, got float16"),
    ([[0.0, 5.0], [5.0, 0.0]], "logits must be a numpy array (N, classes) of floats, got list"),
    (np.zeros(3), "logits must be a numpy array (N, classes) of floats, got shape (3,)"),
])
def test_softmax_and_its_loss_refuse_logits_that_are_not_a_float_matrix(logits, message):
    """Integer logits gave the right loss and an all-zero gradient (cast back to int); a list
    or a 1-D array failed inside numpy."""
    for run in (lambda: convlab.softmax_cross_entropy(logits, np.array([0, 1])), lambda: convlab.softmax(logits)):
        with pytest.raises(ValueError) as e:
            run()
        assert message in str(e.value)
    for dtype in (np.float32, np.float64):
        loss, dlogits = convlab.softmax_cross_entropy(np.array([[0, 5], [5, 0]], dtype), np.array([0, 1]))
        assert dlogits.dtype == dtype and np.all(dlogits != 0) and loss == pytest.approx(5.0067, abs=1e-4)
        assert convlab.softmax(np.zeros((1, 2), dtype)).tolist() == [[0.5, 0.5]]


def test_predict_logits_refuses_no_images_and_a_batch_size_below_1():
    """They failed inside numpy: "need at least one array to concatenate", "range() arg 3
    must not be zero"."""
    model = convlab.reference_net(seed=0)
    x = np.zeros((3, 1, 28, 28), np.float32)
    with pytest.raises(ValueError, match=r"x must be a numpy array of at least one image \(N, C, H, W\), "
                                         r"got shape \(0, 1, 28, 28\)"):
        predict_logits(model, x[:0])
    with pytest.raises(ValueError, match="x must be a numpy array of at least one image .*got NoneType"):
        predict_logits(model, None)
    for batch_size in (0, -1, 2.0, True, None):
        with pytest.raises(ValueError, match=f"batch_size must be a positive int \\(images per forward pass\\), "
                                             f"got {re.escape(repr(batch_size))}"):
            predict_logits(model, x, batch_size)
    assert predict_logits(model, x, np.int64(2)).shape == (3, 10)


def test_accuracy_checks_its_labels_as_the_loss_does():
    """Labels (N, 1), as HDF5 files often store them, broadcast against the (N,) predictions
    into an (N, N) comparison: a wrong accuracy (0.5 for 4 images all predicted right)."""
    model = convlab.reference_net(seed=0)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    right = predict_logits(model, x).argmax(axis=1)
    assert accuracy(model, x, right) == 1.0
    for labels, message in [
        (right[:, None], "labels must have shape (4,), one per row of logits (4, 10), got (4, 1)"),
        (right[:3], "labels must have shape (4,), one per row of logits (4, 10), got (3,)"),
        (right.astype(float), "labels must be a numpy array of integers (class indices 0 to 9), got float64"),
        (right.tolist(), "labels must be a numpy array of integers (class indices 0 to 9), got list"),
        (np.full(4, 10), "labels must be class indices from 0 to 9 (logits have 10 columns), got 10"),
    ]:
        with pytest.raises(ValueError) as e:
            accuracy(model, x, labels)
        assert message in str(e.value)


# --- data files, below the checksum ------------------------------------------------------


def write_idx_dataset(folder, images=(3, 28, 28), labels=(3,), first=b""):
    """The four MNIST idx files (uncompressed) of a tiny fake data set; ``first`` replaces
    the start of the training images (to break its header)."""
    folder.mkdir(exist_ok=True)
    for key, (stem, _) in MNIST_FILES.items():
        payload = idx_bytes(np.zeros(images if key.endswith("images") else labels))
        if key == "train_images":
            payload = first + payload[len(first):]
        (folder / stem).write_bytes(payload)
    return folder


@pytest.mark.parametrize("kwargs, message", [
    (dict(first=b"\x12\x34\x56\x78"), "wrong magic number 12345678; expected an idx file"),
    (dict(first=b"\x00\x00\x08\x03\x00\x00\x00\x09"), "truncated or oversized idx data"),
    (dict(labels=(2,)), "3 train images but labels of shape (2,); expected one label per image"),
])
def test_idx_structure_without_checksums(tmp_path, kwargs, message):
    folder = write_idx_dataset(tmp_path / "d", **kwargs)
    with pytest.raises(DataError) as e:
        load_dataset("mnist", folder, verify=False)
    assert message in str(e.value)


def test_idx_labels_out_of_range(tmp_path):
    folder = write_idx_dataset(tmp_path / "d")
    labels = MNIST_FILES["test_labels"][0]
    (folder / labels).write_bytes(idx_bytes(np.array([0, 10, 3])))
    with pytest.raises(DataError, match="test labels must be whole numbers 0-9"):
        load_dataset("mnist", folder, verify=False)


GOOD_HDF5 = dict(x_train=np.zeros((4, 784), np.float32), y_train=np.zeros((4, 1)),
                 x_test=np.zeros((2, 784), np.float32), y_test=np.zeros((2, 1)))


@pytest.mark.parametrize("change, message", [
    (dict(x_train=np.zeros((4, 783), np.float32)), "x_train has shape (4, 783); expected (N, 784) or (N, 28, 28)"),
    (dict(x_test=np.full((2, 784), 2.0)), "x_test has values outside [0, 1] (or NaN); expected floats in [0, 1] or uint8"),
    (dict(x_test=np.full((2, 784), np.nan)), "x_test has values outside [0, 1] (or NaN)"),
    (dict(x_train=np.zeros((4, 784), np.int32)), "x_train has dtype int32; expected floats in [0, 1] or uint8"),
    (dict(y_train=np.zeros((5, 1))), "4 train images but labels of shape (5,); expected one label per image"),
    (dict(y_test=np.zeros((2, 2))), "2 test images but labels of shape (2, 2)"),
    (dict(y_test=np.array([[1.5], [2]])), "test labels must be whole numbers 0-9"),
    (dict(y_train=np.array([0, 1, 2, -1])), "train labels must be whole numbers 0-9"),
])
def test_hdf5_layout(tmp_path, change, message):
    path = tmp_path / HDF5_NAME
    with h5py.File(path, "w") as f:
        for key, value in dict(GOOD_HDF5, **change).items():
            f[key] = value
    with pytest.raises(DataError) as e:
        load_hdf5(path)
    assert message in str(e.value)


def test_truncated_hdf5(tmp_path):
    path = tmp_path / HDF5_NAME
    with h5py.File(path, "w") as f:
        for key, value in GOOD_HDF5.items():
            f[key] = value
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="cannot read"):
        load_hdf5(path)


@pytest.mark.parametrize("inplace", ["no", 0, None])
def test_a_relu_layers_inplace_must_be_a_flag(inplace):
    # "no" switched it on: the forward then wrote over the caller's x.
    with pytest.raises(ValueError, match=f"^inplace must be True or False, got {inplace!r}$"):
        convlab.ReLU(inplace=inplace)
    assert convlab.ReLU(inplace=np.bool_(True)).inplace is True


def test_a_backends_relu_must_be_a_flag():
    with pytest.raises(ValueError, match="relu must be True or False, got 'yes'"):
        convlab.get_backend("im2col").forward(X, W, relu="yes")


@pytest.mark.parametrize("argv", [[], ["data"], ["auto"]])
def test_a_group_without_its_command_prints_its_commands(capsys, argv):
    """Not fire's help page in a pager: the group's commands, as ``--help`` lists them."""
    code, out, err = run_cli(capsys, *argv)
    assert code == 0 and err == ""
    assert out.startswith(f"usage: {' '.join(['convlab', *argv])} COMMAND [options]") and "commands:" in out


def test_download_help_states_the_timeout_and_deadline_bounds_and_a_day_is_allowed(capsys):
    from convlab.download import MAX_DEADLINE
    from convlab.settings import positive_float

    code, out, _ = run_cli(capsys, "data", "download", "--help")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines() if "(at most 86400, a day)" in line] == ["--timeout",
                                                                                                 "--deadline"]
    assert positive_float("deadline", 86400, MAX_DEADLINE, " (a day)") == 86400.0
