"""Average pooling as PyTorch has it: ``ceil_mode``, ``count_include_pad``,
``divisor_override`` and adaptive pooling with non-uniform windows, through every path.

The oracle is torch itself in float64: impulse responses of ``F.avg_pool{1,2}d`` /
``F.adaptive_avg_pool{1,2}d`` give every weight ``1 / D`` (so the exact divisor ``D`` is
read back from torch, not from the code under test).  Against it: the exact affine map
(``collapse_affine``, over ``QQ``), the exact layer-by-layer evaluation
(``forward_exact``), the float twins (``network_forward``, ``affine_numeric``), the exact
and float collapses on their regions (soundness by exact evaluation and by the prover;
tightness for generic weights against the positions where the operator and the affine map
agree on random integer inputs), and the bridge (``convert`` and ``laurentnet collapse``).
"""
from __future__ import annotations

import copy
import json
from fractions import Fraction

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from laurentnet.algebra import (InvalidInputError, InvalidTypeError, Network, collapse,
                                collapse_affine, prove_collapse)
from laurentnet.algebra.collapse import is_periodic_network
from laurentnet.algebra.exact_forward import forward_exact
from laurentnet.numeric import collapse_numeric, network_forward
from laurentnet.numeric.network_collapse import affine_numeric

torch.set_num_threads(min(2, torch.get_num_threads()))


# -- torch, the oracle ------------------------------------------------------------------
def torch_pool(x: torch.Tensor, pool: dict) -> torch.Tensor:
    """torch's own pooling of ``x`` (``(B, C, *n)``, float64) for a pool description."""
    ndim = x.ndim - 2
    if pool["kind"] == "adaptive":
        return (F.adaptive_avg_pool1d if ndim == 1 else F.adaptive_avg_pool2d)(x, pool["size"])
    args = (pool["kernel"], pool["stride"], pool["padding"], pool["ceil_mode"],
            pool["count_include_pad"])
    if ndim == 2:
        return F.avg_pool2d(x, *args, divisor_override=pool["divisor_override"])
    if pool["divisor_override"] is None:
        return F.avg_pool1d(x, *args)
    # F.avg_pool1d has no divisor_override: torch's 2-D pool of a height-1 image
    k, s, p = args[:3]
    return F.avg_pool2d(x[:, :, None], (1, k), (1, s), (0, p), args[3], args[4],
                        divisor_override=pool["divisor_override"])[:, :, 0]


def torch_matrix(pool: dict, spatial: tuple[int, ...]) -> np.ndarray:
    """``(n_out, n_in)``: torch's pool of every unit impulse (one channel)."""
    n_in = int(np.prod(spatial))
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, *spatial)
    return torch_pool(basis, pool).reshape(n_in, -1).T.numpy()


def exact_from_torch(matrix: np.ndarray) -> list[list[Fraction]]:
    """Each nonzero float ``1 / D`` of torch's matrix as the exact fraction ``1 / D``."""
    out = []
    for row in matrix:
        entries = []
        for v in row:
            if v == 0:
                entries.append(Fraction(0))
            else:
                d = round(1 / v)
                assert abs(v - 1 / d) < 1e-15  # every weight is one over an integer
                entries.append(Fraction(1, d))
        out.append(entries)
    return out


def add_pool(net: Network, x, pool: dict):
    if pool["kind"] == "adaptive":
        return net.adaptive_avg_pool(x, pool["size"])
    return net.avg_pool(x, pool["kernel"], pool["stride"], pool["padding"],
                        pool["count_include_pad"], ceil_mode=pool["ceil_mode"],
                        divisor_override=pool["divisor_override"])


def pool_only(pool: dict, ndim: int, channels: int = 1) -> Network:
    net = Network(ndim, channels)
    net.set_output(add_pool(net, net.input, pool))
    return net


