"""``im2col``: unroll every input window into a column, then matrix products.

Each image's windows become the columns of a matrix ``cols[n]`` (C*kh*kw + 1, OH*OW),
whose last row is ones; the filters are the rows of ``w_mat`` (F, C*kh*kw + 1), whose
last column is the bias. So image n's output, bias included, is one GEMM,
``y[n] = w_mat @ cols[n]`` (F, OH*OW), which is already y's (N, F, OH, OW) layout: no
transposing copy afterwards, and no separate pass to add the bias. The batch is processed in chunks of a few images
(``CHUNK_BYTES`` of unrolled windows and outputs, about an L2 cache: 1 MiB): a chunk is
unrolled, multiplied and biased back to back while it is still in cache, and the chunks
are shared among the cores (:mod:`convlab.threads`), each GEMM single-threaded. One
GEMM over the whole batch, as this backend first did, streamed a 7 MB ``cols`` and a 5 MB
output through memory on the MNIST layer and took twice as long on one core. The forward
keeps every chunk's ``cols`` for the backward; the inference pass (no backward to come)
unrolls each chunk into a buffer its thread reuses instead, and on narrow images in two
copies instead of one (:func:`shifted_rows`, :func:`taps_of_rows`): the windows copied
straight into ``cols`` move runs of OW values, C*kh*kw*OH of them an image, and on an
MNIST image numpy spends more on starting those runs than on the bytes.

The backward, per chunk, sums ``cols[n] @ dy[n].T`` (or ``dy[n] @ cols[n].T``: which is
faster depends on OpenBLAS's kernels, see :data:`SMALL_DW_OUTPUTS`): that is dw
(transposed), and its row from the ones is ``db`` (the sum over pixels comes out of the
GEMM rather than a separate pass). It keeps one partial sum per chunk, added in chunk order
at the end (the same weights whatever thread ran which chunk). When a dense layer follows
(the reference network), dy arrives as that layer's two factors (:mod:`convlab.factored`):
each chunk's rows of dy are formed by one small GEMM, masked by the ReLU and used while in
cache, and the whole 4.7 MB dy is never written. ``dx``, when
needed, is ``dcols[n] = w_mat.T @ dy[n]`` folded back onto the input by ``col2im``, in the
same chunks (so the folding runs on every core, on columns still in cache): one add per
kernel tap, no Python loop over pixels and no ``np.add.at``. At stride 1 each row of dy is
first widened with zero columns to the padded input's width, so that a tap's columns land
at one offset of each flattened input plane: every tap is placed at its offset in one strided
copy and summed in one call (:func:`col2im_rows`) instead of one short run per output row
and tap; for wide kernels over many channels, kw shifted copies of the widened dy let the
GEMM sum a kernel row's taps too, and one add per kernel row remains
(:func:`input_gradient_rows`).
"""

import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from convlab.checks import output_size
from convlab.factored import FactoredGradient
from convlab.profile import phase, shared_among_threads
from convlab.registry import register_backend
from convlab.relu import relu_block, relu_gradient_block
from convlab.threads import blas_kernel, chunk_bounds, share_chunks

# dw products with at most this many outputs ((k + 1) * F) per image are formed as dy @ cols.T,
# bigger ones as cols @ (a transposed copy of dy): see the backward. Where the two cross
# depends on OpenBLAS's kernels. Per chunk (CPU time, one core, float32, 1 MiB chunks), on the
# AVX2 kernels (Haswell; Zen shares them), AMD EPYC family 25 model 1: the reference layer
# (1600 outputs) 150 against 180 us, LeNet-5's first (156) 115 against 158, a 3x3 1 -> 32
# (320) 93 against 164, but LeNet-5's second (2416) 151 against 133 and 32 -> 32 3x3 (9248)
# 229 against 202. On the AVX-512 kernels (SkylakeX), a Zen 4 EPYC: 16-34 against 38-59 us
# from 156 to 416 (5 images of 784 pixels, the 512 KiB chunks of then), but 71 against 48 at
# 1600 and 89 against 41 at 2416.
SMALL_DW_OUTPUTS = 2048 if blas_kernel() in ("Haswell", "Zen") else 1024

