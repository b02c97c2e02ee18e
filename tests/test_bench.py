"""`convlab bench`: the timing table, its JSON and plot files, and its argument errors."""

import json
import time
import warnings

import pytest

import convlab.bench as bench
from convlab import registry
from convlab.cli import main
from convlab.timing import ConvShape, interleaved_best, strategies
from tests.conftest import file_size_limit
from tests.test_cli import run_cli

TINY = ["--kernel-sizes", "3,5", "--batch-size", "2", "--image-size", "8", "--out-channels", "2",
        "--repeat", "1"]


def test_interleaved_best_takes_the_runs_in_turns_after_a_warm_up_each():
    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "ab"}
    best = interleaved_best(runs, repeat=3)
    assert calls == ["a", "b"] * 4  # one warm-up each, then three rounds of one call each
    assert set(best) == {"a", "b"} and all(0 <= t < 0.1 for t in best.values())


def test_interleaved_best_stops_a_run_over_its_time_budget_after_one_timed_call():
    calls = []
    runs = {"slow": lambda: (calls.append("slow"), time.sleep(0.02)), "quick": lambda: calls.append("quick")}
    interleaved_best(runs, repeat=4, max_seconds=0.01)
    assert calls.count("slow") == 2 and calls.count("quick") == 5


def test_a_run_far_slower_than_the_fastest_after_two_rounds_is_not_run_again():
    calls = []
    runs = {"slow": lambda: (calls.append("slow"), time.sleep(0.02)), "quick": lambda: calls.append("quick")}
    best = interleaved_best(runs, repeat=4, lost_factor=4)
    assert calls.count("slow") == 3 and calls.count("quick") == 5  # warm-up, two timed calls
    assert best["slow"] >= 0.02


def test_a_slow_warm_up_alone_does_not_lose_the_race():
    """The first calls carry one-time costs (planning, page faults): a run is judged on
    its two first timed calls, not on its warm-up or its first timed call alone."""
    durations = {"planned": iter([0.05, 0.05, 0.0, 0.0]), "rival": iter([0.0, 0.001, 0.001, 0.001])}
    runs = {name: (lambda name=name: time.sleep(next(durations[name]))) for name in durations}
    best = interleaved_best(runs, repeat=3, lost_factor=4)
    assert best["planned"] < 0.01


def test_a_run_that_raises_is_left_out_when_errors_are_handled():
    def broken():
        raise RuntimeError("no")

    errors = []
    best = interleaved_best({"ok": lambda: None, "broken": broken}, repeat=2,
                            on_error=lambda key, error: errors.append((key, str(error))))
    assert list(best) == ["ok"] and errors == [("broken", "no")]
    with pytest.raises(RuntimeError, match="no"):
        interleaved_best({"broken": broken})


def test_run_bench_times_every_strategy_and_shows_the_tuners_pick():
    shapes = bench.kernel_sweep([3, 5], n=2, c=1, f=2, size=8)
    result = bench.run_bench(shapes, repeat=1)
    assert {(r["shape"], r["backend"], r["pass"]) for r in result.rows} == {
        (s.label, b, p) for s in shapes for b in strategies() for p in bench.PASSES}
    assert all(r["seconds"] > 0 for r in result.rows)
    assert [(p["shape"], p["tuner"]) for p in result.picks] == [(s.label, "auto") for s in shapes]
    assert all(p["backend"] in strategies() for p in result.picks)
    table = bench.format_table(result, shapes)
    assert "forward+backward: milliseconds" in table and "(1.00x)" in table and "auto picks" in table


def test_oracle_is_skipped_on_big_shapes_unless_asked_for(monkeypatch):
    monkeypatch.setattr(bench, "ORACLE_MAX_MACS", 0)
    shape = ConvShape(n=1, c=1, f=1, size=6, k=3, padding=1)
    assert bench.run_bench([shape], passes=["forward"], repeat=1).skipped == [(shape.label, "naive")]
    asked = bench.run_bench([shape], ["naive"], ["forward"], repeat=1)
    assert not asked.skipped and [r["backend"] for r in asked.rows] == ["naive"]


