"""B: im2col's dw product chosen as on the AVX-512 kernels on every CPU: ``dy @ cols.T`` up
to 1024 outputs an image, a transposed copy of dy and ``cols @ dy.T`` above (the reference
layer has 1600). On AVX2 (Haswell, Zen) kernels convlab uses ``dy @ cols.T`` up to 2048."""

from backends import im2col

current = im2col.SMALL_DW_OUTPUTS


def apply_b():
    im2col.SMALL_DW_OUTPUTS = 1024


def undo_b():
    im2col.SMALL_DW_OUTPUTS = current
