"""The classic image-filtering kernels, as float64 NumPy arrays.

Every kernel is meant for ``fastconv.filter2d``, which computes a
cross-correlation: ``out[i, j] = sum_rs image[i + r - top, j + s - left] *
kernel[r, s]``. The asymmetric kernels below (``sobel_x``, ``emboss`` ...) are
written for that orientation: ``sobel_x`` is positive where brightness grows
to the right, ``sobel_y`` where it grows downwards.

``get(name)`` builds a kernel from a short text, the form the CLI takes:
``"sharpen"``, ``"box_blur:5"``, ``"gaussian:7,1.5"``,
``"unsharp_mask:5,1.0,1.5"``. ``names()`` lists the names ``get`` knows.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "identity", "sharpen", "box_blur", "gaussian", "laplacian", "sobel_x",
    "sobel_y", "prewitt_x", "prewitt_y", "emboss", "outline", "unsharp_mask",
    "get", "names", "describe",
]


#: Largest kernel side the builders make: a 1025 x 1025 float64 kernel is
#: 8 MiB, and a kernel wider than that is better done another way (a size
#: from a command line must not ask for gigabytes).
MAX_SIZE = 1025


def _size(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if not 1 <= value <= MAX_SIZE:
        raise ValueError(f"{name} must be an int from 1 to {MAX_SIZE}, got "
                         f"{value!r}")
    return int(value)


def _positive_real(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    result = float(value)
    if not result > 0 or not math.isfinite(result):
        raise ValueError(f"{name} must be a positive finite number, got "
                         f"{value!r}")
    return result


def identity() -> np.ndarray:
    """3x3: 1 in the centre; leaves an image unchanged."""
    kernel = np.zeros((3, 3))
    kernel[1, 1] = 1.0
    return kernel


def sharpen() -> np.ndarray:
    """3x3: centre 5, the four edge neighbours -1 (sums to 1)."""
    return np.array([[0.0, -1.0, 0.0],
                     [-1.0, 5.0, -1.0],
                     [0.0, -1.0, 0.0]])


def box_blur(size: int = 3) -> np.ndarray:
    """``size`` x ``size`` mean filter (every weight ``1 / size**2``)."""
    size = _size(size, "size")
    return np.full((size, size), 1.0 / (size * size))


def gaussian(size: int = 5, sigma: float | None = None) -> np.ndarray:
    """``size`` x ``size`` Gaussian blur, normalised to sum to 1, symmetric.

    The weights are ``exp(-(dy**2 + dx**2) / (2 sigma**2))`` at offsets from
    the kernel's centre ``(size - 1) / 2`` (a half-integer for even sizes).
    ``sigma=None`` takes OpenCV's rule ``0.3 ((size - 1) / 2 - 1) + 0.8``.
    """
    size = _size(size, "size")
    if sigma is None:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    sigma = _positive_real(sigma, "sigma")
    offsets = np.arange(size) - (size - 1) / 2.0
    # Dividing by sigma before squaring keeps a tiny sigma (whose square
    # underflows to 0) from making 0 / 0 at the centre: the kernel tends to
    # the delta it should.
    with np.errstate(over="ignore"):
        profile = np.exp(-0.5 * (offsets / sigma) ** 2)
    if not profile.sum() > 0:
        # an even size's nearest taps are half a pixel out: with a sigma
        # this small every weight underflows to 0, the limit is their mean
        profile = (np.abs(offsets) == 0.5).astype(np.float64)
    profile /= profile.sum()
    # The outer product of a normalised profile is normalised and exactly
    # symmetric under both flips.
    return np.outer(profile, profile)


def laplacian() -> np.ndarray:
    """3x3 4-neighbour Laplacian (sums to 0): responds to edges and spots."""
    return np.array([[0.0, 1.0, 0.0],
                     [1.0, -4.0, 1.0],
                     [0.0, 1.0, 0.0]])


def sobel_x() -> np.ndarray:
    """3x3 Sobel derivative along x (columns): positive for rising brightness."""
    return np.array([[-1.0, 0.0, 1.0],
                     [-2.0, 0.0, 2.0],
                     [-1.0, 0.0, 1.0]])


def sobel_y() -> np.ndarray:
    """3x3 Sobel derivative along y (rows): positive for rising brightness."""
    return sobel_x().T.copy()


def prewitt_x() -> np.ndarray:
    """3x3 Prewitt derivative along x (columns)."""
    return np.array([[-1.0, 0.0, 1.0],
                     [-1.0, 0.0, 1.0],
                     [-1.0, 0.0, 1.0]])


def prewitt_y() -> np.ndarray:
    """3x3 Prewitt derivative along y (rows)."""
    return prewitt_x().T.copy()


def emboss() -> np.ndarray:
    """3x3 emboss (sums to 1): relief lit from the bottom right."""
    return np.array([[-2.0, -1.0, 0.0],
                     [-1.0, 1.0, 1.0],
                     [0.0, 1.0, 2.0]])


def outline() -> np.ndarray:
    """3x3 8-neighbour edge detector: centre 8, neighbours -1 (sums to 0)."""
    kernel = -np.ones((3, 3))
    kernel[1, 1] = 8.0
    return kernel


def unsharp_mask(size: int = 5, sigma: float = 1.0,
                 amount: float = 1.0) -> np.ndarray:
    """Unsharp masking as one kernel: ``image + amount (image - blurred)``.

    ``blurred`` is ``gaussian(size, sigma)``; the kernel is
    ``(1 + amount) delta - amount gaussian`` and sums to 1. ``size`` must be
    odd so the delta has a centre.
    """
    size = _size(size, "size")
    if size % 2 == 0:
        raise ValueError(f"size must be odd for unsharp_mask, got {size}")
    amount = _positive_real(amount, "amount")
    kernel = -amount * gaussian(size, sigma)
    kernel[size // 2, size // 2] += 1.0 + amount
    return kernel


# name -> (builder, one-line description for --list-kernels)
_REGISTRY = {
    "identity": (identity, "leaves the image unchanged"),
    "sharpen": (sharpen, "3x3 sharpen, centre 5, neighbours -1"),
    "box_blur": (box_blur, "box_blur[:size=3] mean filter"),
    "gaussian": (gaussian, "gaussian[:size=5[,sigma]] Gaussian blur"),
    "laplacian": (laplacian, "3x3 Laplacian edge/spot detector (edge map)"),
    "sobel_x": (sobel_x, "3x3 Sobel x-derivative (edge map)"),
    "sobel_y": (sobel_y, "3x3 Sobel y-derivative (edge map)"),
    "prewitt_x": (prewitt_x, "3x3 Prewitt x-derivative (edge map)"),
    "prewitt_y": (prewitt_y, "3x3 Prewitt y-derivative (edge map)"),
    "emboss": (emboss, "3x3 emboss relief"),
    "outline": (outline, "3x3 outline, centre 8, neighbours -1 (edge map)"),
    "unsharp_mask": (unsharp_mask,
                     "unsharp_mask[:size=5[,sigma=1[,amount=1]]] sharpening"),
}


def names() -> list[str]:
    """The kernel names ``get`` accepts, in a stable order."""
    return list(_REGISTRY)


def describe(name: str) -> str:
    """One line: what the named kernel does, which parameters it takes."""
    return _REGISTRY[_canonical(name)][1]


def _canonical(name: str) -> str:
    canonical = name.strip().lower().replace("-", "_")
    if canonical not in _REGISTRY:
        raise ValueError(
            f"unknown kernel {name!r}; known kernels are {', '.join(names())}")
    return canonical


def _parse_number(text: str, spec: str):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"kernel parameter {text!r} in {spec!r} is not a number") from None


def get(spec: str) -> np.ndarray:
    """The kernel a short text names: ``"name"`` or ``"name:p1,p2,..."``.

    Parameters go to the named function in order, e.g. ``"gaussian:7,1.5"``
    is ``gaussian(7, 1.5)``. Dashes count as underscores (``"box-blur:5"``).
    Raises ValueError for an unknown name or bad parameters.
    """
    if not isinstance(spec, str):
        raise TypeError(f"kernel name must be a str, got {type(spec).__name__}")
    name, _, parameter_text = spec.partition(":")
    builder = _REGISTRY[_canonical(name)][0]
    parameters = [] if not parameter_text.strip() else [
        _parse_number(part.strip(), spec) for part in parameter_text.split(",")]
    try:
        return builder(*parameters)
    except (TypeError, ValueError) as exc:
        # Wrong count, kind or value of parameters: say so in the spec's terms.
        raise ValueError(f"bad parameters in kernel {spec!r}: {exc}") from None
