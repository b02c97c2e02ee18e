"""``convlab report``: a PDF about one training run, and its figures as PNG.

From a metrics file (``convlab train --metrics-out``) or a checkpoint (``--checkpoint``):
a page with the paragraph the assignment asks for (test accuracy, the network, the backend
and how that backend computes the convolution, taken from the backend module's own
docstring so that every backend describes itself), the training curves, the learned
convolution filters (a checkpoint holds the weights; a metrics file does not), and, given
a ``convlab bench --json`` result, the timing table.

Everything is rendered in memory first and then written atomically, so an error leaves
no file half-written and no stale figure beside a new PDF. A figure this report does not
draw (the filters, from a metrics file) that an earlier report wrote under its name is
removed once the new files are written: left, it would pass for this run's. Only what
carries convlab's mark (:data:`PNG_MARK`) goes; anything else there is left and said so.
"""

from __future__ import annotations

import inspect
import io
import math
import numbers
import os
import re
import stat
import struct
import sys
import textwrap
from dataclasses import dataclass, fields
from pathlib import Path

import h5py
import matplotlib.image
import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from convlab.checkpoints import epoch_ranges, layer_times_problem, rows_problem, setting_problem, tuners_resolved
from convlab.checks import is_number
from convlab.files import (PNG_SIGNATURE, atomic_paths, check_outputs, check_suffix, check_writable, is_special,
                           parse_json, sole_writer)
from convlab.layers import AvgPool2D, Conv2D, Dense, MaxPool2D, ReLU
from convlab.models import DEFAULT_MODEL, INPUT_SHAPE
from convlab.registry import get_backend
from convlab.training import EpochMetrics

PAGE = (8.27, 11.69)  # A4 portrait, inches
MARGIN = 0.8  # inches
DATASET_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
# What SOURCE may be: what a report is made from, named in every refusal of one.
SOURCE_HINT = ("`convlab report` reads a checkpoint (`convlab train --checkpoint PATH`, HDF5) or a metrics file "
               "(the JSON `convlab train --metrics-out PATH` writes)")
TIMING_TITLE = "convlab bench: time per call (ratios are within one run)"
TIMING_COLUMNS = ["shape", "pass", "backend", "ms", "vs fastest"]
# A timing row of a bench result, as the report uses it (ms and ratios of "seconds").
BENCH_FIELDS = (*((key, lambda v: isinstance(v, str), "text") for key in ("shape", "backend", "pass")),
                ("seconds", lambda v: is_number(v, above=True), "a positive number of seconds"))
BENCH_HINT = 'expected the JSON written by `convlab bench --json PATH`: {"rows": [{"shape", "backend", "pass", "seconds"}]}'


class ReportError(ValueError):
    """An input to the report that cannot be used."""


@dataclass
class Run:
    """What the report says about one training run.

    ``settings`` holds whatever of dataset, lr, momentum, batch_size, seed, train_size and
    test_size the source recorded; ``model`` is the trained network (checkpoints only);
    ``backends`` the backend that computed each epoch of ``history`` (None where the source
    does not say: files written before convlab recorded it know only the last one).
    """

    source: Path
    backend: str
    history: list[EpochMetrics]
    settings: dict
    model: object = None
    backends: list = None  # per epoch: the --backend it was computed with, if recorded
    layer_times: list = None  # per layer: {"layer", "backend", "forward_ms", "backward_ms"}, if recorded

    def __post_init__(self):
        if self.backends is None:
            self.backends = [None] * (len(self.history) - 1) + [self.backend]
        self.backends = tuners_resolved(self.backends, self.settings)

    @property
    def test_accuracy(self) -> float:
        return self.history[-1].test_accuracy

    @property
    def layer_backends(self) -> list[str]:
        """The backend each conv layer ran on (auto's picks resolved, if recorded)."""
        return str(self.settings.get("backends") or self.backend).split(",")


def load_run(path) -> Run:
    """A :class:`Run` from a checkpoint (HDF5) or a metrics file (JSON)."""
    if not str(path).strip():  # Path("") is ".", which is no help in the message
        raise ReportError(f"SOURCE is empty ({str(path)!r}); {SOURCE_HINT}")
    path = Path(str(path))
    if not path.is_file():
        raise ReportError(f"{path} does not exist or is not a file; {SOURCE_HINT}")
    if h5py.is_hdf5(path):
        from convlab.inference import load_model  # the checkpoint format lives there

        model, checkpoint = load_model(path)
        return Run(path, checkpoint.settings["backend"], checkpoint.history, checkpoint.settings, model,
                   checkpoint.backends, checkpoint.layer_times)
    return read_metrics(path)


