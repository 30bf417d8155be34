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
