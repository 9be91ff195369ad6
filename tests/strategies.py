"""Hypothesis strategies and *independent* reference computations shared by the tests.

Everything here that computes a convolution does it with PyTorch (``torch.nn.functional``)
or with explicit index sums in plain Python; nothing here calls into ``algebra`` except to
convert its exact results to floats, so a test comparing the package with these helpers
can fail.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from math import gcd
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}

# cheap sizes per dimension: (max kernel, max extra input size beyond the minimum)
_SIZE = {1: (4, 6), 2: (3, 3), 3: (2, 2)}


# -- one convolution layer ---------------------------------------------------------------
@dataclass(frozen=True)
class ConvSpec:
    """The hyper-parameters of one PyTorch convolution and the input size per axis."""
    ndim: int
    cin: int
    cout: int
    groups: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[int, ...]
    n: tuple[int, ...]

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.cout, self.cin // self.groups, *self.kernel)

    @property
    def transposed_weight_shape(self) -> tuple[int, ...]:
        """Weight shape of a ``conv_transpose`` from ``cin`` to ``cout`` channels."""
        return (self.cin, self.cout // self.groups, *self.kernel)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """PyTorch's output size ``floor((n + 2p - d(k-1) - 1)/s) + 1`` per axis."""
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                     zip(self.n, self.padding, self.dilation, self.kernel, self.stride))

    def kwargs(self) -> dict[str, Any]:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)


def _tuple(draw, ndim: int, strategy) -> tuple[int, ...]:
    return tuple(draw(strategy) for _ in range(ndim))


@st.composite
def channels_and_groups(draw, max_groups: int = 3, max_per_group: int = 2,
                        groups: bool = True) -> tuple[int, int, int]:
    g = draw(st.integers(1, max_groups)) if groups else 1
    cin = g * draw(st.integers(1, max_per_group))
    cout = g * draw(st.integers(1, max_per_group))
    return cin, cout, g


@st.composite
def conv_specs(draw, ndim: int, *, padded: bool = True, groups: bool = True,
               max_stride: int = 2, max_dilation: int = 2, max_padding: int = 2,
               max_kernel: int | None = None) -> ConvSpec:
    """A random conv layer with an input size for which PyTorch's output is non-empty."""
    kmax, extra = _SIZE[ndim]
    kmax = max_kernel or kmax
    cin, cout, g = draw(channels_and_groups(groups=groups))
    kernel = _tuple(draw, ndim, st.integers(1, kmax))
    stride = _tuple(draw, ndim, st.integers(1, max_stride))
    dilation = _tuple(draw, ndim, st.integers(1, max_dilation))
    padding = _tuple(draw, ndim, st.integers(0, max_padding)) if padded else (0,) * ndim
    n = tuple(max(1, d * (k - 1) + 1 - 2 * p) + draw(st.integers(0, extra))
              for k, d, p in zip(kernel, dilation, padding))
    return ConvSpec(ndim, cin, cout, g, kernel, stride, dilation, padding, n)


