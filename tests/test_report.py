"""`convlab report`: the PDF and its PNG figures, from a metrics file or a checkpoint."""

import contextlib
import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from convlab import registry
from convlab.cli import main
from convlab.checkpoints import save_checkpoint
from convlab.files import PNG_SIGNATURE
from convlab.models import reference_net
from convlab.optimizers import SGD
from convlab.report import (ReportError, backend_explanation, has_mark, load_run, plain, read_bench,
                            summary_paragraph, timing_rows, write_report)
from convlab.training import EpochMetrics
from tests.test_atomic_writes import fsynced
from tests.test_cli import run_cli

HISTORY = [EpochMetrics(1, 0.8, 0.74, 0.83, 9.0), EpochMetrics(2, 0.3, 0.91, 0.90, 8.5)]
SETTINGS = dict(backend="im2col", dataset="mnist", epochs=2, batch_size=64, lr=0.01, lr_schedule="cosine", momentum=0.9, seed=0,
                train_size=2000, test_size=500)
BENCH = {"rows": [
    {"shape": "64x1->32 28x28 k7 p1", "backend": "naive", "pass": "forward", "seconds": 0.2},
    {"shape": "64x1->32 28x28 k7 p1", "backend": "im2col", "pass": "forward", "seconds": 0.01},
    {"shape": "64x1->32 28x28 k7 p1", "backend": "im2col", "pass": "forward+backward", "seconds": 0.03},
]}


def write_checkpoint(path):
    model = reference_net(seed=3)
    save_checkpoint(path, model, SGD(model), HISTORY, SETTINGS)
    return path


@pytest.fixture
def metrics(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"backend": "im2col", "test_accuracy": 0.9, "epochs": [m.as_dict() for m in HISTORY]}))
    return path


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(tmp_path / "run.h5")


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """The report of a checkpoint with a bench result, written once through the CLI:
    (folder, what the CLI printed)."""
    folder = tmp_path_factory.mktemp("report")
    (folder / "bench.json").write_text(json.dumps(BENCH))
    source = write_checkpoint(folder / "run.h5")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        main(["report", str(source), "--out", str(folder / "out" / "report.pdf"), "--bench", str(folder / "bench.json")])
    return folder / "out", stdout.getvalue().splitlines()


def is_pdf(path):
    content = path.read_bytes()
    return content.startswith(b"%PDF-") and content.rstrip().endswith(b"%%EOF")


def is_png(path):
    return path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def pdf_text(path):
    return " ".join(subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True).stdout.split())


def test_from_a_checkpoint_with_bench(full_report):
    out, printed = full_report
    names = ["report.pdf"] + [f"report-{name}.png" for name in ("curves", "filters", "timing")]
    assert printed == [f"wrote {out / name}" for name in names]
    assert is_pdf(out / "report.pdf") and all(is_png(out / name) for name in names[1:])
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no temporary files


def test_from_metrics_has_no_filters(metrics, tmp_path):
    written = write_report(metrics, tmp_path / "r.pdf").written
    assert [p.name for p in written] == ["r.pdf", "r-curves.png"]
    assert is_pdf(written[0])
    if shutil.which("pdftotext"):
        assert "Not shown: metrics.json is a metrics file" in pdf_text(written[0])


def test_the_title_of_a_one_epoch_run_says_one_epoch(tmp_path, monkeypatch):
    from convlab import report

    titles, real_add = [], report.Pages.add

    def add(pages, style, text):
        if style == "title":
            titles.append(text)
        real_add(pages, style, text)

    monkeypatch.setattr(report.Pages, "add", add)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"backend": "im2col", "test_accuracy": 0.83, "epochs": [HISTORY[0].as_dict()]}))
    write_report(path, tmp_path / "r.pdf")
    assert titles == ["convlab report: MNIST, im2col, 1 epoch"]


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs pdftotext (poppler-utils)")
def test_pdf_text_says_what_the_assignment_asked(full_report):
    text = pdf_text(full_report[0] / "report.pdf")
    assert "test accuracy of 90.00% on 500 MNIST test images after 2 epochs" in text
    assert "conv 32 filters 7×7, stride 1, padding 1" in text and "im2col" in text
    assert "Learned filters" in text and "Not shown" not in text and "Timing" in text


