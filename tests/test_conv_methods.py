"""The convolution methods of the Cython backend, and conv2d_backward's
need_weight_grad and grad_weight reproducibility on every CPU backend.

Winograd F(4x4, 3x3) (forward, the input gradient with the flipped
filters, the weight gradient through the Winograd domain) is forced with ``FASTCONV_CONV_ALGO=winograd`` and compared with the
naive reference and PyTorch on randomised small shapes; a counting wrapper
proves which method ran. Its float32 error bound is checked against a
float64 reference with unit-variance inputs up to 512 channels.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import _shapes
from fastconv.backends import resolve

cython_cpu = pytest.importorskip("fastconv.backends.cython_cpu")
if cython_cpu.unavailable_reason() is not None:
    pytest.skip(cython_cpu.unavailable_reason(), allow_module_level=True)

#: float32 Winograd F(4x4, 3x3): max |error| / max |reference| stays below
#: this for unit-variance inputs and filters scaled by 1/sqrt(9 C), C <= 512
#: (measured 1.5e-5 at C = 512; the direct method, 7e-7). README states it.
WINOGRAD_FLOAT32_BOUND = 5e-5


@pytest.fixture
def algorithm(monkeypatch):
    """Set FASTCONV_CONV_ALGO for the test; returns the setter."""
    def set_algorithm(value):
        monkeypatch.setenv(cython_cpu.CONV_ALGO_ENV, value)
    return set_algorithm


#: Winograd's minimum tile counts as shipped, before _no_minimum_tiles.
SHIPPED_MIN_TILES = {name: getattr(cython_cpu, name) for name in (
    "WINOGRAD_MIN_CALL_TILES", "WINOGRAD_MIN_CALL_TILES_PACKED")}


@pytest.fixture(autouse=True)
def _no_minimum_tiles(monkeypatch):
    """The small shapes here run Winograd wherever their channel counts
    would (test_auto_needs_enough_tiles_for_winograd checks the minimums)."""
    for name in SHIPPED_MIN_TILES:
        monkeypatch.setattr(cython_cpu, name, 0)


@pytest.fixture
def winograd_calls(count_calls):
    """Counts the calls of the Winograd path: {'count': n}."""
    return count_calls(cython_cpu, "_winograd")


def _random_case(seed):
    """A random small 3x3 stride-1 case: x, weight, bias, padding pairs."""
    rng = np.random.default_rng(seed)
    batch = int(rng.integers(1, 3))
    channels, filters = (int(v) for v in rng.integers(1, 9, size=2))
    height, width = (int(v) for v in rng.integers(3, 12, size=2))
    padding = ((int(rng.integers(0, 3)), int(rng.integers(0, 3))),
               (int(rng.integers(0, 3)), int(rng.integers(0, 3))))
    x = rng.standard_normal((batch, channels, height, width))
    weight = rng.standard_normal((filters, channels, 3, 3))
    bias = rng.standard_normal(filters) if rng.random() < 0.7 else None
    return x, weight, bias, padding


def _assert_within_bound(pairs, dtype):
    """Each (result, reference) pair within the method's float error:
    WINOGRAD_FLOAT32_BOUND (float32) or 1e-12 (float64) times the
    reference's largest magnitude, elementwise."""
    tolerance = WINOGRAD_FLOAT32_BOUND if dtype == np.float32 else 1e-12
    for mine, reference in pairs:
        np.testing.assert_allclose(mine, reference, rtol=0,
                                   atol=tolerance * np.abs(reference).max())


def _geometry(x, weight, padding):
    (top, bottom), (left, right) = padding
    return _shapes.conv_geometry(x.shape, weight.shape, (1, 1),
                                 (top, left, bottom, right), (1, 1), 1)


@pytest.mark.parametrize("seed", range(6))
def test_winograd_forward_matches_naive(seed, dtype, algorithm,
                                        winograd_calls):
    algorithm("winograd")
    x, weight, bias, padding = _random_case(seed)
    g = _geometry(x, weight, padding)
    x, weight = x.astype(dtype), weight.astype(dtype)
    bias = None if bias is None else bias.astype(dtype)
    expected = resolve("conv2d_forward", "naive").conv2d_forward(
        x, weight, bias, g)
    got = cython_cpu.conv2d_forward(x, weight, bias, g)
    assert winograd_calls["count"] == 1
    assert got.dtype == dtype
    _assert_within_bound([(got, expected)], dtype)


