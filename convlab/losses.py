"""Loss functions: each returns the loss and its gradient with respect to the logits."""

import numpy as np


def softmax(logits):
    """Row-wise softmax of (N, K) logits, computed stably (the row max is subtracted)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels.

    logits (N, K) float, labels (N,) int in [0, K) -> (loss: float, dlogits (N, K)).
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


def check_labels(logits, labels):
    """Refuse ``labels`` that are not (N,) integers in [0, K) for ``logits`` (N, K)."""
    if not isinstance(logits, np.ndarray) or logits.ndim != 2:
        got = f"shape {logits.shape}" if isinstance(logits, np.ndarray) else type(logits).__name__
        raise ValueError(f"logits must be a numpy array (N, classes), got {got}")
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