def read_json(path: Path, hint: str, binary="not JSON"):
    """The JSON in ``path``; a :class:`ReportError` ending in ``hint`` (what the file should
    be) otherwise. A file that is not text (a PNG, an .npz given by mistake) is ``binary``
    (what it is not), not the decoder's byte position, which tells the user nothing."""
    try:
        return parse_json(path.read_text())
    except UnicodeDecodeError:
        raise ReportError(f"{path}: is a binary file, {binary}; {hint}") from None
    except (OSError, ValueError) as e:  # ValueError: json's own, or parse_json's "nested too deeply"
        raise ReportError(f"{path}: cannot read it as JSON ({e}); {hint}") from None


def read_metrics(path: Path) -> Run:
    """A run from a metrics file: {"backend", "test_accuracy", "settings", "epochs": [...]};
    "settings" (dataset, lr, momentum, batch_size, seed, train_size, test_size, ...) may be
    missing from older files, and then the paragraph leaves out what it does not know."""
    doc = read_json(path, SOURCE_HINT, binary="neither HDF5 nor JSON")
    names = [f.name for f in fields(EpochMetrics)]
    epochs = doc.get("epochs") if isinstance(doc, dict) else None
    if not isinstance(epochs, list) or not all(isinstance(epoch, dict) for epoch in epochs):
        raise ReportError(f'{path}: has no "epochs" list of objects; {SOURCE_HINT}')
    if not isinstance(doc.get("settings") or {}, dict):
        raise ReportError(f'{path}: its "settings" is not an object; {SOURCE_HINT}')
    try:
        history = [EpochMetrics(**{name: epoch[name] for name in names}) for epoch in epochs]
        backend = doc["backend"]
    except KeyError as e:
        raise ReportError(f"{path}: missing {e}; {SOURCE_HINT}") from None
    backends = [epoch["backend"] for epoch in epochs] if all("backend" in epoch for epoch in epochs) else None
    settings = dict({"dataset": "mnist"}, **(doc.get("settings") or {}))
    for key, value in settings.items():  # those the report uses: as a checkpoint's attributes are checked
        if problem := setting_problem(key, value):
            raise ReportError(f'{path}: its "settings" field "{key}" {problem}; {SOURCE_HINT}')
    layer_times = doc.get("layer_times")
    if layer_times is not None and (problem := layer_times_problem(layer_times)):
        raise ReportError(f'{path}: its "layer_times" {problem}; {SOURCE_HINT}')
    valid = isinstance(backend, str) and history and all(
        isinstance(getattr(m, name), numbers.Real) and math.isfinite(getattr(m, name)) for m in history for name in names)
    if not valid or not all(isinstance(b, (str, type(None))) for b in backends or ()):
        raise ReportError(f"{path}: needs a backend name and at least one epoch of finite numbers "
                          f"({', '.join(names)}); {SOURCE_HINT}")
    return Run(path, backend, history, settings, backends=backends, layer_times=layer_times)


def read_bench(path) -> list[dict]:
    """The rows of a ``convlab bench --json`` file, each with shape, backend, pass, seconds."""
    if not str(path).strip():  # Path("") is ".", read as a folder: "Is a directory: '.'"
        raise ReportError(f"--bench is empty ({str(path)!r}); give the file `convlab bench --json PATH` wrote, "
                          "such as bench.json")
    path = Path(str(path))
    if is_special(path):  # not opened: a FIFO's read waits for a writer, for ever (missing, a folder: the read says)
        raise ReportError(f"--bench {path} is not a regular file (a FIFO, a device or a socket); {BENCH_HINT}")
    doc = read_json(path, BENCH_HINT)
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ReportError(f"{path}: no usable timing rows (each needs a positive number of seconds); {BENCH_HINT}")
    if problem := rows_problem(rows, BENCH_FIELDS):
        raise ReportError(f'{path}: its "rows" {problem}; {BENCH_HINT}')
    return rows


# --- text -------------------------------------------------------------------------------