# -- hypothesis strategies: a pool that torch accepts on the drawn input ----------------
@st.composite
def avg_pools(draw, ndim: int):
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    spatial = tuple(draw(st.integers(max(k - 2 * p, 1), k + 6))
                    for k, p in zip(kernel, padding))
    pool = dict(kind="avg", kernel=kernel, stride=stride, padding=padding,
                ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()),
                divisor_override=draw(st.one_of(st.none(), st.integers(1, 7))))
    if ndim == 1:
        pool = {**pool, **{k: pool[k][0] for k in ("kernel", "stride", "padding")}}
    return pool, spatial


@st.composite
def adaptive_pools(draw, ndim: int):
    spatial = tuple(draw(st.integers(1, 11)) for _ in range(ndim))
    size = tuple(draw(st.integers(1, n + 2)) for n in spatial)
    return dict(kind="adaptive", size=size[0] if ndim == 1 else size), spatial


#: k = 3, s = 2, p = 1 in ceil mode on 6: the last window [5, 8) reads 1 value, divides by 2
CEIL_OVERFLOW = dict(kind="avg", kernel=3, stride=2, padding=1, ceil_mode=True,
                     count_include_pad=True, divisor_override=None)


def any_pool(ndim: int):
    return st.one_of(avg_pools(ndim), adaptive_pools(ndim))


def _per_axis(pool: dict, key: str, ndim: int) -> tuple[int, ...]:
    v = pool[key]
    return (v,) * ndim if isinstance(v, int) else tuple(v)


# -- the window and divisor rule, exact, against torch ----------------------------------
@settings(deadline=None, max_examples=40)
@given(case=st.one_of(any_pool(1), any_pool(2)))
def test_affine_map_is_torchs_pool_exactly(case):
    """Every entry of the exact ``W`` is torch's ``1 / D`` as a fraction, and ``W`` has
    torch's output shape (ceil mode's extra windows, overflow not counted)."""
    pool, spatial = case
    net = pool_only(pool, len(spatial))
    expected = torch_matrix(pool, spatial)
    amap = collapse_affine(net, (1, *spatial))
    assert amap.W.shape == expected.shape
    got = amap.W.to_Matrix()
    exact = exact_from_torch(expected)
    assert [[Fraction(int(got[r, c].p), int(got[r, c].q)) for c in range(got.shape[1])]
            for r in range(got.shape[0])] == exact
    assert all(b == 0 for b in amap.B)


