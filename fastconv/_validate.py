"""Argument checks with messages that name the argument and what was expected.

Everything here raises ``TypeError`` (wrong kind of thing) or ``ValueError``
(right kind, bad value). Backends trust their callers and check nothing.
"""

from __future__ import annotations

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: The largest size, stride, padding, dilation, kernel size, group count or
#: output length a call may name (2**31 - 1). The kernels index with int64;
#: BLAS (the GEMM sizes and leading dimensions of the convolutions) and CUDA
#: grids take int32. Any product of two such values fits int64.
MAX_AXIS = 2**31 - 1

#: The most elements an array a call reads or produces may have (2**60):
#: flat int64 indices, and its size in bytes (at most 8 per element), fit
#: int64. Beyond this NumPy says "Maximum allowed dimension exceeded".
MAX_ELEMENTS = 2**60


def is_device_array(value) -> bool:
    """True for a GPU array: anything with ``__cuda_array_interface__`` (Numba,
    CuPy, PyTorch CUDA) or a Numba device array (the simulator's have no
    interface, only Numba's ``__cuda_ndarray__`` mark)."""
    return (not isinstance(value, np.ndarray)
            and (getattr(value, "__cuda_ndarray__", False) is True
                 or hasattr(value, "__cuda_array_interface__")))


def dtype_of(value) -> np.dtype:
    """The NumPy dtype of an ndarray or of a device array."""
    if isinstance(value, np.ndarray):
        return value.dtype
    interface = getattr(value, "__cuda_array_interface__", None)
    if interface is not None:
        return np.dtype(interface["typestr"])
    return np.dtype(value.dtype)


def device_float_array(value, name: str, ndim: int | None = None):
    """A device array checked like ``float_array`` and returned as is (the
    backend that takes device arrays makes it contiguous on the device)."""
    dtype = dtype_of(value)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have dtype float32 or float64, got {dtype}")
    if ndim is not None and len(value.shape) != ndim:
        raise ValueError(
            f"{name} must be {ndim}-D, got shape {tuple(value.shape)} "
            f"({len(value.shape)}-D)")
    return value


def float_array(value, name: str, ndim: int | None = None,
                device: bool = False) -> np.ndarray:
    """A float32/float64 ndarray of the given ndim, C-contiguous (copied if not).

    With ``device=True`` (the call runs on a backend that takes GPU arrays) a
    device array passes too, see ``device_float_array``.
    """
    if device and is_device_array(value):
        return device_float_array(value, name, ndim)
    if not isinstance(value, np.ndarray):
        if is_device_array(value):
            raise TypeError(
                f"{name} is a GPU array ({type(value).__name__}); only "
                f"backend='cuda' takes those, other backends need a "
                f"numpy.ndarray")
        raise TypeError(
            f"{name} must be a numpy.ndarray, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have dtype float32 or float64, got {value.dtype}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(
            f"{name} must be {ndim}-D, got shape {value.shape} ({value.ndim}-D)")
    if ndim is not None and value.size:
        # before the copy: a broadcast view may name any shape
        at_most_max_axis(value.shape, f"every axis of {name}", value.shape)
        array_size(value.shape, name)
    return np.ascontiguousarray(value)


#: What max pooling takes besides the float dtypes; the result keeps the
#: dtype, padding counting as its minimum.
INTEGER_MAX_POOL_DTYPES = tuple(np.dtype(t) for t in (
    np.uint8, np.int8, np.int16, np.int32, np.int64))


def max_pool_array(value, name: str, ndim: int,
                   device: bool = False) -> np.ndarray:
    """``float_array``, but an integer ndarray of INTEGER_MAX_POOL_DTYPES
    passes too (max pooling keeps the dtype; CPU backends only)."""
    dtype = dtype_of(value) if (isinstance(value, np.ndarray)
                                or is_device_array(value)) else None
    if dtype is None or dtype not in INTEGER_MAX_POOL_DTYPES:
        if dtype is not None and dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{name} must have dtype float32, float64, uint8, int8, "
                f"int16, int32 or int64, got {dtype}")
        return float_array(value, name, ndim, device=device)
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"{name} is a GPU array of {dtype}; integer max pooling runs on "
            f"the CPU backends only (backend='cuda' takes float32 or "
            f"float64)")
    if value.ndim != ndim:
        raise ValueError(
            f"{name} must be {ndim}-D, got shape {value.shape} ({value.ndim}-D)")
    return np.ascontiguousarray(value)


def same_dtype(first: np.ndarray, first_name: str, second: np.ndarray,
               second_name: str) -> None:
    first_dtype, second_dtype = dtype_of(first), dtype_of(second)
    if first_dtype != second_dtype:
        raise TypeError(
            f"{first_name} and {second_name} must share a dtype, got "
            f"{first_dtype} and {second_dtype}")


def accumulator(value, name: str, like, others=()) -> np.ndarray:
    """An array that a result is added into in place: a writeable
    C-contiguous numpy array of ``like``'s shape and dtype (``like`` a
    numpy array itself) that shares no memory with ``like`` or ``others``."""
    if not isinstance(like, np.ndarray):
        raise TypeError(f"{name} works on numpy arrays; the inputs are "
                        f"{type(like).__name__}")
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray, got {type(value).__name__}")
    if value.shape != like.shape or value.dtype != like.dtype:
        raise ValueError(
            f"{name} must have shape {like.shape} and dtype {like.dtype}, "
            f"got {value.shape} {value.dtype}")
    if not (value.flags.c_contiguous and value.flags.writeable):
        raise ValueError(f"{name} must be C-contiguous and writeable")
    for other in (like,) + tuple(others):
        if isinstance(other, np.ndarray) and np.may_share_memory(value,
                                                                 other):
            raise ValueError(f"{name} must not share memory with the "
                             f"inputs")
    return value


