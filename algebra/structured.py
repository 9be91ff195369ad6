"""Structured channel couplings, exactly: cheap convolutions as structured Laurent matrices.

A stride-1 convolution without bias is a ``C_out x C_in`` matrix ``K(z)`` of Laurent
polynomials (``docs/conventions.md``).  Low-cost parameterizations (seed 002: Treister,
Ruthotto, Sharoni, Zafrani, Haber 2018; LeanResNet) restrict the *pattern* of that matrix:

==================  ==========================================================  ==========================
class               ``K(z)``                                                    parameters (= direct MACs)
==================  ==========================================================  ==========================
:class:`Dense`      any ``C_out x C_in`` matrix on the stencil box              ``C_out C_in |box|``
:class:`Depthwise`  ``diag(d_1(z), ..., d_C(z))``                               ``C |box|``
:class:`Pointwise`  a constant matrix ``M`` (a 1x1 convolution)                 ``C_out C_in``
:class:`Grouped`    ``diag(B_1(z), ..., B_g(z))`` (block diagonal)              ``sum_g C_out,g C_in,g |box|``
:class:`Lean`       ``D(z) + M``: depthwise ``k x k`` plus 1x1                  ``C |box| + C^2``
:class:`BlockCirculant`  block ``(r, c)`` is ``A_{(c - r) mod m}`` (``m x m`` blocks)  ``m b_out b_in |box|``
==================  ==========================================================  ==========================

``|box|`` is the number of taps of the stencil box (``k1 k2`` for a ``k1 x k2`` kernel):
every structure keeps the box it is parameterized on (``box = (low, high)`` exponents per
axis; a PyTorch kernel of size ``k`` with left padding ``p`` has ``low = p - (k - 1)``,
``high = p``), so ``params`` counts the trainable weights of that parameterization and
``macs_per_position`` the multiply-adds of applying it directly at one output position
(for :class:`BlockCirculant` ``m^2 b_out b_in |box|``; the FFT over channels of the
float twin costs less, see :mod:`laurentnet.numeric.structured`).  Products of boxes add
(Minkowski sum), sums take the hull, the adjoint reflects (``low, high -> -high, -low``).

Closure (each one checked: the constructor verifies the pattern of every result, and
:mod:`algebra.structured_identities` proves the formulas against dense products):

* ``Depthwise``, ``Pointwise``, ``Grouped`` (equal partitions), ``BlockCirculant`` (equal
  ``m``): products, sums, scalar multiples and adjoints stay in the structure.  The
  block-circulant product is the cyclic convolution of the first block rows,
  ``(A B)_k = sum_{i + j = k mod m} A_i B_j``; its adjoint has first row
  ``(A^*)_k = (A_{-k mod m})^*`` with ``A^*(z) = A(1/z)^T``;
* ``Lean``: sums and adjoints (``D(1/z) + M^T``) stay lean; a *product* of two lean
  operators is not lean (``D_1 M_2`` has non-constant off-diagonal entries) and is
  returned as :class:`Dense`;
* any other combination is returned as :class:`Dense` (the exact product or sum).

The split ``K = D + M`` of :meth:`Lean.from_dense` is made unique by giving every constant
(``z^0``) term to ``M``; a lean operator built from two weights keeps both parts (its
``params`` counts both, ``C`` of them redundant).  Channel order of a block-circulant
operator is block-major: channel ``r b + i`` is entry ``i`` of block ``r``.
Everything here is exact (any sympy domain, symbolic weights included); couplings carry no
bias (the PDE and residual blocks add theirs).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from .errors import InvalidInputError, InvalidTypeError
from .laurent import LaurentPoly, LaurentRing, per_axis
from .operator import ConvOperator, block_diag
from .validate import describe, int_arg, sequence_arg

__all__ = ["Coupling", "Dense", "Depthwise", "Pointwise", "Grouped", "Lean", "BlockCirculant",
           "STRUCTURES", "COUPLING_MEMBERS", "weight_box"]

Box = tuple[tuple[int, ...], tuple[int, ...]]


# ------------------------------------------------------------------------------ boxes

def weight_box(kernel_size: int | Sequence[int], padding: int | Sequence[int], ndim: int) -> Box:
    """The exponent box of a PyTorch kernel of size ``k`` with left padding ``p``:
    ``K(z) = sum_a w[a] z^(p - a)`` has exponents ``p - (k - 1) .. p``."""
    k = per_axis(kernel_size, ndim, "kernel_size")
    p = per_axis(padding, ndim, "padding")
    if any(v < 1 for v in k):
        raise InvalidInputError(f"kernel_size must be positive, got {k}")
    return tuple(a - (b - 1) for a, b in zip(p, k)), p


def _volume(box: Box) -> int:
    return math.prod(h - l + 1 for l, h in zip(*box))


def _hull(a: Box, b: Box) -> Box:
    return tuple(map(min, a[0], b[0])), tuple(map(max, a[1], b[1]))


def _minkowski(a: Box, b: Box) -> Box:
    return tuple(x + y for x, y in zip(a[0], b[0])), tuple(x + y for x, y in zip(a[1], b[1]))


def _reflect(box: Box) -> Box:
    return tuple(-h for h in box[1]), tuple(-l for l in box[0])


def _support_box(entries: Sequence[LaurentPoly], ndim: int) -> Box:
    """The hull of the supports (the one-tap box at 0 when every entry is 0)."""
    boxes = [e.support() for e in entries if e]
    if not boxes:
        return (0,) * ndim, (0,) * ndim
    return (tuple(min(c) for c in zip(*(b[0] for b in boxes))),
            tuple(max(c) for c in zip(*(b[1] for b in boxes))))


def _check_box(entries: Sequence[LaurentPoly], box: Box | None, ndim: int) -> Box:
    """``box`` (or the entries' support when None), after checking every entry lies in it."""
    if box is None:
        return _support_box(entries, ndim)
    try:
        low, high = (tuple(int(v) for v in side) for side in box)
    except (TypeError, ValueError):
        raise InvalidTypeError(f"box must be (low, high), two tuples of {ndim} ints, got "
                               f"{describe(box)}") from None
    if len(low) != ndim or len(high) != ndim or any(l > h for l, h in zip(low, high)):
        raise InvalidInputError(f"box must be (low, high) with {ndim} entries each and low <= "
                                f"high, got {box}")
    for e in entries:
        s = e.support()
        if s and (any(a < l for a, l in zip(s[0], low)) or any(b > h for b, h in zip(s[1], high))):
            raise InvalidInputError(f"an entry with exponents {s[0]}..{s[1]} lies outside the "
                                    f"stencil box {low}..{high}")
    return low, high


def _plain(op: Any, what: str) -> ConvOperator:
    """``op`` if it is a stride-1 ConvOperator without bias or up-sampling (a coupling)."""
    if not isinstance(op, ConvOperator):
        raise InvalidTypeError(f"{what} must be a laurentnet.algebra.ConvOperator, got {describe(op)}")
    if any(s != 1 for s in op.stride) or any(u != 1 for u in op.upsample) or op.has_bias:
        raise InvalidInputError(f"{what} must be a stride-1 operator without bias or up-sampling "
                                f"(a channel coupling), got stride {op.stride}, up-sampling "
                                f"{op.upsample}, bias {op.has_bias}")
    return op


def _entries(op: ConvOperator) -> list[LaurentPoly]:
    return [e for row in op.matrix for e in row]


def _same_ring(ops: Sequence[ConvOperator]) -> list[ConvOperator]:
    ring = ops[0].ring
    for op in ops[1:]:
        ring = ring.unify(op.ring)
    return [op.set_ring(ring) for op in ops]


# --------------------------------------------------------------------------- the base

class Coupling:
    """A structured stride-1 channel coupling ``K(z)`` (no bias), exactly.

    Subclasses hold their defining parts and implement :meth:`dense`, :attr:`params`,
    :attr:`macs_per_position`, :meth:`adjoint` and the structure-preserving ``_compose`` /
    ``_add`` / ``_scale``.  Immutable."""

    box: Box

    # -- shape ----------------------------------------------------------------------------
    @property
    def ring(self) -> LaurentRing:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def out_channels(self) -> int:
        return self.shape[0]

    @property
    def in_channels(self) -> int:
        return self.shape[1]

    @property
    def ndim(self) -> int:
        return self.ring.ngens

    @property
    def kernel_size(self) -> tuple[int, ...]:
        """Extent of the stencil box per axis."""
        return tuple(h - l + 1 for l, h in zip(*self.box))

    # -- costs ----------------------------------------------------------------------------
    @property
    def params(self) -> int:  # pragma: no cover - abstract
        """Trainable weights of this parameterization."""
        raise NotImplementedError

    @property
    def macs_per_position(self) -> int:  # pragma: no cover - abstract
        """Multiply-adds of applying the structure directly at one output position."""
        raise NotImplementedError

    def macs(self, sizes: int | Sequence[int] | None = None) -> int:
        """Multiply-adds per output position, or for a whole signal of spatial ``sizes``
        (stride 1, same-size output: ``macs_per_position * prod(sizes)``)."""
        if sizes is None:
            return self.macs_per_position
        n = per_axis(sizes, self.ndim, "sizes")
        if any(v < 1 for v in n):
            raise InvalidInputError(f"sizes must be positive, got {n}")
        return self.macs_per_position * math.prod(n)

    # -- conversion -----------------------------------------------------------------------
    def dense(self) -> ConvOperator:  # pragma: no cover - abstract
        """The equivalent :class:`ConvOperator` (the full Laurent matrix)."""
        raise NotImplementedError

    def to_weight(self, **kwargs: Any):
        """The PyTorch layout of the dense operator (:meth:`ConvOperator.to_weight`)."""
        return self.dense().to_weight(**kwargs)

    def set_ring(self, ring: LaurentRing) -> "Coupling":  # pragma: no cover - abstract
        raise NotImplementedError

    # -- algebra --------------------------------------------------------------------------
    def _unified(self, other: Any, op: str) -> tuple["Coupling", "Coupling"]:
        if not isinstance(other, Coupling):
            raise InvalidTypeError(f"{op} combines two couplings (laurentnet.algebra.structured), "
                                   f"got {describe(other)}; use .dense() for a ConvOperator")
        if other.ring == self.ring:
            return self, other
        ring = self.ring.unify(other.ring)
        return self.set_ring(ring), other.set_ring(ring)

    def __matmul__(self, other: "Coupling") -> "Coupling":
        """Composition ``self ∘ other``: in the structure when it is closed (module
        docstring), else :class:`Dense`."""
        a, b = self._unified(other, "@")
        if a.in_channels != b.out_channels:
            raise InvalidInputError(f"cannot compose: the outer coupling takes {a.in_channels} "
                                    f"channels, the inner one gives {b.out_channels}")
        box = _minkowski(a.box, b.box)
        if type(a) is type(b):
            result = a._compose(b, box)
            if result is not None:
                return result
        return Dense(a.dense() @ b.dense(), box)

    def __add__(self, other: "Coupling") -> "Coupling":
        """Parallel branches ``self + other`` (in the structure when closed, else Dense)."""
        a, b = self._unified(other, "+")
        if a.shape != b.shape:
            raise InvalidInputError(f"cannot add couplings of shapes {a.shape} and {b.shape}")
        box = _hull(a.box, b.box)
        if type(a) is type(b):
            result = a._add(b, box)
            if result is not None:
                return result
        return Dense(a.dense() + b.dense(), box)

    def __neg__(self) -> "Coupling":
        return self * -1

    def __sub__(self, other: "Coupling") -> "Coupling":
        return self + (-other)

    def __mul__(self, scalar: Any) -> "Coupling":
        """``c K``: every part scaled (the structure is kept)."""
        if isinstance(scalar, (Coupling, ConvOperator, LaurentPoly)):
            return NotImplemented
        return self._scale(scalar)

    __rmul__ = __mul__

    def _compose(self, other: Any, box: Box) -> "Coupling | None":  # pragma: no cover
        return None

    def _add(self, other: Any, box: Box) -> "Coupling | None":  # pragma: no cover
        return None

    def _scale(self, scalar: Any) -> "Coupling":  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint(self) -> "Coupling":  # pragma: no cover - abstract
        """``K(1/z)^T`` in the same structure."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Coupling) or type(other) is not type(self):
            return NotImplemented if not isinstance(other, Coupling) else False
        return self.box == other.box and self.dense() == other.dense()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.box, self.dense()))

    # -- display --------------------------------------------------------------------------
    @property
    def free_symbols(self) -> set:
        return self.dense().free_symbols

    def latex(self) -> str:
        """The dense Laurent matrix in LaTeX."""
        return self.dense().latex()

    def _repr_latex_(self) -> str:
        return f"$\\displaystyle {self.latex()}$"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.out_channels}x{self.in_channels}, box "
                f"{self.box[0]}..{self.box[1]}, {self.params} params)")


# ----------------------------------------------------------------------- dense, 1x1

class Dense(Coupling):
    """A fully coupled stencil: any ``C_out x C_in`` Laurent matrix inside ``box``."""

    __slots__ = ("operator", "box")

    def __init__(self, operator: ConvOperator, box: Box | None = None):
        self.operator = _plain(operator, "operator")
        self.box = _check_box(_entries(operator), box, operator.ndim)

    @classmethod
    def from_weight(cls, weight: Any, *, padding: int | Sequence[int] = 0, **kwargs: Any) -> "Dense":
        """``conv{n}d(x, weight, padding=padding)`` (weight ``(C_out, C_in, *k)``)."""
        op = ConvOperator.from_weight(weight, padding=padding, **kwargs)
        return cls(op, weight_box(op_kernel(weight), padding, op.ndim))

    @classmethod
    def symbolic(cls, name: str, out_channels: int, in_channels: int,
                 kernel_size: int | Sequence[int], *, padding: int | Sequence[int] = 0,
                 ndim: int | None = None) -> "Dense":
        op = ConvOperator.symbolic(name, out_channels, in_channels, kernel_size, padding=padding,
                                   ndim=ndim)
        return cls(op, weight_box(kernel_size, padding, op.ndim))

    @classmethod
    def from_dense(cls, op: ConvOperator, box: Box | None = None) -> "Dense":
        return cls(op, box)

    @property
    def ring(self) -> LaurentRing:
        return self.operator.ring

    @property
    def shape(self) -> tuple[int, int]:
        return self.operator.shape

    @property
    def params(self) -> int:
        return self.out_channels * self.in_channels * _volume(self.box)

    @property
    def macs_per_position(self) -> int:
        return self.params

    def dense(self) -> ConvOperator:
        return self.operator

    def set_ring(self, ring: LaurentRing) -> "Dense":
        return Dense(self.operator.set_ring(ring), self.box)

    def _compose(self, other: "Dense", box: Box) -> "Dense":
        return Dense(self.operator @ other.operator, box)

    def _add(self, other: "Dense", box: Box) -> "Dense":
        return Dense(self.operator + other.operator, box)

    def _scale(self, scalar: Any) -> "Dense":
        return Dense(self.operator * scalar, self.box)

    def adjoint(self) -> "Dense":
        return Dense(self.operator.adjoint(), _reflect(self.box))


def op_kernel(weight: Any) -> tuple[int, ...]:
    """The spatial kernel size of a PyTorch weight array ``(C_out, C_in/g, *k)``."""
    shape = tuple(getattr(weight, "shape", ()))
    if len(shape) < 3:
        raise InvalidInputError(f"weight must have shape (C_out, C_in/groups, *kernel), got {shape}")
    return tuple(int(v) for v in shape[2:])


class Pointwise(Coupling):
    """A 1x1 convolution: the constant matrix ``M`` (every entry a multiple of ``z^0``)."""

    __slots__ = ("operator", "box")

    def __init__(self, operator: ConvOperator):
        self.operator = _plain(operator, "operator")
        zero = (0,) * operator.ndim
        for o, row in enumerate(operator.matrix):
            for c, e in enumerate(row):
                if e and e.support() != (zero, zero):
                    raise InvalidInputError(f"a 1x1 coupling has constant entries; entry ({o}, {c}) "
                                            f"is {e}")
        self.box = (zero, zero)

    @classmethod
    def from_weight(cls, weight: Any, **kwargs: Any) -> "Pointwise":
        """``conv{n}d(x, weight)`` with a 1x1 weight ``(C_out, C_in, 1, ...)``."""
        if any(k != 1 for k in op_kernel(weight)):
            raise InvalidInputError(f"a 1x1 weight has kernel size 1, got {op_kernel(weight)}")
        return cls(ConvOperator.from_weight(weight, **kwargs))

    @classmethod
    def symbolic(cls, name: str, out_channels: int, in_channels: int, *, ndim: int = 2) -> "Pointwise":
        return cls(ConvOperator.symbolic(name, out_channels, in_channels, 1, ndim=ndim))

    @classmethod
    def from_dense(cls, op: ConvOperator) -> "Pointwise":
        return cls(op)

    @property
    def ring(self) -> LaurentRing:
        return self.operator.ring

    @property
    def shape(self) -> tuple[int, int]:
        return self.operator.shape

    @property
    def params(self) -> int:
        return self.out_channels * self.in_channels

    @property
    def macs_per_position(self) -> int:
        return self.params

    def dense(self) -> ConvOperator:
        return self.operator

    def set_ring(self, ring: LaurentRing) -> "Pointwise":
        return Pointwise(self.operator.set_ring(ring))

    def _compose(self, other: "Pointwise", box: Box) -> "Pointwise":
        return Pointwise(self.operator @ other.operator)

    def _add(self, other: "Pointwise", box: Box) -> "Pointwise":
        return Pointwise(self.operator + other.operator)

    def _scale(self, scalar: Any) -> "Pointwise":
        return Pointwise(self.operator * scalar)

    def adjoint(self) -> "Pointwise":
        """``M^T``."""
        return Pointwise(self.operator.adjoint())


# ------------------------------------------------------------------ depthwise, grouped

class Depthwise(Coupling):
    """``diag(d_1(z), ..., d_C(z))``: one stencil per channel, no channel coupling."""

    __slots__ = ("_ring", "diagonal", "box")

    def __init__(self, ring: LaurentRing, diagonal: Sequence[LaurentPoly], box: Box | None = None):
        if not isinstance(ring, LaurentRing):
            raise InvalidTypeError(f"ring must be a LaurentRing, got {describe(ring)}")
        entries = sequence_arg(diagonal, "diagonal", expected="a sequence of Laurent polynomials")
        self._ring = ring
        self.diagonal = tuple(ring(e) for e in entries)
        self.box = _check_box(self.diagonal, box, ring.ngens)

    @classmethod
    def from_weight(cls, weight: Any, *, padding: int | Sequence[int] = 0, **kwargs: Any) -> "Depthwise":
        """``conv{n}d(x, weight, padding=padding, groups=C)``, weight ``(C, 1, *k)``."""
        channels = int(getattr(weight, "shape", (0,))[0])
        op = ConvOperator.from_weight(weight, padding=padding, groups=channels, **kwargs)
        return cls.from_dense(op, weight_box(op_kernel(weight), padding, op.ndim))

    @classmethod
    def symbolic(cls, name: str, channels: int, kernel_size: int | Sequence[int], *,
                 padding: int | Sequence[int] = 0, ndim: int | None = None) -> "Depthwise":
        op = ConvOperator.symbolic(name, channels, channels, kernel_size, padding=padding,
                                   groups=channels, ndim=ndim)
        return cls.from_dense(op, weight_box(kernel_size, padding, op.ndim))

    @classmethod
    def from_dense(cls, op: ConvOperator, box: Box | None = None) -> "Depthwise":
        """The diagonal of ``op``; refused when an off-diagonal entry is not 0."""
        _plain(op, "op")
        if op.out_channels != op.in_channels:
            raise InvalidInputError(f"a depthwise coupling is square, got {op.shape}")
        for o, row in enumerate(op.matrix):
            for c, e in enumerate(row):
                if o != c and e:
                    raise InvalidInputError(f"not depthwise: entry ({o}, {c}) is {e}, not 0")
        return cls(op.ring, [op.matrix[c][c] for c in range(op.out_channels)], box)

    @property
    def ring(self) -> LaurentRing:
        return self._ring

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.diagonal), len(self.diagonal)

    @property
    def params(self) -> int:
        return len(self.diagonal) * _volume(self.box)

    @property
    def macs_per_position(self) -> int:
        return self.params

    def dense(self) -> ConvOperator:
        zero = self._ring.zero
        n = len(self.diagonal)
        return ConvOperator(self._ring, [[self.diagonal[i] if i == j else zero for j in range(n)]
                                         for i in range(n)])

    def set_ring(self, ring: LaurentRing) -> "Depthwise":
        return Depthwise(ring, [e.set_ring(ring) for e in self.diagonal], self.box)

    def _compose(self, other: "Depthwise", box: Box) -> "Depthwise":
        """``diag(d_c e_c)``."""
        return Depthwise(self._ring, [a * b for a, b in zip(self.diagonal, other.diagonal)], box)

    def _add(self, other: "Depthwise", box: Box) -> "Depthwise":
        return Depthwise(self._ring, [a + b for a, b in zip(self.diagonal, other.diagonal)], box)

    def _scale(self, scalar: Any) -> "Depthwise":
        c = ConvOperator.identity(self._ring, 1) * scalar
        return Depthwise(self._ring, [e * c.matrix[0][0] for e in self.diagonal], self.box)

    def adjoint(self) -> "Depthwise":
        """``diag(d_c(1/z))``."""
        return Depthwise(self._ring, [e.reflect() for e in self.diagonal], _reflect(self.box))


class Grouped(Coupling):
    """``diag(B_1(z), ..., B_g(z))``: a grouped convolution (blocks of any sizes)."""

    __slots__ = ("blocks", "box")

    def __init__(self, blocks: Sequence[ConvOperator], box: Box | None = None):
        items = sequence_arg(blocks, "blocks", expected="a sequence of ConvOperators")
        ops = _same_ring([_plain(b, f"blocks[{i}]") for i, b in enumerate(items)])
        self.blocks = tuple(ops)
        self.box = _check_box([e for b in ops for e in _entries(b)], box, ops[0].ndim)

    @classmethod
    def from_weight(cls, weight: Any, *, groups: int, padding: int | Sequence[int] = 0,
                    **kwargs: Any) -> "Grouped":
        """``conv{n}d(x, weight, padding=padding, groups=groups)``, weight ``(C_out, C_in/g, *k)``."""
        groups = int_arg(groups, "groups", minimum=1)
        op = ConvOperator.from_weight(weight, padding=padding, groups=groups, **kwargs)
        return cls.from_dense(op, groups, weight_box(op_kernel(weight), padding, op.ndim))

    @classmethod
    def symbolic(cls, name: str, out_channels: int, in_channels: int,
                 kernel_size: int | Sequence[int], groups: int, *,
                 padding: int | Sequence[int] = 0, ndim: int | None = None) -> "Grouped":
        op = ConvOperator.symbolic(name, out_channels, in_channels, kernel_size, padding=padding,
                                   groups=groups, ndim=ndim)
        return cls.from_dense(op, groups, weight_box(kernel_size, padding, op.ndim))

    @classmethod
    def from_dense(cls, op: ConvOperator, groups: int, box: Box | None = None) -> "Grouped":
        """``op`` cut into ``groups`` equal diagonal blocks; refused when anything outside
        the blocks is not 0."""
        _plain(op, "op")
        groups = int_arg(groups, "groups", minimum=1)
        if op.out_channels % groups or op.in_channels % groups:
            raise InvalidInputError(f"groups={groups} must divide both channel counts {op.shape}")
        bo, bi = op.out_channels // groups, op.in_channels // groups
        for o, row in enumerate(op.matrix):
            for c, e in enumerate(row):
                if e and o // bo != c // bi:
                    raise InvalidInputError(f"not block diagonal with {groups} groups: entry "
                                            f"({o}, {c}) is {e}, not 0")
        blocks = [op[g * bo:(g + 1) * bo].columns(slice(g * bi, (g + 1) * bi)) for g in range(groups)]
        return cls(blocks, box)

    @property
    def ring(self) -> LaurentRing:
        return self.blocks[0].ring

    @property
    def shape(self) -> tuple[int, int]:
        return sum(b.out_channels for b in self.blocks), sum(b.in_channels for b in self.blocks)

    @property
    def groups(self) -> int:
        return len(self.blocks)

    @property
    def params(self) -> int:
        return sum(b.out_channels * b.in_channels for b in self.blocks) * _volume(self.box)

    @property
    def macs_per_position(self) -> int:
        return self.params

    def dense(self) -> ConvOperator:
        return block_diag(self.blocks)

    def set_ring(self, ring: LaurentRing) -> "Grouped":
        return Grouped([b.set_ring(ring) for b in self.blocks], self.box)

    def _compose(self, other: "Grouped", box: Box) -> "Grouped | None":
        """Blockwise products when the partitions match (else None: Dense)."""
        if [b.in_channels for b in self.blocks] != [b.out_channels for b in other.blocks]:
            return None
        return Grouped([a @ b for a, b in zip(self.blocks, other.blocks)], box)

    def _add(self, other: "Grouped", box: Box) -> "Grouped | None":
        if [b.shape for b in self.blocks] != [b.shape for b in other.blocks]:
            return None
        return Grouped([a + b for a, b in zip(self.blocks, other.blocks)], box)

    def _scale(self, scalar: Any) -> "Grouped":
        return Grouped([b * scalar for b in self.blocks], self.box)

    def adjoint(self) -> "Grouped":
        """``diag(B_1^*, ..., B_g^*)``."""
        return Grouped([b.adjoint() for b in self.blocks], _reflect(self.box))


# ------------------------------------------------------------------------------- lean

class Lean(Coupling):
    """``K = D(z) + M``: a depthwise stencil plus a 1x1 coupling (LeanResNet's operator)."""

    __slots__ = ("depthwise", "pointwise")

    def __init__(self, depthwise: Depthwise, pointwise: Pointwise):
        if not isinstance(depthwise, Depthwise) or not isinstance(pointwise, Pointwise):
            raise InvalidTypeError(f"Lean(depthwise, pointwise) takes a Depthwise and a Pointwise, "
                                   f"got {describe(depthwise)} and {describe(pointwise)}")
        if depthwise.shape != pointwise.shape:
            raise InvalidInputError(f"the depthwise part is {depthwise.shape}, the 1x1 part "
                                    f"{pointwise.shape}: a lean coupling is square")
        if depthwise.ring != pointwise.ring:
            ring = depthwise.ring.unify(pointwise.ring)
            depthwise, pointwise = depthwise.set_ring(ring), pointwise.set_ring(ring)
        self.depthwise, self.pointwise = depthwise, pointwise

    @classmethod
    def from_weight(cls, depthwise_weight: Any, pointwise_weight: Any, *,
                    padding: int | Sequence[int] = 0) -> "Lean":
        """``conv(x, w_dw, padding, groups=C) + conv(x, w_1x1)``."""
        return cls(Depthwise.from_weight(depthwise_weight, padding=padding),
                   Pointwise.from_weight(pointwise_weight))

    @classmethod
    def symbolic(cls, name: str, channels: int, kernel_size: int | Sequence[int], *,
                 padding: int | Sequence[int] = 0, ndim: int | None = None) -> "Lean":
        d = Depthwise.symbolic(f"{name}d", channels, kernel_size, padding=padding, ndim=ndim)
        return cls(d, Pointwise.symbolic(f"{name}m", channels, channels, ndim=d.ndim))

    @classmethod
    def from_dense(cls, op: ConvOperator, box: Box | None = None) -> "Lean":
        """The unique split with every constant term in ``M``: ``M = K(z)``'s ``z^0``
        coefficients, ``D`` = the rest, which must be diagonal."""
        _plain(op, "op")
        zero = (0,) * op.ndim
        ring = op.ring
        constants = [[ring.monomial(zero, e.coeff(zero)) if e else ring.zero for e in row]
                     for row in op.matrix]
        rest = op - ConvOperator(ring, constants)
        try:
            depthwise = Depthwise.from_dense(rest, box)
        except InvalidInputError as exc:
            raise InvalidInputError(f"not lean (depthwise + 1x1): {exc}") from None
        return cls(depthwise, Pointwise(ConvOperator(ring, constants)))

    box = property(lambda self: _hull(self.depthwise.box, self.pointwise.box))

    @property
    def ring(self) -> LaurentRing:
        return self.depthwise.ring

    @property
    def shape(self) -> tuple[int, int]:
        return self.depthwise.shape

    @property
    def params(self) -> int:
        return self.depthwise.params + self.pointwise.params

    @property
    def macs_per_position(self) -> int:
        return self.depthwise.macs_per_position + self.pointwise.macs_per_position

    def dense(self) -> ConvOperator:
        return self.depthwise.dense() + self.pointwise.dense()

    def set_ring(self, ring: LaurentRing) -> "Lean":
        return Lean(self.depthwise.set_ring(ring), self.pointwise.set_ring(ring))

    def _compose(self, other: "Lean", box: Box) -> None:
        return None  # (D1 + M1)(D2 + M2) is not lean: D1 M2 couples channels with stencils

    def _add(self, other: "Lean", box: Box) -> "Lean":
        return Lean(self.depthwise + other.depthwise, self.pointwise + other.pointwise)

    def _scale(self, scalar: Any) -> "Lean":
        return Lean(self.depthwise * scalar, self.pointwise * scalar)

    def adjoint(self) -> "Lean":
        """``D(1/z) + M^T``."""
        return Lean(self.depthwise.adjoint(), self.pointwise.adjoint())


# -------------------------------------------------------------------- block-circulant

class BlockCirculant(Coupling):
    """An ``m x m`` block matrix whose block ``(r, c)`` is ``A_{(c - r) mod m}``: every
    block row is the first one shifted cyclically (blocks ``b_out x b_in`` Laurent
    matrices, so ``C_out = m b_out``, ``C_in = m b_in``, channels block-major).

    Applied directly it costs ``m^2 b_out b_in |box|`` multiply-adds per position, with
    ``m`` times fewer weights than the dense stencil; the DFT over the block index
    diagonalizes it (:func:`algebra.channel_dft.channel_dft`)."""

    __slots__ = ("blocks", "box")

    def __init__(self, blocks: Sequence[ConvOperator], box: Box | None = None):
        items = sequence_arg(blocks, "blocks", expected="a sequence of ConvOperators (the first block row)")
        ops = _same_ring([_plain(b, f"blocks[{i}]") for i, b in enumerate(items)])
        if len({b.shape for b in ops}) != 1:
            raise InvalidInputError(f"the blocks of a block-circulant coupling have one shape, got "
                                    f"{sorted({b.shape for b in ops})}")
        self.blocks = tuple(ops)
        self.box = _check_box([e for b in ops for e in _entries(b)], box, ops[0].ndim)

    @classmethod
    def from_weight(cls, weight: Any, *, padding: int | Sequence[int] = 0) -> "BlockCirculant":
        """From the first block row as conv weights, shape ``(m, b_out, b_in, *k)``:
        ``A_k = conv weight[k]``."""
        shape = tuple(getattr(weight, "shape", ()))
        if len(shape) < 4:
            raise InvalidInputError(f"weight must have shape (m, b_out, b_in, *kernel), got {shape}")
        ops = [ConvOperator.from_weight(weight[k], padding=padding) for k in range(shape[0])]
        return cls(ops, weight_box(shape[3:], padding, ops[0].ndim))

    @classmethod
    def symbolic(cls, name: str, m: int, b_out: int, b_in: int, kernel_size: int | Sequence[int],
                 *, padding: int | Sequence[int] = 0, ndim: int | None = None) -> "BlockCirculant":
        """Every weight of every first-row block ``A_k`` its own symbol ``{name}{k}_...``."""
        m = int_arg(m, "m", minimum=1)
        ops = [ConvOperator.symbolic(f"{name}{k}", b_out, b_in, kernel_size, padding=padding,
                                     ndim=ndim) for k in range(m)]
        return cls(ops, weight_box(kernel_size, padding, ops[0].ndim))

    @classmethod
    def from_dense(cls, op: ConvOperator, m: int, box: Box | None = None) -> "BlockCirculant":
        """The first block row of ``op``; refused unless every block row is its cyclic
        shift."""
        _plain(op, "op")
        m = int_arg(m, "m", minimum=1)
        if op.out_channels % m or op.in_channels % m:
            raise InvalidInputError(f"m={m} blocks must divide both channel counts {op.shape}")
        bo, bi = op.out_channels // m, op.in_channels // m

        def block(r: int, c: int) -> ConvOperator:
            return op[r * bo:(r + 1) * bo].columns(slice(c * bi, (c + 1) * bi))
        first = [block(0, k) for k in range(m)]
        for r in range(1, m):
            for c in range(m):
                if block(r, c) != first[(c - r) % m]:
                    raise InvalidInputError(f"not block-circulant with m={m}: block ({r}, {c}) "
                                            f"differs from block (0, {(c - r) % m})")
        return cls(first, box)

    @property
    def ring(self) -> LaurentRing:
        return self.blocks[0].ring

    @property
    def m(self) -> int:
        """The number of blocks per block row."""
        return len(self.blocks)

    @property
    def block_shape(self) -> tuple[int, int]:
        return self.blocks[0].shape

    @property
    def shape(self) -> tuple[int, int]:
        bo, bi = self.block_shape
        return self.m * bo, self.m * bi

    @property
    def params(self) -> int:
        bo, bi = self.block_shape
        return self.m * bo * bi * _volume(self.box)

    @property
    def macs_per_position(self) -> int:
        return self.m * self.params

    def dense(self) -> ConvOperator:
        m = self.m
        bo = self.block_shape[0]
        rows = [[e for c in range(m) for e in self.blocks[(c - r) % m].matrix[i]]
                for r in range(m) for i in range(bo)]
        return ConvOperator(self.ring, rows)

    def set_ring(self, ring: LaurentRing) -> "BlockCirculant":
        return BlockCirculant([b.set_ring(ring) for b in self.blocks], self.box)

    def _compose(self, other: "BlockCirculant", box: Box) -> "BlockCirculant | None":
        """The cyclic convolution ``(A B)_k = sum_i A_i B_{(k - i) mod m}``."""
        if other.m != self.m:
            return None
        m = self.m
        blocks = []
        for k in range(m):
            terms = [self.blocks[i] @ other.blocks[(k - i) % m] for i in range(m)]
            total = terms[0]
            for t in terms[1:]:
                total = total + t
            blocks.append(total)
        return BlockCirculant(blocks, box)

    def _add(self, other: "BlockCirculant", box: Box) -> "BlockCirculant | None":
        if other.m != self.m:
            return None
        return BlockCirculant([a + b for a, b in zip(self.blocks, other.blocks)], box)

    def _scale(self, scalar: Any) -> "BlockCirculant":
        return BlockCirculant([b * scalar for b in self.blocks], self.box)

    def adjoint(self) -> "BlockCirculant":
        """First block row ``(A^*)_k = A_{(-k) mod m}(1/z)^T``."""
        m = self.m
        return BlockCirculant([self.blocks[(-k) % m].adjoint() for k in range(m)],
                              _reflect(self.box))


#: the structures by name (the same names on the float side and in the torch layers)
STRUCTURES: dict[str, type[Coupling]] = {
    "dense": Dense, "depthwise": Depthwise, "pointwise": Pointwise, "grouped": Grouped,
    "lean": Lean, "block_circulant": BlockCirculant}

#: what every coupling has on both twins (this module and :mod:`laurentnet.numeric.structured`)
COUPLING_MEMBERS = ("shape", "out_channels", "in_channels", "ndim", "kernel_size", "box", "params",
                    "macs_per_position", "macs", "dense", "to_weight", "adjoint", "from_dense",
                    "from_weight", "__matmul__", "__add__", "__sub__", "__neg__", "__mul__")
