"""fastconv against PyTorch and ONNX Runtime on CPU, printed as Markdown.

    python benchmarks/report.py [--threads 2] [--repeats 11] [--quick]
    python benchmarks/report.py --ops conv2d --quick   # the conv tables alone
    python benchmarks/report.py --fastest     # fastest CPU backend per primitive

conv2d (forward, and forward+backward) is timed with each library in a
process of its own (``conv_peer.py``): fastconv's 'auto' and each compiled
backend, PyTorch, ONNX Runtime (a one-node Conv model, forward only) and
numpy's sgemm (the ceiling of a GEMM-based convolution). The processes take
turns, one library after another in a rotated order, for ``--rounds``
rounds; a figure is the median over the rounds of each round's median. The
table gives ms, GFLOP/s (direct-method FLOPs, 2 N K OH OW C R S / groups,
three times that forward+backward), the fraction of the sgemm rate, both
ratios (peer time / fastconv time: above 1, fastconv is faster) and the
method 'auto' ran.

The other ops run in this one process:

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
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, NamedTuple

# The environment as the caller has it, before ``import fastconv`` sets its
# OpenMP wait policy: the peer processes (conv_peer.py) start from it, so
# each library runs with the settings its users get by default (fastconv's
# own, on import; PyTorch's libgomp defaults).
USER_ENVIRONMENT = dict(os.environ)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastconv  # noqa: E402
from fastconv.backends import PRIMITIVES  # noqa: E402

import cases  # noqa: E402
import conv_peer  # noqa: E402

#: (what, op, shapes, floor): the issue's floors, checked on 'auto' as the
#: geometric mean of PyTorch time / fastconv time over the shapes (conv2d's
#: bars are checked by ``conv_summary``).
FLOORS = (
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
#: conv2d bars (issue 9), on 'auto': (peer, op, geometric mean at least,
#: every shape at least).
CONV_BARS = (
    ("onnxruntime", "conv2d_forward", 1.0, 0.85),
    ("torch", "conv2d_forward", 1.3, 1.0),
    ("torch", "conv2d_forward_backward", 1.4, 1.0),
)
#: The worker that times one library in a process of its own.
CONV_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         "conv_peer.py")

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
            f"({platform.machine()}, {_load_average()}); OpenMP as each "
            f"library sets it (caller's OMP_WAIT_POLICY="
            f"{USER_ENVIRONMENT.get('OMP_WAIT_POLICY', 'unset')}); float32")


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


# ------------------------------------------------------ conv, per process

def _conv_flops(shape) -> float:
    """Direct-method FLOPs of one forward: 2 N K OH OW (C / groups) R S."""
    batch, out_channels, out_height, out_width = shape.output_shape
    return (2.0 * batch * out_channels * out_height * out_width
            * shape.in_channels // shape.groups * shape.kernel ** 2)


def _conv_libraries(compiled):
    libraries = ["fastconv:auto"] + [f"fastconv:{name}" for name in compiled]
    for module in ("torch", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            continue
        libraries.append(module)
    return libraries


def _run_peer(library, op, threads, repeats, sample_ms):
    """{shape label: (seconds, method)} from one conv_peer.py process."""
    command = [sys.executable, CONV_PEER, library, "--op", op, "--threads",
               str(threads), "--repeats", str(repeats), "--sample-ms",
               str(sample_ms)]
    done = subprocess.run(command, capture_output=True, text=True,
                          check=False, env=USER_ENVIRONMENT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line]
    return {row["shape"]: (row["seconds"], row["method"]) for row in rows}


def measure_conv(compiled, threads, rounds, repeats, sample_ms):
    """Median over rounds of each library's per-shape time, every library
    in its own process, taking turns in a rotated order.

    Returns ({op: {library: {label: seconds}}}, {label: method of auto},
    sgemm seconds for 2048^3, libraries)."""
    libraries = _conv_libraries(compiled)
    samples = {op: {library: {} for library in libraries}
               for op in cases.CONV_OPS}
    sgemm, methods = [], {}
    jobs = [("sgemm", "conv2d_forward")] + [
        (library, op) for op in cases.CONV_OPS for library in libraries
        if not (library == "onnxruntime" and op != "conv2d_forward")]
    for round_index in range(rounds):
        shift = round_index % len(jobs)
        for library, op in jobs[shift:] + jobs[:shift]:
            result = _run_peer(library, op, threads, repeats, sample_ms)
            if library == "sgemm":
                sgemm.append(result["sgemm"][0])
                continue
            for label, (seconds, method) in result.items():
                samples[op][library].setdefault(label, []).append(seconds)
                if library == "fastconv:auto" and method:
                    methods[label] = method
        print(f"  conv round {round_index + 1}/{rounds}", file=sys.stderr,
              flush=True)
    medians = {op: {library: {label: statistics.median(values)
                              for label, values in per_shape.items()}
                    for library, per_shape in per_library.items()
                    if per_shape}
               for op, per_library in samples.items()}
    return medians, methods, statistics.median(sgemm), libraries


def conv_tables(medians, methods, sgemm_seconds):
    """The forward and forward+backward tables, and the bars' summary."""
    sgemm_rate = 2.0 * conv_peer.SGEMM_SIZE ** 3 / sgemm_seconds
    out = [f"numpy sgemm ({conv_peer.SGEMM_SIZE}^3): "
           f"{sgemm_rate / 1e9:.0f} GFLOP/s.\n"]
    for op, factor in (("conv2d_forward", 1), ("conv2d_forward_backward", 3)):
        per_library = medians[op]
        auto = per_library["fastconv:auto"]
        peers = [name for name in ("onnxruntime", "torch")
                 if name in per_library]
        others = [name for name in per_library
                  if name.startswith("fastconv:") and name != "fastconv:auto"]
        header = (["shape", "auto method", "auto ms", "GFLOP/s", "of sgemm"]
                  + [f"{name} ms" for name in peers]
                  + [f"{name}/auto" for name in peers]
                  + [f"{name.split(':')[1]} ms" for name in others])
        rows = []
        for shape in cases.CONV_SHAPES:
            label = shape.label
            rate = factor * _conv_flops(shape) / auto[label]
            rows.append(
                [label, methods.get(label, "-"), _ms(auto[label]),
                 f"{rate / 1e9:.0f}", f"{rate / sgemm_rate:.2f}"]
                + [_ms(per_library[name][label]) for name in peers]
                + [_ratio(per_library[name][label] / auto[label])
                   for name in peers]
                + [_ms(per_library[name][label]) for name in others])
        title = "forward" if factor == 1 else "forward+backward"
        out.append(f"conv2d {title} (float32):\n")
        out.append(_table(header, rows, text_columns=(0, 1)))
        out.append("")
    return "\n".join(out)


