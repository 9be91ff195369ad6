"""The single-layer model: a linear network on a fixed input size is one affine map.

``f(X) = W X + B`` with ``X`` the input flattened in C order (channel, then spatial axes),
exact over the network's domain (``QQ`` or a polynomial ring of symbolic weights), for
every padding mode, including flatten and linear layers, so a whole classifier collapses.

Each layer is written out as its own sparse matrix by explicit index sums with PyTorch's
semantics (``y[o, i] = b_o + sum_{c, a} w[o, c, a] x[c, pad(s i - p + d a)]``, with ``pad``
the padding mode's index map), and the network is the product of these matrices in
homogeneous coordinates ``[[M, b], [0, 1]]`` on sympy's sparse ``DomainMatrix`` (SDM).
This evaluation never uses the polynomial arithmetic, which makes it the independent side
of :func:`algebra.prove.prove_collapse`.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import sympy
from sympy.polys.domains.domain import Domain
from sympy.polys.matrices import DomainMatrix

from .errors import InvalidInputError, InvalidTypeError
from .exact import round_rational, to_domain
from .memory import check_budget, memory_limit
from .regions import mode_index
from .network import (AdaptiveAvgPool, Add, AvgPool, ChannelAffine, Concat, Conv, ConvTranspose,
                      Flatten, GlobalAvgPool, Input, Linear, Network, Shape, Split)
from .pooling import PoolWindows, adaptive_axis

__all__ = ["AffineMap", "collapse_affine", "layer_matrix", "index_map", "flat_index"]

_BYTES_PER_EXACT_ENTRY = 100  # a dict slot plus a gmpy rational, roughly


def index_map(mode: str, size: int) -> Callable[[int], int | None]:
    """Where a padded position ``j`` reads the input: ``None`` for a zero (PyTorch's rules,
    the same map as :func:`algebra.regions.mode_index`)."""
    if mode == "zeros":
        return lambda j: j if 0 <= j < size else None
    return lambda j: int(mode_index(mode, np.int64(j), size))


def flat_index(shape: Shape) -> Callable[[int, tuple[int, ...]], int]:
    """Position of ``(channel c, spatial position pos)`` in a tensor of ``shape`` flattened
    in C order: ``c * prod(n) + sum_k pos_k * prod(n_{k+1:})`` (how ``W`` indexes ``X``)."""
    spatial = shape[1:]
    strides = [int(np.prod(spatial[k + 1:])) for k in range(len(spatial))]
    plane = int(np.prod(spatial))
    return lambda c, pos: c * plane + sum(p * s for p, s in zip(pos, strides))


def _converted(array: np.ndarray, domain: Domain) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    for index in np.ndindex(array.shape):
        out[index] = to_domain(array[index], domain)
    return out


def _conv_entries(node: Conv, in_shape: Shape, out_shape: Shape, domain: Domain):
    weight = _converted(node.weight, domain)
    maps = [index_map(node.mode if pads != (0, 0) else "zeros", n)
            for pads, n in zip(node.padding, in_shape[1:])]
    row_of, col_of = flat_index(out_shape), flat_index(in_shape)
    out_per_group = out_shape[0] // node.groups
    in_per_group = in_shape[0] // node.groups
    rows: dict[int, dict[int, Any]] = {}
    kernel = node.weight.shape[2:]
    for i in np.ndindex(*out_shape[1:]):
        reads = []
        for a in np.ndindex(*kernel):
            pos = []
            for ax, (ia, aa) in enumerate(zip(i, a)):
                j = node.stride[ax] * ia - node.padding[ax][0] + node.dilation[ax] * aa
                pos.append(maps[ax](j))
            if None not in pos:
                reads.append((a, tuple(pos)))
        for o in range(out_shape[0]):
            row: dict[int, Any] = {}
            g = o // out_per_group
            for c_local in range(in_per_group):
                c = g * in_per_group + c_local
                for a, pos in reads:
                    w = weight[(o, c_local, *a)]
                    if w:
                        col = col_of(c, pos)
                        row[col] = row.get(col, domain.zero) + w
            row = {k: v for k, v in row.items() if v}
            if row:
                rows[row_of(o, i)] = row
    bias = None if node.bias is None else [to_domain(b, domain) for b in node.bias]
    return rows, bias


def _conv_transpose_entries(node: ConvTranspose, in_shape: Shape, out_shape: Shape,
                            domain: Domain):
    weight = _converted(node.weight, domain)
    row_of, col_of = flat_index(out_shape), flat_index(in_shape)
    out_per_group = out_shape[0] // node.groups
    in_per_group = in_shape[0] // node.groups
    rows: dict[int, dict[int, Any]] = {}
    for c in range(in_shape[0]):
        g = c // in_per_group
        for i in np.ndindex(*in_shape[1:]):
            col = col_of(c, i)
            for a in np.ndindex(*node.weight.shape[2:]):
                j = tuple(s * ii + d * aa - p for s, ii, d, aa, p in
                          zip(node.stride, i, node.dilation, a, node.padding))
                if any(x < 0 or x >= n for x, n in zip(j, out_shape[1:])):
                    continue
                for o_local in range(out_per_group):
                    w = weight[(c, o_local, *a)]
                    if w:
                        row = rows.setdefault(row_of(g * out_per_group + o_local, j), {})
                        row[col] = row.get(col, domain.zero) + w
    bias = None if node.bias is None else [to_domain(b, domain) for b in node.bias]
    return rows, bias


def _pool_entries(node: AvgPool | AdaptiveAvgPool | GlobalAvgPool, in_shape: Shape,
                  out_shape: Shape, domain: Domain):
    """``y[c, i] = (1 / D(i)) Σ_{j in box(i)} x[c, j]`` with the windows and divisors of
    :mod:`algebra.pooling` (PyTorch's rules)."""
    spatial = in_shape[1:]
    if isinstance(node, GlobalAvgPool):
        windows = PoolWindows(tuple(adaptive_axis(n, 1) for n in spatial))
    else:
        windows = node.windows(spatial)
    row_of, col_of = flat_index(out_shape), flat_index(in_shape)
    rows: dict[int, dict[int, Any]] = {}
    for i in np.ndindex(*out_shape[1:]):
        reads = list(itertools.product(*windows.box(i)))
        weight = to_domain(sympy.Rational(1, windows.divisor(i)), domain)
        for c in range(in_shape[0]):
            rows[row_of(c, i)] = {col_of(c, pos): weight for pos in reads}
    return rows, None


def layer_matrix(node: Any, in_shapes: Sequence[Shape], out_shape: Shape, domain: Domain
                 ) -> tuple[dict[int, dict[int, Any]], list[Any] | None]:
    """The sparse matrix (dict of rows) and bias of one single-input layer, by index sums."""
    (in_shape,) = in_shapes
    if isinstance(node, Conv):
        return _conv_entries(node, in_shape, out_shape, domain)
    if isinstance(node, ConvTranspose):
        return _conv_transpose_entries(node, in_shape, out_shape, domain)
    if isinstance(node, (AvgPool, AdaptiveAvgPool, GlobalAvgPool)):
        return _pool_entries(node, in_shape, out_shape, domain)
    if isinstance(node, ChannelAffine):
        plane = int(np.prod(in_shape[1:]))
        rows = {}
        for c, scale in enumerate(node.scale):
            value = to_domain(scale, domain)
            if value:
                for k in range(plane):
                    rows[c * plane + k] = {c * plane + k: value}
        bias = None if node.shift is None else \
            [to_domain(node.shift[c], domain) for c in range(in_shape[0]) for _ in range(plane)]
        return rows, bias
    if isinstance(node, Split):
        plane = int(np.prod(in_shape[1:]))
        return {r: {node.start * plane + r: domain.one}
                for r in range((node.stop - node.start) * plane)}, None
    if isinstance(node, Flatten):
        n = int(np.prod(in_shape))
        return {r: {r: domain.one} for r in range(n)}, None
    if isinstance(node, Linear):
        weight = _converted(node.weight, domain)
        rows = {o: {i: weight[o, i] for i in range(weight.shape[1]) if weight[o, i]}
                for o in range(weight.shape[0])}
        bias = None if node.bias is None else [to_domain(b, domain) for b in node.bias]
        return {o: r for o, r in rows.items() if r}, bias
    raise TypeError(f"no layer matrix for {type(node).__name__}")


def _expand_bias(bias: list[Any] | None, out_shape: Shape, rows: int) -> list[Any] | None:
    """Per-channel biases repeated over the spatial positions."""
    if bias is None or len(bias) == rows:
        return bias
    plane = int(np.prod(out_shape[1:]))
    return [b for b in bias for _ in range(plane)]


@dataclass
class AffineMap:
    """``f(X) = W X + B``: ``W`` a sparse ``DomainMatrix`` ``(n_out, n_in)``, ``B`` a list."""
    W: DomainMatrix
    B: list[Any]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    @property
    def domain(self) -> Domain:
        return self.W.domain

    def weight_matrix(self) -> sympy.Matrix:
        """``W`` as a sympy ``Matrix`` (dense; for small maps and notebooks)."""
        return self.W.to_Matrix()

    def bias_vector(self) -> sympy.Matrix:
        return sympy.Matrix([self.domain.to_sympy(b) for b in self.B])

    def to_numpy(self, dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray]:
        """``(W, B)`` as dense float arrays (rounded once from the exact values)."""
        to_sympy = self.domain.to_sympy

        def number(v: Any) -> Any:
            value = to_sympy(v)
            if value.free_symbols:
                raise InvalidInputError(f"the map is symbolic ({value}); substitute values first")
            return round_rational(value, dtype)
        W = np.zeros(self.W.shape, dtype=dtype)
        for r, row in self.W.rep.to_dod().items():
            for c, v in row.items():
                W[r, c] = number(v)
        B = np.array([number(b) for b in self.B], dtype=dtype)
        return W, B

    def apply(self, x: Any) -> np.ndarray:
        """Exact ``W x + B`` for one input of ``input_shape`` (object array, output shape)."""
        try:
            shape = tuple(np.shape(x))
        except ValueError:  # a ragged nested list
            shape = "a ragged nested list"
        if shape != tuple(self.input_shape):
            raise InvalidInputError(f"x: expected one input of shape {self.input_shape}, got "
                                    f"{shape} (call the map itself on a batch)")
        flat = np.asarray(x, dtype=object).reshape(-1)
        dom = self.domain
        values = [to_domain(v, dom) for v in flat]
        out = []
        dod = self.W.rep.to_dod()
        for r in range(self.W.shape[0]):
            acc = self.B[r]
            for c, v in dod.get(r, {}).items():
                acc += v * values[c]
            out.append(dom.to_sympy(acc))
        return np.array(out, dtype=object).reshape(self.output_shape)

    def __call__(self, X: Any) -> np.ndarray:
        """Exact ``W x + B`` for every input of a batch ``(N, *input_shape)``: an object array
        ``(N, *output_shape)`` (the twin of :class:`laurentnet.numeric.AffineMap`'s call)."""
        batch = np.asarray(X, dtype=object)
        if batch.shape[1:] != tuple(self.input_shape):
            raise InvalidInputError(f"X: expected a batch of shape (N, {', '.join(map(str, self.input_shape))}), "
                                    f"got {batch.shape}")
        return np.stack([self.apply(x) for x in batch]) if len(batch) else \
            np.empty((0, *self.output_shape), dtype=object)

    @property
    def n_in(self) -> int:
        return self.W.shape[1]

    @property
    def n_out(self) -> int:
        return self.W.shape[0]

    def nnz(self) -> int:
        return sum(len(r) for r in self.W.rep.to_dod().values())


def collapse_affine(network: Network, input_shape: Sequence[int], *, budget: Any = None
                    ) -> AffineMap:
    """The exact affine map of the whole network (any padding, flatten, linear).
    ``budget`` (bytes or a size like ``"200M"``; default the budget in force) bounds the
    dense size of the widest layer's map, checked from the shapes before any work."""
    if not isinstance(network, Network):
        raise InvalidTypeError(f"collapse_affine needs an algebra Network, got {type(network).__name__}")
    with memory_limit(budget):
        return _collapse_affine(network, input_shape)


def _collapse_affine(network: Network, input_shape: Sequence[int]) -> AffineMap:
    shapes = network.shapes(input_shape)
    domain = network.domain
    n_in = int(np.prod(shapes["input"]))
    widest = max(int(np.prod(shape)) for shape in shapes.values())
    check_budget(widest * n_in * _BYTES_PER_EXACT_ENTRY,
                 f"the exact affine map ({widest} x {n_in} entries at the widest layer, "
                 f"~{_BYTES_PER_EXACT_ENTRY} bytes each when dense)")
    values: dict[str, tuple[DomainMatrix, list[Any]]] = {}
    for name in network.order():
        node = network.nodes[name]
        shape = shapes[name]
        n = int(np.prod(shape))
        if isinstance(node, Input):
            values[name] = (DomainMatrix({r: {r: domain.one} for r in range(n)}, (n, n), domain),
                            [domain.zero] * n)
        elif isinstance(node, Add):
            coefficients = node.coefficients or (1,) * len(node.terms)
            W, B = None, [domain.zero] * n
            for term, c in zip(node.terms, coefficients):
                factor = to_domain(c, domain)
                Wt, Bt = values[term]
                Wt = Wt if factor == domain.one else Wt * factor
                W = Wt if W is None else W + Wt
                B = [b + factor * bt for b, bt in zip(B, Bt)]
            values[name] = (W, B)
        elif isinstance(node, Concat):
            parts = [values[p] for p in node.parts]
            values[name] = (parts[0][0].vstack(*[p[0] for p in parts[1:]]),
                            [b for p in parts for b in p[1]])
        else:
            try:
                rows, bias = layer_matrix(node, [shapes[p] for p in node.inputs], shape, domain)
            except InvalidInputError as exc:
                raise InvalidInputError(f"node {name!r} ({node.describe()}): {exc}") from None
            (parent,) = node.inputs
            W_in, B_in = values[parent]
            M = DomainMatrix(rows, (n, W_in.shape[0]), domain)
            W = M.matmul(W_in)
            MB = M.matmul(DomainMatrix({r: {0: b} for r, b in enumerate(B_in) if b},
                                       (len(B_in), 1), domain)).rep.to_dod()
            bias = _expand_bias(bias, shape, n)
            B = [MB.get(r, {}).get(0, domain.zero) + (bias[r] if bias else domain.zero)
                 for r in range(n)]
            values[name] = (W, B)
    W, B = values[network.output_name]
    return AffineMap(W, B, tuple(shapes["input"]), tuple(shapes[network.output_name]))
