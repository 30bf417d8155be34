"""conv_transpose2d against PyTorch, and against fastconv's conv2d on the
same FLOPs.

A transposed convolution from (N, C_in, H, W) to (N, C_out, H_out, W_out)
does the multiply-adds of the conv2d from (N, C_out, H_out, W_out) to
(N, C_in, H, W) with the same weight, stride and padding; fastconv runs it
on that conv2d's input-gradient kernels. Each measurement runs in its own
process (one library per process, the processes taking turns round after
round) with the library's defaults: fastconv's 'auto' backend and thread
count, PyTorch's own thread count set to fastconv's.

    python benchmarks/bench_conv_transpose.py [--rounds 5] [--repeats 5]

Prints per case the medians (ms) of: fastconv conv_transpose2d forward,
PyTorch conv_transpose2d forward, fastconv conv2d forward on the same
FLOPs; the same for the backward passes (conv_transpose2d_backward, torch's
autograd backward, conv2d_backward); and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# (name, x shape (N, C_in, H, W), C_out, kernel, stride, padding,
#  output_padding): decoder layers as in DCGAN / U-Net upsampling
CASES = [
    ("dcgan_k4s2_64to32_16px", (16, 64, 16, 16), 32, 4, 2, 1, 0),
    ("unet_k2s2_128to64_28px", (8, 128, 28, 28), 64, 2, 2, 0, 0),
    ("k3s1_64to64_32px", (8, 64, 32, 32), 64, 3, 1, 1, 0),
    ("k3s2_op1_64to32_28px", (8, 64, 28, 28), 32, 3, 2, 1, 1),
]
CASE_BY_NAME = {case[0]: case for case in CASES}
WHAT = ("fastconv_transpose", "torch_transpose", "fastconv_conv2d")


def _arrays(case):
    import numpy as np

    _, x_shape, out_channels, kernel, stride, padding, output_padding = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    weight = rng.standard_normal((x_shape[1], out_channels, kernel, kernel),
                                 dtype=np.float32) * 0.05
    options = dict(stride=stride, padding=padding,
                   output_padding=output_padding)
    return x, weight, options


#: Each process warms a measurement up for this long (at least 3 calls):
#: compilation, caches, and the first allocations, which fault in fresh
#: pages (some 6 us each on this virtual machine) until the heap holds the
#: freed blocks the next calls reuse; a single warm-up call left fastconv's
#: stride-2 transposed convolutions 2.6x slower than steady state.
WARMUP_SECONDS = 0.3


def _median_ms(function, repeats):
    start, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < WARMUP_SECONDS:
        function()
        calls += 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def worker(what, case_name, repeats):
    """Time one library on one case; print {"forward": ms, "backward": ms}."""
    import fastconv

    case = CASE_BY_NAME[case_name]
    x, weight, options = _arrays(case)
    threads = fastconv.get_num_threads()
    if what == "fastconv_transpose":
        grad = fastconv.conv_transpose2d(x, weight, **options)
        forward = lambda: fastconv.conv_transpose2d(x, weight, **options)
        backward = lambda: fastconv.conv_transpose2d_backward(
            grad, x, weight, **options)
    elif what == "fastconv_conv2d":
        # the conv2d with the same multiply-adds: input shaped like the
        # transposed convolution's output, output shaped like its input
        y = fastconv.conv_transpose2d(x, weight, **options)
        conv_options = dict(stride=options["stride"],
                            padding=options["padding"])
        forward = lambda: fastconv.conv2d(y, weight, **conv_options)
        backward = lambda: fastconv.conv2d_backward(x, y, weight,
                                                    **conv_options)
    else:
        import torch

        torch.set_num_threads(threads)
        x_t = torch.from_numpy(x).requires_grad_(True)
        w_t = torch.from_numpy(weight).requires_grad_(True)
        y_t = torch.nn.functional.conv_transpose2d(x_t, w_t, **options)
        grad_t = y_t.detach().clone()

        def forward():
            with torch.no_grad():
                torch.nn.functional.conv_transpose2d(x_t, w_t, **options)

        def backward():
            out = torch.nn.functional.conv_transpose2d(x_t, w_t, **options)
            x_t.grad = w_t.grad = None
            out.backward(grad_t)

    result = {"forward": _median_ms(forward, repeats),
              "backward": _median_ms(backward, repeats), "threads": threads}
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", nargs="*", default=[c[0] for c in CASES])
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.repeats)
        return
    print(f"load average {os.getloadavg()}; {args.rounds} rounds x "
          f"{args.repeats} repeats; one process per measurement")
    for name in args.cases:
        samples = {what: {"forward": [], "backward": []} for what in WHAT}
        for round_index in range(args.rounds):
            order = WHAT if round_index % 2 == 0 else WHAT[::-1]
            for what in order:
                output = subprocess.run(
                    [sys.executable, __file__, "--repeats",
                     str(args.repeats), "--worker", what, name],
                    check=True, capture_output=True, text=True).stdout
                result = json.loads(output.strip().splitlines()[-1])
                for phase in ("forward", "backward"):
                    samples[what][phase].append(result[phase])
        medians = {what: {phase: statistics.median(values) for phase, values
                          in phases.items()} for what, phases in
                   samples.items()}
        print(f"\n{name}  x={CASE_BY_NAME[name][1]} -> C_out="
              f"{CASE_BY_NAME[name][2]}")
        for phase in ("forward", "backward"):
            ours = medians["fastconv_transpose"][phase]
            theirs = medians["torch_transpose"][phase]
            conv = medians["fastconv_conv2d"][phase]
            print(f"  {phase:8s} fastconv {ours:8.2f} ms  torch {theirs:8.2f}"
                  f" ms  fastconv conv2d same FLOPs {conv:8.2f} ms  | "
                  f"torch/fastconv {theirs / ours:5.2f}  "
                  f"transpose/conv2d {ours / conv:5.2f}")
    print(f"\nload average {os.getloadavg()}")


if __name__ == "__main__":
    main()
