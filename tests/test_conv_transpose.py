"""conv_transpose2d and conv_transpose2d_backward on every CPU backend.

Each backend against the naive reference, the reference against PyTorch
(forward and autograd), gradients by central finite differences in float64,
the adjoint identity with conv2d, and the bad-input errors.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv

# (id, x shape, weight shape (C_in, C_out // groups, R, S), keyword
# arguments, with bias)
CASES = [
    ("plain", (2, 3, 4, 5), (3, 2, 3, 3), {}, True),
    ("stride2_pad1_outpad1", (2, 2, 4, 4), (2, 3, 3, 3),
     dict(stride=2, padding=1, output_padding=1), True),
    ("rect_everything", (1, 4, 3, 4), (4, 1, 2, 3),
     dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2,
          dilation=(1, 2)), False),
    # output_padding >= stride (allowed as it is < dilation): rows past
    # every window, zero plus the bias
    ("outpad_past_windows", (2, 2, 3, 3), (2, 2, 1, 1),
     dict(dilation=3, output_padding=2), True),
    ("outpad_dilated_pad", (1, 2, 3, 3), (2, 2, 3, 3),
     dict(dilation=3, output_padding=2, padding=1), True),
    ("depthwise", (2, 3, 4, 4), (3, 1, 3, 3), dict(groups=3, stride=2), True),
    ("pointwise", (2, 4, 3, 3), (4, 2, 1, 1), {}, False),
    ("big_padding", (1, 2, 5, 5), (2, 2, 3, 3), dict(padding=2), True),
    ("asymmetric_padding", (1, 2, 4, 3), (2, 3, 3, 2),
     dict(padding=((1, 0), (0, 1)), stride=2), True),
]
IDS = [case[0] for case in CASES]
BY_ID = {case[0]: case for case in CASES}


def inputs(case_id, dtype, random_array):
    _, x_shape, weight_shape, kwargs, with_bias = BY_ID[case_id]
    x = random_array(x_shape, dtype, "tconv x", case_id)
    weight = random_array(weight_shape, dtype, "tconv w", case_id)
    out_channels = weight_shape[1] * kwargs.get("groups", 1)
    bias = (random_array(out_channels, dtype, "tconv b", case_id)
            if with_bias else None)
    return x, weight, bias, kwargs


def reference(case_id, dtype, random_array, naive_cache):
    x, weight, bias, kwargs = inputs(case_id, dtype, random_array)

    def compute():
        y = fastconv.conv_transpose2d(x, weight, bias, **kwargs,
                                      backend="naive")
        grad_output = random_array(y.shape, dtype, "tconv g", case_id)
        grads = fastconv.conv_transpose2d_backward(grad_output, x, weight,
                                                   **kwargs, backend="naive")
        return y, grad_output, grads

    return naive_cache(("conv_transpose2d", case_id, dtype.name), compute)


def _torch_padding(padding):
    """PyTorch takes symmetric padding only: asymmetric cases crop the
    output of the unpadded transposed convolution instead."""
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        return 0, padding
    return padding, None


@pytest.mark.parametrize("case_id", IDS)
def test_matches_naive(case_id, dtype, backend, random_array, naive_cache,
                       assert_close):
    x, weight, bias, kwargs = inputs(case_id, dtype, random_array)
    y_ref, grad_output, grads_ref = reference(case_id, dtype, random_array,
                                              naive_cache)
    y = fastconv.conv_transpose2d(x, weight, bias, **kwargs, backend=backend)
    assert y.dtype == dtype
    assert_close(y, y_ref, dtype, what="conv_transpose2d")
    grads = fastconv.conv_transpose2d_backward(grad_output, x, weight,
                                               **kwargs, backend=backend)
    for name, grad, want in zip(("grad_input", "grad_weight", "grad_bias"),
                                grads, grads_ref):
        assert grad.dtype == dtype, name
        assert_close(grad, want, dtype, what=name)
    skipped = fastconv.conv_transpose2d_backward(
        grad_output, x, weight, **kwargs, need_input_grad=False,
        backend=backend)
    assert skipped[0] is None
    assert_close(skipped[1], grads_ref[1], dtype, what="grad_weight alone")


@pytest.mark.parametrize("case_id", IDS)
def test_naive_matches_torch(case_id, dtype, torch, random_array,
                             naive_cache, assert_close):
    x, weight, bias, kwargs = inputs(case_id, dtype, random_array)
    y, grad_output, (grad_x, grad_w, grad_b) = reference(
        case_id, dtype, random_array, naive_cache)
    kwargs = dict(kwargs)
    kwargs["padding"], crop = _torch_padding(kwargs.get("padding", 0))
    x_t = torch.tensor(x, requires_grad=True)
    w_t = torch.tensor(weight, requires_grad=True)
    b_t = None if bias is None else torch.tensor(bias, requires_grad=True)
    y_t = torch.nn.functional.conv_transpose2d(x_t, w_t, b_t, **kwargs)
    if crop is not None:
        (top, bottom), (left, right) = crop
        y_t = y_t[:, :, top:y_t.shape[2] - bottom, left:y_t.shape[3] - right]
    y_t.backward(torch.tensor(grad_output))
    assert_close(y, y_t.detach().numpy(), dtype, what="y vs torch")
    assert_close(grad_x, x_t.grad.numpy(), dtype, what="grad_input")
    assert_close(grad_w, w_t.grad.numpy(), dtype, what="grad_weight")
    if bias is not None:
        assert_close(grad_b, b_t.grad.numpy(), dtype, what="grad_bias")


def test_is_the_input_gradient_of_conv2d(compiled_backend, random_array,
                                         assert_close):
    """<conv2d(u, w), v> = <u, conv_transpose2d(v, w)> (the adjoint)."""
    weight = random_array((3, 2, 3, 2), np.float64, "adjoint w")
    u = random_array((2, 2, 7, 6), np.float64, "adjoint u")
    options = dict(stride=2, padding=1, dilation=(1, 2))
    y = fastconv.conv2d(u, weight, **options, backend=compiled_backend)
    v = random_array(y.shape, np.float64, "adjoint v")
    shortest = fastconv.conv_transpose2d(v, weight, **options).shape
    output_padding = (u.shape[2] - shortest[2], u.shape[3] - shortest[3])
    transposed = fastconv.conv_transpose2d(
        v, weight, **options, output_padding=output_padding,
        backend=compiled_backend)
    assert transposed.shape == u.shape
    assert_close(np.sum(y * v), np.sum(u * transposed), rtol=1e-12)


def test_gradients_by_finite_differences(compiled_backend, random_array,
                                         finite_difference, assert_close):
    x = random_array((1, 2, 3, 3), np.float64, "fd tconv x")
    weight = random_array((2, 2, 2, 3), np.float64, "fd tconv w")
    bias = random_array(2, np.float64, "fd tconv b")
    options = dict(stride=(2, 1), padding=(0, 1), output_padding=(1, 0))
    y = fastconv.conv_transpose2d(x, weight, bias, **options,
                                  backend=compiled_backend)
    grad_output = random_array(y.shape, np.float64, "fd tconv g")

    def loss(x_value, weight_value, bias_value):
        return float(np.sum(fastconv.conv_transpose2d(
            x_value, weight_value, bias_value, **options,
            backend=compiled_backend) * grad_output))

    grad_x, grad_w, grad_b = fastconv.conv_transpose2d_backward(
        grad_output, x, weight, **options, backend=compiled_backend)
    assert_close(grad_x, finite_difference(
        lambda v: loss(v, weight, bias), x), rtol=1e-7)
    assert_close(grad_w, finite_difference(
        lambda v: loss(x, v, bias), weight), rtol=1e-7)
    assert_close(grad_b, finite_difference(
        lambda v: loss(x, weight, v), bias), rtol=1e-7)


def test_conv2d_backward_need_weight_grad(backend, random_array,
                                          assert_close):
    x = random_array((2, 2, 5, 5), np.float64, "nwg x")
    weight = random_array((3, 2, 3, 3), np.float64, "nwg w")
    grad_output = random_array((2, 3, 3, 3), np.float64, "nwg g")
    full = fastconv.conv2d_backward(grad_output, x, weight, backend=backend)
    grad_input, grad_weight, grad_bias = fastconv.conv2d_backward(
        grad_output, x, weight, need_weight_grad=False, backend=backend)
    assert grad_weight is None and grad_bias is None
    assert_close(grad_input, full[0])


# ------------------------------------------------------------ bad input

X = np.zeros((1, 2, 3, 3))
W = np.zeros((2, 3, 3, 3))


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: fastconv.conv_transpose2d(X, W, stride=2, output_padding=2),
     ValueError, r"output_padding must be smaller than stride or dilation"),
    (lambda: fastconv.conv_transpose2d(X, W, output_padding=1), ValueError,
     r"output_padding"),
    (lambda: fastconv.conv_transpose2d(X, W, output_padding=-1), ValueError,
     r"output_padding"),
    (lambda: fastconv.conv_transpose2d(X, np.zeros((3, 3, 3, 3))),
     ValueError, r"weight must be \(C_in, C_out // groups, R, S\)"),
    (lambda: fastconv.conv_transpose2d(X, W, groups=3), ValueError,
     r"groups"),
    (lambda: fastconv.conv_transpose2d(X, W, padding="same"), TypeError,
     r"padding"),
    (lambda: fastconv.conv_transpose2d(X, W, padding=3), ValueError,
     r"empty|cuts away"),
    (lambda: fastconv.conv_transpose2d(X, W, bias=np.zeros(2)), ValueError,
     r"bias must have length C_out = 3"),
    (lambda: fastconv.conv_transpose2d(X.astype(np.float32), W), TypeError,
     r"dtype"),
    (lambda: fastconv.conv_transpose2d(X.tolist(), W), TypeError,
     r"numpy.ndarray"),
    (lambda: fastconv.conv_transpose2d(X, W, stride=2**40), ValueError,
     r"stride.*2\*\*31"),
    (lambda: fastconv.conv_transpose2d(X, W, stride=2**30), ValueError,
     r"2\*\*31"),
    (lambda: fastconv.conv_transpose2d_backward(np.zeros((1, 3, 4, 4)), X,
                                                W), ValueError,
     r"grad_output must have shape \(1, 3, 5, 5\)"),
])
def test_bad_input(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def _stacking_calls(monkeypatch):
    """Record what cython's _stacked_phases decides on each call (whether
    one stacked convolution ran)."""
    from fastconv.backends import cython_cpu

    if "cython" not in fastconv.available_backends():
        pytest.skip("cython backend unavailable")
    taken = []
    check = cython_cpu._stacked_phases

    def recorded(*args):
        result = check(*args)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(cython_cpu, "_stacked_phases", recorded)
    return taken


@pytest.mark.parametrize("case", [
    # (x shape, weight shape, stride, padding, output_padding, groups,
    # merged)
    ((2, 6, 5, 7), (6, 4, 2, 2), 2, 0, 0, 1, True),
    ((2, 6, 5, 7), (6, 4, 3, 3), 3, 0, 0, 1, True),
    ((2, 6, 5, 7), (6, 4, 2, 3), (2, 3), 0, 0, 1, True),
    ((3, 16, 4, 4), (16, 32, 2, 2), 2, 0, 0, 1, True),
    # (output_padding: the rows and columns no tap reaches are added
    # around the stacked convolution's result)
    ((2, 6, 5, 7), (6, 4, 2, 2), 2, 0, 1, 1, True),
    # a kernel a whole multiple of its stride: every phase has 2x2 taps
    # (DCGAN's 4x4/2), the phases' windows offset by their paddings (3
    # output channels: not whole chunks of the tile's filters on any build,
    # where _merged_phases, tried first, would take the call)
    ((2, 6, 5, 7), (6, 3, 4, 4), 2, 1, 0, 1, True),
    ((2, 6, 5, 7), (6, 3, 4, 4), 2, 0, 1, 1, True),
    ((2, 6, 5, 7), (6, 3, 4, 4), 2, 1, 1, 1, True),
    ((3, 5, 6, 4), (5, 3, 6, 4), (3, 2), (2, 1), (1, 0), 1, True),
    ((2, 6, 5, 7), (6, 2, 2, 2), 2, 0, 0, 2, False),   # groups
    ((2, 6, 5, 7), (6, 4, 3, 3), 2, 1, 1, 1, False),   # 2x2, 2x1, 1x2, 1x1
])
def test_kernel_a_multiple_of_its_stride_is_one_stacked_convolution(
        monkeypatch, case):
    """cython: where every phase of a strided input gradient has as many
    taps as every other (a kernel a whole multiple of its stride), one
    convolution onto the stacked phases' channels runs instead of one per
    phase; it must agree with the naive reference, and run exactly where
    it applies."""
    x_shape, w_shape, stride, padding, output_padding, groups, merged = case
    taken = _stacking_calls(monkeypatch)
    rng = np.random.default_rng(11)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    arguments = dict(stride=stride, padding=padding,
                     output_padding=output_padding, groups=groups)
    y = fastconv.conv_transpose2d(x, w, backend="cython", **arguments)
    expected = fastconv.conv_transpose2d(
        x.astype(np.float64), w.astype(np.float64), backend="naive",
        **arguments)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert taken == [merged] if merged else not any(taken)


def test_uneven_phase_planes_are_windows_of_one_convolution(monkeypatch):
    """conv2d's input gradient with an input one past a whole number of
    strides: the phases' planes differ in size, each a window of the one
    stacked convolution's output (a row and a column more than some
    phases need)."""
    taken = _stacking_calls(monkeypatch)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 6, 11, 15)).astype(np.float32)
    w = rng.standard_normal((4, 6, 2, 2)).astype(np.float32)
    g = rng.standard_normal((2, 4, 5, 7)).astype(np.float32)
    grad_input, _, _ = fastconv.conv2d_backward(g, x, w, stride=2,
                                                backend="cython")
    expected, _, _ = fastconv.conv2d_backward(
        g.astype(np.float64), x.astype(np.float64), w.astype(np.float64),
        stride=2, backend="naive")
    np.testing.assert_allclose(grad_input, expected, rtol=1e-5, atol=1e-5)
    assert taken == [True]


def test_phase_windows_are_checked_against_the_stacked_planes():
    """The interleave reads each phase's window of the stacked planes; an
    offset that would leave them is refused, not read past the end."""
    if "cython" not in fastconv.available_backends():
        pytest.skip("cython backend unavailable")
    from fastconv.backends._cython import direct

    stacked = np.zeros((1, 4 * 2, 3, 3), np.float32)
    out = np.empty((1, 2, 4, 4), np.float32)
    fine = np.array([0, 1, 1, 0], np.intp)
    direct.interleave_phase_channels(stacked, out, 2, 2, fine, fine, 1)
    with pytest.raises(ValueError, match="window"):
        direct.interleave_phase_channels(
            stacked, out, 2, 2, np.array([0, 2, 0, 0], np.intp), fine, 1)
    with pytest.raises(ValueError, match="shapes"):
        direct.interleave_phase_channels(stacked, out, 2, 2, fine[:3],
                                         fine, 1)
