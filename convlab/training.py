"""Training and evaluation loops for a classifier on (N, C, H, W) images."""

from __future__ import annotations

import numbers
import time
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from convlab import profile
from convlab.layers import forward_only
from convlab.losses import check_labels, softmax_cross_entropy
from convlab.profile import phase
from convlab.threads import single_threaded_blas


class TrainingDiverged(ValueError):
    """The loss stopped being a finite number, or exploded (see :class:`DivergenceWatch`)."""


# A loss above DIVERGED_FACTOR * log(classes) (chance level: log(classes), 2.3 for 10) for
# DIVERGED_BATCHES batches in a row is a run that blew up, even while it stays finite:
# at --lr 1e6 the loss sits near 1e6 with accuracy at chance. Healthy runs stay below
# 2 log(classes); at --lr 1 a single batch spikes to 16 log(classes) and recovers.
DIVERGED_FACTOR = 10
DIVERGED_BATCHES = 3


class DivergenceWatch:
    """Raises :class:`TrainingDiverged` when the loss is not finite, or when it has been
    above ``DIVERGED_FACTOR * log(classes)`` for ``DIVERGED_BATCHES`` batches in a row
    within an epoch, or on average over an epoch (which is then not saved: a checkpoint
    keeps the last epoch whose loss was in bounds)."""

    def __init__(self):
        self.exploded = 0
        self.bound = np.inf

    def check(self, loss, classes):
        if not np.isfinite(loss):
            raise TrainingDiverged(f"training diverged: the loss became {loss}")
        self.bound = DIVERGED_FACTOR * np.log(classes)
        self.exploded = self.exploded + 1 if loss > self.bound else 0
        if self.exploded >= DIVERGED_BATCHES:
            raise TrainingDiverged(f"training diverged: the loss stayed above {self.bound:.3g} ({DIVERGED_FACTOR} "
                                   f"times its chance level, log {classes}) for {self.exploded} batches, "
                                   f"reaching {loss:.3g}")

    def check_epoch(self, mean_loss, epoch, lr, test_logits=None):
        """After an epoch: its mean loss in bounds, and the logits its weights give on the
        test images (``test_logits``, if given) finite. The last step's update can blow the
        weights up after a finite loss (``--lr 1e20``, one step): they gave NaN logits, an
        accuracy of NaN's arg-max, and were saved with an exit status of 0."""
        if mean_loss > self.bound:
            raise TrainingDiverged(f"training diverged: the mean loss of epoch {epoch} was {mean_loss:.3g}, above "
                                   f"{self.bound:.3g} ({DIVERGED_FACTOR} times its chance level); "
                                   f"try a lower learning rate (now {lr})")
        if test_logits is not None and not np.isfinite(test_logits).all():
            raise TrainingDiverged(f"training diverged: after epoch {epoch}, the network's outputs on the test "
                                   f"images are not finite (its last updates overflowed); try a lower learning "
                                   f"rate (now {lr})")


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    seconds: float

    def as_dict(self):
        return asdict(self)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled sample order of one epoch: a pure function of (seed, epoch), so a run
    resumed at any epoch sees exactly the batches an uninterrupted run would."""
    return np.random.default_rng([seed, epoch]).permutation(n)


# Images per forward pass of an evaluation (see predict_logits).
EVALUATION_BATCH = 128


def evaluation_batch_size(test_size, test_images) -> int:
    """The largest batch an evaluation of the test images forms (for the memory check):
    :data:`EVALUATION_BATCH`, or all the images used if fewer (``test_size``, else the
    ``test_images`` of the split; None: not known)."""
    return min(filter(None, (EVALUATION_BATCH, test_size, test_images)))


def predict_logits(model, x, batch_size=EVALUATION_BATCH) -> np.ndarray:
    """Logits (N, K) for images x (N, C, H, W), computed batch by batch.

    Batches of 128 images keep each layer's arrays (a few MB) in the allocator's reusable
    heap and near the caches (when im2col's forward kept its unrolled matrix here too,
    batches of 500 took about twice as long per image). The layers run forward-only (:func:`convlab.layers.forward_only`): no ReLU mask, no caches
    kept for a backward, and each convolution's inference pass
    (:meth:`convlab.registry.Backend.inference`).

    An ``x`` without images, or a ``batch_size`` that is not a whole number ≥ 1, is refused
    with a ValueError (they failed in numpy: "need at least one array to concatenate",
    "range() arg 3 must not be zero"); what ``x`` holds is checked by the model's forward.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (images per forward pass), got {batch_size!r}")
    if not isinstance(x, np.ndarray) or x.ndim == 0 or len(x) == 0:
        got = f"shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"x must be a numpy array of at least one image (N, C, H, W), got {got}")
    with profile.paused(), single_threaded_blas(), forward_only():
        return np.concatenate([model.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def accuracy(model, x, y, batch_size=EVALUATION_BATCH) -> float:
    """Fraction of ``x`` (N, C, H, W) whose arg-max logit equals the label ``y`` (N,).

    ``y`` is checked as the loss checks it (:func:`convlab.losses.check_labels`): labels
    (N, 1), as HDF5 files often store them, would broadcast against the (N,) predictions
    into an (N, N) comparison and give a wrong accuracy without a word.
    """
    return accuracy_of(predict_logits(model, x, batch_size), y)


def accuracy_of(logits, y) -> float:
    """Fraction of the rows of ``logits`` (N, K) whose arg-max is the label ``y`` (N,),
    checked as in :func:`accuracy`."""
    check_labels(logits, y)
    return float((logits.argmax(axis=1) == y).mean())


def train_step(model, optimizer, x, y, watch=None):
    """One SGD step on the batch x (B, C, H, W), labels y (B,); returns (loss, number correct).
    ``watch`` (a :class:`DivergenceWatch`; default: a new one) checks the loss first.

    BLAS stays on one thread throughout: the layers share their work among the cores
    themselves (:mod:`convlab.threads`), and a BLAS thread left spinning after a product
    would hold a core they need.
    """
    with single_threaded_blas():
        logits = model.forward(x)
        with phase("loss"):
            loss, dlogits = softmax_cross_entropy(logits, y)
        (watch or DivergenceWatch()).check(loss, logits.shape[1])
        model.backward(dlogits)
        with phase("optimizer"):
            optimizer.step()
        with phase("accuracy count"):
            return loss, int(np.count_nonzero(logits.argmax(axis=1) == y))


class ProgressBar(tqdm):
    """tqdm without its monitor thread, which it starts with its first bar (drawn or not) to
    lower ``miniters`` of bars updated less often than every 10 s: one thread more, with
    its stack and malloc arena, which under ``ulimit -v`` may not start (tqdm then warns in
    three lines). Bars here are updated every batch, and redrawn at most every 0.1 s anyway."""

    monitor_interval = 0


def train_epoch(model, optimizer, x, y, batch_size, seed, epoch, progress=True, on_batch=None, watch=None):
    """One pass over (x, y) in minibatches; returns (mean loss, training accuracy).
    ``on_batch()``, if given, is called after each step (a safe point to stop at).

    Each batch is gathered by index from the full arrays: the data set is never copied
    as a whole. Raises :class:`TrainingDiverged` as soon as the loss is not finite, or
    has exploded (``watch``, a :class:`DivergenceWatch`: the caller then checks the epoch's
    mean loss against its bound).
    The progress bar (``progress``) is drawn only when stderr is a terminal: in a log
    file, its carriage-return updates would be thousands of lines.
    """
    order = epoch_order(len(x), seed, epoch)
    watch = watch or DivergenceWatch()
    total_loss, correct = 0.0, 0
    batches = range(0, len(x), batch_size)
    bar = ProgressBar(batches, desc=f"epoch {epoch}", unit="batch", leave=False, disable=None if progress else True)
    for start in bar:
        started = time.perf_counter()
        idx = order[start:start + batch_size]
        with phase("batch gathering"):
            x_batch, y_batch = x[idx], y[idx]
        try:
            loss, batch_correct = train_step(model, optimizer, x_batch, y_batch, watch)
        except TrainingDiverged as e:
            raise TrainingDiverged(f"{e} at epoch {epoch}, batch {start // batch_size + 1}; "
                                   f"try a lower learning rate (now {optimizer.lr})") from None
        total_loss += loss * len(idx)
        correct += batch_correct
        profile.count_step(time.perf_counter() - started)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if on_batch is not None:
            on_batch()
    return total_loss / len(x), correct / len(x)


def fit(model, optimizer, data, epochs, batch_size, seed, start_epoch=1, progress=True, on_epoch=None,
        on_batch=None, lr_at=None):
    """Train for epochs ``start_epoch .. epochs`` on ``data`` (a :class:`~convlab.data.Dataset`).

    ``lr_at(epoch)``, if given, sets the optimizer's learning rate at the start of each epoch.

    After each epoch, ``on_epoch(metrics)`` is called with its :class:`EpochMetrics`;
    after each batch, ``on_batch()``.
    Returns the list of metrics.
    """
    history = []
    for epoch in range(start_epoch, epochs + 1):
        # Counted afresh each epoch: a run resumed at this epoch counts from here too, and
        # so stops (or not) where the uninterrupted run would.
        watch = DivergenceWatch()
        started = time.perf_counter()
        if lr_at is not None:
            optimizer.lr = lr_at(epoch)
        # Overflow ends in a non-finite loss, reported once as TrainingDiverged, not as numpy warnings.
        with np.errstate(over="ignore", invalid="ignore"):
            loss, train_acc = train_epoch(model, optimizer, data.x_train, data.y_train, batch_size, seed, epoch,
                                          progress, on_batch, watch)
            seconds = time.perf_counter() - started
            test_logits = predict_logits(model, data.x_test)
        watch.check_epoch(loss, epoch, optimizer.lr, test_logits)
        metrics = EpochMetrics(epoch, loss, train_acc, accuracy_of(test_logits, data.y_test), seconds)
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    return history
