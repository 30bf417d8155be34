"""max_pool2d / avg_pool2d and their backward passes on every CPU backend.

Each backend is compared with the naive reference (max-pool indices exactly,
including ties, NaN and -inf), the reference with PyTorch, and the backward
passes with central finite differences in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv

# (id, x shape, keyword arguments) for max_pool2d. Small: naive is loops.
MAX_POOL_CASES = [
    ("k2_default_stride", (2, 3, 8, 8), dict(kernel_size=2)),
    ("k3_s2_p1", (2, 2, 9, 9), dict(kernel_size=3, stride=2, padding=1)),
    ("rect_pair_args", (1, 3, 7, 8),
     dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0))),
    ("pad_w_only", (1, 2, 6, 7), dict(kernel_size=(2, 3), stride=1,
                                      padding=(0, 1))),
    ("overlapping_s1", (2, 1, 5, 6), dict(kernel_size=3, stride=1)),
    ("dilation2", (1, 2, 9, 9), dict(kernel_size=3, stride=1, padding=1,
                                     dilation=2)),
    ("dilation_pair_ceil", (2, 2, 8, 9), dict(kernel_size=2, stride=2,
                                              dilation=(2, 1), ceil_mode=True)),
    # ceil_mode: the last window hangs over the end of the input.
    ("ceil_partial_last", (1, 2, 7, 7), dict(kernel_size=2, stride=2,
                                             ceil_mode=True)),
    # ceil_mode: the extra window would start in the right padding: dropped.
    ("ceil_last_dropped", (1, 1, 5, 5), dict(kernel_size=2, stride=2,
                                             padding=1, ceil_mode=True)),
    ("ceil_stride3_pad", (2, 2, 8, 7), dict(kernel_size=3, stride=3, padding=1,
                                            ceil_mode=True)),
    ("batch1_one_channel_odd", (1, 1, 7, 5), dict(kernel_size=3, stride=2)),
    ("kernel_equals_input", (2, 3, 5, 5), dict(kernel_size=5)),
    ("kernel1_stride2", (1, 2, 5, 4), dict(kernel_size=1, stride=2)),
    ("stride_exceeds_kernel_ceil", (2, 2, 9, 9), dict(kernel_size=2, stride=3,
                                                      ceil_mode=True)),
]

# (id, x shape, keyword arguments) for avg_pool2d; each runs with
# count_include_pad True and False.
AVG_POOL_CASES = [
    ("k2_default_stride", (2, 3, 8, 8), dict(kernel_size=2)),
    ("k3_s2_p1", (2, 2, 9, 9), dict(kernel_size=3, stride=2, padding=1)),
    ("rect_pair_args", (1, 3, 7, 8),
     dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0))),
    ("pad_w_only", (1, 2, 6, 7), dict(kernel_size=(2, 3), stride=1,
                                      padding=(0, 1))),
    ("overlapping_s1_pad", (2, 1, 5, 6), dict(kernel_size=3, stride=1,
                                              padding=1)),
    ("ceil_partial_last", (1, 2, 7, 7), dict(kernel_size=2, stride=2,
                                             ceil_mode=True)),
    ("ceil_last_dropped", (1, 1, 5, 5), dict(kernel_size=2, stride=2,
                                             padding=1, ceil_mode=True)),
    ("ceil_stride3_pad", (2, 2, 8, 7), dict(kernel_size=3, stride=3, padding=1,
                                            ceil_mode=True)),
    ("even_kernel_half_pad", (1, 2, 6, 5), dict(kernel_size=4, stride=2,
                                                padding=2, ceil_mode=True)),
    ("batch1_one_channel_odd", (1, 1, 7, 5), dict(kernel_size=3, stride=2)),
    ("kernel_equals_input", (2, 3, 5, 5), dict(kernel_size=5)),
    ("kernel1_stride2", (1, 2, 5, 4), dict(kernel_size=1, stride=2)),
]

MAX_BY_ID = {case[0]: case for case in MAX_POOL_CASES}
AVG_BY_ID = {case[0]: case for case in AVG_POOL_CASES}
MAX_IDS = list(MAX_BY_ID)
AVG_IDS = list(AVG_BY_ID)


# ------------------------------------------------------------------ max pool

def max_case(case_id, dtype, random_array, naive_cache):
    """x, kwargs, naive (y, indices), grad_output and naive grad_input."""
    _, x_shape, kwargs = MAX_BY_ID[case_id]
    x = random_array(x_shape, dtype, "max x", case_id)

    def compute():
        y, indices = fastconv.max_pool2d(x, **kwargs, return_indices=True,
                                         backend="naive")
        grad_output = random_array(y.shape, dtype, "max grad", case_id)
        grad_input = fastconv.max_pool2d_backward(grad_output, indices,
                                                  x.shape, backend="naive")
        return y, indices, grad_output, grad_input

    return (x, kwargs) + naive_cache(("max_pool2d", case_id, dtype.name),
                                     compute)


@pytest.mark.parametrize("case_id", MAX_IDS)
def test_max_pool_matches_naive(case_id, dtype, backend, random_array,
                                naive_cache, assert_close):
    x, kwargs, y_ref, indices_ref, grad_output, grad_ref = max_case(
        case_id, dtype, random_array, naive_cache)
    y, indices = fastconv.max_pool2d(x, **kwargs, return_indices=True,
                                     backend=backend)
    assert y.dtype == dtype and indices.dtype == np.int64
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(indices, indices_ref)
    # Without return_indices: y alone, the same values.
    np.testing.assert_array_equal(
        fastconv.max_pool2d(x, **kwargs, backend=backend), y_ref)
    grad_input = fastconv.max_pool2d_backward(grad_output, indices, x.shape,
                                              backend=backend)
    assert grad_input.dtype == dtype
    assert_close(grad_input, grad_ref, dtype, what="max_pool2d grad_input")


@pytest.mark.parametrize("case_id", MAX_IDS)
def test_naive_max_pool_matches_torch(case_id, dtype, torch, random_array,
                                      naive_cache, assert_close):
    x, kwargs, y, indices, grad_output, grad_input = max_case(
        case_id, dtype, random_array, naive_cache)
    x_t = torch.tensor(x, requires_grad=True)
    y_t, indices_t = torch.nn.functional.max_pool2d(
        x_t, **kwargs, return_indices=True)
    y_t.backward(torch.tensor(grad_output))
    np.testing.assert_array_equal(y, y_t.detach().numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())
    assert_close(grad_input, x_t.grad.numpy(), dtype, what="grad vs torch")


def _special_values(kind, shape):
    """Inputs that stress the max rule: ties, NaN, infinities."""
    rng = np.random.default_rng(SPECIAL_KINDS.index(kind))
    if kind == "ties":
        # Three distinct values: most windows hold several equal maxima;
        # the first (row-major) wins.
        return rng.integers(0, 3, size=shape).astype(np.float64)
    if kind == "nan":
        x = rng.standard_normal(shape)
        x[rng.random(shape) < 0.2] = np.nan
        return x
    if kind == "neg_inf":
        # Whole rows of -inf, so some windows hold only -inf and padding:
        # the first in-bounds element is the index then.
        x = rng.standard_normal(shape)
        x[:, :, ::2, :] = -np.inf
        x[0, 0] = -np.inf
        return x
    if kind == "inf_and_nan":
        x = rng.choice(np.array([-np.inf, 1.0, np.inf]), size=shape)
        x[rng.random(shape) < 0.1] = np.nan
        return x
    raise ValueError(kind)


SPECIAL_KINDS = ["ties", "nan", "neg_inf", "inf_and_nan"]
SPECIAL_POOLS = [dict(kernel_size=3, stride=1, padding=1),
                 dict(kernel_size=2, stride=2, padding=1, ceil_mode=True),
                 dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1))]


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
@pytest.mark.parametrize("pool", range(len(SPECIAL_POOLS)))
def test_max_pool_special_values_match_naive(kind, pool, dtype, backend,
                                             naive_cache):
    kwargs = SPECIAL_POOLS[pool]
    x = _special_values(kind, (2, 2, 6, 7)).astype(dtype)
    y_ref, indices_ref = naive_cache(
        ("max_pool2d special", kind, pool, dtype.name),
        lambda: fastconv.max_pool2d(x, **kwargs, return_indices=True,
                                    backend="naive"))
    y, indices = fastconv.max_pool2d(x, **kwargs, return_indices=True,
                                     backend=backend)
    np.testing.assert_array_equal(y, y_ref)  # NaN compares equal here
    np.testing.assert_array_equal(indices, indices_ref)
    assert indices.min() >= 0 and indices.max() < x.shape[2] * x.shape[3]
    np.testing.assert_array_equal(
        fastconv.max_pool2d(x, **kwargs, backend=backend), y_ref)


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
@pytest.mark.parametrize("pool", [dict(kernel_size=2, stride=2),
                                  dict(kernel_size=3, stride=2, padding=1),
                                  dict(kernel_size=3, stride=2,
                                       ceil_mode=True)])
def test_cython_max_pool_values_alone(kind, pool, dtype, monkeypatch):
    """A max_pool2d without indices runs the Cython kernel's values-only
    rows (the stride-2 vector rows keep no offsets): the same values as
    with indices, NaN and infinities included, on planes whose rows need
    a masked last vector (odd widths), and no indices array made."""
    from fastconv.backends import cython_cpu, is_available

    if not is_available("cython"):
        pytest.skip("the cython backend is not available here")
    calls = []
    kernel = cython_cpu.max_pool2d_forward

    def spy(x, g, return_indices=True):
        y, indices = kernel(x, g, return_indices=return_indices)
        calls.append((return_indices, indices is None))
        return y, indices

    monkeypatch.setattr(cython_cpu, "max_pool2d_forward", spy)
    x = _special_values(kind, (3, 5, 37, 41)).astype(dtype)
    with_indices, _ = fastconv.max_pool2d(x, **pool, return_indices=True,
                                          backend="cython")
    alone = fastconv.max_pool2d(x, **pool, backend="cython")
    assert calls == [(True, False), (False, True)]
    np.testing.assert_array_equal(alone, with_indices)
    np.testing.assert_array_equal(
        alone, fastconv.max_pool2d(x, **pool, backend="naive"))


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
@pytest.mark.parametrize("pool", range(len(SPECIAL_POOLS)))
def test_naive_max_pool_special_values_match_torch(kind, pool, torch):
    kwargs = SPECIAL_POOLS[pool]
    x = _special_values(kind, (2, 2, 6, 7))
    y, indices = fastconv.max_pool2d(x, **kwargs, return_indices=True,
                                     backend="naive")
    y_t, indices_t = torch.nn.functional.max_pool2d(
        torch.tensor(x), **kwargs, return_indices=True)
    np.testing.assert_array_equal(y, y_t.numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())


def test_max_pool_nan_propagates(backend):
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    x[0, 0, 1, 1] = np.nan
    y, indices = fastconv.max_pool2d(x, 2, return_indices=True, backend=backend)
    assert np.isnan(y[0, 0, 0, 0]) and indices[0, 0, 0, 0] == 5
    assert not np.isnan(y[0, 0, 1:, :]).any() and not np.isnan(y[0, 0, :, 1]).any()


def test_max_pool_padding_is_minus_infinity(backend):
    """All-negative input: a padded window's max is a real element, not 0."""
    x = -1.0 - np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    y, indices = fastconv.max_pool2d(x, 3, stride=1, padding=1,
                                     return_indices=True, backend=backend)
    assert (y < 0).all()
    assert indices[0, 0, 0, 0] == 0 and y[0, 0, 0, 0] == -1.0


