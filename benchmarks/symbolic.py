"""Exact collapse on sympy's sparse polynomial rings vs the obvious ``sympy.expand`` of
``Expr`` kernels, on the same network.

The network: ``--layers`` 2-D convolutions ``C -> C`` with 3x3 kernels and random rational
weights ``p/q`` (|p| <= 9, 1 <= q <= 9).  Both sides compute the collapsed kernel matrix
``K_L(z) ... K_2(z) K_1(z)`` by the same left-to-right products:

* package: :class:`algebra.ConvOperator` composition (``@``) over ``QQ``;
* baseline: ``sympy.Matrix`` of ``Expr`` Laurent polynomials in ``z1, z2``; after each
  product every entry is ``sympy.expand``-ed (otherwise the expression tree explodes).

Both results are converted to the same canonical form and checked equal.  Prints a table,
or one JSON object with ``--json`` (keys ``speedup_vs_expr``, ``seconds_package``,
``seconds_expr`` ...).
"""
from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
import sympy

from laurentnet.algebra import ConvOperator


def random_weights(seed: int, layers: int, channels: int) -> list[np.ndarray]:
    rng = random.Random(seed)
    out = []
    for _ in range(layers):
        w = np.empty((channels, channels, 3, 3), dtype=object)
        for index in np.ndindex(w.shape):
            w[index] = sympy.Rational(rng.randint(-9, 9), rng.randint(1, 9))
        out.append(w)
    return out


def collapse_package(weights: list[np.ndarray]) -> ConvOperator:
    ops = [ConvOperator.from_weight(w, padding=1) for w in weights]
    total = ops[0]
    for op in ops[1:]:
        total = op @ total
    return total


def expr_kernel(w: np.ndarray, z1: sympy.Symbol, z2: sympy.Symbol) -> sympy.Matrix:
    """``K_{o,c} = sum_a w[o,c,a] z1^(1 - a1) z2^(1 - a2)`` as ``Expr`` (padding 1)."""
    c_out, c_in = w.shape[:2]
    return sympy.Matrix(c_out, c_in, lambda o, c: sympy.Add(*[
        w[o, c, a1, a2] * z1 ** (1 - a1) * z2 ** (1 - a2) for a1 in range(3) for a2 in range(3)]))


def collapse_expr(weights: list[np.ndarray]) -> sympy.Matrix:
    z1, z2 = sympy.symbols("z1 z2")
    total = expr_kernel(weights[0], z1, z2)
    for w in weights[1:]:
        total = (expr_kernel(w, z1, z2) * total).applyfunc(sympy.expand)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    weights = random_weights(args.seed, args.layers, args.channels)

    start = time.perf_counter()
    package = collapse_package(weights)
    seconds_package = time.perf_counter() - start

    start = time.perf_counter()
    expr = collapse_expr(weights)
    seconds_expr = time.perf_counter() - start

    ring = package.ring
    agree = all(ring.from_sympy(expr[o, c]) == package.matrix[o][c]
                for o in range(args.channels) for c in range(args.channels))
    kernel = "x".join(map(str, package.kernel_size))
    result = {
        "layers": args.layers, "channels": args.channels, "kernel": kernel,
        "seconds_package": seconds_package, "seconds_expr": seconds_expr,
        "speedup_vs_expr": seconds_expr / seconds_package, "results_agree": agree,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"collapse of {args.layers} layers of 3x3 convs, {args.channels} -> {args.channels} "
          f"channels, rational weights -> {args.channels}x{args.channels} kernel {kernel}")
    print(f"{'method':<44}{'seconds':>10}")
    print(f"{'laurentnet (sympy sparse PolyRing over QQ)':<44}{seconds_package:>10.3f}")
    print(f"{'sympy Matrix of Expr + expand':<44}{seconds_expr:>10.3f}")
    print(f"speedup: {seconds_expr / seconds_package:.1f}x; results agree: {agree}")


if __name__ == "__main__":
    main()
