"""dropout_mask / dropout / dropout_backward on every CPU backend.

The mask is a pure function of (seed, flat index, p) through the counter-based
hash in ``fastconv._dropout_hash``: the same bits on every backend and thread
count, for any shape of the array. These tests check that bit for bit, then
check that the bits look like independent Bernoulli(1 - p) draws.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest

import fastconv
from fastconv import _dropout_hash
from fastconv.backends import backend_name, resolve

TWO_32 = float(2**32)
SIGMAS = 5.0  # statistical bounds: a correct backend fails ~1 in 1.7 million


def is_naive(backend) -> bool:
    return backend_name(resolve("dropout_mask", backend)) == "naive"


def large_size(backend, compiled_size, naive_size):
    """A big array for compiled backends, a small one for the Python loops."""
    return naive_size if is_naive(backend) else compiled_size


def reference_mask(size, p, seed):
    """The mask from the plain-Python hash, element by element."""
    key = _dropout_hash.seed_key(seed)
    threshold = _dropout_hash.threshold(p)
    return np.array([_dropout_hash.keep_bits(key, i) >= threshold
                     for i in range(size)], dtype=bool)


# ------------------------------------------------------ bits and determinism

MASK_SHAPES = [(3, 5, 7), (1,), (2, 1, 4, 9), (0, 3), (), 17]
MASK_SEEDS = [0, 12345, 2**64 - 1]


@pytest.mark.parametrize("seed", MASK_SEEDS)
@pytest.mark.parametrize("p", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("shape", MASK_SHAPES, ids=str)
def test_mask_matches_python_hash(shape, p, seed, backend, naive_cache):
    expected_shape = (shape,) if isinstance(shape, int) else shape
    size = math.prod(expected_shape)
    expected = naive_cache(("reference_mask", size, p, seed),
                           lambda: reference_mask(size, p, seed))
    mask = fastconv.dropout_mask(shape, p, seed, backend=backend)
    assert mask.dtype == np.bool_ and mask.shape == expected_shape
    np.testing.assert_array_equal(mask.reshape(-1), expected)


@pytest.mark.parametrize("seed", [7, 2**64 - 1])
def test_mask_bits_exact_at_sampled_indices(seed, backend):
    """Pin each sampled element's 32 hash bits exactly.

    With bits b at index i, p = b / 2**32 gives threshold b (kept) and
    p = (b + 1) / 2**32 gives threshold b + 1 (dropped): only a backend that
    computes exactly b agrees with both.
    """
    size = large_size(backend, 1_000_003, 3_001)
    key = _dropout_hash.seed_key(seed)
    rng = np.random.default_rng(seed % 2**32)
    sampled = [0, 1, 2, size // 2, size - 2, size - 1]
    sampled += rng.integers(0, size, 2).tolist()
    for index in sampled:
        bits = _dropout_hash.keep_bits(key, index)
        kept = fastconv.dropout_mask(size, bits / TWO_32, seed, backend=backend)
        assert kept[index], f"index {index} with threshold = its bits"
        if bits + 1 < 2**32:
            dropped = fastconv.dropout_mask(size, (bits + 1) / TWO_32, seed,
                                            backend=backend)
            assert not dropped[index], f"index {index}, threshold = bits + 1"


def test_mask_matches_hash_on_large_arrays(backend):
    size = large_size(backend, 2_000_003, 5_003)
    seed, p = 987654321, 0.37
    mask = fastconv.dropout_mask(size, p, seed, backend=backend)
    key = _dropout_hash.seed_key(seed)
    threshold = _dropout_hash.threshold(p)
    rng = np.random.default_rng(0)
    for index in [*range(20), *range(size - 20, size),
                  *rng.integers(0, size, 400).tolist()]:
        expected = _dropout_hash.keep_bits(key, index) >= threshold
        assert mask[index] == expected, f"index {index}"


def test_masks_agree_across_backends(naive_cache):
    shape, p, seed = (2, 3, 11, 13), 0.42, 2024
    reference = naive_cache(("dropout_mask naive", shape, p, seed),
                            lambda: fastconv.dropout_mask(shape, p, seed,
                                                          backend="naive"))
    for name in fastconv.available_backends():
        if name == "cuda":
            continue
        np.testing.assert_array_equal(
            fastconv.dropout_mask(shape, p, seed, backend=name), reference,
            err_msg=name)


def test_mask_does_not_depend_on_thread_count(backend, restore_num_threads):
    size = large_size(backend, 1_000_003, 4_001)
    x = np.random.default_rng(5).standard_normal(size).astype(np.float32)
    results = []
    for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS),
                           numba.config.NUMBA_NUM_THREADS}):
        fastconv.set_num_threads(threads)
        mask = fastconv.dropout_mask(size, 0.3, 99, backend=backend)
        y, y_mask = fastconv.dropout(x, 0.3, seed=99, backend=backend)
        results.append((threads, mask, y, y_mask))
    _, first_mask, first_y, _ = results[0]
    for threads, mask, y, y_mask in results[1:]:
        np.testing.assert_array_equal(mask, first_mask, err_msg=f"{threads}")
        np.testing.assert_array_equal(y_mask, first_mask, err_msg=f"{threads}")
        np.testing.assert_array_equal(y, first_y, err_msg=f"{threads}")


def test_flat_index_property(backend):
    """Element i of the flattened mask depends only on (seed, i, p)."""
    p, seed = 0.5, 31337
    long_mask = fastconv.dropout_mask((1000,), p, seed, backend=backend)
    for shape in [(6, 10), (10, 6), (60,), (2, 3, 10), (1, 6, 1, 10)]:
        mask = fastconv.dropout_mask(shape, p, seed, backend=backend)
        np.testing.assert_array_equal(mask.reshape(-1), long_mask[:60],
                                      err_msg=str(shape))
    for shape in [(7, 13), (91,), (1, 1, 91)]:
        mask = fastconv.dropout_mask(shape, p, seed, backend=backend)
        np.testing.assert_array_equal(mask.reshape(-1), long_mask[:91])
    # dropout uses the same mask as dropout_mask for the array's shape.
    x = np.ones((6, 10), dtype=np.float32)
    _, mask = fastconv.dropout(x, p, seed=seed, backend=backend)
    np.testing.assert_array_equal(mask.reshape(-1), long_mask[:60])


def test_non_contiguous_input_uses_logical_c_order(backend):
    """A transposed x gets the mask of its logical (C-order) positions."""
    base = np.random.default_rng(2).standard_normal((9, 6))
    x = base.T  # shape (6, 9), Fortran-ordered memory
    y, mask = fastconv.dropout(x, 0.4, seed=8, backend=backend)
    np.testing.assert_array_equal(
        mask, fastconv.dropout_mask((6, 9), 0.4, 8, backend="naive"))
    np.testing.assert_allclose(y, np.where(mask, x / 0.6, 0.0), rtol=1e-15)


# ------------------------------------------------------------ statistics

@pytest.mark.parametrize("p", [0.1, 0.5, 0.75])
def test_keep_rate_within_binomial_bounds(p, backend):
    size = large_size(backend, 400_000, 20_000)
    mask = fastconv.dropout_mask(size, p, 1234, backend=backend)
    keep = 1.0 - p
    sigma = math.sqrt(size * p * keep)
    assert abs(int(mask.sum()) - size * keep) <= SIGMAS * sigma


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_neighbouring_elements_are_independent(p, backend):
    size = large_size(backend, 400_000, 20_000)
    mask = fastconv.dropout_mask(size, p, 4321, backend=backend)
    values = mask.astype(np.float64)
    keep = 1.0 - p
    for lag in (1, 2, 7, 32):
        first, second = values[:-lag], values[lag:]
        pairs = first.size
        correlation = np.corrcoef(first, second)[0, 1]
        assert abs(correlation) <= SIGMAS / math.sqrt(pairs), f"lag {lag}"
        both = float(np.mean(first * second))
        # Overlapping pairs are 1-dependent: Var(mean) adds twice the
        # covariance of consecutive products, q^3 - q^4.
        variance = (keep**2 * (1 - keep**2) + 2 * (keep**3 - keep**4)) / pairs
        assert abs(both - keep**2) <= SIGMAS * math.sqrt(variance), f"lag {lag}"


def test_nearby_seeds_are_independent(backend):
    size = large_size(backend, 400_000, 20_000)
    masks = [fastconv.dropout_mask(size, 0.5, seed, backend=backend)
             .astype(np.float64) for seed in (0, 1, 2)]
    for first, second in ((0, 1), (1, 2), (0, 2)):
        correlation = np.corrcoef(masks[first], masks[second])[0, 1]
        assert abs(correlation) <= SIGMAS / math.sqrt(size)


# ------------------------------------------------------------ dropout values

def test_p_zero_keeps_everything(dtype, backend):
    x = np.random.default_rng(1).standard_normal((3, 4, 5)).astype(dtype)
    y, mask = fastconv.dropout(x, 0.0, seed=3, backend=backend)
    assert mask.all()
    np.testing.assert_array_equal(y, x)
    assert y.dtype == dtype and not np.shares_memory(y, x)


def test_p_one_gives_zeros(dtype, backend):
    x = np.random.default_rng(1).standard_normal((3, 4, 5)).astype(dtype) * 1e6
    y, mask = fastconv.dropout(x, 1.0, seed=3, backend=backend)
    assert mask.dtype == np.bool_ and not mask.any()
    np.testing.assert_array_equal(y, np.zeros_like(x))
    assert y.dtype == dtype
    assert not fastconv.dropout_mask((100,), 1.0, 0, backend=backend).any()
    grad = fastconv.dropout_backward(x, mask, 1.0, backend=backend)
    np.testing.assert_array_equal(grad, np.zeros_like(x))


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_inverted_scaling(p, dtype, backend, naive_cache, assert_close):
    x = np.random.default_rng(6).standard_normal((2, 3, 7, 5)).astype(dtype)
    y, mask = fastconv.dropout(x, p, seed=11, backend=backend)
    assert y.dtype == dtype and mask.shape == x.shape
    np.testing.assert_array_equal(y[~mask], 0.0)
    assert_close(y[mask], x[mask].astype(np.float64) / (1.0 - p), dtype,
                 rtol=1e-6 if dtype == np.float32 else 1e-14)
    y_ref, mask_ref = naive_cache(
        ("dropout", p, dtype.name),
        lambda: fastconv.dropout(x, p, seed=11, backend="naive"))
    np.testing.assert_array_equal(mask, mask_ref)
    assert_close(y, y_ref, dtype, rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_eval_mode_returns_input_itself(backend):
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    y, mask = fastconv.dropout(x, 0.5, seed=1, training=False, backend=backend)
    assert y is x and mask is None
    view = x.T  # non-contiguous: still returned as is, not copied
    y, mask = fastconv.dropout(view, 0.5, training=False, backend=backend)
    assert y is view and mask is None


def test_seed_none_draws_fresh_seeds(backend):
    x = np.ones(256)
    masks = [fastconv.dropout(x, 0.5, backend=backend)[1] for _ in range(3)]
    # Equal masks of 256 fair bits: probability 2**-256 for a correct RNG.
    assert not np.array_equal(masks[0], masks[1])
    assert not np.array_equal(masks[1], masks[2])


def test_same_seed_same_result(backend):
    x = np.random.default_rng(0).standard_normal((5, 7))
    first = fastconv.dropout(x, 0.3, seed=77, backend=backend)
    second = fastconv.dropout(x, 0.3, seed=77, backend=backend)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    other = fastconv.dropout(x, 0.3, seed=78, backend=backend)
    assert not np.array_equal(first[1], other[1])


# ------------------------------------------------------------- backward

@pytest.mark.parametrize("p", [0.0, 0.25, 0.6])
def test_backward_matches_naive(p, dtype, backend, assert_close):
    grad_output = np.random.default_rng(4).standard_normal((3, 2, 5, 4)).astype(dtype)
    mask = fastconv.dropout_mask(grad_output.shape, p, 5, backend="naive")
    grad = fastconv.dropout_backward(grad_output, mask, p, backend=backend)
    expected = fastconv.dropout_backward(grad_output, mask, p, backend="naive")
    assert grad.dtype == dtype
    assert_close(grad, expected, dtype, rtol=1e-6 if dtype == np.float32 else 1e-14)
    assert_close(grad, np.where(mask, grad_output / (1.0 - p), 0.0), dtype,
                 rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_backward_matches_finite_differences(backend, finite_difference,
                                             assert_close):
    p, seed = 0.4, 12
    x = np.random.default_rng(9).standard_normal((2, 3, 4))
    grad_output = np.random.default_rng(10).standard_normal(x.shape)
    _, mask = fastconv.dropout(x, p, seed=seed, backend=backend)
    grad = fastconv.dropout_backward(grad_output, mask, p, backend=backend)
    numeric = finite_difference(
        lambda v: np.sum(fastconv.dropout(v, p, seed=seed, backend=backend)[0]
                         * grad_output), x)
    assert_close(grad, numeric, rtol=1e-6)


def test_dropped_non_finite_values_become_zero(backend):
    """A dropped inf or NaN gives 0 (not inf * 0 = NaN) on every backend."""
    x = np.array([np.inf, -np.inf, np.nan, 1.0] * 8)
    for p in (0.5, 1.0):
        y, mask = fastconv.dropout(x, p, seed=3, backend=backend)
        assert (~mask).any()
        np.testing.assert_array_equal(y[~mask], 0.0)
        np.testing.assert_array_equal(
            fastconv.dropout_backward(x, mask, p, backend=backend)[~mask], 0.0)
        kept = mask & np.isfinite(x)
        np.testing.assert_array_equal(y[kept], x[kept] / (1.0 - p))
        assert np.isnan(y[mask & np.isnan(x)]).all()


def test_numpy_integer_seed_equals_python_int(backend):
    expected = fastconv.dropout_mask(50, 0.5, 2**63 + 5, backend=backend)
    np.testing.assert_array_equal(
        fastconv.dropout_mask(50, 0.5, np.uint64(2**63 + 5), backend=backend),
        expected)
    np.testing.assert_array_equal(
        fastconv.dropout_mask((5, 10), np.float32(0.5), 2**63 + 5,
                              backend=backend).reshape(-1), expected)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(), (1,), (2, 0, 3)], ids=str)
def test_dropout_keeps_the_shape_of_zero_d_and_empty_arrays(backend, shape,
                                                            training):
    """A 0-d input came back with shape (1,) in training mode."""
    x = np.full(shape, 3.0, np.float32)
    y, mask = fastconv.dropout(x, 0.5, seed=7, training=training,
                               backend=backend)
    assert y.shape == shape
    if training:
        assert mask.shape == shape and mask.dtype == np.bool_
        np.testing.assert_array_equal(y, np.where(mask, 6.0, 0.0))
        grad = fastconv.dropout_backward(np.ones(shape, np.float32), mask,
                                         0.5, backend=backend)
        assert grad.shape == shape
        np.testing.assert_array_equal(grad, np.where(mask, 2.0, 0.0))
    else:
        assert mask is None


def test_dropout_backward_of_a_0d_gradient_checks_the_mask_shape(backend):
    with pytest.raises(ValueError, match=r"mask must have grad_output's "
                                         r"shape \(\), got \(1,\)"):
        fastconv.dropout_backward(np.array(1.0, np.float32),
                                  np.array([True]), 0.5, backend=backend)
