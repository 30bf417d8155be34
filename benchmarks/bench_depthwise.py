"""Depthwise conv2d forward (groups == C): fastconv's direct kernels against
PyTorch, each library in its own process, taking turns.

    python benchmarks/bench_depthwise.py [--rounds 3] [--repeats 10]

The shapes are ``bench_filters.DEPTHWISE_CONV_CASES`` (CNN layers, whole
2048^2 images, filter2d's band batches, channel multipliers 1-32), float32
with a bias, timed through ``fastconv.conv2d(..., groups=C, backend=...)``
as a user calls it, for backend='cython', backend='numba' and
``torch.nn.functional.conv2d`` under ``torch.no_grad()``. Each round starts
one fresh process per library (see ``bench_pool.run_in_turns``); the table
gives the median over rounds of each process's median and PyTorch's time /
that time (> 1: faster than PyTorch), with the load average before and
after. Rows past the backends' DEPTHWISE_MAX_MULTIPLIER (16 and 32 filters
per channel) run im2col + GEMM.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import numpy as np

from bench_filters import DEPTHWISE_CONV_CASES, SEED
from bench_pool import call_times, print_table, run_in_turns

LIBRARIES = ("cython", "numba", "torch")


def _label(case):
    batch, channels, height, width, multiplier, size, stride, pad = case
    return (f"N{batch} C{channels} K{channels * multiplier} "
            f"{height}x{width} k{size} s{stride} p{pad}")


def worker(library, repeats):
    """Median seconds of every case in this process, printed as JSON."""
    if library == "torch":
        import torch
    else:
        import fastconv
    results = {}
    for case in DEPTHWISE_CONV_CASES:
        batch, channels, height, width, multiplier, size, stride, pad = case
        rng = np.random.default_rng(SEED)
        x = rng.standard_normal((batch, channels, height, width),
                                dtype=np.float32)
        weight = rng.standard_normal((channels * multiplier, 1, size, size),
                                     dtype=np.float32)
        bias = rng.standard_normal(channels * multiplier, dtype=np.float32)
        if library == "torch":
            tensors = [torch.from_numpy(a) for a in (x, weight, bias)]

            def call():
                with torch.no_grad():
                    return torch.nn.functional.conv2d(
                        *tensors, stride=stride, padding=pad,
                        groups=channels)
        else:
            def call():
                return fastconv.conv2d(x, weight, bias, stride=stride,
                                       padding=pad, groups=channels,
                                       backend=library)
        results[_label(case)] = statistics.median(
            call_times(call, repeats, warmup=2))
    print(json.dumps(results))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.repeats)
        return
    libraries = args.libraries.split(",")
    load_before = os.getloadavg()
    table = run_in_turns(__file__, libraries, args.rounds,
                         ["--repeats", str(args.repeats)])
    load_after = os.getloadavg()
    print_table(table, libraries,
                f"depthwise conv2d forward, float32, median of {args.rounds} "
                f"rounds (each a fresh process per library, {args.repeats} "
                f"calls); load average {load_before[0]:.2f} before, "
                f"{load_after[0]:.2f} after; 'Nx' = torch time / that time",
                label_width=38)


if __name__ == "__main__":
    main()