def test_max_pool_backward_accumulates_overlaps(backend):
    # Stride 1, kernel 3: the global maximum wins all nine windows around it.
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 1.0
    y, indices = fastconv.max_pool2d(x, 3, stride=1, padding=1,
                                     return_indices=True, backend=backend)
    grad = fastconv.max_pool2d_backward(np.ones_like(y), indices, x.shape,
                                        backend=backend)
    assert grad[0, 0, 2, 2] == 9.0
    assert grad.sum() == y.size


def test_max_pool_backward_accepts_any_integer_indices(backend):
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 5))
    y, indices = fastconv.max_pool2d(x, 2, return_indices=True, backend=backend)
    expected = fastconv.max_pool2d_backward(y, indices, x.shape, backend=backend)
    for dtype in (np.int32, np.uint16, np.intp):
        np.testing.assert_array_equal(
            fastconv.max_pool2d_backward(y, indices.astype(dtype), x.shape,
                                         backend=backend), expected)
    # input_shape as a list works like a tuple.
    np.testing.assert_array_equal(
        fastconv.max_pool2d_backward(y, indices, list(x.shape),
                                     backend=backend), expected)


# ------------------------------------------------------------------ avg pool

def avg_case(case_id, count_include_pad, dtype, random_array, naive_cache):
    _, x_shape, kwargs = AVG_BY_ID[case_id]
    kwargs = dict(kwargs, count_include_pad=count_include_pad)
    x = random_array(x_shape, dtype, "avg x", case_id)

    def compute():
        y = fastconv.avg_pool2d(x, **kwargs, backend="naive")
        grad_output = random_array(y.shape, dtype, "avg grad", case_id)
        grad_input = fastconv.avg_pool2d_backward(grad_output, x.shape,
                                                  **kwargs, backend="naive")
        return y, grad_output, grad_input

    return (x, kwargs) + naive_cache(
        ("avg_pool2d", case_id, count_include_pad, dtype.name), compute)


