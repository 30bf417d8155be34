"""Cross-entropy on logits, as ``torch.nn.CrossEntropyLoss``."""

from __future__ import annotations

import numpy as np

from fastconv.nn.module import FLOAT_DTYPES, Module

__all__ = ["CrossEntropyLoss", "log_softmax", "softmax"]


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax (the max is subtracted first)."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.exp(log_softmax(logits, axis))


class CrossEntropyLoss(Module):
    """Mean (or summed) negative log-likelihood of the targets under
    ``softmax(logits)``.

    ``loss = loss_fn(logits, targets)`` with logits (N, num_classes) float and
    targets (N,) integer class indices; returns a Python float.
    ``grad_logits = loss_fn.backward()`` is d loss / d logits, (N,
    num_classes), in the logits' dtype. ``label_smoothing`` mixes the one-hot
    target with the uniform distribution, as PyTorch does.
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(
                f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(
                f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)

    def _target_distribution(self, targets, num_classes, dtype):
        distribution = np.zeros((targets.shape[0], num_classes), dtype=dtype)
        distribution[np.arange(targets.shape[0]), targets] = 1.0
        if self.label_smoothing:
            distribution *= 1.0 - self.label_smoothing
            distribution += self.label_smoothing / num_classes
        return distribution

    def forward(self, logits, targets) -> float:
        logits = np.asarray(logits)
        targets = np.asarray(targets)
        if logits.dtype not in FLOAT_DTYPES or logits.ndim != 2:
            raise ValueError(
                f"logits must be a 2-D float array (N, num_classes), got "
                f"{logits.dtype} {logits.shape}")
        if targets.dtype.kind not in "iu" or targets.shape != logits.shape[:1]:
            raise ValueError(
                f"targets must be integer class indices of shape "
                f"({logits.shape[0]},), got {targets.dtype} {targets.shape}")
        num_classes = logits.shape[1]
        if targets.size and (targets.min() < 0 or targets.max() >= num_classes):
            raise ValueError(
                f"targets must lie in [0, {num_classes}), got values in "
                f"[{targets.min()}, {targets.max()}]")
        log_probabilities = log_softmax(logits, axis=1)
        target_distribution = self._target_distribution(
            targets, num_classes, logits.dtype)
        per_sample = -(target_distribution * log_probabilities).sum(axis=1)
        divisor = logits.shape[0] if self.reduction == "mean" else 1
        self.save_for_backward(log_probabilities, target_distribution, divisor)
        return float(per_sample.sum() / divisor)

    def backward(self, grad_output=1.0) -> np.ndarray:
        log_probabilities, target_distribution, divisor = self.pop_saved()
        grad = np.exp(log_probabilities) - target_distribution
        grad *= np.asarray(grad_output / divisor, dtype=grad.dtype)
        return grad

    def extra_repr(self):
        return f"reduction={self.reduction!r}"
