"""Laurent polynomials: ring identities and every map, against dictionaries of Fractions.

The reference for each operation is a few lines of plain Python on ``{exponent: Fraction}``
dictionaries (the definition of the operation), never the package itself.
"""
from __future__ import annotations

import cmath
import itertools
from fractions import Fraction

import numpy as np
import pytest
import sympy
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays
from sympy.polys.domains import QQ, ZZ

from laurentnet.algebra import LaurentPoly, LaurentRing, laurent_ring
from strategies import frac

RINGS = {n: LaurentRing(" ".join(f"z{i + 1}" for i in range(n)), QQ) for n in (1, 2, 3)}


# -- reference arithmetic on {exponent tuple: Fraction} ----------------------------------
def clean(d):
    return {e: c for e, c in d.items() if c != 0}


def ref_add(a, b):
    out = dict(a)
    for e, c in b.items():
        out[e] = out.get(e, Fraction(0)) + c
    return clean(out)


def ref_neg(a):
    return {e: -c for e, c in a.items()}


def ref_mul(a, b):
    out = {}
    for (e1, c1), (e2, c2) in itertools.product(a.items(), b.items()):
        e = tuple(x + y for x, y in zip(e1, e2))
        out[e] = out.get(e, Fraction(0)) + c1 * c2
    return clean(out)


def as_dict(f: LaurentPoly):
    """The package polynomial as ``{exponent: Fraction}`` (through ``to_dict`` only)."""
    return {e: frac(f.ring.domain.to_sympy(c)) for e, c in f.to_dict().items()}


# -- strategies ---------------------------------------------------------------------------
coefficients = st.one_of(st.integers(-5, 5).map(Fraction),
                         st.fractions(min_value=-3, max_value=3, max_denominator=7))


def term_dicts(ngens: int, max_exp: int = 3, max_size: int = 5):
    return st.dictionaries(st.tuples(*[st.integers(-max_exp, max_exp)] * ngens), coefficients,
                           max_size=max_size)


@st.composite
def polys(draw, ngens: int | None = None, count: int = 1):
    """``(ring, [(dict, poly), ...])`` with ``count`` random polynomials in one ring."""
    n = draw(st.integers(1, 3)) if ngens is None else ngens
    ring = RINGS[n]
    out = []
    for _ in range(count):
        d = clean(draw(term_dicts(n)))
        out.append((d, ring.from_dict(d)))
    return ring, out


# -- construction and inspection ----------------------------------------------------------
@given(polys())
def test_from_dict_to_dict_terms_coeff_support(data):
    ring, [(d, f)] = data
    assert as_dict(f) == d
    assert len(f) == len(d) and bool(f) == bool(d) and f.is_zero == (not d)
    assert [e for e, _ in f.terms()] == sorted(d)
    for e, c in d.items():
        assert frac(ring.domain.to_sympy(f.coeff(e))) == c
    assert f.coeff((7,) * ring.ngens) == ring.domain.zero
    if d:
        low = tuple(min(col) for col in zip(*d))
        high = tuple(max(col) for col in zip(*d))
        assert f.support() == (low, high)
    else:
        assert f.support() is None
        assert f == ring.zero and str(f) == "0"


def test_from_dict_adds_repeated_exponents_and_drops_zeros():
    R, z = laurent_ring("z", QQ)
    f = R.from_dict({(1,): 2, (-1,): 0, (0,): 0.5})
    assert as_dict(f) == {(1,): Fraction(2), (0,): Fraction(1, 2)}
    assert R.monomial(-2, 3) == 3 * z**-2
    with pytest.raises(ValueError):
        R.from_dict({(1, 2): 1})


# -- ring axioms ----------------------------------------------------------------------------
@given(polys(count=3))
def test_ring_operations_match_reference(data):
    ring, [(a, f), (b, g), (c, h)] = data
    assert as_dict(f + g) == ref_add(a, b)
    assert as_dict(f - g) == ref_add(a, ref_neg(b))
    assert as_dict(-f) == ref_neg(a)
    assert as_dict(f * g) == ref_mul(a, b)
    assert as_dict(f * g * h) == ref_mul(ref_mul(a, b), c)