@pytest.mark.parametrize("schedule", ["per-thread", "staged"])
def test_winograd_schedules_and_wide_rows(schedule, dtype, algorithm,
                                          monkeypatch):
    """Both schedules (per-thread blocks; blocks shared stage by stage),
    several blocks per call, rows wider than one 16-tile segment."""
    algorithm("winograd")
    itemsize = np.dtype(dtype).itemsize
    if schedule == "staged":
        monkeypatch.setattr(cython_cpu, "WINOGRAD_STAGED_BELOW", 10 ** 9)
        # three tiles per block: blocks end mid-row and mid-image
        monkeypatch.setattr(cython_cpu, "WINOGRAD_STAGED_BYTES",
                            3 * 36 * (3 + 4) * itemsize)
    else:
        monkeypatch.setattr(cython_cpu, "WINOGRAD_STAGED_BELOW", 0)
        monkeypatch.setattr(cython_cpu, "WINOGRAD_MIN_TILES", 1)
        monkeypatch.setattr(cython_cpu, "WINOGRAD_BLOCK_BYTES",
                            5 * 36 * (3 + 4) * itemsize)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 6, 71)).astype(dtype)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    bias = rng.standard_normal(4).astype(dtype)
    g = _geometry(x, weight, ((1, 0), (2, 1)))
    expected = resolve("conv2d_forward", "naive").conv2d_forward(
        x, weight, bias, g)
    got = cython_cpu.conv2d_forward(x, weight, bias, g)
    _assert_within_bound([(got, expected)], dtype)


def test_winograd_weight_gradient_runs_where_the_forward_does(
        algorithm, count_calls):
    calls = count_calls(cython_cpu, "_winograd_weight_grad")
    rng = np.random.default_rng(5)
    # 64 channels: with fewer than WINOGRAD_MIN_CHANNELS_OVER_DIRECT_BACKWARD,
    # float32 gradients run the register-blocked kernel
    x = rng.standard_normal((2, 64, 9, 9)).astype(np.float32)
    weight = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    grad_output = rng.standard_normal((2, 64, 9, 9)).astype(np.float32)
    for value, expected in (("auto", 1), ("direct", 1), ("winograd", 2)):
        algorithm(value)
        fastconv.conv2d_backward(grad_output, x, weight, padding=1,
                                 backend="cython")
        assert calls["count"] == expected
    fastconv.conv2d_backward(grad_output, x, weight, padding=1,
                             need_weight_grad=False, backend="cython")
    assert calls["count"] == 2


@pytest.mark.parametrize("seed", range(4))
def test_winograd_input_gradient_matches_naive(seed, dtype, algorithm,
                                               winograd_calls):
    algorithm("winograd")
    x, weight, _, padding = _random_case(100 + seed)
    g = _geometry(x, weight, padding)
    rng = np.random.default_rng(seed)
    grad_output = rng.standard_normal(g.output_shape).astype(dtype)
    x, weight = x.astype(dtype), weight.astype(dtype)
    expected = resolve("conv2d_backward", "naive").conv2d_backward(
        grad_output, x, weight, g, True)
    got = cython_cpu.conv2d_backward(grad_output, x, weight, g, True)
    assert winograd_calls["count"] == 1
    _assert_within_bound(zip(got, expected), dtype)


@pytest.mark.parametrize("block_tiles", [5, 128])
@pytest.mark.parametrize("x_shape,filters", [
    ((3, 11, 9, 13), 13),   # channels and filters not multiples of 8
    ((2, 19, 5, 30), 7),    # fewer filters than a register block
    ((1, 9, 22, 6), 33),    # a tile row narrower than a 16-tile group
])
def test_winograd_weight_and_input_gradients_in_blocks(
        x_shape, filters, block_tiles, dtype, algorithm, monkeypatch,
        count_calls):
    """The Winograd weight gradient summed over several shared blocks
    (blocks of 5 tiles end mid-row and mid-image) and one, and the input
    gradient, on odd channel and filter counts and tile counts: against
    the naive loops."""
    algorithm("winograd")
    monkeypatch.setattr(cython_cpu, "WINOGRAD_WEIGHT_GRAD_TILES", block_tiles)
    weight_grads = count_calls(cython_cpu, "_winograd_weight_grad")
    rng = np.random.default_rng(31 * sum(x_shape) + filters)
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal((filters, x_shape[1], 3, 3)).astype(dtype)
    g = _geometry(x, weight, ((1, 1), (1, 1)))
    grad_output = rng.standard_normal(g.output_shape).astype(dtype)
    expected = resolve("conv2d_backward", "naive").conv2d_backward(
        grad_output, x, weight, g, True)
    got = cython_cpu.conv2d_backward(grad_output, x, weight, g, True)
    assert weight_grads["count"] == 1
    _assert_within_bound(zip(got, expected), dtype)


