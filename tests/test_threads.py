"""set_num_threads / get_num_threads govern Numba, OpenMP and BLAS together."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import threadpoolctl

import fastconv

MAXIMUM = numba.config.NUMBA_NUM_THREADS


def test_default_is_within_range():
    threads = fastconv.get_num_threads()
    assert isinstance(threads, int) and 1 <= threads <= MAXIMUM


@pytest.mark.parametrize("threads", sorted({1, MAXIMUM // 2 or 1, MAXIMUM}))
def test_round_trip(threads, restore_num_threads):
    fastconv.set_num_threads(threads)
    assert fastconv.get_num_threads() == threads
    assert numba.get_num_threads() == threads


def test_blas_is_limited_too(restore_num_threads):
    fastconv.set_num_threads(1)
    blas_pools = [pool for pool in threadpoolctl.threadpool_info()
                  if pool["user_api"] == "blas"]
    assert blas_pools, "threadpoolctl sees no BLAS"
    for pool in blas_pools:
        assert pool["num_threads"] == 1, pool


@pytest.mark.parametrize("bad, exception", [
    (0, ValueError), (-1, ValueError), (MAXIMUM + 1, ValueError),
    (1.0, TypeError), ("2", TypeError), (True, TypeError), (None, TypeError),
])
def test_bad_values_raise_and_change_nothing(bad, exception,
                                             restore_num_threads):
    before = fastconv.get_num_threads()
    with pytest.raises(exception, match=r"\bn\b"):
        fastconv.set_num_threads(bad)
    assert fastconv.get_num_threads() == before


def test_results_do_not_depend_on_thread_count(backend, restore_num_threads,
                                               assert_close):
    """Every op on one thread and on all of them: same values, same indices."""
    rng = np.random.default_rng(0)
    small = backend == "naive"  # the Python loops: keep it tiny
    x = rng.standard_normal((2, 3, 7, 7) if small else (8, 8, 20, 19))
    weight = rng.standard_normal((4, 3, 3, 3) if small else (12, 8, 3, 3))
    results = {}
    for threads in sorted({1, MAXIMUM}):
        fastconv.set_num_threads(threads)
        y = fastconv.conv2d(x, weight, padding=1, backend=backend)
        grads = fastconv.conv2d_backward(y, x, weight, padding=1,
                                         backend=backend)
        pooled, indices = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True,
                                              backend=backend)
        averaged = fastconv.avg_pool2d(x, 3, 2, 1, backend=backend)
        dropped, mask = fastconv.dropout(x, 0.5, seed=4, backend=backend)
        results[threads] = (y, *grads, pooled, indices, averaged, dropped, mask)
    single, *others = results.values()
    for other in others:
        for got, want in zip(other, single):
            if want.dtype.kind in "bi":
                np.testing.assert_array_equal(got, want)
            else:
                assert_close(got, want, rtol=1e-12)