@given(polys(count=3))
def test_ring_axioms(data):
    ring, [(_, f), (_, g), (_, h)] = data
    zero, one = ring.zero, ring.one
    assert (f + g) + h == f + (g + h)
    assert f + g == g + f
    assert f + zero == f and f - f == zero
    assert (f * g) * h == f * (g * h)
    assert f * g == g * f
    assert f * one == f and one * f == f and f * zero == zero
    assert f * (g + h) == f * g + f * h
    assert (f + g) * h == f * h + g * h
    # scalars coerce exactly
    assert as_dict(f * 2) == as_dict(f + f)
    assert as_dict(f + Fraction(1, 3)) == ref_add(as_dict(f), {(0,) * ring.ngens: Fraction(1, 3)})
    assert as_dict(0.5 * f) == {e: c / 2 for e, c in as_dict(f).items()}
    assert as_dict(1 - f) == ref_add({(0,) * ring.ngens: Fraction(1)}, ref_neg(as_dict(f)))


@given(polys(count=1), st.integers(0, 3))
def test_nonnegative_powers(data, k):
    ring, [(a, f)] = data
    expected = {(0,) * ring.ngens: Fraction(1)}
    for _ in range(k):
        expected = ref_mul(expected, a)
    assert as_dict(f ** k) == expected


@given(st.integers(1, 3).flatmap(lambda n: st.tuples(
    st.just(n), st.tuples(*[st.integers(-4, 4)] * n),
    coefficients.filter(lambda c: c != 0), st.integers(1, 3))))
def test_negative_powers_of_monomials(args):
    n, e, c, k = args
    ring = RINGS[n]
    m = ring.monomial(e, c)
    inv = m ** -k
    assert as_dict(inv) == {tuple(-k * x for x in e): c ** -k}
    assert m ** k * inv == ring.one


def test_negative_powers_errors():
    R, z = laurent_ring("z", QQ)
    with pytest.raises(ValueError, match="monomial"):
        (1 + z) ** -1
    Rz, w = laurent_ring("w", ZZ)
    assert (w ** -2) * w ** 2 == Rz.one
    with pytest.raises(ValueError):
        (2 * w) ** -1  # 1/2 is not in ZZ


def test_generators_and_ring_errors():
    R, z1, z2 = laurent_ring("z1 z2", QQ)
    assert R.ngens == 2 and R.symbols == sympy.symbols("z1 z2")
    assert as_dict(z1 ** -1 * z2) == {(-1, 1): Fraction(1)}
    with pytest.raises(ValueError):
        LaurentRing("z z", QQ)
    with pytest.raises(ValueError):
        LaurentRing("", QQ)
    with pytest.raises(TypeError):
        LaurentRing("z", "QQ")
    S, y1, y2 = laurent_ring("y1 y2", QQ)
    with pytest.raises((ValueError, TypeError)):
        z1 + y1
    # ZZ and QQ rings unify
    RZ, u1, u2 = laurent_ring("z1 z2", ZZ)
    assert as_dict(u1 + z1 * Fraction(1, 2)) == {(1, 0): Fraction(3, 2)}


# -- maps of the variables ----------------------------------------------------------------
@given(polys(), st.data())
def test_subs_power_reflect_shift(data, draw):
    ring, [(a, f)] = data
    n = ring.ngens
    powers = draw.draw(st.tuples(*[st.integers(-3, 3).filter(bool)] * n))
    expected = {}
    for e, c in a.items():
        k = tuple(x * p for x, p in zip(e, powers))
        expected[k] = expected.get(k, Fraction(0)) + c
    assert as_dict(f.subs_power(powers)) == clean(expected)
    assert as_dict(f.reflect()) == {tuple(-x for x in e): c for e, c in a.items()}
    s = draw.draw(st.tuples(*[st.integers(-4, 4)] * n))
    assert as_dict(f.shift(s)) == {tuple(x + y for x, y in zip(e, s)): c for e, c in a.items()}
    with pytest.raises(ValueError):
        f.subs_power((0,) * n)


@given(polys(count=2), st.data())
def test_subs_power_is_a_ring_homomorphism(data, draw):
    ring, [(_, f), (_, g)] = data
    powers = draw.draw(st.tuples(*[st.integers(-3, 3).filter(bool)] * ring.ngens))
    assert (f * g).subs_power(powers) == f.subs_power(powers) * g.subs_power(powers)
    assert (f + g).subs_power(powers) == f.subs_power(powers) + g.subs_power(powers)


