"""fastconv against PyTorch CPU, timed side by side, printed as Markdown.

    python benchmarks/report.py [--threads 2] [--repeats 11] [--quick]
    python benchmarks/report.py --fastest     # fastest CPU backend per primitive

Every workload (``cases.py``: the issue's conv2d shapes, pooling, dropout;
float32) runs in this one process on each compiled CPU backend, on ``'auto'``
and on PyTorch, all on the same number of threads. The implementations take
turns: each repeat times every one of them once, in a rotated order, so that
a burst of load on the (shared) machine hits all of them alike. A sample
runs the op enough times to last about ``--sample-ms``; the table shows the
median over the repeats (``--stat min``: the fastest sample), in ms per
call, and the ratio ``PyTorch time / fastconv time`` (above 1: fastconv is
faster).

The summary checks the issue's performance floors on ``'auto'`` (what a user
gets by default); the naive table shows how much faster the compiled backends
are than the reference loops, both measured on the same small shapes.
The exit status is 1 when a floor fails.

``--fastest`` times each backend primitive on each compiled backend and
prints the order, fastest first, that the registry's ``_AUTO_ORDER``
(``fastconv/backends/__init__.py``) should follow.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, NamedTuple

# One OpenMP wait policy for both sides, set before either OpenMP runtime
# (Numba's or PyTorch's own libgomp) loads: fastconv's numba backend asks for
# passive waiting by default, and on a shared machine a spinning PyTorch
# worker would be measured against a sleeping fastconv one. A value set by
# the caller wins, and the header prints it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastconv  # noqa: E402
from fastconv.backends import PRIMITIVES  # noqa: E402

import cases  # noqa: E402

#: (what, op, shapes, floor): the issue's floors, checked on 'auto' as the
#: geometric mean of PyTorch time / fastconv time over the shapes.
FLOORS = (
    ("conv2d forward", "conv2d_forward", cases.CONV_SHAPES, 0.5),
    ("conv2d forward+backward", "conv2d_forward_backward",
     cases.CONV_SHAPES, 0.7),
    ("max_pool2d forward (+indices)", "max_pool2d_forward",
     cases.POOL_SHAPES, 5.0),
    ("dropout (mask + apply)", "dropout", cases.DROPOUT_SHAPES, 5.0),
)
#: Reported in the summary without a floor.
UNFLOORED = (
    ("max_pool2d backward", "max_pool2d_backward", cases.POOL_SHAPES),
    ("avg_pool2d forward", "avg_pool2d_forward", cases.POOL_SHAPES),
    ("avg_pool2d backward", "avg_pool2d_backward", cases.POOL_SHAPES),
)
#: Ops compared with the naive loops (on cases.NAIVE_* shapes).
NAIVE_OPS = cases.CONV_OPS + cases.POOL_OPS + cases.DROPOUT_OPS


# ------------------------------------------------------------------ timing

def _calls_per_sample(function, sample_seconds: float) -> int:
    """How many calls make one sample last about ``sample_seconds``."""
    start = time.perf_counter()
    function()
    once = time.perf_counter() - start
    return max(1, math.ceil(sample_seconds / max(once, 1e-7)))


class Timer(NamedTuple):
    """How to time: samples per contender, sample length, and the statistic
    (``statistics.median``, or ``min`` on a badly loaded machine)."""

    repeats: int
    sample_seconds: float
    statistic: Callable = statistics.median

    def measure(self, contenders: dict) -> dict:
        """Seconds per call of each contender, timed in alternation.

        ``contenders`` maps a name to a zero-argument callable. Each is
        called once to warm up (and to size its samples); then every repeat
        times each contender once, starting with a different one each time.
        """
        names = list(contenders)
        calls = {name: _calls_per_sample(contenders[name], self.sample_seconds)
                 for name in names}
        samples = {name: [] for name in names}
        for repeat in range(self.repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                function, count = contenders[name], calls[name]
                start = time.perf_counter()
                for _ in range(count):
                    function()
                samples[name].append((time.perf_counter() - start) / count)
        return {name: self.statistic(values)
                for name, values in samples.items()}


def geometric_mean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


# ------------------------------------------------------------------ output

def _ms(seconds: float) -> str:
    milliseconds = seconds * 1e3
    if milliseconds >= 100:
        return f"{milliseconds:.0f}"
    if milliseconds >= 10:
        return f"{milliseconds:.1f}"
    if milliseconds >= 1:
        return f"{milliseconds:.2f}"
    return f"{milliseconds:.3f}"


def _ratio(value: float) -> str:
    return f"{value:.0f}x" if value >= 100 else (
        f"{value:.1f}x" if value >= 10 else f"{value:.2f}x")


def _table(header, rows, text_columns=(0, 1)) -> str:
    """A Markdown table; columns other than ``text_columns`` align right."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i in text_columns else "---:"
                            for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _environment(threads: int, torch) -> str:
    import numba
    import numpy

    parts = [f"fastconv {fastconv.__version__}", f"NumPy {numpy.__version__}",
             f"Numba {numba.__version__}"]
    if torch is not None:
        parts.append(f"PyTorch {torch.__version__}")
    return (f"{datetime.date.today()}, {platform.python_implementation()} "
            f"{platform.python_version()}, {', '.join(parts)}; "
            f"{threads} threads on {os.cpu_count()} cores "
            f"({platform.machine()}, {_load_average()}); OMP_WAIT_POLICY="
            f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}; float32")


