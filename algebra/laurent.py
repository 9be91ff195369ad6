"""Laurent polynomials in shift variables ``z1, ..., zn`` over an explicit sympy domain.

A Laurent polynomial is ``f(z) = sum_e c_e z^e`` with finitely many integer exponent
vectors ``e`` (negative entries allowed).  It is stored, like sympy's ``PuiseuxPoly``, as
an ordinary sparse polynomial ``p`` of sympy's ``PolyRing`` times a monomial offset:
``f = z^offset * p(z)``, normalised so that ``p`` has minimum exponent 0 on every axis.
Arithmetic therefore runs on sympy's sparse ``PolyElement`` dictionaries, never on ``Expr``
trees.

``LaurentRing`` is the parent (it fixes the variables and the coefficient domain, e.g.
``ZZ``, ``QQ``, ``RR`` or ``QQ[w1, w2, ...]`` for symbolic weights) and makes the elements;
``LaurentPoly`` is the immutable element with ``+ - * **``, evaluation, substitution
``z -> z^s``, reflection, down-sampling, polyphase components, circular reduction, dense
array conversion, ``str`` and LaTeX.
"""
from __future__ import annotations

from functools import cached_property
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import sympy
from sympy.polys.domains import QQ
from sympy.polys.domains.domain import Domain
from sympy.polys.orderings import lex
from sympy.polys.rings import PolyElement, PolyRing

from .errors import InvalidInputError, InvalidTypeError
from .exact import to_domain

__all__ = ["LaurentRing", "LaurentPoly", "laurent_ring", "per_axis"]

Monomial = tuple[int, ...]