def test_paragraph_from_checkpoint_settings(checkpoint):
    run = load_run(checkpoint)
    text = summary_paragraph(run, run.model)
    assert "test accuracy of 90.00% on 500 MNIST test images after 2 epochs of training on 2,000 training images" in text
    assert "input 1×28×28 → conv 32 filters 7×7, stride 1, padding 1 → ReLU → dense 18432 → 10" in text
    assert "SGD with learning rate 0.01 (cosine schedule by epoch), momentum 0.9, minibatches of 64, seed 0" in text
    assert registry.get_backend("im2col").description.rstrip(".") in text
    np.testing.assert_array_equal(run.model.conv_layers()[0].params["w"], reference_net(seed=3).layers[0].params["w"])


def test_paragraph_from_metrics_claims_only_what_it_knows(metrics):
    run = load_run(metrics)
    text = summary_paragraph(run, reference_net())
    assert "test accuracy of 90.00% on the MNIST test set after 2 epochs of training." in text
    assert "SGD" not in text


@pytest.mark.parametrize("name", registry.list_backends())
def test_every_backend_explains_itself_from_its_module_docstring(name):
    """From its module's docstring, else (a plugin's module may have none) its class's,
    else its description: the suite tests plugins too (docs/plugins.md)."""
    backend = registry.get_backend(name)
    description, blocks = backend_explanation(name)
    source = sys.modules[type(backend.impl).__module__].__doc__ or backend.impl.__doc__ or backend.description
    assert blocks
    assert description == plain(backend.description)
    assert plain(" ".join(source.split()[:3])) in " ".join(text for _, text in blocks)


def test_a_new_backend_describes_itself(monkeypatch):
    class Mine:
        """mine: a one-line description."""

        forward = backward = None

    monkeypatch.setitem(registry._registry, "mine", registry.Backend("mine", Mine()))
    description, blocks = backend_explanation("mine")
    assert description == "mine: a one-line description."
    assert ("para", "`convlab report`: the PDF and its PNG figures, from a metrics file or a checkpoint.") in blocks


def test_a_backend_not_installed_here(metrics, tmp_path):
    doc = json.loads(metrics.read_text())
    metrics.write_text(json.dumps(dict(doc, backend="gone")))
    assert "not installed" in backend_explanation("gone")[1][0][1]
    assert is_pdf(write_report(metrics, tmp_path / "r.pdf").written[0])


def test_plain_strips_markup_but_not_arithmetic():
    assert plain("``x`` and :func:`configure` with *flipped* C*kh*kw and OH*OW") == \
        "x and configure with flipped C*kh*kw and OH*OW"


def test_timing_rows_ratios_within_shape_and_pass():
    rows = timing_rows(BENCH["rows"])
    assert [r[1:3] + r[4:] for r in rows] == [
        ["forward", "im2col", "1.0×"], ["forward", "naive", "20.0×"], ["forward+backward", "im2col", "1.0×"]]


def test_errors_leave_the_old_report_untouched(metrics, tmp_path):
    out = tmp_path / "r.pdf"
    out.write_bytes(b"%PDF-1.4 old report")
    (tmp_path / "bad.json").write_text('{"rows": []}')
    with pytest.raises(ReportError, match="no usable timing rows"):
        write_report(metrics, out, tmp_path / "bad.json")
    assert out.read_bytes() == b"%PDF-1.4 old report" and sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.json", "metrics.json", "r.pdf"]



