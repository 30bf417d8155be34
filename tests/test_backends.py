"""The backend registry, 'auto', cross-backend agreement, workspace tiling.

Registry: available_backends / unavailable_reasons, set_backend / get_backend
/ use_backend, the ``backend=`` keyword, the FASTCONV_BACKEND environment
variable, and the errors for unknown and unavailable names.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest

import fastconv
from fastconv import config
from fastconv import backends as registry
from fastconv.backends import backend_name, resolve

COMPILED_CPU = [name for name in fastconv.available_backends()
                if name not in ("naive", "cuda")]


@pytest.fixture
def naive_calls(monkeypatch):
    """Count calls into the naive module's max_pool2d_forward."""
    import fastconv.backends.naive as naive

    calls = []
    original = naive.max_pool2d_forward

    def spy(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(naive, "max_pool2d_forward", spy)
    return calls


X = np.arange(2 * 3 * 4 * 4, dtype=np.float64).reshape(2, 3, 4, 4)


# ------------------------------------------------------------------ listing

def test_available_backends_lists_naive():
    names = fastconv.available_backends()
    assert "naive" in names
    assert "auto" not in names
    assert set(names) <= set(registry.VALID_NAMES)


def test_unavailable_reasons_explain_the_rest():
    reasons = fastconv.unavailable_reasons()
    available = set(fastconv.available_backends())
    assert available.isdisjoint(reasons)
    assert available | set(reasons) == set(registry.VALID_NAMES) - {"auto"}
    for name, reason in reasons.items():
        assert isinstance(reason, str) and reason, name


# ------------------------------------------------------------- unknown names

@pytest.mark.parametrize("use", ["set_backend", "use_backend", "keyword"])
def test_unknown_name_is_value_error_listing_valid_names(
        use, restore_default_backend):
    before = fastconv.get_backend()
    with pytest.raises(ValueError) as excinfo:
        if use == "set_backend":
            fastconv.set_backend("numpy")
        elif use == "use_backend":
            with fastconv.use_backend("numpy"):
                pass
        else:
            fastconv.max_pool2d(X, 2, backend="numpy")
    message = str(excinfo.value)
    assert "'numpy'" in message
    for name in registry.VALID_NAMES:
        assert repr(name) in message
    assert fastconv.get_backend() == before


# --------------------------------------------------------- unavailable names

@pytest.fixture
def cuda_unavailable(monkeypatch):
    """Make 'cuda' known but unavailable, whatever this machine has."""
    monkeypatch.delitem(registry._loaded, "cuda", raising=False)
    monkeypatch.setitem(registry._unavailable, "cuda",
                        "pretend: no CUDA device (test)")
    return "pretend: no CUDA device (test)"


@pytest.mark.parametrize("use", ["set_backend", "use_backend", "keyword"])
def test_unavailable_backend_is_runtime_error_saying_why(
        use, cuda_unavailable, restore_default_backend):
    before = fastconv.get_backend()
    with pytest.raises(RuntimeError, match="not available") as excinfo:
        if use == "set_backend":
            fastconv.set_backend("cuda")
        elif use == "use_backend":
            with fastconv.use_backend("cuda"):
                pass
        else:
            fastconv.conv2d(X, np.ones((1, 3, 2, 2)), backend="cuda")
    assert "'cuda'" in str(excinfo.value)
    assert cuda_unavailable in str(excinfo.value)
    assert fastconv.get_backend() == before
    assert "cuda" not in fastconv.available_backends()
    assert fastconv.unavailable_reasons()["cuda"] == cuda_unavailable


def test_really_unavailable_backends_raise_runtime_error():
    """Every backend this machine lacks gives its recorded reason."""
    reasons = fastconv.unavailable_reasons()
    if not reasons:
        pytest.skip("every backend is available here")
    for name, reason in reasons.items():
        with pytest.raises(RuntimeError, match="not available"):
            fastconv.avg_pool2d(X, 2, backend=name)
        try:
            fastconv.dropout_mask(4, 0.5, 0, backend=name)
        except RuntimeError as error:
            assert reason in str(error)


# ------------------------------------------------------ choosing a backend

def test_set_backend_changes_the_default(naive_calls, restore_default_backend):
    fastconv.set_backend("naive")
    assert fastconv.get_backend() == "naive"
    fastconv.max_pool2d(X, 2)
    assert len(naive_calls) == 1
    fastconv.set_backend("auto")
    assert fastconv.get_backend() == "auto"


def test_keyword_overrides_context_and_default(naive_calls,
                                               restore_default_backend):
    other = COMPILED_CPU[0] if COMPILED_CPU else "auto"
    fastconv.set_backend(other)
    with fastconv.use_backend(other):
        fastconv.max_pool2d(X, 2, backend="naive")
    assert len(naive_calls) == 1


def test_use_backend_restores_on_exit():
    before = fastconv.get_backend()
    with fastconv.use_backend("naive"):
        assert fastconv.get_backend() == "naive"
        with fastconv.use_backend("auto"):
            assert fastconv.get_backend() == "auto"
        assert fastconv.get_backend() == "naive"
    assert fastconv.get_backend() == before


def test_use_backend_restores_on_exception():
    before = fastconv.get_backend()
    with pytest.raises(KeyError):
        with fastconv.use_backend("naive"):
            raise KeyError("boom")
    assert fastconv.get_backend() == before


def test_use_backend_dispatches(naive_calls):
    with fastconv.use_backend("naive"):
        fastconv.max_pool2d(X, 2)
    assert len(naive_calls) == 1


def test_use_backend_is_per_thread():
    """A context in one thread does not change another thread's backend."""
    before = fastconv.get_backend()
    entered, checked = threading.Event(), threading.Event()
    seen = {}

    def worker():
        with fastconv.use_backend("naive"):
            seen["inside"] = fastconv.get_backend()
            entered.set()
            checked.wait(timeout=30)

    thread = threading.Thread(target=worker)
    thread.start()
    assert entered.wait(timeout=30)
    seen["main"] = fastconv.get_backend()
    checked.set()
    thread.join(timeout=30)
    assert seen == {"inside": "naive", "main": before}


def test_auto_prefers_a_compiled_backend():
    for primitive in registry.PRIMITIVES:
        chosen = backend_name(resolve(primitive, "auto"))
        assert chosen in fastconv.available_backends()
        if COMPILED_CPU:
            assert chosen != "naive", primitive


# Child interpreters start outside the checkout: with `pip install .` the
# checkout's fastconv/ (no compiled extension) would shadow the installed one.
OUTSIDE_SOURCE_TREE = tempfile.gettempdir()


def _run_python(code, **environment):
    """Run ``code`` in a fresh interpreter with FASTCONV_BACKEND as given."""
    env = {key: value for key, value in os.environ.items()
           if key != "FASTCONV_BACKEND"}
    env.update(environment)
    return subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=300,
                          cwd=OUTSIDE_SOURCE_TREE)


