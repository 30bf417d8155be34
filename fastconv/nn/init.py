"""Parameter initialisation as PyTorch does it, from a seedable NumPy generator.

Layers draw their initial weights (and ``Dropout`` its per-module generator)
from ``generator=`` when given, else from this module's default generator,
which ``manual_seed(seed)`` resets: the same seed gives the same network.
"""

from __future__ import annotations

import math

import numpy as np

_default = {"generator": np.random.default_rng()}


def manual_seed(seed: int) -> None:
    """Reset the default generator, so that later layers are reproducible."""
    _default["generator"] = np.random.default_rng(seed)


def default_generator() -> np.random.Generator:
    return _default["generator"]


def as_generator(generator) -> np.random.Generator:
    """``None`` (the default generator), a seed, or a ``Generator``."""
    if generator is None:
        return _default["generator"]
    if isinstance(generator, np.random.Generator):
        return generator
    return np.random.default_rng(generator)


def fan_in_and_fan_out(shape: tuple) -> tuple[int, int]:
    """PyTorch's fans: a conv weight (K, C/g, R, S) has fan_in C/g*R*S."""
    if len(shape) < 2:
        raise ValueError(f"fans need a weight of 2 or more dims, got {shape}")
    receptive_field = math.prod(shape[2:])
    return shape[1] * receptive_field, shape[0] * receptive_field


def uniform(shape, bound: float, dtype, generator=None) -> np.ndarray:
    """Uniform on [-bound, bound), drawn in float64 then cast."""
    values = as_generator(generator).uniform(-bound, bound, size=shape)
    return values.astype(dtype)


def default_weight_and_bias(weight_shape, bias_size, dtype, generator=None):
    """``nn.Conv2d``/``nn.Linear``'s reset_parameters.

    ``kaiming_uniform_(a=sqrt(5))`` gives the bound ``1/sqrt(fan_in)`` for the
    weight, and the bias uses the same bound. Returns ``(weight, bias)``;
    bias is None when ``bias_size`` is None.
    """
    generator = as_generator(generator)
    fan_in, _ = fan_in_and_fan_out(weight_shape)
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    weight = uniform(weight_shape, bound, dtype, generator)
    bias = None if bias_size is None else uniform(
        (bias_size,), bound, dtype, generator)
    return weight, bias


def kaiming_normal(shape, dtype, mode: str = "fan_out", generator=None
                   ) -> np.ndarray:
    """``kaiming_normal_(mode=mode, nonlinearity='relu')``: std sqrt(2/fan)."""
    fan_in, fan_out = fan_in_and_fan_out(shape)
    fan = fan_in if mode == "fan_in" else fan_out
    std = math.sqrt(2.0 / fan)
    return (as_generator(generator).standard_normal(size=shape) * std).astype(
        dtype)