@pytest.mark.parametrize("count_include_pad", [True, False],
                         ids=["include_pad", "exclude_pad"])
@pytest.mark.parametrize("case_id", AVG_IDS)
def test_avg_pool_matches_naive(case_id, count_include_pad, dtype, backend,
                                random_array, naive_cache, assert_close):
    x, kwargs, y_ref, grad_output, grad_ref = avg_case(
        case_id, count_include_pad, dtype, random_array, naive_cache)
    y = fastconv.avg_pool2d(x, **kwargs, backend=backend)
    assert y.dtype == dtype
    assert_close(y, y_ref, dtype, what="avg_pool2d")
    grad_input = fastconv.avg_pool2d_backward(grad_output, x.shape, **kwargs,
                                              backend=backend)
    assert grad_input.dtype == dtype
    assert_close(grad_input, grad_ref, dtype, what="avg_pool2d grad_input")


@pytest.mark.parametrize("count_include_pad", [True, False],
                         ids=["include_pad", "exclude_pad"])
@pytest.mark.parametrize("case_id", AVG_IDS)
def test_naive_avg_pool_matches_torch(case_id, count_include_pad, dtype, torch,
                                      random_array, naive_cache, assert_close):
    x, kwargs, y, grad_output, grad_input = avg_case(
        case_id, count_include_pad, dtype, random_array, naive_cache)
    x_t = torch.tensor(x, requires_grad=True)
    y_t = torch.nn.functional.avg_pool2d(x_t, **kwargs)
    y_t.backward(torch.tensor(grad_output))
    assert_close(y, y_t.detach().numpy(), dtype, what="y vs torch")
    assert_close(grad_input, x_t.grad.numpy(), dtype, what="grad vs torch")


