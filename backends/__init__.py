"""convlab's built-in convolution strategies, one file each, found through the
``convlab.backends`` entry-point group declared in ``pyproject.toml``."""