def test_cli_writes_json_and_plot(tmp_path, capsys):
    out_json, out_png = tmp_path / "out" / "bench.json", tmp_path / "crossover.png"
    main(["bench", *TINY, "--backends", "im2col,naive", "--json", str(out_json), "--plot", str(out_png)])
    printed = capsys.readouterr().out
    assert "2x1->32 28x28 k7 p1" in printed and "2x1->2 8x8 k5 p2" in printed
    assert printed.startswith("on ") and "cores; numpy" in printed.splitlines()[0]  # the machine it ran on
    rows = json.loads(out_json.read_text())["rows"]
    assert {tuple(sorted(r)) for r in rows} == {("backend", "pass", "seconds", "shape")}
    assert len(rows) == 3 * 2 * 2  # shapes x backends x passes
    assert out_png.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bench.json", "crossover.png", "out"]



def test_a_file_that_cannot_be_written_is_named_and_the_tables_are_still_printed(tmp_path, capsys):
    """A full disk at the plot (found on a real 2 MiB tmpfs) ended the bench with
    "convlab: error: [Errno 28] No space left on device", naming no file, and the timings were
    lost with it (the tables come after the files). Here a real file-size limit refuses the
    PNG (EFBIG, as ENOSPC an OSError from the write) but not the small JSON."""
    out_json, out_png = tmp_path / "b.json", tmp_path / "p.png"
    with file_size_limit(4096):
        code, out, err = run_cli(capsys, "bench", *TINY, "--backends", "im2col", "--mnist-layer", "no",
                                 "--passes", "forward", "--json", str(out_json), "--plot", str(out_png))
    assert code == 2 and err.endswith(f"convlab: error: cannot write --plot {out_png}: File too large "
                                      "(the results are the tables printed above)\n")
    assert "2x1->2 8x8 k5 p2" in out and f"wrote {out_json}" in out and "wrote " + str(out_png) not in out
    assert json.loads(out_json.read_text())["rows"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]