def test_avg_pool_count_include_pad_divisors(backend):
    """Ones in, 3x3 windows with padding 1: corners see 4 of 9 real cells."""
    x = np.ones((1, 1, 4, 4))
    included = fastconv.avg_pool2d(x, 3, stride=1, padding=1, backend=backend)
    excluded = fastconv.avg_pool2d(x, 3, stride=1, padding=1,
                                   count_include_pad=False, backend=backend)
    np.testing.assert_allclose(included[0, 0, 0, 0], 4 / 9)
    np.testing.assert_allclose(included[0, 0, 0, 1], 6 / 9)
    np.testing.assert_allclose(included[0, 0, 1, 1], 1.0)
    np.testing.assert_allclose(excluded, np.ones_like(excluded))


# ------------------------------------------------------- PyTorch, any backend

@pytest.mark.parametrize("case_id", ["k3_s2_p1", "ceil_stride3_pad"])
def test_backend_pools_match_torch(case_id, dtype, backend, torch,
                                   random_array, assert_close):
    functional = torch.nn.functional
    _, x_shape, kwargs = MAX_BY_ID[case_id]
    x = random_array(x_shape, dtype, "torch pool x", case_id)
    x_t = torch.tensor(x, requires_grad=True)
    y_t, indices_t = functional.max_pool2d(x_t, **kwargs, return_indices=True)
    grad_output = random_array(tuple(y_t.shape), dtype, "torch grad", case_id)
    y_t.backward(torch.tensor(grad_output))
    y, indices = fastconv.max_pool2d(x, **kwargs, return_indices=True,
                                     backend=backend)
    np.testing.assert_array_equal(y, y_t.detach().numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())
    assert_close(fastconv.max_pool2d_backward(grad_output, indices, x.shape,
                                              backend=backend),
                 x_t.grad.numpy(), dtype, what="max grad vs torch")

    for count_include_pad in (True, False):
        avg_kwargs = dict(kwargs, count_include_pad=count_include_pad)
        x_t = torch.tensor(x, requires_grad=True)
        y_t = functional.avg_pool2d(x_t, **avg_kwargs)
        y_t.backward(torch.tensor(grad_output))
        assert_close(fastconv.avg_pool2d(x, **avg_kwargs, backend=backend),
                     y_t.detach().numpy(), dtype, what="avg vs torch")
        assert_close(fastconv.avg_pool2d_backward(
            grad_output, x.shape, **avg_kwargs, backend=backend),
            x_t.grad.numpy(), dtype, what="avg grad vs torch")


