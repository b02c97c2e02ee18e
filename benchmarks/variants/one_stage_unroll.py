"""B: im2col's inference pass unrolling as before 0.15.0, every window copied straight into a
chunk's cols (runs of OW values), never in two stages (shifted rows, then each tap as one
run of OH*OW). Time it with ``--evaluate`` (training steps run the forward, which unrolls
in one stage either way)."""

from backends import im2col

current = im2col.TWO_STAGE_MAX_WIDTH


def apply_b():
    im2col.TWO_STAGE_MAX_WIDTH = 0


def undo_b():
    im2col.TWO_STAGE_MAX_WIDTH = current
