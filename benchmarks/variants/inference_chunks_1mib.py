"""B: im2col's inference pass in chunks of 1 MiB (``CHUNK_BYTES``, as the forward), as before
0.15.0, instead of ``INFERENCE_CHUNK_BYTES`` (2 MiB). Time it with ``--evaluate``."""

from backends import im2col

current = im2col.INFERENCE_CHUNK_BYTES


def apply_b():
    im2col.INFERENCE_CHUNK_BYTES = im2col.CHUNK_BYTES


def undo_b():
    im2col.INFERENCE_CHUNK_BYTES = current
