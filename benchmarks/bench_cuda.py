"""The CUDA backend against PyTorch CUDA, on the CPU benchmarks' shapes.

Needs a GPU, numba-cuda and a CUDA build of PyTorch. Two ways to run it:

    python benchmarks/bench_cuda.py [--rounds 9] [--json results.json]
    pytest benchmarks/bench_cuda.py --benchmark-only

The script times every implementation in one process, taking turns per
shape, and prints a Markdown table: median milliseconds per call and
``PyTorch time / fastconv time`` (above 1: fastconv is faster), with
geometric means per op. The pytest-benchmark suite times the same calls, one
group per op and shape.

What is compared (shapes from ``cases.py``; float32):

- ``fastconv``: ``backend='cuda'`` on Numba device arrays, so inputs and
  results stay on the GPU (no host copies, as in a training loop);
- ``fastconv (NumPy)``: the same op from NumPy arrays, copies included;
- ``torch``: PyTorch on CUDA tensors, cuDNN with TF32 off (full float32
  arithmetic, as fastconv does), no autograd bookkeeping except in
  conv2d forward+backward, which goes through autograd as training does;
- ``torch TF32`` (conv only): PyTorch's default, TF32 tensor cores.

Every timed call synchronises the device at the end of its batch of
repetitions, so asynchronous launches are not under-counted.

``--caching-allocator`` runs fastconv on the opt-in caching device allocator
(``NUMBA_CUDA_MEMORY_MANAGER=fastconv.backends._cuda_memory``) instead of
Numba's default, which allocates and frees (synchronising the device) per
array; PyTorch always uses its own caching allocator.

``--smoke`` runs the script's code paths on tiny shapes without a GPU
(fastconv under ``NUMBA_ENABLE_CUDASIM=1``, PyTorch on the CPU): a check of
the script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastconv  # noqa: E402
from cases import (  # noqa: E402
    CONV_SHAPES,
    DROPOUT_SEED,
    DROPOUT_SHAPES,
    POOL_SHAPES,
    ConvShape,
    DropoutShape,
    PoolShape,
    make_arrays,
)

CONV_OPS = ("conv2d_forward", "conv2d_backward", "conv2d_forward_backward")
POOL_OPS = ("max_pool2d_forward", "max_pool2d_backward",
            "avg_pool2d_forward", "avg_pool2d_backward")
DROPOUT_OPS = ("dropout", "dropout_apply")

SMOKE_CONV_SHAPES = (ConvShape(2, 3, 6, 6, 4, 3, 1, 1),
                     ConvShape(1, 2, 7, 7, 3, 3, 2, 1))
SMOKE_POOL_SHAPES = (PoolShape(1, 2, 6, 6, kernel=3, stride=2, padding=1),)
SMOKE_DROPOUT_SHAPES = (DropoutShape(1, 2, 5, 5, p=0.5),)


# ------------------------------------------------------------------ the calls

def _pool_options(shape):
    return dict(kernel_size=shape.kernel, stride=shape.stride,
                padding=shape.padding)


def fastconv_call(op, shape, arrays, to_device):
    """A callable running ``op`` once on backend='cuda'; ``to_device`` turns
    the NumPy inputs into what the call is given (device arrays or not)."""
    x = to_device(arrays["x"])
    if isinstance(shape, ConvShape):
        weight, bias = to_device(arrays["weight"]), to_device(arrays["bias"])
        grad_output = to_device(arrays["grad_output"])
        conv = dict(stride=shape.stride, padding=shape.padding, backend="cuda")
        if op == "conv2d_forward":
            return lambda: fastconv.conv2d(x, weight, bias, **conv)
        if op == "conv2d_backward":
            return lambda: fastconv.conv2d_backward(grad_output, x, weight,
                                                    **conv)
        if op == "conv2d_forward_backward":
            def forward_backward():
                fastconv.conv2d(x, weight, bias, **conv)
                return fastconv.conv2d_backward(grad_output, x, weight, **conv)
            return forward_backward
    elif isinstance(shape, PoolShape):
        pool = _pool_options(shape)
        grad_output = to_device(arrays["grad_output"])
        input_shape = shape.input_shape
        if op == "max_pool2d_forward":
            return lambda: fastconv.max_pool2d(x, **pool, return_indices=True,
                                               backend="cuda")
        if op == "max_pool2d_backward":
            _, indices = fastconv.max_pool2d(x, **pool, return_indices=True,
                                             backend="cuda")
            return lambda: fastconv.max_pool2d_backward(
                grad_output, indices, input_shape, backend="cuda")
        if op == "avg_pool2d_forward":
            return lambda: fastconv.avg_pool2d(x, **pool, backend="cuda")
        if op == "avg_pool2d_backward":
            return lambda: fastconv.avg_pool2d_backward(
                grad_output, input_shape, **pool, backend="cuda")
    elif isinstance(shape, DropoutShape):
        if op == "dropout":
            return lambda: fastconv.dropout(x, shape.p, seed=DROPOUT_SEED,
                                            backend="cuda")
        if op == "dropout_apply":
            mask = to_device(fastconv.dropout_mask(
                shape.input_shape, shape.p, DROPOUT_SEED, backend="cuda"))
            return lambda: fastconv.dropout_backward(x, mask, shape.p,
                                                     backend="cuda")
    raise ValueError(f"op {op!r} does not apply to {type(shape).__name__}")


def torch_call(op, shape, arrays, torch, device):
    """A callable running ``op`` once in PyTorch on ``device``."""
    functional = torch.nn.functional

    def tensor(name):
        return torch.from_numpy(arrays[name]).to(device)

    x = tensor("x")
    if isinstance(shape, ConvShape):
        weight, bias, grad_output = (tensor("weight"), tensor("bias"),
                                     tensor("grad_output"))
        stride, padding = [shape.stride] * 2, [shape.padding] * 2
        if op == "conv2d_forward":
            def forward():
                with torch.no_grad():
                    return functional.conv2d(x, weight, bias, stride, padding)
            return forward
        if op == "conv2d_backward":
            # ATen's kernel for all three gradients, without autograd.
            return lambda: torch.ops.aten.convolution_backward(
                grad_output, x, weight, [shape.out_channels], stride, padding,
                [1, 1], False, [0, 0], 1, [True, True, True])
        if op == "conv2d_forward_backward":
            leaves = [t.detach().clone().requires_grad_(True)
                      for t in (x, weight, bias)]

            def forward_backward():
                y = functional.conv2d(*leaves, stride=stride, padding=padding)
                return torch.autograd.grad(y, leaves, grad_output)
            return forward_backward
    elif isinstance(shape, PoolShape):
        kernel, stride = [shape.kernel] * 2, [shape.stride] * 2
        padding, dilation = [shape.padding] * 2, [1, 1]
        grad_output = tensor("grad_output")
        if op == "max_pool2d_forward":
            def max_forward():
                with torch.no_grad():
                    return functional.max_pool2d(x, kernel, stride, padding,
                                                 return_indices=True)
            return max_forward
        if op == "max_pool2d_backward":
            with torch.no_grad():
                _, indices = functional.max_pool2d(x, kernel, stride, padding,
                                                   return_indices=True)
            return lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                grad_output, x, kernel, stride, padding, dilation, False,
                indices)
        if op == "avg_pool2d_forward":
            def avg_forward():
                with torch.no_grad():
                    return functional.avg_pool2d(x, kernel, stride, padding)
            return avg_forward
        if op == "avg_pool2d_backward":
            return lambda: torch.ops.aten.avg_pool2d_backward(
                grad_output, x, kernel, stride, padding, False, True, None)
    elif isinstance(shape, DropoutShape):
        if op == "dropout":
            def dropout():
                with torch.no_grad():
                    return torch.ops.aten.native_dropout(x, shape.p, True)
            return dropout
        if op == "dropout_apply":
            with torch.no_grad():
                _, mask = torch.ops.aten.native_dropout(x, shape.p, True)
            scale = 1.0 / (1.0 - shape.p)
            return lambda: torch.ops.aten.native_dropout_backward(x, mask,
                                                                  scale)
    raise ValueError(f"op {op!r} has no PyTorch counterpart for "
                     f"{type(shape).__name__}")


# ------------------------------------------------------------------- timing

def median_times(callables: dict, synchronize, rounds: int,
                 min_seconds: float = 0.01) -> dict:
    """Median seconds per call of each callable, measured in turns.

    Each callable is warmed up (compiles, caches), then repeated enough times
    per measurement to last ``min_seconds``; the order of the callables
    rotates every round so that none always follows another.
    """
    repeats = {}
    for name, call in callables.items():
        for _ in range(2):
            call()
        synchronize()
        start = time.perf_counter()
        call()
        synchronize()
        once = time.perf_counter() - start
        repeats[name] = max(1, min(1000, math.ceil(min_seconds / max(once,
                                                                     1e-6))))
    samples = {name: [] for name in callables}
    names = list(callables)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            call, count = callables[name], repeats[name]
            synchronize()
            start = time.perf_counter()
            for _ in range(count):
                call()
            synchronize()
            samples[name].append((time.perf_counter() - start) / count)
    return {name: statistics.median(values) for name, values in
            samples.items()}


def _geometric_mean(values):
    values = [v for v in values if v and math.isfinite(v)]
    if not values:
        return float("nan")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def environment(torch, cuda) -> dict:
    facts = {"python": platform.python_version(),
             "numpy": np.__version__, "fastconv": fastconv.__version__,
             "numba allocator": os.environ.get("NUMBA_CUDA_MEMORY_MANAGER",
                                               "default")}
    try:
        import numba
        facts["numba"] = numba.__version__
        from importlib.metadata import version
        facts["numba-cuda"] = version("numba-cuda")
    except Exception:  # pragma: no cover - informative only
        pass
    if torch is not None:
        facts["torch"] = torch.__version__
        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name(0)
            facts["cudnn"] = torch.backends.cudnn.version()
            facts["torch_cuda"] = torch.version.cuda
    return facts


def run(rounds: int, smoke: bool, ops_filter=None) -> dict:
    import torch
    from numba import cuda

    torch_device = "cpu" if smoke else "cuda"
    if smoke:  # the simulator runs one Python thread per CUDA thread
        from fastconv import config
        config.CUDA_THREADS_PER_BLOCK = config.CUDA_MAX_BLOCKS = 4
        config.CUDA_CONV_TILE_M = config.CUDA_CONV_TILE_N = 4
        config.CUDA_CONV_MICRO_M = config.CUDA_CONV_MICRO_N = 2
        config.CUDA_REDUCE_THREADS = 4
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("bench_cuda.py needs a CUDA build of PyTorch and a "
                         "GPU (use --smoke to check the script without one)")
    if "cuda" not in fastconv.available_backends():
        raise SystemExit(f"backend 'cuda' unavailable: "
                         f"{fastconv.unavailable_reasons().get('cuda')}")

    def synchronize():
        cuda.synchronize()
        if torch_device == "cuda":
            torch.cuda.synchronize()

    def set_tf32(enabled):
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cuda.matmul.allow_tf32 = enabled

    def with_tf32(call):
        def wrapped():
            set_tf32(True)
            try:
                return call()
            finally:
                set_tf32(False)
        return wrapped

    set_tf32(False)
    workloads = []
    for ops, shapes in ((CONV_OPS, SMOKE_CONV_SHAPES if smoke else CONV_SHAPES),
                        (POOL_OPS, SMOKE_POOL_SHAPES if smoke else POOL_SHAPES),
                        (DROPOUT_OPS, SMOKE_DROPOUT_SHAPES if smoke else
                         DROPOUT_SHAPES)):
        for op in ops:
            if ops_filter and not any(part in op for part in ops_filter):
                continue
            for shape in shapes:
                workloads.append((op, shape))

    results = []
    for op, shape in workloads:
        arrays = make_arrays(shape)
        callables = {
            "fastconv": fastconv_call(op, shape, arrays, cuda.to_device),
            "fastconv (NumPy)": fastconv_call(op, shape, arrays,
                                              lambda a: a),
            "torch": torch_call(op, shape, arrays, torch, torch_device),
        }
        if op.startswith("conv2d") and torch_device == "cuda":
            callables["torch TF32"] = with_tf32(
                torch_call(op, shape, arrays, torch, torch_device))
        medians = median_times(callables, synchronize, rounds)
        row = {"op": op, "shape": shape.label,
               "ms": {name: 1e3 * value for name, value in medians.items()}}
        row["torch / fastconv"] = medians["torch"] / medians["fastconv"]
        if "torch TF32" in medians:
            row["torch TF32 / fastconv"] = (medians["torch TF32"]
                                            / medians["fastconv"])
        results.append(row)
        print(f"{op:26s} {shape.label:34s} " + "  ".join(
            f"{name} {ms:9.3f} ms" for name, ms in row["ms"].items()),
            flush=True)
    return {"environment": environment(torch, cuda), "rounds": rounds,
            "results": results}


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"GPU: {env.get('gpu', 'none (smoke run)')}; "
             + ", ".join(f"{k} {v}" for k, v in env.items() if k != "gpu"),
             "",
             "| op | shape | fastconv ms | fastconv (NumPy) ms | torch ms | "
             "torch / fastconv | torch TF32 / fastconv |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    by_op: dict = {}
    for row in report["results"]:
        ms = row["ms"]
        tf32 = row.get("torch TF32 / fastconv")
        lines.append(
            f"| {row['op']} | {row['shape']} | {ms['fastconv']:.3f} | "
            f"{ms['fastconv (NumPy)']:.3f} | {ms['torch']:.3f} | "
            f"{row['torch / fastconv']:.2f} | "
            f"{'' if tf32 is None else f'{tf32:.2f}'} |")
        by_op.setdefault(row["op"], []).append(row)
    lines += ["", "| op | geometric mean torch / fastconv | "
              "geometric mean torch TF32 / fastconv |", "| --- | ---: | ---: |"]
    for op, rows in by_op.items():
        fp32 = _geometric_mean([r["torch / fastconv"] for r in rows])
        tf32 = _geometric_mean([r.get("torch TF32 / fastconv") for r in rows])
        lines.append(f"| {op} | {fp32:.2f} | "
                     f"{'' if math.isnan(tf32) else f'{tf32:.2f}'} |")
    return "\n".join(lines)


# ------------------------------------------------------- pytest-benchmark

try:
    import pytest
except ImportError:  # pragma: no cover - the script needs no pytest
    pytest = None

if pytest is not None:
    _BENCH_CASES = [(op, shape) for ops, shapes in (
        (CONV_OPS, CONV_SHAPES), (POOL_OPS, POOL_SHAPES),
        (DROPOUT_OPS, DROPOUT_SHAPES)) for op in ops for shape in shapes]

    @pytest.fixture(scope="module")
    def gpu():
        """(torch, numba.cuda) when both can use a GPU, else skip."""
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("PyTorch sees no CUDA GPU")
        if "cuda" not in fastconv.available_backends():
            pytest.skip(f"fastconv backend 'cuda' unavailable: "
                        f"{fastconv.unavailable_reasons().get('cuda')}")
        from numba import cuda
        torch.backends.cudnn.allow_tf32 = False
        return torch, cuda

    @pytest.mark.parametrize("implementation", ["fastconv", "torch"])
    @pytest.mark.parametrize(
        "op, shape", _BENCH_CASES,
        ids=[f"{op}-{shape.label}" for op, shape in _BENCH_CASES])
    def test_cuda(benchmark, gpu, op, shape, implementation):
        torch, cuda = gpu
        benchmark.group = f"cuda {op} {shape.label}"
        arrays = make_arrays(shape)
        call = (fastconv_call(op, shape, arrays, cuda.to_device)
                if implementation == "fastconv" else
                torch_call(op, shape, arrays, torch, "cuda"))

        def call_and_wait():
            call()
            cuda.synchronize()
            torch.cuda.synchronize()

        benchmark.pedantic(call_and_wait, rounds=20, iterations=5,
                           warmup_rounds=2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--ops", nargs="*",
                        help="only ops whose name contains one of these")
    parser.add_argument("--caching-allocator", action="store_true",
                        help="use fastconv.backends._cuda_memory as Numba's "
                             "device allocator")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, PyTorch on the CPU, fastconv under "
                             "the simulator: checks the script, measures "
                             "nothing")
    args = parser.parse_args(argv)
    if args.caching_allocator:  # read when numba.cuda is first imported
        if "numba.cuda" in sys.modules:
            raise SystemExit("--caching-allocator: numba.cuda is already "
                             "imported")
        os.environ["NUMBA_CUDA_MEMORY_MANAGER"] = (
            "fastconv.backends._cuda_memory")
    report = run(1 if args.smoke else args.rounds, args.smoke, args.ops)
    text = markdown(report)
    print()
    print(text)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
        with open(os.path.splitext(args.json)[0] + ".md", "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
