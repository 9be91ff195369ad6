"""The written contract between the exact and the float twins (algebra/protocols.py):
both operators, both affine maps and both collapse backends satisfy the same protocol,
under the same names, and give the same answers on the same small cases."""
from __future__ import annotations

import numpy as np
import pytest
import sympy
import torch

from laurentnet.algebra import AffineMap as ExactAffineMap
from laurentnet.algebra import (ChannelIndexError, ConvOperator, LaurentnetError, Network,
                                TorchLayout, collapse_affine)
from laurentnet.algebra.collapse import AlgebraBackend
from laurentnet.algebra.memory import MemoryBudgetError
from laurentnet.algebra.protocols import (AFFINE_MAP_MEMBERS, COLLAPSE_BACKEND_MEMBERS,
                                          OPERATOR_MEMBERS, AffineMapLike, CollapseBackend,
                                          Operator)
from laurentnet.numeric import AffineMap as FloatAffineMap
from laurentnet.numeric import KernelOperator, NotAffineError, affine_numeric
from laurentnet.numeric.network_collapse import NumericBackend


def _weights(seed: int = 0):
    g = np.random.default_rng(seed)
    return g.integers(-3, 4, (2, 3, 3, 3)).astype(np.float64), g.integers(-2, 3, 2).astype(np.float64)


def _network() -> Network:
    w, b = _weights()
    net = Network(ndim=2, in_channels=3)
    net.set_output(net.conv(net.input, w, b, padding=1, padding_mode="zeros"))
    return net


@pytest.fixture()
def twins():
    w, b = _weights()
    return ConvOperator.from_weight(w, b, padding=1), KernelOperator.from_weight(w, b, padding=1)


@pytest.mark.parametrize("which", [0, 1])
def test_both_operators_satisfy_the_operator_protocol(twins, which):
    op = twins[which]
    assert isinstance(op, Operator)
    missing = [m for m in OPERATOR_MEMBERS if not hasattr(op, m)]
    assert not missing, f"{type(op).__name__} lacks {missing}"


def test_operator_twins_agree_member_by_member(twins):
    exact, float_ = twins
    for name in ("shape", "out_channels", "in_channels", "ndim", "kernel_size", "has_bias",
                 "stride", "upsample"):
        assert tuple(np.atleast_1d(getattr(exact, name))) == tuple(np.atleast_1d(getattr(float_, name))), name
    np.testing.assert_array_equal(np.array(exact.at_one(), dtype=float), float_.at_one().numpy())
    # the same layout type, field by field (numpy on the exact side, tensors on the float side)
    le, lf = exact.to_weight(), float_.to_weight()
    assert isinstance(le, TorchLayout) and isinstance(lf, TorchLayout)
    assert le.kwargs() == lf.kwargs() and le.transposed == lf.transposed
    np.testing.assert_array_equal(le.weight.astype(float), lf.weight.numpy())
    np.testing.assert_array_equal(le.bias.astype(float), lf.bias.numpy())
    # composition, sums, scaling, channel selection and adjoint stay twins
    pairs = [(exact @ exact.adjoint(), float_ @ float_.adjoint()),
             (exact + exact * 2, float_ + float_ * 2), (exact[1:], float_[1:]),
             (exact.columns([0, 2]), float_.columns([0, 2])), (exact.dilate(2), float_.dilate(2)),
             (-exact.linear_part(), -float_.linear_part())]
    for e, f in pairs:
        assert KernelOperator.from_algebra(e).allclose(f, rtol=0, atol=1e-12)


def test_no_bias_is_none_on_both_sides():
    w, _ = _weights()
    assert ConvOperator.from_weight(w).to_weight().bias is None
    assert KernelOperator.from_weight(w).to_weight().bias is None


@pytest.mark.parametrize("which", [0, 1])
def test_channel_selection_errors_are_the_same(twins, which):
    op = twins[which]
    with pytest.raises(ChannelIndexError, match="output channel 5 out of range"):
        op[5]
    with pytest.raises(ChannelIndexError, match="input channel -4 out of range"):
        op.columns([-4])
    with pytest.raises(TypeError):
        op["a"]
    with pytest.raises(ValueError, match="at least one"):
        op[2:2]