def _run_python_args(code, *args):
    return subprocess.run([sys.executable, "-c", code, *args],
                          capture_output=True, text=True, timeout=300,
                          cwd=OUTSIDE_SOURCE_TREE)


ENV_PROBE = """
import numpy as np, fastconv
from fastconv.backends import backend_name, resolve
print(fastconv.get_backend(), backend_name(resolve("max_pool2d_forward")))
fastconv.max_pool2d(np.ones((1, 1, 4, 4)), 2)
"""


def test_environment_variable_sets_default():
    result = _run_python(ENV_PROBE, FASTCONV_BACKEND="naive")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["naive", "naive"]


def test_environment_default_is_auto():
    result = _run_python(ENV_PROBE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "auto"


def test_environment_variable_unknown_name_is_value_error():
    result = _run_python(ENV_PROBE, FASTCONV_BACKEND="bogus")
    assert result.returncode != 0
    assert "ValueError" in result.stderr and "'naive'" in result.stderr
    assert "FASTCONV_BACKEND='bogus'" in result.stderr


# ------------------------------------------------------ cross-backend checks

# Shapes too big for the naive loops: compiled backends are compared with
# each other and with PyTorch. (id, x shape, weight shape, conv keywords)
LARGER_CONV_CASES = [
    ("dense_same", (4, 16, 20, 20), (32, 16, 3, 3), dict(padding=1)),
    ("grouped_strided_dilated", (3, 12, 17, 15), (12, 4, 3, 3),
     dict(groups=3, stride=2, dilation=2, padding=(2, 1))),
    ("depthwise", (2, 32, 16, 16), (32, 1, 3, 3), dict(groups=32, padding=1)),
    ("pointwise", (5, 24, 9, 11), (8, 24, 1, 1), {}),
    ("big_kernel_stride", (2, 3, 40, 40), (8, 3, 7, 7),
     dict(stride=2, padding=3)),
]


def _larger_reference_or_skip(torch_module, compute_torch, compute_backend):
    """PyTorch's result if installed, else the first compiled backend's."""
    if torch_module is not None:
        return compute_torch()
    if len(COMPILED_CPU) < 2:
        pytest.skip("needs PyTorch or two compiled backends")
    return compute_backend(COMPILED_CPU[0])


def _optional_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


@pytest.mark.parametrize("case", LARGER_CONV_CASES,
                         ids=[case[0] for case in LARGER_CONV_CASES])
def test_compiled_backends_agree_on_larger_convolutions(
        case, dtype, random_array, assert_close):
    if not COMPILED_CPU:
        pytest.skip("no compiled CPU backend")
    case_id, x_shape, weight_shape, kwargs = case
    x = random_array(x_shape, dtype, "large x", case_id)
    weight = random_array(weight_shape, dtype, "large w", case_id)
    bias = random_array(weight_shape[0], dtype, "large b", case_id)
    torch = _optional_torch()

    def run_torch():
        x_t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        weight_t = torch.tensor(weight, dtype=torch.float64, requires_grad=True)
        y_t = torch.nn.functional.conv2d(
            x_t, weight_t, torch.tensor(bias, dtype=torch.float64), **kwargs)
        y_t.backward(torch.tensor(grad_output, dtype=torch.float64))
        return (y_t.detach().numpy(), x_t.grad.numpy(), weight_t.grad.numpy(),
                grad_output.astype(np.float64).sum(axis=(0, 2, 3)))

    def run_backend(name):
        y = fastconv.conv2d(x, weight, bias, **kwargs, backend=name)
        return (y,) + fastconv.conv2d_backward(grad_output, x, weight,
                                               **kwargs, backend=name)

    y_shape = fastconv.conv2d(x, weight, bias, **kwargs,
                              backend=COMPILED_CPU[0]).shape
    grad_output = random_array(y_shape, dtype, "large grad", case_id)
    reference = _larger_reference_or_skip(torch, run_torch, run_backend)
    for name in COMPILED_CPU + ["auto"]:
        for what, got, want in zip(("y", "grad_input", "grad_weight",
                                    "grad_bias"), run_backend(name), reference):
            assert got.dtype == dtype
            assert_close(got, want, dtype, what=f"{what} on {name}")


@pytest.mark.parametrize("pool", [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=2, stride=2, ceil_mode=True),
    dict(kernel_size=(3, 2), stride=1, padding=(1, 0), dilation=(2, 1)),
])
def test_compiled_backends_agree_on_larger_pools(pool, dtype, random_array,
                                                 assert_close):
    if not COMPILED_CPU:
        pytest.skip("no compiled CPU backend")
    x = random_array((4, 16, 33, 31), dtype, "large pool", str(pool))
    results = {}
    for name in COMPILED_CPU + ["auto"]:
        y, indices = fastconv.max_pool2d(x, **pool, return_indices=True,
                                         backend=name)
        grad = fastconv.max_pool2d_backward(y, indices, x.shape, backend=name)
        avg_kwargs = {k: v for k, v in pool.items() if k != "dilation"}
        average = fastconv.avg_pool2d(x, **avg_kwargs, backend=name)
        avg_grad = fastconv.avg_pool2d_backward(average, x.shape, **avg_kwargs,
                                                backend=name)
        results[name] = (y, indices, grad, average, avg_grad)
    first_name, first = next(iter(results.items()))
    for name, result in results.items():
        np.testing.assert_array_equal(result[0], first[0], err_msg=name)
        np.testing.assert_array_equal(result[1], first[1], err_msg=name)
        for got, want in zip(result[2:], first[2:]):
            assert_close(got, want, dtype, what=f"{name} vs {first_name}")
    torch = _optional_torch()
    if torch is not None:
        y_t, indices_t = torch.nn.functional.max_pool2d(
            torch.tensor(x), **pool, return_indices=True)
        np.testing.assert_array_equal(first[0], y_t.numpy())
        np.testing.assert_array_equal(first[1], indices_t.numpy())