def conv_summary(medians, sgemm_seconds):
    """The issue-9 bars on 'auto': Markdown and whether all pass."""
    header = ["bar", "geomean", "worst shape", "needed", "result"]
    rows, all_pass = [], True
    for peer, op, mean_bar, shape_bar in CONV_BARS:
        per_library = medians[op]
        if peer not in per_library:
            continue
        ratios = {shape.label: per_library[peer][shape.label]
                  / per_library["fastconv:auto"][shape.label]
                  for shape in cases.CONV_SHAPES}
        mean, worst = geometric_mean(ratios.values()), min(ratios.values())
        passed = mean >= mean_bar and worst >= shape_bar
        all_pass &= passed
        worst_label = min(ratios, key=ratios.get)
        rows.append([f"{op} vs {peer}", _ratio(mean),
                     f"{_ratio(worst)} ({worst_label})",
                     f">= {mean_bar}x, each >= {shape_bar}x",
                     "PASS" if passed else "FAIL"])
    sgemm_rate = 2.0 * conv_peer.SGEMM_SIZE ** 3 / sgemm_seconds
    wide = [shape for shape in cases.CONV_SHAPES
            if shape.kernel == 3 and shape.stride == 1
            and min(shape.in_channels, shape.out_channels) >= 64]
    rates = {shape.label: _conv_flops(shape)
             / medians["conv2d_forward"]["fastconv:auto"][shape.label]
             / sgemm_rate for shape in wide}
    if rates:
        worst_label = min(rates, key=rates.get)
        passed = rates[worst_label] > 1
        all_pass &= passed
        rows.append(["3x3 s1, C,K >= 64: rate / sgemm rate",
                     f"{geometric_mean(rates.values()):.2f}",
                     f"{rates[worst_label]:.2f} ({worst_label})", "> 1",
                     "PASS" if passed else "FAIL"])
    return _table(header, rows, text_columns=(0, 2, 3, 4)), all_pass


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
    parser.add_argument("--rounds", type=int, default=None,
                        help="conv2d: rounds of one process per library "
                             "(default 5, or 3 with --quick)")
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

    all_pass = True
    if not args.ops or any("conv2d".startswith(prefix)
                           or prefix.startswith("conv2d")
                           for prefix in args.ops):
        medians, methods, sgemm_seconds, libraries = measure_conv(
            compiled, args.threads, args.rounds or (3 if args.quick else 5),
            timer.repeats, timer.sample_seconds * 1e3)
        rounds = args.rounds or (3 if args.quick else 5)
        print(f"conv2d, each library in its own process "
              f"({', '.join(libraries)}), median of {rounds} rounds; "
              f"{_load_average()}:\n")
        print(conv_tables(medians, methods, sgemm_seconds))
        summary, all_pass = conv_summary(medians, sgemm_seconds)
        print("conv2d bars, on 'auto' (peer time / fastconv time):\n")
        print(summary)
        print()
    fastconv_names = compiled + ["auto"]
    other_ops = [op for op in _selected(cases.TORCH_OPS, args.ops)
                 if not op.startswith("conv2d")]
    timings = compare_with_torch(torch, fastconv_names, timer,
                                 other_ops) if other_ops else {}
    if timings:
        print(torch_table(timings, fastconv_names, torch is not None))
    if torch is not None and timings:
        summary, passed = summary_table(timings, fastconv_names)
        all_pass &= passed
        print("\nSummary (PyTorch time / fastconv time; above 1 means "
              "fastconv is faster):\n")
        print(summary)
    elif torch is None:
        print("\nPyTorch is not installed: no ratios, floors not checked.")
    if not args.no_naive:
        print("\nSpeedup over the naive reference loops (same small shapes):\n")
        print(naive_table(compiled, naive_timer, args.ops))
    print(f"\nFinished with {_load_average()}.")
    return 0 if all_pass else 1


if __name__ == "__main__":
    sys.exit(main())