def _int(value, name: str, expected: str = "an int or a pair of ints"
         ) -> int:
    if type(value) is int:  # the common case, without the ABC check
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, numbers.Integral):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def at_most_max_axis(values, name: str, given) -> None:
    """ValueError naming ``name`` when a value exceeds ``MAX_AXIS``."""
    if max(values) > MAX_AXIS:
        raise ValueError(
            f"{name} must be at most 2**31 - 1 = {MAX_AXIS}, got {given!r}")


def pair(value, name: str, minimum: int) -> tuple[int, int]:
    """An int or a 2-sequence of ints, each in [minimum, MAX_AXIS], as a pair."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(
                f"{name} must be an int or a pair of ints, got {value!r}")
        result = (_int(value[0], name), _int(value[1], name))
    else:
        result = (_int(value, name),) * 2
    if min(result) < minimum:
        what = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    at_most_max_axis(result, name, value)
    return result


def _before_after(value, name: str, expected: str) -> tuple[int, int]:
    """An int p as (p, p), or a (before, after) 2-sequence of ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be {expected}, got {value!r}")
        return (_int(value[0], name, expected), _int(value[1], name, expected))
    return (_int(value, name, expected),) * 2


def padding_2d(value, name: str = "padding") -> tuple[int, int, int, int]:
    """Padding of a 2-D window as ``(top, left, bottom, right)``, each in
    [0, MAX_AXIS].

    ``value`` is an int (every side), a pair ``(pad_h, pad_w)`` (PyTorch's:
    top and bottom pad_h, left and right pad_w) or ``((top, bottom), (left,
    right))`` as in ``numpy.pad``.
    """
    expected = ("an int, a pair (pad_h, pad_w) or ((top, bottom), "
                "(left, right))")
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(side, (tuple, list)) for side in value):
        (top, bottom), (left, right) = (
            _before_after(side, name, expected) for side in value)
    elif isinstance(value, (tuple, list)) and any(
            isinstance(side, (tuple, list)) for side in value):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    else:
        top, left = _before_after(value, name, expected)
        bottom, right = top, left
    pads = (top, left, bottom, right)
    if min(pads) < 0:
        raise ValueError(f"{name} must be >= 0 on every side, got {value!r}")
    at_most_max_axis(pads, name, value)
    return pads


def padding_1d(value, name: str = "padding") -> tuple[int, int]:
    """Padding of a 1-D window as ``(left, right)``: an int (both sides) or
    a ``(left, right)`` pair, each in [0, MAX_AXIS]."""
    pads = _before_after(value, name, "an int or a pair (left, right)")
    if min(pads) < 0:
        raise ValueError(f"{name} must be >= 0 on both sides, got {value!r}")
    at_most_max_axis(pads, name, value)
    return pads


def positive_int(value, name: str) -> int:
    """An int in [1, MAX_AXIS]."""
    result = _int(value, name, "an int")
    if result < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    at_most_max_axis((result,), name, value)
    return result


def probability(value, name: str = "p") -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1], got {value!r}")
    result = float(value)
    if not 0.0 <= result <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return result


def seed(value, name: str = "seed") -> int:
    result = _int(value, name) if not isinstance(value, (tuple, list)) else None
    if result is None:
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not 0 <= result < 2**64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value!r}")
    return result


def shape4(value, name: str) -> tuple[int, int, int, int]:
    """A 4-sequence (N, C, H, W) of ints, each in [1, MAX_AXIS], with at most
    MAX_ELEMENTS elements in all."""
    if not isinstance(value, (tuple, list)) or len(value) != 4:
        raise ValueError(
            f"{name} must be a 4-tuple (N, C, H, W), got {value!r}")
    result = tuple(_int(v, name, "a tuple of ints") for v in value)
    if min(result) < 1:
        raise ValueError(f"{name} must have positive sizes, got {value!r}")
    at_most_max_axis(result, f"each size in {name}", value)
    array_size(result, name)
    return result


def array_size(shape, what: str) -> int:
    """The element count of ``shape``; ValueError naming ``what`` past
    MAX_ELEMENTS (checked before anything of that shape is allocated)."""
    size = 1
    for extent in shape:
        size *= int(extent)
    if size > MAX_ELEMENTS:
        raise ValueError(
            f"{what} would have {size} elements (shape {tuple(shape)}), more "
            f"than the 2**60 fastconv's int64 indexing allows")
    return size


def nonempty_output(out_height: int, out_width: int, what: str) -> None:
    """The output lengths of a window sweep: each in [1, MAX_AXIS]."""
    if out_height < 1 or out_width < 1:
        raise ValueError(
            f"{what}: the output would be empty ({max(out_height, 0)}x"
            f"{max(out_width, 0)}); the input is too small for this "
            f"kernel_size/padding/dilation")
    if max(out_height, out_width) > MAX_AXIS:
        raise ValueError(
            f"{what}: the output would be {out_height}x{out_width}, longer "
            f"than 2**31 - 1 on an axis; padding is too large for this input")


def grad_shape(grad_output: np.ndarray, expected, name: str = "grad_output"):
    if tuple(grad_output.shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {tuple(expected)} (the forward output), "
            f"got {tuple(grad_output.shape)}")