@settings(deadline=None, max_examples=15)
@given(case=st.one_of(any_pool(1), any_pool(2)), seed=st.integers(0, 2**16))
def test_every_evaluation_path_matches_torch(case, seed):
    """``forward_exact`` (exact, on integers), ``network_forward`` and ``affine_numeric``
    (float64) on two channels agree with torch's pool."""
    pool, spatial = case
    net = pool_only(pool, len(spatial), channels=2)
    shape = (2, *spatial)
    rng = np.random.default_rng(seed)
    x = rng.integers(-50, 50, (3, *shape))
    expected = torch_pool(torch.tensor(x, dtype=torch.float64), pool).numpy()
    exact = forward_exact(net, x[0], shape)
    assert [Fraction(int(v.numerator), int(v.denominator)) for v in exact] == \
        [Fraction(v).limit_denominator(10**6) for v in expected[0].reshape(-1)]
    got = network_forward(net, torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    amap = affine_numeric(net, shape)
    np.testing.assert_allclose(amap(torch.tensor(x, dtype=torch.float64)).numpy(), expected,
                               rtol=0, atol=1e-11)
    assert net.shapes(shape)[net.output_name] == expected.shape[1:]


def test_the_ceil_mode_rule_by_hand():
    """``ceil((n + 2p - k) / s) + 1``, minus one when the last window starts in the right
    padding; count_include_pad counts the padded zeros but not the overflow."""
    # n = 6, k = 3, s = 2, p = 1: ceil(5/2) + 1 = 4 windows, the last [5, 8) overflows
    # n + p = 7 by one: divisor 2 (the padded zero at 6 counts, 7 does not)
    pool = dict(kind="avg", kernel=3, stride=2, padding=1, ceil_mode=True,
                count_include_pad=True, divisor_override=None)
    m = torch_matrix(pool, (6,))
    assert m.shape == (4, 6)
    assert exact_from_torch(m)[3] == [0, 0, 0, 0, 0, Fraction(1, 2)]
    # n = 5, k = 2, s = 2, p = 1: ceil(5/2) + 1 = 4, but the 4th window starts at 5 = n
    pool = dict(pool, kernel=2, stride=2, padding=1)
    assert torch_matrix(pool, (5,)).shape == (3, 5)
    net = pool_only(pool, 1)
    assert net.shapes((1, 5))[net.output_name] == (1, 3)


# -- the collapse: the operator on its region -------------------------------------------
def _generic_conv(rng: np.random.Generator, c_out: int, c_in: int, k: tuple[int, ...]):
    w = rng.integers(1, 2**20, (c_out, c_in, *k)) * rng.choice([-1, 1], (c_out, c_in, *k))
    return w


def _agreement(net: Network, shape: tuple[int, ...], result, rng) -> np.ndarray:
    """Output positions where the operator equals the affine map (index sums, exact) on
    ``x = 0`` and two random integer inputs: for generic weights, the true region."""
    amap = collapse_affine(net, shape)
    agree = np.ones(result.output_shape[1:], bool)
    for x in (np.zeros(shape, dtype=np.int64), rng.integers(-2**30, 2**30, shape),
              rng.integers(-2**30, 2**30, shape)):
        x = x.astype(object)
        diff = amap.apply(x) - result.apply(x)
        agree &= np.all(diff == 0, axis=0)
    return agree


@st.composite
def pooled_networks(draw):
    """conv (maybe padded, maybe biased) -> pool -> maybe a 1x1-or-3 conv; 1-D or 2-D."""
    ndim = draw(st.integers(1, 2))
    pool, spatial = draw(any_pool(ndim))
    pad = draw(st.integers(0, 1))
    spatial = tuple(n + 2 - 2 * pad for n in spatial)      # the conv gives back ``spatial``
    return dict(ndim=ndim, pool=pool, spatial=spatial, pad=pad, bias=draw(st.booleans()),
                after=draw(st.sampled_from([None, 1, 3])), seed=draw(st.integers(0, 2**16)))


def _build(spec) -> tuple[Network, tuple[int, ...]]:
    rng = np.random.default_rng(spec["seed"])
    ndim = spec["ndim"]
    net = Network(ndim, 2)
    k = (3,) * ndim
    bias = rng.integers(-9, 10, 2) if spec["bias"] else None
    h = net.conv(net.input, _generic_conv(rng, 2, 2, k), bias, padding=spec["pad"])
    h = add_pool(net, h, spec["pool"])
    if spec["after"] is not None:
        h = net.conv(h, _generic_conv(rng, 1, 2, (spec["after"],) * ndim), padding=0)
    net.set_output(h)
    return net, (2, *spec["spatial"])


@settings(deadline=None, max_examples=20)
@given(spec=pooled_networks())
def test_collapse_is_exact_on_its_region_and_tight_for_generic_weights(spec):
    net, shape = _build(spec)
    try:
        net.shapes(shape)
    except InvalidInputError:           # the trailing conv does not fit the pooled size
        return
    result = collapse(net, shape, tight=False)
    rng = np.random.default_rng(spec["seed"] + 1)
    agree = _agreement(net, shape, result, rng)
    assert not (result.region & ~agree).any(), "claimed exact where the operator differs"
    assert (result.region == agree).all(), f"not tight for generic weights\n{result.where()}"
    numeric = collapse_numeric(net, shape)
    assert (numeric.region == result.region).all()
    if result.region.any():
        x = torch.tensor(rng.normal(size=(2, *shape)))
        got = numeric.apply(x).numpy()[..., result.region]
        ref = network_forward(net, x).numpy()[..., result.region]
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


@settings(deadline=None, max_examples=20)
@given(case=st.one_of(any_pool(1), any_pool(2)), shift=st.integers(1, 9))
@example(case=(CEIL_OVERFLOW, (6,)), shift=2)       # D = 2 for 1 read: b/2, not b
def test_a_constant_averages_to_itself_only_where_the_divisor_counts_the_reads(case, shift):
    """A pool of the bare constant ``b`` (a conv whose weights are all zero — that zero
    pattern is part of "generic weights" — with bias ``(b, 0)``): the layer gives
    ``b · reads / D``, the operator ``b · prod(k) / D_op``; the region must be exactly where
    they agree (ceil overflow counted or not, padding excluded or not, override)."""
    pool, spatial = case
    net = Network(len(spatial), 2)
    zero = np.zeros((2, 2, *(1,) * len(spatial)), dtype=np.int64)
    net.set_output(add_pool(net, net.conv(net.input, zero, [shift, 0]), pool))
    shape = (2, *spatial)
    result = collapse(net, shape, tight=False)
    agree = _agreement(net, shape, result, np.random.default_rng(shift))
    assert (result.region == agree).all(), (result.where(), agree)


@settings(deadline=None, max_examples=8)
@given(case=st.one_of(any_pool(1), any_pool(2)))
def test_the_prover_certifies_the_pool_collapse(case):
    """Symbolic input, layer-by-layer index sums against the operator on the region."""
    pool, spatial = case
    net = pool_only(pool, len(spatial))
    certificate = prove_collapse(net, (1, *spatial))
    assert certificate, certificate


def test_divisor_override_only_changes_the_scale():
    """With ``divisor_override`` every window divides by the same ``D``: the operator is
    ``prod(k) / D`` times the plain pool's, exact at every position, ceil mode and padding
    included (the zero-extended input reads zeros outside)."""
    plain = dict(kind="avg", kernel=(3, 2), stride=(2, 2), padding=(1, 1), ceil_mode=True,
                 count_include_pad=True, divisor_override=None)
    a = collapse(pool_only(plain, 2), (1, 6, 7))
    b = collapse(pool_only(dict(plain, divisor_override=5), 2), (1, 6, 7))
    assert b.exact_everywhere and not a.exact_everywhere  # ceil overflow: divisor 3x1, ...
    assert b.operator == a.operator * sympy.Rational(6, 5)


def test_uniform_adaptive_pool_is_a_strided_pool_exact_everywhere():
    net = pool_only(dict(kind="adaptive", size=(3, 2)), 2)
    result = collapse(net, (1, 9, 8))
    assert result.exact_everywhere
    assert result.operator.stride == (3, 4) and result.operator.kernel_size == (3, 4)
    # non-divisible but still uniform: 7 -> 3 has windows [0,3), [2,5), [4,7)
    result = collapse(pool_only(dict(kind="adaptive", size=3), 1), (1, 7))
    assert result.exact_everywhere and result.operator.stride == (2,)


def test_non_uniform_adaptive_pool_is_exact_on_its_agreeing_windows_only():
    """10 -> 4: windows [0,3), [2,5), [5,8), [7,10); a stride-2 or stride-3 pool of width 3
    matches two of them.  The affine map is exact everywhere."""
    net = pool_only(dict(kind="adaptive", size=4), 1)
    result = collapse(net, (1, 10))
    assert result.region.sum() == 2 and "exact on 2 of 4" in result.where()
    W = collapse_affine(net, (1, 10)).W.to_Matrix()
    expected = exact_from_torch(torch_matrix(dict(kind="adaptive", size=4), (10,)))
    assert [[Fraction(int(W[r, c].p), int(W[r, c].q)) for c in range(10)] for r in range(4)] \
        == expected


def test_periodic_networks_take_uniform_adaptive_pools_only():
    rng = np.random.default_rng(0)
    for size, periodic in ((2, True), (3, False)):
        net = Network(1, 1)
        h = net.conv(net.input, rng.normal(size=(1, 1, 3)), padding=1, padding_mode="circular")
        net.set_output(net.adaptive_avg_pool(h, size))
        assert is_periodic_network(net, net.shapes((1, 8))) is periodic
        result = collapse(net, (1, 8))
        assert result.periodic is periodic


def test_bad_pool_arguments_are_refused():
    net = Network(2, 1)
    with pytest.raises(InvalidInputError, match="divisor_override"):
        net.avg_pool(net.input, 2, divisor_override=0)
    with pytest.raises(InvalidTypeError, match="ceil_mode"):
        net.avg_pool(net.input, 2, ceil_mode="yes")
    with pytest.raises(InvalidInputError, match="output_size"):
        net.adaptive_avg_pool(net.input, (2, 0))
    with pytest.raises((InvalidInputError, InvalidTypeError), match="output_size"):
        net.adaptive_avg_pool(net.input, (2, None))
    net.set_output(net.avg_pool(net.input, 5, stride=1, ceil_mode=True))  # torch refuses it too
    with pytest.raises(InvalidInputError, match="does not fit"):
        net.shapes((1, 3, 7))


# -- the bridge ------------------------------------------------------------------------
class Fn(nn.Module):
    def __init__(self, fn, **modules):
        super().__init__()
        self.fn = fn
        for name, m in modules.items():
            self.add_module(name, m)

    def forward(self, x):
        return self.fn(self, x)


BRIDGE_CASES = [  # (name, model, input shape, is the pooled segment one exact conv)
    ("AvgPool1d ceil exclude", lambda: nn.Sequential(nn.Conv1d(2, 3, 3),
                                                     nn.AvgPool1d(3, 2, 1, ceil_mode=True,
                                                                  count_include_pad=False)),
     (2, 12), False),
    ("AvgPool2d ceil divisor, on the input", lambda: nn.Sequential(
        nn.AvgPool2d(3, 2, 1, ceil_mode=True, divisor_override=4), nn.Conv2d(2, 3, 3)),
     (2, 8, 7), True),
    ("AvgPool2d ceil divisor, after a conv", lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.AvgPool2d(3, 2, 0, ceil_mode=True, divisor_override=4)),
     (2, 8, 7), False),
    ("F.avg_pool2d ceil overflow", lambda: Fn(lambda s, x: F.avg_pool2d(s.c(x), (2, 3), (2, 2),
                                                                        ceil_mode=True),
                                              c=nn.Conv2d(2, 2, 3)), (2, 9, 9), False),
    ("F.avg_pool2d ceil, no overflow", lambda: Fn(lambda s, x: F.avg_pool2d(s.c(x), (2, 3),
                                                                            (2, 2), ceil_mode=True),
                                                  c=nn.Conv2d(2, 2, 3)), (2, 8, 9), True),
    ("AdaptiveAvgPool1d non-uniform", lambda: nn.Sequential(nn.Conv1d(2, 3, 3),
                                                            nn.AdaptiveAvgPool1d(4)), (2, 12),
     False),
    ("AdaptiveAvgPool2d non-uniform + linear",
     lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.AdaptiveAvgPool2d((3, 4)), nn.Flatten(),
                           nn.Linear(36, 5)), (2, 9, 8), None),
    ("F.adaptive_avg_pool2d uniform", lambda: Fn(lambda s, x: F.adaptive_avg_pool2d(s.c(x), 2),
                                                 c=nn.Conv2d(2, 2, 3)), (2, 6, 8), True),
]