def plain(text: str) -> str:
    """reStructuredText inline markup (``code``, :func:`name`, *emphasis*) as plain text."""
    text = re.sub(r"``(.+?)``", r"\1", text)
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"(?<![\w*])\*([A-Za-z][A-Za-z ]*[A-Za-z])\*(?![\w*])", r"\1", text)


def backend_explanation(name: str) -> tuple[str, list[tuple[str, str]]]:
    """(one-line description, docstring blocks) of backend ``name``, from its module's
    docstring; blocks are ("para", text) or ("code", text)."""
    try:
        backend = get_backend(name)
    except ValueError:
        return ("", [("para", f"The \u201c{name}\u201d backend is not installed where this report was made, "
                              "so it cannot describe itself here.")])
    module = sys.modules.get(type(backend.impl).__module__)
    doc = inspect.cleandoc((module and module.__doc__) or backend.impl.__doc__ or backend.description)
    blocks = []
    for chunk in re.split(r"\n\s*\n", doc):
        if chunk.startswith(" "):
            blocks.append(("code", textwrap.dedent(chunk)))
        else:
            blocks.append(("para", plain(re.sub(r"::$", ":", " ".join(chunk.split())))))
    return plain(backend.description), blocks


def describe_network(model) -> str:
    """The layer chain as one line, e.g. "input 1×28×28 → conv 32 filters 7×7 ... → dense 18432 → 10"."""
    parts = ["input " + "×".join(map(str, INPUT_SHAPE))]
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            f, c, kh, kw = layer.params["w"].shape
            parts.append(f"conv {f} filters {kh}×{kw}, stride {pair(layer.stride)}, padding {pair(layer.padding)}")
        elif isinstance(layer, ReLU):
            parts.append("ReLU")
        elif isinstance(layer, (MaxPool2D, AvgPool2D)):
            kind = "max-pool" if isinstance(layer, MaxPool2D) else "average-pool"
            padding = f", padding {pair(layer.padding)}" if any(layer.padding) else ""
            parts.append(f"{kind} {pair(layer.kernel_size)}, stride {pair(layer.stride)}{padding}")
        elif isinstance(layer, Dense):
            parts.append("dense {} → {}".format(*layer.params["w"].shape))
    n_params = sum(p.size for _, p, _ in model.named_parameters())
    return " → ".join(parts) + f" → softmax cross-entropy ({n_params:,} parameters)"


def network_name(run: Run) -> str:
    """" (lenet5)" for a run of a network other than the reference one, else ""."""
    model = run.settings.get("model", DEFAULT_MODEL)
    return "" if model == DEFAULT_MODEL else f" ({model})"


def pair(values) -> str:
    return str(values[0]) if values[0] == values[1] else f"{values[0]}×{values[1]}"


def dataset_title(run: Run) -> str:
    name = run.settings.get("dataset", "mnist")
    return DATASET_TITLES.get(name, name)


def summary_paragraph(run: Run, model) -> str:
    """The assignment's paragraph: test accuracy, the network, training, the backend."""
    s = run.settings
    test_set = f"{s['test_size']:,} {dataset_title(run)} test images" if "test_size" in s else \
        f"the {dataset_title(run)} test set"
    n_train = f" on {s['train_size']:,} training images" if "train_size" in s else ""
    epochs = len(run.history)
    text = (f"The network reached a test accuracy of {run.test_accuracy:.2%} on {test_set} "
            f"after {epochs} epoch{'s' * (epochs != 1)} of training{n_train}. "
            f"Network{network_name(run)}: {describe_network(model)}. ")
    if {"lr", "momentum", "batch_size", "seed"} <= set(s):
        schedule = f" ({s['lr_schedule']} schedule by epoch)" if "lr_schedule" in s else ""
        text += (f"Training: SGD with learning rate {s['lr']}{schedule}, momentum {s['momentum']}, "
                 f"minibatches of {s['batch_size']}, seed {s['seed']}. ")
    return text + ("The layers, the loss, the optimizer and every convolution backend are our own code "
                   "(NumPy; no PyTorch, no SciPy convolution). " + backends_sentence(run))


def names_in(records) -> list[str]:
    """The backend names in ``records`` (each one name, "fft,winograd", or None), each once, in order."""
    return list(dict.fromkeys(name for record in records if record for name in record.split(",")))


