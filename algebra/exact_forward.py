"""The network evaluated exactly, layer by layer, on one input (explicit index sums).

Each single-input layer is its sparse matrix and bias from
:func:`algebra.affine_map.layer_matrix` (PyTorch semantics, every padding mode), applied
to the previous value: ``y_r = sum_c M[r, c] x_c + b_r`` in the network's domain; sums and
stacks combine values.  The cost is the number of nonzero layer entries — linear in the
image — where the affine map of :func:`collapse_affine` is quadratic.  A value is dropped
once no later node reads it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sympy.polys.domains.domain import Domain

from .affine_map import _expand_bias, layer_matrix
from .exact import to_domain
from .footprint import consumers
from .network import Add, Concat, Input, Network

__all__ = ["forward_exact"]


def forward_exact(network: Network, x: Any, input_shape: Sequence[int] | None = None,
                  domain: Domain | None = None) -> list[Any]:
    """The network's output on ``x`` (an array of ``input_shape``, exact numbers), flat in
    C order, as elements of ``domain`` (default: the network's domain)."""
    domain = domain or network.domain
    array = np.asarray(x, dtype=object)
    shapes = network.shapes(array.shape if input_shape is None else input_shape)
    readers = consumers(network)
    values: dict[str, list[Any]] = {}
    for name in network.order():
        node = network.nodes[name]
        if isinstance(node, Input):
            values[name] = [to_domain(v, domain) for v in array.reshape(-1)]
        elif isinstance(node, Add):
            coefficients = node.coefficients or (1,) * len(node.terms)
            total = [domain.zero] * len(values[node.terms[0]])
            for term, c in zip(node.terms, coefficients):
                factor = to_domain(c, domain)
                total = [t + factor * v for t, v in zip(total, values[term])]
            values[name] = total
        elif isinstance(node, Concat):
            values[name] = [v for part in node.parts for v in values[part]]
        else:
            (parent,) = node.inputs
            rows, bias = layer_matrix(node, [shapes[parent]], shapes[name], domain)
            source = values[parent]
            n = int(np.prod(shapes[name]))
            bias = _expand_bias(bias, shapes[name], n)
            values[name] = [sum((w * source[c] for c, w in rows.get(r, {}).items()), domain.zero)
                            + (bias[r] if bias else domain.zero) for r in range(n)]
        for parent in node.inputs:
            readers[parent] -= 1
            if readers[parent] == 0 and parent != network.output_name:
                del values[parent]
    return values[network.output_name]
