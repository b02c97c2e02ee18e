"""The Python the README and docs/ show runs as written (a newcomer pastes it into a script)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from convlab import registry
from tests.test_cli import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"
# The pages with Python to run (a signature to read is a ```text block).
DOCS_WITH_PYTHON = sorted(page for page in (README.parent / "docs").glob("*.md") if "```python\n" in page.read_text())


# A refusal the docs quote with its command: "$ convlab ..." and the error line under it.
QUOTED_REFUSALS = [(page.name, command, error) for page in sorted((README.parent / "docs").glob("*.md"))
                   for command, error in re.findall(r"^\$ (convlab .*)\n(convlab: error: .*)$", page.read_text(), re.M)]


def python_blocks(text):
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def test_the_api_example_runs_as_written():
    (example,) = python_blocks(README.read_text())
    names = {}
    installed = registry.get_backend("mine") if "mine" in registry.list_backends() else None  # a plugin's
    try:
        exec(compile(example, "README.md", "exec"), names)
    finally:
        registry._registry.pop("mine", None)
        if installed is not None:
            registry._registry["mine"] = installed
    assert names["y"].shape == (8, 32, 24, 24) and names["logits"].shape == (8, 10)


@pytest.mark.parametrize("page", DOCS_WITH_PYTHON, ids=lambda page: page.name)
def test_the_docs_python_runs_as_written(page, tmp_path):
    """Each block in a process of its own: what it sets may be process-wide (fft.md's
    ``fftw.configure``), and a newcomer runs it in a script of its own."""
    for block in python_blocks(page.read_text()):
        done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path, env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path)))
        assert done.returncode == 0, f"{page.name}:\n{block}\n{done.stderr}"


@pytest.mark.parametrize("page, command, error", QUOTED_REFUSALS, ids=lambda value: str(value)[:60])
def test_the_docs_refusals_are_what_convlab_says(capsys, page, command, error):
    code, _, err = run_cli(capsys, *shlex.split(command)[1:])
    assert code == 2 and err == error + "\n"