def _axis_int(value: Any, name: str) -> int:
    """One integer: an int, or a float that is exactly an integer (``2.0``); anything else
    (``1.7``, a bool, a string) is refused, as PyTorch refuses it."""
    if isinstance(value, (bool, np.bool_)):
        raise InvalidTypeError(f"{name} must be integers, got the bool {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, (float, np.floating)):
        raise InvalidInputError(f"{name} must be integers, got {value!r} (it would be truncated)")
    raise InvalidTypeError(f"{name} must be integers, got {value!r}")


def per_axis(value: int | Sequence[int], ngens: int, name: str) -> tuple[int, ...]:
    """Broadcast an int to one value per axis, or check a per-axis sequence's length; every
    value must be an integer (an integral float like ``2.0`` is accepted)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return (_axis_int(value, name),) * ngens
    values = tuple(_axis_int(v, name) for v in value)
    if len(values) != ngens:
        raise InvalidInputError(f"{name} needs {ngens} values (one per axis), got {len(values)}")
    return values


class LaurentRing:
    """The ring ``D[z1, 1/z1, ..., zn, 1/zn]`` of Laurent polynomials over the domain ``D``.

    >>> from sympy import QQ
    >>> R, z1, z2 = laurent_ring("z1 z2", QQ)
    >>> (z1**-1 + 2*z2) * z1
    1 + 2*z1*z2
    """

    def __init__(self, symbols: str | Sequence[str | sympy.Symbol], domain: Domain = QQ):
        if isinstance(symbols, str):
            symbols = symbols.replace(",", " ").split()
        elif isinstance(symbols, sympy.Symbol):
            symbols = (symbols,)
        elif isinstance(symbols, (bytes, dict)) or not hasattr(symbols, "__iter__"):
            raise InvalidTypeError(f"symbols must be a string of names like 'z1 z2' or a "
                                   f"sequence of names or sympy Symbols, got {symbols!r:.60}")
        symbols = tuple(sympy.Symbol(s) if isinstance(s, str) else s for s in symbols)
        if not all(isinstance(s, sympy.Symbol) for s in symbols):
            raise InvalidTypeError(f"shift variables must be names or sympy Symbols, got "
                                   f"{symbols!r:.80}")
        if not symbols:
            raise InvalidInputError("a Laurent ring needs at least one shift variable")
        if len(set(symbols)) != len(symbols):
            raise InvalidInputError(f"shift variables must be distinct, got {symbols}")
        if not all(isinstance(s, sympy.Symbol) for s in symbols):
            raise InvalidTypeError(f"shift variables must be names or sympy Symbols, got {symbols}")
        if not isinstance(domain, Domain):
            raise InvalidTypeError(f"domain must be a sympy Domain such as QQ, got {domain!r}")
        if set(symbols) & set(getattr(domain, "symbols", ()) or ()):
            raise InvalidInputError(f"the coefficient domain {domain} uses a shift variable of {symbols}")
        self.poly_ring = PolyRing(symbols, domain, lex)
        self.symbols: tuple[sympy.Symbol, ...] = symbols
        self.domain: Domain = domain
        self.ngens: int = len(symbols)

    # -- identity -------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, LaurentRing) and self.symbols == other.symbols \
            and self.domain == other.domain

    def __hash__(self) -> int:
        return hash((self.symbols, self.domain))

    def __repr__(self) -> str:
        names = ", ".join(f"{s}, 1/{s}" for s in self.symbols)
        return f"{self.domain}[{names}]"

    # -- element factories ----------------------------------------------------------------
    def _element(self, poly: PolyElement, offset: Monomial) -> "LaurentPoly":
        return LaurentPoly._normalised(self, poly, offset)

    @cached_property
    def zero(self) -> "LaurentPoly":
        return LaurentPoly(self, self.poly_ring.zero, (0,) * self.ngens)

    @cached_property
    def one(self) -> "LaurentPoly":
        return LaurentPoly(self, self.poly_ring.one, (0,) * self.ngens)

    @cached_property
    def gens(self) -> tuple["LaurentPoly", ...]:
        return tuple(LaurentPoly(self, g, (0,) * self.ngens) for g in self.poly_ring.gens)

    def ground(self, value: Any) -> "LaurentPoly":
        """The constant polynomial ``value`` (converted exactly into the domain)."""
        return LaurentPoly(self, self.poly_ring.ground_new(to_domain(value, self.domain)),
                           (0,) * self.ngens)

    def monomial(self, exponents: int | Sequence[int], coefficient: Any = 1) -> "LaurentPoly":
        """``coefficient * z^exponents``."""
        exponents = per_axis(exponents, self.ngens, "exponents")
        return self.from_dict({exponents: coefficient})

    def from_dict(self, terms: Mapping[Sequence[int], Any]) -> "LaurentPoly":
        """Build ``sum_e c_e z^e`` from ``{e: c_e}``; equal exponents add, zeros drop."""
        if not terms:
            return self.zero
        domain = self.domain
        exps = []
        for e in terms:
            e = (e,) if isinstance(e, (int, np.integer)) else tuple(e)
            if not all(isinstance(x, (int, np.integer)) or (hasattr(x, "is_Integer") and x.is_Integer)
                       for x in e):
                raise InvalidInputError(f"exponents must be integers, got {e}")
            exps.append(tuple(int(x) for x in e))
        for e in exps:
            if len(e) != self.ngens:
                raise InvalidInputError(f"exponent {e} has {len(e)} entries, the ring has {self.ngens} variables")
        offset = tuple(min(col) for col in zip(*exps))
        shifted: dict[Monomial, Any] = {}
        for e, c in zip(exps, terms.values()):
            m = tuple(a - o for a, o in zip(e, offset))
            shifted[m] = shifted.get(m, domain.zero) + to_domain(c, domain)
        return self._element(self.poly_ring.from_dict(shifted), offset)

    def from_array(self, coefficients: Any, origin: int | Sequence[int] = 0) -> "LaurentPoly":
        """From a dense n-d array ``a`` whose index ``origin`` holds the ``z^0`` coefficient:
        ``f(z) = sum_idx a[idx] z^(idx - origin)``.  Floats convert exactly in exact domains."""
        array = np.asarray(coefficients)
        if array.ndim != self.ngens:
            raise InvalidInputError(f"array has {array.ndim} axes, the ring has {self.ngens} variables")
        origin = per_axis(origin, self.ngens, "origin")
        terms = {}
        for index in np.ndindex(array.shape):
            value = array[index]
            if value != 0:
                terms[tuple(i - o for i, o in zip(index, origin))] = value
        return self.from_dict(terms)

    def from_sympy(self, expr: Any) -> "LaurentPoly":
        """Convert a sympy expression in the shift variables (negative powers allowed)."""
        expr = sympy.sympify(expr)
        numerator, denominator = sympy.fraction(sympy.together(expr))
        terms: dict[Monomial, Any] = {}
        den = sympy.Poly(denominator, *self.symbols)
        if not den.is_monomial:
            raise InvalidInputError(f"{expr} is not a Laurent polynomial in {self.symbols}")
        (den_exp, den_coeff), = den.terms()
        for exp, coeff in sympy.Poly(numerator, *self.symbols).terms():
            key = tuple(a - b for a, b in zip(exp, den_exp))
            terms[key] = coeff / den_coeff
        return self.from_dict(terms)

    def __call__(self, value: Any) -> "LaurentPoly":
        if isinstance(value, LaurentPoly):
            return value.set_ring(self)
        if isinstance(value, sympy.Basic) and value.free_symbols & set(self.symbols):
            return self.from_sympy(value)
        return self.ground(value)

    # -- rings of different domains -------------------------------------------------------
    def unify(self, other: "LaurentRing") -> "LaurentRing":
        """The smallest ring holding both (same variables, unified coefficient domain)."""
        if self == other:
            return self
        if self.symbols != other.symbols:
            raise InvalidInputError(f"cannot combine Laurent rings in {self.symbols} and {other.symbols}")
        return LaurentRing(self.symbols, self.domain.unify(other.domain))

    def with_domain(self, domain: Domain) -> "LaurentRing":
        return self if domain == self.domain else LaurentRing(self.symbols, domain)


def laurent_ring(symbols: str | Sequence[str], domain: Domain = QQ
                 ) -> tuple[LaurentRing, ...]:
    """``R, z1, z2 = laurent_ring("z1 z2", QQ)`` — the ring and its generators, like
    sympy's ``ring``."""
    R = LaurentRing(symbols, domain)
    return (R, *R.gens)


class LaurentPoly:
    """An element ``z^offset * poly(z)`` of a :class:`LaurentRing` (immutable)."""

    __slots__ = ("ring", "poly", "offset", "__weakref__")

    def __init__(self, ring: LaurentRing, poly: PolyElement, offset: Monomial):
        self.ring = ring
        self.poly = poly
        self.offset = offset

    @classmethod
    def _normalised(cls, ring: LaurentRing, poly: PolyElement, offset: Monomial) -> "LaurentPoly":
        """Move common factors ``z_i^k`` of ``poly`` into the offset (zero has offset 0)."""
        if not poly:
            return ring.zero
        low = tuple(min(col) for col in zip(*poly.keys()))
        if any(low):
            poly = poly.ring.from_dict({tuple(a - b for a, b in zip(m, low)): c
                                        for m, c in poly.items()})
            offset = tuple(o + b for o, b in zip(offset, low))
        return cls(ring, poly, offset)

    # -- inspection -----------------------------------------------------------------------
    def terms(self) -> list[tuple[Monomial, Any]]:
        """``[(e, c_e)]`` with the true (possibly negative) exponents, sorted by exponent."""
        off = self.offset
        return sorted((tuple(a + o for a, o in zip(m, off)), c) for m, c in self.poly.items())

    def iterterms(self) -> Iterator[tuple[Monomial, Any]]:
        off = self.offset
        for m, c in self.poly.items():
            yield tuple(a + o for a, o in zip(m, off)), c

    def to_dict(self) -> dict[Monomial, Any]:
        return dict(self.iterterms())

    def coeff(self, exponents: int | Sequence[int]) -> Any:
        """The coefficient of ``z^exponents`` (a domain element, zero if absent)."""
        e = per_axis(exponents, self.ring.ngens, "exponents")
        m = tuple(a - o for a, o in zip(e, self.offset))
        if any(x < 0 for x in m):
            return self.ring.domain.zero
        return self.poly.get(m, self.ring.domain.zero)

    def __len__(self) -> int:
        return len(self.poly)

    def __bool__(self) -> bool:
        return bool(self.poly)

    @property
    def is_zero(self) -> bool:
        return not self.poly

    @property
    def is_monomial(self) -> bool:
        return len(self.poly) == 1

    def support(self) -> tuple[Monomial, Monomial] | None:
        """The support box ``(low, high)``: per axis the least and greatest exponent with a
        nonzero coefficient; ``None`` for the zero polynomial."""
        if not self.poly:
            return None
        high = tuple(max(col) for col in zip(*self.poly.keys()))
        return self.offset, tuple(h + o for h, o in zip(high, self.offset))

    # -- ring plumbing --------------------------------------------------------------------
    def _coerce(self, other: Any) -> "LaurentPoly":
        if isinstance(other, LaurentPoly):
            if other.ring == self.ring:
                return other
            return other.set_ring(self.ring.unify(other.ring))
        return self.ring(other)

    def _binary(self, other: Any) -> tuple["LaurentPoly", "LaurentPoly"] | None:
        """Both operands in one ring; ``None`` (-> NotImplemented) for foreign types.
        Values of a supported type that cannot be used (NaN, other variables) raise."""
        try:
            other = self._coerce(other)
        except TypeError:
            return None
        if other.ring != self.ring:
            return self.set_ring(other.ring), other
        return self, other

    def set_ring(self, ring: LaurentRing) -> "LaurentPoly":
        """The same polynomial in another ring with the same variables (domain converted)."""
        if ring == self.ring:
            return self
        if ring.symbols != self.ring.symbols:
            raise InvalidInputError(f"cannot move a polynomial in {self.ring.symbols} to {ring.symbols}")
        src, dst = self.ring.domain, ring.domain
        poly = ring.poly_ring.from_dict({m: dst.convert_from(c, src) for m, c in self.poly.items()})
        return LaurentPoly._normalised(ring, poly, self.offset)

    # -- arithmetic -----------------------------------------------------------------------
    def __add__(self, other: Any) -> "LaurentPoly":
        pair = self._binary(other)
        if pair is None:
            return NotImplemented
        a, b = pair
        if not a.poly:
            return b
        if not b.poly:
            return a
        low = tuple(min(x, y) for x, y in zip(a.offset, b.offset))
        pa = a.poly.mul_monom(tuple(x - l for x, l in zip(a.offset, low))) if a.offset != low else a.poly
        pb = b.poly.mul_monom(tuple(x - l for x, l in zip(b.offset, low))) if b.offset != low else b.poly
        return LaurentPoly._normalised(a.ring, pa + pb, low)

    __radd__ = __add__

    def __neg__(self) -> "LaurentPoly":
        return LaurentPoly(self.ring, -self.poly, self.offset)

    def __pos__(self) -> "LaurentPoly":
        return self

    def __sub__(self, other: Any) -> "LaurentPoly":
        pair = self._binary(other)
        if pair is None:
            return NotImplemented
        return pair[0] + (-pair[1])

    def __rsub__(self, other: Any) -> "LaurentPoly":
        pair = self._binary(other)
        if pair is None:
            return NotImplemented
        return pair[1] + (-pair[0])

    def __mul__(self, other: Any) -> "LaurentPoly":
        pair = self._binary(other)
        if pair is None:
            return NotImplemented
        a, b = pair
        offset = tuple(x + y for x, y in zip(a.offset, b.offset))
        return LaurentPoly._normalised(a.ring, a.poly * b.poly, offset)

    __rmul__ = __mul__

    def __pow__(self, n: int) -> "LaurentPoly":
        if not isinstance(n, (int, np.integer)):
            return NotImplemented
        n = int(n)
        if n == 0:
            return self.ring.one  # f**0 = 1 for every f, also 0**0 (as sympy's Poly)
        if n > 0:
            return LaurentPoly._normalised(self.ring, self.poly ** n,
                                           tuple(o * n for o in self.offset))
        if not self.is_monomial:
            raise InvalidInputError(f"only monomials have inverses among Laurent polynomials, not {self}")
        (m, c), = self.poly.items()
        inverse_coeff = self.ring.domain.quo(self.ring.domain.one, c)
        if not self.ring.domain.is_Field and inverse_coeff * c != self.ring.domain.one:
            raise InvalidInputError(f"coefficient {c} is not invertible in {self.ring.domain}")
        exps = tuple(-(a + o) for a, o in zip(m, self.offset))
        return self.ring.from_dict({exps: inverse_coeff}) ** (-n)

    def __truediv__(self, other: Any) -> "LaurentPoly":
        """Division by a monomial (``f / z1``) or by a nonzero scalar of the field."""
        pair = self._binary(other)
        if pair is None:
            return NotImplemented
        a, b = pair
        if not b.is_monomial:
            raise InvalidInputError(f"can only divide by a monomial or a scalar, not by {b}")
        return a * b ** -1

    def __rtruediv__(self, other: Any) -> "LaurentPoly":
        pair = self._binary(other)
        if pair is None:
            return NotImplemented
        return pair[1] / pair[0]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LaurentPoly):
            if other.ring != self.ring:
                try:
                    pair = self._binary(other)
                except ValueError:
                    return False
                if pair is None:
                    return False
                a, b = pair
                return a.offset == b.offset and a.poly == b.poly
            return self.offset == other.offset and self.poly == other.poly
        pair = self._binary(other)
        if pair is None:
            return NotImplemented
        return pair[0] == pair[1]

    def __hash__(self) -> int:
        """Consistent with ``==`` across domains: hashes the sympy values of the terms, and
        a constant like the number it equals."""
        to_sympy = self.ring.domain.to_sympy
        if not self.poly:
            return hash(0)
        if len(self.poly) == 1 and not any(self.offset) and self.ring.poly_ring.zero_monom in self.poly:
            return hash(to_sympy(self.poly[self.ring.poly_ring.zero_monom]))
        return hash((self.offset, frozenset((m, to_sympy(c)) for m, c in self.poly.items())))

    # -- maps of the variables ------------------------------------------------------------
    def subs_power(self, powers: int | Sequence[int]) -> "LaurentPoly":
        """``f(z1^s1, ..., zn^sn)`` for integer powers ``s`` (``s = -1`` reflects an axis)."""
        powers = per_axis(powers, self.ring.ngens, "powers")
        if all(p == 1 for p in powers):
            return self
        if any(p == 0 for p in powers):
            raise InvalidInputError("z -> z^0 is not a substitution of shift variables (use evaluate)")
        return self.ring.from_dict({tuple(a * p for a, p in zip(e, powers)): c
                                    for e, c in self.iterterms()})

    def reflect(self) -> "LaurentPoly":
        """``f(1/z)``: reverses every axis (the kernel of the adjoint convolution)."""
        return self.subs_power(-1)

    def shift(self, exponents: int | Sequence[int]) -> "LaurentPoly":
        """``z^exponents * f(z)``."""
        e = per_axis(exponents, self.ring.ngens, "exponents")
        if not self.poly:
            return self
        return LaurentPoly(self.ring, self.poly, tuple(a + b for a, b in zip(self.offset, e)))

    def downsample(self, factors: int | Sequence[int], phase: int | Sequence[int] = 0
                   ) -> "LaurentPoly":
        """Polyphase component ``f_r(z) = sum_j c_{s*j + r} z^j`` (``r = phase``, ``s = factors``);
        ``phase = 0`` is plain down-sampling ``down_s f``.  ``f(z) = sum_r z^r f_r(z^s)``."""
        s = per_axis(factors, self.ring.ngens, "factors")
        r = per_axis(phase, self.ring.ngens, "phase")
        if any(x <= 0 for x in s):
            raise InvalidInputError(f"down-sampling factors must be positive, got {s}")
        return self.ring.from_dict({tuple((a - b) // f for a, b, f in zip(e, r, s)): c
                                    for e, c in self.iterterms()
                                    if all((a - b) % f == 0 for a, b, f in zip(e, r, s))})

    def polyphase(self, factors: int | Sequence[int]) -> dict[Monomial, "LaurentPoly"]:
        """All polyphase components ``{r: f_r}`` for ``0 <= r_i < s_i``."""
        s = per_axis(factors, self.ring.ngens, "factors")
        return {r: self.downsample(s, r) for r in np.ndindex(*s)}

    def mod_circular(self, periods: int | Sequence[int]) -> "LaurentPoly":
        """The remainder modulo ``(z1^n1 - 1, ..., zk^nk - 1)``: exponents reduced into
        ``[0, n_i)``.  This is circular (periodic) convolution on an ``n``-periodic grid."""
        n = per_axis(periods, self.ring.ngens, "periods")
        if any(x <= 0 for x in n):
            raise InvalidInputError(f"periods must be positive, got {n}")
        terms: dict[Monomial, Any] = {}
        zero = self.ring.domain.zero
        for e, c in self.iterterms():
            key = tuple(a % p for a, p in zip(e, n))
            terms[key] = terms.get(key, zero) + c
        return self.ring.from_dict(terms)

    # -- evaluation -----------------------------------------------------------------------
    def evaluate(self, point: Sequence[Any]) -> Any:
        """``f(point)``.  Exact (a sympy number or expression) when the point is exact;
        a Python ``complex`` when every coordinate is a Python/numpy float or complex
        (e.g. ``e^{i theta}`` on the unit torus) and the coefficients are numbers."""
        if len(point) != self.ring.ngens:
            raise InvalidInputError(f"point has {len(point)} coordinates, the ring has {self.ring.ngens}")
        low = self.support()[0] if self.poly else (0,) * self.ring.ngens
        for axis, (v, l) in enumerate(zip(point, low)):
            if l < 0 and v == 0:
                raise InvalidInputError(f"{self} has a pole at {self.ring.symbols[axis]} = 0")
        numeric = all(isinstance(v, (float, complex, np.floating, np.complexfloating))
                      for v in point)
        to_sympy = self.ring.domain.to_sympy
        if numeric and not self.free_symbols:
            values = [complex(v) for v in point]
            total = 0j
            for e, c in self.iterterms():
                term = complex(to_sympy(c))
                for v, a in zip(values, e):
                    term *= v ** a
                total += term
            return total
        values = [sympy.sympify(v) for v in point]
        total = sympy.Integer(0)
        for e, c in self.iterterms():
            term = to_sympy(c)
            for v, a in zip(values, e):
                term *= v ** a
            total += term
        return sympy.expand(total) if self.free_symbols else total

    def at_one(self) -> Any:
        """``f(1, ..., 1)``, the sum of the coefficients, as a domain element."""
        total = self.ring.domain.zero
        for c in self.poly.values():
            total += c
        return total

    # -- symbolic coefficients ------------------------------------------------------------
    @property
    def free_symbols(self) -> set[sympy.Symbol]:
        """Symbols occurring in the coefficients (not the shift variables)."""
        domain = self.ring.domain
        if not getattr(domain, "is_PolynomialRing", False) and not getattr(domain, "is_FractionField", False) \
                and not getattr(domain, "is_EX", False) and not getattr(domain, "is_EXRAW", False):
            return set()
        out: set[sympy.Symbol] = set()
        for c in self.poly.values():
            out |= domain.to_sympy(c).free_symbols
        return out

    def map_coefficients(self, function: Any, ring: LaurentRing) -> "LaurentPoly":
        """Apply ``function`` (domain element -> value) to every coefficient, landing in ``ring``."""
        return ring.from_dict({e: function(c) for e, c in self.iterterms()})

    # -- conversions ----------------------------------------------------------------------
    def as_expr(self) -> sympy.Expr:
        """The sympy expression ``sum_e c_e z^e``."""
        to_sympy = self.ring.domain.to_sympy
        return sympy.Add(*[to_sympy(c) * sympy.Mul(*[s ** a for s, a in zip(self.ring.symbols, e)])
                           for e, c in self.terms()])

    def to_array(self, box: tuple[Sequence[int], Sequence[int]] | None = None,
                 dtype: Any = object) -> tuple[np.ndarray, Monomial]:
        """Dense coefficients ``a`` and the ``origin`` index of ``z^0``:
        ``a[e - low] = c_e`` over the box ``[low, high]`` (default: the support box).

        ``dtype=object`` keeps exact sympy numbers; ``dtype=float`` rounds once."""
        if box is None:
            box = self.support() or ((0,) * self.ring.ngens, (0,) * self.ring.ngens)
        low, high = (tuple(int(v) for v in b) for b in box)
        shape = tuple(h - l + 1 for l, h in zip(low, high))
        if any(s <= 0 for s in shape):
            raise InvalidInputError(f"empty box {box}")
        to_sympy = self.ring.domain.to_sympy
        array = np.zeros(shape, dtype=object)
        array[...] = sympy.Integer(0)
        for e, c in self.iterterms():
            index = tuple(a - l for a, l in zip(e, low))
            if any(i < 0 or i >= s for i, s in zip(index, shape)):
                raise InvalidInputError(f"term z^{e} lies outside the box {box}")
            array[index] = to_sympy(c)
        if dtype is not object:
            array = array.astype(dtype)
        return array, tuple(-l for l in low)

    def __str__(self) -> str:
        if not self.poly:
            return "0"
        return str(self.as_expr())

    def __repr__(self) -> str:
        return str(self)

    def _repr_latex_(self) -> str:
        return f"$\\displaystyle {self.latex()}$"

    def latex(self) -> str:
        """Terms by descending exponent, each symbolic coefficient in parentheses:
        ``(a b + c) z_1^{2} + \\dots``."""
        if not self.poly:
            return "0"
        to_sympy = self.ring.domain.to_sympy
        names = [sympy.latex(s) for s in self.ring.symbols]
        parts = []
        for e, c in sorted(self.iterterms(), key=lambda t: tuple(-x for x in t[0])):
            coeff = to_sympy(c)
            monomial = " ".join(name if a == 1 else f"{name}^{{{a}}}"
                                for name, a in zip(names, e) if a != 0) or 1
            if monomial == 1:
                text = sympy.latex(coeff)
            elif coeff == 1:
                text = monomial
            elif coeff == -1:
                text = "-" + monomial
            elif coeff.is_Add:
                text = f"\\left({sympy.latex(coeff)}\\right) {monomial}"
            else:
                text = f"{sympy.latex(coeff)} {monomial}"
            parts.append(text)
        out = parts[0]
        for text in parts[1:]:
            out += f" {text}" if text.startswith("-") else f" + {text}"
        return out.replace("+ -", "- ")