def test_accuracy_table_and_json_for_every_timed_backend(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    main(["bench", *TINY, "--backends", "im2col,winograd", "--mnist-layer", "no", "--passes", "forward",
          "--accuracy", "--json", str(out_json)])
    printed = capsys.readouterr().out
    assert "float32 error, max|got - ref| / max|ref| against float64" in printed
    accuracy = json.loads(out_json.read_text())["accuracy"]
    assert [(r["shape"], r["backend"]) for r in accuracy] == [
        (label, b) for label in ("2x1->2 8x8 k3 p1", "2x1->2 8x8 k5 p2") for b in ("im2col", "winograd")]
    assert all(0 <= r[o] < 1e-4 for r in accuracy for o in ("y", "dx", "dw"))


def test_many_channel_layers_join_the_shapes(monkeypatch, capsys):
    monkeypatch.setattr(bench, "MANY_CHANNEL_LAYERS", (ConvShape(n=2, c=3, f=4, size=6, k=3, padding=1),))
    result = bench.bench_command(["im2col"], [5], 2, 8, 1, 2, False, ["forward"], 1, many_channels=True)
    assert [r["shape"] for r in result.rows] == ["2x1->2 8x8 k5 p2", "2x3->4 6x6 k3 p1"]
    assert "accuracy" not in capsys.readouterr().out


def test_relative_error_and_a_direct_method_near_float32_rounding():
    import numpy as np

    from convlab.accuracy import float32_errors, relative_error

    assert relative_error(np.array([1.0, 2.5]), np.array([1.0, 2.0])) == 0.25
    assert relative_error(np.zeros(2), np.zeros(2)) == 0.0
    errors = float32_errors("naive", ConvShape(n=2, c=3, f=2, size=7, k=3, padding=1))
    assert set(errors) == {"y", "dx", "dw"} and all(0 <= e < 1e-6 for e in errors.values())


@pytest.mark.parametrize("args, message", [
    (["--backends", "nope"], "--backends: unknown backend 'nope' in 'nope' (give comma-separated names from: auto, "),
    (["--backends", "3"], "--backends: unknown backend '3' in '3' (give comma-separated names from: auto, "),
    # An unknown name was "--backends got nope; choose from: ...", unlike the list options'
    # other messages; now said as they are, naming the item and the value typed.
    (["--backends", "im2col, nope"], "--backends: unknown backend 'nope' in 'im2col, nope' (give comma-separated "
                                     "names from: auto, fft, fft-tiled, im2col, naive, winograd)\n"),
    (["--kernel-sizes", "3,0"], "--kernel-sizes must be positive whole numbers"),
    (["--kernel-sizes", "a"], "--kernel-sizes must be positive whole numbers"),
    (["--kernel-sizes", "3,x"], "--kernel-sizes must be positive whole numbers separated by commas, got 3,x\n"),
    (["--kernel-sizes", ""], "--kernel-sizes must be positive whole numbers separated by commas, got nothing\n"),
    (["--sweep", "image", "--image-sizes", "16,0"], "--image-sizes must be positive whole numbers separated by "
                                                    "commas, got 16,0\n"),
    (["--passes", "backward"], "--passes: unknown pass 'backward' in 'backward' (give comma-separated names from: "
                               "forward, forward+backward)\n"),
    (["--passes", "forward,foo"], "--passes: unknown pass 'foo' in 'forward,foo' (give comma-separated names from: "
                                  "forward, forward+backward)\n"),
    (["--passes", ","], "--passes got nothing (give comma-separated names from: forward, forward+backward)\n"),
    (["--backends", "im2col,,fft"], "--backends: empty name in 'im2col,,fft' (give comma-separated names from: "
                                    "auto, fft, "),
    (["--backends", "im2col,"], "--backends: empty name in 'im2col,' (give comma-separated names from: auto, "),
    (["--backends", ","], "--backends got nothing (give comma-separated names from: auto, "),  # was "got , ;"
    (["--passes", "forward,"], "--passes: empty name in 'forward,' (give comma-separated names from: forward, "
                               "forward+backward)\n"),
    (["--repeat", "0"], "--repeat must be a positive whole number"),
    (["--batch-size", "2.5"], "--batch-size must be a positive whole number"),
    (["--plot", "x.nope"], "--plot 'x.nope': the extension must be one of"),
    (["--mnist-layer", "maybe"], "--mnist-layer takes yes or no"),
    (["--accuracy", "maybe"], "--accuracy takes yes or no"),
    (["--many-channels", "maybe"], "--many-channels takes yes or no"),
    # Options that would change nothing in the run asked for.
    (["--steps", "5"], "--steps applies only with --profile yes"),
    (["--profile", "no", "--steps", "5"], "--steps applies only with --profile yes"),
    (["--profile", "yes", "--kernel-sizes", "3"], "--kernel-sizes does not apply with --profile yes, which profiles "
                                                  "training steps of the reference network; its options are "
                                                  "--backends, --steps and --batch-size"),
    (["--profile", "yes", "--memory", "no", "--sweep", "image"], "--memory, --sweep do not apply with --profile yes"),
    (["--image-sizes", "32"], "--image-sizes applies only with --sweep image; the kernel sweep's image size is "
                              "--image-size"),
    (["--sweep", "image", "--image-size", "32"], "--image-size applies only to the kernel sweep; the image "
                                                 "sweep's sizes are --image-sizes"),
    (["--sweep", "images"], "--sweep takes one of: kernel, image (got 'images')\n"),
    # --sweep takes one name: two were "too many values to unpack (expected 1)", and "image,"
    # was refused as a list with an empty name in it, as if it took several.
    (["--sweep", "kernel,image"], "--sweep takes one of: kernel, image (got 'kernel,image')\n"),
    (["--sweep", "image,"], "--sweep takes one of: kernel, image (got 'image,')\n"),
    (["--sweep", ","], "--sweep takes one of: kernel, image (got ',')\n"),
    # A profile that cannot run as asked is refused before its first table, not cut short.
    (["--profile", "yes", "--backends", "im2col,winograd"], "--profile trains the reference network, whose conv "
     "layer is 1 -> 32 filters 7x7, padding 1, on 28x28: backend 'winograd' does not support kernel 7x7"),
    (["--profile", "yes", "--batch-size", "1000", "--steps", "61"], "--profile runs 61 steps (--steps 61) of "
     "--batch-size 1000, 61000 training images, but MNIST has 60000; use --steps 60 or fewer"),
    (["--profile", "yes", "--batch-size", "20000", "--steps", "1"], "--profile runs 5 steps (its 5 warm-up steps) of "
     "--batch-size 20000, 100000 training images, but MNIST has 60000; use --batch-size 12000 or smaller"),
])
def test_bad_arguments_exit_2_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *args])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"convlab: error: {message}") and err.count("\n") == 1
    assert out == ""  # nothing ran


