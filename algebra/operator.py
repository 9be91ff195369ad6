"""Convolution operators: matrices of Laurent polynomials with a stride and a bias.

An operator ``A = (K, s, u, b)`` with ``K`` a ``C_out x C_in`` matrix over a
:class:`~algebra.laurent.LaurentRing` maps the channel vector of generating functions
``X(z) = sum_i x[i] z^i`` to

    Y(z) = down_s( K(z) X(z^u) ) + b            (b constant per output channel)

i.e. ``A = down_s ∘ K ∘ up_u`` plus a bias.  A PyTorch ``conv*d`` is ``u = 1``; a
``conv_transpose*d`` is ``s = 1``.  The algebra (``docs/conventions.md``):

* composition ``A2 @ A1`` is the matrix product after moving strides to the end and
  up-sampling to the front by the noble identities ``K(z) down_s = down_s K(z^s)`` and
  ``up_u K(z) = K(z^u) up_u``:  ``K = K2(z^{s1}) K1(z^{u2})``, ``s = s1 s2``, ``u = u1 u2``
  (an ``up_{u2} down_{s1}`` in the middle commutes only when ``gcd(u2, s1) = 1``);
* the bias is carried in homogeneous coordinates ``[[K, b], [0, 1]]``: a constant image
  ``c`` goes to ``K(1) c``, so ``b = K2(1) b1 + b2``;
* ``A1 + A2`` adds kernels and biases (parallel branches, same strides);
* the adjoint of ``down_s K`` is ``K(1/z)^T up_s`` (transposed convolution, gradient);
* dilation by ``d`` is ``K(z^d)``.
"""
from __future__ import annotations

from functools import reduce
from math import gcd
from typing import Any, Sequence

import numpy as np
import sympy
from sympy.polys.domains import QQ
from sympy.polys.domains.domain import Domain

from .errors import InvalidInputError, InvalidTypeError
from .channels import channel_index
from .exact import exact_sympy, to_domain
from .laurent import LaurentPoly, LaurentRing, per_axis
from .memory import EXACT_TERM_BYTES, check_budget
from .validate import describe, sequence_arg

__all__ = ["ConvOperator", "block_diag", "vstack", "hstack", "check_composable", "check_addable",
           "check_stackable", "MultirateError"]

Matrix = tuple[tuple[LaurentPoly, ...], ...]


def _poly_matmul(ring: LaurentRing, left: Matrix, right: Matrix) -> Matrix:
    """Exact matrix product of Laurent matrices.  Each factor is written as
    ``z^o P`` with one offset ``o`` for the whole matrix, so the inner sums run on sympy's
    ``PolyElement`` arithmetic without re-normalising every partial product."""
    def common(matrix: Matrix) -> tuple[tuple[int, ...], list[list[Any]]]:
        offsets = [e.offset for row in matrix for e in row if e.poly]
        if not offsets:
            return (0,) * ring.ngens, [[ring.poly_ring.zero for _ in row] for row in matrix]
        low = tuple(min(col) for col in zip(*offsets))
        return low, [[e.poly.mul_monom(tuple(a - b for a, b in zip(e.offset, low)))
                      if e.poly and e.offset != low else e.poly for e in row] for row in matrix]

    low_l, pl = common(left)
    low_r, pr = common(right)
    offset = tuple(a + b for a, b in zip(low_l, low_r))
    n_inner = len(pr)
    zero = ring.poly_ring.zero
    out = []
    for row in pl:
        out_row = []
        for j in range(len(pr[0]) if pr else 0):
            acc = zero
            for k in range(n_inner):
                a, b = row[k], pr[k][j]
                if a and b:
                    acc = acc + a * b
            out_row.append(LaurentPoly._normalised(ring, acc, offset))
        out.append(tuple(out_row))
    return tuple(out)


class MultirateError(InvalidInputError):
    """The operation is linear and periodically shift-varying but not one operator
    ``down_s K up_u + b``: an up-sampling after a stride with ``gcd(u, s) != 1``, a bias
    before zero-insertion up-sampling, a sum or stack of branches with different rates.
    :class:`~algebra.polyphase.PolyphaseOperator` represents the result exactly, and
    :func:`~algebra.collapse.collapse` falls back to it on this error."""


