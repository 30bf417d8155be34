"""Fixtures of the CUDA backend's tests: simulator or GPU, and launch configs.

These tests need numba-cuda (``pip install ".[cuda]"`` from the repository
root) and either a GPU or Numba's CUDA simulator, which must be switched on
before numba is first imported, so from the shell:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda

Without either, ``test_cuda_ops.py`` skips itself with the reason (a plain
``pytest`` run on a machine without a GPU); ``test_cuda_build.py`` runs
anyway (it needs neither). Under the simulator the kernels run with tiny
tiles and blocks (the simulator starts one Python thread per CUDA thread);
on a real GPU the ops module runs twice, with those tiny tiles and with the
default launch configuration of ``fastconv.config``.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"

# Launch configuration of the simulator runs: 8-thread conv blocks with
# 4 x 8 output tiles (so test shapes span several ragged tiles and the
# shared-memory loads take several rounds), 16-thread elementwise blocks
# capped at 3 blocks (so the grid-stride loops go round several times).
TINY_LAUNCH = {
    "CUDA_THREADS_PER_BLOCK": 16,
    "CUDA_MAX_BLOCKS": 3,
    "CUDA_CONV_TILE_M": 4,
    "CUDA_CONV_TILE_N": 8,
    "CUDA_CONV_TILE_K": 4,
    "CUDA_CONV_MICRO_M": 2,
    "CUDA_CONV_MICRO_N": 2,
    "CUDA_GRAD_WEIGHT_BLOCKS": 6,
    "CUDA_REDUCE_THREADS": 4,
    # GEMMs of <= 2 rows (depthwise, 1-channel grad_input) take a 2 x 16 tile.
    "CUDA_CONV_NARROW_ROWS": 2,
    "CUDA_CONV_NARROW_TILE_M": 2,
    "CUDA_CONV_NARROW_TILE_N": 16,
    "CUDA_CONV_NARROW_MICRO_M": 1,
    "CUDA_CONV_NARROW_MICRO_N": 2,
}


@pytest.fixture(scope="session", autouse=True)
def _simulator_shared_arrays_without_race():
    """Make the simulator's ``cuda.shared.array`` safe for its threads.

    numba-cuda's simulator (0.30) gives each block's threads one array per
    ``cuda.shared.array`` call site through an unlocked "look up, else
    create and store": two threads of a block that reach the call at the
    same time can both create one, and the thread whose array is not kept
    then fills and reads a private tile, not the block's. On a GPU the tile
    is shared by construction; here the first block of a launch now and
    then computed garbage (seen as a wrong first image in test_cuda_nn,
    about one launch in ten with a 1 us switch interval). The replacement
    below is the same lookup under a lock, keyed, as the simulator keys it,
    by the caller's file and line.
    """
    if not SIMULATOR:
        yield
        return
    import threading

    from numba.cuda.simulator import kernelapi

    shared = getattr(kernelapi, "FakeCUDAShared", None)
    if shared is None:  # a simulator laid out otherwise: leave it alone
        yield
        return
    lock = threading.Lock()
    original = shared.array

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:  # no per-call-site array
            return original(self, shape, dtype, alignment)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            found = self._allocations.get(key)
            if found is None:
                if isinstance(dtype, kernelapi.types.Type):
                    dtype = kernelapi.numpy_support.as_dtype(dtype)
                found = self._allocations[key] = np.empty(shape, dtype)
        return found

    shared.array = array
    yield
    shared.array = original


@pytest.fixture(scope="session", autouse=True)
def _fast_simulator_switching():
    """The simulator's scheduler busy-polls its block threads; switching the
    GIL more often than every 5 ms makes the module several times faster."""
    if not SIMULATOR:
        yield
        return
    before = sys.getswitchinterval()
    sys.setswitchinterval(2e-4)
    yield
    sys.setswitchinterval(before)


LAUNCH_CONFIGS = ["tiny"] if SIMULATOR else ["tiny", "default"]


@pytest.fixture(scope="module", params=LAUNCH_CONFIGS)
def launch(request):
    """The launch configuration in force ('tiny' or 'default') for a module
    that asks for it (``pytestmark = pytest.mark.usefixtures("launch")``)."""
    from fastconv import config

    with pytest.MonkeyPatch.context() as patch:
        if request.param == "tiny":
            for name, value in TINY_LAUNCH.items():
                patch.setattr(config, name, value)
        yield request.param


@pytest.fixture
def device():
    """numba.cuda (real or simulated), for making device arrays."""
    from numba import cuda

    return cuda