# A tiny bench: what the old code ran when it dropped an empty size ("3," was the sizes 3).
TINY_RUN = ["--backends", "im2col", "--mnist-layer", "no", "--batch-size", "1", "--out-channels", "1",
            "--repeat", "1"]


@pytest.mark.parametrize("args, message", [
    # fire read "3," as the tuple (3,) and "3,5," as (3, 5), the empty item gone; "3,,5" stayed a string.
    (["--kernel-sizes", "3,"], "--kernel-sizes: empty size in '3,' (give comma-separated whole numbers, "
                               "e.g. 3,5,7)\n"),
    (["--kernel-sizes", "3,5,"], "--kernel-sizes: empty size in '3,5,' (give comma-separated whole numbers"),
    (["--kernel-sizes=3,"], "--kernel-sizes: empty size in '3,' (give comma-separated whole numbers"),
    (["--kernel-sizes", "3,,5"], "--kernel-sizes: empty size in '3,,5' (give comma-separated whole numbers"),
    (["--kernel-sizes", ",3"], "--kernel-sizes: empty size in ',3' (give comma-separated whole numbers"),
    (["--kernel-sizes", ","], "--kernel-sizes must be positive whole numbers separated by commas, got nothing\n"),
    # fire read "[3,5]" as a Python list: the documented form is 3,5 (as --backends takes no [im2col]).
    (["--kernel-sizes", "[3,5]"], "--kernel-sizes must be positive whole numbers separated by commas, "
                                  "got [3,5]\n"),
    (["--kernel-sizes", "(3,5)"], "--kernel-sizes must be positive whole numbers separated by commas, "
                                  "got (3,5)\n"),
    (["--sweep", "image", "--image-sizes", "8,"], "--image-sizes: empty size in '8,' (give comma-separated whole "
                                                  "numbers, e.g. 16,32,64)\n"),
    (["--sweep", "image", "--kernel-sizes", "3,", "--image-sizes", "8"], "--kernel-sizes: empty size in '3,'"),
])
def test_an_empty_or_bracketed_size_list_item_is_refused_before_anything_runs(args, message, capsys):
    code, out, err = run_cli(capsys, "bench", *TINY_RUN, *args)
    assert code == 2 and out == ""  # nothing ran
    assert err.startswith(f"convlab: error: {message}") and err.count("\n") == 1


def test_size_lists_are_read_as_typed_and_from_python():
    assert bench.parse_kernel_sizes("5,3") == [3, 5]
    assert bench.parse_kernel_sizes(" 3, 5 ,3") == [3, 5]  # spaces, as in --kernel-sizes "3, 5"
    assert bench.parse_kernel_sizes("7") == [7]
    assert bench.parse_kernel_sizes((3, 5)) == [3, 5] and bench.parse_kernel_sizes([9]) == [9]
    assert bench.parse_kernel_sizes(3) == [3]
    with pytest.raises(ValueError, match=r"^--kernel-sizes: empty size in '3,' \("):
        bench.parse_kernel_sizes(("3", ""))


def test_a_size_list_reaches_the_bench_as_typed(capsys, monkeypatch):
    """`--kernel-sizes 3,5` (which fire would make the tuple (3, 5)) and `--image-sizes 8` run those sizes."""
    seen = {}
    monkeypatch.setattr(bench, "run_bench", lambda shapes, *args: seen.setdefault("shapes", shapes) and
                        (_ for _ in ()).throw(ValueError("stop")))
    code, _, err = run_cli(capsys, "bench", *TINY_RUN, "--image-size", "4", "--kernel-sizes", "5,3")
    assert code == 2 and err == "convlab: error: stop\n"
    assert [(s.size, s.k) for s in seen.pop("shapes")] == [(4, 3), (4, 5)]
    run_cli(capsys, "bench", *TINY_RUN, "--sweep", "image", "--kernel-sizes", "3", "--image-sizes", "8,6")
    assert [(s.size, s.k) for s in seen.pop("shapes")] == [(6, 3), (8, 3)]


