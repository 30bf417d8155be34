"""The CUDA backend: numba.cuda kernels for every primitive.

Where arrays live
-----------------
- NumPy arrays are copied to the GPU, the kernels run, and the results come
  back as NumPy arrays (each call synchronises).
- Device arrays, meaning anything that exposes ``__cuda_array_interface__``
  (Numba device arrays, CuPy arrays, PyTorch CUDA tensors), are used in place,
  without a copy (one that is not C-contiguous is first copied into a
  contiguous device array), and the results then stay on the GPU as Numba
  device arrays: ``cupy.asarray(y)`` or ``torch.as_tensor(y, device='cuda')``
  wrap them without a copy, and they can be fed straight to the next call.
  A call that mixes the two (a device ``x`` with a NumPy ``weight``, say)
  copies the NumPy ones over and leaves its results on the device.
- ``dropout`` of a device array leaves its mask on the device too;
  ``dropout_mask`` on its own takes no array, so its mask comes back as NumPy.
- Kernels run on Numba's default stream (the legacy default stream, which
  orders itself against PyTorch's and CuPy's default streams). Results left
  on the device are not synchronised: read them through a copy or a
  framework call that waits.

Speed
-----
Numba allocates every device array with ``cuMemAlloc`` and frees it with a
device-synchronising ``cuMemFree``; on small ops that costs more than the
kernels. ``NUMBA_CUDA_MEMORY_MANAGER=fastconv.backends._cuda_memory`` (set
before numba.cuda is imported) switches Numba to a caching allocator, as
PyTorch and CuPy have; see that module for when reuse is safe.

Requirements and errors
-----------------------
Needs the ``numba-cuda`` package (``pip install ".[cuda]"`` from a clone) and either
an NVIDIA GPU or Numba's simulator (``NUMBA_ENABLE_CUDASIM=1`` set before
numba is imported; one Python thread per CUDA thread, so for tiny tests
only). ``unavailable_reason()`` says which is missing; the registry then
makes ``backend='cuda'`` raise a RuntimeError with that sentence.

The kernels (``_cuda_kernels``) use the launch configuration in
``fastconv.config`` (``CUDA_*``), read at each call.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np

from fastconv import _dropout_hash, config
from fastconv.backends import _normalization


def _import_numba_cuda():
    """(numba.cuda, None), or (None, why it cannot be used)."""
    try:
        installed = importlib.util.find_spec("numba_cuda") is not None
    except (ImportError, ValueError):  # hidden, or half-imported
        installed = False
    if not installed:
        return None, ('numba-cuda is not installed (pip install ".[cuda]" '
                      'from a fastconv clone)')
    try:
        from numba import cuda as numba_cuda
    except Exception as exc:  # a broken install or toolkit
        return None, (f"numba-cuda does not import ({type(exc).__name__}: "
                      f'{exc}); reinstall it with pip install ".[cuda]"')
    return numba_cuda, None


# numba-cuda is optional: without it this module imports but is unusable.
cuda, _IMPORT_PROBLEM = _import_numba_cuda()

#: The functional layer lets device arrays through only to backends saying so.
ACCEPTS_DEVICE_ARRAYS = True


def unavailable_reason() -> str | None:
    """None when this backend can run here, else one sentence saying why not."""
    if cuda is None:
        return _IMPORT_PROBLEM
    try:
        available = cuda.is_available()
    except Exception as exc:  # a driver that fails while probing
        return f"probing for a CUDA GPU failed: {type(exc).__name__}: {exc}"
    if not available:
        return ("no CUDA GPU found (numba.cuda.is_available() is False); "
                "set NUMBA_ENABLE_CUDASIM=1 before importing numba to use "
                "the simulator")
    return None


def launch_config():
    """The launch configuration in force now (from ``fastconv.config``)."""
    from fastconv.backends._cuda_kernels import LaunchConfig

    launch = LaunchConfig(
        config.CUDA_THREADS_PER_BLOCK, config.CUDA_MAX_BLOCKS,
        config.CUDA_CONV_TILE_M, config.CUDA_CONV_TILE_N,
        config.CUDA_CONV_TILE_K, config.CUDA_CONV_MICRO_M,
        config.CUDA_CONV_MICRO_N, config.CUDA_REDUCE_THREADS,
        config.CUDA_CONV_NARROW_ROWS, config.CUDA_CONV_NARROW_TILE_M,
        config.CUDA_CONV_NARROW_TILE_N, config.CUDA_CONV_NARROW_MICRO_M,
        config.CUDA_CONV_NARROW_MICRO_N)
    launch.check()
    return launch


def _kernels(dtype):
    """A getter ``(name, launch=today's config) -> compiled kernel`` for
    ``dtype``."""
    if cuda is None:
        raise RuntimeError(unavailable_reason())
    from fastconv.backends import _cuda_kernels

    default = launch_config()
    dtype = np.dtype(dtype)
    return lambda name, launch=default: _cuda_kernels.kernel(name, dtype,
                                                             launch)


# -------------------------------------------------------- host/device arrays

def _is_device_array(value) -> bool:
    # __cuda_ndarray__ marks Numba's own device arrays, the simulator's too
    # (which have no __cuda_array_interface__).
    return (getattr(value, "__cuda_ndarray__", False) is True
            or hasattr(value, "__cuda_array_interface__"))


class _Placement:
    """Moves a call's inputs to the device and its results to where they belong.

    Results go back to the host unless some input was already on the device.
    """

    def __init__(self):
        self.on_device = False

    def take(self, value, dtype=None):
        """``value`` as a C-contiguous device array (flat views come later)."""
        if isinstance(value, np.ndarray):
            return cuda.to_device(np.ascontiguousarray(value, dtype=dtype))
        self.on_device = True
        array = value if getattr(value, "__cuda_ndarray__", False) else (
            cuda.as_cuda_array(value))
        if not array.is_c_contiguous():
            contiguous = cuda.device_array(array.shape, array.dtype)
            contiguous[:] = array  # Numba's own strided-copy kernel
            array = contiguous
        return array

    def give(self, array):
        return array if self.on_device else array.copy_to_host()


def _flat(array):
    return array.reshape(array.size)


def _grid(size: int, launch) -> int:
    """Blocks of an elementwise launch (its kernel loops past max_blocks)."""
    return max(1, min(launch.max_blocks,
                      -(-size // launch.threads_per_block)))


_DUMMIES: dict = {}


def _dummy(dtype):
    """A one-element device array for a kernel argument that goes unused
    (made once per dtype: an allocation costs more than some kernels)."""
    dtype = np.dtype(dtype)
    if dtype not in _DUMMIES:
        _DUMMIES[dtype] = cuda.device_array(1, dtype=dtype)
    return _DUMMIES[dtype]


# --------------------------------------------------------------- convolution

def conv2d_forward(x, weight, bias, g, packed=None):
    placement = _Placement()
    x, weight = placement.take(x), placement.take(weight)
    bias = placement.take(bias) if bias is not None else None
    dtype = x.dtype
    kernel = _kernels(dtype)
    launch = launch_config()
    y = cuda.device_array(g.output_shape, dtype=dtype)
    rows = g.out_channels // g.groups
    cols = g.batch * g.out_height * g.out_width
    depth = (g.in_channels // g.groups) * g.kernel_height * g.kernel_width
    tiles = launch.for_rows(rows)
    grid = (-(-cols // tiles.conv_tile_n), -(-rows // tiles.conv_tile_m),
            g.groups)
    kernel("conv_forward", tiles)[grid, tiles.conv_threads](
        _flat(weight), _flat(x), _flat(y),
        _dummy(dtype) if bias is None else bias, int(bias is not None),
        _geometry(g), rows, cols, depth, depth, 1)
    return placement.give(y)


def _geometry(g):
    from fastconv.backends._cuda_kernels import conv_geometry_tuple

    return conv_geometry_tuple(g)


def _grad_weight_splits(g, rows, cols, depth, itemsize, launch) -> int:
    """How many slices of its reduction grad_weight's GEMM runs in parallel.

    Enough to keep about CUDA_GRAD_WEIGHT_BLOCKS blocks busy, no more than
    the reduction has tile steps, and partial sums within WORKSPACE_BYTES.
    """
    blocks = (-(-cols // launch.conv_tile_n)) * (
        -(-rows // launch.conv_tile_m)) * g.groups
    splits = max(1, -(-config.CUDA_GRAD_WEIGHT_BLOCKS // blocks))
    splits = min(splits, -(-depth // launch.conv_tile_k))
    workspace = g.out_channels * cols * itemsize
    splits = min(splits, max(1, config.WORKSPACE_BYTES // workspace))
    return max(1, splits)


def conv2d_backward(grad_output, x, weight, g, need_input_grad=True, *,
                    need_weight_grad=True, need_bias_grad=True):
    placement = _Placement()
    grad_output = placement.take(grad_output)
    weight = placement.take(weight)
    dtype = grad_output.dtype
    kernel = _kernels(dtype)
    launch = launch_config()
    geometry = _geometry(g)
    channels_per_group = g.in_channels // g.groups
    filters_per_group = g.out_channels // g.groups
    kernel_area = g.kernel_height * g.kernel_width
    out_plane = g.out_height * g.out_width
    flat_grad_output = _flat(grad_output)
    unused = _dummy(dtype)

    grad_input = None
    if need_input_grad:
        grad_input = cuda.device_array(g.input_shape, dtype=dtype)
        rows = channels_per_group
        cols = g.batch * g.in_height * g.in_width
        depth = filters_per_group * kernel_area
        tiles = launch.for_rows(rows)
        grid = (-(-cols // tiles.conv_tile_n), -(-rows // tiles.conv_tile_m),
                g.groups)
        kernel("conv_grad_input", tiles)[grid, tiles.conv_threads](
            _flat(weight), flat_grad_output, _flat(grad_input), unused, 0,
            geometry, rows, cols, depth, depth, 1)

    if not need_weight_grad:
        return (None if grad_input is None else placement.give(grad_input),
                None, None)
    x = placement.take(x)
    grad_weight = cuda.device_array(g.weight_shape, dtype=dtype)
    rows = filters_per_group
    cols = channels_per_group * kernel_area
    depth = g.batch * out_plane
    tiles = launch.for_rows(rows)
    splits = _grad_weight_splits(g, rows, cols, depth, dtype.itemsize, tiles)
    # Slices start on tile boundaries, so only the last one is ragged.
    depth_per_split = -(-depth // splits)
    depth_per_split = -(-depth_per_split // tiles.conv_tile_k) * (
        tiles.conv_tile_k)
    splits = -(-depth // depth_per_split)
    target = grad_weight if splits == 1 else cuda.device_array(
        splits * g.out_channels * cols, dtype=dtype)
    grid = (-(-cols // tiles.conv_tile_n), -(-rows // tiles.conv_tile_m),
            g.groups * splits)
    kernel("conv_grad_weight", tiles)[grid, tiles.conv_threads](
        flat_grad_output, _flat(x), _flat(target), unused, 0, geometry, rows,
        cols, depth, depth_per_split, splits)
    if splits > 1:
        size = g.out_channels * cols
        kernel("sum_splits")[_grid(size, launch), launch.threads_per_block](
            target, _flat(grad_weight), splits, size)

    grad_bias = cuda.device_array(g.out_channels, dtype=dtype)
    kernel("bias_grad")[g.out_channels, launch.reduce_threads](
        flat_grad_output, grad_bias, g.batch, g.out_channels, out_plane)

    return (None if grad_input is None else placement.give(grad_input),
            placement.give(grad_weight),
            placement.give(grad_bias) if need_bias_grad else None)


# ------------------------------------------------------------------- pooling

def _pool_geometry(g):
    from fastconv.backends._cuda_kernels import pool_geometry_tuple

    return pool_geometry_tuple(g)


def max_pool2d_forward(x, g):
    placement = _Placement()
    x = placement.take(x)
    kernel = _kernels(x.dtype)
    launch = launch_config()
    y = cuda.device_array(g.output_shape, dtype=x.dtype)
    indices = cuda.device_array(g.output_shape, dtype=np.int64)
    size = math.prod(g.output_shape)
    kernel("max_pool_forward")[_grid(size, launch), launch.threads_per_block](
        _flat(x), _flat(y), _flat(indices), _pool_geometry(g))
    return placement.give(y), placement.give(indices)


def max_pool2d_backward(grad_output, indices, g):
    placement = _Placement()
    grad_output = placement.take(grad_output)
    indices_on_device = _is_device_array(indices)
    indices = placement.take(indices, dtype=np.int64)
    dtype = grad_output.dtype
    kernel = _kernels(dtype)
    launch = launch_config()
    grad_input = cuda.device_array(g.input_shape, dtype=dtype)
    in_size = math.prod(g.input_shape)
    kernel("fill_zero")[_grid(in_size, launch), launch.threads_per_block](
        _flat(grad_input), in_size)
    # NumPy indices were range-checked by the functional layer, so their
    # flag is never read; device ones get a fresh flag, read back below.
    error = cuda.to_device(np.zeros(1, dtype=np.int32)) if (
        indices_on_device) else _dummy(np.int32)
    size = math.prod(g.output_shape)
    kernel("max_pool_backward")[_grid(size, launch), launch.threads_per_block](
        _flat(grad_output), _flat(indices), _flat(grad_input),
        g.in_height * g.in_width, g.out_height * g.out_width, size, error)
    # The functional layer range-checks NumPy indices; device ones are
    # checked here, by the kernel, at the price of one small copy.
    if indices_on_device and error.copy_to_host()[0]:
        raise ValueError(
            f"indices must lie in [0, H*W = {g.in_height * g.in_width}) for "
            f"input_shape {g.input_shape}")
    return placement.give(grad_input)


_DIVISOR_CACHE: dict = {}
_DIVISOR_CACHE_SIZE = 64


def _divisors_on_device(divisors, dtype):
    """The avg-pool divisor table as a flat device array of ``dtype``, cached
    (a training loop asks for the same few tables at every step)."""
    key = (np.dtype(dtype).str, divisors.shape, divisors.tobytes())
    table = _DIVISOR_CACHE.get(key)
    if table is None:
        if len(_DIVISOR_CACHE) >= _DIVISOR_CACHE_SIZE:
            _DIVISOR_CACHE.clear()
        table = cuda.to_device(
            np.ascontiguousarray(divisors, dtype=dtype).reshape(-1))
        _DIVISOR_CACHE[key] = table
    return table


def avg_pool2d_forward(x, g, divisors):
    placement = _Placement()
    x = placement.take(x)
    kernel = _kernels(x.dtype)
    launch = launch_config()
    y = cuda.device_array(g.output_shape, dtype=x.dtype)
    size = math.prod(g.output_shape)
    kernel("avg_pool_forward")[_grid(size, launch), launch.threads_per_block](
        _flat(x), _flat(y), _divisors_on_device(divisors, x.dtype),
        _pool_geometry(g))
    return placement.give(y)


def avg_pool2d_backward(grad_output, g, divisors):
    placement = _Placement()
    grad_output = placement.take(grad_output)
    dtype = grad_output.dtype
    kernel = _kernels(dtype)
    launch = launch_config()
    grad_input = cuda.device_array(g.input_shape, dtype=dtype)
    size = math.prod(g.input_shape)
    kernel("avg_pool_backward")[_grid(size, launch), launch.threads_per_block](
        _flat(grad_output), _flat(grad_input),
        _divisors_on_device(divisors, dtype), _pool_geometry(g))
    return placement.give(grad_input)


# ------------------------------------------------------------------- dropout

def dropout_mask(size, threshold, seed, like=None):
    """The flat keep-mask, on the device if ``like`` is a device array."""
    mask = _dropout_mask_on_device(size, threshold, seed)
    if like is not None and not isinstance(like, np.ndarray):
        return mask
    return mask.copy_to_host() if size else np.zeros(0, dtype=np.bool_)


def _dropout_mask_on_device(size, threshold, seed):
    """The keep-mask of ``_dropout_hash`` as a flat bool device array."""
    mask = cuda.device_array(size, dtype=np.bool_)
    if size:
        kernel = _kernels(np.float32)
        launch = launch_config()
        kernel("dropout_mask")[_grid(size, launch), launch.threads_per_block](
            mask, size, np.uint64(_dropout_hash.seed_key(seed)),
            np.uint64(threshold))
    return mask


def dropout_apply(x, mask, scale):
    placement = _Placement()
    x = placement.take(x)
    mask = placement.take(mask)
    dtype = x.dtype
    y = cuda.device_array(x.shape, dtype=dtype)
    size = x.size
    if size:
        kernel = _kernels(dtype)
        launch = launch_config()
        kernel("dropout_apply")[_grid(size, launch), launch.threads_per_block](
            _flat(x), _flat(mask), _flat(y), dtype.type(scale), size)
    return placement.give(y)


# ------------------------------------------------- batch norm and activation

def _launch(name, dtype, size):
    """The kernel ``name`` for ``dtype`` configured for ``size`` items."""
    launch = launch_config()
    return _kernels(dtype)(name)[_grid(size, launch),
                                 launch.threads_per_block]


def _channel_totals(rows, channels):
    """(C,) host sums of the (N * C,) device row results, n in order."""
    return rows.copy_to_host().reshape(-1, channels).sum(axis=0)


def batch_norm_stats(x):
    """(mean, variance) as host arrays, x on the host or the device."""
    x = _channel_rows(_Placement().take(x))
    batch, channels, length = x.shape
    count = batch * length
    rows = cuda.device_array(batch * channels, dtype=np.float64)
    if not x.size:
        return np.zeros(channels), np.zeros(channels)
    _launch("bn_row_sums", x.dtype, rows.size)(
        _flat(x), cuda.to_device(np.zeros(channels)), rows, length, 0)
    mean = _channel_totals(rows, channels) / count
    _launch("bn_row_sums", x.dtype, rows.size)(
        _flat(x), cuda.to_device(mean), rows, length, 1)
    return mean, _channel_totals(rows, channels) / count


def _grad_sums(grad_output, x):
    """Per-channel (sum(g), sum(g * x)) as host arrays; the device arrays."""
    placement = _Placement()
    grad_output = placement.take(grad_output)
    x = _channel_rows(placement.take(x))
    batch, channels, length = x.shape
    if not x.size:
        return np.zeros(channels), np.zeros(channels), grad_output, x
    sums = cuda.device_array(batch * channels, dtype=np.float64)
    dots = cuda.device_array(batch * channels, dtype=np.float64)
    _launch("bn_row_grad_sums", x.dtype, sums.size)(
        _flat(grad_output), _flat(x), sums, dots, length)
    return (_channel_totals(sums, channels), _channel_totals(dots, channels),
            grad_output, x)


def _channel_rows(array):
    """A contiguous device array (N, C, ...) as (N, C, L)."""
    length = array.size // max(1, array.shape[0] * array.shape[1])
    return array.reshape(array.shape[0], array.shape[1], length)


def _affine(a, a_scale, b, centre, b_scale, shift, on_device):
    """a * a_scale[c] + (b - centre[c]) * b_scale[c] + shift[c] on the
    device (b None: (a - centre[c]) * b_scale[c] + shift[c]); the result
    stays there when ``on_device``."""
    dtype = a.dtype
    vectors = [cuda.to_device(np.ascontiguousarray(v, dtype=dtype))
               for v in (a_scale, centre, b_scale, shift)]
    y = cuda.device_array(a.shape, dtype=dtype)
    if a.size:
        _launch("bn_affine", dtype, a.size)(
            _flat(a), vectors[0], _dummy(dtype) if b is None else _flat(b),
            *vectors[1:], _flat(y), a.shape[2], int(b is not None))
    return y if on_device else y.copy_to_host()


def batch_norm_forward(x, mean, variance, weight, bias, eps):
    on_device = not isinstance(x, np.ndarray)
    if mean is None:
        mean, variance = batch_norm_stats(x)
    x = _channel_rows(_Placement().take(x))
    scale, shift = _normalization.forward_factors(variance, weight, bias, eps)
    return (_affine(x, scale, None, mean, scale, shift, on_device), mean,
            variance)


def batch_norm_backward(grad_output, x, mean, variance, weight, eps,
                        batch_statistics):
    on_device = not (isinstance(grad_output, np.ndarray)
                     and isinstance(x, np.ndarray))
    grad_sum, grad_dot, grad_output, x = _grad_sums(grad_output, x)
    batch, channels, length = x.shape
    grad_weight, grad_bias, scale, x_scale, shift = \
        _normalization.backward_factors(grad_sum, grad_dot, mean, variance,
                                        weight, eps, batch * length,
                                        batch_statistics)
    grad_output = _channel_rows(grad_output)
    if batch_statistics:
        grad_input = _affine(grad_output, scale, x, mean, x_scale, shift,
                             on_device)
    else:  # grad * scale: no x term (x_scale is 0, and 0 * inf is NaN)
        zeros = np.zeros(channels)
        grad_input = _affine(grad_output, zeros, None, zeros, scale, zeros,
                             on_device)
    return grad_input, grad_weight, grad_bias


def relu_forward(x, residual=None):
    placement = _Placement()
    x = placement.take(x)
    y = cuda.device_array(x.shape, dtype=x.dtype)
    if x.size:
        if residual is None:
            _launch("relu", x.dtype, x.size)(_flat(x), _flat(y))
        else:
            residual = placement.take(residual)
            _launch("add_relu", x.dtype, x.size)(
                _flat(x), _flat(residual), _flat(y))
    return placement.give(y)


def relu_backward(grad_output, y):
    placement = _Placement()
    grad_output = placement.take(grad_output)
    y = placement.take(y)
    grad_input = cuda.device_array(y.shape, dtype=y.dtype)
    if y.size:
        _launch("relu_backward", y.dtype, y.size)(
            _flat(grad_output), _flat(y), _flat(grad_input))
    return placement.give(grad_input)