# ------------------------------------------------------- finite differences

POOL_FD_CASES = [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=2, stride=1),
    dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), ceil_mode=True),
]


@pytest.mark.parametrize("pool", range(len(POOL_FD_CASES)))
def test_max_pool_backward_matches_finite_differences(
        pool, backend, random_array, finite_difference, assert_close):
    kwargs = POOL_FD_CASES[pool]
    # Distinct values, 0.1 apart, so a 1e-6 step never changes an argmax.
    rng = np.random.default_rng(pool)
    x = (rng.permutation(2 * 2 * 5 * 6) * 0.1).reshape(2, 2, 5, 6)
    y, indices = fastconv.max_pool2d(x, **kwargs, return_indices=True,
                                     backend=backend)
    grad_output = random_array(y.shape, np.float64, "max fd", pool)
    grad_input = fastconv.max_pool2d_backward(grad_output, indices, x.shape,
                                              backend=backend)
    numeric = finite_difference(
        lambda v: np.sum(fastconv.max_pool2d(v, **kwargs, backend=backend)
                         * grad_output), x)
    assert_close(grad_input, numeric, rtol=1e-6, what="max_pool2d grad_input")


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("pool", range(len(POOL_FD_CASES)))
def test_avg_pool_backward_matches_finite_differences(
        pool, count_include_pad, backend, random_array, finite_difference,
        assert_close):
    kwargs = dict(POOL_FD_CASES[pool], count_include_pad=count_include_pad)
    x = random_array((2, 2, 5, 6), np.float64, "avg fd x", pool)
    y = fastconv.avg_pool2d(x, **kwargs, backend=backend)
    grad_output = random_array(y.shape, np.float64, "avg fd", pool)
    grad_input = fastconv.avg_pool2d_backward(grad_output, x.shape, **kwargs,
                                              backend=backend)
    numeric = finite_difference(
        lambda v: np.sum(fastconv.avg_pool2d(v, **kwargs, backend=backend)
                         * grad_output), x)
    assert_close(grad_input, numeric, rtol=1e-6, what="avg_pool2d grad_input")