@pytest.mark.parametrize("height, width", [
    (1, 1), (2, 5), (3, 4), (4, 3), (5, 9), (7, 7), (8, 16), (9, 2),
    (13, 17), (16, 8), (17, 21), (21, 13)])
def test_winograd_tile_rows_of_every_shape(height, width, algorithm,
                                           monkeypatch):
    """float32 moves tiles between planes and vector lanes a row at a time
    (winograd_tiles.h, where AVX-512 is built): 16-tile groups that span
    tile rows and images, end part way (a partial last group), and reach
    past every edge of the plane (asymmetric padding). Forward and both
    gradients, per-thread and staged blocks, against the naive loops."""
    algorithm("winograd")
    rng = np.random.default_rng(height * 31 + width)
    x = rng.standard_normal((3, 5, height, width)).astype(np.float32)
    weight = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    g = _geometry(x, weight, ((1, 2), (2, 1)))
    grad_output = rng.standard_normal(g.output_shape).astype(np.float32)
    naive = resolve("conv2d_backward", "naive")
    expected = [naive.conv2d_forward(x, weight, bias, g)] + list(
        naive.conv2d_backward(grad_output, x, weight, g, True))
    for staged in (False, True):
        monkeypatch.setattr(cython_cpu, "WINOGRAD_STAGED_BELOW",
                            10 ** 9 if staged else 0)
        got = [cython_cpu.conv2d_forward(x, weight, bias, g)] + list(
            cython_cpu.conv2d_backward(grad_output, x, weight, g, True))
        _assert_within_bound(zip(got, expected), np.float32)


def _cython_blocks(opening):
    """(path, source, line number, body lines) for every line of the Cython
    kernels' sources that matches the regular expression ``opening``: the
    body is the lines indented under it, as written."""
    import pathlib
    import re

    sources = pathlib.Path(cython_cpu.__file__).parent / "_cython"
    for path in sorted(sources.glob("*.pyx")):
        source = path.read_text()
        lines = source.splitlines()
        for start, line in enumerate(lines):
            if not re.search(opening, line):
                continue
            indent = len(line) - len(line.lstrip())
            body = []
            for inner in lines[start + 1:]:
                if inner.strip() and len(inner) - len(inner.lstrip()) <= indent:
                    break
                body.append(inner)
            yield path, source, start + 1, body


def test_parallel_stages_are_separated_by_barriers():
    """Cython emits the prange loops of one ``parallel()`` block as ``omp
    for nowait``: a thread with no share of one stage would start the next
    while another still writes what it reads (a race that timing hides;
    the Winograd staged schedules had it). Every Cython kernel therefore
    puts ``_stage_barrier()`` between consecutive pranges of a block."""
    import re

    checked = 0
    for path, _, number, lines in _cython_blocks(r"with nogil, parallel\("):
        body = [inner.strip() for inner in lines]
        stages = [i for i, text in enumerate(body)
                  if re.match(r"for \w+ in prange\(", text)]
        for first, second in zip(stages, stages[1:]):
            checked += 1
            assert any(text.startswith("_stage_barrier()")
                       for text in body[first:second]), (
                f"{path.name}:{number}: prange loops without a barrier "
                "between them")
    assert checked >= 3     # the staged forward's two, the weight grad's


