"""PyTorch weight layouts <-> convolution operators, exactly.

``torch.nn.functional.conv{n}d(x, w, b, stride=s, padding=p, dilation=d, groups=g)`` is,
per axis, ``y[i] = b + sum_a w[a] x[s*i + d*a - p]``, whose kernel is the Laurent polynomial

    K_{o,c}(z) = sum_a w[o, c', a] z^(p - d*a)     (c' = c - group_start(o))

with ``y[i]`` the coefficient of ``z^(s*i)`` in ``K(z) X(z)``: the operator ``down_s ∘ K``.
``conv_transpose{n}d(x, w, b, stride=s, padding=p, dilation=d, groups=g)`` is
``y[j] = b + sum_{s*i + d*a - p = j} w[c, o', a] x[i]``, i.e. ``Y(z) = K(z) X(z^s)`` with
``K_{o,c}(z) = sum_a w[c, o', a] z^(d*a - p)``: the operator ``K ∘ up_s``, the adjoint of
the convolution with the same weight.

Padding on the right only decides how many output positions torch computes; it does not
change the operator, so it is not part of it (see :mod:`algebra.signal` for windows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import sympy
from sympy.polys.domains import QQ
from sympy.polys.domains.domain import Domain

from .errors import InvalidInputError, InvalidTypeError
from .exact import as_array, check_finite, round_rational, to_domain
from .laurent import LaurentRing, per_axis
from .operator import ConvOperator
from .validate import bool_arg, describe, int_arg, optional_bool_arg

__all__ = ["TorchLayout", "operator_from_weight", "operator_to_weight", "default_ring",
           "same_padding"]

_DEFAULT_SYMBOLS = {1: "z", 2: "z1 z2", 3: "z1 z2 z3"}


def default_ring(ndim: int, domain: Domain = QQ) -> LaurentRing:
    """``QQ[z, 1/z]`` in 1-D, ``QQ[z1, z2, ...]`` in 2-D and 3-D."""
    if ndim not in _DEFAULT_SYMBOLS:
        raise InvalidInputError(f"only 1-D, 2-D and 3-D convolutions are supported, got {ndim}-D")
    return LaurentRing(_DEFAULT_SYMBOLS[ndim], domain)


def same_padding(kernel_size: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """Left padding of PyTorch's ``padding='same'``: total ``d*(k-1)``, left ``total // 2``."""
    return tuple(d * (k - 1) // 2 for k, d in zip(kernel_size, dilation))


def operator_from_weight(weight: Any, bias: Any = None, *, stride: int | Sequence[int] = 1,
                         padding: int | Sequence[int] | str = 0,
                         dilation: int | Sequence[int] = 1, groups: int = 1,
                         transposed: bool = False, ring: LaurentRing | None = None,
                         domain: Domain = QQ) -> ConvOperator:
    """The exact operator of a PyTorch convolution (``transposed=False``: weight
    ``(C_out, C_in/g, *k)``) or transposed convolution (``transposed=True``: weight
    ``(C_in, C_out/g, *k)``).  Floats become exact rationals over ``QQ``; ``padding`` may be
    an int, a tuple, ``'valid'`` or (stride 1) ``'same'``."""
    try:
        w = as_array(weight)
    except ValueError as exc:  # a ragged nested list
        raise InvalidInputError(f"weight must be a rectangular array: {exc}") from None
    groups = int_arg(groups, "groups", minimum=1)
    transposed = bool_arg(transposed, "transposed")
    if ring is not None and not isinstance(ring, LaurentRing):
        raise InvalidTypeError(f"ring must be a LaurentRing or None, got {describe(ring)}")
    if not isinstance(domain, Domain):
        raise InvalidTypeError(f"domain must be a sympy Domain such as QQ, got {describe(domain)}")
    if w.dtype.kind in "USV":
        raise InvalidTypeError(f"weight must hold numbers, got dtype {w.dtype}")
    if w.ndim < 3 or w.ndim > 5:
        raise InvalidInputError(f"weight must have 3, 4 or 5 axes (out, in/groups, *kernel), got shape {w.shape}")
    check_finite(w, "weight")
    if w.size == 0:
        raise InvalidInputError(f"weight is empty (shape {w.shape})")
    ndim = w.ndim - 2
    if ring is None:
        ring = default_ring(ndim, domain)
    elif ring.ngens != ndim:
        raise InvalidInputError(f"a {ndim}-D weight needs a ring with {ndim} variables, got {ring}")
    stride = per_axis(stride, ndim, "stride")
    dilation = per_axis(dilation, ndim, "dilation")
    kernel = w.shape[2:]
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * ndim
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise InvalidInputError("padding='same' is only defined for stride 1 (as in PyTorch)")
            padding = same_padding(kernel, dilation)
        else:
            raise InvalidInputError(f"padding must be an int, a tuple, 'valid' or 'same', got {padding!r}")
    padding = per_axis(padding, ndim, "padding")
    if any(p < 0 for p in padding) or any(s <= 0 for s in stride) or any(d <= 0 for d in dilation):
        raise InvalidInputError(f"need padding >= 0, stride >= 1, dilation >= 1; got {padding}, {stride}, {dilation}")
    if groups < 1 or w.shape[0] % groups:
        raise InvalidInputError(f"groups={groups} must divide the weight's first axis ({w.shape[0]})")
    if transposed:
        c_in, c_out = w.shape[0], w.shape[1] * groups
    else:
        c_out, c_in = w.shape[0], w.shape[1] * groups
    out_per_group, in_per_group = c_out // groups, c_in // groups

    dom = ring.domain
    sign = 1 if transposed else -1  # exponent = sign * (d*a) + (-p if transposed else p)
    base = tuple(-p if transposed else p for p in padding)
    entries: dict[tuple[int, int], dict[tuple[int, ...], Any]] = {}
    for index in np.ndindex(w.shape):
        value = w[index]
        if value == 0:
            continue
        if transposed:
            c, o_local, a = index[0], index[1], index[2:]
            o = (c // in_per_group) * out_per_group + o_local
        else:
            o, c_local, a = index[0], index[1], index[2:]
            c = (o // out_per_group) * in_per_group + c_local
        exponent = tuple(b + sign * d * ai for b, d, ai in zip(base, dilation, a))
        entries.setdefault((o, c), {})[exponent] = to_domain(value, dom)
    matrix = [[ring.from_dict(entries[(o, c)]) if (o, c) in entries else ring.zero
               for c in range(c_in)] for o in range(c_out)]
    bias_values = None
    if bias is not None:
        try:
            b = as_array(bias)
        except ValueError as exc:
            raise InvalidInputError(f"bias must be a rectangular array: {exc}") from None
        if b.shape != (c_out,):
            raise InvalidInputError(f"bias must have shape ({c_out},), got {b.shape}")
        check_finite(b, "bias")
        try:
            bias_values = [to_domain(v, dom) for v in b.tolist()] if b.dtype != object else \
                [to_domain(v, dom) for v in b]
        except (InvalidInputError, InvalidTypeError) as exc:
            raise type(exc)(f"bias: {exc}") from None
    if transposed:
        return ConvOperator(ring, matrix, stride=1, upsample=stride, bias=bias_values)
    return ConvOperator(ring, matrix, stride=stride, bias=bias_values)


@dataclass(frozen=True)
class TorchLayout:
    """Arguments of ``torch.nn.functional.conv{n}d`` / ``conv_transpose{n}d``."""
    weight: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    transposed: bool = False

    def kwargs(self) -> dict[str, Any]:
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation,
                "groups": self.groups}


def _domain_to_number(value: Any, domain: Domain, dtype: Any) -> Any:
    exact = domain.to_sympy(value)
    if dtype is object:
        return exact
    if exact.is_Rational:
        return round_rational(exact, dtype)
    if exact.free_symbols:
        raise InvalidInputError(f"coefficient {exact} is symbolic; use dtype=object or subs() first")
    return np.dtype(dtype).type(complex(exact) if np.dtype(dtype).kind == "c" else float(exact))


def operator_to_weight(op: ConvOperator, *, groups: int = 1, dilation: int | Sequence[int] = 1,
                       transposed: bool | None = None, dtype: Any = np.float64) -> TorchLayout:
    """The PyTorch layout of ``op``; the inverse of :func:`operator_from_weight`.

    ``down_s K`` gives a convolution with left padding ``p = max exponent`` (the smallest
    ``p >= 0`` when the kernel only looks ahead); ``K up_u`` gives a transposed convolution.
    ``groups``/``dilation`` ask for that structure and raise if the kernel lacks it.
    ``dtype=object`` returns exact sympy numbers."""
    ndim = op.ndim
    groups = int_arg(groups, "groups", minimum=1)
    transposed = optional_bool_arg(transposed, "transposed")
    if dtype is not object:
        try:
            if isinstance(dtype, (bool, int, float, str, bytes)) and not isinstance(dtype, str):
                raise TypeError
            dtype = np.dtype(dtype)
        except (TypeError, ValueError):
            raise InvalidTypeError(f"dtype must be object or a numpy float dtype such as "
                                   f"np.float64, got {describe(dtype)}") from None
        if dtype.kind not in "fc" and dtype != np.dtype(object):
            raise InvalidInputError(f"dtype must be object or a numpy float dtype such as "
                                    f"np.float64, got {dtype}")
        if dtype == np.dtype(object):
            dtype = object
    dilation = per_axis(dilation, ndim, "dilation")
    if any(d < 1 for d in dilation):
        raise InvalidInputError(f"dilation must be >= 1, got {dilation}")
    strided = any(s != 1 for s in op.stride)
    upsampled = any(u != 1 for u in op.upsample)
    if strided and upsampled:
        raise InvalidInputError(f"stride {op.stride} with up-sampling {op.upsample} is not one PyTorch layer")
    if transposed is None:
        transposed = upsampled
    if transposed and strided or (not transposed and upsampled):
        raise InvalidInputError("this operator's rates do not fit the requested layout")
    c_out, c_in = op.shape
    if groups < 1 or c_out % groups or c_in % groups:
        raise InvalidInputError(f"groups={groups} must divide C_out={c_out} and C_in={c_in}")
    opg, ipg = c_out // groups, c_in // groups
    for o in range(c_out):
        for c in range(c_in):
            if o // opg != c // ipg and op.matrix[o][c]:
                raise InvalidInputError(f"entry ({o}, {c}) is nonzero outside the {groups} diagonal "
                                        "blocks: the operator is not a grouped convolution")
    box = op.support() or ((0,) * ndim, (0,) * ndim)
    low, high = box
    for row in op.matrix:
        for e in row:
            for exps, _ in e.iterterms():
                if any((x - h) % d for x, h, d in zip(exps, high, dilation)):
                    raise InvalidInputError(f"exponent {exps} is off the dilation-{dilation} lattice")
    if transposed:
        # e = d*a - p, p >= 0, a >= 0  ->  p = smallest value >= -low on the lattice
        padding = tuple(-l if l <= 0 else (-l) % d for l, d in zip(low, dilation))
        size = tuple((h + p) // d + 1 for h, p, d in zip(high, padding, dilation))
        shape = (c_in, opg, *size)
    else:
        # e = p - d*a  ->  p = greatest exponent, or the smallest p >= 0 on the lattice
        padding = tuple(h if h >= 0 else h % d for h, d in zip(high, dilation))
        size = tuple((p - l) // d + 1 for p, l, d in zip(padding, low, dilation))
        shape = (c_out, ipg, *size)
    dom = op.ring.domain
    weight = np.zeros(shape, dtype=dtype)
    if dtype is object:
        weight[...] = sympy.Integer(0)
    for o in range(c_out):
        for c in range(c_in):
            for exps, coeff in op.matrix[o][c].iterterms():
                if transposed:
                    a = tuple((x + p) // d for x, p, d in zip(exps, padding, dilation))
                    weight[(c, o % opg, *a)] = _domain_to_number(coeff, dom, dtype)
                else:
                    a = tuple((p - x) // d for x, p, d in zip(exps, padding, dilation))
                    weight[(o, c % ipg, *a)] = _domain_to_number(coeff, dom, dtype)
    bias = None
    if op.has_bias:
        bias = np.array([_domain_to_number(b, dom, dtype) for b in op.bias], dtype=dtype)
    rates = op.upsample if transposed else op.stride
    return TorchLayout(weight, bias, rates, padding, dilation, groups, transposed)
