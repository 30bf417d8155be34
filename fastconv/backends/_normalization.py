"""The per-channel factors of batch normalisation, in float64, for the
backends that run it as separate passes (naive, numba, cuda); the Cython
kernels form the same factors in C inside their per-channel loop.

Forward: ``y = (x - mean) * scale + shift`` with ``scale = weight /
sqrt(variance + eps)`` and ``shift = bias``. Backward, from the sums
``grad_sum = sum(g)`` and ``grad_dot = sum(g * x)`` of each channel:
``grad_weight = (grad_dot - mean * grad_sum) / sqrt(variance + eps)`` (the
sum of g times the normalised x), ``grad_bias = grad_sum``, and
``grad_input = g * scale + (x - mean) * x_scale + shift``, where with batch
statistics (which depend on every element) ``x_scale = -scale * grad_weight
/ (sqrt(variance + eps) * count)`` and ``shift = -scale * grad_sum /
count``, and with constant statistics both are 0.
"""

from __future__ import annotations

import numpy as np


def inverse_std(variance, eps):
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / np.sqrt(variance + eps)


def forward_factors(variance, weight, bias, eps):
    """(scale, shift), float64 (C,)."""
    scale = inverse_std(variance, eps)
    if weight is not None:
        scale = scale * weight
    shift = np.zeros(variance.shape) if bias is None else bias
    return scale, shift


def backward_factors(grad_sum, grad_dot, mean, variance, weight, eps, count,
                     batch_statistics):
    """(grad_weight, grad_bias, scale, x_scale, shift), float64 (C,)."""
    inv_std = inverse_std(variance, eps)
    grad_weight = (grad_dot - mean * grad_sum) * inv_std
    scale = inv_std if weight is None else weight * inv_std
    if batch_statistics:
        x_scale = -scale * inv_std * grad_weight / count
        shift = -scale * grad_sum / count
    else:
        x_scale = shift = np.zeros(mean.shape)
    return grad_weight, grad_sum, scale, x_scale, shift