# ------------------------------------------------------------- output sizes

def test_ceil_mode_drops_window_starting_in_padding(backend):
    """H=5, k=2, s=2, p=1: ceil gives 4 windows, but the 4th starts at 6 =
    H + p (wholly in the right padding), so PyTorch keeps 3."""
    x = np.ones((1, 1, 5, 5))
    assert fastconv.max_pool2d(x, 2, 2, 1, ceil_mode=True,
                               backend=backend).shape == (1, 1, 3, 3)
    assert fastconv.avg_pool2d(x, 2, 2, 1, ceil_mode=True,
                               backend=backend).shape == (1, 1, 3, 3)
    # Without padding the 4th window starts inside the input and is kept.
    assert fastconv.max_pool2d(np.ones((1, 1, 7, 7)), 2, 2, ceil_mode=True,
                               backend=backend).shape == (1, 1, 4, 4)


# ------------------------------------------------------- randomised geometry

@st.composite
def pool_geometries(draw, with_dilation):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)),
               draw(st.integers(0, kernel[1] // 2)))
    dilation = ((draw(st.integers(1, 2)), draw(st.integers(1, 2)))
                if with_dilation else (1, 1))
    sizes = []
    for axis in range(2):
        effective_kernel = dilation[axis] * (kernel[axis] - 1) + 1
        # Windows must reach the input: at least the dilated kernel's span.
        smallest = max(1, effective_kernel - padding[axis], padding[axis] + 1)
        sizes.append(smallest + draw(st.integers(0, 4)))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *sizes)
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding,
                  ceil_mode=draw(st.booleans()))
    if with_dilation:
        kwargs["dilation"] = dilation
    return shape, kwargs


def _windows_reach_input(shape, kwargs):
    """False where max_pool2d rejects the geometry (a dilated window skips
    the input; see test_max_pool_window_missing_input_is_rejected)."""
    x = np.ones(shape)
    try:
        _, indices = fastconv.max_pool2d(x, **kwargs, return_indices=True,
                                         backend="naive")
    except ValueError:
        return False
    return indices.min() >= 0


POOL_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                         database=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])


@POOL_SETTINGS
@given(geometry=pool_geometries(with_dilation=True),
       seed=st.integers(0, 2**32 - 1))
def test_random_max_pool_matches_naive(geometry, seed, dtype,
                                       compiled_backend, assert_close):
    shape, kwargs = geometry
    if not _windows_reach_input(shape, kwargs):
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    y_ref, indices_ref = fastconv.max_pool2d(x, **kwargs, return_indices=True,
                                             backend="naive")
    y, indices = fastconv.max_pool2d(x, **kwargs, return_indices=True,
                                     backend=compiled_backend)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(indices, indices_ref)
    grad_output = rng.standard_normal(y.shape).astype(dtype)
    assert_close(
        fastconv.max_pool2d_backward(grad_output, indices, shape,
                                     backend=compiled_backend),
        fastconv.max_pool2d_backward(grad_output, indices, shape,
                                     backend="naive"), dtype)


