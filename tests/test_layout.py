"""PyTorch weight layouts <-> operators, bit for bit, and exact float -> rational conversion."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import sympy
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from sympy.polys.domains import QQ

from laurentnet.algebra import ConvOperator, TorchLayout, apply_operator, exact_rational, to_domain
from strategies import (ConvSpec, assert_exact, budget, conv_specs, frac, int_arrays,
                        normal_arrays, torch_conv, torch_conv_transpose)


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view({8: np.uint64, 4: np.uint32, 2: np.uint16}[a.dtype.itemsize])


def _assert_bitwise(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    np.testing.assert_array_equal(_bits(got), _bits(expected))


def _nonzero_finite(width: int):
    """Any finite nonzero float of the given width (subnormals and extremes included)."""
    return st.floats(allow_nan=False, allow_infinity=False, width=width).filter(lambda v: v != 0)


# -- exact rationals ------------------------------------------------------------------------
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_exact_rational_float64_equals_fraction(value):
    r = exact_rational(value)
    assert isinstance(r, sympy.Rational)
    assert Fraction(int(r.p), int(r.q)) == Fraction(value)
    assert float(Fraction(int(r.p), int(r.q))) == value


@given(st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_exact_rational_float32_equals_fraction(value):
    v32 = np.float32(value)
    r = exact_rational(v32)
    assert Fraction(int(r.p), int(r.q)) == Fraction(float(v32))
    assert np.float32(Fraction(int(r.p), int(r.q))) == v32


@given(st.floats(allow_nan=False, allow_infinity=False, width=16))
def test_exact_rational_float16_equals_fraction(value):
    v16 = np.float16(value)
    r = exact_rational(v16)
    assert Fraction(int(r.p), int(r.q)) == Fraction(float(v16))


def test_exact_rational_known_values():
    assert exact_rational(0.1) == sympy.Rational(3602879701896397, 2**55)
    assert exact_rational(0.1) != sympy.Rational(1, 10)
    assert exact_rational(np.float32(0.1)) == sympy.Rational(13421773, 2**27)
    assert exact_rational(5e-324) == sympy.Rational(1, 2**1074)
    assert exact_rational(-0.0) == 0
    assert exact_rational(7) == 7 and exact_rational(np.int64(-3)) == -3
    assert exact_rational(True) == 1
    assert exact_rational(Fraction(2, 6)) == sympy.Rational(1, 3)
    assert exact_rational(sympy.Rational(5, 7)) == sympy.Rational(5, 7)
    assert to_domain(0.1, QQ) == QQ(3602879701896397, 2**55)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"),
                                 np.float32("nan"), np.float64("inf"), np.float16("-inf")])
def test_exact_rational_rejects_non_finite(bad):
    with pytest.raises(ValueError):
        exact_rational(bad)


def test_exact_rational_rejects_non_numbers():
    with pytest.raises(TypeError):
        exact_rational("0.5")
    with pytest.raises(TypeError):
        exact_rational(sympy.Symbol("w"))


# -- from_weight coefficients -------------------------------------------------------------
@settings(max_examples=budget(20))
@given(data=st.data(), spec=conv_specs(1))
def test_from_weight_coefficients_follow_the_convention(data, spec):
    """``K_{o,c}(z) = sum_a w[o, c', a] z^(p - d a)`` with exactly the float's rational value;
    grouped weights land in the diagonal blocks."""
    w = data.draw(arrays(np.float64, spec.weight_shape, elements=_nonzero_finite(64)))
    op = ConvOperator.from_weight(w, **spec.kwargs())
    (p,), (d,), g = spec.padding, spec.dilation, spec.groups
    opg, ipg = spec.cout // g, spec.cin // g
    for o in range(spec.cout):
        for c in range(spec.cin):
            entry = op.matrix[o][c]
            if o // opg != c // ipg:
                assert entry.is_zero
                continue
            expected = {}
            for a in range(spec.kernel[0]):
                e = p - d * a
                expected[(e,)] = expected.get((e,), Fraction(0)) + Fraction(w[o, c % ipg, a])
            got = {e: frac(QQ.to_sympy(v)) for e, v in entry.to_dict().items()}
            assert got == {e: v for e, v in expected.items() if v != 0}


# -- round trips ----------------------------------------------------------------------------
@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("width", [64, 32])
@pytest.mark.parametrize("transposed", [False, True])
def test_layout_round_trip_bit_for_bit(ndim, width, transposed):
    dtype = np.float64 if width == 64 else np.float32

    @settings(max_examples=budget({1: 25, 2: 15, 3: 8}[ndim]))
    @given(data=st.data(), spec=conv_specs(ndim, max_dilation=3, max_padding=3),
           with_bias=st.booleans(), as_tensor=st.booleans())
    def check(data, spec, with_bias, as_tensor):
        shape = spec.transposed_weight_shape if transposed else spec.weight_shape
        w = data.draw(arrays(dtype, shape, elements=_nonzero_finite(width)), label="w")
        b = data.draw(arrays(dtype, (spec.cout,), elements=_nonzero_finite(width)),
                      label="b") if with_bias else None
        src_w = torch.from_numpy(w) if as_tensor else w
        src_b = (torch.from_numpy(b) if as_tensor else b) if b is not None else None
        op = ConvOperator.from_weight(src_w, src_b, transposed=transposed, **spec.kwargs())
        layout = op.to_weight(groups=spec.groups, dilation=spec.dilation, dtype=dtype,
                              transposed=transposed)
        assert isinstance(layout, TorchLayout)
        if any(s > 1 for s in spec.stride):  # the layout kind is inferred from the rates
            inferred = op.to_weight(groups=spec.groups, dilation=spec.dilation, dtype=dtype)
            assert inferred.transposed is transposed
            _assert_bitwise(inferred.weight, w)
        assert layout.transposed is transposed
        assert layout.stride == spec.stride
        assert layout.padding == spec.padding
        assert layout.dilation == spec.dilation
        assert layout.groups == spec.groups
        _assert_bitwise(layout.weight, w)
        if b is None:
            assert layout.bias is None
        else:
            _assert_bitwise(layout.bias, b)
        assert layout.kwargs() == spec.kwargs()
        # and the exact layout holds the same rationals
        exact = op.to_weight(groups=spec.groups, dilation=spec.dilation, dtype=object,
                             transposed=transposed)
        assert exact.weight.shape == w.shape
        assert all(frac(e) == Fraction(float(v)) for e, v in zip(exact.weight.flat, w.flat))
    check()


@settings(max_examples=budget(20))
@given(data=st.data(), spec=conv_specs(2, groups=False))
def test_round_trip_with_interior_zeros_keeps_the_shape(data, spec):
    """Zeros inside the kernel are fine as long as the support box is the kernel box."""
    w = data.draw(int_arrays(spec.weight_shape))
    # make the four faces of the kernel box nonzero in channel (0, 0)
    w[0, 0, 0, 0] = w[0, 0, -1, -1] = 1.0
    op = ConvOperator.from_weight(w, **spec.kwargs())
    layout = op.to_weight(dilation=spec.dilation)
    _assert_bitwise(layout.weight, w)
    assert layout.padding == spec.padding and layout.bias is None


def test_to_weight_normalises_shifted_kernels():
    """A kernel that only looks ahead (all exponents < 0) gets the smallest padding >= 0 and
    a weight with leading zero taps; the layout reproduces the same convolution."""
    rng = np.random.default_rng(1)
    w = rng.integers(-3, 4, (2, 1, 3)).astype(float)
    w[:, 0, 0] = w[:, 0, -1] = [1.0, 2.0]
    op = ConvOperator.from_weight(w, padding=1)
    shifted = ConvOperator(op.ring, [[e.shift(-3) for e in row] for row in op.matrix])
    layout = shifted.to_weight()
    assert layout.padding == (0,)
    spec = ConvSpec(1, 1, 2, 1, (layout.weight.shape[-1],), (1,), (1,), (0,), (12,))
    x = rng.integers(-3, 4, (1, 12)).astype(float)
    expected = torch_conv(x, layout.weight, None, spec)
    assert_exact(apply_operator(shifted, x, expected.shape[1:]), expected)
    # exponents 1, 0, -1 shifted to -2, -3, -4: taps a = 2, 3, 4 of a padding-0 kernel
    assert layout.weight.shape == (2, 1, 5)
    assert np.array_equal(layout.weight[..., :2], np.zeros((2, 1, 2)))
    assert np.array_equal(layout.weight[..., 2:], w)


@settings(max_examples=budget(15))
@given(data=st.data(), spec=conv_specs(1))
def test_layout_reproduces_torch_output(data, spec):
    """Running torch with the returned layout reproduces torch with the original arguments,
    also when asking for a coarser structure (groups=1, dilation=1)."""
    w = data.draw(normal_arrays(spec.weight_shape))
    b = data.draw(normal_arrays((spec.cout,)))
    x = data.draw(normal_arrays((spec.cin, *spec.n)))
    op = ConvOperator.from_weight(w, b, **spec.kwargs())
    layout = op.to_weight()  # groups=1, dilation=1: dense kernel with zero taps
    assert layout.weight.shape[:2] == (spec.cout, spec.cin)
    y = torch.nn.functional.conv1d(torch.from_numpy(x)[None], torch.from_numpy(layout.weight),
                                   torch.from_numpy(layout.bias), **layout.kwargs())[0].numpy()
    expected = torch_conv(x, w, b, spec)
    np.testing.assert_array_equal(y.shape, expected.shape)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_transposed_layout_reproduces_conv_transpose():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 3, 3, 2))  # (C_in, C_out/g, k1, k2), groups=2 -> C_out=6
    b = rng.standard_normal(6)
    kwargs = dict(stride=(2, 3), padding=(1, 0), dilation=(1, 2), groups=2)
    op = ConvOperator.from_weight(w, b, transposed=True, **kwargs)
    layout = op.to_weight(groups=2, dilation=(1, 2))
    assert layout.transposed and layout.weight.shape == w.shape
    x = rng.standard_normal((4, 3, 4))
    y = torch_conv_transpose(x, layout.weight, layout.bias, **layout.kwargs())
    np.testing.assert_array_equal(y, torch_conv_transpose(x, w, b, **kwargs))


def test_zero_bias_and_dtype_options():
    w = np.array([[[0.5, -1.25]]])
    op = ConvOperator.from_weight(w, np.zeros(1))
    assert op.to_weight().bias is None  # an all-zero bias is no bias
    assert ConvOperator.from_weight(w, np.array([0.75])).to_weight(dtype=np.float32).bias.dtype \
        == np.float32
    exact = op.to_weight(dtype=object)
    assert exact.weight[0, 0, 0] == sympy.Rational(1, 2)
    assert exact.weight[0, 0, 1] == sympy.Rational(-5, 4)


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["weight", "bias"])
def test_non_finite_weights_raise(bad, where):
    w = np.ones((2, 1, 3))
    b = np.ones(2)
    if where == "weight":
        w[1, 0, 2] = bad
    else:
        b[1] = bad
    with pytest.raises(ValueError, match=where):
        ConvOperator.from_weight(w, b)
    with pytest.raises(ValueError, match=where):
        ConvOperator.from_weight(torch.from_numpy(w).float(), torch.from_numpy(b).float())


def test_bad_layout_arguments_raise():
    w = np.ones((2, 2, 3))
    with pytest.raises(ValueError, match="bias"):
        ConvOperator.from_weight(w, np.ones(3))
    with pytest.raises(ValueError, match="bias"):
        ConvOperator.from_weight(w, np.ones((2, 1)))
    with pytest.raises(ValueError, match="axes"):
        ConvOperator.from_weight(np.ones((2, 2)))
    with pytest.raises(ValueError, match="groups"):
        ConvOperator.from_weight(np.ones((3, 1, 3)), groups=2)
    with pytest.raises(ValueError, match="padding"):
        ConvOperator.from_weight(w, padding="full")
    with pytest.raises(ValueError, match="same"):
        ConvOperator.from_weight(w, padding="same", stride=2)
    with pytest.raises(ValueError):
        ConvOperator.from_weight(w, padding=-1)
    with pytest.raises(ValueError):
        ConvOperator.from_weight(w, stride=0)
    with pytest.raises(ValueError, match="values"):
        ConvOperator.from_weight(w, stride=(1, 2))


def test_to_weight_refuses_structure_the_kernel_lacks():
    rng = np.random.default_rng(3)
    dense = ConvOperator.from_weight(rng.integers(1, 4, (4, 4, 3)).astype(float))
    with pytest.raises(ValueError, match="group"):
        dense.to_weight(groups=2)
    with pytest.raises(ValueError, match="groups"):
        dense.to_weight(groups=3)
    with pytest.raises(ValueError, match="lattice"):
        dense.to_weight(dilation=2)
    strided_up = ConvOperator.from_weight(np.ones((1, 1, 2)), stride=2) @ \
        ConvOperator.from_weight(np.ones((1, 1, 2)), stride=3, transposed=True)
    with pytest.raises(ValueError):
        strided_up.to_weight()


# -- exact rationals back to floats: correctly rounded ------------------------------------
def _one_tap(value: Fraction) -> ConvOperator:
    from laurentnet.algebra import laurent_ring
    R, _ = laurent_ring("z", QQ)
    return ConvOperator(R, [[R.from_dict({(0,): sympy.Rational(value.numerator,
                                                               value.denominator)})]])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_to_weight_rounds_near_midpoints_correctly(dtype):
    """A rational just above/below the midpoint of two adjacent float32 (float16) values
    must round to the nearer one, however close it is (no double rounding via float64)."""
    info = np.finfo(dtype)
    width = 32 if dtype is np.float32 else 16

    @settings(max_examples=budget(40))
    @given(x=st.floats(0, float(info.max), width=width, exclude_max=True),
           sign=st.sampled_from([-1, 1]), k=st.integers(1, 90), negative=st.booleans())
    def check(x, sign, k, negative):
        lo = dtype(x)
        hi = np.nextafter(lo, dtype(np.inf))
        assert np.isfinite(hi)
        mid = (Fraction(float(lo)) + Fraction(float(hi))) / 2
        ulp = Fraction(float(hi)) - Fraction(float(lo))
        value = mid + sign * ulp / 2**k
        expected = hi if sign > 0 else lo
        if negative:
            value, expected = -value, -expected
        got = _one_tap(value).to_weight(dtype=dtype).weight.reshape(())[()]
        assert got.dtype == np.dtype(dtype)
        assert _bits(np.array(got)) == _bits(np.array(expected)), (value, got, expected)
    check()


def test_to_weight_float32_double_rounding_example():
    value = 1 + Fraction(1, 2**24) + Fraction(1, 2**54)  # just above the midpoint of 1, 1+2^-23
    got = _one_tap(value).to_weight(dtype=np.float32).weight.item()
    assert got == 1 + 2.0**-23
    assert _one_tap(value).to_weight(dtype=np.float64).weight.item() == float(value)
    exact_mid = 1 + Fraction(1, 2**24)  # an exact tie goes to even
    assert _one_tap(exact_mid).to_weight(dtype=np.float32).weight.item() == 1.0


@settings(max_examples=budget(30))
@given(st.fractions(max_denominator=10**12).filter(lambda f: abs(f) < 6e4))
def test_to_weight_rounds_arbitrary_rationals_to_nearest(value):
    for dtype in (np.float64, np.float32, np.float16):
        got = _one_tap(value).to_weight(dtype=dtype).weight.item() if value else 0.0
        c = dtype(float(value))
        candidates = [np.nextafter(c, dtype(-np.inf)), c, np.nextafter(c, dtype(np.inf))]
        best = min(abs(Fraction(float(v)) - value) for v in candidates)
        assert abs(Fraction(float(got)) - value) == best, (dtype, value, got)