def check_composable(outer: Any, inner: Any) -> None:
    """Refuse ``outer ∘ inner`` when it is not one multi-rate convolution (any twin with
    ``in_channels``, ``out_channels``, ``stride``, ``upsample`` and ``has_bias``): channel
    counts must match, an up-sampling after a stride must have ``gcd(u, s) = 1`` on each
    axis, and no bias may precede zero-insertion up-sampling."""
    if outer.in_channels != inner.out_channels:
        raise InvalidInputError(f"cannot compose: the outer operator takes {outer.in_channels} "
                                f"channels, the inner one gives {inner.out_channels}")
    for axis, (u, s) in enumerate(zip(outer.upsample, inner.stride)):
        if u > 1 and s > 1 and gcd(u, s) != 1:
            raise MultirateError(
                f"axis {axis}: up-sampling by {u} after a stride {s} is not a single "
                "multi-rate convolution (up_u down_s only commutes when gcd(u, s) = 1); "
                "collapse this network to an affine map for a fixed input size instead")
    if any(u > 1 for u in outer.upsample) and inner.has_bias:
        raise MultirateError("a bias before zero-insertion up-sampling is not shift-invariant; "
                             "move the bias after the up-sampling or use the affine map")


def check_addable(a: Any, b: Any) -> None:
    """Refuse ``a + b`` unless both have one shape, one stride and one up-sampling."""
    if a.shape != b.shape:
        raise InvalidInputError(f"cannot add operators of shapes {a.shape} and {b.shape}")
    if a.stride != b.stride or a.upsample != b.upsample:
        raise MultirateError(f"cannot add operators with strides {a.stride} and {b.stride} "
                             f"(up-sampling {a.upsample}, {b.upsample}): the sum is not one "
                             "strided convolution")


def check_stackable(ops: Sequence[Any]) -> None:
    """Refuse ``vstack(ops)`` unless they share the input channels, strides and
    up-sampling (and there is at least one)."""
    if not ops:
        raise InvalidInputError("vstack needs at least one operator")
    if len({op.in_channels for op in ops}) != 1:
        raise InvalidInputError("vstack needs operators with the same number of input channels")
    if len({(op.stride, op.upsample) for op in ops}) != 1:
        raise MultirateError("vstack needs operators with equal strides and up-sampling")


def _nonzero_pattern(op: "ConvOperator") -> np.ndarray:
    return np.array([[bool(e.poly) for e in row] for row in op.matrix], dtype=bool).reshape(
        op.out_channels, op.in_channels)


def _product_bytes(outer: "ConvOperator", inner: "ConvOperator") -> int:
    """An upper bound of the terms of ``outer ∘ inner`` (the coupled channel pairs times the
    dense box of the product), plus the substituted copies of both factors, in bytes."""
    boxes = [op.support() for op in (outer, inner)]
    if boxes[0] is None or boxes[1] is None:
        return 0
    (lo_o, hi_o), (lo_i, hi_i) = boxes
    taps = 1
    for a, b, c, d, s, u in zip(lo_o, hi_o, lo_i, hi_i, inner.stride, outer.upsample):
        taps *= (b - a) * s + (d - c) * u + 1
    pairs = int(np.count_nonzero(_nonzero_pattern(outer).astype(np.float32) @
                                 _nonzero_pattern(inner).astype(np.float32)))
    factors = sum(len(e.poly) for op in (outer, inner) for row in op.matrix for e in row)
    return EXACT_TERM_BYTES * (pairs * taps + factors)


