"""Managing the auto backend's picks as a user does: `convlab auto show / retune / clear`,
and picks made for what a layer's backward really computes (a first layer needs no dx)."""

import json
import warnings

import numpy as np
import pytest

import backends.auto as auto_module
import convlab
from backends.auto import Auto, Problem
from convlab.cli import main
from convlab.models import Sequential
from convlab.layers import Conv2D, Flatten


@pytest.fixture
def cache_file(tmp_path, monkeypatch):
    path = tmp_path / "auto.json"
    monkeypatch.setenv("CONVLAB_AUTO_CACHE", str(path))
    return path


def test_a_first_layer_gets_the_pick_timed_without_dx(cache_file, monkeypatch):
    auto = Auto()
    monkeypatch.setattr(convlab.get_backend("auto"), "impl", auto)
    timed = []
    real_conv_pass = auto_module.conv_pass
    monkeypatch.setattr(auto_module, "conv_pass", lambda *args: timed.append(args[-1]) or real_conv_pass(*args))
    net = Sequential(Conv2D(1, 2, 3, backend="auto", rng=0, dtype=np.float64), Flatten())
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6))
    for step in range(3):
        y = net.forward(x)
        net.backward(np.ones_like(y))
    # The first step could not know; from the second on the pick is the one timed without dx.
    assert sorted(auto.picks) == sorted(Problem.of(x, net.layers[0].params["w"], (1, 1), (0, 0), need_dx).key
                                        for need_dx in (True, False))
    assert set(timed) == {True, False}
    stored = json.loads(cache_file.read_text())["picks"]
    assert {entry["problem"]["need_dx"] for entry in stored.values()} == {True, False}
    assert all(key.endswith(" without dx") == (not entry["problem"]["need_dx"]) for key, entry in stored.items())


def test_a_layer_that_backpropagates_keeps_the_pick_with_dx(cache_file):
    auto = convlab.Backend("auto", Auto())
    x, w = np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3))
    for need_dx in (False, True, False, False):  # one backward with dx settles it for good
        y, cache = auto.forward(x, w, None, 1, 0)
        auto.backward(np.ones_like(y), cache, need_dx)
    y, cache = auto.forward(x, w, None, 1, 0)
    assert cache.impl_cache[2] in auto.impl._need_dx and auto.impl._need_dx[cache.impl_cache[2]] is True


def test_show_retune_and_clear(cache_file, capsys):
    main(["auto", "show"])
    assert capsys.readouterr().out == f"{cache_file}: 0 stored picks\n"

    x, w = np.ones((2, 1, 8, 8), np.float32), np.ones((3, 1, 3, 3), np.float32)
    first = Auto()
    first.pick(x, w, (1, 1), (1, 1), need_dx=False)
    key = Problem.of(x, w, (1, 1), (1, 1), False).key
    main(["auto", "show"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{cache_file}: 1 stored pick"
    assert out[1].startswith(f"{key}: {first.picks[key]} (") and "ms" in out[1]

    before = json.loads(cache_file.read_text())["picks"][key]
    main(["auto", "retune"])
    out = capsys.readouterr().out
    assert "auto picked" in out and key in out and out.endswith(f"re-timed 1 problems ({cache_file})\n")
    after = json.loads(cache_file.read_text())["picks"][key]
    assert after["problem"] == before["problem"] and after["seconds"] != before["seconds"]

    # A pick timed by another version is shown as not used.
    cache_file.write_text(json.dumps({"picks": {key: dict(after, convlab="0.0.1")}}))
    main(["auto", "show"])
    assert "[not used: timed with convlab 0.0.1" in capsys.readouterr().out

    main(["auto", "clear"])
    assert capsys.readouterr().out == f"removed 1 stored pick ({cache_file})\n"
    assert not cache_file.exists()
    main(["auto", "show"])
    assert capsys.readouterr().out == f"{cache_file}: 0 stored picks\n"


def test_clear_refuses_a_file_that_is_not_a_pick_cache(cache_file, capsys):
    cache_file.write_text("my notes")
    with pytest.raises(SystemExit) as exit_, warnings.catch_warnings():
        warnings.simplefilter("error")  # the one error line, not a warning about the same file before it
        main(["auto", "clear"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"convlab: error: not deleting {cache_file}: it exists and is not") and err.count("\n") == 1
    assert cache_file.read_text() == "my notes"


def test_clear_of_a_setting_that_names_a_folder_says_so(cache_file, capsys):
    cache_file.mkdir()
    with pytest.raises(SystemExit) as exit_, warnings.catch_warnings():
        warnings.simplefilter("error")
        main(["auto", "clear"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"convlab: error: cannot delete {cache_file}: Is a directory\n"
    assert cache_file.is_dir()


GOOD_PROBLEM = {"x": [1, 1, 4, 4], "w": [1, 1, 3, 3], "stride": [1, 1], "padding": [0, 0], "dtype": "float64",
                "need_dx": True}


@pytest.mark.parametrize("problem, seconds", [
    ({"x": [1, 1, 4]}, 1.0),
    ({**GOOD_PROBLEM, "dtype": "no such type"}, 1.0),
    # `auto show` refused a stride of 0 as if it were the user's call, and `retune` divided by zero
    ({**GOOD_PROBLEM, "stride": [0, 0]}, 1.0),
    ({**GOOD_PROBLEM, "w": [1, 2, 3, 3]}, 1.0),    # channels that do not match x's
    ({**GOOD_PROBLEM, "w": [1, 1, 9, 9]}, 1.0),    # a kernel larger than the input
    ({**GOOD_PROBLEM, "dtype": "int64"}, 1.0),
    (GOOD_PROBLEM, "fast"),                         # `auto show` multiplied the text by 1000
], ids=["short x", "dtype", "stride 0", "channels", "kernel", "int dtype", "text time"])
def test_an_entry_with_a_damaged_problem_is_ignored(cache_file, capsys, problem, seconds):
    try:  # the entry's own key: one stored under another problem's key is ignored for that alone
        key = Problem(*(tuple(problem[name]) for name in ("x", "w", "stride", "padding")), problem["dtype"],
                      problem["need_dx"]).key
    except KeyError:
        key = "k"
    cache_file.write_text(json.dumps({"picks": {key: {"backend": "im2col", "seconds": {"im2col": seconds},
                                                      "problem": problem}}}))
    main(["auto", "show"])
    assert capsys.readouterr().err == ""
    main(["auto", "retune"])
    assert capsys.readouterr().out.endswith("re-timed 0 problems ({})\n".format(cache_file))
    assert json.loads(cache_file.read_text()) == {"picks": {}}
