"""Build-level checks of the CUDA backend, each in a fresh interpreter.

- Every kernel compiles to PTX for a real architecture (``compile_ptx``:
  libNVVM and NVRTC, no GPU). The simulator runs kernels as Python and lets
  through what the CUDA compiler refuses (a shared array whose shape is
  computed inside the kernel, say); this catches it. Skipped, with the
  reason, where libNVVM or NVRTC is missing (``pip install
  "numba-cuda[cu12]"`` brings both).
- Without numba-cuda, ``import fastconv`` works and ``backend='cuda'`` raises
  one clear RuntimeError.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import sys
import textwrap

import pytest

# A real architecture: Hopper (H100). PTX for it needs NVVM from CUDA >= 11.8.
PTX_TARGET = (9, 0)
SKIP_EXIT_CODE = 3

PTX_SCRIPT = textwrap.dedent(f"""
    import json, sys
    try:
        from numba import cuda, types
    except Exception as exc:
        print(f"numba-cuda does not import: {{exc}}")
        sys.exit({SKIP_EXIT_CODE})

    def probe(out):
        out[0] = 1.0

    try:
        cuda.compile_ptx(probe, (types.float32[::1],), cc={PTX_TARGET})
    except Exception as exc:
        print(f"libNVVM or NVRTC is missing ({{type(exc).__name__}}: "
              f"{{str(exc).splitlines()[0]}}); pip install 'numba-cuda[cu12]' "
              "brings both")
        sys.exit({SKIP_EXIT_CODE})

    from fastconv.backends import _cuda_kernels
    ptx = _cuda_kernels.compile_all_ptx({PTX_TARGET})
    print(json.dumps({{
        f"{{name}}/{{dtype}}": {{
            "target": next(line for line in text.splitlines()
                           if line.startswith(".target")),
            "local_memory": ".local" in text,
        }}
        for (name, dtype), text in ptx.items()}}))
""")


def _run_python(script: str, env: dict, timeout: int = 900):
    return subprocess.run([sys.executable, "-c", script], env=env,
                          capture_output=True, text=True, timeout=timeout,
                          cwd=tempfile.gettempdir())


def _environment_without_simulator() -> dict:
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    return env


def test_every_kernel_compiles_to_ptx():
    pytest.importorskip("numba_cuda")
    result = _run_python(PTX_SCRIPT, _environment_without_simulator())
    if result.returncode == SKIP_EXIT_CODE:
        pytest.skip(result.stdout.strip())
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    from fastconv.backends._cuda_kernels import KERNEL_NAMES

    expected = {f"{name}{variant}/{dtype}" for name in KERNEL_NAMES
                for dtype in (("float32",) if name == "dropout_mask" else
                              ("float32", "float64"))
                for variant in (("", "[narrow]") if name.startswith("conv_")
                                else ("",))}
    assert set(report) == expected
    for name, facts in report.items():
        assert facts["target"].startswith(".target sm_90"), (name, facts)
        # The register micro-tiles must not spill to local memory.
        assert not facts["local_memory"], name


def test_without_numba_cuda_import_works_and_cuda_raises_clearly():
    script = textwrap.dedent("""
        import sys
        sys.modules["numba_cuda"] = None  # as if not installed
        import numpy as np
        import fastconv
        assert "cuda" not in fastconv.available_backends()
        try:
            fastconv.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 1, 1)),
                            backend="cuda")
        except RuntimeError as exc:
            print(exc)
        else:
            raise SystemExit("backend='cuda' did not raise")
    """)
    result = _run_python(script, _environment_without_simulator(), 300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'numba-cuda is not installed (pip install ".[cuda]"' in (
        result.stdout)
