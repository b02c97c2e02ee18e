"""The caches two `convlab` runs share (the auto pick cache, the FFTW wisdom file), tried
with real processes: concurrent writers lose nothing and leave valid JSON, and a cache
that cannot be written (a read-only cache folder, really denied) is one warning, not a
failed run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SPECIAL_FILES, make_special_file, random_digits

REPO = Path(__file__).resolve().parent.parent

# Adds `count` picks with distinct problems to the auto cache through the auto backend
# itself (timing stubbed: it is not what is tested), after waiting for a go file.
AUTO_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
import backends.auto as auto
auto.interleaved_best = lambda runs, *args, **kwargs: {name: 0.001 for name in runs}
cache, tag, count, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
while not go.exists():
    time.sleep(0.001)
picker = auto.Auto(cache_path=cache)
for i in range(count):
    picker.pick(np.zeros((1, 1, 4 + i, 4 + tag), np.float32), np.zeros((1, 1, 3, 3), np.float32), (1, 1), (0, 0))
print(len(picker.picks))
"""

# Plans the fft backend's transforms for some image sizes, saving wisdom to the file in
# CONVLAB_FFT_WISDOM after each (every transform is big enough to be measured, and each
# measured plan is saved); then writes the wisdom it ends with.
WISDOM_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
import pyfftw
import convlab
sizes, go, out = [int(s) for s in sys.argv[1].split(",")], Path(sys.argv[2]), Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
for size in sizes:
    convlab.conv2d(np.ones((8, 2, size, size)), np.ones((8, 2, 3, 3)), backend="fft")
out.write_text("".join(w.decode() for w in pyfftw.export_wisdom()))
"""


def python(*argv, env=None, prefix=()):
    return subprocess.Popen([*prefix, sys.executable, *argv], env=dict(env or os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out, err


def test_two_processes_adding_picks_at_once_lose_none(tmp_path):
    cache, go = tmp_path / "auto.json", tmp_path / "go"
    count = 60
    writers = [python("-c", AUTO_WRITER, str(cache), str(tag), str(count), str(go)) for tag in range(2)]
    go.touch()
    for writer in writers:
        assert finish(writer)[0].strip() == str(count)
    picks = json.loads(cache.read_text())["picks"]  # valid JSON
    assert len(picks) == 2 * count
    assert {entry["problem"]["x"][3] for entry in picks.values()} == {4, 5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto.json", "go"]  # no temporary file left


def test_two_processes_planning_at_once_keep_each_others_wisdom(tmp_path):
    wisdom, go = tmp_path / "wisdom.json", tmp_path / "go"
    env = dict(os.environ, CONVLAB_FFT_WISDOM=str(wisdom), CONVLAB_FFT_PLANNER="measure", CONVLAB_FFT_THREADS="1")
    sizes = ["30,34,38", "32,36,40"]
    writers = [python("-c", WISDOM_WRITER, size, str(go), str(tmp_path / f"own-{i}.txt"), env=env)
               for i, size in enumerate(sizes)]
    go.touch()
    for writer in writers:
        finish(writer)
    stored = json.loads(wisdom.read_text())  # valid JSON
    merged = planned_problems("".join(stored["wisdom"]))
    for i in range(2):
        own = planned_problems((tmp_path / f"own-{i}.txt").read_text())
        assert own and own <= merged, f"the wisdom file lost what process {i} planned"


def planned_problems(wisdom: str) -> set:
    """The problems FFTW wisdom text holds a plan for: each line ``(solver flags ... h1 h2 h3 h4)``
    ends with the problem's hash (two processes may measure different winners for one problem)."""
    return {tuple(line.rstrip(")").split()[-4:]) for line in wisdom.splitlines() if line.startswith("  (")}


@pytest.fixture
def readable_dir(tmp_path):
    """A folder every user can read (pytest's tmp_path is private to its owner)."""
    folder = tmp_path / "shared"
    folder.mkdir()
    for path in (tmp_path, folder):
        path.chmod(0o755)
    return folder


