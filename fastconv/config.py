"""Tunables, read once at import; tests and benchmarks may patch them.

Environment variables:

``FASTCONV_BACKEND``
    Default backend name (``auto`` if unset).
``FASTCONV_NUMBA_CACHE``
    ``0`` turns Numba's on-disk cache off (default on). Where the cache goes
    is Numba's own ``NUMBA_CACHE_DIR``; with a read-only site-packages Numba
    falls back to a per-user cache directory by itself.
"""

import os


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in ("0", "false", "no", "off")


#: Cache compiled Numba kernels on disk (``cache=True``).
NUMBA_CACHE = _env_flag("FASTCONV_NUMBA_CACHE", True)

#: Upper bound, in bytes, on the scratch space (im2col columns and the like)
#: one convolution call allocates; backends tile the batch to stay under it.
WORKSPACE_BYTES = 32 * 1024 * 1024
