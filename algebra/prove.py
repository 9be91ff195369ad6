"""Proof checking for collapse identities, with symbolic weights and symbolic inputs.

``prove(lhs, rhs)`` compares two operators (or two networks) and ``prove_collapse(net,
input_shape)`` compares a network with its collapsed operator.  Each side is evaluated
independently:

* a *network* by explicit index sums with PyTorch semantics (:mod:`algebra.affine_map`),
  giving ``y = W x + B`` as exact linear forms in the input symbols ``x_{c,j}``;
* an *operator* ``down_s K up_u + b`` by reading its coefficients:
  ``y[o, i] = b_o + sum_{c, j} [z^(s i - u j)] K_{o,c} · x[c, j]`` (periodic: exponents
  taken modulo ``n``), with no polynomial multiplication;
* two operators with equal rates also by their canonical forms: the expanded difference
  of the Laurent matrices, coefficient by coefficient in the weight symbols.

The answer is a :class:`Certificate` (what was compared, the number of terms of the
expanded difference — zero) or a :class:`Counterexample` (a concrete weight assignment, a
unit impulse input and the output position where the two sides differ).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import sympy
from sympy.polys.domains.domain import Domain

from .errors import InvalidInputError, InvalidTypeError
from .affine_map import flat_index, collapse_affine
from .collapse import collapse
from .network import Network
from .operator import ConvOperator
from .validate import bool_arg, describe, instance_arg, optional_str_arg, shape_arg

__all__ = ["Certificate", "Counterexample", "prove", "prove_collapse", "operator_rows"]


@dataclass
class Certificate:
    """A checked identity: ``compared`` items agreed exactly; the expanded difference has
    ``difference_terms == 0`` terms."""
    claim: str
    method: str
    domain: str
    weight_symbols: int
    compared: int
    difference_terms: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return True

    def __str__(self) -> str:
        notes = "".join(f"\n  - {n}" for n in self.notes)
        symbols = "no weight symbols" if not self.weight_symbols else \
            f"{self.weight_symbols} weight symbol{'s' if self.weight_symbols > 1 else ''}"
        domain = self.domain if len(self.domain) <= 60 else self.domain[:57] + "...]"
        return (f"PROVED: {self.claim}\n  method: {self.method}\n  domain: {domain} "
                f"({symbols})\n  compared: {self.compared} "
                f"exact entries; expanded difference: {self.difference_terms} terms "
                f"({self.seconds:.3f} s){notes}")

    __repr__ = __str__


@dataclass
class Counterexample:
    """A refuted identity: under ``substitution`` (weight values), the unit impulse at input
    ``input_index`` gives ``lhs_value != rhs_value`` at output ``output_index`` (for
    canonical-form comparisons, the kernel entry and exponent, see ``location``)."""
    claim: str
    method: str
    location: str
    output_index: tuple[int, ...]
    input_index: tuple[int, ...] | None
    lhs_value: Any
    rhs_value: Any
    symbolic_difference: Any
    substitution: dict[Any, Any]
    mismatches: int
    mismatch_unit: str = "mismatching entries"

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        subs = "" if not self.substitution else \
            f"\n  with weights {dict(list(self.substitution.items())[:8])}" + \
            (" ..." if len(self.substitution) > 8 else "")
        return (f"REFUTED: {self.claim}\n  method: {self.method}\n  {self.mismatches} "
                f"{self.mismatch_unit}; first: {self.location}\n"
                f"  lhs - rhs = {self.symbolic_difference}{subs}\n  lhs = {self.lhs_value}, "
                f"rhs = {self.rhs_value}")

    __repr__ = __str__


def operator_rows(op: ConvOperator, input_shape: Sequence[int], output_shape: Sequence[int],
                  *, periodic: bool = False, positions: np.ndarray | None = None
                  ) -> dict[int, dict[int, Any]]:
    """Rows of the operator's matrix on a fixed size, by reading coefficients:
    row ``(o, i)`` has entry ``[z^(s i - u j)] K_{o,c}`` at column ``(c, j)``.
    ``positions`` (a boolean mask over the output window) limits the rows."""
    input_shape, output_shape = tuple(input_shape), tuple(output_shape)
    n = input_shape[1:]
    row_of, col_of = flat_index(output_shape), flat_index(input_shape)
    dom = op.ring.domain
    rows: dict[int, dict[int, Any]] = {}
    entries = [[list(op.matrix[o][c].iterterms()) for c in range(op.in_channels)]
               for o in range(op.out_channels)]
    for i in np.ndindex(*output_shape[1:]):
        if positions is not None and not positions[i]:
            continue
        for o in range(op.out_channels):
            row: dict[int, Any] = {}
            for c in range(op.in_channels):
                for e, coeff in entries[o][c]:
                    j = []
                    for ax, (ia, ea) in enumerate(zip(i, e)):
                        num = op.stride[ax] * ia - ea
                        if num % op.upsample[ax]:
                            break
                        ja = num // op.upsample[ax]
                        if periodic:
                            ja %= n[ax]
                        elif not 0 <= ja < n[ax]:
                            break
                        j.append(ja)
                    else:
                        col = col_of(c, tuple(j))
                        row[col] = row.get(col, dom.zero) + coeff
            rows[row_of(o, i)] = {k: v for k, v in row.items() if v}
    return rows


def _terms(value: Any, domain: Domain) -> int:
    """Number of terms of a domain element when expanded (0 for zero)."""
    if not value:
        return 0
    return len(value) if hasattr(value, "terms") and hasattr(value, "ring") else 1


def _symbols(domain: Domain) -> list[sympy.Symbol]:
    return list(getattr(domain, "symbols", ()) or ())


def _witness(difference: Any, domain: Domain, seed: int = 0) -> dict[Any, Any]:
    """Small integer values for every weight symbol such that the symbolic ``difference``
    is nonzero (empty when there are no symbols)."""
    symbols = _symbols(domain)
    if not symbols:
        return {}
    expr = domain.to_sympy(difference)
    rng = random.Random(seed)
    values: dict[Any, Any] = {}
    for _ in range(100):
        values = {s: sympy.Integer(rng.randint(-3, 3) or 1) for s in symbols}
        if expr.xreplace(values) != 0:
            return values
    return values


def _compare_rows(claim: str, method: str, domain: Domain,
                  lhs_rows: dict[int, dict[int, Any]], rhs_rows: dict[int, dict[int, Any]],
                  lhs_bias: dict[int, Any], rhs_bias: dict[int, Any],
                  output_shape: tuple[int, ...], input_shape: tuple[int, ...], rows: list[int],
                  start: float, notes: list[str]) -> Certificate | Counterexample:
    first = None
    mismatches = compared = 0
    for r in rows:
        left, right = lhs_rows.get(r, {}), rhs_rows.get(r, {})
        for col in set(left) | set(right):
            compared += 1
            diff = left.get(col, domain.zero) - right.get(col, domain.zero)
            if diff:
                mismatches += 1
                if first is None:
                    first = (r, col, left.get(col, domain.zero), right.get(col, domain.zero), diff)
        compared += 1
        diff = lhs_bias.get(r, domain.zero) - rhs_bias.get(r, domain.zero)
        if diff:
            mismatches += 1
            if first is None:
                first = (r, None, lhs_bias.get(r, domain.zero), rhs_bias.get(r, domain.zero), diff)
    if first is None:
        return Certificate(claim, method, str(domain), len(_symbols(domain)), compared, 0,
                           time.perf_counter() - start, notes)
    r, col, left, right, diff = first
    substitution = _witness(diff, domain)
    to_sympy = domain.to_sympy
    lhs_value = to_sympy(left).xreplace(substitution)
    rhs_value = to_sympy(right).xreplace(substitution)
    out_index = tuple(int(v) for v in np.unravel_index(r, output_shape))
    in_index = None if col is None else tuple(int(v) for v in np.unravel_index(col, input_shape))
    location = (f"output {out_index}, " + ("constant term (zero input)" if in_index is None
                else f"coefficient of input {in_index} (its unit impulse)"))
    return Counterexample(claim, method, location, out_index, in_index, lhs_value, rhs_value,
                          to_sympy(diff), substitution, mismatches)


def _operator_bias_rows(op: ConvOperator, output_shape: tuple[int, ...]) -> dict[int, Any]:
    plane = int(np.prod(output_shape[1:]))
    return {o * plane + k: op.bias[o] for o in range(op.out_channels) for k in range(plane)
            if op.bias[o]}


def _prove_operators(lhs: ConvOperator, rhs: ConvOperator, claim: str,
                     input_shape: Sequence[int] | None, periodic: bool) -> Certificate | Counterexample:
    start = time.perf_counter()
    lhs, rhs = lhs._unified(rhs)
    if lhs.shape != rhs.shape:
        raise InvalidInputError(f"the two sides have shapes {lhs.shape} and {rhs.shape}")
    dom = lhs.ring.domain
    notes: list[str] = []
    if lhs.stride == rhs.stride and lhs.upsample == rhs.upsample:
        terms = 0
        first = None
        compared = 0
        for o in range(lhs.out_channels):
            for c in range(lhs.in_channels):
                diff = lhs.matrix[o][c] - rhs.matrix[o][c]
                compared += len(lhs.matrix[o][c]) + len(rhs.matrix[o][c])
                for e, coeff in diff.iterterms():
                    terms += _terms(coeff, dom)
                    if first is None:
                        first = ((o, c), e, lhs.matrix[o][c].coeff(e), rhs.matrix[o][c].coeff(e), coeff)
        for o, (a, b) in enumerate(zip(lhs.bias, rhs.bias)):
            compared += 1
            if a - b:
                terms += _terms(a - b, dom)
                if first is None:
                    first = ((o,), None, a, b, a - b)
        if first is not None:
            (index, e, left, right, diff) = first
            substitution = _witness(diff, dom)
            to_sympy = dom.to_sympy
            where = f"bias entry {index[0]}" if e is None else \
                f"coefficient of z^{tuple(e)} in kernel entry {index}"
            return Counterexample(claim, "canonical Laurent matrices (expanded difference)",
                                  where, index + (() if e is None else tuple(e)), None,
                                  to_sympy(left).xreplace(substitution),
                                  to_sympy(right).xreplace(substitution), to_sympy(diff),
                                  substitution, terms, "terms in the expanded difference")
        notes.append("canonical forms: K_lhs - K_rhs = 0 and b_lhs - b_rhs = 0 coefficientwise")
        if input_shape is None:
            return Certificate(claim, "canonical Laurent matrices (expanded difference)",
                               str(dom), len(_symbols(dom)), compared, 0,
                               time.perf_counter() - start, notes)
    elif input_shape is None:
        raise InvalidInputError("the two sides have different rates; give input_shape to compare "
                                "them as maps on a finite signal")
    input_shape = _check_signal_shape(lhs, input_shape, periodic)
    out = _common_output_shape(lhs, rhs, input_shape, periodic)
    rows = list(range(int(np.prod(out))))
    result = _compare_rows(claim, "coefficient reading on a symbolic input of shape "
                           f"{input_shape}" + (" (periodic)" if periodic else ""), dom,
                           operator_rows(lhs, input_shape, out, periodic=periodic),
                           operator_rows(rhs, input_shape, out, periodic=periodic),
                           _operator_bias_rows(lhs, out), _operator_bias_rows(rhs, out),
                           out, input_shape, rows, start, notes)
    return result


def _check_signal_shape(op: ConvOperator, input_shape: Sequence[int], periodic: bool
                        ) -> tuple[int, ...]:
    """``(C_in, *n)`` for the operator's channels and dimension; periodic needs ``s | n``."""
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != op.ndim + 1 or shape[0] != op.in_channels or min(shape) < 1:
        raise InvalidInputError(f"input_shape must be (C_in={op.in_channels}, {op.ndim} sizes), got {shape}")
    if periodic and (any(n % s for n, s in zip(shape[1:], op.stride)) or any(u > 1 for u in op.upsample)):
        raise InvalidInputError(f"a periodic comparison needs strides {op.stride} dividing the size "
                                f"{shape[1:]} and no up-sampling")
    return shape


