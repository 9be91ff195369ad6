"""Tight regions: decide every position outside the propagated region by what it computes.

The propagated region (:mod:`algebra.regions`) is tight for *generic* weights.  For the
actual weights more positions can agree — e.g. reflect, replicate or circular padding
copying a constant that an earlier zero padding created.  At an output position ``i`` the
difference between the layer-by-layer network and the collapsed operator is affine in the
input,

    d_i(x) = a_i · x + c_i     (a_i, c_i in the network's domain),

so ``d_i ≡ 0`` iff ``c_i = d_i(0) = 0`` and ``a_i = 0``.  With ``c_i = 0`` and
``a_i ≠ 0``, ``a_i · x`` vanishes at a uniformly random integer ``x ∈ [-2^31, 2^31)^n`` with
probability at most ``2^-32`` (Schwartz–Zippel, degree 1), so two independent random inputs
and ``x = 0`` decide ``d_i ≡ 0`` with error probability at most ``2^-64`` per position —
and only in one direction: a position is added to the region only if all three evaluations
agree exactly.  Positions already in the region are never re-examined (that fast path is a
proof, not a test).  Both sides are evaluated exactly: the network layer by layer
(:func:`algebra.exact_forward.forward_exact`), the operator by
:func:`algebra.signal.apply_operator`.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np

from .exact_forward import forward_exact
from .network import Network
from .signal import apply_operator

__all__ = ["tighten_region", "check_cost", "evaluation_cost", "TIGHT_AUTO_LIMIT", "ERROR_PROBABILITY_BITS",
           "RANDOM_BITS"]

#: ``tight="auto"`` checks when :func:`check_cost` is at most this many exact
#: multiply-adds (about a second of exact arithmetic)
TIGHT_AUTO_LIMIT = 300_000

#: random inputs are integers in [-2^RANDOM_BITS, 2^RANDOM_BITS)
RANDOM_BITS = 31
#: a position is wrongly added with probability at most 2^-ERROR_PROBABILITY_BITS
ERROR_PROBABILITY_BITS = 2 * (RANDOM_BITS + 1)


def check_cost(network: Network, shapes: dict[str, tuple[int, ...]], operator: Any) -> int:
    """Exact multiply-adds of the three evaluations: the network's layers (weights times
    output positions) and the operator's terms times the input positions."""
    terms = sum(len(e.poly) for row in operator.matrix for e in row)
    return evaluation_cost(network, shapes, terms)


def evaluation_cost(network: Network, shapes: dict[str, tuple[int, ...]], terms: int) -> int:
    """:func:`check_cost` for an operator of ``terms`` nonzero coefficients."""
    from .network import AdaptiveAvgPool, AvgPool, Conv, ConvTranspose, GlobalAvgPool
    macs = 0
    for name in network.order():
        node = network.nodes[name]
        out = int(np.prod(shapes[name]))
        if isinstance(node, (Conv, ConvTranspose)):
            macs += out * int(np.prod(node.weight.shape[1:]))
        elif isinstance(node, (AvgPool, AdaptiveAvgPool)):
            windows = node.windows(shapes[node.input][1:])
            macs += shapes[name][0] * int(np.prod([sum(b - a for a, b in zip(ax.start, ax.stop))
                                                   for ax in windows.axes]))
        elif isinstance(node, GlobalAvgPool):
            macs += int(np.prod(shapes[node.input]))
        else:
            macs += out
    return 3 * (macs + terms * int(np.prod(shapes["input"][1:])))


def _random_input(shape: tuple[int, ...], rng: random.Random) -> np.ndarray:
    values = [rng.randrange(-2**RANDOM_BITS, 2**RANDOM_BITS) for _ in range(int(np.prod(shape)))]
    return np.array(values, dtype=object).reshape(shape)


def tighten_region(network: Network, operator: Any, input_shape: tuple[int, ...],
                   output_shape: tuple[int, ...], region: np.ndarray,
                   rng: random.Random | None = None) -> np.ndarray:
    """``region`` plus every outside position where the network equals ``operator`` for
    every input (module docstring; zero-extended semantics)."""
    outside = ~region
    if not outside.any():
        return region
    rng = rng or random.SystemRandom()
    domain = network.domain
    to_sympy = domain.to_sympy
    agree = outside.copy()
    for x in (np.zeros(input_shape, dtype=object), _random_input(input_shape, rng),
              _random_input(input_shape, rng)):
        net = np.array([to_sympy(v) for v in forward_exact(network, x, input_shape)],
                       dtype=object).reshape(output_shape)
        collapsed = operator.apply(x, output_shape[1:]) if getattr(operator, "is_polyphase", False) \
            else apply_operator(operator, x, output_shape[1:])
        for index in zip(*np.nonzero(agree)):
            channel_values = (net[(slice(None), *index)], collapsed[(slice(None), *index)])
            if any((a - b) != 0 and (a - b).expand() != 0 for a, b in zip(*channel_values)):
                agree[index] = False
        if not agree.any():
            break
    return region | agree