@pytest.mark.parametrize("name,build,shape,exact", BRIDGE_CASES,
                         ids=[c[0] for c in BRIDGE_CASES])
def test_bridge_converts_pools_in_every_mode(name, build, shape, exact):
    """No pool is kept as a boundary; every mode predicts what the model does; in
    ``partial`` mode the segment merges into one conv exactly when the pool's collapse
    is exact everywhere (and is kept otherwise)."""
    from laurentnet.bridge.convert import convert
    torch.manual_seed(0)
    model = build().double().eval()
    x = torch.randn(2, *shape, dtype=torch.float64)
    with torch.no_grad():
        ref = copy.deepcopy(model)(x)
    for mode in ("affine", "partial") + (("kernel",) if exact else ()):
        conversion = convert(model, x, mode=mode, measure=False, merge_slower=True)
        assert conversion.report.boundaries == [], conversion.report.table()
        with torch.no_grad():
            y = conversion.module(x)
        assert y.shape == ref.shape
        assert float((y - ref).abs().max()) <= 1e-11 * (1 + float(ref.abs().max()))
        if mode == "partial" and exact is not None:
            segments = [s for s in conversion.report.segments if s.macs_after is not None]
            assert segments and all(s.exact == exact and s.merged == exact for s in segments), \
                conversion.report.table()