def test_a_checkpoint_whose_epoch_is_text_is_called_damaged(checkpoint, tmp_path, capsys):
    """It ended in "TypeError: can only concatenate str (not "int") to str"."""
    import h5py

    with h5py.File(checkpoint, "a") as f:
        f.attrs["epoch"] = "x"
    code, out, err = run_cli(capsys, "report", str(checkpoint), "--out", str(tmp_path / "r.pdf"))
    assert (code, out, err) == (2, "", f"convlab: error: {checkpoint} is a damaged checkpoint: attribute epoch is "
                                       "'x', not a whole number (0 or more)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


DEEP = "[" * 100000 + "]" * 100000


@pytest.mark.parametrize("where", ["SOURCE", "--bench"])
def test_json_nested_too_deeply_is_refused_in_one_line(metrics, tmp_path, capsys, where):
    """It ended in a RecursionError traceback (exit 1)."""
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    args = [str(deep)] if where == "SOURCE" else [str(metrics), "--bench", str(deep)]
    code, out, err = run_cli(capsys, "report", *args, "--out", str(tmp_path / "r.pdf"))
    assert (code, out) == (2, "") and err.startswith(f"convlab: error: {deep}: cannot read it as JSON (nested too deeply); ")
    assert err.count("\n") == 1


def test_an_existing_file_nested_too_deeply_is_not_taken_for_a_metrics_file(tmp_path):
    from convlab.files import holds

    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    assert not holds(deep, "metrics")


def test_a_checkpoint_whose_layer_times_are_nested_too_deeply_is_called_damaged(checkpoint, tmp_path, capsys):
    import h5py

    with h5py.File(checkpoint, "a") as f:
        f.create_dataset("layer_times", data=DEEP)
    code, out, err = run_cli(capsys, "report", str(checkpoint), "--out", str(tmp_path / "r.pdf"))
    assert (code, out, err) == (2, "", f"convlab: error: {checkpoint} is a damaged or truncated checkpoint "
                                       "(cannot read it: nested too deeply)\n")


@pytest.mark.parametrize("empty", ["", " "])
def test_an_empty_bench_path_names_the_option(metrics, tmp_path, capsys, empty):
    """It said ".: cannot read it as JSON ([Errno 21] Is a directory: '.')"."""
    code, out, err = run_cli(capsys, "report", str(metrics), "--bench", empty, "--out", str(tmp_path / "r.pdf"))
    assert (code, out, err) == (2, "", f"convlab: error: --bench is empty ({empty!r}); give the file "
                                       "`convlab bench --json PATH` wrote, such as bench.json\n")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_bench_that_is_not_a_regular_file_is_refused_unopened(metrics, tmp_path, capsys, kind):
    """A FIFO hung the report for ever, waiting for a writer."""
    if kind == "fifo":
        bench = tmp_path / "ff.json"
        os.mkfifo(bench)
    else:
        bench = Path(os.devnull)
    code, out, err = run_cli(capsys, "report", str(metrics), "--bench", str(bench), "--out", str(tmp_path / "r.pdf"))
    assert (code, out) == (2, "") and err.startswith(
        f"convlab: error: --bench {bench} is not a regular file (a FIFO, a device or a socket); expected the JSON")


@pytest.mark.parametrize("field, value, said", [
    ("settings", {"test_size": None}, '"settings" field "test_size" is None, not a whole number (0 or more)'),
    ("settings", {"test_size": "abc"}, '"settings" field "test_size" is \'abc\', not a whole number (0 or more)'),
    ("settings", {"train_size": -1}, '"settings" field "train_size" is -1, not a whole number (0 or more)'),
    ("settings", {"lr": True}, '"settings" field "lr" is True, not a finite number (0 or more)'),
    ("settings", {"model": {"a": 1}}, '"settings" field "model" is {\'a\': 1}, not text'),
    ("settings", {"dataset": [1]}, '"settings" field "dataset" is [1], not text'),
    ("settings", {"model": "xyz"}, '"settings" field "model" names no network convlab can build (unknown model'),
    ("layer_times", "abc", '"layer_times" is \'abc\', not a list of rows'),
    ("layer_times", [5], '"layer_times" row 1 is 5, not an object'),
    ("layer_times", [{"layer": "x"}], '"layer_times" row 1 has no "backend"'),
    ("layer_times", [{"layer": "x", "backend": None, "forward_ms": "1", "backward_ms": 1}],
     '"layer_times" row 1\'s "forward_ms" is \'1\', not a finite number of milliseconds (0 or more)'),
])
def test_a_metrics_file_s_fields_are_checked_and_named(metrics, tmp_path, capsys, field, value, said):
    """Each ended in a traceback (TypeError, KeyError) or a message naming nothing
    ("Cannot specify ',' with 's'.")."""
    doc = json.loads(metrics.read_text())
    doc[field] = value
    metrics.write_text(json.dumps(doc))
    code, out, err = run_cli(capsys, "report", str(metrics), "--out", str(tmp_path / "r.pdf"))
    assert (code, out) == (2, "") and err.startswith(f"convlab: error: {metrics}: its {said}") and err.count("\n") == 1


def test_a_checkpoint_whose_layer_times_are_not_rows_is_called_damaged(checkpoint, tmp_path, capsys):
    import h5py

    with h5py.File(checkpoint, "a") as f:
        f.create_dataset("layer_times", data="5")
    code, out, err = run_cli(capsys, "report", str(checkpoint), "--out", str(tmp_path / "r.pdf"))
    assert (code, out, err) == (2, "", f"convlab: error: {checkpoint} is a damaged checkpoint: its layer_times "
                                       "is 5, not a list of rows\n")


@pytest.mark.parametrize("key, value, said", [
    ("backend", None, "row 2's \"backend\" is None, not text"),
    ("pass", 1, "row 2's \"pass\" is 1, not text"),
    ("shape", [1], "row 2's \"shape\" is [1], not text"),
    ("seconds", True, "row 2's \"seconds\" is True, not a positive number of seconds"),
    ("seconds", None, "row 2's \"seconds\" is None, not a positive number of seconds"),
])
def test_a_bench_row_s_fields_are_checked_and_named(metrics, tmp_path, capsys, key, value, said):
    """A null backend or a numeric pass ended in a TypeError traceback."""
    bench = tmp_path / "bench.json"
    rows = [dict(row) for row in BENCH["rows"]]
    rows[1][key] = value
    bench.write_text(json.dumps({"rows": rows}))
    code, out, err = run_cli(capsys, "report", str(metrics), "--bench", str(bench), "--out", str(tmp_path / "r.pdf"))
    assert (code, out) == (2, "") and err.startswith(f'convlab: error: {bench}: its "rows" {said}; expected the JSON')


@pytest.mark.parametrize("spec", ["c6k5s2p2 relu maxpool3s2p1 avgpool2 flatten dense10", "lenet5", "reference",
                                  "c8k3p1 relu c4k5s2 dense12 relu dense10"])
def test_a_network_is_described_the_same_without_its_weights(spec):
    from convlab.models import get_model
    from convlab.report import describe_network

    model = get_model(spec)
    assert describe_network(model.shape_only()) == describe_network(model.build())


def test_a_metrics_file_of_a_big_network_is_reported_without_making_its_weights(metrics, tmp_path):
    """"c100000k3 dense10" (2.7 GB of weights) took 2 minutes and 8 GB: the report built the
    network, weights and all, to describe it."""
    import tracemalloc

    from convlab.models import get_model
    from convlab.report import rendered_report

    doc = json.loads(metrics.read_text())
    doc["settings"] = {"model": "c100000k3 dense10"}
    metrics.write_text(json.dumps(doc))
    tracemalloc.start()
    try:
        outputs = rendered_report(metrics, tmp_path / "r.pdf")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 << 20 and len(outputs) == 2
    assert f"dense 67600000 → 10 → softmax cross-entropy ({100000 * 10 + 67600000 * 10 + 10:,} parameters)" in \
        summary_paragraph(load_run(metrics), get_model("c100000k3 dense10").shape_only())


@pytest.mark.parametrize("full_at", ["write", "sync"])
def test_a_full_disk_leaves_the_earlier_report_whole(metrics, tmp_path, monkeypatch, full_at):
    """Files were written one at a time: on a real 2 MiB tmpfs with room for the PDF only, a
    report left its new PDF and none of its figures (and, had the earlier report been there,
    the new PDF beside the old figures). Now nothing is renamed until every file is written
    (``write``: the curves' write fails) and synced (``sync``: a full disk that write() did
    not report, delayed allocation or NFS, comes out of the PDF's fsync); the file named is
    the one that failed."""
    out = tmp_path / "r.pdf"
    earlier = {out: b"%PDF-1.4 earlier", tmp_path / "r-curves.png": PNG_SIGNATURE + b"earlier curves"}
    for path, content in earlier.items():
        path.write_bytes(content)
    write_bytes, fsync, failed = Path.write_bytes, os.fsync, {"write": tmp_path / "r-curves.png", "sync": out}[full_at]

    def is_failing(name):  # the temporary file beside the one that fails
        return name.startswith(f".{failed.name}.")

    def write(path, content):
        if full_at == "write" and is_failing(path.name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_bytes(path, content)

    def sync(fd):
        if full_at == "sync" and is_failing(os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(Path, "write_bytes", write)
    monkeypatch.setattr(os, "fsync", sync)
    with pytest.raises(ReportError, match=f"^cannot write {failed}: No space left on device$"):
        write_report(metrics, out)
    assert {path: path.read_bytes() for path in tmp_path.glob("r*")} == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "r-curves.png", "r.pdf"]


def test_each_file_is_synced_once_and_the_folder_once(metrics, tmp_path, monkeypatch):
    """Each file was synced twice (by the report, then by atomic_path) and the folder once
    per file."""
    synced = fsynced(monkeypatch)
    write_report(metrics, tmp_path / "r.pdf")
    assert len(synced) == 3 and synced[2] == str(tmp_path)
    assert Path(synced[0]).name.startswith(".r-curves.png.") and Path(synced[1]).name.startswith(".r.pdf.")


def test_a_folder_at_a_figure_name_asks_for_another_out(metrics, tmp_path):
    """A folder where a figure would go (r-curves.png/ beside r.pdf): the figure's name comes
    from --out, so the refusal asks for another --out, not for a file name inside the folder
    (it said "give a file name such as r-curves.png/out", which no option takes)."""
    (tmp_path / "r-curves.png").mkdir()
    with pytest.raises(ValueError, match=f"^--out's curves figure {tmp_path / 'r-curves.png'} is a folder; give "
                                         f"--out another name \\(its figures are named after it\\)$"):
        write_report(metrics, tmp_path / "r.pdf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "r-curves.png"]


def test_a_figure_that_cannot_be_replaced_is_named_and_the_pdf_stays(metrics, tmp_path, monkeypatch):
    """A rename refused (a real `chattr +i` figure gives EPERM): the figure is named, not the
    temporary file, and the PDF, renamed last, is the earlier one."""
    out, curves = tmp_path / "r.pdf", tmp_path / "r-curves.png"
    out.write_bytes(b"%PDF-1.4 earlier")
    curves.write_bytes(PNG_SIGNATURE + b"earlier curves")
    replace = os.replace

    def immutable_curves(source, target):
        if Path(target) == curves:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(source), None, str(target))
        replace(source, target)

    monkeypatch.setattr(os, "replace", immutable_curves)
    with pytest.raises(ReportError, match=f"^cannot write {curves}: Operation not permitted$"):
        write_report(metrics, out)
    assert out.read_bytes() == b"%PDF-1.4 earlier" and curves.read_bytes() == PNG_SIGNATURE + b"earlier curves"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "r-curves.png", "r.pdf"]


def test_an_earlier_report_s_figures_this_one_does_not_draw_are_removed(metrics, checkpoint, tmp_path, capsys):
    """A report of a metrics file after one of a checkpoint with --bench: the filters and the
    timing table left beside the new PDF would pass for this run's. A failed report removes
    nothing; another folder's figures and other names are not this report's to touch."""
    out = tmp_path / "out" / "r.pdf"
    (tmp_path / "bench.json").write_text(json.dumps(BENCH))
    assert run_cli(capsys, "report", str(checkpoint), "--out", str(out), "--bench", str(tmp_path / "bench.json"))[0] == 0
    earlier = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    assert sorted(earlier) == ["r-curves.png", "r-filters.png", "r-timing.png", "r.pdf"]
    assert all(has_mark(io.BytesIO(content)) for name, content in earlier.items() if name.endswith(".png"))
    elsewhere = tmp_path / "r-filters.png"  # beside the sources, not beside --out
    elsewhere.write_bytes(earlier["r-filters.png"])
    (out.parent / "r-filters-old.png").write_bytes(earlier["r-filters.png"])
    (tmp_path / "bad.json").write_text('{"rows": []}')
    code, _, err = run_cli(capsys, "report", str(metrics), "--out", str(out), "--bench", str(tmp_path / "bad.json"))
    assert code == 2 and "no usable timing rows" in err
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == dict(earlier, **{
        "r-filters-old.png": earlier["r-filters.png"]})
    code, printed, err = run_cli(capsys, "report", str(metrics), "--out", str(out))
    assert code == 0, err
    assert printed.splitlines() == [f"wrote {out}", f"wrote {out.parent / 'r-curves.png'}",
                                    f"removed {out.parent / 'r-filters.png'} (an earlier report's figure, not drawn "
                                    "by this one)",
                                    f"removed {out.parent / 'r-timing.png'} (an earlier report's figure, not drawn "
                                    "by this one)"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["r-curves.png", "r-filters-old.png", "r.pdf"]
    assert elsewhere.read_bytes() == earlier["r-filters.png"]


def test_what_convlab_cannot_tell_it_wrote_at_a_figure_name_is_left_and_said(metrics, checkpoint, tmp_path, capsys):
    """An unmarked PNG (an older convlab's figure, or the user's own) and a symlink (to a
    figure of convlab's) stay, each with a line saying why."""
    figure = write_report(checkpoint, tmp_path / "kept" / "r.pdf").written[-1]
    assert figure.name == "r-filters.png"
    fig = Figure()
    fig.add_subplot().plot([1, 2])
    unmarked = io.BytesIO()
    fig.savefig(unmarked, format="png", metadata={"Software": None})
    out = tmp_path / "out" / "r.pdf"
    out.parent.mkdir()
    (out.parent / "r-filters.png").write_bytes(unmarked.getvalue())
    (out.parent / "r-timing.png").symlink_to(figure)
    files = write_report(metrics, out)
    assert files.removed == [] and list(files.left) == [out.parent / "r-filters.png", out.parent / "r-timing.png"]
    assert (out.parent / "r-filters.png").read_bytes() == unmarked.getvalue() and figure.is_file()
    assert (out.parent / "r-timing.png").resolve() == figure
    code, printed, _ = run_cli(capsys, "report", str(metrics), "--out", str(out))
    assert code == 0 and printed.splitlines()[2:] == [
        f"left {out.parent / 'r-filters.png'}: not this report's figure; it holds no mark of convlab's (an older "
        "convlab's figure, or another program's file): remove it if it is an earlier report's",
        f"left {out.parent / 'r-timing.png'}: not this report's figure; a symbolic link, which convlab does not "
        "remove"]


def test_a_file_put_at_a_figure_name_while_it_is_read_is_left(metrics, checkpoint, tmp_path, monkeypatch):
    """The marked figure read, the user's file renamed onto its name (or a symlink put there)
    before the removal: what is there now is not the file that was read, and stays."""
    import convlab.report

    out = tmp_path / "r.pdf"
    write_report(checkpoint, out)
    figure = tmp_path / "r-filters.png"
    kept = tmp_path / "kept.png"
    kept.write_bytes(figure.read_bytes())  # marked too: convlab's, but not at that name
    users_png = b"\x89PNG\r\n\x1a\n" + b"the user's work"
    read = has_mark

    def replaced_meanwhile(file):
        marked = read(file)
        mine = tmp_path / "mine"
        mine.write_bytes(users_png)
        os.replace(mine, figure)
        return marked

    monkeypatch.setattr(convlab.report, "has_mark", replaced_meanwhile)
    files = write_report(metrics, out)
    assert files.removed == [] and files.left == {figure: "it was replaced while convlab read it"}
    assert figure.read_bytes() == users_png
    # The file looked at, the one read and the one removed must be one: the user's file moved
    # aside while a marked figure is opened in its place, then moved back, stays.
    monkeypatch.undo()
    real_open = os.open

    def swapped_while_opened(name, *args, **kwargs):
        if os.fspath(name) != str(figure):
            return real_open(name, *args, **kwargs)
        os.replace(figure, tmp_path / "aside")
        shutil.copyfile(kept, figure)
        try:
            return real_open(name, *args, **kwargs)
        finally:
            os.replace(tmp_path / "aside", figure)

    monkeypatch.setattr(os, "open", swapped_while_opened)
    files = write_report(metrics, out)
    monkeypatch.undo()
    assert files.removed == [] and list(files.left) == [figure]
    assert figure.read_bytes() == users_png


def test_an_earlier_figure_that_cannot_be_removed_is_said_and_the_report_stands(
        metrics, checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "r.pdf"
    write_report(checkpoint, out)

    def refuse(path, missing_ok=False):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(Path, "unlink", refuse)
    files = write_report(metrics, out)
    assert [p.name for p in files.written] == ["r.pdf", "r-curves.png"] and files.removed == []
    assert files.left == {tmp_path / "r-filters.png": "it could not be read or removed (Permission denied)"}


def test_a_real_run_reads_the_same_from_its_metrics_and_its_checkpoint(tmp_path):
    metrics, checkpoint = tmp_path / "m.json", tmp_path / "ck.h5"
    with contextlib.redirect_stdout(io.StringIO()):
        main(["train", "--train-size", "128", "--test-size", "40", "--epochs", "1", "--progress", "False",
              "--metrics-out", str(metrics), "--checkpoint", str(checkpoint)])
    from_metrics, from_checkpoint = load_run(metrics), load_run(checkpoint)
    model = from_checkpoint.model
    assert summary_paragraph(from_metrics, model) == summary_paragraph(from_checkpoint, model)
    assert "on 40 MNIST test images after 1 epoch of training on 128 training images" in \
        summary_paragraph(from_metrics, model)


def test_reads_what_convlab_bench_writes(tmp_path):
    path = tmp_path / "bench.json"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(["bench", "--kernel-sizes", "3", "--batch-size", "1", "--image-size", "6", "--out-channels", "1",
              "--repeat", "1", "--mnist-layer", "False", "--passes", "forward", "--json", str(path)])
    cells = timing_rows(read_bench(path))
    assert {"im2col", "naive"} <= {backend for _, _, backend, _, _ in cells}
    assert cells[0][4] == "1.0×"

