"""pytest-benchmark suite: `pytest benchmarks --benchmark-only` (see the README)."""