def test_the_sweep_is_one_name_from_python_too():
    with pytest.raises(ValueError, match=r"^--sweep takes one of: kernel, image \(got 'kernel,image'\)$"):
        bench.bench_command(["im2col"], sweep="kernel,image")


def test_a_shape_no_named_backend_supports_is_a_row_of_skipped_cells(capsys, tmp_path):
    """--backends winograd and the 7x7 MNIST layer: skipped cells and a note, not a crash."""
    main(["bench", "--backends", "winograd", "--kernel-sizes", "3", "--repeat", "1", "--batch-size", "2",
          "--plot", str(tmp_path / "p.png")])
    out = capsys.readouterr().out
    assert "skipped" in out and "winograd not timed on 2x1->32 28x28 k7 p1: it does not support kernel 7x7" in out
    assert (tmp_path / "p.png").is_file()


@pytest.mark.parametrize("call_seconds, untimed, rounds", [
    ([1.5, 0.0078125, 0.0078125], 3, 20),  # a slow first call (PyTorch's) does not size the rounds
    ([4.0, 1.0, 0.25, 0.125, 0.001], 4, 4),  # at most four untimed calls
    ([0.25, 0.25], 2, 2),                    # settled at once: two untimed calls
    ([3.0, 2.0], 2, 1),                      # a heavy cell: at least one round
])
def test_benchmark_rounds_are_sized_after_one_off_costs_wear_off(monkeypatch, call_seconds, untimed, rounds):
    import benchmarks.conftest as suite

    clock = [0.0]
    durations = iter(call_seconds)
    calls = []
    monkeypatch.setattr(suite.time, "perf_counter", lambda: clock[0])

    def run():
        calls.append(1)
        clock[0] += next(durations, call_seconds[-1])

    class Benchmark:
        def pedantic(self, target, setup, rounds, iterations):
            return rounds

    assert suite.measure(Benchmark(), run) == rounds
    assert len(calls) == untimed


def test_a_bad_setting_of_the_tuner_s_candidates_stops_the_bench_before_it_starts(monkeypatch, capsys):
    """The auto picks column asks auto whatever --backends names, and auto may time
    fft-tiled: its bad tile setting was a warning in the middle of the table."""
    monkeypatch.setenv("CONVLAB_FFT_TILE", "7")
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--backends", "im2col", "--kernel-sizes", "3", "--mnist-layer", "no", "--batch-size", "2",
              "--repeat", "1"])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert err.startswith("convlab: error: CONVLAB_FFT_TILE must be one of 8, 16, 32, 64, 128") and err.count("\n") == 1
    assert out == ""  # nothing ran


def test_a_backend_that_raises_is_a_skipped_cell_and_a_line_not_the_end_of_the_bench(capsys, monkeypatch):
    """A plugin failing on some shapes: the other backends' times are still shown."""

    class FailsOnBigKernels:
        """Naive, but raises on kernels over 3x3 (a plugin's bug)."""

        def forward(self, x, w, b, stride, padding):
            if w.shape[2] > 3:
                raise RuntimeError("kernel too big for my buffer")
            return registry.get_backend("naive").impl.forward(x, w, b, stride, padding)

        def backward(self, dy, cache, need_dx=True):
            return registry.get_backend("naive").impl.backward(dy, cache, need_dx)

    monkeypatch.setitem(registry._registry, "fails", registry.Backend("fails", FailsOnBigKernels()))
    with pytest.warns(UserWarning, match="auto skips backend 'fails'"):  # as auto times it for its pick
        main(["bench", "--backends", "fails,im2col", "--kernel-sizes", "3,5", "--repeat", "1", "--batch-size", "2",
              "--mnist-layer", "no", "--memory", "yes"])
    out = capsys.readouterr().out
    for pass_ in ("forward", "forward+backward"):
        assert f"fails failed on 2x1->32 28x28 k5 p2 ({pass_}): RuntimeError: kernel too big for my buffer" in out
    rows = [line.split()[4:6] for line in out.splitlines() if line.startswith("2x1->32 28x28 k")]
    # Time and memory tables, both passes: fails's cell skipped on k5 only, im2col's never.
    assert [cells[0] == "skipped" for cells in rows] == [False, True] * 4
    assert "skipped" not in [cells[-1] for cells in rows]


