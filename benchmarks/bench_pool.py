"""Pooling against PyTorch, each library in its own process, taking turns.

    python benchmarks/bench_pool.py                    # float32 table
    python benchmarks/bench_pool.py --rounds 7 --dtype uint8 --ops max,max_idx

Each round starts one fresh process per library (fastconv with
backend='cython', fastconv with backend='numba', PyTorch), in turn; a
process warms every case up, then times each case ``--repeats`` times and
reports its median. The table gives, per case, the median over rounds of
those medians and PyTorch's time divided by each fastconv backend's (> 1:
fastconv is faster), with the geometric mean of the ratios, and the load
average before and after. Calls are what a user writes: the public
functions with their defaults (threads included); PyTorch runs under
``torch.no_grad()`` for the forward passes and its own autograd-free
backward functions for the backward ones.

Cases (``--ops``): ``max`` (max_pool2d), ``max_idx`` (return_indices=True),
``max_bwd`` (max_pool2d_backward), ``avg`` and ``avg_bwd`` (avg_pool2d and
its backward), on the shapes of ``SHAPES`` (NCHW, kernel, stride, padding).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np

#: (label, x shape, kernel, stride, padding)
SHAPES = (
    ("32x64x32x32 k2s2", (32, 64, 32, 32), 2, 2, 0),
    ("32x64x33x33 k3s2p1", (32, 64, 33, 33), 3, 2, 1),
)
OPS = ("max", "max_idx", "max_bwd", "avg", "avg_bwd")
LIBRARIES = ("cython", "numba", "torch")


def _inputs(shape, dtype):
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -1000), min(info.max, 1000),
                            size=shape, endpoint=True).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _fastconv_calls(backend, x, kernel, stride, padding, ops):
    import fastconv

    def pool(**extra):
        return fastconv.max_pool2d(x, kernel, stride, padding,
                                   backend=backend, **extra)

    calls = {}
    y, indices = pool(return_indices=True)
    if "max" in ops:
        calls["max"] = pool
    if "max_idx" in ops:
        calls["max_idx"] = lambda: pool(return_indices=True)
    if "max_bwd" in ops and x.dtype.kind == "f":
        calls["max_bwd"] = lambda: fastconv.max_pool2d_backward(
            y, indices, x.shape, backend=backend)
    if x.dtype.kind == "f":
        averaged = fastconv.avg_pool2d(x, kernel, stride, padding,
                                       backend=backend)
        if "avg" in ops:
            calls["avg"] = lambda: fastconv.avg_pool2d(
                x, kernel, stride, padding, backend=backend)
        if "avg_bwd" in ops:
            calls["avg_bwd"] = lambda: fastconv.avg_pool2d_backward(
                averaged, x.shape, kernel, stride, padding, backend=backend)
    return calls


def _torch_calls(x, kernel, stride, padding, ops):
    import torch

    functional = torch.nn.functional
    x_t = torch.from_numpy(x)

    def forward(**extra):
        with torch.no_grad():
            return functional.max_pool2d(x_t, kernel, stride, padding,
                                         **extra)

    calls = {}
    y, indices = forward(return_indices=True)
    if "max" in ops:
        calls["max"] = forward
    if "max_idx" in ops:
        calls["max_idx"] = lambda: forward(return_indices=True)
    if "max_bwd" in ops and x.dtype.kind == "f":
        calls["max_bwd"] = lambda: torch.ops.aten.max_pool2d_with_indices_backward(
            y, x_t, [kernel] * 2, [stride] * 2, [padding] * 2, [1, 1], False,
            indices)
    if x.dtype.kind == "f":
        with torch.no_grad():
            averaged = functional.avg_pool2d(x_t, kernel, stride, padding)
        if "avg" in ops:
            def avg():
                with torch.no_grad():
                    return functional.avg_pool2d(x_t, kernel, stride, padding)
            calls["avg"] = avg
        if "avg_bwd" in ops:
            calls["avg_bwd"] = lambda: torch.ops.aten.avg_pool2d_backward(
                averaged, x_t, [kernel] * 2, [stride] * 2, [padding] * 2,
                False, True, None)
    return calls


def worker(library, dtype, ops, repeats):
    """Median seconds of every (shape, op) case in this process, as JSON."""
    results = {}
    for label, shape, kernel, stride, padding in SHAPES:
        x = _inputs(shape, dtype)
        if library == "torch":
            calls = _torch_calls(x, kernel, stride, padding, ops)
        else:
            calls = _fastconv_calls(library, x, kernel, stride, padding, ops)
        for op, call in calls.items():
            results[f"{label} {op}"] = statistics.median(
                call_times(call, repeats, warmup=3))
    print(json.dumps(results))


#: Untimed calls run for at least this long before the timed ones: a
#: fresh process on an idle shared host ran its first ~0.1-0.3 s of work
#: up to 2x slower (measured 2026-12-04 on an AMD EPYC host), which a few
#: calls of a millisecond did not cover (a backend that compiled first, as
#: Numba does, then looked faster than one that did not).
WARMUP_SECONDS = 0.2


def call_times(call, repeats, warmup):
    """Seconds of each of ``repeats`` single calls, after ``warmup``
    untimed ones and at least WARMUP_SECONDS of them (shared by the
    one-process-per-library benchmarks)."""
    start = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - start < WARMUP_SECONDS:
        call()
        done += 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def run_in_turns(script, libraries, rounds, worker_args):
    """{library: {case: median over rounds}}: each round runs ``script
    --worker LIBRARY *worker_args`` once per library, in turn, each a fresh
    process printing {case: median seconds} as its last line of JSON."""
    medians = {library: {} for library in libraries}
    for _ in range(rounds):
        for library in libraries:
            output = subprocess.run(
                [sys.executable, script, "--worker", library, *worker_args],
                check=True, capture_output=True, text=True).stdout
            for case, seconds in json.loads(output.splitlines()[-1]).items():
                medians[library].setdefault(case, []).append(seconds)
    return {library: {case: statistics.median(values)
                      for case, values in cases.items()}
            for library, cases in medians.items()}


def print_table(table, libraries, title, label_width=34):
    """Each library's median per case and torch's time / its time."""
    print(title)
    header = f"{'case':<{label_width}}" + "".join(
        f"{name:>20}" for name in libraries)
    print(header)
    print("-" * len(header))
    ratios = {name: [] for name in libraries}
    reference = table.get("torch", {})
    for case in table[libraries[0]]:
        cells = []
        for name in libraries:
            seconds = table[name].get(case)
            if seconds is None:
                cells.append(f"{'-':>20}")
            elif name != "torch" and case in reference:
                ratio = reference[case] / seconds
                ratios[name].append(ratio)
                cells.append(f"{seconds * 1e3:>9.3f} ms {ratio:>6.2f}x")
            else:
                cells.append(f"{seconds * 1e3:>17.3f} ms")
        print(f"{case:<{label_width}}" + "".join(cells))
    if reference:
        print(f"{'geomean':<{label_width}}" + "".join(
            f"{math.exp(statistics.fmean(map(math.log, ratios[name]))):>19.2f}x"
            if ratios[name] else f"{'':>20}" for name in libraries))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    ops = args.ops.split(",")
    if args.worker:
        worker(args.worker, np.dtype(args.dtype), ops, args.repeats)
        return
    libraries = args.libraries.split(",")
    load_before = os.getloadavg()
    table = run_in_turns(__file__, libraries, args.rounds,
                         ["--dtype", args.dtype, "--ops", args.ops,
                          "--repeats", str(args.repeats)])
    load_after = os.getloadavg()
    print_table(table, libraries,
                f"{args.dtype}, median of {args.rounds} rounds (each a fresh "
                f"process per library, {args.repeats} calls); load average "
                f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; "
                "'Nx' = torch time / that time")


if __name__ == "__main__":
    main()