def ran_on(names: str) -> str:
    """One epoch's record of its backends ("im2col", or one per conv layer, "fft,winograd")
    in words, after "computed": "by the “im2col” backend", "per layer (conv layer 1 by …)"."""
    layers = names.split(",")
    if len(set(layers)) == 1:
        return f"by the \u201c{layers[0]}\u201d backend"
    return "per layer (" + ", ".join(f"conv layer {i} by \u201c{name}\u201d" for i, name in enumerate(layers, 1)) + ")"


def backends_sentence(run: Run) -> str:
    """Which backend computed the convolutions (forward and backward), per layer where they
    differ, in which epochs, and what each one is; epochs whose backend the source did not
    record are said to be so. A backend picked by ``auto`` is named, and said to be picked."""
    def epochs(first, last):
        return f"epoch {first}" if first == last else f"epochs {first}\u2013{last}"

    layers = run.layer_backends
    ranges = epoch_ranges(run.backends)
    what = "convolution" if len(layers) == 1 else "convolutions"
    verb = "was" if len(layers) == 1 else "were"
    if len(ranges) == 1:
        tuners = [name for name in dict.fromkeys(run.backend.split(",")) if name not in layers]
        picked = (f" ({'picked' if len(layers) == 1 else 'picked per layer'} by \u201c{', '.join(tuners)}\u201d)"
                  if tuners else "")
        text = f"The {what}, forward and backward, {verb} computed {ran_on(','.join(layers))}{picked}"
    elif len(ranges) == 2 and ranges[0][0] is None:
        text = (f"The {what}, forward and backward, {verb} computed {ran_on(ranges[1][0])} in the last epoch; "
                f"this file, from an older convlab, does not record which backend computed "
                f"{epochs(ranges[0][1], ranges[0][2])} (a resumed run may change it)")
    else:
        parts = [f"{epochs(first, last)} {ran_on(name)}" if name is not None else
                 f"{epochs(first, last)} by a backend the file does not record (it was written by an older convlab)"
                 for name, first, last in ranges]
        text = (f"The run was resumed with another backend: the {what}, forward and backward, {verb} computed in "
                + ", ".join(parts[:-1]) + " and in " + parts[-1])
    descriptions = [f"{name}: {description.rstrip('.')}" for name in names_in([*run.backends, ",".join(layers)])
                    for description in [backend_explanation(name)[0]] if description]
    return text + "." + (" " + "; ".join(descriptions) + "." if descriptions else "")


# --- pages and figures -----------------------------------------------------------------


class Pages:
    """Text and figures laid out top to bottom on A4 pages, a new page when one is full."""

    STYLES = {  # name: (font size pt, family, weight, characters per line or None: no wrapping)
        "title": (18, "sans-serif", "bold", 60),
        "heading": (12.5, "sans-serif", "bold", 80),
        "para": (10, "sans-serif", "normal", 92),
        "note": (9, "sans-serif", "normal", 104),
        "code": (8, "monospace", "normal", None),
    }

    def __init__(self):
        self.pages: list[Figure] = []
        self.y = 0.0

    def add(self, style: str, text: str):
        size, family, weight, width = self.STYLES[style]
        lines = text.splitlines() if width is None else textwrap.wrap(text, width)
        step = size * 1.45 / 72  # inches per line
        for line in lines:
            self.make_room(step)
            self.y += step
            self.pages[-1].text(MARGIN / PAGE[0], 1 - self.y / PAGE[1], line, fontsize=size,
                                family=family, weight=weight, va="baseline")
        self.y += step * 0.6  # space after a block

    def add_figure(self, heading: str, png: bytes):
        """A heading and a figure (as its PNG, across the text width), on one page."""
        image = matplotlib.image.imread(io.BytesIO(png))
        width = PAGE[0] - 2 * MARGIN
        height = width * image.shape[0] / image.shape[1]
        self.make_room(height + 0.5)
        self.add("heading", heading)
        ax = self.pages[-1].add_axes([MARGIN / PAGE[0], 1 - (self.y + height) / PAGE[1],
                                      width / PAGE[0], height / PAGE[1]])
        ax.imshow(image, interpolation="lanczos")
        ax.set_axis_off()
        self.y += height + 0.25

    def make_room(self, height: float):
        """Start a new page unless ``height`` inches still fit on this one."""
        if not self.pages or self.y + height > PAGE[1] - MARGIN:
            self.pages.append(Figure(figsize=PAGE))
            self.y = MARGIN


