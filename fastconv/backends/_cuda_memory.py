"""An opt-in caching device allocator for Numba (an EMM plugin).

Numba allocates each device array with ``cuMemAlloc`` and releases it with
``cuMemFree``, which waits for the whole device. For a small op that costs
more than its kernels (about 0.1 ms per array was measured on an H100). This
plugin keeps released blocks in size classes (powers of two, from 512 bytes)
and hands them out again, as PyTorch's and CuPy's allocators do. Select it
before ``numba.cuda`` is first imported:

    NUMBA_CUDA_MEMORY_MANAGER=fastconv.backends._cuda_memory python train.py

Reuse follows stream order: a block released on the host returns to the
pool at once, so whatever uses it next must be queued after the kernels that
used it before. That holds for work on Numba's default stream (all of
fastconv's) and on the legacy default streams of PyTorch and CuPy; do not
use this plugin with arrays that other, non-blocking streams touch.
``release_cached_blocks()`` hands the pool's memory back to the driver.
"""

from __future__ import annotations

import weakref
from collections import defaultdict

from numba import cuda
from numba.cuda.cudadrv.driver import driver

SMALLEST_BLOCK = 512


def size_class(size: int) -> int:
    """The block size an allocation of ``size`` bytes is served from."""
    return max(SMALLEST_BLOCK, 1 << (max(size, 1) - 1).bit_length())


class CachingMemoryManager(cuda.GetIpcHandleMixin,
                           cuda.HostOnlyCUDAMemoryManager):
    """Device allocations from per-size-class free lists, refilled on release."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._free_blocks = defaultdict(list)  # size class -> device pointers
        _managers.add(self)

    def initialize(self):
        # Numba calls this whenever it readies the context, so it must not
        # touch the pool (a fresh dict would orphan every released block).
        pass

    def memalloc(self, size):
        block_size = size_class(size)
        free = self._free_blocks[block_size]
        pointer = free.pop() if free else self._allocate(block_size)

        def release(free=free, pointer=pointer):
            free.append(pointer)

        return cuda.MemoryPointer(weakref.proxy(self.context), pointer,
                                  block_size, finalizer=release)

    def _allocate(self, block_size):
        try:
            return driver.cuMemAlloc(block_size)
        except Exception:  # out of memory, most likely: empty the pool, retry
            self.release_cached_blocks()
            return driver.cuMemAlloc(block_size)

    def release_cached_blocks(self):
        """Free every cached block (``cuMemFree`` synchronises the device)."""
        for blocks in self._free_blocks.values():
            while blocks:
                driver.cuMemFree(blocks.pop())

    def get_memory_info(self):
        free, total = driver.cuMemGetInfo()
        return cuda.MemoryInfo(free=free, total=total)

    def reset(self):
        # The context's memory goes with it: forget the pointers, free none.
        self._free_blocks.clear()
        super().reset()

    @property
    def interface_version(self):
        return 1


_managers: weakref.WeakSet = weakref.WeakSet()


def release_cached_blocks() -> None:
    """Give the memory cached by every context's pool back to the driver."""
    for manager in list(_managers):
        manager.release_cached_blocks()


#: The name Numba looks up in a module named by NUMBA_CUDA_MEMORY_MANAGER.
_numba_memory_manager = CachingMemoryManager