@given(polys(), st.data())
def test_downsample_and_polyphase_reconstruction(data, draw):
    ring, [(a, f)] = data
    n = ring.ngens
    s = draw.draw(st.tuples(*[st.integers(1, 3)] * n))
    r = draw.draw(st.tuples(*[st.integers(0, 4)] * n))
    expected = {tuple((x - q) // m for x, q, m in zip(e, r, s)): c for e, c in a.items()
                if all((x - q) % m == 0 for x, q, m in zip(e, r, s))}
    assert as_dict(f.downsample(s, r)) == expected
    components = f.polyphase(s)
    assert set(components) == set(itertools.product(*[range(m) for m in s]))
    # f(z) = sum_r z^r f_r(z^s), checked on coefficients
    rebuilt = {}
    for phase, comp in components.items():
        for e, c in as_dict(comp).items():
            k = tuple(m * x + q for m, x, q in zip(s, e, phase))
            assert k not in rebuilt  # the phases partition the exponents
            rebuilt[k] = c
    assert rebuilt == a
    total = ring.zero
    for phase, comp in components.items():
        total = total + comp.subs_power(s).shift(phase)
    assert total == f
    with pytest.raises(ValueError):
        f.downsample((0,) * n)


@given(polys(count=2), st.data())
def test_mod_circular_is_circular_convolution(data, draw):
    ring, [(a, f), (b, g)] = data
    n = ring.ngens
    periods = draw.draw(st.tuples(*[st.integers(1, 4)] * n))
    fm, gm, pm = f.mod_circular(periods), g.mod_circular(periods), (f * g).mod_circular(periods)
    for h in (fm, gm, pm):
        assert all(0 <= x < p for e in as_dict(h) for x, p in zip(e, periods))

    def dense(d):
        arr = {}
        for idx in itertools.product(*[range(p) for p in periods]):
            arr[idx] = d.get(idx, Fraction(0))
        return arr
    # reduction: each residue class collects the coefficients of its exponents
    A = dense(as_dict(fm))
    for idx in A:
        assert A[idx] == sum((c for e, c in a.items()
                              if all((x - i) % p == 0 for x, i, p in zip(e, idx, periods))),
                             Fraction(0))
    # product then reduction == circular convolution of the reduced arrays (index sums)
    B = dense(as_dict(gm))
    C = dense(as_dict(pm))
    for i in C:
        acc = Fraction(0)
        for j in A:
            k = tuple((x - y) % p for x, y, p in zip(i, j, periods))
            acc += A[j] * B[k]
        assert C[i] == acc
    # agrees with f at every n-th root of unity
    for idx in itertools.islice(itertools.product(*[range(p) for p in periods]), 8):
        point = [cmath.exp(2j * cmath.pi * k / p) for k, p in zip(idx, periods)]
        assert abs(fm.evaluate(point) - f.evaluate(point)) < 1e-9
    with pytest.raises(ValueError):
        f.mod_circular((0,) * n)


# -- evaluation -----------------------------------------------------------------------------
@given(polys(), st.data())
def test_evaluate_on_unit_torus_matches_numpy(data, draw):
    ring, [(a, f)] = data
    thetas = np.array(draw.draw(st.tuples(*[st.floats(-np.pi, np.pi)] * ring.ngens)))
    point = [np.exp(1j * th) for th in thetas]
    expected = sum(complex(float(c)) * np.exp(1j * np.dot(np.array(e), thetas))
                   for e, c in a.items()) if a else 0.0
    got = f.evaluate(point)
    assert isinstance(got, complex)
    assert abs(got - expected) <= 1e-12 * max(1.0, sum(abs(float(c)) for c in a.values()))
    # real float points too
    xs = [float(np.cos(th)) + 2.0 for th in thetas]
    expected_real = sum(float(c) * np.prod([x ** k for x, k in zip(xs, e)]) for e, c in a.items())
    assert abs(f.evaluate(xs) - expected_real) <= 1e-9 * max(1.0, abs(expected_real))


@given(polys(), st.data())
def test_evaluate_exact_and_at_one(data, draw):
    ring, [(a, f)] = data
    point = draw.draw(st.tuples(*[st.fractions(min_value=-3, max_value=3, max_denominator=5)
                                  .filter(bool)] * ring.ngens))
    expected = Fraction(0)
    for e, c in a.items():
        term = c
        for x, k in zip(point, e):
            term *= x ** k
        expected += term
    got = f.evaluate([sympy.Rational(x.numerator, x.denominator) for x in point])
    assert frac(got) == expected
    assert frac(ring.domain.to_sympy(f.at_one())) == sum(a.values(), Fraction(0))
    assert frac(f.evaluate([sympy.Integer(1)] * ring.ngens)) == sum(a.values(), Fraction(0))
    with pytest.raises(ValueError):
        f.evaluate([1] * (ring.ngens + 1))


# -- conversions ----------------------------------------------------------------------------
@given(st.integers(1, 3).flatmap(lambda n: st.tuples(
    st.just(n), arrays(np.float64, st.tuples(*[st.integers(1, 4)] * n),
                       elements=st.sampled_from([0.0, 0.0, 1.0, -2.0, 0.5, 3.25])))),
       st.data())
def test_from_array_to_array_round_trip(args, draw):
    n, arr = args
    ring = RINGS[n]
    origin = draw.draw(st.tuples(*[st.integers(-2, 5)] * n))
    f = ring.from_array(arr, origin)
    expected = {tuple(i - o for i, o in zip(idx, origin)): Fraction(float(arr[idx]))
                for idx in np.ndindex(arr.shape) if arr[idx] != 0}
    assert as_dict(f) == expected
    low = tuple(-o for o in origin)
    high = tuple(s - 1 - o for s, o in zip(arr.shape, origin))
    back, org = f.to_array((low, high))
    assert org == tuple(origin) and back.shape == arr.shape and back.dtype == object
    assert all(frac(x) == Fraction(float(y)) for x, y in zip(back.flat, arr.flat))
    back_f, _ = f.to_array((low, high), dtype=float)
    np.testing.assert_array_equal(back_f, arr)
    # default box: the support, with the origin mapping back to z^0
    tight, org = f.to_array()
    if expected:
        lo, hi = f.support()
        assert tight.shape == tuple(h - l + 1 for l, h in zip(lo, hi))
        assert ring.from_array(tight, org) == f
        with pytest.raises(ValueError):  # a box that misses the terms with e[0] = hi[0]
            f.to_array((lo, (hi[0] - 1, *hi[1:])))
    else:
        assert tight.shape == (1,) * n
    with pytest.raises(ValueError):
        ring.from_array(np.zeros((2,) * (n + 1)))


@given(polys())
def test_from_sympy_as_expr_round_trip(data):
    ring, [(a, f)] = data
    zs = ring.symbols
    # an independently built expression of the same polynomial
    expr = sympy.Add(*[sympy.Rational(c.numerator, c.denominator)
                       * sympy.Mul(*[z ** k for z, k in zip(zs, e)]) for e, c in a.items()])
    assert sympy.expand(f.as_expr() - expr) == 0
    assert ring.from_sympy(expr) == f
    assert ring.from_sympy(f.as_expr()) == f
    if expr.free_symbols:
        assert ring(expr) == f


def test_from_sympy_rejects_non_laurent():
    R, z = laurent_ring("z", QQ)
    zz = R.symbols[0]
    assert R.from_sympy((zz ** 2 + 1) / (3 * zz ** 3)) == (z ** -1 + z ** -3) * Fraction(1, 3)
    with pytest.raises(ValueError):
        R.from_sympy(1 / (zz + 1))


def test_str_and_latex():
    R, z1, z2 = laurent_ring("z1 z2", QQ)
    f = 3 * z1 ** -2 * z2 + sympy.Rational(1, 2) * z2 ** 3 - 1
    text = str(f)
    assert "z1" in text and "z2" in text
    assert sympy.expand(sympy.sympify(text) - f.as_expr()) == 0
    latex = f.latex()
    assert "z_{1}" in latex and "z_{2}" in latex and "\\frac" in latex
    assert f._repr_latex_().startswith("$") and f._repr_latex_().endswith("$")
    assert str(R.zero) == "0"
