"""Keep freed array memory in the process (glibc's malloc), so that the
arrays of the next call (outputs, scratch, a training step's activations)
reuse pages instead of faulting in new ones. Applied on ``import fastconv``.

By default glibc returns a freed block of a few MiB to the kernel (an
``munmap``, or trimming the heap's top) and the next array of that size
faults in every 4 KiB page again; a ResNet-8 step (batch 64) frees and
reallocates about 100 MiB of activations, and those faults cost more than
its whole batch norm. Raising malloc's mmap and trim thresholds keeps the
pages: measured with ``benchmarks/bench_training.py --model resnet8``'s
``--child fastconv`` processes, 141 ms per step opted out against 112 ms
(3 alternating fresh processes each, load average 1.0-1.2 on 2 cores);
a plain ``conv2d_backward`` of (32, 64, 32, 32) x (64, 64, 3, 3), 35 ms
against 17.5 ms (about 3,000 page faults a call, some 6 us each on this
virtual machine). The cost: the process holds its peak heap until it exits
(as PyTorch's caching allocators do on a GPU).

glibc caps the mmap threshold at 32 MiB, so larger blocks (a (16, 64, 112,
112) float32 output is 51 MiB) would still get an mmap of their own, and
each call would fault in its pages again (NumPy asks for transparent huge
pages on such blocks, and each huge-page fault zeroes 2 MiB): mmap is
turned off for malloc's blocks (M_MMAP_MAX 0; the heap itself still grows
through mmap where brk cannot). Measured: resnet18's 7x7/2 stem at batch
16, conv2d of (16, 3, 224, 224) x (64, 3, 7, 7), 18.1-19.0 ms with 280-790
page faults a call against 14.1-14.8 ms with none (2 threads, load 1.1).

``FASTCONV_KEEP_FREED_MEMORY=0`` in the environment leaves malloc as it is.
Other platforms and C libraries: nothing happens.
"""

from __future__ import annotations

import ctypes
import sys

from fastconv import config

#: mallopt's parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

#: Blocks below this size come from the heap, not their own mmap: glibc
#: accepts at most half its heap size (32 MiB on 64-bit builds).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: The heap's free top is returned to the kernel only above this size.
TRIM_THRESHOLD_BYTES = 512 * 1024 * 1024

_applied = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when
    they are set (False where opted out, not glibc, or refused)."""
    global _applied
    if _applied is not None:
        return _applied
    try:
        wanted = config.setting("FASTCONV_KEEP_FREED_MEMORY")
    except ValueError:
        # neither yes nor no: left alone here (this runs on import, which
        # must not raise); config.check_environment reports it at the first
        # kernel call and comes back here once it is fixed
        return False
    _applied = False
    if not wanted or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # The mmap threshold first: setting either fixes both (glibc stops
    # adjusting them), and a trim threshold alone would send every block
    # above 128 KiB to its own mmap.
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and \
        bool(mallopt(_M_MMAP_MAX, 0))
    return _applied