class Picky:
    """A tuner (it has pick) that fails to pick; ``asked``: how many times it was."""

    forward = backward = None

    def __init__(self):
        self.asked = 0

    def pick(self, x, w, stride, padding, need_dx=True):
        self.asked += 1
        raise RuntimeError("no candidates configured")


@pytest.mark.parametrize("backends, when", [("im2col", "its pick"), ("picky,im2col", "tuning")])
def test_a_tuner_whose_pick_raises_loses_its_column_not_the_bench(capsys, monkeypatch, backends, when):
    """Named in --backends, a tuner is asked before the timing, and not again for the picks
    column: a failure was asked again (another full tuning) and printed twice."""
    picky = Picky()
    monkeypatch.setitem(registry._registry, "picky", registry.Backend("picky", picky))
    main(["bench", "--backends", backends, "--kernel-sizes", "3", "--repeat", "1", "--batch-size", "2",
          "--mnist-layer", "no", "--passes", "forward"])
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "picky failed" in line] == [
        f"picky failed on 2x1->32 28x28 k3 p1 ({when}): RuntimeError: no candidates configured"]
    assert "auto picks" in out and "picky picks" not in out and picky.asked == 1


class BrokenSettings:
    """im2col, with a check_settings that fails on a bug (an unset variable), not a ValueError."""

    def forward(self, x, w, b, stride, padding):
        return registry.get_backend("im2col").impl.forward(x, w, b, stride, padding)

    def backward(self, dy, cache, need_dx=True):
        return registry.get_backend("im2col").impl.backward(dy, cache, need_dx)

    def check_settings(self):
        raise KeyError("MINE_THREADS")


def test_a_plugin_whose_check_settings_is_broken_does_not_stop_auto_nor_a_bench_of_others(capsys, monkeypatch):
    """Every bench asks auto, and auto checks the settings of every backend it may time: a
    plugin's bug there (not a ValueError) stopped `bench --backends im2col` and `train
    --backend auto` with "use another backend". auto warns, and times it where it runs."""
    monkeypatch.setitem(registry._registry, "mine", registry.Backend("mine", BrokenSettings()))
    with pytest.warns(registry.PluginWarning, match=r"^backend 'mine' \(\S*BrokenSettings\) is broken: its "
                                                    r"check_settings\(\) raised KeyError: 'MINE_THREADS'.*; its "
                                                    r"settings go unchecked and this run goes on, and tell its"):
        main(["bench", "--backends", "im2col", "--kernel-sizes", "3", "--repeat", "1", "--batch-size", "2",
              "--mnist-layer", "no", "--passes", "forward"])
    assert "auto picks" in capsys.readouterr().out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # as the CLI shows them: once per place in the code
        main(["bench", "--kernel-sizes", "3", "--repeat", "1", "--batch-size", "2", "--mnist-layer", "no",
              "--passes", "forward"])  # every backend, this one too: timed, as it runs
    assert "mine" in capsys.readouterr().out.split("auto picks")[0]
    (warned,) = [str(w.message) for w in caught if "'mine'" in str(w.message)]  # once, though bench and auto check it
    assert warned.startswith("backend 'mine' (") and "check_settings() raised KeyError: 'MINE_THREADS'" in warned
    with pytest.raises(SystemExit):  # named, it is refused
        main(["bench", "--backends", "mine", "--kernel-sizes", "3"])
    assert capsys.readouterr().err.startswith("convlab: error: backend 'mine' ")


def test_a_bench_whose_backends_support_none_of_its_layers_is_refused_before_timing(tmp_path):
    """It printed "winograd not timed on ..." lines, wrote a result of no rows and exited 0,
    and `convlab report --bench` then refused that file."""
    from convlab.bench import bench_command

    with pytest.raises(ValueError, match=r"^--backends winograd can time none of the layers asked for: winograd does "
                                         r"not support kernel 7x7 \(kernel sides 1 to 5 only\) \(64x1->32 28x28 k7 p3\); "
                                         r"give other --kernel-sizes or --backends$"):
        bench_command(backends="winograd", kernel_sizes="7", mnist_layer=False, repeat=1,
                      json_path=str(tmp_path / "w.json"))
    assert list(tmp_path.iterdir()) == []
