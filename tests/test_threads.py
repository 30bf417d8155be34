"""Threads: set_num_threads / get_num_threads govern Numba (in every Python
thread), OpenMP and BLAS together; small calls stay on one thread; the nn
layers' products leave BLAS's threads to the user; a child forked after the
kernels ran gets correct results on one thread; the environment variables
fail clearly."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import threading

import numba
import numpy as np
import pytest
import threadpoolctl

import fastconv
from fastconv import _threads, config, nn

MAXIMUM = numba.config.NUMBA_NUM_THREADS
NUMBA = "numba" in fastconv.available_backends()
CYTHON = "cython" in fastconv.available_backends()


def test_default_is_within_range():
    threads = fastconv.get_num_threads()
    assert isinstance(threads, int) and 1 <= threads <= MAXIMUM


@pytest.mark.parametrize("threads", sorted({1, MAXIMUM // 2 or 1, MAXIMUM}))
def test_round_trip(threads, restore_num_threads):
    fastconv.set_num_threads(threads)
    assert fastconv.get_num_threads() == threads


def test_default_matches_numba():
    assert _threads.default_num_threads() == MAXIMUM


@pytest.mark.skipif(not NUMBA, reason="numba backend unavailable")
@pytest.mark.skipif(MAXIMUM < 2, reason="needs two threads to tell 1 apart")
def test_numba_follows_the_count_in_every_python_thread(restore_num_threads):
    """Numba keeps one thread count per Python thread; a count set in the
    main thread holds in the others too."""
    fastconv.set_num_threads(1)
    x = np.ones((2, 3, 64, 64), dtype=np.float32)
    seen = {}

    def run():
        fastconv.max_pool2d(x, 2, backend="numba")
        seen["numba"] = numba.get_num_threads()

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=120)
    assert seen == {"numba": 1}


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


# ------------------------------------------------------- small work, BLAS

def test_small_work_runs_on_one_thread(monkeypatch):
    from fastconv import _shapes

    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 1000)
    assert _threads.elementwise_threads(999) == 1
    assert _threads.elementwise_threads(1000) == fastconv.get_num_threads()
    conv = _shapes.conv_geometry((2, 4, 8, 8), (8, 4, 3, 3), (1, 1),
                                 (1, 1, 1, 1), (1, 1), 1)
    macs = 2 * 8 * 8 * 8 * 4 * 9
    monkeypatch.setattr(config, "PARALLEL_MIN_MACS", macs + 1)
    assert _threads.conv_threads(conv) == 1
    assert _threads.conv_threads(conv, passes=2) == fastconv.get_num_threads()
    pool = _shapes.pool_geometry((2, 4, 8, 8), (2, 2), (2, 2), (0, 0, 0, 0),
                                 (1, 1), False)
    monkeypatch.setattr(config, "PARALLEL_MIN_TAPS", 2 * 4 * 16 * 4 + 1)
    assert _threads.pool_threads(pool) == 1


def _run_python(code, timeout=120, **environment):
    """Run ``code`` in a fresh interpreter (outside the source tree)."""
    env = dict(os.environ, **environment)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=tempfile.gettempdir())


@pytest.mark.skipif(MAXIMUM < 2, reason="needs two threads")
@pytest.mark.parametrize("name", ["cython", "numba"])
def test_small_calls_start_no_threads(name):
    """Below the minimum work a call never starts a parallel region: the
    process's thread count stays what it was before the first call."""
    if name not in fastconv.available_backends():
        pytest.skip(f"{name} backend unavailable")
    result = _run_python(f"""
        import os, numpy as np, fastconv
        x = np.ones((2, 4, 16, 16), dtype=np.float32)
        w = np.ones((8, 4, 3, 3), dtype=np.float32)
        fastconv.set_num_threads(2)
        fastconv.conv2d(x, w, backend="naive")  # imports, BLAS's threads
        before = len(os.listdir("/proc/self/task"))
        for _ in range(3):
            y = fastconv.conv2d(x, w, padding=1, backend="{name}")
            fastconv.max_pool2d(y, 2, backend="{name}")
            fastconv.dropout(y, 0.5, seed=0, backend="{name}")
        small = len(os.listdir("/proc/self/task"))
        fastconv.conv2d(np.ones((8, 16, 64, 64), np.float32),
                        np.ones((16, 16, 3, 3), np.float32), backend="{name}")
        print(before, small, len(os.listdir("/proc/self/task")))
        """, timeout=300)
    assert result.returncode == 0, result.stderr
    before, small, large = map(int, result.stdout.split())
    assert small == before
    assert large > before  # the check can see a parallel region start


