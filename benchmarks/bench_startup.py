"""Cold start: the first call of each public function in a fresh process.

    python benchmarks/bench_startup.py [--repeats 3] [--backend auto]
    python benchmarks/bench_startup.py --train     # also `fastconv train`

Each case runs in its own fresh Python process, once with an empty Numba
cache (``NUMBA_CACHE_DIR`` a new empty directory: what a user meets on the
first call after ``pip install``) and once with a warm one (the same
directory after a first process filled it: the first call of every later
process). The child reports how long ``import fastconv`` took and how long
the first call took (from just before it to just after it, on the default
backend unless ``--backend`` says otherwise). The table shows the median
over ``--repeats`` fresh processes of each.

``--train`` also times ``fastconv train --epochs 2`` with an empty cache and
prints the first and second epochs' training seconds (the bar: the first
within 1.5x of the second).

The figures depend on the machine's load: the header prints the load
average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap

# Each case: (name, setup run before the clock starts, the timed first call).
# Shapes are a user's first tries: small, float32, defaults.
CASES = (
    ("conv2d", "x = rng((2, 3, 16, 16)); w = rng((4, 3, 3, 3))",
     "fc.conv2d(x, w, padding=1)"),
    ("conv2d_backward",
     "x = rng((2, 3, 16, 16)); w = rng((4, 3, 3, 3)); g = rng((2, 4, 16, 16))",
     "fc.conv2d_backward(g, x, w, padding=1)"),
    ("max_pool2d", "x = rng((2, 3, 16, 16))",
     "fc.max_pool2d(x, 2, return_indices=True)"),
    ("max_pool2d_backward",
     "x = rng((2, 3, 16, 16)); y, i = fc.max_pool2d(x, 2, "
     "return_indices=True, backend='naive')",
     "fc.max_pool2d_backward(y, i, x.shape)"),
    ("avg_pool2d", "x = rng((2, 3, 16, 16))", "fc.avg_pool2d(x, 2)"),
    ("avg_pool2d_backward", "g = rng((2, 3, 8, 8))",
     "fc.avg_pool2d_backward(g, (2, 3, 16, 16), 2)"),
    ("dropout", "x = rng((2, 3, 16, 16))", "fc.dropout(x, 0.5, seed=0)"),
    ("dropout_mask", "", "fc.dropout_mask((2, 3, 16, 16), 0.5, seed=0)"),
    ("dropout_backward",
     "x = rng((2, 3, 16, 16)); y, m = fc.dropout(x, 0.5, seed=0, "
     "backend='naive')",
     "fc.dropout_backward(y, m, 0.5)"),
    ("filter2d", "image = rng((64, 64)); k = fc.kernels.gaussian(5, 1.0)",
     "fc.filter2d(image, k)"),
    ("convolve2d", "image = rng((64, 64)); k = fc.kernels.gaussian(5, 1.0)",
     "fc.convolve2d(image, k)"),
    ("nn step (SmallCNN)",
     "from fastconv import nn, models; m = models.SmallCNN(); "
     "loss = nn.CrossEntropyLoss(); x = rng((8, 1, 28, 28)); "
     "labels = np.arange(8) % 10",
     "loss(m(x), labels); m.backward(loss.backward())"),
)

CHILD = textwrap.dedent("""\
    import json, sys, time
    start = time.perf_counter()
    import numpy as np
    import fastconv as fc
    imported = time.perf_counter() - start
    if {backend!r} != "auto":
        fc.set_backend({backend!r})
    generator = np.random.default_rng(0)
    def rng(shape):
        return generator.standard_normal(shape).astype(np.float32)
    {setup}
    start = time.perf_counter()
    {call}
    first = time.perf_counter() - start
    print(json.dumps({{"import_s": imported, "first_s": first}}))
    """)


def run_child(setup, call, backend, cache_dir):
    """(import seconds, first-call seconds) of one fresh process."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    source = CHILD.format(setup=setup or "pass", call=call, backend=backend)
    result = subprocess.run([sys.executable, "-c", source], env=env,
                            capture_output=True, text=True, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    return figures["import_s"], figures["first_s"]


def time_case(setup, call, backend, repeats):
    """Medians over ``repeats`` rounds: (cold import, cold first call, warm
    import, warm first call), in seconds."""
    samples = {"cold": [], "warm": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="fastconv-cache-") as cache:
            samples["cold"].append(run_child(setup, call, backend, cache))
            samples["warm"].append(run_child(setup, call, backend, cache))
    return tuple(statistics.median(sample[i] for sample in samples[kind])
                 for kind in ("cold", "warm") for i in (0, 1))


def time_training(backend):
    """(first epoch s, second epoch s) of `fastconv train --epochs 2` with
    an empty Numba cache."""
    with tempfile.TemporaryDirectory(prefix="fastconv-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        if backend != "auto":
            env["FASTCONV_BACKEND"] = backend
        with tempfile.TemporaryDirectory() as out:
            result = subprocess.run(
                [sys.executable, "-m", "fastconv.cli", "train", "--epochs",
                 "2", "--quiet", "--out", os.path.join(out, "model.npz")],
                env=env, capture_output=True, text=True, check=True)
    seconds = [float(value) for value in re.findall(
        r"epoch \d+/2: .*\| ([0-9.]+) s,", result.stdout)]
    if len(seconds) != 2:
        raise RuntimeError(f"unexpected train output:\n{result.stdout}")
    return seconds[0], seconds[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--only", default=None,
                        help="comma-separated case names (default: all)")
    parser.add_argument("--train", action="store_true",
                        help="also time the first two epochs of "
                             "`fastconv train` with an empty cache")
    args = parser.parse_args(argv)
    wanted = None if args.only is None else set(args.only.split(","))
    print(f"First call in a fresh process, backend {args.backend}; median "
          f"of {args.repeats} processes each; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print()
    print("| function | import fastconv (s) | first call, empty cache (s) "
          "| first call, warm cache (s) |")
    print("| --- | ---: | ---: | ---: |")
    worst = {"cold": 0.0, "warm": 0.0}
    for name, setup, call in CASES:
        if wanted is not None and name not in wanted:
            continue
        cold_import, cold, warm_import, warm = time_case(
            setup, call, args.backend, args.repeats)
        worst["cold"] = max(worst["cold"], cold)
        worst["warm"] = max(worst["warm"], warm)
        print(f"| {name} | {cold_import:.2f} | {cold:.3f} | {warm:.3f} |",
              flush=True)
    print()
    print(f"slowest first call: {worst['cold']:.3f} s with an empty cache "
          f"(bar 1 s), {worst['warm']:.3f} s warm (bar 0.3 s)")
    if args.train:
        first, second = time_training(args.backend)
        print(f"fastconv train, empty cache: epoch 1 {first:.1f} s, epoch 2 "
              f"{second:.1f} s, ratio {first / second:.2f} (bar 1.5)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
