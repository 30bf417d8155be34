"""fastconv.dask: lazy filter2d and batched predict on a distributed cluster.

Everything is compared with the in-memory result: ``fastconv.filter2d`` on
the whole image, and the model called on the whole batch. The cluster is a
``distributed.LocalCluster`` of two worker processes, started once for the
module.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import dask  # noqa: E402

import fastconv  # noqa: E402
import fastconv.dask as fastconv_dask  # noqa: E402
from fastconv import filters  # noqa: E402
from fastconv.filters import filter2d  # noqa: E402

BOUNDARIES = list(filters.BOUNDARIES)
COMPILED = [name for name in fastconv.available_backends()
            if name not in ("naive", "cuda")]


@pytest.fixture(scope="module")
def client():
    """Two worker processes, one thread each."""
    cloudpickle = pytest.importorskip("cloudpickle")
    # The test models below live in this module, which the workers cannot
    # import: ship them by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1,
        dashboard_address=None, silence_logs=40)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def assert_matches(lazy, eager, exact):
    """Exact for the naive backend; BLAS and FFT sums depend on the block's
    width, so compiled backends agree to rounding."""
    assert lazy.shape == eager.shape and lazy.dtype == eager.dtype
    if exact:
        np.testing.assert_array_equal(lazy, eager)
    else:
        rtol = 2e-6 if eager.dtype == np.float32 else 1e-13
        scale = max(1.0, float(np.abs(eager).max()))
        np.testing.assert_allclose(lazy, eager, rtol=rtol, atol=rtol * scale)


# (kernel shape, stride, padding): odd, even and 1x1 kernels; strides that
# do not divide the chunks; explicit padding
CASES = [((3, 3), 1, "same"), ((4, 2), 1, "same"), ((3, 5), 2, "same"),
         ((4, 4), (3, 2), "valid"), ((1, 1), 2, (2, 1)), ((5, 3), 1, 3)]


def _cases(boundary, rng, cases, images):
    backend = COMPILED[0] if COMPILED else "naive"
    lazy, eager = [], []
    for (kernel_shape, stride, padding), (image, chunks) in itertools.product(
            cases, images):
        kernel = rng.standard_normal(kernel_shape)
        arguments = dict(stride=stride, padding=padding, boundary=boundary,
                         backend=backend)
        lazy.append(fastconv_dask.filter2d(da.from_array(image, chunks=chunks),
                                           kernel, **arguments))
        eager.append(filter2d(image, kernel, **arguments))
    return lazy, eager


def _assert_computed_match(lazy, eager, scheduler):
    """Compute the lazy results together; each equals its in-memory twin."""
    computed = dask.compute(*lazy, scheduler=scheduler)
    for result, expected, graph in zip(computed, eager, lazy):
        assert graph.shape == expected.shape
        assert_matches(result, expected, exact=False)


def test_filter2d_on_the_cluster_equals_in_memory(client):
    """Every boundary, odd chunk sizes, colour, on two worker processes."""
    rng = np.random.default_rng(17)
    colour = rng.standard_normal((53, 47, 3)).astype(np.float32)
    lazy, eager = [], []
    # one case per boundary: a distributed task costs milliseconds here, so
    # the option matrix runs on the threaded scheduler below
    cases = [((4, 2), 1, "same"), ((3, 5), (3, 2), "same"),
             ((5, 5), 2, "valid"), ((2, 3), 1, (1, 2)), ((3, 3), 1, "same")]
    for boundary, case in zip(BOUNDARIES, cases):
        more_lazy, more_eager = _cases(boundary, rng, [case],
                                       [(colour, (23, 19, 2))])
        lazy += more_lazy
        eager += more_eager
    _assert_computed_match(lazy, eager, client.get)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_filter2d_equals_in_memory_for_every_option(boundary):
    """Kernels, strides, paddings and odd chunks, on the threaded scheduler."""
    rng = np.random.default_rng(18)
    colour = rng.standard_normal((53, 47, 3)).astype(np.float32)
    gray = rng.standard_normal((41, 37))
    lazy, eager = _cases(boundary, rng, CASES,
                         [(colour, (11, 13, 2)), (gray, (7, 9)),
                          (colour, (53, 5, 3))])
    _assert_computed_match(lazy, eager, "threads")


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_naive_backend_blocks_are_bit_for_bit(boundary):
    """The naive reference sums each window in one order: exactly equal."""
    rng = np.random.default_rng(3)
    image = rng.standard_normal((19, 17, 2))
    kernel = rng.standard_normal((4, 3))
    for stride, chunks in [(1, (5, 4, 1)), ((2, 3), (7, 3, 2))]:
        lazy = fastconv_dask.filter2d(da.from_array(image, chunks=chunks),
                                      kernel, stride=stride, boundary=boundary,
                                      backend="naive", method="depthwise")
        eager = filter2d(image, kernel, stride=stride, boundary=boundary,
                         backend="naive", method="depthwise")
        assert_matches(lazy.compute(scheduler="sync"), eager, exact=True)


def test_pads_wider_than_chunks_and_image():
    """A 15 x 15 kernel on a 9 x 7 image in 4 x 3 chunks: numpy.pad repeats
    its reflections; the lazy padding must follow."""
    rng = np.random.default_rng(8)
    image = rng.standard_normal((9, 7))
    kernel = rng.standard_normal((15, 15))
    for boundary in BOUNDARIES:
        lazy = fastconv_dask.filter2d(da.from_array(image, chunks=(4, 3)),
                                      kernel, boundary=boundary)
        assert_matches(lazy.compute(scheduler="sync"),
                       filter2d(image, kernel, boundary=boundary),
                       exact=False)


def test_large_kernel_fft_path_and_dtypes():
    rng = np.random.default_rng(9)
    image = rng.integers(0, 256, (70, 66, 3), dtype=np.uint8)
    kernel = rng.standard_normal((13, 13))
    lazy = fastconv_dask.filter2d(da.from_array(image, chunks=(25, 30, 3)),
                                  kernel, boundary="reflect", stride=2)
    assert lazy.dtype == np.float32
    eager = filter2d(image, kernel, boundary="reflect", stride=2)
    result = lazy.compute(scheduler="sync")
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, eager, rtol=1e-5,
                               atol=1e-5 * np.abs(eager).max())


def test_filter2d_is_lazy():
    calls = []

    def load():
        calls.append(1)
        return np.ones((20, 20), dtype=np.float32)

    image = da.from_delayed(dask.delayed(load)(), shape=(20, 20),
                            dtype=np.float32).rechunk(7)
    lazy = fastconv_dask.filter2d(image, np.ones((3, 3)), stride=2)
    assert calls == [] and isinstance(lazy, da.Array)
    assert lazy.shape == (10, 10) and lazy.dtype == np.float32
    np.testing.assert_allclose(lazy.compute(scheduler="sync"),
                               filter2d(np.ones((20, 20), np.float32),
                                        np.ones((3, 3)), stride=2))
    assert calls


@pytest.mark.parametrize("chunks, out_size, stride, before, after, used", [
    ((7, 7, 7, 2), 23, 1, 1, 1, 25), ((2,) * 11 + (1,), 23, 1, 2, 3, 28),
    ((5, 5, 5), 8, 2, 1, 1, 17), ((1, 1, 1), 3, 1, 4, 4, 11),
    ((10,), 5, 2, 0, 3, 13), ((3, 3, 3, 3), 4, 3, 2, 0, 12)])
def test_chunk_plan_tiles_output_and_padded_array(chunks, out_size, stride,
                                                  before, after, used):
    outputs, cores = fastconv_dask._chunk_plan(chunks, out_size, stride,
                                               before, after, used)
    assert sum(outputs) == out_size and min(outputs) >= 1
    assert sum(cores) == used and len(cores) == len(outputs)
    if len(cores) > 1:
        assert min(cores) >= max(before, after, 1)
    # block j starts at padded row B_j * stride
    starts = np.cumsum((0,) + cores[:-1]) - np.array(
        [0] + [before] * (len(cores) - 1))
    np.testing.assert_array_equal(
        starts, np.cumsum((0,) + outputs[:-1]) * stride)


def test_chunk_plan_at_stride_one_follows_the_image_chunks():
    # 'same' 3x3: one padded row above and below; the padded chunks are the
    # image's with the padding merged into the first and last
    assert fastconv_dask._chunk_plan((10, 10, 5), 25, 1, 1, 1, 27) == (
        (10, 10, 5), (11, 10, 6))


# ------------------------------------------------------------------ predict

class LinearModel:
    """logits = plane means times a weight: (n, C, H, W) -> (n, 3)."""

    def __init__(self):
        self.weight = np.array([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0]],
                               dtype=np.float32)
        self.training = True
        self.calls = 0

    def eval(self):
        self.training = False
        return self

    def __call__(self, batch):
        assert not self.training, "predict must call eval() first"
        assert batch.ndim == 4 and batch.shape[0] <= 4
        self.calls += 1
        return batch.mean(axis=(2, 3)) @ self.weight


def test_predict_matches_the_model_on_the_whole_batch(client):
    rng = np.random.default_rng(2)
    images = rng.standard_normal((23, 2, 6, 5)).astype(np.float32)
    model = LinearModel()
    lazy = fastconv_dask.predict(model, da.from_array(images, chunks=(5, 2, 3,
                                                                      5)),
                                 batch_size=4)
    assert not model.training
    assert lazy.shape == (23, 3) and lazy.chunks[0] == (5, 5, 5, 5, 3)
    logits = lazy.compute(scheduler=client.get)
    np.testing.assert_allclose(logits, images.mean(axis=(2, 3))
                               @ model.weight, rtol=1e-6)


def test_predict_a_fastconv_model(client):
    models = pytest.importorskip("fastconv.models")
    if not hasattr(models, "SmallCNN"):
        pytest.skip("fastconv.models.SmallCNN is not there yet")
    model = models.SmallCNN()
    model.eval()
    images = np.random.default_rng(4).standard_normal(
        (10, 1, 28, 28)).astype(np.float32)
    expected = np.asarray(model(images))
    logits = fastconv_dask.predict(model, da.from_array(images, chunks=3),
                                   batch_size=2).compute(scheduler=client.get)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_predict_accepts_uint8_and_numpy():
    images = np.random.default_rng(5).integers(0, 255, (9, 1, 4, 4),
                                               dtype=np.uint8)
    model = LinearModel()
    model.weight = model.weight[:1]
    lazy = fastconv_dask.predict(model, images, batch_size=4)
    np.testing.assert_allclose(
        lazy.compute(scheduler="sync"),
        images.astype(np.float32).mean(axis=(2, 3)) @ model.weight,
        rtol=1e-6)


# ------------------------------------------------------------------- errors

@pytest.mark.parametrize("call, error, message", [
    (lambda: fastconv_dask.filter2d([[1.0]], np.ones((1, 1))), TypeError,
     "darr must be a dask.array.Array"),
    (lambda: fastconv_dask.filter2d(da.ones((2, 2, 2, 2)), np.ones((1, 1))),
     ValueError, r"darr must be a non-empty \(H, W\) or \(H, W, C\)"),
    (lambda: fastconv_dask.filter2d(da.ones((4, 4)), np.ones((1, 1)),
                                    boundary="mirror"), ValueError,
     "boundary must be one of"),
    (lambda: fastconv_dask.filter2d(da.ones((4, 4)), np.ones((1, 1)),
                                    stride=0), ValueError,
     "stride must be positive"),
    (lambda: fastconv_dask.filter2d(da.ones((4, 4)), np.ones((5, 5)),
                                    padding="valid"), ValueError,
     "output would be empty"),
    (lambda: fastconv_dask.filter2d(da.ones((4, 4), dtype=complex),
                                    np.ones((1, 1))), TypeError,
     "real numeric dtype"),
    (lambda: fastconv_dask.predict(LinearModel(), da.ones((2, 3))),
     ValueError, r"images must be 4-D \(N, C, H, W\)"),
    (lambda: fastconv_dask.predict("model", da.ones((2, 3, 4, 4))),
     TypeError, "model must be callable"),
    (lambda: fastconv_dask.predict(lambda x: x, da.ones((2, 3, 4, 4))),
     ValueError, r"model must return \(n, classes\) logits"),
    (lambda: fastconv_dask.predict(LinearModel(), da.ones((2, 2, 4, 4)),
                                   batch_size=0), ValueError,
     "batch_size must be a positive int"),
])
def test_bad_arguments_fail_before_any_work(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_missing_dask_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError, match=r'pip install "\.\[dask\]"'):
        fastconv_dask.filter2d(np.ones((3, 3)), np.ones((1, 1)))


def test_masked_images_are_refused_before_any_work():
    image = np.ma.masked_array(np.ones((6, 6)), mask=np.eye(6, dtype=bool))
    with pytest.raises(TypeError, match="darr is a numpy.ma.MaskedArray"):
        fastconv_dask.filter2d(image, np.ones((3, 3)))
    with pytest.raises(TypeError, match="MaskedArray"):
        fastconv_dask.filter2d(da.from_array(image, chunks=3),
                               np.ones((3, 3)))


def test_a_stride_past_the_image_equals_in_memory():
    image = np.arange(80.0).reshape(8, 10)
    lazy = fastconv_dask.filter2d(da.from_array(image, chunks=(3, 4)),
                                  np.ones((3, 3)), stride=(2**31 - 1, 3))
    np.testing.assert_array_equal(lazy.compute(), filter2d(
        image, np.ones((3, 3)), stride=(2**31 - 1, 3)))