# ------------------------------------------------------ bounded workspace

WORKSPACE_CASES = [
    ("dense", (5, 3, 9, 8), (4, 3, 3, 3), dict(padding=1)),
    ("grouped_strided", (7, 4, 10, 9), (6, 2, 3, 2),
     dict(groups=2, stride=(2, 1), dilation=(1, 2), padding=(1, 2))),
]


@pytest.mark.parametrize("workspace_bytes", [1, 3000, 20000])
@pytest.mark.parametrize("case", WORKSPACE_CASES,
                         ids=[case[0] for case in WORKSPACE_CASES])
def test_tiny_workspace_gives_the_same_result(case, workspace_bytes, dtype,
                                              backend, random_array,
                                              monkeypatch, assert_close):
    """Tiling the batch or rows must not change the result."""
    case_id, x_shape, weight_shape, kwargs = case
    x = random_array(x_shape, dtype, "workspace x", case_id)
    weight = random_array(weight_shape, dtype, "workspace w", case_id)
    bias = random_array(weight_shape[0], dtype, "workspace b", case_id)
    y = fastconv.conv2d(x, weight, bias, **kwargs, backend=backend)
    grad_output = random_array(y.shape, dtype, "workspace g", case_id)
    grads = fastconv.conv2d_backward(grad_output, x, weight, **kwargs,
                                     backend=backend)
    monkeypatch.setattr(config, "WORKSPACE_BYTES", workspace_bytes)
    tiled_y = fastconv.conv2d(x, weight, bias, **kwargs, backend=backend)
    tiled_grads = fastconv.conv2d_backward(grad_output, x, weight, **kwargs,
                                           backend=backend)
    tight = 1e-5 if dtype == np.float32 else 1e-12
    assert_close(tiled_y, y, dtype, rtol=tight, what="y")
    for name, got, want in zip(("grad_input", "grad_weight", "grad_bias"),
                               tiled_grads, grads):
        assert_close(got, want, dtype, rtol=tight, what=name)


