"""The README's Python example runs as written (a newcomer pastes it into a script)."""

from pathlib import Path

from convlab import registry

README = Path(__file__).resolve().parents[1] / "README.md"


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
