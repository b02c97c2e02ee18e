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
    """
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_probs = shifted - log_norm
    loss = -log_probs[np.arange(n), labels].mean()
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), labels] -= 1
    dlogits /= n
    return float(loss), dlogits.astype(logits.dtype, copy=False)
