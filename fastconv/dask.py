"""fastconv on Dask arrays: images larger than memory, batched inference.

``filter2d(darr, kernel, ...)`` returns a lazy dask array equal to
``fastconv.filter2d`` on the whole image: bit for bit with the naive
backend's direct and depthwise methods, to float rounding otherwise (BLAS and
the FFT sum in an order that depends on a block's width).
``predict(model, images, batch_size=...)`` runs a model over a dask array of
images chunked along N. Both run on any Dask scheduler: the local threaded
one, or a ``dask.distributed`` cluster.

Requires the ``dask`` extra: ``pip install ".[dask]"`` from a clone.

How ``filter2d`` splits the work: the boundary is applied lazily first (the
padded array is built from slices of the image, following ``numpy.pad``'s
rule exactly, so every boundary mode and any pad width works). Output chunk
``j`` covers output rows ``[B_j, B_j+1)`` with ``B_j`` an image chunk's
start divided by the stride (rounded up), so output blocks line up with the
image's blocks; it reads padded rows from ``B_j * stride`` on. The padded
array is rechunked so that its chunks start there (plus the top padding,
which keeps them on the image's own chunk boundaries at stride 1: only the
edge chunks merge with the padding), and each block borrows the halo rows
and columns it needs from its neighbours through ``map_overlap``. Each block
is then one in-memory ``fastconv.filter2d(block, padding='valid')`` running
on one thread (Dask supplies the parallelism).
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np

from fastconv import _shapes, _validate
from fastconv import filters as _filters

__all__ = ["filter2d", "predict"]


def _dask_array_module():
    try:
        import dask.array as dask_array
    except ImportError as exc:  # pragma: no cover - exercised without dask
        raise ImportError(
            "fastconv.dask needs Dask: pip install \".[dask]\" "
            f"({exc})") from exc
    return dask_array


# ------------------------------------------------------------------ filter2d

def _runs(index_map):
    """Split an index map into runs: (first, length, step) with step in
    {+1, -1, 0}; first == -1 marks a run of zeros."""
    runs = []
    start = 0
    size = index_map.size
    while start < size:
        first = int(index_map[start])
        if first < 0:
            stop = start + 1
            while stop < size and index_map[stop] < 0:
                stop += 1
            runs.append((-1, stop - start, 0))
            start = stop
            continue
        step = 0
        if start + 1 < size and index_map[start + 1] >= 0:
            step = int(index_map[start + 1]) - first
            if step not in (-1, 0, 1):
                step = 0
        stop = start + 1
        while stop < size and index_map[stop] >= 0 and (
                int(index_map[stop]) - int(index_map[stop - 1]) == step):
            if step == 0 and int(index_map[stop]) != first:
                break
            stop += 1
        runs.append((first, stop - start, step))
        start = stop
    return runs


def _pad_axis(dask_array, array, axis, before, after, mode):
    """``array`` padded along ``axis`` as numpy.pad(mode) would, lazily."""
    if before == 0 and after == 0:
        return array
    index_map = _filters._index_map(array.shape[axis], before, after, mode)
    pieces = []
    for first, length, step in _runs(index_map):
        if first < 0:
            shape = list(array.shape)
            shape[axis] = length
            chunks = tuple(-1 if a == axis else array.chunks[a]
                           for a in range(array.ndim))
            pieces.append(dask_array.zeros(shape, dtype=array.dtype,
                                           chunks=chunks))
            continue
        if step == 0:
            index = [slice(None)] * array.ndim
            index[axis] = slice(first, first + 1)
            pieces.append(dask_array.repeat(array[tuple(index)], length,
                                            axis=axis))
            continue
        index = [slice(None)] * array.ndim
        if step == 1:
            index[axis] = slice(first, first + length)
        else:
            stop = first - length
            index[axis] = slice(first, None if stop < 0 else stop, -1)
        pieces.append(array[tuple(index)])
    return dask_array.concatenate(pieces, axis=axis)


def _chunk_plan(image_chunks, out_size, stride, before, after, used):
    """(output chunk sizes, padded-array chunk sizes) along one axis.

    Output chunk j covers outputs ``[B_j, B_j+1)`` and reads padded rows
    ``[B_j * stride, (B_j+1 - 1) * stride + R)``. Its block is the padded
    array's chunk ``[B_j * stride + before, B_j+1 * stride + before)`` (the
    first chunk starts at 0, the last ends at ``used``) widened by
    ``before`` rows from the chunk above and ``after`` rows from the chunk
    below. ``B_j`` is an image chunk's start divided by the stride (rounded
    up), so output blocks line up with image blocks; with ``before`` = the
    top padding the padded chunks then line up with the image's too, and at
    stride 1 no data has to move between blocks. Chunks smaller than a halo
    they lend are merged with a neighbour.
    """
    starts = np.cumsum((0,) + tuple(image_chunks))[:-1]
    boundaries = sorted({-(-int(offset) // stride) for offset in starts}
                        | {0})
    boundaries = [b for b in boundaries if b < out_size]
    smallest = max(before, after, 1)

    def core_sizes(bounds):
        edges = [0] + [b * stride + before for b in bounds[1:]] + [used]
        return np.diff(edges).tolist()

    while True:
        cores = core_sizes(boundaries)
        small = [i for i, size in enumerate(cores) if size < smallest]
        if not small or len(boundaries) == 1:
            break
        index = small[0]
        # merge with the next chunk (the last one with the previous)
        del boundaries[index + 1 if index + 1 < len(boundaries) else index]
    outputs = np.diff(boundaries + [out_size]).tolist()
    return tuple(outputs), tuple(cores)


def _edge_chunk_plan(image_chunks, out_size, stride, before, after,
                     smallest, size):
    """(output chunk sizes, image chunk sizes) for the edge-padding path.

    As ``_chunk_plan``, in image coordinates: output chunk j's block is the
    image chunk ``[B_j * stride, B_j+1 * stride)`` widened by ``before``
    (the top padding) and ``after`` rows; the first and last blocks pad
    themselves where they meet the image's edge. At stride 1 the image
    chunks are the input's own. Every chunk keeps at least ``smallest``
    rows (a halo it lends, or the rows a reflection at the edge reads).
    """
    starts = np.cumsum((0,) + tuple(image_chunks))[:-1]
    boundaries = sorted({-(-int(offset) // stride) for offset in starts}
                        | {0})
    boundaries = [b for b in boundaries if b < out_size]
    smallest = max(before, after, smallest, 1)
    while True:
        edges = [0] + [b * stride for b in boundaries[1:]] + [size]
        cores = np.diff(edges).tolist()
        small = [i for i, rows in enumerate(cores) if rows < smallest]
        if not small or len(boundaries) == 1:
            break
        index = small[0]
        del boundaries[index + 1 if index + 1 < len(boundaries) else index]
    return tuple(np.diff(boundaries + [out_size]).tolist()), tuple(cores)


def _in_distributed_worker() -> bool:
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def _one_thread_per_task():
    """Run the enclosed kernels on one thread.

    Dask already runs one task per worker thread; kernels that started
    threads of their own on top would oversubscribe the cores (and OpenMP
    and OpenBLAS threads spin after each call, starving the other tasks: a
    LocalCluster of two processes ran 100 times slower here). In a
    distributed worker process the setting is made for the whole process
    (all of its work is Dask tasks); elsewhere (the local threaded
    scheduler) only for this thread.
    """
    from fastconv import _threads

    if _in_distributed_worker():
        if _threads.get_num_threads() != 1:
            _threads.set_num_threads(1)
        yield
        return
    with _threads.one_thread_here():
        yield


def _filter_edge_block(block, kernel, stride, method, backend, mode,
                       edge_pads, block_info=None):
    """One output block from an image block and its halo.

    Sides of the block that are the image's edges get their padding here
    (numpy.pad's rule, applied to the block: it holds every row the rule
    reads); ``edge_pads`` is ((top, bottom), (left, right)) for those sides.
    """
    location = block_info[0]["chunk-location"]
    counts = block_info[0]["num-chunks"]
    out_rows, out_cols = block_info[None]["chunk-shape"][:2]
    pads = []
    for axis in (0, 1):
        first = location[axis] == 0
        last = location[axis] == counts[axis] - 1
        pads.append((edge_pads[axis][0] if first else 0,
                     edge_pads[axis][1] if last else 0))
    (top, bottom), (left, right) = pads
    image3 = block if block.ndim == 3 else block[:, :, None]
    out_shape = tuple(_shapes.conv_output_size(
        image3.shape[axis], kernel.shape[axis], stride[axis], *pads[axis], 1)
        for axis in (0, 1))
    with _one_thread_per_task():
        result = _filters._filter(image3, kernel, stride,
                                  (top, left, bottom, right), mode, method,
                                  backend, out_shape)
    # a last block may hold rows past the last one an output reads
    result = result[:out_rows, :out_cols]
    return result if block.ndim == 3 else result[:, :, 0]


def _filter_block(block, kernel, stride, method, backend):
    with _one_thread_per_task():
        return _filters.filter2d(block, kernel, stride=stride,
                                 padding="valid", method=method,
                                 backend=backend)


def filter2d(darr, kernel, *, stride=1, padding="same", boundary="zero",
             backend=None, method="auto"):
    """``fastconv.filter2d`` on a chunked dask array, lazily.

    darr: dask array ``(H, W)`` or ``(H, W, C)`` (channels last; a NumPy
    array is wrapped with one chunk). Every other argument means what it
    means for ``fastconv.filter2d``; ``backend`` is the fastconv backend the
    workers use. Returns a dask array ``(H_out, W_out[, C])``, float32 for
    integer input, the input's float dtype otherwise; nothing is computed
    until you ask (``.compute()``, ``.to_zarr(...)``, ``da.store(...)``).
    """
    dask_array = _dask_array_module()
    _filters._refuse_masked(darr, "darr")
    if isinstance(darr, np.ndarray):
        darr = dask_array.from_array(np.asarray(darr), chunks=darr.shape)
    if isinstance(getattr(darr, "_meta", None), np.ma.MaskedArray):
        _filters._refuse_masked(darr._meta, "darr")  # masked blocks
    if not isinstance(darr, dask_array.Array):
        raise TypeError(
            f"darr must be a dask.array.Array (or numpy.ndarray), got "
            f"{type(darr).__name__}")
    if darr.ndim not in (2, 3) or min(darr.shape) < 1:
        raise ValueError(
            f"darr must be a non-empty (H, W) or (H, W, C) array, got shape "
            f"{darr.shape}")
    # Check dtype and every argument once, here, not in the workers.
    probe = np.zeros((1,) * darr.ndim, dtype=darr.dtype)
    _, compute_dtype, result_dtype, _ = _filters._float_image(probe)
    kernel = _filters._float_kernel(kernel, compute_dtype)
    stride = _validate.pair(stride, "stride", minimum=1)
    top, left, bottom, right = _filters._padding(padding, kernel.shape)
    mode = _filters._boundary_mode(boundary)
    method = _filters._method(method)
    if backend is not None:
        from fastconv.backends import resolve

        resolve("conv2d_forward", backend)
    height, width = darr.shape[:2]
    kernel_height, kernel_width = kernel.shape
    out_height = _shapes.conv_output_size(height, kernel_height, stride[0],
                                          top, bottom, 1)
    out_width = _shapes.conv_output_size(width, kernel_width, stride[1], left,
                                         right, 1)
    stride = _filters._checked_geometry(
        (out_height, out_width), kernel.shape,
        (height, width, darr.shape[2] if darr.ndim == 3 else 1),
        (top, left, bottom, right), stride)

    image = darr.astype(compute_dtype) if darr.dtype != compute_dtype else darr
    meta = np.empty((0,) * darr.ndim, dtype=compute_dtype)
    if mode != "wrap":
        # The padding at an edge comes from rows next to it, so the blocks
        # at the edges pad themselves: no padded array, no rechunk at
        # stride 1. ('wrap' reads the far edge: it takes the padded array.)
        result = _filter_with_edge_blocks(
            dask_array, image, kernel, stride, (top, left, bottom, right),
            mode, method, backend, (out_height, out_width), meta)
        return result if result_dtype == compute_dtype else result.astype(
            result_dtype)
    padded = _pad_axis(dask_array, image, 0, top, bottom, mode)
    padded = _pad_axis(dask_array, padded, 1, left, right, mode)
    # Only the padded rows/columns some output reads.
    used_height = (out_height - 1) * stride[0] + kernel_height
    used_width = (out_width - 1) * stride[1] + kernel_width
    padded = padded[:used_height, :used_width]

    # Rows a block borrows from the chunk above and below (columns: left and
    # right); see _chunk_plan.
    before = (min(top, kernel_height - 1), min(left, kernel_width - 1))
    after = (max(0, kernel_height - stride[0] - before[0]),
             max(0, kernel_width - stride[1] - before[1]))
    plans = [_chunk_plan(darr.chunks[axis], (out_height, out_width)[axis],
                         stride[axis], before[axis], after[axis],
                         padded.shape[axis]) for axis in range(2)]
    out_chunks = (plans[0][0], plans[1][0])
    padded = padded.rechunk((plans[0][1], plans[1][1]) + padded.chunks[2:])

    depth = {0: (before[0], after[0]), 1: (before[1], after[1])}
    if darr.ndim == 3:
        depth[2] = (0, 0)
    result = dask_array.map_overlap(
        _filter_block, padded, depth=depth, boundary="none", trim=False,
        chunks=out_chunks + padded.chunks[2:], dtype=compute_dtype,
        meta=meta, kernel=kernel, stride=stride, method=method,
        backend=backend)
    return result if result_dtype == compute_dtype else result.astype(
        result_dtype)


def _filter_with_edge_blocks(dask_array, image, kernel, stride, pads, mode,
                             method, backend, out_shape, meta):
    """The map_overlap graph in which the edge blocks pad themselves."""
    top, left, bottom, right = pads
    plans, depth, edge_pads = [], {}, []
    for axis, (pad_before, pad_after) in enumerate(((top, bottom),
                                                   (left, right))):
        size, taps = image.shape[axis], kernel.shape[axis]
        # block j reads image rows [B_j s - top, (B_j+1 - 1) s + R - top)
        after = max(0, taps - stride[axis] - pad_before)
        end = (out_shape[axis] - 1) * stride[axis] + taps - pad_before
        edge_pads.append((pad_before, max(0, end - size)))
        plans.append(_edge_chunk_plan(
            image.chunks[axis], out_shape[axis], stride[axis], pad_before,
            after, max(pad_before, pad_after) + 1, size))
        depth[axis] = (pad_before, after)
    if image.ndim == 3:
        depth[2] = (0, 0)
    image = image.rechunk((plans[0][1], plans[1][1]) + image.chunks[2:])
    return dask_array.map_overlap(
        _filter_edge_block, image, depth=depth, boundary="none", trim=False,
        chunks=(plans[0][0], plans[1][0]) + image.chunks[2:],
        dtype=meta.dtype, meta=meta, kernel=kernel, stride=stride,
        method=method, backend=backend, mode=mode,
        edge_pads=tuple(edge_pads))


# ------------------------------------------------------------------- predict

def _predict_block(images, model, batch_size, out_dtype):
    with _one_thread_per_task():
        outputs = [np.asarray(model(np.ascontiguousarray(
            images[start:start + batch_size])))
            for start in range(0, images.shape[0], batch_size)]
    if not outputs:
        return np.empty((0, 0), dtype=out_dtype)
    return np.concatenate(outputs).astype(out_dtype, copy=False)


def predict(model, images, batch_size=256, *, num_classes=None):
    """Batched inference of ``model`` over a dask array of images, lazily.

    model: a callable taking a float ``(n, C, H, W)`` NumPy array and
    returning ``(n, classes)`` logits, such as a ``fastconv.nn`` module
    (``model.eval()`` is called first when the model has it, so dropout and
    batch norm run in inference mode). It must pickle when the scheduler is a
    distributed cluster. images: dask array ``(N, C, H, W)`` (a NumPy array is
    wrapped), float32/float64 (integers are converted to float32); it is
    rechunked to whole images, chunked along N only. batch_size: images per
    model call inside a block. num_classes: the width of the logits; None
    runs the model once on one zero image to find it (and the dtype).

    Returns a dask array ``(N, classes)`` of logits, chunked along N as the
    images are.
    """
    dask_array = _dask_array_module()
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    if isinstance(images, np.ndarray):
        images = dask_array.from_array(images, chunks=(batch_size,) + tuple(
            images.shape[1:]) if images.ndim == 4 else images.shape)
    if not isinstance(images, dask_array.Array):
        raise TypeError(
            f"images must be a dask.array.Array, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(
            f"images must be 4-D (N, C, H, W), got shape {images.shape}")
    batch_size = _validate.positive_int(batch_size, "batch_size")
    if images.dtype.kind in "uib":
        images = images.astype(np.float32)
    elif images.dtype.kind != "f":
        raise TypeError(f"images must have a real numeric dtype, got "
                        f"{images.dtype}")
    if hasattr(model, "eval"):
        model.eval()
    images = images.rechunk({1: -1, 2: -1, 3: -1})

    probe = np.asarray(model(np.zeros((1,) + images.shape[1:],
                                      dtype=images.dtype)))
    if probe.ndim != 2 or probe.shape[0] != 1:
        raise ValueError(
            f"model must return (n, classes) logits; on one image it returned "
            f"shape {probe.shape}")
    if num_classes is None:
        num_classes = probe.shape[1]
    num_classes = _validate.positive_int(num_classes, "num_classes")
    out_dtype = probe.dtype if probe.dtype.kind == "f" else np.dtype(
        np.float32)
    return images.map_blocks(
        _predict_block, model, batch_size, out_dtype,
        chunks=(images.chunks[0], (num_classes,)), drop_axis=(2, 3),
        dtype=out_dtype, meta=np.empty((0, 0), dtype=out_dtype))