def _common_output_shape(lhs: ConvOperator, rhs: ConvOperator, input_shape: tuple[int, ...],
                         periodic: bool) -> tuple[int, ...]:
    """Output positions ``i >= 0`` whose taps can reach the input window, for both sides."""
    n = input_shape[1:]
    if periodic:
        return (lhs.out_channels, *(size // s for size, s in zip(n, lhs.stride)))
    sizes = []
    for axis, size in enumerate(n):
        high = 0
        for op in (lhs, rhs):
            box = op.support()
            top = (box[1][axis] if box else 0) + op.upsample[axis] * (size - 1)
            high = max(high, top // op.stride[axis] + 1)
        sizes.append(max(high, 1))
    return (lhs.out_channels, *sizes)


def prove(lhs: ConvOperator | Network, rhs: ConvOperator | Network, *,
          input_shape: Sequence[int] | None = None, periodic: bool = False,
          claim: str | None = None) -> Certificate | Counterexample:
    """Check ``lhs == rhs``.

    Two operators: their canonical Laurent matrices are compared (expanded difference), and,
    with ``input_shape``, also their maps on a symbolic signal of that shape (coefficient
    reading; ``periodic`` for ``n``-periodic signals).  Two networks: their exact affine
    maps by explicit index sums on ``input_shape``."""
    claim = optional_str_arg(claim, "claim") or "lhs = rhs"
    periodic = bool_arg(periodic, "periodic")
    if input_shape is not None:
        input_shape = shape_arg(input_shape, "input_shape")
    if isinstance(lhs, ConvOperator) and isinstance(rhs, ConvOperator):
        return _prove_operators(lhs, rhs, claim, input_shape, periodic)
    if isinstance(lhs, Network) and isinstance(rhs, Network):
        if input_shape is None:
            raise InvalidInputError("comparing two networks needs input_shape")
        start = time.perf_counter()
        left, right = collapse_affine(lhs, input_shape), collapse_affine(rhs, input_shape)
        if left.output_shape != right.output_shape:
            raise InvalidInputError(f"the networks give shapes {left.output_shape} and {right.output_shape}")
        domain = left.domain.unify(right.domain)
        lw, rw = left.W.convert_to(domain), right.W.convert_to(domain)
        lb = {r: domain.convert_from(b, left.domain) for r, b in enumerate(left.B) if b}
        rb = {r: domain.convert_from(b, right.domain) for r, b in enumerate(right.B) if b}
        return _compare_rows(claim, f"explicit index sums of both networks on a symbolic "
                             f"input of shape {tuple(input_shape)}", domain,
                             lw.rep.to_dod(), rw.rep.to_dod(), lb, rb, left.output_shape,
                             left.input_shape, list(range(lw.shape[0])), start, [])
    raise InvalidTypeError(f"prove compares two ConvOperators or two Networks, got lhs "
                           f"{describe(lhs)} and rhs {describe(rhs)}; use prove_collapse for "
                           "a network against its collapsed operator")


def prove_collapse(network: Network, input_shape: Sequence[int], *,
                   operator: ConvOperator | None = None, region: np.ndarray | None = None,
                   periodic: bool | None = None, claim: str | None = None
                   ) -> Certificate | Counterexample:
    """Check that the network equals its collapsed operator on the exact region.

    The network is evaluated layer by layer by explicit index sums (symbolic weights and a
    symbolic input), the operator by coefficient reading; the rows of the region are
    compared exactly.  ``operator``/``region``/``periodic`` replace the collapse's own
    answer, to check a *claimed* collapse (e.g. ``region=np.ones(...)`` for "exact
    everywhere")."""
    start = time.perf_counter()
    instance_arg(network, Network, "network", "a laurentnet.algebra.Network")
    input_shape = shape_arg(input_shape, "input_shape")
    claim = optional_str_arg(claim, "claim")
    result = collapse(network, input_shape, periodic=periodic)
    op = operator if operator is not None else result.operator
    if not isinstance(op, ConvOperator):
        raise InvalidTypeError(f"operator must be a ConvOperator, got {type(op).__name__}")
    if op.shape != result.operator.shape or op.ndim != network.ndim:
        raise InvalidInputError(f"the claimed operator is {op.shape[0]}x{op.shape[1]} in {op.ndim}-D; "
                                f"the network maps {result.operator.in_channels} to "
                                f"{result.operator.out_channels} channels in {network.ndim}-D")
    if op.ring.symbols != result.operator.ring.symbols:
        raise InvalidInputError(f"the claimed operator uses the variables {op.ring.symbols}, the "
                                f"network {result.operator.ring.symbols}")
    try:
        mask = result.region if region is None else np.asarray(region, dtype=bool)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"region must be a boolean array of the output's spatial shape "
                                f"{result.output_shape[1:]}: {exc}") from None
    use_periodic = result.periodic if periodic is None else periodic
    out = result.output_shape
    if mask.shape != out[1:]:
        raise InvalidInputError(f"region must have the output's spatial shape {out[1:]}, got {mask.shape}")
    affine = collapse_affine(network, input_shape)
    domain = affine.domain.unify(op.ring.domain)
    op = op.set_ring(op.ring.with_domain(domain))
    net_rows = affine.W.convert_to(domain).rep.to_dod()
    net_bias = {r: domain.convert_from(b, affine.domain) for r, b in enumerate(affine.B) if b}
    row_of = flat_index(out)
    rows = [row_of(o, i) for i in np.ndindex(*out[1:]) if mask[i] for o in range(out[0])]
    claim = claim or (f"the network equals its collapsed operator on "
                      f"{int(mask.sum())} of {mask.size} output positions"
                      + (" (periodic)" if use_periodic else ""))
    notes = [f"collapse: {result.describe()}"] if operator is None else []
    return _compare_rows(claim, "explicit index sums (network) vs coefficient reading "
                         "(collapsed operator) on a symbolic input", domain, net_rows,
                         operator_rows(op, input_shape, out, periodic=use_periodic, positions=mask),
                         net_bias, _operator_bias_rows(op, out), out, input_shape, rows, start,
                         notes)