@st.composite
def circular_specs(draw, ndim: int, *, cin: int | None = None, groups: bool = True,
                   max_stride: int = 2) -> ConvSpec:
    """A conv layer with ``2p = d(k-1)`` (circular padding keeps the size); ``n`` is left
    as a multiple of the stride with ``p <= n`` (PyTorch wraps around at most once)."""
    kmax, _ = _SIZE[ndim]
    kmax = max(kmax, 3)
    if cin is None:
        cin, cout, g = draw(channels_and_groups(groups=groups))
    else:
        divisors = [g for g in range(1, cin + 1) if cin % g == 0] if groups else [1]
        g = draw(st.sampled_from(divisors))
        cout = g * draw(st.integers(1, 2))
    kernel, dilation = [], []
    for _ in range(ndim):
        k = draw(st.integers(1, kmax))
        d = draw(st.sampled_from([1, 2] if k % 2 else [2]))
        kernel.append(k)
        dilation.append(d)
    padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    stride = _tuple(draw, ndim, st.integers(1, max_stride))
    n = tuple(s * max(1, -(-p // s)) + s * draw(st.integers(0, 2))
              for s, p in zip(stride, padding))
    return ConvSpec(ndim, cin, cout, g, tuple(kernel), stride, tuple(dilation), padding, n)


@st.composite
def valid_chains(draw, ndim: int, *, first_padded: bool = True, max_layers: int = 3,
                 max_stride: int = 2) -> list[ConvSpec]:
    """2 or 3 layers with matching channels; every layer after the first has padding 0
    (then the composed kernel is exact on PyTorch's whole output window).  Each spec's
    ``n`` is the size of *its own* input."""
    layers = draw(st.integers(2, max_layers))
    kmax, extra = _SIZE[ndim]
    chans = [draw(st.integers(1, 3)) for _ in range(layers + 1)]
    raw = []
    for layer in range(layers):
        cin, cout = chans[layer], chans[layer + 1]
        common = gcd(cin, cout)
        g = draw(st.sampled_from([d for d in range(1, common + 1) if common % d == 0]))
        kernel = _tuple(draw, ndim, st.integers(1, kmax))
        stride = _tuple(draw, ndim, st.integers(1, max_stride))
        dilation = _tuple(draw, ndim, st.integers(1, 2))
        padding = _tuple(draw, ndim, st.integers(0, 2)) if (layer == 0 and first_padded) \
            else (0,) * ndim
        raw.append((cin, cout, g, kernel, stride, dilation, padding))
    # smallest input size giving an output of size >= 1 after every layer (backwards)
    need = [1] * ndim
    for cin, cout, g, kernel, stride, dilation, padding in reversed(raw):
        need = [max(1, (m - 1) * s + d * (k - 1) + 1 - 2 * p)
                for m, s, d, k, p in zip(need, stride, dilation, kernel, padding)]
    n = tuple(m + draw(st.integers(0, extra)) for m in need)
    specs = []
    for cin, cout, g, kernel, stride, dilation, padding in raw:
        spec = ConvSpec(ndim, cin, cout, g, kernel, stride, dilation, padding, n)
        specs.append(spec)
        n = spec.out_shape
    return specs


@st.composite
def circular_chains(draw, ndim: int, *, max_layers: int = 3) -> list[ConvSpec]:
    """2 or 3 circularly padded layers; the input size is a multiple of the product of
    the strides and every layer's padding fits in its input."""
    layers = draw(st.integers(2, max_layers))
    specs, cin = [], draw(st.integers(1, 3))
    for _ in range(layers):
        spec = draw(circular_specs(ndim, cin=cin))
        specs.append(spec)
        cin = spec.cout
    before = [1] * ndim
    for spec in specs:
        before = [b * s for b, s in zip(before, spec.stride)]
    total = before
    multipliers = []
    for axis in range(ndim):
        # n = total * m; layer input size = total * m / before_l >= padding_l
        m, before_axis = 1, 1
        for spec in specs:
            size_factor = total[axis] // before_axis
            m = max(m, -(-spec.padding[axis] // size_factor))
            before_axis *= spec.stride[axis]
        multipliers.append(m + draw(st.integers(0, 1)))
    n = tuple(t * m for t, m in zip(total, multipliers))
    out = []
    for spec in specs:
        spec = replace(spec, n=n)
        out.append(spec)
        n = tuple(a // s for a, s in zip(n, spec.stride))
    return out


# -- numbers ------------------------------------------------------------------------------
def int_arrays(shape: Sequence[int], low: int = -3, high: int = 3):
    """Small integer-valued float64 arrays: float64 arithmetic on them is exact."""
    return arrays(np.float64, tuple(shape), elements=st.integers(low, high).map(float))


def nonzero_int_arrays(shape: Sequence[int]):
    return arrays(np.float64, tuple(shape),
                  elements=st.sampled_from([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]))


def normal_arrays(shape: Sequence[int], dtype: Any = np.float64):
    """Standard normal arrays (seeded from hypothesis, so reproducible and shrinkable)."""
    return st.integers(0, 2**32 - 1).map(
        lambda seed: np.random.default_rng(seed).standard_normal(tuple(shape)).astype(dtype))


def weights(shape: Sequence[int], kind: str):
    return int_arrays(shape) if kind == "int" else normal_arrays(shape)


# -- reference computations (independent of the package) ----------------------------------
def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def torch_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, spec: ConvSpec,
               **overrides: Any) -> np.ndarray:
    """``conv{n}d`` of one (unbatched) signal ``x`` of shape ``(C_in, *n)``."""
    kwargs = spec.kwargs()
    kwargs.update(overrides)
    out = CONV[x.ndim - 1](t(x)[None], t(w), None if b is None else t(b), **kwargs)
    return out[0].numpy()


def torch_conv_circular(x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                        spec: ConvSpec) -> np.ndarray:
    """Circular padding by ``F.pad(mode='circular')`` then an unpadded ``conv{n}d``."""
    pad = []
    for p in reversed(spec.padding):
        pad += [p, p]
    xt = t(x)[None]
    if any(spec.padding):
        xt = F.pad(xt, pad, mode="circular")
    out = CONV[x.ndim - 1](xt, t(w), None if b is None else t(b), stride=spec.stride,
                           padding=0, dilation=spec.dilation, groups=spec.groups)
    return out[0].numpy()


def torch_conv_transpose(y: np.ndarray, w: np.ndarray, b: np.ndarray | None, *, stride,
                         padding, dilation, groups: int, output_padding=0) -> np.ndarray:
    out = CONV_T[y.ndim - 1](t(y)[None], t(w), None if b is None else t(b), stride=stride,
                             padding=padding, dilation=dilation, groups=groups,
                             output_padding=output_padding)
    return out[0].numpy()


def as_float(y: np.ndarray) -> np.ndarray:
    """An object array of exact sympy numbers -> float64 (one rounding per entry)."""
    return np.asarray(y, dtype=object).astype(np.float64)


def assert_close(got: np.ndarray, expected: np.ndarray, tol: float = 1e-10) -> None:
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    err = float(np.max(np.abs(got - expected), initial=0.0))
    assert err <= tol * scale, f"max abs error {err:.3e} > {tol:.1e} * {scale:.3g}"


def assert_exact(got: np.ndarray, expected: np.ndarray) -> None:
    """Exact comparison of exact package output with an integer-valued float64 result."""
    got = as_float(got)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    np.testing.assert_array_equal(got, expected)


def frac(value: Any) -> Fraction:
    """A sympy Rational / mpq / int / float as a Fraction (floats exactly)."""
    if isinstance(value, (float, np.floating)):
        return Fraction(float(value))
    if hasattr(value, "p") and hasattr(value, "q"):
        return Fraction(int(value.p), int(value.q))
    if hasattr(value, "numerator") and hasattr(value, "denominator"):
        return Fraction(int(value.numerator), int(value.denominator))
    return Fraction(int(value))


def budget(examples: int) -> int:
    """Scale a test's example count with the active hypothesis profile (the default
    profile has ``max_examples=30``; ``HYPOTHESIS_PROFILE=thorough`` multiplies by 10)."""
    from hypothesis import settings
    return max(1, round(examples * settings.default.max_examples / 30))