def _load_average() -> str:
    """The machine's 1-minute load average: how shared it was while timing."""
    try:
        return f"load average {os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):  # not on every platform
        return "load average unknown"


# ---------------------------------------------------------------- sections

def _selected(ops, prefixes):
    """The ops that start with one of ``prefixes`` (all when it is empty)."""
    return [op for op in ops if not prefixes or op.startswith(tuple(prefixes))]


def compare_with_torch(torch, fastconv_names, timer, prefixes=()):
    """Time each op and shape; returns {(op, shape): {name: seconds}}."""
    timings = {}
    for op in _selected(cases.TORCH_OPS, prefixes):
        for shape in cases.shapes_for(op):
            arrays = cases.make_arrays(shape)
            contenders = {name: cases.fastconv_call(op, shape, arrays, name)
                          for name in fastconv_names}
            if torch is not None:
                contenders["torch"] = cases.torch_call(op, shape, arrays, torch)
            timings[op, shape] = timer.measure(contenders)
            print(f"  {op} {shape.label}", file=sys.stderr, flush=True)
    return timings


def torch_table(timings, fastconv_names, with_torch: bool) -> str:
    header = ["op", "shape"] + (["torch ms"] if with_torch else [])
    for name in fastconv_names:
        header.append(f"{name} ms")
        if with_torch:
            header.append(f"torch/{name}")
    rows = []
    for (op, shape), seconds in timings.items():
        row = [op, shape.label] + ([_ms(seconds["torch"])] if with_torch else [])
        for name in fastconv_names:
            row.append(_ms(seconds[name]))
            if with_torch:
                row.append(_ratio(seconds["torch"] / seconds[name]))
        rows.append(row)
    return _table(header, rows)


def summary_table(timings, fastconv_names) -> tuple[str, bool]:
    """Geometric-mean ratios per op, the floors, PASS/FAIL on 'auto'."""
    judged = "auto" if "auto" in fastconv_names else fastconv_names[0]
    header = (["what", "shapes"] + [f"torch/{name}" for name in fastconv_names]
              + ["floor", f"{judged}"])
    rows, all_pass = [], True
    entries = [(what, op, shapes, floor) for what, op, shapes, floor in FLOORS]
    entries += [(what, op, shapes, None) for what, op, shapes in UNFLOORED]
    for what, op, shapes, floor in entries:
        if any((op, shape) not in timings for shape in shapes):
            continue  # not measured in this run (--ops)
        ratios = {name: geometric_mean(
            timings[op, shape]["torch"] / timings[op, shape][name]
            for shape in shapes) for name in fastconv_names}
        row = [what, f"geomean of {len(shapes)}" if len(shapes) > 1 else "1"]
        row += [_ratio(ratios[name]) for name in fastconv_names]
        if floor is None:
            row += ["-", "-"]
        else:
            passed = ratios[judged] >= floor
            all_pass &= passed
            row += [f">= {floor}x", "PASS" if passed else "FAIL"]
        rows.append(row)
    return _table(header, rows), all_pass


def naive_table(compiled_names, timer, prefixes=()) -> str:
    """Naive time / compiled time, both on the scaled-down shapes."""
    header = ["op", "shape", "naive ms"]
    for name in compiled_names:
        header += [f"{name} ms", f"naive/{name}"]
    rows = []
    for op in _selected(NAIVE_OPS, prefixes):
        for shape in cases.shapes_for(op, naive=True):
            arrays = cases.make_arrays(shape)
            contenders = {name: cases.fastconv_call(op, shape, arrays, name)
                          for name in ("naive",) + tuple(compiled_names)}
            seconds = timer.measure(contenders)
            row = [op, shape.label, _ms(seconds["naive"])]
            for name in compiled_names:
                row += [_ms(seconds[name]),
                        _ratio(seconds["naive"] / seconds[name])]
            rows.append(row)
            print(f"  naive {op} {shape.label}", file=sys.stderr, flush=True)
    return _table(header, rows)


