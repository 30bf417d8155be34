"""fastconv._memory: glibc's malloc keeps freed arrays' pages once
fastconv is imported, unless FASTCONV_KEEP_FREED_MEMORY=0."""

import os
import platform
import subprocess
import sys

import pytest

PROBE = "import fastconv, fastconv._memory as m; print(m._applied)"


def probe(**environment):
    env = dict(os.environ, **environment)
    result = subprocess.run([sys.executable, "-c", PROBE], env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                    reason="mallopt's thresholds are glibc's")
def test_thresholds_are_set_on_import():
    assert probe() == "True"


def test_opting_out_leaves_malloc_alone():
    assert probe(FASTCONV_KEEP_FREED_MEMORY="0") == "False"


REUSE_PROBE = """
import resource, numpy as np, fastconv
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def allocate_and_touch():
    block = np.empty(40 * 2**20 // 4, np.float32)   # past glibc's 32 MiB
    block[::256] = 1.0                              # mmap threshold cap
    del block
allocate_and_touch()
before = faults()
for _ in range(3):
    allocate_and_touch()
print(faults() - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                    reason="mallopt's thresholds are glibc's")
def test_blocks_past_the_mmap_cap_reuse_their_pages():
    """A 40 MiB array freed and allocated again faults no new pages (each
    would have had an mmap of its own: 10,000 faults of 4 KiB pages, or 20
    of 2 MiB huge pages, which NumPy asks for); opted out, it does."""
    def faults(**environment):
        env = dict(os.environ, **environment)
        return int(subprocess.run(
            [sys.executable, "-c", REUSE_PROBE], env=env,
            capture_output=True, text=True, check=True).stdout)

    assert faults() < 10
    assert faults(FASTCONV_KEEP_FREED_MEMORY="0") >= 30