class ConvOperator:
    """``down_s ∘ K(z) ∘ up_u`` plus a bias: a (multi-rate) convolution, exactly.

    Build one with :meth:`from_weight` (PyTorch layout), :meth:`identity`, :meth:`zero`,
    :meth:`symbolic` or from a matrix of :class:`LaurentPoly`.  Immutable.
    """

    __slots__ = ("ring", "matrix", "stride", "upsample", "bias")

    def __init__(self, ring: LaurentRing, matrix: Sequence[Sequence[LaurentPoly]],
                 stride: int | Sequence[int] = 1, bias: Sequence[Any] | None = None,
                 upsample: int | Sequence[int] = 1):
        if not isinstance(ring, LaurentRing):
            raise InvalidTypeError(f"ring must be a LaurentRing (e.g. laurent_ring('z1 z2')[0]), "
                                   f"got {describe(ring)}")
        expected = "a matrix (a sequence of rows, each a sequence of Laurent polynomials)"
        rows = tuple(tuple(ring(e) for e in sequence_arg(row, "matrix row", expected=expected,
                                                         nonempty=False))
                     for row in sequence_arg(matrix, "matrix", expected=expected, nonempty=False))
        if not rows or not rows[0]:
            raise InvalidInputError("an operator needs at least one output and one input channel")
        if any(len(r) != len(rows[0]) for r in rows):
            raise InvalidInputError("the kernel matrix is ragged: every row needs C_in entries")
        self.ring = ring
        self.matrix: Matrix = rows
        self.stride = per_axis(stride, ring.ngens, "stride")
        self.upsample = per_axis(upsample, ring.ngens, "upsample")
        if any(s <= 0 for s in self.stride) or any(u <= 0 for u in self.upsample):
            raise InvalidInputError(f"stride and upsample must be positive, got {self.stride}, {self.upsample}")
        if bias is None:
            self.bias = (ring.domain.zero,) * len(rows)
        else:
            bias = sequence_arg(bias, "bias", expected="a sequence of numbers, one per output",
                                nonempty=False)
            try:
                bias = tuple(to_domain(b, ring.domain) for b in bias)
            except (InvalidInputError, InvalidTypeError) as exc:
                raise type(exc)(f"bias: {exc}") from None
            if len(bias) != len(rows):
                raise InvalidInputError(f"bias has {len(bias)} entries, the operator has {len(rows)} outputs")
            self.bias = bias

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def identity(cls, ring: LaurentRing, channels: int) -> "ConvOperator":
        """The identity (a skip connection): ``K = I``."""
        return cls(ring, [[ring.one if i == j else ring.zero for j in range(channels)]
                          for i in range(channels)])

    @classmethod
    def zero(cls, ring: LaurentRing, out_channels: int, in_channels: int,
             stride: int | Sequence[int] = 1) -> "ConvOperator":
        return cls(ring, [[ring.zero] * in_channels for _ in range(out_channels)], stride)

    @classmethod
    def scale(cls, ring: LaurentRing, factors: Sequence[Any],
              shift: Sequence[Any] | None = None) -> "ConvOperator":
        """The diagonal operator ``y_c = a_c x_c + b_c`` (eval-mode batch norm, affine scale)."""
        n = len(factors)
        return cls(ring, [[ring(factors[i]) if i == j else ring.zero for j in range(n)]
                          for i in range(n)], bias=shift)

    @classmethod
    def from_weight(cls, weight: Any, bias: Any = None, *, stride: int | Sequence[int] = 1,
                    padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
                    groups: int = 1, transposed: bool = False,
                    ring: LaurentRing | None = None, domain: Domain = QQ) -> "ConvOperator":
        """The operator of ``torch.nn.functional.conv{n}d`` (or ``conv_transpose{n}d``).
        See :func:`algebra.layout.operator_from_weight`."""
        from .layout import operator_from_weight
        return operator_from_weight(weight, bias, stride=stride, padding=padding,
                                    dilation=dilation, groups=groups, transposed=transposed,
                                    ring=ring, domain=domain)

    def to_weight(self, **kwargs: Any):
        """PyTorch layout of this operator.  See :func:`algebra.layout.operator_to_weight`."""
        from .layout import operator_to_weight
        return operator_to_weight(self, **kwargs)

    @classmethod
    def symbolic(cls, name: str, out_channels: int, in_channels: int,
                 kernel_size: int | Sequence[int], *, ring: LaurentRing | None = None,
                 ndim: int | None = None, stride: int | Sequence[int] = 1,
                 padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
                 groups: int = 1, bias: bool = False, base: Domain = QQ) -> "ConvOperator":
        """A convolution whose every weight is its own symbol ``name_{o,i,a...}`` (and bias
        ``b_name_o``), over the domain ``base[symbols]``.  Same conventions as
        :meth:`from_weight`."""
        from .symbolic_weights import symbolic_operator
        return symbolic_operator(name, out_channels, in_channels, kernel_size, ring=ring,
                                 ndim=ndim, stride=stride, padding=padding, dilation=dilation,
                                 groups=groups, bias=bias, base=base)

    # -- shape ----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(C_out, C_in)``."""
        return len(self.matrix), len(self.matrix[0])

    @property
    def out_channels(self) -> int:
        return len(self.matrix)

    @property
    def in_channels(self) -> int:
        return len(self.matrix[0])

    @property
    def ndim(self) -> int:
        return self.ring.ngens

    @property
    def has_bias(self) -> bool:
        return any(b != self.ring.domain.zero for b in self.bias)

    def support(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """The support box of all kernel entries together (``None`` if ``K = 0``)."""
        boxes = [e.support() for row in self.matrix for e in row if e.poly]
        if not boxes:
            return None
        low = tuple(min(col) for col in zip(*(b[0] for b in boxes)))
        high = tuple(max(col) for col in zip(*(b[1] for b in boxes)))
        return low, high

    @property
    def kernel_size(self) -> tuple[int, ...]:
        """Extent of the support box per axis (``high - low + 1``), like
        ``KernelOperator.kernel_size`` and ``nn.Conv2d.kernel_size``."""
        box = self.support()
        if box is None:
            return (1,) * self.ndim
        return tuple(h - l + 1 for l, h in zip(*box))

    # -- coercion -------------------------------------------------------------------------
    def set_ring(self, ring: LaurentRing) -> "ConvOperator":
        if ring == self.ring:
            return self
        src = self.ring.domain
        return ConvOperator(ring, [[e.set_ring(ring) for e in row] for row in self.matrix],
                            self.stride, [ring.domain.convert_from(b, src) for b in self.bias],
                            self.upsample)

    def _unified(self, other: "ConvOperator") -> tuple["ConvOperator", "ConvOperator"]:
        if not isinstance(other, ConvOperator):
            raise InvalidTypeError(f"expected a ConvOperator, got {type(other).__name__}")
        if other.ring == self.ring:
            return self, other
        ring = self.ring.unify(other.ring)
        return self.set_ring(ring), other.set_ring(ring)

    def _replace(self, matrix: Any = None, stride: Any = None, bias: Any = None,
                 upsample: Any = None) -> "ConvOperator":
        return ConvOperator(self.ring, self.matrix if matrix is None else matrix,
                            self.stride if stride is None else stride,
                            self.bias if bias is None else bias,
                            self.upsample if upsample is None else upsample)

    # -- algebra --------------------------------------------------------------------------
    def __matmul__(self, other: "ConvOperator") -> "ConvOperator":
        """Composition ``self ∘ other`` (apply ``other`` first), by the noble identities."""
        if not isinstance(other, ConvOperator):
            return NotImplemented
        outer, inner = self._unified(other)
        check_composable(outer, inner)
        check_budget(_product_bytes(outer, inner), f"composing a {outer.out_channels}x"
                     f"{outer.in_channels} exact operator with a {inner.out_channels}x"
                     f"{inner.in_channels} one")
        left = [[e.subs_power(inner.stride) for e in row] for row in outer.matrix]
        right = [[e.subs_power(outer.upsample) for e in row] for row in inner.matrix]
        matrix = _poly_matmul(outer.ring, left, right)
        stride = tuple(a * b for a, b in zip(outer.stride, inner.stride))
        upsample = tuple(a * b for a, b in zip(outer.upsample, inner.upsample))
        at_one = outer.at_one_domain()
        dom = outer.ring.domain
        bias = tuple(sum((at_one[o][c] * inner.bias[c] for c in range(outer.in_channels)),
                         dom.zero) + outer.bias[o] for o in range(outer.out_channels))
        return ConvOperator(outer.ring, matrix, stride, bias, upsample)

    def __add__(self, other: Any) -> "ConvOperator":
        """Parallel branches: ``(K1 + K2, b1 + b2)``; strides must agree."""
        if not isinstance(other, ConvOperator):
            return NotImplemented
        a, b = self._unified(other)
        check_addable(a, b)
        matrix = [[x + y for x, y in zip(ra, rb)] for ra, rb in zip(a.matrix, b.matrix)]
        return a._replace(matrix, bias=[x + y for x, y in zip(a.bias, b.bias)])

    def __neg__(self) -> "ConvOperator":
        return self._replace([[-e for e in row] for row in self.matrix],
                             bias=[-b for b in self.bias])

    def __sub__(self, other: Any) -> "ConvOperator":
        if not isinstance(other, ConvOperator):
            return NotImplemented
        return self + (-other)

    def __mul__(self, scalar: Any) -> "ConvOperator":
        """Scalar multiple ``c·A`` (kernel and bias)."""
        if isinstance(scalar, (ConvOperator, LaurentPoly)):
            return NotImplemented
        c = to_domain(scalar, self.ring.domain)
        factor = _const(self.ring, c)
        return self._replace([[e * factor for e in row] for row in self.matrix],
                             bias=[c * b for b in self.bias])

    __rmul__ = __mul__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConvOperator):
            return NotImplemented
        try:
            a, b = self._unified(other)
        except ValueError:
            return False
        return (a.matrix == b.matrix and a.stride == b.stride and a.upsample == b.upsample
                and a.bias == b.bias)

    def __hash__(self) -> int:
        to_sympy = self.ring.domain.to_sympy
        return hash((self.matrix, self.stride, self.upsample, tuple(to_sympy(b) for b in self.bias)))

    # -- structural operations ------------------------------------------------------------
    def adjoint(self) -> "ConvOperator":
        """``K(1/z)^T`` with stride and up-sampling swapped: the transposed convolution.
        The adjoint is of the linear part; a bias has no adjoint and is dropped
        (``linear_part().adjoint()`` is the same thing, stated explicitly)."""
        matrix = [[self.matrix[o][i].reflect() for o in range(self.out_channels)]
                  for i in range(self.in_channels)]
        return ConvOperator(self.ring, matrix, stride=self.upsample, upsample=self.stride)

    def linear_part(self) -> "ConvOperator":
        """The same operator without bias."""
        return self._replace(bias=[self.ring.domain.zero] * self.out_channels)

    def with_bias(self, bias: Sequence[Any]) -> "ConvOperator":
        return self._replace(bias=bias)

    def dilate(self, factors: int | Sequence[int]) -> "ConvOperator":
        """Dilation: ``K(z^d)``, the same strides."""
        return self._replace([[e.subs_power(factors) for e in row] for row in self.matrix])

    def __getitem__(self, rows: int | slice | Sequence[int]) -> "ConvOperator":
        """A channel split: the operator onto the selected output channels."""
        index = channel_index(rows, self.out_channels, "output channel")
        return self._replace([self.matrix[i] for i in index], bias=[self.bias[i] for i in index])

    def columns(self, cols: int | slice | Sequence[int]) -> "ConvOperator":
        """The operator restricted to the selected input channels (bias kept)."""
        index = channel_index(cols, self.in_channels, "input channel")
        return self._replace([[row[j] for j in index] for row in self.matrix])

    # -- evaluation -----------------------------------------------------------------------
    def at_one_domain(self) -> list[list[Any]]:
        """``K(1)`` as nested lists of domain elements."""
        return [[e.at_one() for e in row] for row in self.matrix]

    def at_one(self) -> sympy.Matrix:
        """``K(1)``: what a constant image is multiplied by (before down-sampling)."""
        to_sympy = self.ring.domain.to_sympy
        return sympy.Matrix([[to_sympy(c) for c in row] for row in self.at_one_domain()])

    def evaluate(self, point: Sequence[Any]) -> Any:
        """``K(point)`` — a sympy Matrix for exact points, a complex numpy array for float
        points (the symbol on the unit torus ``z = e^{i theta}``)."""
        values = [[e.evaluate(point) for e in row] for row in self.matrix]
        if all(isinstance(v, complex) for row in values for v in row):
            return np.array(values, dtype=complex)
        return sympy.Matrix(values)

    def bias_vector(self) -> sympy.Matrix:
        to_sympy = self.ring.domain.to_sympy
        return sympy.Matrix([to_sympy(b) for b in self.bias])

    # -- symbols --------------------------------------------------------------------------
    @property
    def free_symbols(self) -> set[sympy.Symbol]:
        """Weight/bias symbols occurring in the operator."""
        out: set[sympy.Symbol] = set()
        for row in self.matrix:
            for e in row:
                out |= e.free_symbols
        if self.ring.domain.is_PolynomialRing or self.ring.domain.is_FractionField:
            for b in self.bias:
                out |= self.ring.domain.to_sympy(b).free_symbols
        return out

    def subs(self, values: dict[Any, Any], domain: Domain = QQ) -> "ConvOperator":
        """Substitute values for weight symbols; the result lives over ``domain`` if no
        symbol remains, else over ``domain[remaining symbols]``."""
        values = {sympy.Symbol(k) if isinstance(k, str) else k: exact_sympy(v)
                  for k, v in values.items()}
        remaining = sorted(self.free_symbols - set(values), key=str)
        target = domain[remaining] if remaining else domain
        ring = self.ring.with_domain(target)
        to_sympy = self.ring.domain.to_sympy

        def convert(c: Any) -> Any:
            return target.from_sympy(sympy.expand(to_sympy(c).xreplace(values)))
        matrix = [[e.map_coefficients(convert, ring) for e in row] for row in self.matrix]
        return ConvOperator(ring, matrix, self.stride, [convert(b) for b in self.bias],
                            self.upsample)

    # -- display --------------------------------------------------------------------------
    def as_matrix(self) -> sympy.Matrix:
        """The kernel matrix as a sympy ``Matrix`` of expressions in the shift variables."""
        return sympy.Matrix([[e.as_expr() for e in row] for row in self.matrix])

    def _rates_text(self) -> str:
        parts = []
        if any(s != 1 for s in self.stride):
            parts.append(f"stride={self.stride}")
        if any(u != 1 for u in self.upsample):
            parts.append(f"upsample={self.upsample}")
        if self.has_bias:
            parts.append(f"bias={[str(self.ring.domain.to_sympy(b)) for b in self.bias]}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        rates = self._rates_text()
        return (f"ConvOperator({self.out_channels}x{self.in_channels} over {self.ring}"
                f"{', ' + rates if rates else ''}, K={self.as_matrix().tolist()})")

    def latex(self) -> str:
        """``\\downarrow_s\\, K(z)\\, \\uparrow_u + b`` in LaTeX."""
        rows = " \\\\ ".join(" & ".join(e.latex() for e in row) for row in self.matrix)
        body = f"\\left[\\begin{{matrix}}{rows}\\end{{matrix}}\\right]"
        down = "" if all(s == 1 for s in self.stride) else \
            f"\\downarrow_{{{_axis_text(self.stride)}}} "
        up = "" if all(u == 1 for u in self.upsample) else \
            f" \\uparrow_{{{_axis_text(self.upsample)}}}"
        bias = f" + {sympy.latex(self.bias_vector())}" if self.has_bias else ""
        return f"{down}{body}{up}{bias}"

    def _repr_latex_(self) -> str:
        return f"$\\displaystyle {self.latex()}$"


def _axis_text(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else ",".join(map(str, values))


def _const(ring: LaurentRing, c: Any) -> LaurentPoly:
    return LaurentPoly(ring, ring.poly_ring.ground_new(c), (0,) * ring.ngens)


def block_diag(operators: Sequence[ConvOperator]) -> ConvOperator:
    """``diag(A_1, ..., A_g)``: a grouped convolution; strides must agree."""
    ops = list(operators)
    if not ops:
        raise InvalidInputError("block_diag needs at least one operator")
    ring = reduce(LaurentRing.unify, (op.ring for op in ops))
    ops = [op.set_ring(ring) for op in ops]
    if len({(op.stride, op.upsample) for op in ops}) != 1:
        raise InvalidInputError("block_diag needs operators with equal strides and up-sampling")
    n_in = sum(op.in_channels for op in ops)
    matrix, bias, start = [], [], 0
    for op in ops:
        for row, b in zip(op.matrix, op.bias):
            matrix.append([ring.zero] * start + list(row)
                          + [ring.zero] * (n_in - start - op.in_channels))
            bias.append(b)
        start += op.in_channels
    return ConvOperator(ring, matrix, ops[0].stride, bias, ops[0].upsample)


def vstack(operators: Sequence[ConvOperator]) -> ConvOperator:
    """Channel concatenation of outputs: ``[A_1; ...; A_k]`` (same input, same strides)."""
    ops = list(operators)
    check_stackable(ops)
    ring = reduce(LaurentRing.unify, (op.ring for op in ops))
    ops = [op.set_ring(ring) for op in ops]
    return ConvOperator(ring, [row for op in ops for row in op.matrix], ops[0].stride,
                        [b for op in ops for b in op.bias], ops[0].upsample)


def hstack(operators: Sequence[ConvOperator]) -> ConvOperator:
    """``[A_1, ..., A_k]`` acting on concatenated inputs: ``y = sum_j A_j x_j``
    (biases add)."""
    ops = list(operators)
    if not ops:
        raise InvalidInputError("hstack needs at least one operator")
    ring = reduce(LaurentRing.unify, (op.ring for op in ops))
    ops = [op.set_ring(ring) for op in ops]
    if len({op.out_channels for op in ops}) != 1:
        raise InvalidInputError("hstack needs operators with the same number of output channels")
    if len({(op.stride, op.upsample) for op in ops}) != 1:
        raise InvalidInputError("hstack needs operators with equal strides and up-sampling")
    matrix = [sum((list(op.matrix[o]) for op in ops), []) for o in range(ops[0].out_channels)]
    bias = [sum((op.bias[o] for op in ops), ring.domain.zero) for o in range(ops[0].out_channels)]
    return ConvOperator(ring, matrix, ops[0].stride, bias, ops[0].upsample)
