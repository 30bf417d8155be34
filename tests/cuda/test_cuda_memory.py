"""The opt-in caching allocator (``fastconv.backends._cuda_memory``).

Needs a real GPU: the simulator has no device memory to manage. The plugin
must be chosen before numba.cuda is imported, so the check runs in a fresh
interpreter with ``NUMBA_CUDA_MEMORY_MANAGER`` set.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import sys
import textwrap

import pytest

from fastconv.backends import cuda as cuda_backend

if os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1":
    pytest.skip("the caching allocator needs a real GPU (the simulator has no "
                "device memory manager)", allow_module_level=True)
if cuda_backend.unavailable_reason() is not None:
    pytest.skip(f"CUDA backend unavailable: "
                f"{cuda_backend.unavailable_reason()} (needs numba-cuda: "
                f"pip install \".[cuda]\", and a GPU)",
                allow_module_level=True)

SCRIPT = textwrap.dedent("""
    import gc
    import numpy as np
    import fastconv
    from numba import cuda
    from fastconv.backends import _cuda_memory

    rng = np.random.default_rng(0)
    manager = cuda.current_context().memory_manager
    assert isinstance(manager, _cuda_memory.CachingMemoryManager), manager
    for step in range(3):  # later steps run on reused blocks
        x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
        weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
        expected = fastconv.conv2d(x, weight, padding=1, backend="numba")
        y = fastconv.conv2d(cuda.to_device(x), cuda.to_device(weight),
                            padding=1, backend="cuda")
        pooled = fastconv.max_pool2d(y, 2, backend="cuda")
        np.testing.assert_allclose(y.copy_to_host(), expected, rtol=1e-4,
                                   atol=1e-4)
        np.testing.assert_array_equal(
            pooled.copy_to_host(),
            fastconv.max_pool2d(y.copy_to_host(), 2, backend="numba"))
        grads = fastconv.conv2d_backward(np.ones_like(expected), x, weight,
                                         padding=1, backend="cuda")
        reference = fastconv.conv2d_backward(np.ones_like(expected), x,
                                             weight, padding=1,
                                             backend="numba")
        for got, want in zip(grads, reference):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
        del y, pooled
        gc.collect()
    cached = sum(len(blocks) for blocks in manager._free_blocks.values())
    assert cached > 0, "no block came back to the pool"
    _cuda_memory.release_cached_blocks()
    assert sum(len(b) for b in manager._free_blocks.values()) == 0
    print("ok", cached)
""")


def test_caching_allocator_gives_the_same_results_and_reuses_blocks():
    env = dict(os.environ,
               NUMBA_CUDA_MEMORY_MANAGER="fastconv.backends._cuda_memory")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env,
                            capture_output=True, text=True, timeout=600,
                            cwd=tempfile.gettempdir())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok")
