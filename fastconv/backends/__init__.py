"""The one registry of backends.

A backend is a module that implements the same primitives (listed in
``PRIMITIVES``); the functional layer validates arguments, computes geometry
(``fastconv._shapes``) and then calls ``resolve(op, backend).<primitive>``.
Backend modules are imported lazily, so ``import fastconv`` stays cheap and a
missing optional dependency (numba-cuda, a failed Cython build) only makes
that one backend unavailable.

Primitives (all arrays C-contiguous, already validated, output allocated by
the backend; ``g`` is a ``ConvGeometry`` or ``PoolGeometry``):

``conv2d_forward(x, weight, bias, g, packed=None) -> y``
    ``bias`` is None or a 1-D array of ``g.out_channels``. ``packed`` is
    None or a ``fastconv._packed.PackedWeights`` in which a backend may keep
    forms it computes from ``weight`` (others ignore it).
``conv2d_backward(grad_output, x, weight, g, need_input_grad) -> (grad_input, grad_weight, grad_bias)``
    ``grad_input`` is None when ``need_input_grad`` is False.
``max_pool2d_forward(x, g) -> (y, indices)``
    indices int64, flat position inside each input H*W plane.
``max_pool2d_backward(grad_output, indices, g) -> grad_input``
``avg_pool2d_forward(x, g, divisors) -> y``
    ``divisors`` is the float64 ``(out_height, out_width)`` table from
    ``_shapes.avg_pool_divisors``.
``avg_pool2d_backward(grad_output, g, divisors) -> grad_input``
``dropout_mask(size, threshold, seed, like=None) -> bool array of length size``
    element i is kept iff ``keep_bits(seed_key(seed), i) >= threshold`` (the
    counter-based hash of ``fastconv._dropout_hash``). ``like`` is the array
    the mask will be applied to, or None: a backend with a device returns
    the mask where ``like`` lives (on the device for a device array, so that
    dropout of a device array never copies its mask to the host); the CPU
    backends always return NumPy.
``dropout_apply(x, mask, scale) -> x * mask * scale`` (same dtype as x)
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading

PRIMITIVES = (
    "conv2d_forward",
    "conv2d_backward",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "dropout_mask",
    "dropout_apply",
)

# name -> module that implements every primitive
_MODULES = {
    "naive": "fastconv.backends.naive",
    "numba": "fastconv.backends.numba_cpu",
    "cython": "fastconv.backends.cython_cpu",
    "cuda": "fastconv.backends.cuda",
}

# What 'auto' runs for each primitive, fastest first, as measured by
# `python benchmarks/report.py --fastest` on the 2-core development machine
# (conv2d is close to a tie; Cython's scatter and elementwise loops win the
# two marked below). The naive reference is the last resort, so 'auto'
# always works.
_AUTO_ORDER = {
    primitive: ("numba", "cython", "naive") for primitive in PRIMITIVES
}
_AUTO_ORDER["max_pool2d_backward"] = ("cython", "numba", "naive")
# conv2d: the Cython backend has the Winograd path for 3x3 stride-1 layers
# (benchmarks/report.py --ops conv2d, issue 9).
_AUTO_ORDER["conv2d_forward"] = ("cython", "numba", "naive")
_AUTO_ORDER["conv2d_backward"] = ("cython", "numba", "naive")
_AUTO_ORDER["dropout_apply"] = ("cython", "numba", "naive")

VALID_NAMES = ("auto",) + tuple(_MODULES)

_loaded: dict[str, object] = {}
_unavailable: dict[str, str] = {}
_state = threading.local()
_default = {"name": None}


def _load(name: str):
    """Import a backend module once; remember why it failed if it did."""
    if name in _loaded:
        return _loaded[name]
    if name in _unavailable:
        return None
    try:
        module = importlib.import_module(_MODULES[name])
        reason = module.unavailable_reason() if hasattr(
            module, "unavailable_reason") else None
    except Exception as exc:  # ImportError, or a broken toolkit
        module, reason = None, f"{type(exc).__name__}: {exc}"
    if reason is not None:
        _unavailable[name] = reason
        return None
    _loaded[name] = module
    return module


def _check_name(name) -> str:
    if not isinstance(name, str):
        raise TypeError(
            f"backend must be a str, one of {list(VALID_NAMES)}; got "
            f"{type(name).__name__}")
    if name not in VALID_NAMES:
        raise ValueError(
            f"unknown backend {name!r}; valid backends are {list(VALID_NAMES)}")
    return name


def is_available(name: str) -> bool:
    """Whether the backend ``name`` can run here (imports only that one)."""
    return name in _MODULES and _load(name) is not None


def available_backends() -> list[str]:
    """Names of the backends that can run here (``'auto'`` not included)."""
    return [name for name in _MODULES if is_available(name)]


def unavailable_reasons() -> dict[str, str]:
    """For each backend that cannot run here, why not."""
    for name in _MODULES:
        _load(name)
    return dict(_unavailable)


def get_backend() -> str:
    """The backend used when a call passes ``backend=None``."""
    name = getattr(_state, "name", None) or _default["name"]
    if name is None:
        name = _check_name(os.environ.get("FASTCONV_BACKEND", "auto") or "auto")
        _default["name"] = name
    return name


def set_backend(name: str) -> None:
    """Set the process-wide default backend (``'auto'`` restores the default)."""
    _require(_check_name(name))
    _default["name"] = name


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: run the enclosed calls (in this thread) on ``name``."""
    _require(_check_name(name))
    previous = getattr(_state, "name", None)
    _state.name = name
    try:
        yield
    finally:
        _state.name = previous


def _require(name: str):
    """The backend module for a concrete name, or a RuntimeError saying why not."""
    if name == "auto":
        return None
    module = _load(name)
    if module is None:
        raise RuntimeError(
            f"backend {name!r} is not available here: {_unavailable[name]}")
    return module


def resolve(primitive: str, backend=None):
    """The module that will run ``primitive`` for a call's ``backend=`` value."""
    name = get_backend() if backend is None else _check_name(backend)
    if name != "auto":
        return _require(name)
    for candidate in _AUTO_ORDER[primitive]:
        module = _load(candidate)
        if module is not None:
            return module
    raise RuntimeError("no CPU backend is available")  # naive always is


def backend_name(module) -> str:
    """The registry name of a loaded backend module."""
    for name, loaded in _loaded.items():
        if loaded is module:
            return name
    raise KeyError(module)