def write_denied_prefix(read_only: Path):
    """A command prefix under which writing in ``read_only`` (mode 555) is really refused:
    nothing for an ordinary user; for root, who ignores file modes, dropping the capability
    to override them (setpriv); skips the test when neither works."""
    read_only.chmod(0o555)
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot deny a write")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    probe = subprocess.run([*prefix, sys.executable, "-c", f"open({str(read_only / 'probe')!r}, 'w')"],
                           capture_output=True)
    if probe.returncode == 0:
        (read_only / "probe").unlink()
        pytest.skip("this system lets the write through: cannot test a read-only cache folder")
    return prefix


@pytest.mark.parametrize("backend, cache", [("fft", "FFTW wisdom file"), ("auto", "auto pick cache")])
def test_a_read_only_cache_folder_is_one_warning_and_the_run_goes_on(readable_dir, backend, cache):
    data = random_digits(readable_dir / "tiny.hdf5")
    home = readable_dir / "home"
    home.mkdir()
    prefix = write_denied_prefix(home)
    env = {key: value for key, value in os.environ.items()
           if key not in ("CONVLAB_FFT_WISDOM", "CONVLAB_AUTO_CACHE", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), CONVLAB_FFT_PLANNER="measure")  # measured plans are saved as wisdom
    process = python("-m", "convlab.cli", "train", "--backend", backend, "--data-dir", str(data), "--epochs", "2",
                     "--batch-size", "32", "--progress", "False", env=env, prefix=prefix)
    out, err = finish(process)
    assert "test accuracy:" in out
    assert "Traceback" not in err
    for kind in ("FFTW wisdom file", "auto pick cache"):  # auto times fft: it may warn for both
        assert sum(f"could not save the {kind}" in line for line in err.splitlines()) <= 1, err
    warning, = [line for line in err.splitlines() if f"could not save the {cache}" in line]
    assert f"to {home / '.cache' / 'convlab'}" in warning and "Permission denied" in warning
    assert list(home.iterdir()) == []


def test_a_cache_setting_naming_someone_elses_file_leaves_it_intact(tmp_path):
    data = random_digits(tmp_path / "tiny.hdf5")
    notes, picture = tmp_path / "notes.txt", tmp_path / "picture.png"
    notes.write_text("my notes\n")
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    env = dict(os.environ, CONVLAB_AUTO_CACHE=str(notes), CONVLAB_FFT_WISDOM=str(picture),
               CONVLAB_FFT_PLANNER="measure")
    out, err = finish(python("-m", "convlab.cli", "train", "--backend", "auto", "--data-dir", str(data),
                             "--epochs", "1", "--batch-size", "32", "--progress", "False", env=env))
    assert "test accuracy:" in out
    assert notes.read_text() == "my notes\n"
    assert picture.read_bytes() == b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    assert err.splitlines() == [
        f"convlab: warning: not using the {kind} {path}: it exists and is not a convlab cache file (a JSON object "
        f"with {marker!r}); the file is left as it is (point the setting at another file)"
        for kind, path, marker in (("auto pick cache", notes, "picks"), ("FFTW wisdom file", picture, "wisdom"))]


@pytest.mark.parametrize("kind", SPECIAL_FILES)
def test_a_cache_setting_naming_a_device_or_fifo_is_never_opened_nor_replaced(tmp_path, kind):
    """``CONVLAB_FFT_WISDOM=/dev/null`` read as an empty cache, and the save renamed a
    JSON file over the device (as root: the system's /dev/null); a FIFO blocked the read."""
    import warnings

    from convlab.cachefile import read_cache, update_cache

    path = tmp_path / "cache"
    still_there = make_special_file(path, kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_cache(path, "FFTW wisdom file", "wisdom") == {}
        assert update_cache(path, "FFTW wisdom file", "wisdom", lambda stored: {"wisdom": []}) is False
    assert still_there() and os.listdir(tmp_path) == ["cache"]
    assert [str(w.message) for w in caught] == [
        f"not using the FFTW wisdom file {path}: it is not a regular file (a device, a FIFO or a socket); "
        "the file is left as it is (point the setting at another file)"]