def test_prange_bodies_assign_what_they_pass_by_address():
    """Cython makes a variable private to each thread of a prange loop only
    where the loop body assigns it; one set through a pointer (``f(&n)``)
    and never assigned stays shared between the threads, a race (the
    Winograd staged stages' channel runs had it). Every scalar a prange
    body passes by address is therefore assigned in that body."""
    import re

    def scalars(source):
        """Names declared ``cdef <scalar type> a, b = 0, ...`` (not
        pointers, structs or memoryviews)."""
        names = set()
        for match in re.finditer(
                r"^\s*cdef (?:Py_ssize_t|int|long long|double|float|real|"
                r"bint) ([^\n*\[]*)$", source, re.MULTILINE):
            for part in match.group(1).split(","):
                names.add(part.split("=")[0].strip())
        return names

    checked = 0
    for path, source, number, lines in _cython_blocks(
            r"for \w+ in prange\("):
        declared = scalars(source)
        text = "\n".join(inner.split("#")[0] for inner in lines)
        for name in set(re.findall(r"&(\w+)\b(?!\s*\[)", text)):
            if name not in declared:
                continue        # a struct or array the threads share
            checked += 1
            assert re.search(rf"(^|\n)\s*{name}\s*=[^=]", text), (
                f"{path.name}:{number}: {name} is passed by address in a "
                "prange body that never assigns it (shared)")
    assert checked >= 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_winograd_matches_torch(dtype, algorithm, winograd_calls):
    torch = pytest.importorskip("torch")
    algorithm("winograd")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 20, 13, 10)).astype(dtype)
    weight = rng.standard_normal((17, 20, 3, 3)).astype(dtype)
    bias = rng.standard_normal(17).astype(dtype)
    x_t, w_t = (torch.from_numpy(a).double().requires_grad_(True)
                for a in (x, weight))
    y_t = torch.nn.functional.conv2d(x_t, w_t, torch.from_numpy(bias).double(),
                                     padding=(1, 2))
    grad_output = rng.standard_normal(tuple(y_t.shape)).astype(dtype)
    y_t.backward(torch.from_numpy(grad_output).double())
    y = fastconv.conv2d(x, weight, bias, padding=(1, 2), backend="cython")
    grad_x, grad_w, _ = fastconv.conv2d_backward(
        grad_output, x, weight, padding=(1, 2), backend="cython")
    assert winograd_calls["count"] == 2
    _assert_within_bound([(y, y_t.detach().numpy()),
                          (grad_x, x_t.grad.numpy()),
                          (grad_w, w_t.grad.numpy())], dtype)