def fastest_backends(compiled_names, timer, prefixes=()):
    """Per primitive: geometric-mean time of each backend over its shapes.

    Returns the Markdown table and {primitive: backends fastest first}.
    """
    header = (["primitive", "shapes"]
              + [f"{name} ms (geomean)" for name in compiled_names]
              + ["wins per shape", "fastest first"])
    rows, order = [], {}
    for primitive in _selected(PRIMITIVES, prefixes):
        per_shape = []
        for shape in cases.shapes_for(primitive):
            arrays = cases.make_arrays(shape)
            contenders = {name: cases.fastconv_call(primitive, shape, arrays,
                                                    name)
                          for name in compiled_names}
            per_shape.append(timer.measure(contenders))
            print(f"  {primitive} {shape.label}", file=sys.stderr, flush=True)
        means = {name: geometric_mean(s[name] for s in per_shape)
                 for name in compiled_names}
        ranked = sorted(compiled_names, key=means.get)
        order[primitive] = tuple(ranked)
        wins = {name: sum(min(s, key=s.get) == name for s in per_shape)
                for name in compiled_names}
        rows.append([primitive, str(len(per_shape))]
                    + [_ms(means[name]) for name in compiled_names]
                    + [", ".join(f"{name} {wins[name]}" for name in ranked),
                       " > ".join(ranked)])
    last = len(header) - 1
    return _table(header, rows, text_columns=(0, last - 1, last)), order


# -------------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for fastconv and PyTorch (default 2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed samples per implementation and shape "
                             "(default 11, or 3 with --quick)")
    parser.add_argument("--sample-ms", type=float, default=None,
                        help="length of one sample in ms (default 50, or 10 "
                             "with --quick)")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="statistic over the samples (default median; "
                             "min resists a loaded machine better)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer, shorter samples: a rough table in a few "
                             "minutes")
    parser.add_argument("--fastest", action="store_true",
                        help="only rank the compiled CPU backends per "
                             "primitive (for the registry's 'auto' order)")
    parser.add_argument("--ops", nargs="+", default=(), metavar="PREFIX",
                        help="time only the ops whose name starts with one "
                             "of these (e.g. conv2d max_pool2d dropout)")
    parser.add_argument("--no-naive", action="store_true",
                        help="skip the speedup-over-naive table")
    args = parser.parse_args(argv)
    statistic = statistics.median if args.stat == "median" else min
    timer = Timer(args.repeats or (3 if args.quick else 11),
                  (args.sample_ms or (10 if args.quick else 50)) / 1e3,
                  statistic)
    naive_timer = timer._replace(repeats=1 if args.quick else 3)

    compiled = cases.compiled_cpu_backends()
    if not compiled:
        print("no compiled CPU backend is available: "
              f"{fastconv.unavailable_reasons()}", file=sys.stderr)
        return 2
    fastconv.set_num_threads(args.threads)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    fastconv.warmup(tuple(compiled))

    command = "python benchmarks/report.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    print(f"`{command.strip()}`\n")
    print(_environment(args.threads, torch) + f"; {args.stat} of "
          f"{timer.repeats} alternated samples of ~"
          f"{timer.sample_seconds * 1e3:.0f} ms each (naive: "
          f"{naive_timer.repeats}).\n")

    if args.fastest:
        table, order = fastest_backends(compiled, timer, args.ops)
        print("Fastest compiled CPU backend per primitive:\n")
        print(table)
        print("\nSuggested registry order (fastconv/backends/__init__.py):\n")
        print("```python\n_AUTO_ORDER = {")
        for primitive, ranked in order.items():
            names = ", ".join(repr(name) for name in ranked + ("naive",))
            print(f"    {primitive!r}: ({names}),")
        print("}\n```")
        print(f"\nFinished with {_load_average()}.")
        return 0

    fastconv_names = compiled + ["auto"]
    timings = compare_with_torch(torch, fastconv_names, timer, args.ops)
    print(torch_table(timings, fastconv_names, torch is not None))
    all_pass = True
    if torch is not None:
        summary, all_pass = summary_table(timings, fastconv_names)
        print("\nSummary (PyTorch time / fastconv time; above 1 means "
              "fastconv is faster):\n")
        print(summary)
    else:
        print("\nPyTorch is not installed: no ratios, floors not checked.")
    if not args.no_naive:
        print("\nSpeedup over the naive reference loops (same small shapes):\n")
        print(naive_table(compiled, naive_timer, args.ops))
    print(f"\nFinished with {_load_average()}.")
    return 0 if all_pass else 1


if __name__ == "__main__":
    sys.exit(main())
