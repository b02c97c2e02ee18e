"""The auto backend: picks by timing, remembers picks in memory and on disk, and computes
exactly what the backend it picked computes."""

import json
import logging
import re

import numpy as np
import pytest

import backends.auto as auto_module
import convlab
from backends.auto import Auto, default_cache_path, problem_key
from convlab.cli import main
from convlab.timing import ConvShape

SHAPE = ConvShape(n=2, c=2, f=3, size=9, k=3, padding=1)


@pytest.fixture
def cache_file(tmp_path, monkeypatch):
    """A new pick cache file, and the registered auto remembering no pick of an earlier test
    (in memory: `convlab train --backend auto` in test_no_lost_work picks for the MNIST layer)."""
    path = tmp_path / "cache" / "auto.json"
    monkeypatch.setenv("CONVLAB_AUTO_CACHE", str(path))
    monkeypatch.setattr(convlab.get_backend("auto").impl, "_picks", {})
    return path


def run(backend, dtype=np.float64):
    x, w, b = SHAPE.arrays(dtype)
    y, cache = backend.forward(x, w, b, 1, SHAPE.padding)
    return (y,) + tuple(backend.backward(np.ones_like(y), cache))


def test_computes_exactly_what_its_pick_computes(cache_file):
    auto = convlab.get_backend("auto")
    ours = run(auto)
    x, w, _ = SHAPE.arrays(np.float64)
    picked = auto.impl.pick(x, w, (1, 1), (SHAPE.padding,) * 2)
    for a, r in zip(ours, run(convlab.get_backend(picked))):
        np.testing.assert_array_equal(a, r)


def test_candidates_are_the_other_strategies_without_the_oracle(monkeypatch):
    names = auto_module.candidates()
    assert "auto" not in names and "naive" not in names and "im2col" in names
    monkeypatch.setattr(auto_module, "strategies", lambda: ["naive"])
    assert auto_module.candidates() == ["naive"]


def test_pick_is_logged_cached_on_disk_and_reused_by_a_new_process(cache_file, monkeypatch, caplog):
    first = Auto()
    with caplog.at_level(logging.INFO, logger="convlab.auto"):
        run(convlab.Backend("auto", first))
    (key, picked), = first.picks.items()
    assert f"auto picked {picked} for {key}" in caplog.text
    entry = json.loads(cache_file.read_text())["picks"][key]
    assert entry["backend"] == picked and sorted(entry["seconds"]) == sorted(auto_module.candidates())
    assert entry["convlab"] == auto_module.convlab_version()

    monkeypatch.setattr(auto_module, "interleaved_best", lambda *a, **k: pytest.fail("timed a cached pick"))
    second = Auto()  # as a later run would: nothing in memory, the file on disk
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="convlab.auto"):
        run(convlab.Backend("auto", second))
    assert second.picks == {key: picked}
    assert f"auto uses {picked} for {key} (timed earlier" in caplog.text


@pytest.mark.parametrize("change", [dict(dtype=np.float32), dict(padding=(0, 1)), dict(stride=(1, 2)),
                                    dict(need_dx=False), dict(x_shape=(3, 2, 9, 9)), dict(w_shape=(3, 2, 3, 2))],
                         ids=lambda change: next(iter(change)))
def test_a_problem_that_differs_in_one_field_is_timed_for_itself(cache_file, monkeypatch, change):
    """Each field of a problem (dtype, padding, stride, need_dx, the shapes) is part of its
    pick's key, in memory and in the file: a pick timed for float64, or for another padding,
    is not reused for a problem it was not timed on."""
    timed = []
    monkeypatch.setattr(auto_module, "interleaved_best",
                        lambda runs, *a, **k: timed.append(runs) or {name: 1e-3 for name in runs})
    problem = dict(x_shape=(2, 2, 9, 9), w_shape=(3, 2, 3, 3), stride=(1, 1), padding=(1, 1), dtype=np.float64,
                   need_dx=True)

    def pick(auto, x_shape, w_shape, stride, padding, dtype, need_dx):
        return auto.pick(np.ones(x_shape, dtype), np.ones(w_shape, dtype), stride, padding, need_dx)

    pick(Auto(), **problem)
    pick(Auto(), **problem)  # a new process: the pick from the file
    assert len(timed) == 1
    pick(Auto(), **{**problem, **change})
    assert len(timed) == 2, f"a pick for {problem} was reused for {change}"