def test_winograd_gradients_by_finite_differences(algorithm,
                                                  finite_difference):
    """float64: conv2d's input and weight gradients through Winograd are
    the derivatives of conv2d's (Winograd) forward."""
    algorithm("winograd")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 6, 5))
    weight = rng.standard_normal((2, 3, 3, 3))
    grad_output = rng.standard_normal((1, 2, 6, 5))

    def loss(values):
        return float((fastconv.conv2d(values, weight, padding=1,
                                      backend="cython") * grad_output).sum())

    def loss_of_weight(values):
        return float((fastconv.conv2d(x, values, padding=1,
                                      backend="cython") * grad_output).sum())

    grad_x, grad_w, _ = fastconv.conv2d_backward(
        grad_output, x, weight, padding=1, backend="cython")
    np.testing.assert_allclose(grad_x, finite_difference(loss, x),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad_w, finite_difference(loss_of_weight,
                                                         weight),
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("channels", [16, 64, 512])
def test_winograd_float32_error_bound(channels, algorithm):
    """The documented bound: float32 against a float64 reference."""
    algorithm("winograd")
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((1, channels, 10, 10))
    weight = rng.standard_normal((8, channels, 3, 3)) / np.sqrt(9 * channels)
    g = _geometry(x, weight, ((1, 1), (1, 1)))
    reference = cython_cpu.conv2d_forward(x, weight, None, g)   # float64
    got = cython_cpu.conv2d_forward(x.astype(np.float32),
                                    weight.astype(np.float32), None, g)
    error = np.abs(got - reference).max() / np.abs(reference).max()
    assert error < WINOGRAD_FLOAT32_BOUND


def test_auto_and_direct_choose_by_shape(algorithm, winograd_calls):
    rng = np.random.default_rng(0)
    # 64 channels on 16x16: Winograd (on 8x8 planes the blocked kernel)
    wide = rng.standard_normal((1, 64, 16, 16)).astype(np.float32)
    wide_weight = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    narrow = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    narrow_weight = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    algorithm("auto")
    fastconv.conv2d(narrow, narrow_weight, padding=1, backend="cython")
    fastconv.conv2d(wide, wide_weight, stride=2, padding=1, backend="cython")
    assert winograd_calls["count"] == 0
    fastconv.conv2d(wide, wide_weight, padding=1, backend="cython")
    assert winograd_calls["count"] == 1
    algorithm("direct")
    direct = fastconv.conv2d(wide, wide_weight, padding=1, backend="cython")
    fastconv.conv2d_backward(direct, wide, wide_weight, padding=1,
                             backend="cython")
    assert winograd_calls["count"] == 1
    g = _geometry(wide, wide_weight, ((1, 1), (1, 1)))
    assert cython_cpu.conv2d_method(g) == "direct-blocked"
    assert cython_cpu.conv2d_method(g, np.float64) == "im2col-gemm"
    algorithm("gemm")
    assert cython_cpu.conv2d_method(g) == "im2col-gemm"
    algorithm("auto")
    assert cython_cpu.conv2d_method(g) == "winograd-f4x4"
    # below WINOGRAD_MIN_CHANNELS_OVER_DIRECT channels (_NARROW on an AVX2
    # build) the blocked kernel serves float32, Winograd or GEMM float64
    below = cython_cpu._winograd_channels_over_direct() - 8
    middle = _geometry(np.zeros((1, below, 8, 8)),
                       np.zeros((below, below, 3, 3)), ((1, 1), (1, 1)))
    assert cython_cpu.conv2d_method(middle) == "direct-blocked"
    assert cython_cpu.conv2d_method(middle, np.float64) == (
        "winograd-f4x4" if below >= cython_cpu.WINOGRAD_MIN_CHANNELS
        else "im2col-gemm")
    # the weight gradient keeps the direct kernel up to
    # WINOGRAD_MIN_CHANNELS_OVER_DIRECT_BACKWARD channels (_NARROW ...)
    limit = cython_cpu._winograd_channels_over_direct(backward=True)
    channels = limit - 8
    narrow = _geometry(np.zeros((1, channels, 8, 8)),
                       np.zeros((channels, channels, 3, 3)),
                       ((1, 1), (1, 1)))
    assert cython_cpu.conv2d_method(narrow) == "winograd-f4x4"
    assert not cython_cpu._uses_winograd(
        narrow, channels, channels, (8, 8), forward_dtype=np.float32,
        backward=True)
    assert cython_cpu._uses_winograd(
        narrow, channels, channels, (8, 8), forward_dtype=np.float64,
        backward=True)
    wide = _geometry(np.zeros((1, limit, 8, 8)),
                     np.zeros((limit, limit, 3, 3)), ((1, 1), (1, 1)))
    assert cython_cpu._uses_winograd(
        wide, limit, limit, (8, 8), forward_dtype=np.float32, backward=True)


def test_unknown_algorithm_is_refused(algorithm):
    algorithm("fft")
    x = np.zeros((1, 16, 4, 4), np.float32)
    weight = np.zeros((16, 16, 3, 3), np.float32)
    with pytest.raises(ValueError, match="FASTCONV_CONV_ALGO"):
        fastconv.conv2d(x, weight, backend="cython")


# ------------------------------------------------ conv2d_backward primitive

def _compiled_cpu_modules():
    return [resolve("conv2d_backward", name)
            for name in fastconv.available_backends()
            if name not in ("naive", "cuda")]


@pytest.mark.parametrize("algo", ["direct", "winograd"])
def test_need_weight_grad_false_skips_and_matches(algo, algorithm):
    """need_weight_grad=False: grad_weight and grad_bias are None, x may be
    None, and grad_input has the bits of the full call's."""
    algorithm(algo)
    rng = np.random.default_rng(11)
    for x_shape, w_shape, stride, pads in (
            ((2, 4, 7, 7), (5, 4, 3, 3), (1, 1), (1, 1, 1, 1)),
            ((2, 4, 7, 7), (5, 4, 1, 1), (1, 1), (0, 0, 0, 0)),
            ((2, 4, 8, 7), (5, 4, 3, 2), (2, 1), (1, 0, 1, 0))):
        g = _shapes.conv_geometry(x_shape, w_shape, stride, pads, (1, 1), 1)
        x = rng.standard_normal(x_shape)
        weight = rng.standard_normal(w_shape)
        grad_output = rng.standard_normal(g.output_shape)
        for module in _compiled_cpu_modules():
            full = module.conv2d_backward(grad_output, x, weight, g, True)
            grad_input, grad_weight, grad_bias = module.conv2d_backward(
                grad_output, None, weight, g, True, need_weight_grad=False)
            assert grad_weight is None and grad_bias is None
            np.testing.assert_array_equal(grad_input, full[0])


@pytest.fixture
def parallel_small_calls(monkeypatch):
    """Run even these small calls on every thread (no serial shortcut)."""
    from fastconv import config

    monkeypatch.setattr(config, "PARALLEL_MIN_MACS", 0)


@pytest.mark.usefixtures("parallel_small_calls")
@pytest.mark.parametrize("x_shape,w_shape", [
    ((6, 8, 9, 9), (5, 8, 3, 3)),       # row-tile schedule
    ((16, 32, 3, 3), (8, 32, 3, 3)),    # chunks of whole images
    ((4, 6, 5, 5), (4, 6, 1, 1)),       # 1x1: x is its own im2col matrix
    ((9, 64, 16, 16), (64, 64, 3, 3)),  # Winograd ('auto'), two blocks
])
def test_grad_weight_is_reproducible(x_shape, w_shape, count_calls):
    """The same grad_weight bits run after run on each backend, and for any
    thread count on the Cython backend (a fixed reduction order)."""
    winograd = count_calls(cython_cpu, "_winograd_weight_grad")
    rng = np.random.default_rng(2)
    g = _shapes.conv_geometry(x_shape, w_shape, (1, 1), (1, 1, 1, 1), (1, 1),
                              1)
    x = rng.standard_normal(x_shape).astype(np.float32)
    weight = rng.standard_normal(w_shape).astype(np.float32)
    grad_output = rng.standard_normal(g.output_shape).astype(np.float32)
    threads = fastconv.get_num_threads()
    try:
        for module in _compiled_cpu_modules():
            first = module.conv2d_backward(grad_output, x, weight, g, True)
            for _ in range(3):
                again = module.conv2d_backward(grad_output, x, weight, g,
                                               True)
                for a, b in zip(first, again):
                    np.testing.assert_array_equal(a, b)
        fastconv.set_num_threads(1)
        serial = cython_cpu.conv2d_backward(grad_output, x, weight, g, True)
        fastconv.set_num_threads(max(2, threads))
        parallel = cython_cpu.conv2d_backward(grad_output, x, weight, g, True)
        for a, b in zip(serial[1:], parallel[1:]):
            np.testing.assert_array_equal(a, b)
    finally:
        fastconv.set_num_threads(threads)
    assert (winograd["count"] > 0) == (w_shape[1] == 64)


# ---------------------------------------------------------- packed weights

def test_conv2d_layer_never_serves_stale_packed_weights(algorithm,
                                                        winograd_calls):
    """nn.Conv2d keeps its Winograd-domain filters between forwards and
    drops them on every change of the weight: in-place (as optimizers do),
    by assignment to .data, by a new Parameter, by load_state_dict."""
    from fastconv import nn, optim

    algorithm("winograd")
    rng = np.random.default_rng(4)
    layer = nn.Conv2d(16, 16, 3, padding=1)
    x = rng.standard_normal((2, 16, 6, 6)).astype(np.float32)

    def check():
        expected = fastconv.conv2d(x, layer.weight.data, layer.bias.data,
                                   padding=1)          # stateless
        np.testing.assert_array_equal(layer(x), expected)

    check()
    packed = layer._packed
    assert len(packed) == 1
    held = packed._forms["winograd-f4x4"]
    check()                                            # reused, not redone
    assert packed._forms["winograd-f4x4"] is held
    layer.weight.data[0, 0, 1, 1] += 1.0               # in place
    check()
    layer.weight.data = rng.standard_normal(
        layer.weight.shape).astype(np.float32)         # assignment
    check()
    layer.weight = nn.Parameter(layer.weight.data * 2)  # a new Parameter
    check()
    state = {name: value * 0.5 for name, value in layer.state_dict().items()}
    layer.load_state_dict(state)
    check()
    optimizer = optim.SGD(layer.parameters(), lr=0.1)
    grad_output = rng.standard_normal((2, 16, 6, 6)).astype(np.float32)
    layer.train()
    layer(x)
    layer.backward(grad_output)
    optimizer.step()                                   # in-place update
    check()
    assert winograd_calls["count"] >= 7


def test_auto_needs_enough_tiles_for_winograd(monkeypatch, algorithm,
                                              winograd_calls):
    """With the shipped minimums (this module sets them to 0): a few tiles run
    the direct method, unless a layer's packed filters pay for fewer."""
    for name, value in SHIPPED_MIN_TILES.items():
        monkeypatch.setattr(cython_cpu, name, value)
    algorithm("auto")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 64, 16, 16)).astype(np.float32)   # 16 tiles
    weight = (rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32)
    g = _geometry(x, weight, ((1, 1), (1, 1)))
    assert output_tiles(g) == 16
    assert cython_cpu.conv2d_method(g) == "direct-blocked"
    assert cython_cpu.conv2d_method(g, packed=True) == "winograd-f4x4"
    expected = fastconv.conv2d(x, weight, padding=1, backend="naive")
    np.testing.assert_allclose(
        fastconv.conv2d(x, weight, padding=1, backend="cython"), expected,
        rtol=1e-4, atol=1e-4)
    assert winograd_calls["count"] == 0
    layer = fastconv.nn.Conv2d(64, 64, 3, padding=1)
    layer.weight.data[...] = weight
    layer.bias.data[...] = 0
    with fastconv.use_backend("cython"):
        np.testing.assert_allclose(layer(x), expected, rtol=1e-4, atol=1e-4)
    assert winograd_calls["count"] == 1
    big = rng.standard_normal((8, 64, 16, 16)).astype(np.float32)  # 128
    fastconv.conv2d(big, weight, padding=1, backend="cython")
    assert winograd_calls["count"] == 2


