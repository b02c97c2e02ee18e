"""Loss functions: each returns the loss and its gradient with respect to the logits."""

import numpy as np

from convlab.checks import FLOAT_DTYPES


def softmax(logits):
    """Row-wise softmax of (N, K) float logits, computed stably (the row max is subtracted).
    Logits are checked first (:func:`check_logits`)."""
    check_logits(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels.

    logits (N, K) float32 or float64, labels (N,) int in [0, K) -> (loss: float, dlogits (N, K)
    in the logits' dtype).
    Uses log-sum-exp, so large logits neither overflow nor lose the loss to log(0).
    Labels are checked (a min and a max over N labels): numpy would read -1 as the last
    class, and fail on K or on float labels with an indexing error.
    """
    check_labels(logits, labels)
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_probs = shifted - log_norm
    loss = -log_probs[np.arange(n), labels].mean()
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), labels] -= 1
    dlogits /= n
    return float(loss), dlogits.astype(logits.dtype, copy=False)


def check_logits(logits):
    """Refuse ``logits`` that are not a float32 or float64 numpy array (N, K): a list or a
    1-D array failed inside numpy (AttributeError, AxisError), and integer logits gave the
    right loss but a gradient cast back to integers, all zeros. NaN and infinite values are
    let through: a loss that stops being finite is how training notices it diverged."""
    if not isinstance(logits, np.ndarray) or logits.ndim != 2:
        got = f"shape {logits.shape}" if isinstance(logits, np.ndarray) else type(logits).__name__
        raise ValueError(f"logits must be a numpy array (N, classes) of floats, got {got}")
    if logits.dtype.type not in FLOAT_DTYPES:
        raise ValueError(f"logits must be float32 or float64, got {logits.dtype}")


def check_labels(logits, labels):
    """Refuse ``logits`` that are not (N, K) floats (:func:`check_logits`), and ``labels``
    that are not (N,) integers in [0, K)."""
    check_logits(logits)
    n, classes = logits.shape
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        got = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise ValueError(f"labels must be a numpy array of integers (class indices 0 to {classes - 1}), got {got}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), one per row of logits {logits.shape}, got {labels.shape}")
    low, high = (labels.min(), labels.max()) if n else (0, 0)
    if low < 0 or high >= classes:
        raise ValueError(f"labels must be class indices from 0 to {classes - 1} (logits have {classes} columns), "
                         f"got {low if low < 0 else high}")