# The inference pass unrolls outputs at most this wide in two stages (shifted_rows, then
# taps_of_rows) at stride 1 down the image. Evaluation batches of the reference network
# (python benchmarks/ab_steps.py benchmarks/variants/one_stage_unroll.py --evaluate, 2-core
# AMD EPYC Zen 3), the one-stage unroll against this: 1.016 and 1.026 on the idle machine,
# 1.077 on one thread (OPENBLAS_NUM_THREADS=1), 1.047-1.078 while another job ran. The MNIST
# layer's inference pass alone: 1.11 on one thread, but 0.98-1.00 on two idle ones, where
# the pass waits on memory more than on the unroll. Not in the forward, whose cols go out
# to memory for the backward: there the one-stage unroll was 1-2 % faster in reference
# training steps (the same command without --evaluate: 0.979-0.996, four runs), the first
# stage's copy costing more than the shorter runs save. The unroll
# alone, one core, chunks as the passes cut them into a buffer in cache, two-stage time
# against the windows copied straight: 64 x 1 -> 32
# on 28^2 with k 3, 7, 11, 21 0.73, 0.50, 0.52, 0.49; LeNet-5's second layer 0.46; 3x3
# layers of 32-128 channels on 16^2-32^2 0.63-0.75; 8 x 3 -> 16 on 64^2, k 5 (OW 64) 0.94;
# but 16 x 16 -> 16 on 128^2, k 9 (OW 128) 1.29 and 8 x 3 -> 16 on 224^2, k 7 and 11 (OW 224)
# 1.16 and 1.05, where each run is long already and the first stage's copy is extra
# traffic; and a 1x1 kernel (kh = 1: nothing to gain, one copy more) 1.10.
TWO_STAGE_MAX_WIDTH = 64

# Unrolled windows plus outputs of one chunk: about a 1 MiB L2 cache (AMD EPYC; Intel
# Xeons have 2 MiB). On the MNIST layer that is 5 images a chunk. In real training steps
# (one core, AMD EPYC, medians of 600 steps) the layer's forward / backward took 2.47 /
# 2.73 ms so, against 2.55 / 2.96 ms with half as much and 2.75 / 3.32 with a quarter:
# fewer chunks are fewer numpy calls, and 2 MiB was no faster (2.49 / 2.76 ms). On two
# threads, whole steps (wall, medians of 640): 6.61 ms against 7.69 (512 KiB) and 6.91 (2 MiB).
CHUNK_BYTES = 1 << 20
# The inference pass's chunks are bigger: its unrolled windows go to a buffer of the thread's,
# not out to memory, and fewer chunks are fewer numpy calls and hand-overs. On the 2-core Zen 3
# EPYC (512 KiB L2), 1 MiB against 2 MiB: evaluation batches of the reference network 1.027
# and 1.050 (python benchmarks/ab_steps.py benchmarks/variants/inference_chunks_1mib.py
# --evaluate), the MNIST layer's pass (turns of 20 calls, two threads) 1.07-1.11; 1.5 MiB and
# 16 images (2.8 MiB) were in between, 32 images (one chunk a thread) 1.42x as slow as 1 MiB.
# Not measured on the Zen 4 or on Intel.
INFERENCE_CHUNK_BYTES = 2 << 20