@pytest.mark.parametrize("pool", [nn.AvgPool2d(2, divisor_override=3),
                                  nn.AvgPool2d(3, 2, 1, ceil_mode=True),
                                  nn.AdaptiveAvgPool2d((3, 3))], ids=repr)
def test_kernel_mode_is_exact_or_refuses(pool):
    """One convolution for a padded conv, a pool and a conv: never a silently wrong one
    (the border is inexact; it is corrected exactly or the conversion is refused)."""
    from laurentnet.bridge.convert import ConversionError, convert
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), pool,
                          nn.Conv2d(3, 2, 3, padding=1)).double().eval()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    try:
        conversion = convert(model, x, mode="kernel", measure=False)
    except ConversionError as exc:
        assert "not exact everywhere" in str(exc)
        return
    with torch.no_grad():
        assert float((conversion.module(x) - model(x)).abs().max()) <= 1e-11


def test_laurentnet_collapse_and_verify_on_a_pooled_model(tmp_path, capsys):
    from laurentnet.bridge.cli import main
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1),
                          nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                          nn.AdaptiveAvgPool2d((3, 2)), nn.Flatten(), nn.Linear(18, 4)).eval()
    example = torch.randn(2, 1, 9, 8)
    src, out = tmp_path / "pooled.pt2", tmp_path / "pooled-out.pt2"
    torch.export.save(torch.export.export(model, (example,),
                                          dynamic_shapes=({0: torch.export.Dim.AUTO},)), str(src))
    code = main(["collapse", str(src), "-o", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["verification"]["ok"]
    assert main(["verify", str(src), str(out)]) == 0
    capsys.readouterr()
    x = torch.randn(4, 1, 9, 8)
    torch.testing.assert_close(torch.export.load(str(out)).module()(x), model(x),
                               rtol=1e-4, atol=1e-5)


def test_ceil_mode_windows_that_overhang_the_padded_input_are_torchs():
    """With ``ceil_mode`` torch keeps one window even when the kernel is longer than the
    padded input (``-s < n + 2p - k < 0``); every size torch accepts, the package accepts
    with torch's values, and every size torch refuses, the package refuses."""
    checked = 0
    for n in range(1, 5):
        for k in range(1, 7):
            for s in range(1, 4):
                for p in range(0, k // 2 + 1):
                    pool = dict(kind="avg", kernel=k, stride=s, padding=p, ceil_mode=True,
                                count_include_pad=bool((n + k) % 2), divisor_override=None)
                    x = torch.arange(1.0, n + 1, dtype=torch.float64).reshape(1, 1, n)
                    try:
                        expected = torch_pool(x, pool)
                    except RuntimeError:
                        with pytest.raises(InvalidInputError):
                            pool_only(pool, 1).shapes((1, n))
                        continue
                    net = pool_only(pool, 1)
                    got = network_forward(net, x)
                    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-12)
                    W, B = collapse_affine(net, (1, n)).to_numpy()
                    np.testing.assert_allclose(x.reshape(1, -1).numpy() @ W.T + B,
                                               expected.reshape(1, -1).numpy(), rtol=0, atol=1e-12)
                    checked += n + 2 * p < k
    assert checked > 0  # overhanging kernels were among the accepted cases
