"""Shared fixtures for the core tests.

Every test that takes the ``backend`` fixture runs once per CPU backend that
can run here (``available_backends()`` minus ``'cuda'``, plus ``'auto'``), so a
backend that lands later is exercised by the whole suite without edits.

Helper functions (``assert_close``, ``finite_difference``, ``naive_cache``,
``random_array``, ``count_calls``) are handed out by fixtures rather than imported from this
file, so that test folders with conftest files of their own can use them too.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import fastconv

FLOAT_DTYPES = (np.float32, np.float64)

# The tests' shapes are small, and calls below config.PARALLEL_MIN_MACS
# (and its neighbours) run on one thread: with no minimum every call goes
# through the multi-threaded paths that full-size work takes.
# tests/test_threads.py checks the minimums.
for _minimum in ("PARALLEL_MIN_MACS", "PARALLEL_MIN_TAPS",
                 "PARALLEL_MIN_ELEMENTS"):
    setattr(fastconv.config, _minimum, 0)

# Relative tolerance against the float64-accumulating naive reference. The
# compiled backends accumulate float32 in float32 (BLAS sgemm), so float32
# gets a loose bound; float64 must agree to rounding.
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def cpu_backend_names() -> list[str]:
    """CPU backends usable here, then 'auto' (which picks among them)."""
    names = [name for name in fastconv.available_backends() if name != "cuda"]
    return names + ["auto"]


CPU_BACKENDS = cpu_backend_names()


@pytest.fixture(params=CPU_BACKENDS)
def backend(request) -> str:
    """Each CPU backend name in turn (and 'auto')."""
    return request.param


@pytest.fixture(params=[name for name in CPU_BACKENDS if name != "naive"])
def compiled_backend(request) -> str:
    """Each CPU backend but the naive reference (and 'auto').

    For tests that compare a backend with the naive reference: the
    reference itself is compared with PyTorch elsewhere.
    """
    return request.param


@pytest.fixture(params=FLOAT_DTYPES, ids=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


def stable_seed(*parts) -> int:
    """A seed that depends only on ``parts`` (not on PYTHONHASHSEED)."""
    return zlib.crc32(repr(parts).encode())


def make_random_array(shape, dtype, *seed_parts) -> np.ndarray:
    """Standard-normal values of ``shape`` and ``dtype``, seeded by ``seed_parts``."""
    rng = np.random.default_rng(stable_seed(*seed_parts))
    return rng.standard_normal(shape).astype(dtype)


@pytest.fixture
def random_array():
    """``random_array(shape, dtype, *seed_parts)``: reproducible normal values."""
    return make_random_array


def check_close(actual, expected, dtype=None, rtol=None, what="result"):
    """assert_allclose with a tolerance picked by dtype.

    The absolute tolerance scales with the largest expected magnitude, so
    cancellation in a sum (a small result of large terms) does not fail a
    float32 comparison that is accurate to the terms' rounding.
    """
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    dtype = np.dtype(dtype if dtype is not None else expected.dtype)
    rtol = RTOL[dtype] if rtol is None else rtol
    assert actual.shape == expected.shape, (
        f"{what}: shape {actual.shape} != expected {expected.shape}")
    finite = np.isfinite(expected)
    scale = float(np.max(np.abs(expected[finite]), initial=1.0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale,
                               equal_nan=True, err_msg=what)


@pytest.fixture
def assert_close():
    """``assert_close(actual, expected, dtype=None, rtol=None, what=...)``."""
    return check_close


def finite_difference_gradient(scalar_function, array, eps=1e-6):
    """Central-difference gradient of ``scalar_function`` at ``array``.

    array: float64 ndarray of any shape (not modified; a copy is perturbed).
    scalar_function(perturbed) -> float. Returns a float64 array of
    ``array``'s shape: (f(a + eps e_i) - f(a - eps e_i)) / (2 eps) per element.
    Use on small arrays only: it costs two calls per element.
    """
    point = np.array(array, dtype=np.float64, copy=True)
    gradient = np.empty_like(point)
    flat_point = point.reshape(-1)
    flat_gradient = gradient.reshape(-1)
    for i in range(flat_point.size):
        original = flat_point[i]
        flat_point[i] = original + eps
        above = float(scalar_function(point.copy()))
        flat_point[i] = original - eps
        below = float(scalar_function(point.copy()))
        flat_point[i] = original
        flat_gradient[i] = (above - below) / (2.0 * eps)
    return gradient


@pytest.fixture
def finite_difference():
    """``finite_difference(scalar_function, array, eps=1e-6) -> gradient``."""
    return finite_difference_gradient


_NAIVE_RESULTS: dict = {}


def cached(key, compute):
    """``compute()`` once per key for the whole session.

    The naive reference is slow, and every backend compares against the same
    reference result; computing it once per case keeps the suite fast.
    """
    if key not in _NAIVE_RESULTS:
        _NAIVE_RESULTS[key] = compute()
    return _NAIVE_RESULTS[key]


@pytest.fixture
def naive_cache():
    """``naive_cache(key, compute) -> compute()``, memoised per session."""
    return cached


@pytest.fixture
def count_calls(monkeypatch):
    """``count_calls(module, name)`` replaces ``module.name`` for the test
    with a wrapper that counts its calls and returns {'count': n}, the
    proof that a given code path ran."""
    def install(module, name):
        calls = {"count": 0}
        original = getattr(module, name)

        def counting(*args, **kwargs):
            calls["count"] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)
        return calls
    return install


@pytest.fixture
def restore_num_threads():
    """Put the thread count back after a test that changes it."""
    before = fastconv.get_num_threads()
    yield before
    fastconv.set_num_threads(before)


@pytest.fixture
def restore_default_backend():
    """Put the process-wide default backend back after the test."""
    before = fastconv.get_backend()
    yield before
    fastconv.set_backend(before)


@pytest.fixture
def torch():
    """PyTorch, or skip: it is never a required dependency."""
    return pytest.importorskip("torch")