def windows(x_padded, kernel, stride):
    """The (N, C, kh, kw, OH, OW) view of x_padded (N, C, Hp, Wp) whose [n, c, p, q] is
    tap (p, q) of channel c at every output pixel of image n: cols without a copy."""
    (kh, kw), (sh, sw) = kernel, stride
    win = sliding_window_view(x_padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    return win.transpose(0, 1, 4, 5, 2, 3)


def shifted_rows(x_padded, kw, sw):
    """The (N, C, kw, Hp, OW) view of x_padded (N, C, Hp, Wp) whose [n, c, q] is every row of
    the plane cut to the OW columns q, q + sw, ... that taps (., q) read: the first stage of
    the two-stage unroll, copied into a buffer of that shape (C*kw*Hp runs of OW an image)."""
    return sliding_window_view(x_padded, kw, axis=3)[:, :, :, ::sw].transpose(0, 1, 4, 2, 3)


def taps_of_rows(shifted, kh, oh):
    """The (n, C, kh, kw, OH*OW) view of ``shifted`` (n, C, kw, Hp, OW), a C-contiguous copy
    of :func:`shifted_rows`, whose [n, c, p, q] is tap (p, q) at every output pixel: rows p
    to p + OH - 1 of shifted[n, c, q], which lie back to back, so that at stride 1 down the
    image each tap is one run of OH*OW values (the second stage: C*kh*kw runs an image)."""
    n, c, kw, _, ow = shifted.shape
    s = shifted.strides
    return as_strided(shifted, (n, c, kh, kw, oh * ow), (s[0], s[1], s[3], s[2], s[4]))


def col2im(dcols, dx_padded, kernel, stride, out_shape):
    """Adjoint of the unrolling: add each column back onto the window it came from.

    dcols (n, C*kh*kw, OH*OW) is added into dx_padded (n, C, Hp, Wp).
    """
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_shape
    n, c = dx_padded.shape[:2]
    dcols = dcols.reshape(n, c, kh, kw, oh, ow)
    for p in range(kh):
        for q in range(kw):
            dx_padded[:, :, p:p + sh * oh:sh, q:q + sw * ow:sw] += dcols[:, :, p, q]


def col2im_rows(dcols_wide, dx_padded, kernel, oh):
    """:func:`col2im` at stride 1, for columns of rows as wide as the padded input, into a
    dx_padded that nothing else writes: its planes are overwritten, not added to.

    dcols_wide (n, C*kh*kw, OH*Wp) holds tap (p, q) of output pixel (i, j) at i*Wp + j, with
    zeros for j >= OW (it is w_mat.T @ dy widened by zero columns). That value belongs at
    dx_padded[..., i + p, j + q], flat index p*Wp + q + (i*Wp + j) of the plane: each tap's
    OH*Wp - (kw - 1) values (the last kw - 1, past the plane's end, are left out) land at
    offset p*Wp + q of their plane. Rather than one add per tap (kh*kw numpy calls of a few
    KB each, which cost more in calls than in adding), every tap is copied to that offset
    of a zeroed plane of its own, ``placed`` (n, C, kh*kw, Hp*Wp), in one copy through a
    strided view (tap (p, q) starts at (p*kw + q)*Hp*Wp + p*Wp + q, linear in p and q; each
    tap stays inside its own plane), and one sum over the taps writes dx. On the MNIST layer
    (5 images, one core) 0.013 against 0.034 ms an image for one add per tap; 1.6x faster on
    LeNet-5's second layer, 1.4x on 32 -> 32 channels 3x3.
    """
    (kh, kw), (n, c, hp, wp) = kernel, dx_padded.shape
    plane = hp * wp
    length = oh * wp - (kw - 1)
    placed = np.zeros((n, c, kh * kw, plane), dtype=dcols_wide.dtype)
    size = placed.itemsize
    taps = as_strided(placed, shape=(n, c, kh, kw, length),
                      strides=(c * kh * kw * plane * size, kh * kw * plane * size, (kw * plane + wp) * size,
                               (plane + 1) * size, size))
    np.copyto(taps, dcols_wide.reshape(n, c, kh, kw, oh * wp)[..., :length])
    np.sum(placed, axis=2, out=dx_padded.reshape(n, c, plane))


def input_gradient_rows(dy, w, dx_padded):
    """dx at stride 1 without per-tap folding: dy (n, F, OH, OW), w (F, C, kh, kw), added
    into dx_padded (n, C, Hp, Wp).

    :func:`col2im_rows` places and sums kh*kw taps per plane. Here the kw taps of a kernel row go into
    the GEMM instead: dy, widened to Wp and flattened, is stacked with kw copies of itself
    shifted by q = 0..kw-1 (S (n, F*kw, OH*Wp)), so that ``Z = W_q @ S`` with W_q (C*kh,
    F*kw), ``W_q[(c, p), (f, q)] = w[f, c, p, q]``, already sums over q: Z[c, p, u] belongs at
    flat index p*Wp + u of plane c, one add per kernel row (kh, not kh*kw). The GEMM does the
    same multiply-adds; the kw - 1 shifted copies of dy cost less than the (kw - 1)*kh adds
    saved when C*kh >= F (see :func:`folds_rows`). LeNet-5's second layer (7 images):
    0.10-0.12 against 0.17-0.22 ms for the widened GEMM plus one add per tap (0.13-0.18 ms
    with :func:`col2im_rows`'s single sum).
    """
    n, f, oh, ow = dy.shape
    _, c, kh, kw = w.shape
    wp = dx_padded.shape[3]
    length = oh * wp
    shifted = np.zeros((n, f, kw, oh, wp), dtype=dy.dtype)
    shifted[:, :, 0, :, :ow] = dy
    rows = shifted.reshape(n, f, kw, length)
    for q in range(1, kw):
        rows[:, :, q, q:] = rows[:, :, 0, :length - q]
    w_rows = w.transpose(1, 2, 0, 3).reshape(c * kh, f * kw)
    z = np.matmul(w_rows, rows.reshape(n, f * kw, length)).reshape(n, c, kh, length)
    planes = dx_padded.reshape(n, c, -1)
    for p in range(kh):
        planes[:, :, p * wp:p * wp + length] += z[:, :, p]


def folds_rows(w_shape):
    """Whether :func:`input_gradient_rows` beats the widened GEMM and :func:`col2im_rows`:
    kernels at least 5 wide with C*kh >= F. Measured (CPU time, one core, float32, a chunk
    of images): 6->16 5x5 on 14x14 0.10 vs 0.17 ms; 32->32 5x5 on 32x32 1.2 vs 1.4; 16->16
    9x9 2.3 vs 9.9; but 32->32 3x3 on 30x30 0.96 vs 0.68 and 1->32 7x7 0.64 vs 0.40."""
    f, c, kh, kw = w_shape
    return kw >= 5 and c * kh >= f


def images_per_chunk(k, f, pixels, itemsize, budget=None):
    """How many images' unrolled windows (k + 1 rows of pixels) and outputs (f rows) fit in
    ``budget`` bytes (default :data:`CHUNK_BYTES`)."""
    return max(1, (budget or CHUNK_BYTES) // ((k + 1 + f) * pixels * itemsize))


@register_backend("im2col")
class Im2col:
    """Image windows unrolled into a matrix, one GEMM per image, in cache-sized chunks shared among the cores."""

    # A ReLU after the layer is applied to each chunk's output right after its GEMM, and its
    # gradient to each chunk of dy before the chunk's products, while both are in cache.
    fuses_relu = True
    # A dense layer's input gradient handed on as its factors (convlab.factored): each
    # chunk's rows of dy are formed, masked by the ReLU and used while they are in cache.
    takes_factored_dy = True

    def forward(self, x, w, b, stride, padding, relu=False):
        y, cols, x_padded_shape = self.unrolled_pass(x, w, b, stride, padding, relu, keep_cols=True)
        return y, (cols, w, x_padded_shape, stride, padding, y if relu else None)

    def inference(self, x, w, b, stride, padding, relu=False):
        """The forward keeping nothing: each chunk unrolled into a buffer its thread reuses
        for the pass (in cache) instead of into the batch's ``cols`` (written out to memory
        for the backward). On the MNIST layer (2-core AMD EPYC) its peak extra memory was 1.4
        against 7.6 MB, and it took 0.92-0.99 of the forward's time on two threads, 0.88 on
        one (median ratio of 30 alternating turns of 20 calls in one process). Since 0.15.0 it
        unrolls narrow images in two stages (see TWO_STAGE_MAX_WIDTH), in chunks of
        INFERENCE_CHUNK_BYTES: 3.1 MiB on that layer, 3.3 for a batch of 128 (the forward:
        7.3 and 14.5), the first stage's rows included: per thread, whatever the batch."""
        return self.unrolled_pass(x, w, b, stride, padding, relu, keep_cols=False)[0]

    def unrolled_pass(self, x, w, b, stride, padding, relu, keep_cols):
        """(y, cols or None, the padded input's shape): the forward, chunk by chunk."""
        n, c, h, width = x.shape
        f, _, kh, kw = w.shape
        (ph, pw) = padding
        oh, ow = output_size(h, kh, stride[0], ph), output_size(width, kw, stride[1], pw)
        with phase("padding"):
            x_padded = x
            if ph or pw:  # zeros and a slice: np.pad's general machinery took 4x as long on MNIST batches
                x_padded = np.zeros((n, c, h + 2 * ph, width + 2 * pw), dtype=x.dtype)
                x_padded[:, :, ph:ph + h, pw:pw + width] = x
        two_stage = not keep_cols and stride[0] == 1 and kh > 1 and ow <= TWO_STAGE_MAX_WIDTH  # see there
        source = shifted_rows(x_padded, kw, stride[1]) if two_stage else windows(x_padded, (kh, kw), stride)
        k = c * kh * kw
        # The bias is one more column of the filters, against a row of ones in cols.
        w_aug = np.concatenate([w.reshape(f, k), b[:, None]], axis=1)
        per_chunk = images_per_chunk(k, f, oh * ow, x.itemsize, CHUNK_BYTES if keep_cols else INFERENCE_CHUNK_BYTES)
        cols = np.empty((n, k + 1, oh * ow), dtype=x.dtype) if keep_cols else None  # for the backward
        # Else each thread's buffers, reused chunk after chunk in this pass: a chunk's cols,
        # and for a two-stage unroll the first stage's rows and the view of their taps.
        buffers = {}

        def thread_buffers():
            own_cols = np.empty((per_chunk, k + 1, oh * ow), dtype=x.dtype)
            if not two_stage:
                return own_cols, None, None
            shifted = np.empty((per_chunk, c, kw, x_padded.shape[2], ow), dtype=x.dtype)
            return own_cols, shifted, taps_of_rows(shifted, kh, oh)

        y = np.empty((n, f, oh, ow), dtype=x.dtype)
        y_mat = y.reshape(n, f, oh * ow)

        def chunk(_, lo, hi):
            if keep_cols:
                chunk_cols = cols[lo:hi]
            else:
                thread = threading.get_ident()
                if thread not in buffers:
                    buffers[thread] = thread_buffers()
                own_cols, shifted, taps = buffers[thread]
                chunk_cols = own_cols[:hi - lo]
            with phase("unroll"):
                if two_stage:
                    np.copyto(shifted[:hi - lo], source[lo:hi])
                    np.copyto(chunk_cols[:, :k].reshape(taps[:hi - lo].shape), taps[:hi - lo])
                else:
                    np.copyto(chunk_cols[:, :k].reshape(source[lo:hi].shape), source[lo:hi])
                chunk_cols[:, k] = 1
            with phase("GEMM"):
                np.matmul(w_aug, chunk_cols, out=y_mat[lo:hi])
            if relu:
                with phase("ReLU"):
                    relu_block(y_mat[lo:hi], y_mat[lo:hi])

        with shared_among_threads():
            share_chunks(chunk, chunk_bounds(n, per_chunk))
        return y, cols, x_padded.shape

    def backward(self, dy, cache, need_dx=True):
        cols, w, x_padded_shape, stride, padding, relu_output = cache
        n, f, oh, ow = dy.shape
        kernel = w.shape[2:]
        k = cols.shape[1] - 1
        per_chunk = images_per_chunk(k, f, oh * ow, cols.itemsize)
        if isinstance(dy, FactoredGradient):
            # Each chunk reads all of the dense layer's w to form its rows of dy: chunks of
            # at least twice w's bytes of images keep that read a third of their traffic,
            # up to 4 * CHUNK_BYTES (a huge w is then read per chunk rather than a chunk's
            # new rows of dy made huge). The reference layer: 8 images (w 737 KB) instead
            # of 5. Real training steps (AMD EPYC Zen 3, in-process A/B, medians of 480):
            # 8.56 / 8.26 ms against 9.41 / 8.47 ms with 5 images; chunks of 10 8.38 / 8.66.
            image_bytes = (k + 1 + f) * oh * ow * cols.itemsize
            grown = -(-2 * dy.w.nbytes // image_bytes)
            if grown * image_bytes <= 4 * CHUNK_BYTES:
                per_chunk = max(per_chunk, grown)
        chunks = chunk_bounds(n, per_chunk)
        # Per chunk, cols @ dy.T: (k + 1, F), dw.T with db as its last row (the row of ones).
        parts = np.empty((len(chunks), k + 1, f), dtype=dy.dtype)
        w_cols = w.reshape(f, k).T
        wide = stride == (1, 1)  # rows of dy widened to the padded width: see col2im_rows
        rows_folded = folds_rows(w.shape)  # and the kw taps summed in the GEMM: input_gradient_rows
        dx_padded = None
        if need_dx:  # col2im_rows writes every value of its planes; the other paths add into zeros
            dx_padded = (np.empty if wide and not rows_folded else np.zeros)(x_padded_shape, dtype=dy.dtype)
        small_dw = (k + 1) * f <= SMALL_DW_OUTPUTS  # which dw product: see SMALL_DW_OUTPUTS
        wp = x_padded_shape[3]

        def chunk(index, lo, hi):
            if isinstance(dy, FactoredGradient):  # the chunk's rows of dy formed here, ours to overwrite
                with phase("GEMM dy"):
                    dy_chunk = dy.rows(lo, hi)
                if relu_output is not None:
                    with phase("ReLU"):
                        relu_gradient_block(dy_chunk, relu_output[lo:hi], dy_chunk)
            elif relu_output is not None:
                with phase("ReLU"):
                    dy_chunk = np.empty_like(dy[lo:hi])
                    relu_gradient_block(dy[lo:hi], relu_output[lo:hi], dy_chunk)
            else:
                dy_chunk = dy[lo:hi]
            dy_chunk_mat = dy_chunk.reshape(hi - lo, f, oh * ow)
            with phase("GEMM dw"):
                if small_dw:
                    # dy @ cols.T, (F, k + 1) per image: for small products OpenBLAS does
                    # better with the transposed operand than with a copy of dy first.
                    np.matmul(dy_chunk_mat, cols[lo:hi].transpose(0, 2, 1)).sum(axis=0, out=parts[index].T)
                else:
                    # dy's chunk transposed first: OpenBLAS packs a transposed operand of these
                    # sizes slowly, and the copy of a chunk in cache costs less than it saves.
                    dy_t = np.empty((hi - lo, oh * ow, f), dtype=dy.dtype)
                    np.copyto(dy_t, dy_chunk_mat.transpose(0, 2, 1))
                    np.matmul(cols[lo:hi], dy_t).sum(axis=0, out=parts[index])
            if not need_dx:
                return
            if wide and rows_folded:
                with phase("GEMM dx"):
                    input_gradient_rows(dy_chunk, w, dx_padded[lo:hi])
                return
            with phase("GEMM dx"):
                if wide:
                    dy_wide = np.zeros((hi - lo, f, oh, wp), dtype=dy.dtype)
                    dy_wide[..., :ow] = dy_chunk
                    dcols = np.matmul(w_cols, dy_wide.reshape(hi - lo, f, oh * wp))
                else:
                    dcols = np.matmul(w_cols, dy_chunk_mat)
            with phase("col2im"):
                if wide:
                    col2im_rows(dcols, dx_padded[lo:hi], kernel, oh)
                else:
                    col2im(dcols, dx_padded[lo:hi], kernel, stride, (oh, ow))

        with shared_among_threads():
            share_chunks(chunk, chunks)
        with phase("sum of chunks"):
            total = parts.sum(axis=0)
            dw, db = total[:k].T.reshape(w.shape), total[k].copy()
        if not need_dx:
            return None, dw, db
        ph, pw = padding
        return dx_padded[:, :, ph:x_padded_shape[2] - ph, pw:x_padded_shape[3] - pw], dw, db
