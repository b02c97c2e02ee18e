"""A/A: B runs the same code as A, so the ratio shows the harness's noise (about 1.00)."""


def apply_b():
    pass


def undo_b():
    pass