def output_tiles(g):
    return g.batch * (-(-g.out_height // 4)) * (-(-g.out_width // 4))


@pytest.mark.parametrize("channels, plane", [
    (64, 8), (32, 8), (32, 14), (24, 32), (16, 14), (20, 32), (12, 16)])
def test_winograd_needs_enough_channels_over_the_direct_kernel(
        channels, plane, algorithm):
    """WINOGRAD_MIN_CHANNELS_OVER_DIRECT (_NARROW on an AVX2 build),
    whatever the plane (32 tiles and more here: the per-call tile minimum
    is not what decides)."""
    algorithm("auto")
    method = ("winograd-f4x4"
              if channels >= cython_cpu._winograd_channels_over_direct()
              else "direct-blocked")
    g = _shapes.conv_geometry((32, channels, plane, plane),
                              (channels, channels, 3, 3), (1, 1),
                              (1, 1, 1, 1), (1, 1), 1)
    assert cython_cpu.conv2d_method(g, np.float32) == method
    # float64 has no register-blocked kernel: Winograd where it applies
    assert cython_cpu.conv2d_method(g, np.float64) == (
        "winograd-f4x4" if channels >= cython_cpu.WINOGRAD_MIN_CHANNELS
        else "im2col-gemm")


@pytest.mark.parametrize("batch, channels, filters, plane", [
    (1, 2, 1, (1, 1)), (3, 3, 5, (5, 7)), (2, 17, 9, (13, 13)),
    (1, 64, 12, (4, 6)), (2, 8, 33, (8, 3))])
def test_pointwise_products_on_the_packed_kernel(batch, channels, filters,
                                                 plane, algorithm,
                                                 count_calls):
    """A float32 pointwise layer on the GEMM path runs its products on
    winograd_gemm.h's kernel, panels packed (conv.pyx's _product): planes
    that are no multiple of a vector or of a panel, one pixel, one filter,
    with and without bias, against float64 and the naive loops."""
    calls = count_calls(cython_cpu._conv, "pointwise_pack_floats")
    algorithm("gemm")
    rng = np.random.default_rng(channels * 100 + filters)
    x = rng.standard_normal((batch, channels) + plane)
    weight = rng.standard_normal((filters, channels, 1, 1))
    bias = rng.standard_normal(filters)
    g = _geometry(x, weight, ((0, 0), (0, 0)))
    expected = resolve("conv2d_forward", "naive").conv2d_forward(
        x, weight, bias, g)
    for b in (bias, None):
        got = cython_cpu.conv2d_forward(
            x.astype(np.float32), weight.astype(np.float32),
            None if b is None else b.astype(np.float32), g)
        assert got.dtype == np.float32
        want = expected if b is not None else expected - bias[:, None, None]
        np.testing.assert_allclose(got, want, rtol=1e-5,
                                   atol=1e-5 * np.sqrt(channels))
    assert calls["count"] >= 2
