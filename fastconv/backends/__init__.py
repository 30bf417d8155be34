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
``conv2d_backward(grad_output, x, weight, g, need_input_grad, *, need_weight_grad=True, need_bias_grad=True) -> (grad_input, grad_weight, grad_bias)``
    ``grad_input`` is None when ``need_input_grad`` is False; ``grad_weight``
    and ``grad_bias`` are None when ``need_weight_grad`` is False, and ``x``
    may then be None (only ``g.input_shape`` matters): ``conv_transpose2d``
    runs as the input gradient of a convolution that has no input array;
    ``grad_bias`` is None when ``need_bias_grad`` is False (a backend may
    skip its sum). A backend that sets ``ADDS_INPUT_GRAD`` takes
    ``add_input_grad_to`` too (a validated array of x's shape and dtype:
    add grad_input into it and return it as grad_input); for the others the
    functional layer adds.
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

Batch normalisation works on ``(N, C, L)`` arrays (L = H * W; a device
array may come as ``(N, C, ...)``) with float64 ``(C,)`` statistics and
factors (``weight``, ``bias`` None for 1 and 0), sums in one fixed order
per backend (the same bits for any thread count);
``fastconv.backends._normalization`` has the formulas:

``batch_norm_stats(x) -> (mean, variance)``
    mean and biased variance of each channel over (N, L), the variance as
    the mean of the squares of ``x - mean`` (a second pass).
``batch_norm_forward(x, mean, variance, weight, bias, eps) -> (y, mean, variance)``
    ``(x - mean) * weight / sqrt(variance + eps) + bias``; ``mean`` and
    ``variance`` None: x's own (``batch_norm_stats``), returned.
``batch_norm_backward(grad_output, x, mean, variance, weight, eps, batch_statistics) -> (grad_input, grad_weight, grad_bias)``
    the last two float64; ``batch_statistics``: mean and variance were x's
    own, and the gradient flows through them.
``relu_forward(x, residual=None) -> y``
    x where x >= 0 (NaN kept), 0 elsewhere; any shape. ``residual`` (x's
    shape and dtype): the same of x + residual, the sum rounded once.
``relu_backward(grad_output, y) -> grad_input``
    0 where the forward's output y <= 0, grad_output elsewhere (NaN
    included, as PyTorch); a select.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading

from fastconv import _threads, config

PRIMITIVES = (
    "conv2d_forward",
    "conv2d_backward",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "dropout_mask",
    "dropout_apply",
    "batch_norm_stats",
    "batch_norm_forward",
    "batch_norm_backward",
    "relu_forward",
    "relu_backward",
)

# name -> module that implements every primitive
_MODULES = {
    "naive": "fastconv.backends.naive",
    "numba": "fastconv.backends.numba_cpu",
    "cython": "fastconv.backends.cython_cpu",
    "cuda": "fastconv.backends.cuda",
}

# What 'auto' runs for each primitive, first available first. The Cython
# kernels come first everywhere: they are compiled when fastconv is installed,
# so the first call in a fresh process runs at once, where a Numba kernel
# is compiled on its first use (1-10 s per kernel with an empty cache, about
# 0.1 s loading each from a warm one; `python benchmarks/bench_startup.py`).
# Numba serves 'auto' only where the Cython extension was not built; the
# naive reference is the last resort, so 'auto' always works. The rule for
# a primitive to go back to Numba first: it must be measurably faster there
# (`python benchmarks/report.py --fastest`) *and* only once its kernels are
# compiled in this process, which this registry does not track; none is.
_AUTO_ORDER = {
    primitive: ("cython", "numba", "naive") for primitive in PRIMITIVES
}

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
        name = os.environ.get("FASTCONV_BACKEND", "").strip() or "auto"
        if name not in VALID_NAMES:
            raise ValueError(
                f"environment variable FASTCONV_BACKEND={name!r} is not a "
                f"backend; valid backends are {list(VALID_NAMES)}")
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


_environment_checked = False


def resolve(primitive: str, backend=None):
    """The module that will run ``primitive`` for a call's ``backend=`` value
    (the first call checks fastconv's yes/no environment settings)."""
    global _environment_checked
    if not _environment_checked:
        config.check_environment()
        _environment_checked = True
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


# Numba's parallel kernels cannot run in a child forked after Numba started
# its threads: with the GNU OpenMP layer the child is killed ("Terminating:
# fork() called from a process already using GNU OpenMP"), even on one
# thread; only TBB's layer is fork-safe. There the numba backend is made
# unavailable (an explicit backend='numba' is a RuntimeError saying why, and
# 'auto' passes over it); the Cython kernels run on one thread
# (fastconv._threads).
_FORKED_NUMBA_REASON = (
    "this process was forked after Numba's parallel kernels started their "
    "threads, and Numba's {layer!r} threading layer cannot run in a forked "
    "child; use backend='cython' (what 'auto' runs) in forked workers, or "
    "start them with the 'spawn' or 'forkserver' method")


def _after_fork_in_child():
    layer = _threads.numba_threading_layer()
    if layer is not None and layer != "tbb":
        _loaded.pop("numba", None)
        _unavailable["numba"] = _FORKED_NUMBA_REASON.format(layer=layer)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