MEMORY_PROBE = """
import resource, sys
import numpy as np, fastconv
from fastconv import config
backend, workspace = sys.argv[1], int(sys.argv[2])
config.WORKSPACE_BYTES = workspace
x = np.ones((256, 8, 32, 32), dtype=np.float32)
weight = np.ones((16, 8, 3, 3), dtype=np.float32)
small = fastconv.conv2d(x[:2], weight, padding=1, backend=backend)  # compile
fastconv.conv2d_backward(small, x[:2], weight, padding=1, backend=backend)

def peak_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

before = peak_bytes()
y = fastconv.conv2d(x, weight, padding=1, backend=backend)
forward = peak_bytes() - before
grads = fastconv.conv2d_backward(y, x, weight, padding=1, backend=backend)
backward = peak_bytes() - before
print(forward, backward, y.nbytes, sum(grad.nbytes for grad in grads))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB: Linux")
@pytest.mark.parametrize("backend_to_check", COMPILED_CPU or ["none"])
def test_convolution_memory_stays_bounded(backend_to_check):
    """Peak memory grows by the outputs plus the workspace, whatever N is.

    Measured as the growth of the peak resident size in a fresh process, so
    it sees every allocator (NumPy, Numba's runtime, C). With N = 256 an
    im2col of the whole batch would be 75 MB; the outputs are 16 MB (y) and
    8 MB (grad_input).
    """
    if backend_to_check == "none":
        pytest.skip("no compiled CPU backend")
    workspace = 1 << 20
    result = _run_python_args(MEMORY_PROBE, backend_to_check, str(workspace))
    assert result.returncode == 0, result.stderr
    forward, backward, output_bytes, grad_bytes = map(int, result.stdout.split())
    slack = 8 << 20  # allocator granularity, per-thread scratch, small arrays
    assert forward <= output_bytes + workspace + slack
    assert backward <= output_bytes + grad_bytes + workspace + slack


# ------------------------------------------------------------------ warmup

def test_warmup_runs():
    seconds = fastconv.warmup()
    assert isinstance(seconds, float) and seconds >= 0.0


def test_warmup_every_cpu_backend():
    names = tuple(name for name in fastconv.available_backends()
                  if name != "cuda")
    assert fastconv.warmup(names) >= 0.0


def test_warmup_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backends"):
        fastconv.warmup(("bogus",))


def _cython_reason_in_copy(tmp_path, source_tree):
    """unavailable_reason() of a copy of the package without its compiled
    extension, laid out as a source checkout or as an installed copy."""
    import shutil
    from pathlib import Path

    package = Path(fastconv.__file__).resolve().parent
    shutil.copytree(package, tmp_path / "fastconv",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd",
                                                  "__pycache__", "*.c"))
    if source_tree:
        (tmp_path / "setup.py").write_text("")
        (tmp_path / "pyproject.toml").write_text("")
    code = ("from fastconv.backends import cython_cpu; "
            "print(cython_cpu.unavailable_reason())")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_uncompiled_source_tree_says_build_in_place(tmp_path):
    reason = _cython_reason_in_copy(tmp_path, source_tree=True)
    assert "build in place with `pip install -e .`" in reason
    assert "reinstall" not in reason


def test_uncompiled_install_says_reinstall(tmp_path):
    reason = _cython_reason_in_copy(tmp_path, source_tree=False)
    assert "reinstall with a C compiler" in reason