def test_layer_products_leave_blas_threads_alone(restore_num_threads):
    """nn.Linear multiplies on one BLAS thread (BLAS's spinning workers
    would slow the next kernels) and gives BLAS its threads back."""
    fastconv.set_num_threads(MAXIMUM)
    layer = nn.Linear(300, 20)
    x = np.random.default_rng(0).standard_normal((64, 300)).astype(np.float32)

    def blas_threads():
        return [pool["num_threads"] for pool in threadpoolctl.threadpool_info()
                if pool["user_api"] == "blas"]

    before = blas_threads()
    y = layer(x)
    layer.backward(np.ones_like(y))
    np.testing.assert_allclose(y, x @ layer.weight.data.T + layer.bias.data,
                               rtol=1e-5, atol=1e-5)
    # Only BLAS libraries loaded before fastconv's controller was made are
    # governed by set_num_threads (torch's, imported by another test, may
    # not be): each keeps the count it had.
    assert blas_threads() == before


# ---------------------------------------------------------------------- fork

FORK_PROBE = """
    import multiprocessing, sys
    import numpy as np
    import fastconv
    from fastconv import config
    for minimum in ("PARALLEL_MIN_MACS", "PARALLEL_MIN_TAPS",
                    "PARALLEL_MIN_ELEMENTS"):  # the parent starts OpenMP
        setattr(config, minimum, 0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 12, 12)).astype(np.float32)
    w = rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
    fastconv.set_num_threads(2)
    for name in {parent_backends!r}:
        fastconv.conv2d(x, w, padding=1, backend=name)
    want = fastconv.conv2d(x, w, padding=1, backend="naive")

    def work(name):
        try:
            y = fastconv.conv2d(x, w, padding=1, backend=name)
            pooled = fastconv.max_pool2d(y, 2, backend=name)
        except RuntimeError as exc:
            return "RuntimeError: " + str(exc)
        close = np.allclose(y, want, rtol=1e-4, atol=1e-4)
        return f"ok {{close}} {{fastconv.get_num_threads()}}"

    with multiprocessing.get_context("fork").Pool(2) as pool:
        for line in pool.map(work, {child_backends!r}):
            print(line)
    # the parent keeps its threads
    print("parent", fastconv.get_num_threads(),
          fastconv.conv2d(x, w, padding=1).shape)
"""


def _fork(parent_backends, child_backends):
    result = _run_python(FORK_PROBE.format(
        parent_backends=parent_backends, child_backends=child_backends),
        timeout=240)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.skipif(MAXIMUM < 2 or not CYTHON, reason="needs cython, 2 threads")
def test_fork_after_cython_kernels_gives_correct_results_on_one_thread():
    lines = _fork(["cython"], ["auto", "cython", None])
    assert lines == ["ok True 1"] * 3 + ["parent 2 (4, 6, 12, 12)"]


@pytest.mark.skipif(MAXIMUM < 2 or not (CYTHON and NUMBA),
                    reason="needs cython, numba, 2 threads")
def test_fork_after_numba_kernels_refuses_numba_and_runs_auto():
    """Numba's GNU OpenMP layer kills a forked child at its next parallel
    kernel; the child gets a RuntimeError that says so instead, and 'auto'
    still runs."""
    lines = _fork(["numba", "cython"], ["numba", "auto"])
    assert lines[0].startswith("RuntimeError: backend 'numba' is not "
                               "available here: this process was forked")
    assert "'spawn'" in lines[0]
    assert lines[1:] == ["ok True 1", "parent 2 (4, 6, 12, 12)"]


@pytest.mark.skipif(MAXIMUM < 2 or not (CYTHON and NUMBA),
                    reason="needs cython, numba, 2 threads")
def test_numba_runs_in_a_child_when_only_cython_ran_before_the_fork():
    lines = _fork(["cython"], ["numba"])
    assert lines == ["ok True 1", "parent 2 (4, 6, 12, 12)"]


