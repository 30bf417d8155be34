"""Image filtering benchmarks: fastconv.filter2d against SciPy (and OpenCV).

    pytest benchmarks/bench_filters.py --benchmark-only
    python benchmarks/bench_filters.py                  # the ratio table
    python benchmarks/bench_filters.py --dask           # + the Dask table
    python benchmarks/bench_filters.py --memory         # peak memory, 4096^2

Every case filters a 2048 x 2048 float32 image, grayscale ``(H, W)`` or
colour ``(H, W, 3)``, with a dense random R x R kernel (not separable, so
nobody gets a shortcut), zero boundary, 'same' output:

* ``fastconv``: ``fastconv.filter2d`` (method and backend 'auto');
* ``scipy.ndimage``: ``scipy.ndimage.correlate`` (colour: a (R, R, 1) kernel);
* ``scipy.signal.correlate2d``: direct, grayscale only, kernels up to 9 x 9
  (a 31 x 31 one takes minutes);
* ``scipy.signal.fftconvolve``: with the kernel flipped (a correlation);
* ``cv2.filter2D`` when OpenCV is installed.

pytest-benchmark groups the implementations by case, so each group of its
table compares them on one workload. The script mode times the same calls
side by side, alternating implementations round by round in one process (the
machine is shared, so only ratios of medians mean much), and prints each
implementation's median and its time divided by fastconv's (> 1: fastconv
is faster).

The Dask cases filter a 4096 x 4096 float32 dask array in 1024 x 1024 chunks
on a ``distributed.LocalCluster`` (2 worker processes, 1 thread each) with
``fastconv.dask.filter2d`` and ``dask_image.ndfilters.correlate``, same array,
same cluster, same kernel and boundary.

``--depthwise-conv`` times the Numba backend's depthwise conv2d
(``in_channels == groups``) on its two paths, alternating in one process:
the direct kernel (``fastconv.backends._numba_depthwise``) as dispatched and
with each of its loops forced, against the im2col + GEMM path it replaced,
on CNN shapes, whole 2048^2 images and the band batches that filter2d's
band path sends, with PyTorch's depthwise conv2d beside them when installed.

``--memory`` filters a 4096 x 4096 float32 image (64 MiB) with 9 x 9 and
31 x 31 kernels, each in a fresh process, and prints the peak of Python-
visible allocations (tracemalloc) and the growth of the process's peak
resident memory during the call, beside the sizes of input and output.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pytest

import fastconv
from fastconv.filters import filter2d

IMAGE_SIZE = 2048
KERNEL_SIZES = (3, 5, 7, 9, 11, 15, 21, 31)
CORRELATE2D_MAX_KERNEL = 9
SEED = 20240601
ROUNDS = 3

DASK_IMAGE_SIZE = 4096
DASK_CHUNK = 1024
DASK_KERNEL_SIZES = (3, 9)


def make_image(size, colour, seed=SEED):
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if colour else (size, size)
    return rng.random(shape, dtype=np.float32)


def make_kernel(size, seed=SEED):
    return np.random.default_rng(seed + size).standard_normal(
        (size, size)).astype(np.float32)


def implementations(image, kernel):
    """name -> zero-argument callable filtering ``image`` with ``kernel``.

    Only the implementations that can run this case are listed.
    """
    from scipy import ndimage, signal

    colour = image.ndim == 3
    kernel3 = kernel[:, :, None] if colour else kernel
    flipped = kernel3[::-1, ::-1]
    axes = (0, 1)
    calls = {
        "fastconv": lambda: filter2d(image, kernel),
        "scipy.ndimage": lambda: ndimage.correlate(image, kernel3,
                                                   mode="constant"),
        "scipy.fftconvolve": lambda: signal.fftconvolve(
            image, flipped, mode="same", axes=axes),
    }
    if not colour and kernel.shape[0] <= CORRELATE2D_MAX_KERNEL:
        calls["scipy.correlate2d"] = lambda: signal.correlate2d(
            image, kernel, mode="same", boundary="fill")
    try:
        import cv2
    except ImportError:
        pass
    else:
        calls["cv2.filter2D"] = lambda: cv2.filter2D(
            image, -1, kernel, borderType=cv2.BORDER_CONSTANT)
    return calls


def _case_id(colour, size):
    return f"{'rgb' if colour else 'gray'}-{IMAGE_SIZE}-k{size}"


# --------------------------------------------------------- pytest-benchmark

@pytest.fixture(scope="module", params=[False, True], ids=["gray", "rgb"])
def image(request):
    return make_image(IMAGE_SIZE, request.param)


IMPLEMENTATION_NAMES = ("fastconv", "scipy.ndimage", "scipy.fftconvolve",
                        "scipy.correlate2d", "cv2.filter2D")


@pytest.mark.parametrize("size", KERNEL_SIZES)
@pytest.mark.parametrize("name", IMPLEMENTATION_NAMES)
def test_filter2d(benchmark, image, size, name):
    if name == "cv2.filter2D":
        pytest.importorskip("cv2")
    kernel = make_kernel(size)
    calls = implementations(image, kernel)
    if name not in calls:
        pytest.skip(f"{name} does not run this case (see module docstring)")
    benchmark.group = f"filter2d {_case_id(image.ndim == 3, size)}"
    benchmark.extra_info.update(implementation=name, kernel=size,
                                colour=image.ndim == 3)
    calls[name]()  # warm up (Numba cache load, FFT plans)
    benchmark.pedantic(calls[name], rounds=ROUNDS, iterations=1)


@pytest.fixture(scope="module")
def dask_cluster():
    pytest.importorskip("dask.array")
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, processes=True,
                                       threads_per_worker=1,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def dask_calls(kernel, client):
    """name -> callable computing the filtered array on ``client``."""
    import dask.array as dask_array
    from dask_image import ndfilters

    import fastconv.dask

    image = dask_array.random.default_rng(SEED).random(
        (DASK_IMAGE_SIZE, DASK_IMAGE_SIZE), chunks=DASK_CHUNK,
        dtype=np.float32).persist()
    client.wait_for_workers(2)

    def reduce(array):
        # A sum brings back one number: the filtering runs on the workers,
        # and the transfer of the result does not dominate the timing.
        return float(client.compute(array.sum(dtype=np.float64)).result())

    return {
        "fastconv.dask": lambda: reduce(fastconv.dask.filter2d(
            image, kernel, boundary="reflect")),
        "dask_image": lambda: reduce(ndfilters.correlate(
            image, kernel, mode="mirror")),
    }


@pytest.mark.parametrize("size", DASK_KERNEL_SIZES)
@pytest.mark.parametrize("name", ["fastconv.dask", "dask_image"])
def test_dask_filter2d(benchmark, dask_cluster, size, name):
    pytest.importorskip("dask_image")
    call = dask_calls(make_kernel(size), dask_cluster)[name]
    benchmark.group = f"dask filter2d {DASK_IMAGE_SIZE} k{size}"
    benchmark.extra_info.update(implementation=name, kernel=size)
    call()
    benchmark.pedantic(call, rounds=ROUNDS, iterations=1)


# --------------------------------------------------------------- script mode

MEMORY_CASES = (("9", "auto"), ("9", "direct"), ("31", "auto"))


def memory_case(size, method):
    """Filter 4096^2 float32 with a size x size kernel; print the peaks."""
    import resource
    import tracemalloc

    image = make_image(4096, False)
    kernel = make_kernel(size)
    filter2d(image[:256, :256], kernel, method=method)  # load the kernels
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    start = time.perf_counter()
    result = filter2d(image, kernel, method=method)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - \
        baseline
    mib = 2**20
    print(f"{size}x{size} method={method:<6} input {image.nbytes / mib:.0f} "
          f"MiB, output {result.nbytes / mib:.0f} MiB; peak allocations "
          f"{peak / mib:.0f} MiB (= output + {(peak - result.nbytes) / mib:.0f}"
          f" MiB scratch), peak RSS grew {grown / mib:.0f} MiB; "
          f"{seconds:.2f} s")


def memory_table():
    import subprocess
    import sys

    for size, method in MEMORY_CASES:
        subprocess.run([sys.executable, __file__, "--memory-case", size,
                        method], check=True)


# (N, C, H, W, multiplier, kernel, stride, padding): depthwise conv2d,
# groups = C, K = multiplier * C
DEPTHWISE_CONV_CASES = (
    (64, 32, 14, 14, 1, 3, 1, 1),
    (16, 64, 28, 28, 1, 7, 1, 3),
    (32, 32, 56, 56, 1, 3, 1, 1),
    (32, 64, 28, 28, 1, 3, 2, 1),
    (8, 16, 112, 112, 1, 5, 1, 2),
    (4, 16, 224, 224, 1, 3, 1, 1),
    (2, 8, 512, 512, 1, 3, 1, 1),
    (1, 1, 2048, 2048, 1, 3, 1, 1),
    (1, 1, 2048, 2048, 1, 5, 1, 2),
    (1, 1, 2048, 2048, 1, 9, 1, 4),
    # filter2d's band batches: 16 bands of 64 output rows, 'valid'
    (16, 1, 66, 2050, 1, 3, 1, 0),
    (16, 1, 68, 2052, 1, 5, 1, 0),
    (16, 1, 72, 2056, 1, 9, 1, 0),
    # channel multipliers (the direct kernel runs up to
    # numba_cpu.DEPTHWISE_MAX_MULTIPLIER; an MNIST first layer has 32)
    (32, 16, 56, 56, 4, 3, 1, 1),
    (64, 1, 28, 28, 8, 3, 1, 1),
    (32, 4, 56, 56, 16, 3, 1, 1),
    (64, 1, 28, 28, 32, 3, 1, 1),
)

#: The depthwise kernel's loops, as (name, DEPTHWISE_FUSED_TAPS_MIN_WIDTH,
#: DEPTHWISE_PADDED_PLANE_MAX); None keeps the backend's own setting.
DEPTHWISE_VARIANTS = (
    ("direct", None, None),
    ("rows tap by tap", 2**62, 0),
    ("rows fused", 0, 0),
    ("padded planes", None, 2**62),
)


def depthwise_conv_table(rounds):
    """The Numba backend's depthwise conv2d: the im2col + GEMM path against
    the direct kernel with its own choice of loops ('direct') and with each
    of them forced (row by row one tap per sweep or three, whole padded
    planes). conv2d runs the direct kernel only up to
    ``numba_cpu.DEPTHWISE_MAX_MULTIPLIER`` filters per channel; the rows
    with more show why."""
    from fastconv import _shapes
    from fastconv.backends import numba_cpu

    try:
        import torch
    except ImportError:
        torch = None
    rows = []
    for (batch, channels, height, width, multiplier, size, stride,
         pad) in DEPTHWISE_CONV_CASES:
        rng = np.random.default_rng(SEED)
        x = rng.standard_normal((batch, channels, height, width),
                                dtype=np.float32)
        weight = rng.standard_normal((channels * multiplier, 1, size, size),
                                     dtype=np.float32)
        bias = rng.standard_normal(channels * multiplier, dtype=np.float32)
        g = numba_cpu._as_ints(_shapes.conv_geometry(
            x.shape, weight.shape, (stride, stride), (pad,) * 4, (1, 1),
            channels))

        def variant(fused_min_width, padded_max):
            def call():
                saved = (numba_cpu.DEPTHWISE_FUSED_TAPS_MIN_WIDTH,
                         numba_cpu.DEPTHWISE_PADDED_PLANE_MAX)
                if fused_min_width is not None:
                    numba_cpu.DEPTHWISE_FUSED_TAPS_MIN_WIDTH = fused_min_width
                if padded_max is not None:
                    numba_cpu.DEPTHWISE_PADDED_PLANE_MAX = padded_max
                try:
                    return numba_cpu._depthwise_forward(x, weight, bias, g)
                finally:
                    (numba_cpu.DEPTHWISE_FUSED_TAPS_MIN_WIDTH,
                     numba_cpu.DEPTHWISE_PADDED_PLANE_MAX) = saved
            return call

        calls = {"im2col+GEMM": lambda: numba_cpu._im2col_forward(
            x, weight, bias, g)}
        for name, fused_min_width, padded_max in DEPTHWISE_VARIANTS:
            if name == "padded planes" and stride != 1:
                continue
            calls[name] = variant(fused_min_width, padded_max)
        if torch is not None:
            tensors = [torch.from_numpy(a) for a in (x, weight, bias)]

            def torch_call():
                with torch.no_grad():
                    return torch.nn.functional.conv2d(
                        *tensors, stride=stride, padding=pad,
                        groups=channels)
            calls["torch"] = torch_call
        reference = calls["im2col+GEMM"]()
        for name in calls:
            if name not in ("im2col+GEMM", "torch"):
                np.testing.assert_allclose(
                    calls[name](), reference, rtol=1e-4,
                    atol=1e-4 * np.abs(reference).max())
        label = (f"N{batch} C{channels} K{channels * multiplier} "
                 f"{height}x{width} k{size} s{stride} p{pad}")
        # OpenBLAS threads spin for about 0.1 s after a GEMM, and would
        # slow whichever call came next
        rows.append((label, time_side_by_side(calls, rounds, settle=0.15)))
        print(f"  ... {label} done", flush=True)
    names = ["im2col+GEMM"] + [name for name, _, _ in DEPTHWISE_VARIANTS] + (
        ["torch"] if torch is not None else [])
    print("\nNumba depthwise conv2d forward, float32, threads "
          f"{fastconv.get_num_threads()}; 'Nx' = that time / im2col+GEMM's "
          "(< 1: faster than the old path)")
    _print_table("", rows, names, label_width=38)


def time_side_by_side(calls, rounds, settle=0.0):
    """Median seconds per name, the names alternating within each round.

    ``settle``: seconds of sleep (not timed) before each call, so that no
    call starts while the previous one's thread pools still spin.
    """
    for call in calls.values():
        call()  # warm up
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            time.sleep(settle)
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _print_table(title, rows, names, label_width=16):
    print(f"\n{title}")
    header = f"{'case':<{label_width}}" + "".join(f"{name:>20}"
                                                  for name in names)
    print(header)
    print("-" * len(header))
    for label, medians in rows:
        cells = []
        for name in names:
            if name not in medians:
                cells.append(f"{'-':>20}")
            elif name == names[0]:
                cells.append(f"{medians[name] * 1e3:>17.1f} ms")
            else:
                ratio = medians[name] / medians[names[0]]
                cells.append(f"{medians[name] * 1e3:>9.1f} ms {ratio:>5.1f}x")
        print(f"{label:<{label_width}}" + "".join(cells))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=IMAGE_SIZE,
                        help="image side (default %(default)s)")
    parser.add_argument("--kernels", default=",".join(map(str, KERNEL_SIZES)),
                        help="kernel sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--colour", choices=["gray", "rgb", "both"],
                        default="both")
    parser.add_argument("--dask", action="store_true",
                        help="also time fastconv.dask against dask_image")
    parser.add_argument("--memory", action="store_true",
                        help="only measure peak memory on 4096^2 float32")
    parser.add_argument("--depthwise-conv", action="store_true",
                        help="only time the Numba depthwise conv2d paths")
    parser.add_argument("--memory-case", nargs=2, metavar=("SIZE", "METHOD"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_case:
        memory_case(int(args.memory_case[0]), args.memory_case[1])
        return
    if args.memory:
        memory_table()
        return
    if args.depthwise_conv:
        depthwise_conv_table(args.rounds)
        return
    sizes = [int(part) for part in args.kernels.split(",")]
    colours = {"gray": [False], "rgb": [True], "both": [False, True]}[
        args.colour]
    print(f"fastconv {fastconv.__version__}, threads "
          f"{fastconv.get_num_threads()}, backends "
          f"{fastconv.available_backends()}; float32 {args.size}x{args.size},"
          f" zero boundary, median of {args.rounds} rounds; 'Nx' = that "
          f"time / fastconv's")
    names = list(IMPLEMENTATION_NAMES)
    for colour in colours:
        image = make_image(args.size, colour)
        rows = []
        for size in sizes:
            calls = implementations(image, make_kernel(size))
            rows.append((f"{'rgb' if colour else 'gray'} k{size}",
                         time_side_by_side(calls, args.rounds)))
            print(f"  ... {rows[-1][0]} done", flush=True)
        _print_table(f"{'colour (H, W, 3)' if colour else 'grayscale (H, W)'}",
                     rows, [n for n in names if any(n in r for _, r in rows)])
    if args.dask:
        import distributed

        with distributed.LocalCluster(n_workers=2, processes=True,
                                      threads_per_worker=1,
                                      dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            rows = []
            for size in DASK_KERNEL_SIZES:
                rows.append((f"dask k{size}", time_side_by_side(
                    dask_calls(make_kernel(size), client), args.rounds)))
            _print_table(f"dask, {DASK_IMAGE_SIZE}x{DASK_IMAGE_SIZE} float32 "
                         f"in {DASK_CHUNK}^2 chunks, LocalCluster 2x1, reflect",
                         rows, ["fastconv.dask", "dask_image"])


if __name__ == "__main__":
    main()