@POOL_SETTINGS
@given(geometry=pool_geometries(with_dilation=False),
       count_include_pad=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_random_avg_pool_matches_naive(geometry, count_include_pad, seed,
                                       dtype, compiled_backend, assert_close):
    shape, kwargs = geometry
    kwargs = dict(kwargs, count_include_pad=count_include_pad)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    y_ref = fastconv.avg_pool2d(x, **kwargs, backend="naive")
    assert_close(fastconv.avg_pool2d(x, **kwargs, backend=compiled_backend),
                 y_ref, dtype)
    grad_output = rng.standard_normal(y_ref.shape).astype(dtype)
    assert_close(
        fastconv.avg_pool2d_backward(grad_output, shape, **kwargs,
                                     backend=compiled_backend),
        fastconv.avg_pool2d_backward(grad_output, shape, **kwargs,
                                     backend="naive"), dtype)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(geometry=pool_geometries(with_dilation=True),
       count_include_pad=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_random_pools_naive_matches_torch(geometry, count_include_pad, seed,
                                          torch, assert_close):
    functional = torch.nn.functional
    shape, kwargs = geometry
    if not _windows_reach_input(shape, kwargs):
        # Rejected: right only if some window has no element (PyTorch: -inf).
        y_t = functional.max_pool2d(torch.ones(shape, dtype=torch.float64),
                                    **kwargs)
        assert torch.isinf(y_t).any()
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    x_t = torch.tensor(x, requires_grad=True)
    y_t, indices_t = functional.max_pool2d(x_t, **kwargs, return_indices=True)
    grad_output = rng.standard_normal(tuple(y_t.shape))
    y_t.backward(torch.tensor(grad_output))
    y, indices = fastconv.max_pool2d(x, **kwargs, return_indices=True,
                                     backend="naive")
    np.testing.assert_array_equal(y, y_t.detach().numpy())
    np.testing.assert_array_equal(indices, indices_t.numpy())
    assert_close(fastconv.max_pool2d_backward(grad_output, indices, shape,
                                              backend="naive"),
                 x_t.grad.numpy(), what="max grad")

    avg_kwargs = {key: value for key, value in kwargs.items()
                  if key != "dilation"}
    avg_kwargs["count_include_pad"] = count_include_pad
    x_t = torch.tensor(x, requires_grad=True)
    y_t = functional.avg_pool2d(x_t, **avg_kwargs)
    y_t.backward(torch.ones_like(y_t))
    assert_close(fastconv.avg_pool2d(x, **avg_kwargs, backend="naive"),
                 y_t.detach().numpy(), what="avg")
    assert_close(fastconv.avg_pool2d_backward(np.ones(tuple(y_t.shape)), shape,
                                              **avg_kwargs, backend="naive"),
                 x_t.grad.numpy(), what="avg grad")


# ------------------------------------------------- windows that miss the input

# A dilated window can step over the whole input: x of height 1, kernel 2,
# dilation 2, padding 1 puts the taps at rows -1 and 1, both outside. The
# output size is positive, but such a window has no element to be its max
# (PyTorch returns -inf with an out-of-range index there); fastconv rejects
# the geometry instead.
WINDOW_MISSES_INPUT = [
    ((1, 1, 1, 1), dict(kernel_size=2, stride=1, padding=1, dilation=2)),
    ((1, 1, 3, 3), dict(kernel_size=2, stride=2, padding=1, dilation=5,
                        ceil_mode=True)),
    ((1, 1, 1, 3), dict(kernel_size=2, stride=1, padding=1, dilation=2)),
]


@pytest.mark.parametrize("shape, kwargs", WINDOW_MISSES_INPUT)
def test_max_pool_window_missing_input_is_rejected(shape, kwargs, backend):
    with pytest.raises(ValueError, match=r"\bdilation\b"):
        fastconv.max_pool2d(np.ones(shape), **kwargs, return_indices=True,
                            backend=backend)


@pytest.mark.parametrize("stride", [np.int64(2), np.int32(2), (np.int64(2), 2)])
def test_numpy_integer_strides_are_strides(stride, backend):
    """A NumPy integer stride pools as the int does (it was compared with
    () first, which NumPy answers elementwise)."""
    x = np.random.default_rng(0).random((2, 3, 9, 8)).astype(np.float32)
    line = x[:, :, 0]
    for pool in (fastconv.max_pool2d, fastconv.avg_pool2d):
        np.testing.assert_array_equal(
            pool(x, 3, stride=stride, backend=backend),
            pool(x, 3, stride=2, backend=backend))
    if isinstance(stride, tuple):
        return
    for pool in (fastconv.max_pool1d, fastconv.avg_pool1d):
        np.testing.assert_array_equal(
            pool(line, 3, stride=stride, backend=backend),
            pool(line, 3, stride=2, backend=backend))
    np.testing.assert_array_equal(
        fastconv.nn.MaxPool2d(3, stride=stride)(x),
        fastconv.max_pool2d(x, 3, stride=2))


@pytest.mark.parametrize("stride", [np.array([2, 2]), np.array(2), ()])
def test_array_or_empty_strides(stride):
    """An array is refused as a stride; () means the kernel size (PyTorch's
    default)."""
    x = np.ones((1, 1, 4, 4), np.float32)
    if isinstance(stride, tuple):
        assert fastconv.max_pool2d(x, 2, stride=stride).shape == (1, 1, 2, 2)
        return
    with pytest.raises(TypeError, match="stride"):
        fastconv.max_pool2d(x, 2, stride=stride)


@pytest.mark.parametrize("bad", [-1, 36, 2**40, -2**62])
@pytest.mark.parametrize("where", ["first", "last"])
def test_max_pool_backward_refuses_indices_outside_the_plane(bad, where,
                                                              backend):
    """Every backend refuses an index outside [0, H*W) with the same error
    (cython checks in its scatter pass, the others before it), on the first
    or the last element, and leaves the caller's arrays as they were."""
    x = np.random.default_rng(3).random((2, 3, 6, 6)).astype(np.float32)
    y, indices = fastconv.max_pool2d(x, 2, return_indices=True,
                                     backend=backend)
    grad = np.ones_like(y)
    indices = indices.copy()
    indices.reshape(-1)[0 if where == "first" else -1] = bad
    kept = indices.copy()
    with pytest.raises(ValueError, match=r"indices must lie in \[0, H\*W = "
                                         r"36\) for input_shape \(2, 3, 6, 6\)"):
        fastconv.max_pool2d_backward(grad, indices, x.shape, backend=backend)
    np.testing.assert_array_equal(indices, kept)


@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("padding, ceil_mode", [(0, False), (1, False),
                                                (0, True), (1, True)])
def test_max_pool_stride2_float32_rows_of_any_width(backend, kernel,
                                                    padding, ceil_mode):
    """The float32 2x2 and 3x3 stride-2 rows run 16 windows (AVX-512) or 8
    (AVX2) at a time under masks (pool_rows.h): every row width from 1 to
    40 windows (short, partial and whole vectors, and a tail), with ties,
    NaN and -inf, gives the reference's values and indices exactly."""
    rng = np.random.default_rng(22 + kernel)
    for width in range(kernel, 82, 3):
        x = rng.integers(-2, 3, (2, 2, 5, width)).astype(np.float32)
        draw = rng.random(x.shape)
        x[draw < 0.04] = np.nan
        x[(draw >= 0.04) & (draw < 0.1)] = -np.inf
        got = fastconv.max_pool2d(x, kernel, 2, padding,
                                  ceil_mode=ceil_mode, return_indices=True,
                                  backend=backend)
        want = fastconv.max_pool2d(x, kernel, 2, padding,
                                   ceil_mode=ceil_mode, return_indices=True,
                                   backend="naive")
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"W={width}")
        np.testing.assert_array_equal(got[1], want[1], err_msg=f"W={width}")