def curves_figure(history: list[EpochMetrics]) -> Figure:
    """Loss, and train and test accuracy, per epoch."""
    epochs = [m.epoch for m in history]
    fig = Figure(figsize=(8, 3.4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [m.train_loss for m in history], "o-", color="tab:red")
    loss_ax.set(title="training loss", xlabel="epoch", ylabel="mean cross-entropy")
    acc_ax.plot(epochs, [m.train_accuracy for m in history], "o-", label="train (during the epoch)")
    acc_ax.plot(epochs, [m.test_accuracy for m in history], "s-", label="test (after it)")
    acc_ax.set(title="accuracy", xlabel="epoch", ylabel="fraction correct")
    acc_ax.legend()
    for ax in (loss_ax, acc_ax):
        # Whole epochs, with half an epoch of room either side (one epoch is one point).
        ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    if len(history) == 1:  # a single point: against the whole range, not a sliver around it
        loss_ax.set_ylim(0, 1.25 * history[0].train_loss or 1)
        acc_ax.set_ylim(0, 1.02)
    return fig


def filters_figure(weights: np.ndarray) -> Figure:
    """Filters (F, C, kh, kw) as one mosaic of their input channel 0, 8 to a row, on one
    colour scale symmetric about 0 so that a weight's sign reads the same in every filter."""
    f, c, kh, kw = weights.shape
    cols = min(8, f)
    rows = -(-f // cols)
    # One image with a blank (NaN) line between filters: far quicker to draw than an axes each.
    mosaic = np.full((rows * (kh + 1) - 1, cols * (kw + 1) - 1), np.nan)
    for i in range(f):
        r, q = divmod(i, cols)
        mosaic[r * (kh + 1):r * (kh + 1) + kh, q * (kw + 1):q * (kw + 1) + kw] = weights[i, 0]
    limit = float(np.abs(weights[:, 0]).max()) or 1.0
    fig = Figure(figsize=(8, 6.8 * mosaic.shape[0] / mosaic.shape[1] + 0.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(mosaic, cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_axis_off()
    channel_note = " (input channel 0)" if c > 1 else ""
    ax.set_title(f"the {f} learned {kh}×{kw} convolution filters{channel_note}, row by row", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label="weight")
    return fig


def timing_rows(rows: list[dict]) -> list[list[str]]:
    """Table cells: shape, pass, backend, milliseconds, and the time relative to the fastest
    backend on the same shape and pass (sorted fastest first)."""
    key = lambda r: (str(r["shape"]), r["pass"])  # noqa: E731
    fastest = {}
    for r in rows:
        fastest[key(r)] = min(fastest.get(key(r), math.inf), r["seconds"])
    ordered = sorted(rows, key=lambda r: (key(r), r["seconds"]))
    return [[str(r["shape"]), r["pass"], r["backend"], f"{r['seconds'] * 1e3:.2f}",
             f"{r['seconds'] / fastest[key(r)]:.1f}×"] for r in ordered]


def table_figure(cells, labels, widths, title, fontsize=8) -> Figure:
    """A figure holding one table: rows of ``cells`` under the column ``labels``."""
    fig = Figure(figsize=(8, 0.5 + 0.25 * (len(cells) + 1)))
    ax = fig.subplots()
    ax.set_axis_off()
    table = ax.table(cellText=cells, colLabels=labels, loc="upper center", cellLoc="left", colWidths=widths)
    table.auto_set_font_size(False)
    table.set_fontsize(fontsize)
    table.scale(1, 1.25)
    ax.set_title(title, fontsize=10)
    return fig


def timing_figure(rows: list[dict]) -> Figure:
    return table_figure(timing_rows(rows), TIMING_COLUMNS, [0.40, 0.2, 0.13, 0.12, 0.13], TIMING_TITLE)


def layer_time_figure(rows: list[dict]) -> Figure:
    """The per-layer table: each layer's mean forward and backward time per training batch."""
    total = sum(r["forward_ms"] + r["backward_ms"] for r in rows) or 1.0
    cells = [[r["layer"], r["backend"] or "", f"{r['forward_ms']:.2f}", f"{r['backward_ms']:.2f}",
              f"{(r['forward_ms'] + r['backward_ms']) / total:.0%}"] for r in rows]
    return table_figure(cells, ["layer", "backend", "forward ms", "backward ms", "share"],
                        [0.6, 0.1, 0.11, 0.12, 0.07],
                        "time per training batch by layer (mean over the last epoch trained)", fontsize=7.5)


def timing_text(rows: list[dict]) -> str:
    """The timing table as aligned lines of text."""
    table = [TIMING_COLUMNS] + timing_rows(rows)
    widths = [max(len(row[i]) for row in table) for i in range(len(TIMING_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) if i < 3 else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in table)


# The PNG text chunk (key, value) every figure carries, by which a later report to the same
# --out knows a figure there as convlab's, to remove when it does not draw it again. A
# constant, not matplotlib's default "Software: Matplotlib version ...": the same run gives
# the same bytes.
PNG_MARK = ("Software", "convlab report")


def figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150, metadata=dict([PNG_MARK]))
    return buffer.getvalue()


def has_mark(file) -> bool:
    """Whether ``file`` (open for reading, binary, at its start) is a PNG holding
    :data:`PNG_MARK`: a tEXt chunk, which matplotlib writes before the image data, so only
    the chunk headers up to the first IDAT are read (each chunk: an 8-byte header, length
    and type, its data and a 4-byte CRC), and only the data of a tEXt chunk as long as the
    mark. An open file, not a path: what is removed must be the very file that was read."""
    wanted = "\0".join(PNG_MARK).encode("latin-1")
    if file.read(8) != PNG_SIGNATURE:
        return False
    while len(header := file.read(8)) == 8:
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IDAT":
            return False
        if kind == b"tEXt" and length == len(wanted):
            if file.read(length) == wanted:
                return True
        else:
            file.seek(length, os.SEEK_CUR)
        file.seek(4, os.SEEK_CUR)
    return False


# The figures a report may write beside its PDF (see figure_path).
FIGURES = ("curves", "layers", "filters", "timing")


def figure_path(out: Path, name: str) -> Path:
    """Where the report at ``out`` writes its figure ``name`` (one of :data:`FIGURES`):
    ``<stem>-<name>.png`` beside it."""
    return out.with_name(f"{out.stem}-{name}.png")


@dataclass
class ReportFiles:
    """What :func:`write_report` did beside ``--out``."""

    written: list[Path]  # the PDF first, then the figures this report drew
    removed: list[Path]  # an earlier report's figures this one does not draw
    left: dict[Path, str]  # other files at those figure names: why each stays


def write_report(source, out="report.pdf", bench=None) -> ReportFiles:
    """Write the PDF report of the run in ``source`` (metrics JSON or checkpoint) to ``out``,
    and beside it ``<stem>-curves.png``, ``<stem>-filters.png`` (checkpoints only) and
    ``<stem>-layers.png`` (runs that recorded per-layer times), ``<stem>-timing.png``
    (with ``bench``); then remove, from the figure names it does not draw, what an earlier
    report wrote there (:func:`remove_earlier_figures`), as the last step: a report that
    fails removes nothing."""
    out = check_suffix(check_writable(out, "--out"), "--out", ".pdf", "a PDF")
    # Labelled by what they are, not by their name: a refusal names the path after the label
    # ("--out's layers figure r-layers.png exists and ...").
    figures = {f"--out's {name} figure": figure_path(out, name) for name in FIGURES}
    check_outputs({"--out": out, **figures}, {"SOURCE": source, "--bench": bench})
    # Claimed from now to the last write, every figure name too (another report, from a
    # checkpoint, may be writing the filters this one does not draw): two reports to one
    # --out would otherwise leave one's PDF beside the other's figures.
    with sole_writer({"--out": out, **figures}):
        outputs = rendered_report(source, out, bench)
        # Every file is written to its temporary name and synced to the disk before any is
        # renamed into place (atomic_paths; the PDF last): a full disk at a figure, even one
        # only the sync reports (delayed allocation), leaves the earlier report whole, where
        # one file at a time left the new PDF beside none of its figures, or beside the
        # earlier ones. (A rename refused leaves the PDF as it was too.)
        files = [*(path for path in outputs if path != out), out]
        writing = None
        try:
            with atomic_paths(*files) as temporaries:
                for writing, tmp in zip(files, temporaries):
                    tmp.write_bytes(outputs[writing])
                writing = None
        except OSError as e:  # a write (of `writing`), or a sync or rename (of e.filename)
            raise ReportError(f"cannot write {writing or e.filename}: {e.strerror or e}") from None
        # Within the claim: no other report is writing these names meanwhile.
        removed, left = remove_earlier_figures(path for path in figures.values()
                                               if path not in outputs and os.path.lexists(path))
    return ReportFiles(list(outputs), removed, left)


def remove_earlier_figures(paths) -> tuple[list[Path], dict[Path, str]]:
    """Remove each of ``paths`` (figure names beside ``--out`` this report does not draw)
    that an earlier report wrote, a file with :data:`PNG_MARK`. Anything else there is
    left: a symlink (convlab writes through links, never makes one), a figure of a
    convlab that did not mark them yet, a PNG of the user's. Returns (removed, {left: why}).

    Only a regular file is opened (not a FIFO or a device), without following a symlink,
    and removed only if the file looked at, the file read and the file at the name just
    before the unlink are one (device and inode): a file put there meanwhile (another
    program's, a symlink) is left, not taken for the marked one. (POSIX has no
    unlink-if-unchanged: a replacement in the microseconds between that last look and the
    unlink is the one case left open.)"""
    removed, left = [], {}
    for path in paths:
        try:
            seen = os.lstat(path)
            if stat.S_ISLNK(seen.st_mode):
                left[path] = "a symbolic link, which convlab does not remove"
                continue
            marked = False
            if stat.S_ISREG(seen.st_mode):
                with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as file:
                    marked = os.path.samestat(os.fstat(file.fileno()), seen) and has_mark(file)
            if not marked:
                left[path] = ("it holds no mark of convlab's (an older convlab's figure, or another program's "
                              "file): remove it if it is an earlier report's")
            elif not os.path.samestat(os.lstat(path), seen):
                left[path] = "it was replaced while convlab read it"
            else:
                path.unlink()
                removed.append(path)
        except OSError as e:
            left[path] = f"it could not be read or removed ({e.strerror or e})"
    return removed, left


def rendered_report(source, out: Path, bench=None) -> dict[Path, bytes]:
    """The report :func:`write_report` writes, rendered in memory: {path: content}, the PDF
    at ``out`` first, then the PNGs beside it."""
    run = load_run(source)
    timings = read_bench(bench) if bench is not None else None
    model = run.model
    if model is None:  # a metrics file names the network (older ones: the reference network)
        from convlab.models import get_model

        try:
            # Only described (layers, parameter count): a spec's weights are not made (GBs for a big one).
            model = get_model(run.settings.get("model", DEFAULT_MODEL)).shape_only()
        except ValueError as e:  # a name not installed here, a spec that does not build: the file's
            raise ReportError(f'{run.source}: its "settings" field "model" names no network convlab can build '
                              f"({e})") from None

    pages = Pages()
    # The backends each epoch was computed with, each conv layer's (auto's picks resolved), and
    # the one asked for (auto, which picked them).
    used = names_in([*run.backends, ",".join(run.layer_backends), run.backend])
    pages.add("title", f"convlab report: {dataset_title(run)}{network_name(run)}, {', '.join(used)}, "
                       f"{len(run.history)} epoch{'s' * (len(run.history) != 1)}")
    pages.add("note", f"from {run.source}")
    pages.add("para", summary_paragraph(run, model))
    for name in used:
        pages.add("heading", f"How the \u201c{name}\u201d backend computes the convolution")
        for kind, block in backend_explanation(name)[1]:
            pages.add(kind, block)

    pngs = {}

    def section(heading, name, fig):
        pngs[figure_path(out, name)] = png = figure_png(fig)
        pages.add_figure(heading, png)

    section("Training curves", "curves", curves_figure(run.history))
    if run.layer_times:
        section("Time per layer", "layers", layer_time_figure(run.layer_times))
    if run.model is not None:
        section("Learned filters", "filters", filters_figure(run.model.conv_layers()[0].params["w"]))
    else:
        pages.add("heading", "Learned filters")
        pages.add("para", f"Not shown: {run.source.name} is a metrics file, which holds no weights. Run "
                          "`convlab report` on a checkpoint (`convlab train --checkpoint PATH`) to see them.")
    if timings is not None:  # as text in the PDF (selectable, searchable), as an image beside it
        pngs[figure_path(out, "timing")] = figure_png(timing_figure(timings))
        pages.add("heading", "Timing")
        pages.add("note", TIMING_TITLE)
        pages.add("code", timing_text(timings))

    pdf = io.BytesIO()
    with PdfPages(pdf, metadata={"Title": "convlab report", "CreationDate": None}) as document:
        for page in pages.pages:
            document.savefig(page)
    return {out: pdf.getvalue(), **pngs}