@pytest.mark.parametrize("stale", [
    {"backend": "naive", "seconds": {"naive": 1.0}},  # timed when only naive existed
    "another convlab",                                 # timed with other versions of the backends
])
def test_a_stale_entry_is_timed_again(cache_file, stale):
    x, w, _ = SHAPE.arrays(np.float64)
    key = problem_key(x, w, (1, 1), (1, 1), need_dx=True)
    if stale == "another convlab":
        stale = {"backend": "naive", "seconds": {name: 1.0 for name in auto_module.candidates()},
                 "convlab": "0.0.1"}
    cache_file.parent.mkdir()
    cache_file.write_text(json.dumps({"picks": {key: stale}}))
    auto = Auto()
    assert auto.pick(x, w, (1, 1), (1, 1)) in auto_module.candidates()
    assert sorted(json.loads(cache_file.read_text())["picks"][key]["seconds"]) == sorted(auto_module.candidates())


def test_an_entry_whose_problem_is_not_its_key_s_is_ignored_and_timed_again(cache_file, monkeypatch):
    """A hand-edited or damaged cache: the pick of a stride-1 problem (winograd) stored under
    a stride-2 key was checked against stride 1's candidates and run on the stride-2 layer,
    which winograd does not support; the error blamed winograd as broken."""
    x, w, _ = SHAPE.arrays(np.float64)
    key = problem_key(x, w, (2, 2), (1, 1), need_dx=True)
    stride_one = auto_module.Problem.of(x, w, (1, 1), (1, 1), True)
    monkeypatch.setattr(auto_module, "interleaved_best", lambda runs, *a, **k: {name: 1e-3 for name in runs})
    entry = {"backend": "winograd", "seconds": {name: 1.0 for name in stride_one.candidates()},
             "convlab": auto_module.convlab_version(), "problem": stride_one.as_json()}
    cache_file.parent.mkdir()
    cache_file.write_text(json.dumps({"picks": {key: entry}}))
    picked = Auto().pick(x, w, (2, 2), (1, 1))
    assert picked != "winograd" and picked in auto_module.Problem.of(x, w, (2, 2), (1, 1), True).candidates()
    assert json.loads(cache_file.read_text())["picks"][key]["problem"]["stride"] == [2, 2]


@pytest.mark.parametrize("content", ['{"picks": {"k": "im2col"}}', '{"picks": 3}', ""])
def test_invalid_entries_of_a_cache_file_are_ignored_and_rewritten(cache_file, content):
    cache_file.parent.mkdir()
    cache_file.write_text(content)
    auto = Auto()
    y = run(convlab.Backend("auto", auto))[0]
    assert y.shape == (2, 3, 9, 9)
    assert list(json.loads(cache_file.read_text())["picks"]) == list(auto.picks)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"other": 1}', b"\x89PNG\r\n\x1a\n\xff",
                                     b'{"rows": [], "picks": []}'])  # a bench --json result has "picks" too
def test_a_file_that_is_not_a_pick_cache_is_left_intact_with_one_warning(cache_file, content):
    cache_file.parent.mkdir()
    cache_file.write_bytes(content)
    with pytest.warns(UserWarning, match="not using the auto pick cache .* it exists and is not a convlab") as caught:
        run(convlab.Backend("auto", Auto()))
        run(convlab.Backend("auto", Auto()))
    assert len(caught) == 1
    assert cache_file.read_bytes() == content


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVLAB_AUTO_CACHE", str(tmp_path / "a.json"))
    assert default_cache_path() == tmp_path / "a.json"
    assert Auto(cache_path=tmp_path / "b.json").cache_file() == tmp_path / "b.json"
    monkeypatch.delenv("CONVLAB_AUTO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_path() == tmp_path / "xdg" / "convlab" / "auto.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_path() == tmp_path / "home" / ".cache" / "convlab" / "auto.json"


def test_train_with_auto_says_what_it_picked_and_matches_that_backend(cache_file, capsys):
    args = ["--train-size", "128", "--test-size", "100", "--epochs", "1", "--progress", "False"]
    main(["train", "--backend", "auto"] + args)
    out = capsys.readouterr().out
    picked = re.search(r"auto picked ([\w-]+) for x 64x1x28x28 w 32x1x7x7", out).group(1)  # fft-tiled too
    assert f"(auto: {picked}, 1 epoch, " in out  # the last line says what ran, and "1 epoch"
    main(["train", "--backend", picked] + args)
    accuracy = re.compile(r"test accuracy: (\S+)")
    assert accuracy.search(out).group(1) == accuracy.search(capsys.readouterr().out).group(1)