def test_set_num_threads_in_a_forked_child_says_why_it_cannot():
    result = _run_python("""
        import multiprocessing, numpy as np, fastconv
        fastconv.config.PARALLEL_MIN_TAPS = 0
        fastconv.set_num_threads(2)
        fastconv.max_pool2d(np.ones((2, 2, 8, 8), np.float32), 2)

        def work(_):
            fastconv.set_num_threads(1)  # fine
            try:
                fastconv.set_num_threads(2)
            except RuntimeError as exc:
                return str(exc)

        with multiprocessing.get_context("fork").Pool(1) as pool:
            print(pool.map(work, [0])[0])
        """)
    assert result.returncode == 0, result.stderr
    assert "forked" in result.stdout and "'spawn'" in result.stdout


# ------------------------------------------------------------- environment

@pytest.mark.parametrize("name", sorted(config.YES_NO_SETTINGS))
def test_yes_no_flags_must_be_yes_or_no(name):
    """``import fastconv`` works (the command line has to be able to report
    the value in one line); the first kernel call is the ValueError."""
    result = _run_python("""
        import numpy as np, fastconv
        print("imported", flush=True)
        fastconv.relu(np.ones(3, np.float32))
    """, **{name: "maybe"})
    assert result.returncode != 0
    assert result.stdout.strip() == "imported"
    assert f"{name}='maybe'" in result.stderr
    assert "ValueError" in result.stderr and "off" in result.stderr


@pytest.mark.parametrize("name", sorted(config.YES_NO_SETTINGS))
def test_bad_yes_no_flag_is_one_line_from_the_command_line(name):
    result = subprocess.run(
        [sys.executable, "-m", "fastconv.cli", "info"], capture_output=True,
        text=True, timeout=120, cwd=tempfile.gettempdir(),
        env=dict(os.environ, **{name: "maybe"}))
    assert result.returncode == 1
    assert result.stderr.startswith("fastconv: error: environment variable "
                                    f"{name}='maybe'")
    assert result.stderr.count("\n") == 1 and "Traceback" not in (
        result.stderr + result.stdout)


@pytest.mark.parametrize("value, expected", [("0", False), ("off", False),
                                             ("yes", True), ("", True)])
def test_numba_cache_flag_values(value, expected):
    result = _run_python(
        "from fastconv import config; print(config.NUMBA_CACHE_REQUESTED)",
        FASTCONV_NUMBA_CACHE=value)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(expected)


@pytest.mark.skipif(not NUMBA, reason="numba backend unavailable")
def test_numba_runs_uncached_where_no_cache_directory_is_writable():
    """A read-only install and no writable home: Numba finds no cache
    locator (simulated here: root can write anywhere); the backend compiles
    without a cache instead of becoming unavailable."""
    result = _run_python("""
        from numba.core import caching
        for locator in caching.CacheImpl._locator_classes:
            locator.from_function = classmethod(lambda cls, f, p: None)
        import numpy as np, fastconv
        from fastconv import config
        y = fastconv.dropout_mask((3, 5), 0.5, seed=1, backend="numba")
        want = fastconv.dropout_mask((3, 5), 0.5, seed=1, backend="naive")
        print(config.NUMBA_CACHE, bool((y == want).all()))
        """, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def test_unusable_threading_layer_leaves_auto_working():
    """NUMBA_THREADING_LAYER=tbb without TBB: numba is unavailable, with
    the reason, and 'auto' runs on the rest."""
    pytest.importorskip("numba")
    try:
        import tbb  # noqa: F401
        pytest.skip("TBB is installed")
    except ImportError:
        pass
    result = _run_python("""
        import numpy as np, fastconv
        from fastconv.backends import _AUTO_ORDER
        _AUTO_ORDER["max_pool2d_forward"] = ("numba", "cython", "naive")
        print(fastconv.max_pool2d(np.ones((1, 1, 4, 4)), 2).shape)
        print(fastconv.unavailable_reasons()["numba"])
        """, NUMBA_THREADING_LAYER="tbb")
    assert result.returncode == 0, result.stderr
    shape, reason = result.stdout.splitlines()
    assert shape == "(1, 1, 2, 2)"
    assert reason.startswith("NUMBA_THREADING_LAYER='tbb'")


def test_one_thread_here_holds_only_in_its_python_thread(monkeypatch):
    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 0)
    seen = {}

    def other():
        seen["other"] = _threads.elementwise_threads(10**9)

    with _threads.one_thread_here():
        seen["inside"] = _threads.elementwise_threads(10**9)
        worker = threading.Thread(target=other)
        worker.start()
        worker.join(timeout=30)
    seen["after"] = _threads.elementwise_threads(10**9)
    count = fastconv.get_num_threads()
    assert seen == {"inside": 1, "other": count, "after": count}
