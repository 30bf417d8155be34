"""Time conv2d in one library, in this process alone: report.py's worker.

    python benchmarks/conv_peer.py LIBRARY [--op conv2d_forward]
        [--threads 2] [--repeats 5] [--sample-ms 50]

LIBRARY is ``fastconv:<backend>`` (``fastconv:auto`` is what a user gets),
``torch``, ``onnxruntime`` or ``sgemm`` (numpy's float32 matmul of 2048^3,
the practical ceiling of a GEMM-based convolution). Every shape of
``cases.CONV_SHAPES`` is timed: a warm-up of 0.3 s, then ``--repeats``
samples of about ``--sample-ms`` each; one JSON object per line goes to
stdout, ``{"shape": label, "seconds": median per call, "method": ...}``
(``method``: what fastconv's 'auto' ran, where the backend says).

report.py starts one of these per library and round, taking turns, so that
no two libraries' thread pools share the cores within a process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

# No OpenMP settings here: each library runs with what its users get by
# default (fastconv sets its wait policy on import; see fastconv._threads).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import cases  # noqa: E402

#: The matrix side of the sgemm ceiling measurement.
SGEMM_SIZE = 2048


#: Each library is run for at least this long before it is timed. The first
#: few hundred milliseconds of a process are slower than its steady state
#: (page faults while the heap grows, thread pools waking): measured on
#: fastconv's N32-C3-32x32 layer, 0.87 then 0.63 then 0.52 ms per call in
#: three consecutive 150 ms samples of a fresh process.
WARMUP_SECONDS = 0.3


def time_call(function, repeats: int, sample_seconds: float) -> float:
    """Median seconds per call over ``repeats`` samples, after running for
    WARMUP_SECONDS (and at least twice)."""
    start = time.perf_counter()
    function()
    warmup_calls = 1
    while (warmup_calls < 2
           or time.perf_counter() - start < WARMUP_SECONDS):
        function()
        warmup_calls += 1
    once = (time.perf_counter() - start) / warmup_calls
    calls = max(1, math.ceil(sample_seconds / max(once, 1e-7)))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def onnxruntime_call(shape, arrays, threads):
    """A one-node ONNX Conv model (weights and bias as initializers, as a
    deployed model has them) in an ONNX Runtime CPU session."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    pads = [shape.padding] * 4
    node = helper.make_node(
        "Conv", ["x", "weight", "bias"], ["y"],
        kernel_shape=[shape.kernel] * 2, strides=[shape.stride] * 2,
        pads=pads, group=shape.groups)
    graph = helper.make_graph(
        [node], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                       list(shape.input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                       list(shape.output_shape))],
        initializer=[numpy_helper.from_array(arrays["weight"], "weight"),
                     numpy_helper.from_array(arrays["bias"], "bias")])
    model = helper.make_model(graph,
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options,
        providers=["CPUExecutionProvider"])
    feed = {"x": arrays["x"]}
    return lambda: session.run(None, feed)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("library")
    parser.add_argument("--op", default="conv2d_forward",
                        choices=cases.CONV_OPS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sample-ms", type=float, default=50.0)
    args = parser.parse_args(argv)
    sample_seconds = args.sample_ms / 1e3

    def emit(label, seconds, method=None):
        print(json.dumps({"shape": label, "seconds": seconds,
                          "method": method}), flush=True)

    if args.library == "sgemm":
        from threadpoolctl import threadpool_limits

        rng = np.random.default_rng(cases.SEED)
        a, b = (rng.standard_normal((SGEMM_SIZE, SGEMM_SIZE),
                                    dtype=np.float32) for _ in range(2))
        with threadpool_limits(args.threads, user_api="blas"):
            emit("sgemm", time_call(lambda: a @ b, args.repeats,
                                    sample_seconds))
        return 0

    if args.library.startswith("fastconv:"):
        import fastconv
        from fastconv.backends import resolve

        backend = args.library.split(":", 1)[1]
        fastconv.set_num_threads(args.threads)
        module = resolve("conv2d_forward", backend)
        describe = getattr(module, "conv2d_method", None)
    elif args.library == "torch":
        import torch

        torch.set_num_threads(args.threads)
    elif args.library == "onnxruntime":
        if args.op != "conv2d_forward":
            return 0  # an inference engine: no backward pass
    else:
        parser.error(f"unknown library {args.library!r}")

    for shape in cases.CONV_SHAPES:
        arrays = cases.make_arrays(shape)
        method = None
        if args.library.startswith("fastconv:"):
            call = cases.fastconv_call(args.op, shape, arrays, backend)
            if describe is not None:
                from fastconv import _shapes

                geometry = _shapes.conv_geometry(
                    shape.input_shape, shape.weight_shape,
                    (shape.stride,) * 2, (shape.padding,) * 4, (1, 1),
                    shape.groups)
                method = describe(geometry, np.dtype(np.float32))
        elif args.library == "torch":
            call = cases.torch_call(args.op, shape, arrays, torch)
        else:
            call = onnxruntime_call(shape, arrays, args.threads)
        emit(shape.label, time_call(call, args.repeats, sample_seconds),
             method)
    return 0


if __name__ == "__main__":
    sys.exit(main())
