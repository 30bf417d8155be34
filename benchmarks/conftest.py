"""Shared set-up for the pytest-benchmark suites in ``benchmarks/``.

Run them with ``pytest benchmarks/ --benchmark-only``. The default test run
(``pytest``) never comes here: pyproject's ``testpaths`` is ``["tests"]``.

What every suite gets from here:

* files named ``bench_*.py`` are collected (as well as ``test_*.py``);
* ``--benchmark-only`` on the command line wins over the ``--benchmark-disable``
  that pyproject's ``addopts`` sets for the unit tests;
* the thread count is fixed once for the session: fastconv (Numba, OpenMP
  and BLAS) and PyTorch both use ``fastconv.get_num_threads()``, unless the
  environment variable ``FASTCONV_BENCH_THREADS`` says otherwise;
* ``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` for both OpenMP runtimes;
* a test that takes a ``cpu_backend`` argument is parametrised over the
  compiled CPU backends available here (``numba``, ``cython``);
* fixtures ``torch`` (skips when PyTorch is absent) and ``rng`` (seeded).
"""

from __future__ import annotations

import fnmatch
import os
import sys

# One OpenMP wait policy for fastconv and PyTorch, before either runtime
# loads (fastconv's numba backend defaults to passive; see report.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastconv  # noqa: E402

# benchmarks/ is not a package; make its helper modules (cases.py) importable
# whatever pytest's import mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cases import compiled_cpu_backends  # noqa: E402


def pytest_collect_file(file_path, parent):
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    # pytest's own collector already takes files named on the command line
    # and files matching the python_files ini patterns; collecting them here
    # too would run every benchmark twice.
    if parent.session.isinitpath(file_path) or any(
            fnmatch.fnmatch(file_path.name, pattern)
            for pattern in parent.config.getini("python_files")):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # pytest-benchmark refuses --benchmark-only together with
    # --benchmark-disable; the latter comes from addopts, the former from the
    # person asking for benchmarks, so theirs is the one that counts. This
    # must run before pytest-benchmark's own (trylast) pytest_configure.
    if config.getoption("benchmark_only", False):
        config.option.benchmark_enable = True


def bench_threads() -> int:
    """Threads for both fastconv and PyTorch in this session."""
    value = os.environ.get("FASTCONV_BENCH_THREADS", "").strip()
    return int(value) if value else fastconv.get_num_threads()


@pytest.fixture(scope="session", autouse=True)
def fastconv_threads():
    """Pin fastconv's threads (Numba, OpenMP, BLAS) for the whole session."""
    threads = bench_threads()
    fastconv.set_num_threads(threads)
    return threads


@pytest.fixture(scope="session", autouse=True)
def warm_kernels():
    """Compile (or load from cache) the Numba kernels before any timing."""
    fastconv.warmup(tuple(compiled_cpu_backends()))


@pytest.fixture(scope="session")
def torch(fastconv_threads):
    """PyTorch on as many threads as fastconv; skips when not installed."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(fastconv_threads)
    return torch


@pytest.fixture
def rng():
    """A freshly seeded generator, the same in every test."""
    return np.random.default_rng(20240601)


def pytest_generate_tests(metafunc):
    if "cpu_backend" in metafunc.fixturenames:
        metafunc.parametrize("cpu_backend", compiled_cpu_backends())