def test_both_affine_maps_satisfy_one_contract():
    net = _network()
    exact = collapse_affine(net, (3, 4, 5))
    float_ = affine_numeric(net, (3, 4, 5))
    for amap in (exact, float_):
        assert isinstance(amap, AffineMapLike)
        assert not [m for m in AFFINE_MAP_MEMBERS if not hasattr(amap, m)]
        assert amap.input_shape == (3, 4, 5) and amap.output_shape == (2, 4, 5)
        assert (amap.n_out, amap.n_in) == (40, 60)
    x = np.random.default_rng(1).integers(-4, 5, (2, 3, 4, 5))
    batch_exact = exact(x)                        # a batch on both sides
    batch_float = float_(torch.as_tensor(x, dtype=torch.float64))
    assert batch_exact.shape == tuple(batch_float.shape) == (2, 2, 4, 5)
    np.testing.assert_allclose(batch_exact.astype(float), batch_float.numpy(), rtol=0, atol=1e-12)
    one_exact, one_float = exact.apply(x[0]), float_.apply(torch.as_tensor(x[0], dtype=torch.float64))
    assert one_exact.shape == tuple(one_float.shape) == (2, 4, 5)
    np.testing.assert_array_equal(one_exact, batch_exact[0])
    for amap, single in ((exact, x[0]), (float_, torch.as_tensor(x[0], dtype=torch.float64))):
        with pytest.raises(ValueError, match="expected"):
            amap.apply(single[None])              # a batch where one input is expected
        with pytest.raises(ValueError, match="expected"):
            amap(single)                          # one input where a batch is expected
    assert isinstance(exact, ExactAffineMap) and isinstance(float_, FloatAffineMap)


@pytest.mark.parametrize("backend", ["algebra", "flint", "numeric"])
def test_both_collapse_backends_satisfy_the_protocol(backend):
    from laurentnet.algebra.flint_backend import FlintBackend
    net = _network()
    b = {"algebra": AlgebraBackend, "flint": FlintBackend}[backend](net) \
        if backend != "numeric" else NumericBackend(net, torch.float64)
    assert isinstance(b, CollapseBackend)
    assert not [m for m in COLLAPSE_BACKEND_MEMBERS if not callable(getattr(b, m, None))]


def test_padding_is_spelled_like_pytorch_on_both_sides():
    from laurentnet.numeric import OperatorEvaluator, estimate_costs
    op = KernelOperator.from_weight(_weights()[0], padding=1)
    assert op.output_shape((5, 5), "zeros") == (5, 5)
    estimate_costs(op, (1, 3, 5, 5), padding="zeros")
    OperatorEvaluator(op, (1, 3, 5, 5), padding="zeros")
    for bad in ("zero", "same"):
        with pytest.raises(ValueError, match="'zeros' or 'circular'"):
            op.output_shape((5, 5), bad)
    net = Network(ndim=2, in_channels=3)
    with pytest.raises(ValueError):
        net.conv(net.input, _weights()[0], padding_mode="zero")


def test_one_error_base_class():
    for error in (MemoryBudgetError, NotAffineError, ChannelIndexError):
        assert issubclass(error, LaurentnetError)
    assert issubclass(MemoryBudgetError, MemoryError) and issubclass(NotAffineError, ValueError)
    assert issubclass(ChannelIndexError, IndexError) and issubclass(ChannelIndexError, ValueError)


def test_symbolic_weights_stay_exact_in_the_contract():
    op = ConvOperator.symbolic("a", 1, 1, 3, padding=1)
    assert isinstance(op, Operator)
    assert op.to_weight(dtype=object).weight[0, 0, 0] == sympy.Symbol("a_000")


def test_both_polyphase_operators_satisfy_one_contract():
    """The multirate twins: the same members, and the same operator from the same layer."""
    from laurentnet.algebra import ConvOperator
    from laurentnet.algebra.polyphase import PolyphaseOperator as ExactPolyphase
    from laurentnet.algebra.protocols import POLYPHASE_MEMBERS, PolyphaseOperatorLike
    from laurentnet.numeric.polyphase import PolyphaseOperator as FloatPolyphase
    w = np.arange(1, 13, dtype=np.float64).reshape(2, 2, 3) / 4
    exact = ExactPolyphase.from_conv(ConvOperator.from_weight(w, [1, -2], stride=2))
    float_ = FloatPolyphase.from_conv(KernelOperator.from_weight(w, [1, -2], stride=2))
    for op in (exact, float_):
        assert isinstance(op, PolyphaseOperatorLike)
        missing = [m for m in POLYPHASE_MEMBERS if not hasattr(op, m)]
        assert not missing, f"{type(op).__name__} lacks {missing}"
    assert (exact.in_period, exact.out_period) == (float_.in_period, float_.out_period)
    assert KernelOperator.from_algebra(exact.block).allclose(float_.block, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(exact.bias_mask(), float_.bias_mask())
