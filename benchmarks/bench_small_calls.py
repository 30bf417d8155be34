"""Small calls: where a second thread starts to pay, and the latency a user
meets on a busy machine.

    python benchmarks/bench_small_calls.py grain     [--backend cython]
    python benchmarks/bench_small_calls.py latency   [--backend auto]
    python benchmarks/bench_small_calls.py overhead  [--backend auto]

``grain``: for growing conv2d, max_pool2d and dropout calls, the median time
on one thread and on all of them (the minimums ``config.PARALLEL_MIN_MACS``,
``PARALLEL_MIN_TAPS`` and ``PARALLEL_MIN_ELEMENTS`` set to 0 and to
infinity, so that only the thread count differs), with each call's work as
``fastconv._threads`` counts it (multiply-adds, window taps, elements).
Each minimum should sit where all threads start to win.

``latency``: p50 / p99 / max of the tiny conv2d (2,4,16,16) x (8,4,3,3),
padding 1, with the library's defaults, alone and then with one busy
competing process per core (pure-Python spin loops).

``overhead``: the same tiny conv2d's time per call on an idle machine, what
of it is Python (validation, geometry, dispatch; profiled), and the naive
reference's time, for the speedup.

Figures depend on load: each section prints the load average.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time

import numpy as np

import fastconv
from fastconv import config

from bench_pool import call_times

MINIMUMS = ("PARALLEL_MIN_MACS", "PARALLEL_MIN_TAPS", "PARALLEL_MIN_ELEMENTS")
TINY_X = (2, 4, 16, 16)
TINY_W = (8, 4, 3, 3)


def _load() -> str:
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def _median_seconds(call, repeats=31, min_seconds=0.002):
    """Median seconds per call over ``repeats`` samples, each running
    ``call`` enough times to last about ``min_seconds``."""
    call()
    start = time.perf_counter()
    call()
    once = max(time.perf_counter() - start, 1e-7)
    inner = max(1, int(min_seconds / once))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            call()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def grain_cases(rng):
    """(label, work, call(backend)) for growing calls of three kinds."""
    cases = []
    for batch, size in ((1, 8), (1, 16), (2, 16), (4, 16), (4, 32), (8, 32),
                        (16, 32)):
        x = rng.standard_normal((batch, 8, size, size)).astype(np.float32)
        w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
        work = batch * 8 * size * size * 8 * 9
        cases.append((f"conv2d ({batch},8,{size},{size})x(8,8,3,3)", work,
                      lambda b, x=x, w=w: fastconv.conv2d(x, w, padding=1,
                                                          backend=b)))
    for batch, size in ((1, 16), (2, 32), (8, 32), (16, 64), (32, 64)):
        x = rng.standard_normal((batch, 16, size, size)).astype(np.float32)
        work = batch * 16 * (size // 2) ** 2 * 4
        cases.append((f"max_pool2d ({batch},16,{size},{size}) 2x2", work,
                      lambda b, x=x: fastconv.max_pool2d(x, 2, backend=b)))
    for size in (4_096, 32_768, 131_072, 524_288, 2_097_152):
        x = rng.standard_normal(size).astype(np.float32)
        cases.append((f"dropout {size}", size,
                      lambda b, x=x: fastconv.dropout(x, 0.5, seed=0,
                                                      backend=b)))
    return cases


def grain(backend):
    print(f"## one thread against {fastconv.get_num_threads()}, backend "
          f"{backend}; {_load()}\n")
    print("| call | work | 1 thread (us) | all threads (us) | speedup |")
    print("| --- | ---: | ---: | ---: | ---: |")
    saved = {name: getattr(config, name) for name in MINIMUMS}
    try:
        for label, work, call in grain_cases(np.random.default_rng(0)):
            times = {}
            for name, minimum in (("one", float("inf")), ("all", 0)):
                for setting in MINIMUMS:
                    setattr(config, setting, minimum)
                times[name] = _median_seconds(lambda: call(backend))
            print(f"| {label} | {work:,} | {times['one'] * 1e6:.1f} | "
                  f"{times['all'] * 1e6:.1f} | "
                  f"{times['one'] / times['all']:.2f} |", flush=True)
    finally:
        for setting, value in saved.items():
            setattr(config, setting, value)
    print(f"\n{_load()}")


def _spin(stop):
    while not stop.is_set():
        for _ in range(10_000):
            pass


def _latencies(call, count=3000):
    samples = sorted(call_times(call, count, warmup=200))
    return (samples[len(samples) // 2], samples[int(len(samples) * 0.99)],
            samples[-1])


def latency(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(TINY_X).astype(np.float32)
    w = rng.standard_normal(TINY_W).astype(np.float32)

    def call():
        fastconv.conv2d(x, w, padding=1, backend=backend)

    print(f"## conv2d {TINY_X} x {TINY_W}, padding 1, backend {backend}, "
          f"{fastconv.get_num_threads()} threads, work "
          f"{int(np.prod(TINY_X[:1])) * 8 * 256 * 36:,}\n")
    print("| machine | p50 (us) | p99 (us) | max (us) | p99 / p50 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    p50, p99, worst = _latencies(call)
    print(f"| idle ({_load()}) | {p50 * 1e6:.1f} | {p99 * 1e6:.1f} | "
          f"{worst * 1e6:.0f} | {p99 / p50:.2f} |", flush=True)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    spinners = [context.Process(target=_spin, args=(stop,))
                for _ in range(os.cpu_count())]
    for spinner in spinners:
        spinner.start()
    try:
        time.sleep(1.0)
        p50, p99, worst = _latencies(call)
        print(f"| one busy process per core ({_load()}) | {p50 * 1e6:.1f} | "
              f"{p99 * 1e6:.1f} | {worst * 1e6:.0f} | {p99 / p50:.2f} |")
    finally:
        stop.set()
        for spinner in spinners:
            spinner.join()


def overhead(backend):
    import cProfile
    import pstats

    rng = np.random.default_rng(0)
    x = rng.standard_normal(TINY_X).astype(np.float32)
    w = rng.standard_normal(TINY_W).astype(np.float32)
    print(f"## per-call time of conv2d {TINY_X} x {TINY_W}, padding 1; "
          f"{_load()}\n")
    fast = _median_seconds(
        lambda: fastconv.conv2d(x, w, padding=1, backend=backend),
        min_seconds=0.02)
    naive = _median_seconds(
        lambda: fastconv.conv2d(x, w, padding=1, backend="naive"),
        repeats=3, min_seconds=0)
    print(f"backend {backend}: {fast * 1e6:.1f} us per call (median); naive "
          f"{naive * 1e3:.1f} ms; speedup {naive / fast:,.0f}x")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(2000):
        fastconv.conv2d(x, w, padding=1, backend=backend)
    profile.disable()
    print("\nprofile (2000 calls), by own time:")
    stats = pstats.Stats(profile, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("grain", "latency", "overhead"))
    parser.add_argument("--backend", default=None,
                        help="backend (default: grain cython, else auto)")
    args = parser.parse_args(argv)
    backend = args.backend or ("cython" if args.what == "grain" else "auto")
    {"grain": grain, "latency": latency, "overhead": overhead}[args.what](
        backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
