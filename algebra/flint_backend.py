"""The exact collapse backend on python-flint, for networks whose weights are numbers (QQ).

:class:`FlintBackend` is a :class:`~laurentnet.algebra.protocols.CollapseBackend` for
:func:`~laurentnet.algebra.collapse.collapse_walk`: a convolution's operator is built
straight from its weights as integers over one denominator (:func:`conv_operator`, the
conventions of :func:`algebra.layout.operator_from_weight`; sympy would cost more than the
products), every other layer's is made on the sympy side (``node.operator(ring, shape)``)
and converted (:func:`from_conv_operator`); products, sums and stacks run on FLINT; :meth:`FlintBackend.to_conv_operator` turns the
result back into the :class:`~laurentnet.algebra.ConvOperator` the sympy path returns —
equal entry for entry (``tests/test_flint_backend.py`` checks it on random networks).

The memory guard's model (:class:`~laurentnet.algebra.footprint.FootprintModel`) needs the
coefficient sizes before anything is built: :func:`network_sizes` bounds them from the
weights (``|c| <= 2^mag`` and a common denominator ``D`` per node, replayed along the DAG as
the operators compose them), and every integer is sized for the largest bound.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import sympy
from sympy.polys.domains import QQ

from .collapse import AlgebraBackend
from .errors import DependencyError, InvalidInputError
from .exact import to_domain
from .flint_dense import DenseKernel
from .flint_operator import (FlintOperator, flint_vstack, fmpz_bytes, product_workspace_bytes,
                             python_int_bytes, to_fmpq)
from .footprint import OperatorShape
from .laurent import LaurentPoly
from .memory import EXACT_TERM_BYTES
from .network import (AdaptiveAvgPool, Add, AvgPool, ChannelAffine, Concat, Conv, ConvTranspose,
                      Flatten, GlobalAvgPool, Input, Linear, Network)
from .operator import ConvOperator

__all__ = ["FlintBackend", "flint_available", "network_sizes", "from_conv_operator",
           "conv_operator", "exact_fmpq"]


def flint_available() -> bool:
    """Whether python-flint can be imported."""
    try:
        import flint  # noqa: F401
    except ImportError:
        return False
    return True


def _flint() -> Any:
    try:
        import flint
    except ImportError:
        raise DependencyError("the flint collapse backend needs python-flint "
                              "(pip install python-flint)") from None
    return flint


def _coefficient_size(values: Any) -> tuple[int, int]:
    """``(mag, D)`` of exact rationals (``fmpq``): ``|v| <= 2^mag`` and ``D v`` integral."""
    return _ratio_size((int(v.p), int(v.q)) for v in values)


def _ratio_size(pairs: Any) -> tuple[int, int]:
    """``(mag, D)`` of rationals given as ``(p, q)``, ``q > 0``."""
    mag, den = -(1 << 30), 1
    for p, q in pairs:
        if p:
            mag = max(mag, abs(p).bit_length() - q.bit_length() + 1)
            if den % q:
                den = math.lcm(den, q)
    return (mag if mag > -(1 << 30) else 0), den


def _ratio(value: Any) -> tuple[int, int]:
    """A weight as ``(p, q)`` with ``value == p/q`` exactly (fast paths for the usual types)."""
    if isinstance(value, sympy.Rational):
        return int(value.p), int(value.q)
    if isinstance(value, (float, np.floating)):
        return float(value).as_integer_ratio()
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value), 1
    q = exact_fmpq(value)
    return int(q.p), int(q.q)


def exact_fmpq(value: Any) -> Any:
    """A weight (Python/numpy int or float, sympy or ``Fraction`` rational, ...) as the
    ``fmpq`` it equals exactly (floats by their binary value)."""
    flint = _flint()
    if isinstance(value, (float, np.floating)):
        return flint.fmpq(*float(value).as_integer_ratio())
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return flint.fmpq(int(value))
    if isinstance(value, sympy.Rational):
        return flint.fmpq(int(value.p), int(value.q))
    return to_fmpq(_exact(value))


def _exact_values(array: np.ndarray) -> list[Any]:
    """The entries of a (bias) array as ``fmpq``, in C order."""
    flint = _flint()
    if array.dtype.kind == "f":
        return [flint.fmpq(*v.as_integer_ratio()) for v in array.astype(np.float64).ravel().tolist()]
    if array.dtype.kind in "iu":
        return [flint.fmpq(v) for v in array.ravel().tolist()]
    return [exact_fmpq(v) for v in array.ravel()]


def integer_weights(array: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``(num, den, mag)``: an object array of integers with ``array == num / den`` exactly
    and ``|array| <= 2^mag``.  A float ``v = m 2^e`` (``m`` of ``p`` bits) is ``(m 2^p) 2^(e-p)``,
    so ``den = 2^(p - e_min)`` clears every denominator and ``num = v · den`` is a float
    scaling by a power of two, exact; other arrays go through exact rationals."""
    array = np.asarray(array)
    if array.dtype.kind in "iub":
        top = int(np.abs(array).max()) if array.size else 0
        return np.array(array.tolist(), dtype=object).reshape(array.shape), 1, top.bit_length()
    if array.dtype.kind == "f":
        flat = array.astype(np.float64)
        nonzero = np.abs(flat[flat != 0])
        if not nonzero.size:
            return np.zeros(array.shape, dtype=object), 1, 0
        e_top = math.frexp(float(nonzero.max()))[1]
        e_bottom = math.frexp(float(nonzero.min()))[1]
        k = max(0, np.finfo(array.dtype).nmant + 1 - e_bottom)
        if e_top + k < 1000:  # no overflow: the scaling is exact
            num = np.array([int(v) for v in np.ldexp(flat, k).ravel().tolist()], dtype=object)
            return num.reshape(array.shape), 1 << k, e_top
    pairs = [_ratio(v) for v in array.ravel()]
    mag, den = _ratio_size(pairs)
    num = np.array([p * (den // q) for p, q in pairs], dtype=object)
    return num.reshape(array.shape), den, mag


def conv_operator(node: Conv | ConvTranspose, ctx: Any) -> FlintOperator:
    """The operator of a (transposed) convolution layer straight from its weights, in the
    dense form, with the conventions of :func:`algebra.layout.operator_from_weight`:
    ``K_{o,c}(z) = sum_a w[o, c, a] z^(p - d a)`` (transposed: ``w[c, o, a] z^(d a - p)``),
    block diagonal over groups; ``low`` is the least exponent, ``p - d (k - 1)``
    (transposed ``-p``), so the numerator of tap ``a`` sits at ``d (k - 1 - a)`` (``d a``)."""
    transposed = isinstance(node, ConvTranspose)
    num, den, mag = integer_weights(node.weight)
    kernel = num.shape[2:]
    ndim = len(kernel)
    groups = node.groups
    dilation = tuple(node.dilation)
    if transposed:
        c_in, c_out = num.shape[0], num.shape[1] * groups
        low = tuple(-p for p in node.padding)
        # entry (o, c) of group g is w[c, o_local]: swap the channel axes, (C_out/g, C_in, *k)
        num = num.transpose(1, 0, *range(2, 2 + ndim))
    else:
        c_out, c_in = num.shape[0], num.shape[1] * groups
        low = tuple(l - d * (k - 1) for (l, _), d, k in zip(node.padding, dilation, kernel))
        num = num[(slice(None), slice(None), *(slice(None, None, -1),) * ndim)]
    box = tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel))
    dense = np.zeros((c_out, c_in, *box), dtype=object)
    out_per_group, in_per_group = c_out // groups, c_in // groups
    taps = tuple(slice(None, None, d) for d in dilation)
    for g in range(groups):
        rows = slice(g * out_per_group, (g + 1) * out_per_group)
        cols = slice(g * in_per_group, (g + 1) * in_per_group)
        dense[(rows, cols, *taps)] = _group_block(num, g, out_per_group, in_per_group,
                                                  transposed)
    flint = _flint()
    bias = tuple(_exact_values(np.asarray(node.bias))) if node.bias is not None else \
        (flint.fmpq(0),) * c_out
    ones = (1,) * ndim
    stride, upsample = (ones, tuple(node.stride)) if transposed else (tuple(node.stride), ones)
    return FlintOperator(ctx, (c_out, c_in), low, stride, upsample, bias, mag, den,
                         dense=DenseKernel(dense, den, low))


def _group_block(num: np.ndarray, g: int, out_per_group: int, in_per_group: int,
                 transposed: bool) -> np.ndarray:
    """The weights of group ``g`` as a ``(C_out/g, C_in/g, *k)`` block: rows of a conv
    weight ``(C_out, C_in/g, *k)``; for a transposed weight (swapped to ``(C_out/g, C_in,
    *k)``) the columns of the group's inputs."""
    if transposed:
        return num[:, g * in_per_group:(g + 1) * in_per_group]
    return num[g * out_per_group:(g + 1) * out_per_group]


def from_conv_operator(op: ConvOperator, ctx: Any) -> FlintOperator:
    """A :class:`ConvOperator` over ``QQ`` as a sparse :class:`FlintOperator` (numerators
    over the lcm of its coefficients' denominators)."""
    offsets = [e.offset for row in op.matrix for e in row if e.poly]
    low = tuple(min(col) for col in zip(*offsets)) if offsets else (0,) * op.ndim
    coefficients = [[[(m, to_fmpq(c)) for m, c in e.poly.items()] for e in row]
                    for row in op.matrix]
    mag, den = _coefficient_size(v for row in coefficients for terms in row for _, v in terms)
    entries = []
    for row, terms_row in zip(op.matrix, coefficients):
        out_row = []
        for e, terms in zip(row, terms_row):
            shift = tuple(a - b for a, b in zip(e.offset, low))
            out_row.append(ctx.from_dict({tuple(a + b for a, b in zip(m, shift)):
                                          v.p * (den // v.q) for m, v in terms}))
        entries.append(out_row)
    bias = tuple(to_fmpq(b) for b in op.bias)
    return FlintOperator(ctx, op.shape, low, op.stride, op.upsample, bias, mag, den,
                         entries=entries)


@lru_cache(maxsize=64)
def _box_exponents(degrees: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every exponent of the box ``0..degrees`` in FLINT's ``lex`` term order (descending)."""
    return [tuple(d - i for d, i in zip(degrees, index))
            for index in np.ndindex(*(d + 1 for d in degrees))]


def _box_indices(box: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every index of the box, in C order (the order of ``array.ravel()``)."""
    return [tuple(i) for i in np.ndindex(*box)]


def _exponents(p: Any) -> list[tuple[int, ...]]:
    """The exponents of ``p``'s terms as Python ints, in the order of ``p.coeffs()``; a
    polynomial filling its box (the usual collapsed kernel) needs no per-term conversion."""
    degrees = tuple(int(d) for d in p.degrees())
    if len(p) == math.prod(d + 1 for d in degrees):
        return _box_exponents(degrees)
    return [tuple(map(int, e)) for e in p.monoms()]


def _qq_maker(domain: Any) -> Any:
    """``(p, q) -> p/q`` as an element of ``domain`` (``QQ`` with its ground types)."""
    flint = _flint()
    dtype = domain.dtype
    if dtype is flint.fmpq:
        return dtype
    return lambda p, q: dtype(int(p), q)


# -- sizes before anything is built (the memory guard) --------------------------------------
def _array_size(values: Any) -> tuple[int, int]:
    """``(mag, D)`` of a weight array (floats exactly: ``m 2^(e - p)``), in blocks so that a
    wide layer's check allocates a few MB at most."""
    array = np.asarray(values)
    if array.size == 0:
        return 0, 1
    if array.dtype.kind in "iub":
        top = max(abs(int(array.max())), abs(int(array.min())))
        return top.bit_length(), 1
    if array.dtype.kind == "f":
        flat = array.reshape(-1)
        mantissa = np.finfo(array.dtype).nmant + 1
        top, bottom = 0.0, math.inf
        for start in range(0, flat.size, 1 << 20):
            block = np.abs(flat[start:start + (1 << 20)])
            nonzero = block[block != 0]
            if nonzero.size:
                top, bottom = max(top, float(nonzero.max())), min(bottom, float(nonzero.min()))
        if top == 0.0:
            return 0, 1
        e_top, e_bottom = math.frexp(top)[1], math.frexp(bottom)[1]
        return e_top, 1 << max(0, mantissa - e_bottom)
    return _ratio_size(_ratio(v) for v in array.reshape(-1))


def _exact(value: Any) -> Any:
    """``value`` exactly as an element of ``QQ`` (floats by their binary value)."""
    return to_domain(value, QQ)


def _node_size(node: Any, in_shape: Sequence[int]) -> tuple[int, int]:
    """``(mag, D)`` of a layer's kernel coefficients."""
    if isinstance(node, (Conv, ConvTranspose)):
        return _array_size(node.weight)
    if isinstance(node, ChannelAffine):
        return _coefficient_size(exact_fmpq(v) for v in node.scale)
    if isinstance(node, (AvgPool, AdaptiveAvgPool)):
        return 0, node.strided_form(in_shape[1:]).divisor
    if isinstance(node, GlobalAvgPool):
        return 0, math.prod(in_shape[1:])
    return 1, 1  # Split: a 0/1 selection


def network_sizes(network: Network, shapes: dict[str, tuple[int, ...]]) -> int:
    """An upper bound of the bits of every numerator (over its operator's common
    denominator) of every operator a collapse of ``network`` forms: the sizes of the
    layers' coefficients replayed along the DAG with the rules of
    :class:`~laurentnet.algebra.flint_operator.FlintOperator`."""
    sizes: dict[str, tuple[int, int]] = {}
    worst = 1
    for name in network.order():
        node = network.nodes[name]
        if isinstance(node, Input):
            sizes[name] = (1, 1)
            continue
        if isinstance(node, (Flatten, Linear)):
            break
        if isinstance(node, Add):
            coefficients = [exact_fmpq(c) for c in (node.coefficients or ())]
            c_mag, c_den = _coefficient_size(coefficients) if coefficients else (0, 1)
            parts = [sizes[t] for t in node.terms]
            mag = max(m for m, _ in parts) + c_mag + len(parts).bit_length()
            den = math.lcm(*(d for _, d in parts)) * c_den
        elif isinstance(node, Concat):
            parts = [sizes[t] for t in node.parts]
            mag, den = max(m for m, _ in parts), math.lcm(*(d for _, d in parts))
        else:
            (parent,) = node.inputs
            in_shape = shapes[parent]
            local_mag, local_den = _node_size(node, in_shape)
            taps = _taps(node, in_shape)
            p_mag, p_den = sizes[parent]
            mag = local_mag + p_mag + (in_shape[0] * taps).bit_length()
            den = local_den * p_den
        sizes[name] = (mag, den)
        worst = max(worst, max(mag, 0) + den.bit_length() + 1)
    return worst


def _taps(node: Any, in_shape: Sequence[int]) -> int:
    if isinstance(node, (Conv, ConvTranspose)):
        return int(np.prod(node.weight.shape[2:]))
    if isinstance(node, (AvgPool, AdaptiveAvgPool)):
        return math.prod(node.strided_form(in_shape[1:]).kernel)
    if isinstance(node, GlobalAvgPool):
        return math.prod(in_shape[1:])
    return 1


# -- the backend --------------------------------------------------------------------------------
class FlintBackend(AlgebraBackend):
    """:func:`collapse_walk` on python-flint for a network over ``QQ`` (see the module
    docstring); the result converts back with :meth:`to_conv_operator`."""

    def __init__(self, network: Network, shapes: dict[str, tuple[int, ...]] | None = None):
        super().__init__(network)
        if self.ring.domain != QQ:
            raise InvalidInputError(
                f"backend='flint' needs numeric (rational) weights, this network's domain is "
                f"{self.ring.domain}; use backend='sympy' (or 'auto') for symbolic weights")
        flint = _flint()
        self.ctx = flint.fmpz_mpoly_ctx.get(tuple(str(s) for s in self.ring.symbols), "lex")
        self.network = network
        self.bits = network_sizes(network, shapes) if shapes is not None else None

    def prepare(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Bound the coefficient sizes for the memory model (before the walk's estimate)."""
        self.bits = network_sizes(self.network, shapes)

    # -- CollapseBackend ---------------------------------------------------------------------
    def identity(self, channels: int) -> FlintOperator:
        return FlintOperator.identity(self.ctx, channels)

    def node_operator(self, node: Any, in_shape: tuple[int, ...]) -> FlintOperator:
        """Convolutions straight from their weights (:func:`conv_operator`); the other
        layers from their sympy operator (``node.operator``)."""
        if isinstance(node, (Conv, ConvTranspose)):
            return conv_operator(node, self.ctx)
        return from_conv_operator(node.operator(self.ring, in_shape), self.ctx)

    def combine(self, ops: Sequence[FlintOperator], coefficients: Sequence[Any]) -> FlintOperator:
        total = None
        for op, c in zip(ops, coefficients):
            part = op if c == 1 else op * exact_fmpq(c)
            total = part if total is None else total + part
        return total

    def vstack(self, ops: Sequence[FlintOperator]) -> FlintOperator:
        return flint_vstack(ops)

    def tap_pattern(self, op: FlintOperator) -> dict[tuple[int, ...], np.ndarray]:
        return op.tap_pattern()

    def bias_mask(self, op: FlintOperator) -> np.ndarray:
        return np.array([bool(b) for b in op.bias], dtype=bool)

    # -- back to the sympy twin -------------------------------------------------------------
    def to_conv_operator(self, op: FlintOperator) -> ConvOperator:
        """The same operator as a :class:`ConvOperator` over ``QQ`` (each entry normalised
        as :class:`LaurentPoly` does: its own offset, minimum exponent 0 on every axis)."""
        ring = self.ring
        qq = _qq_maker(ring.domain)
        new = ring.poly_ring.zero.new
        zero = ring.zero
        den, low = int(op.den), op.low

        def entry(exps: list[tuple[int, ...]], coeffs: list[Any]) -> LaurentPoly:
            if not exps:
                return zero
            mins = tuple(map(min, zip(*exps)))
            if any(mins):
                exps = [tuple(a - m for a, m in zip(e, mins)) for e in exps]
            terms = dict(zip(exps, [qq(c, den) for c in coeffs]))
            return LaurentPoly(ring, new(terms), tuple(l + m for l, m in zip(low, mins)))

        if op.is_dense:
            matrix = []
            full = _box_indices(op.dense.box)
            for row in op.dense.num:
                out_row = []
                for cell in row:
                    values = cell.ravel().tolist()
                    if 0 not in values:  # fills its box: the exponents are the box's
                        out_row.append(entry(full, values))
                        continue
                    index = np.nonzero(cell != 0)
                    out_row.append(entry(list(zip(*(i.tolist() for i in index))),
                                         cell[index].tolist()))
                matrix.append(out_row)
        else:
            matrix = [[entry(_exponents(p), p.coeffs()) if p else zero for p in row]
                      for row in op.entries]
        bias = [qq(b.p, int(b.q)) for b in op.bias]
        return ConvOperator(ring, matrix, op.stride, bias, op.upsample)

    # -- the memory guard's model (algebra.footprint.FootprintModel) ----------------------
    def _bits(self) -> int:
        if self.bits is None:
            raise RuntimeError("FlintBackend.prepare(shapes) must run before its estimates")
        return self.bits

    def operator_bytes(self, shape: OperatorShape) -> int:
        """The larger of the two forms: ``fmpz_mpoly`` entries (coefficient, exponent word,
        array doubling) or a dense tensor of Python integers (a slot per tap, an integer
        per possibly nonzero term)."""
        bits = self._bits()
        terms = shape.pairs * shape.taps
        sparse = terms * 2 * (fmpz_bytes(bits) + 16) + 128 * shape.rows * shape.cols
        dense = 8 * shape.rows * shape.cols * shape.taps + terms * python_int_bytes(bits)
        return max(sparse, dense)

    def layer_bytes(self, shape: OperatorShape) -> int:
        """The sympy layer it is converted from, the FLINT copy, its dense form and the tap
        pattern."""
        return super().operator_bytes(shape) + 2 * self.operator_bytes(shape) + \
            shape.rows * shape.cols * shape.taps

    def product_bytes(self, outer: OperatorShape, inner: OperatorShape,
                      result: OperatorShape) -> int:
        """The larger of the dense and the sparse kernel's temporaries (beyond the result,
        which the walk counts), with every integer of the largest size."""
        bits = self._bits()
        rows, mid, cols = outer.rows, outer.cols, inner.cols
        triples = int(np.count_nonzero(outer.coupled)) * cols
        out = [product_workspace_bytes(rows, mid, cols, outer.taps, inner.taps, result.taps,
                                       bits, bits, bits, kernel, triples)
               for kernel in ("dense", "sparse")]
        return max(out) + 2 * (self.operator_bytes(outer) + self.operator_bytes(inner))

    def result_bytes(self, shape: OperatorShape) -> int:
        """Converting the collapsed operator into a :class:`ConvOperator` (sympy terms with
        rationals of the largest size)."""
        bits = self._bits()
        return shape.pairs * shape.taps * (EXACT_TERM_BYTES + 2 * python_int_bytes(bits)) + \
            8 * shape.rows * shape.cols
