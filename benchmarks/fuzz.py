"""Fuzz every collapse path of laurentnet against an independent PyTorch reference.

Each network is a random linear program (:class:`Spec`) drawn from ``(seed, index)``
alone, so ``--replay SEED:INDEX`` rebuilds it bit for bit.  Five families:

* ``chain``      — convs with every padding mode (zeros/reflect/replicate/circular, valid,
  ``'same'``, symmetric or asymmetric), strides, dilation, groups; residual blocks, summed
  branches, long skips, concat/split/channel slices, batch norm, per-channel affine,
  scalar multiples, average pooling (padded, ``count_include_pad`` on or off,
  ``ceil_mode``, ``divisor_override``), adaptive average pooling (output sizes that divide
  the input or not), global average pooling; 1-D, 2-D and 3-D;
* ``periodic``   — all-circular, size-keeping networks (strides dividing the sizes,
  non-overlapping pools): collapse must detect them and be exact everywhere;
* ``multirate``  — the chain plus transposed convs and zero-insertion up-sampling; half
  kept one strided kernel (coprime rates, no bias before an up-sampling), half built
  around the patterns that collapse to a polyphase operator: up-sampling after a stride
  with ``gcd(u, s) != 1``, a bias before up-sampling, and sums of branches with different
  rates (``x + down_s K up_u x``).  A sum of branches whose rates ``S/U`` differ has no
  collapse: the collapses must refuse it;
* ``classifier`` — a chain, maybe a global pool, then flatten and one or two linear layers
  (only the affine paths accept it);
* ``kernels``    — zero-padded chains of wide, dilated convs (1-D: kernels up to 7,
  dilation 3, sizes 12-40), so that the composed kernels span every product method.

Each network also draws the collapses' ``tight=`` argument (``"auto"``, ``True`` or
``False``).

Sizes stay small so that sympy's exact paths are fast: 1-4 channels, spatial sizes 3-9
(up to 12 inside a 1-D network; 3-D inputs 3-4, at most 5 inside), depth 1-4 blocks,
kernels 1-3, strides and dilations 1-3, paddings 0-3.  Weights are small rationals
(``Fraction(p, q)``, ``|p| <= 6``, ``q`` in {1, 2, 3, 4, 5, 8}, a few exact zeros) handed
to the package exactly (the reference gets each rounded once to float64); batch-norm
statistics are the floats of small rationals.  Six paths are run on every network:

================ ============================================================================
path             what is compared (``TOL`` = 1e-9 relative to the largest reference value)
================ ============================================================================
exact_affine     ``algebra.collapse_affine``: ``W`` and ``B`` (each entry rounded once)
                 equal the reference's within ``TOL``; on small networks (at most
                 ``EXACT_REFERENCE_INPUTS`` inputs) they also equal
                 :func:`exact_reference` — the program in exact fractions by explicit
                 index sums — as rationals.
exact_collapse   ``algebra.collapse``: the exact operator written out as a matrix on the
                 output window (``y[o,i] = b_o + sum K_oc[s i - u j] x[c,j]``, modulo the
                 size when periodic; :func:`operator_matrix`, not the package's ``apply``):
                 at every position of the region its rows equal the reference's within
                 ``TOL`` and the exact affine map's rows *exactly* (rational equality); the
                 package's ``CollapseResult.apply(x)`` is checked on the region too when it
                 is cheap.  A polyphase operator is written out by its phases
                 (:func:`polyphase_matrix`).  Positions outside the region whose rows all
                 equal the reference are counted as ``region_not_tight`` (not a mismatch),
                 except that a region tight "for these weights" must be exactly the
                 positions whose rows equal the exact affine map's as rationals, and
                 ``tight=True`` / ``False`` must give / not give such a region.  A periodic
                 network is also collapsed with ``periodic=False`` and checked the same way.
numeric_collapse ``numeric.collapse_numeric``: ``NumericCollapse.apply`` on the identity
                 batch (every unit input and 0; on inputs larger than
                 ``IDENTITY_BATCH_MAX``, on ``SAMPLES`` random inputs) gives the rows of
                 ``W`` and ``B`` at the region's positions: within ``TOL`` of the reference;
                 a region tight for these weights equals the exact one.
numeric_methods  the numeric collapse once per ``polymatmul`` method (``dft``, ``fft``,
                 ``taps``, ``conv``, forced for every kernel product), each checked as
                 ``numeric_collapse``; the products per method are counted.
affine_vjp       ``numeric.affine_numeric(method="vjp")``: ``W``, ``B`` vs the reference.
affine_jvp       ``numeric.affine_numeric(method="jvp")``: ``W``, ``B`` vs the reference.
================ ============================================================================

The reference never touches the package's own evaluator (``NetworkModule``): it builds the
torch layers from the same random parameters, layer by layer in float64 —
``nn.Conv{n}d(padding_mode=...)`` for symmetric and ``'same'`` padding, ``F.pad(mode)`` then
``F.conv{n}d`` for asymmetric padding, ``F.conv_transpose{n}d``, explicit zero insertion,
``F.batch_norm(training=False)``, ``F.avg_pool{n}d`` (a 1-D ``divisor_override`` through
``F.avg_pool2d``), ``F.adaptive_avg_pool{n}d``, ``mean``, ``torch.cat``/slicing,
``flatten``, ``F.linear`` — with the shapes from PyTorch's size formulas.  Its ``W`` and
``B`` are ``f(e_j) - f(0)`` and ``f(0)`` on the identity batch.

A path that refuses a network with a package error (``LaurentnetError``) or one of the
documented refusals (:data:`DOCUMENTED_REFUSALS`: flatten/linear in a collapse, branches
with different rates) counts as ``refused``; a refusal of a network the path should accept
(:func:`expected_to_accept`) is listed apart.  Any other exception is a crash and counts
as a mismatch, with its traceback summary.  Each path call has a time limit
(``--path-timeout``): a path over it counts as a ``timeout``, reported apart from
mismatches.

    python benchmarks/fuzz.py [--seconds 120] [--seed S] [--max-networks N] [--json]
    python benchmarks/fuzz.py --replay SEED:INDEX

Exit status: 0 when no mismatch was found, 1 when any was, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import re
import secrets
import signal
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import sympy
import torch
import torch.nn as nn
import torch.nn.functional as F

import laurentnet.algebra as algebra
import laurentnet.numeric as numeric
import laurentnet.numeric.kernels as numeric_kernels
from laurentnet.algebra import LaurentnetError, Network

Shape = tuple[int, ...]

TOL = 1e-9
FAMILIES = ("chain", "periodic", "multirate", "classifier", "kernels")
#: run in this order: the exact collapse is also checked against the exact affine map
PATHS = ("exact_affine", "exact_collapse", "numeric_collapse", "numeric_methods", "affine_vjp",
         "affine_jvp")
#: the product methods of :func:`laurentnet.numeric.polymatmul.polymatmul` that the
#: ``numeric_methods`` path forces, one numeric collapse each
PRODUCT_METHODS = ("dft", "fft", "taps", "conv")
#: the ``tight=`` settings a network is collapsed with (drawn per network)
TIGHT_SETTINGS = ("auto", True, False)
MODES = ("zeros", "reflect", "replicate", "circular")
STATUSES = ("ok", "refused", "mismatch", "timeout")

#: how the reference pads for each of the package's padding modes (``nn.Conv`` spelling);
#: a test replaces an entry to check that a wrong reference is caught
REFERENCE_PAD_MODE = {"zeros": "zeros", "reflect": "reflect", "replicate": "replicate",
                      "circular": "circular"}

#: network tags: a sum or concat of branches whose rates ``S / U`` differ (no collapse
#: exists: the collapses must refuse it), or whose rates the harness cannot tell
RATES_DIFFER = "sum of unequal rate ratios"
RATES_UNKNOWN = "sum after an adaptive fit"

#: the paths that collapse the network to one operator
COLLAPSE_PATHS = ("exact_collapse", "numeric_collapse", "numeric_methods")

#: documented refusals that are plain ``ValueError``s: (label, message pattern, paths)
DOCUMENTED_REFUSALS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("flatten/linear is not a convolution", r"is not a convolution; collapse the network "
     r"to an affine map", COLLAPSE_PATHS),
    ("output is not an image", r"the network output is not an image",
     COLLAPSE_PATHS),
    ("up-sampling after a non-coprime stride", r"is not a single multi-rate convolution",
     COLLAPSE_PATHS),
    ("bias before up-sampling", r"a bias before zero-insertion up-sampling is not "
     r"shift-invariant", COLLAPSE_PATHS),
    ("branches with different rates", r"cannot add operators with strides|vstack needs "
     r"operators with equal strides", COLLAPSE_PATHS),
)


# -- random programs ----------------------------------------------------------------------
@dataclass
class Op:
    """One layer: ``kind`` reads the values ``inputs`` and appends one value (a ``split``
    appends one per part)."""
    kind: str
    inputs: tuple[int, ...]
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        shown = []
        for key, value in self.params.items():
            if isinstance(value, np.ndarray):
                value = f"array{value.shape}"
            elif isinstance(value, (list, tuple)) and value and isinstance(value[0], Fraction):
                value = "[" + ", ".join(str(v) for v in value) + "]"
            elif isinstance(value, Fraction):
                value = str(value)
            shown.append(f"{key}={value}")
        return f"{self.kind}({', '.join(f'v{i}' for i in self.inputs)}; {', '.join(shown)})"


@dataclass
class Spec:
    """A random linear network: ops over values (``v0`` is the input) with PyTorch shapes."""
    seed: int
    index: int
    family: str
    ndim: int
    input_shape: Shape
    ops: list[Op] = field(default_factory=list)
    shapes: list[Shape] = field(default_factory=list)
    output: int = 0
    collapsible: bool = True  # built to stay one multi-rate operator (see _Builder)
    tight: bool | str = "auto"  # the collapses' ``tight=`` argument
    tags: set[str] = field(default_factory=set)  # network-level kinds (multirate patterns)

    @property
    def output_shape(self) -> Shape:
        return self.shapes[self.output]

    def features(self) -> list[str]:
        """The kinds of layer this network exercises (the per-kind counts)."""
        tags = {f"{self.ndim}-D", f"family {self.family}", f"tight={self.tight}"} | self.tags
        for op in self.ops:
            tags.update(_op_features(op))
        return sorted(tags)

    def describe(self) -> str:
        lines = [f"network {self.seed}:{self.index} ({self.family}, {self.ndim}-D, input "
                 f"{self.input_shape}, output v{self.output} {self.output_shape})"]
        k = 1
        for op in self.ops:
            n_out = len(op.params["sizes"]) if op.kind == "split" else 1
            outs = ", ".join(f"v{k + j}{self.shapes[k + j]}" for j in range(n_out))
            lines.append(f"  {outs} = {op.describe()}")
            k += n_out
        return "\n".join(lines)


def _op_features(op: Op) -> set[str]:
    p = op.params
    if op.kind == "conv":
        tags = {"conv"}
        if any(pair != (0, 0) for pair in p["pairs"]):
            tags.add(f"pad {p['mode']}")
            if any(l != r for l, r in p["pairs"]):
                tags.add("pad asymmetric")
        else:
            tags.add("pad valid")
        if p["padding"] == "same":
            tags.add("pad same")
        tags.update({"stride"} if any(s > 1 for s in p["stride"]) else set())
        tags.update({"dilation"} if any(d > 1 for d in p["dilation"]) else set())
        tags.update({"groups"} if p["groups"] > 1 else set())
        tags.update({"wide kernel"} if max(p["weight"].shape[2:]) > 3 else set())
        return tags
    if op.kind == "avg_pool":
        tags = {"avg_pool"}
        if any(p["padding"]):
            tags.add("avg_pool padded" + ("" if p["count_include_pad"] else " exclude_pad"))
        if p.get("ceil_mode"):
            tags.add("avg_pool ceil_mode")
        if p.get("divisor_override") is not None:
            tags.add("avg_pool divisor_override")
        return tags
    if op.kind == "adaptive_avg_pool":
        dividing = all(n % o == 0 for n, o in zip(p["in_size"], p["output_size"]))
        return {"adaptive_avg_pool" + ("" if dividing else " non-dividing")}
    if op.kind == "add":
        return {"add (branches)" if len(op.inputs) > 1 else "scale"}
    if op.kind in ("linear", "flatten"):
        return {"flatten+linear"}
    if op.kind == "conv_transpose":
        return {"conv_transpose"} | ({"groups"} if p["groups"] > 1 else set())
    return {op.kind}


def conv_out(n: int, k: int, s: int, d: int, left: int, right: int) -> int:
    """PyTorch's output size of a convolution."""
    return (n + left + right - d * (k - 1) - 1) // s + 1


def same_pairs(kernel: Sequence[int], dilation: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """PyTorch's ``padding='same'``: ``d(k-1)`` split with the extra one on the right."""
    return tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2)
                 for k, d in zip(kernel, dilation))


def pad_fits(mode: str, pairs: Sequence[tuple[int, int]], sizes: Sequence[int]) -> bool:
    """Whether PyTorch accepts this padding (reflect: below the size; circular: at most it)."""
    if mode == "reflect":
        return all(max(p) < n for p, n in zip(pairs, sizes))
    if mode == "circular":
        return all(max(p) <= n for p, n in zip(pairs, sizes))
    return True


class _Builder:
    """Draws the layers of one program from ``rng``, tracking PyTorch shapes, the rates
    ``(S, U)`` of every value (to keep a ``collapsible`` network one multi-rate operator)
    and whether it carries a bias."""

    def __init__(self, rng: random.Random, spec: Spec, max_size: int, collapsible: bool):
        self.rng, self.spec, self.ndim = rng, spec, spec.ndim
        self.max_size, self.collapsible = max_size, collapsible
        ones = (1,) * spec.ndim
        self.rates: list[tuple[Shape, Shape]] = [(ones, ones)]
        self.biased: list[bool] = [False]
        spec.shapes.append(spec.input_shape)

    # numbers -------------------------------------------------------------------------
    def number(self, zero: float = 0.0) -> Fraction:
        """A small rational ``p/q`` (``|p| <= 6``, ``q <= 8``), 0 with probability ``zero``."""
        if self.rng.random() < zero:
            return Fraction(0)
        return Fraction(self.rng.choice((-1, 1)) * self.rng.randint(1, 6),
                        self.rng.choice((1, 2, 3, 4, 5, 8)))

    def weights(self, *shape: int, zero: float = 0.08) -> np.ndarray:
        out = np.empty(shape, dtype=object)
        for index in np.ndindex(*shape):
            out[index] = self.number(zero)
        if not any(out.flat):
            out.flat[0] = Fraction(1)
        return out

    def maybe_bias(self, channels: int) -> np.ndarray | None:
        return self.weights(channels, zero=0.2) if self.rng.random() < 0.5 else None

    def shape(self, v: int) -> Shape:
        return self.spec.shapes[v]

    def axes(self, choices: Sequence[int]) -> Shape:
        return tuple(self.rng.choice(choices) for _ in range(self.ndim))

    def mode(self) -> str:
        """A padding mode; zeros as often as the other three together (each padded layer
        of another mode costs the region its border, and the inputs are small)."""
        return self.rng.choices(MODES, weights=(3, 1, 1, 1))[0]

    def groups(self, cin: int, cout: int) -> int:
        common = math.gcd(cin, cout)
        options = [g for g in range(1, common + 1) if common % g == 0]
        return 1 if self.rng.random() < 0.5 else self.rng.choice(options)

    # bookkeeping -----------------------------------------------------------------------
    def emit(self, kind: str, inputs: tuple[int, ...], params: dict[str, Any],
             shapes: list[Shape]) -> list[int]:
        """Append an op; its outputs' rates follow the noble identities (a local
        ``down_s K up_u`` after ``(S, U)`` gives ``(sS, uU)``)."""
        self.spec.ops.append(Op(kind, inputs, params))
        first = len(self.spec.shapes)
        self.spec.shapes.extend(shapes)
        (S, U) = self.rates[inputs[0]]
        biased = any(self.biased[i] for i in inputs)
        local_s, local_u = (1,) * self.ndim, (1,) * self.ndim
        if kind == "conv":
            local_s, biased = params["stride"], biased or params["bias"] is not None
        elif kind == "avg_pool":
            local_s = params["stride"] or params["kernel"]
        elif kind == "global_avg_pool":
            local_s = self.shape(inputs[0])[1:]
        elif kind == "adaptive_avg_pool":  # 0: unknown (the package fits a stride)
            local_s = tuple(n // o if n % o == 0 else 0 for n, o in zip(params["in_size"],
                                                                      params["output_size"]))
        elif kind == "conv_transpose":
            self._tag_upsampling(inputs[0], params["stride"])
            local_u, biased = params["stride"], biased or params["bias"] is not None
        elif kind == "upsample":
            self._tag_upsampling(inputs[0], params["factor"])
            local_u = params["factor"]
        elif kind in ("add", "concat") and len({self.rates[i] for i in inputs}) > 1:
            ratios = {self.ratio(i) for i in inputs}
            if None in ratios:
                self.spec.tags.add(RATES_UNKNOWN)
            elif len(ratios) > 1:
                self.spec.tags.add(RATES_DIFFER)
            else:
                self.spec.tags.add("polyphase: sum of rates")
        elif kind in ("batch_norm", "channel_affine"):
            biased = biased or kind == "batch_norm" or params.get("shift") is not None
        rate = (tuple(a * b for a, b in zip(S, local_s)), tuple(a * b for a, b in zip(U, local_u)))
        self.rates.extend([rate] * len(shapes))
        self.biased.extend([biased] * len(shapes))
        return list(range(first, len(self.spec.shapes)))

    def ratio(self, v: int) -> tuple[Fraction, ...] | None:
        """The rate ``S / U`` per axis of ``v`` (``None`` after an adaptive pool whose
        output size does not divide its input: the fitted stride is the package's)."""
        S, U = self.rates[v]
        if any(s == 0 for s in S):
            return None
        return tuple(Fraction(s, u) for s, u in zip(S, U))

    def _tag_upsampling(self, v: int, factor: Shape) -> None:
        """Tag the multirate patterns that need a polyphase collapse."""
        if all(u == 1 for u in factor):
            return
        if self.biased[v]:
            self.spec.tags.add("polyphase: bias before up")
        if any(u > 1 and math.gcd(u, s) != 1 for u, s in zip(factor, self.rates[v][0])):
            self.spec.tags.add("polyphase: non-coprime up")

    def may_upsample(self, v: int, factor: Shape) -> bool:
        """Up-sampling stays one operator when nothing before it is biased and each factor
        is coprime to the stride so far."""
        if not self.collapsible:
            return True
        S, _ = self.rates[v]
        return not self.biased[v] and all(u == 1 or math.gcd(u, s) == 1
                                          for u, s in zip(factor, S))

    def same_rates(self, values: Sequence[int]) -> bool:
        return not self.collapsible or len({self.rates[v] for v in values}) == 1

    # convolutions ----------------------------------------------------------------------
    def _padding(self, kernel: Shape, dilation: Shape, stride: Shape
                 ) -> tuple[Any, tuple[tuple[int, int], ...]]:
        """A padding argument in one of the package's spellings, and its ``(left, right)``."""
        rng, ndim = self.rng, self.ndim
        styles = ["valid", "valid", "int", "axis", "pairs"]
        if all(s == 1 for s in stride):
            styles.append("same")
        style = rng.choice(styles)
        if style == "valid":
            return (rng.choice(("valid", 0)), ((0, 0),) * ndim)
        if style == "same":
            return "same", same_pairs(kernel, dilation)
        if style == "int":
            p = rng.choice((1, 1, 2, 3))
            return p, ((p, p),) * ndim
        if style == "axis":
            ps = tuple(rng.choice((0, 1, 2, 3)) for _ in range(ndim))
            return ps, tuple((p, p) for p in ps)
        pairs = tuple((rng.choice((0, 1, 2, 3)), rng.choice((0, 1, 2))) for _ in range(ndim))
        return pairs, pairs

    def conv(self, v: int, cout: int | None = None, *, keep_size: bool = False,
             mode: str | None = None) -> int:
        """A random convolution of ``v`` (``keep_size``: stride 1, ``'same'``)."""
        rng, ndim = self.rng, self.ndim
        c, *n = self.shape(v)
        cout = rng.randint(1, 4) if cout is None else cout
        mode = self.mode() if mode is None else mode
        for _attempt in range(8):
            kernel, dilation = self.axes((1, 2, 3)), self.axes((1, 1, 1, 2, 2, 3))
            stride = (1,) * ndim if keep_size else self.axes((1, 1, 1, 2, 2, 3))
            if keep_size:
                padding, pairs = "same", same_pairs(kernel, dilation)
            else:
                padding, pairs = self._padding(kernel, dilation, stride)
            out = tuple(conv_out(m, k, s, d, l, r) for m, k, s, d, (l, r)
                        in zip(n, kernel, stride, dilation, pairs))
            if pad_fits(mode, pairs, n) and all(1 <= o <= self.max_size for o in out):
                break
        else:
            kernel = dilation = stride = (1,) * ndim
            padding, pairs, out = "valid", ((0, 0),) * ndim, tuple(n)
        groups = self.groups(c, cout)
        params = dict(weight=self.weights(cout, c // groups, *kernel), bias=self.maybe_bias(cout),
                      stride=stride, padding=padding, pairs=pairs, dilation=dilation,
                      groups=groups, mode=mode)
        return self.emit("conv", (v,), params, [(cout, *out)])[0]

    def conv_matching(self, v: int, cout: int, target: Shape, stride: Shape) -> int:
        """A conv of ``v`` with output spatial size ``target`` at ``stride`` (random kernel,
        dilation, asymmetric padding and mode); ``-1`` if none fits."""
        rng = self.rng
        c, *n = self.shape(v)
        mode = self.mode()
        kernel, dilation, pairs = [], [], []
        for size, want, s in zip(n, target, stride):
            options = [(k, d, l, r) for k in (1, 2, 3) for d in (1, 2) for l in range(3)
                       for r in range(3) if conv_out(size, k, s, d, l, r) == want
                       and pad_fits(mode, [(l, r)], [size]) and (k > 1 or d == 1)]
            if not options:
                return -1
            k, d, l, r = rng.choice(options)
            kernel.append(k), dilation.append(d), pairs.append((l, r))
        pairs_t = tuple(pairs)
        params = dict(weight=self.weights(cout, c, *kernel), bias=self.maybe_bias(cout),
                      stride=tuple(stride), padding=pairs_t, pairs=pairs_t,
                      dilation=tuple(dilation), groups=1, mode=mode)
        return self.emit("conv", (v,), params, [(cout, *target)])[0]

    def conv_transpose(self, v: int) -> int:
        rng = self.rng
        c, *n = self.shape(v)
        cout = rng.randint(1, 4)
        kernel, stride, dilation = self.axes((1, 2, 3)), self.axes((1, 2)), self.axes((1, 1, 2))
        if not self.may_upsample(v, stride):
            return self.conv(v)
        padding, output_padding, out = [], [], []
        for size, k, s, d in zip(n, kernel, stride, dilation):
            p, op = rng.randint(0, d * (k - 1)), rng.randint(0, max(s, d) - 1)
            padding.append(p), output_padding.append(op)
            out.append((size - 1) * s - 2 * p + d * (k - 1) + op + 1)
        if not all(1 <= o <= self.max_size for o in out):
            return self.conv(v)
        groups = self.groups(c, cout)
        params = dict(weight=self.weights(c, cout // groups, *kernel), bias=self.maybe_bias(cout),
                      stride=stride,
                      padding=tuple(padding), output_padding=tuple(output_padding),
                      dilation=dilation, groups=groups)
        return self.emit("conv_transpose", (v,), params, [(cout, *out)])[0]

    def upsample(self, v: int) -> int:
        c, *n = self.shape(v)
        factor = self.axes((1, 2, 2))
        out = tuple((m - 1) * u + 1 for m, u in zip(n, factor))
        if max(out) > self.max_size or not self.may_upsample(v, factor):
            return self.conv(v)
        return self.emit("upsample", (v,), dict(factor=factor), [(c, *out)])[0]

    # other layers ----------------------------------------------------------------------
    def batch_norm(self, v: int) -> int:
        c = self.shape(v)[0]
        floats = lambda k: [float(self.number()) for _ in range(k)]  # noqa: E731
        params = dict(mean=floats(c), var=[self.rng.choice((0.25, 0.5, 1.0, 2.0, 4.0))
                                           for _ in range(c)],
                      gamma=floats(c), beta=floats(c), eps=self.rng.choice((0.0, 1e-5)))
        return self.emit("batch_norm", (v,), params, [self.shape(v)])[0]

    def channel_affine(self, v: int) -> int:
        c = self.shape(v)[0]
        shift = [self.number(0.2) for _ in range(c)] if self.rng.random() < 0.5 else None
        params = dict(scale=[self.number(0.05) for _ in range(c)], shift=shift)
        return self.emit("channel_affine", (v,), params, [self.shape(v)])[0]

    def scale(self, v: int) -> int:
        return self.emit("add", (v,), dict(coefficients=(self.number(),)), [self.shape(v)])[0]

    def avg_pool(self, v: int) -> int:
        """``F.avg_pool`` with random kernel, stride, padding, ``ceil_mode``,
        ``count_include_pad`` and ``divisor_override`` (the output shape from torch itself)."""
        rng = self.rng
        c, *n = self.shape(v)
        kernel = self.axes((1, 2, 3))
        stride = None if rng.random() < 0.5 else tuple(rng.randint(1, k + 1) for k in kernel)
        padding = tuple(rng.randint(0, k // 2) for k in kernel)
        params = dict(kernel=kernel, stride=stride, padding=padding,
                      count_include_pad=rng.random() < 0.5, ceil_mode=rng.random() < 0.35,
                      divisor_override=rng.randint(1, 6) if rng.random() < 0.25 else None)
        out = _torch_shape(Op("avg_pool", (v,), params), self.shape(v), self.ndim)
        if out is None or min(out[1:]) < 1:
            return v
        return self.emit("avg_pool", (v,), params, [out])[0]

    def adaptive_avg_pool(self, v: int) -> int:
        """``F.adaptive_avg_pool`` to a random size (a divisor of the input size or not)."""
        c, *n = self.shape(v)
        size = tuple(self.rng.randint(1, m) for m in n)
        params = dict(output_size=size, in_size=tuple(n))
        return self.emit("adaptive_avg_pool", (v,), params, [(c, *size)])[0]

    def global_avg_pool(self, v: int) -> int:
        return self.emit("global_avg_pool", (v,), {}, [(self.shape(v)[0],) + (1,) * self.ndim])[0]

    # blocks ----------------------------------------------------------------------------
    def add(self, terms: Sequence[int]) -> int:
        coefficients = tuple(self.number(0.1) for _ in terms) if self.rng.random() < 0.4 else None
        return self.emit("add", tuple(terms), dict(coefficients=coefficients),
                         [self.shape(terms[0])])[0]

    def residual(self, v: int) -> int:
        """``v + conv(conv(v))`` with size-keeping convs (any padding mode)."""
        c = self.shape(v)[0]
        h = self.conv(v, keep_size=True)
        h = self.conv(h, c, keep_size=True)
        return self.add((v, h))

    def branches(self, v: int) -> int:
        """Two or three parallel convs of ``v`` with one output shape and stride, summed."""
        first = self.conv(v)
        cout, *out = self.shape(first)
        stride = self.spec.ops[-1].params["stride"]
        terms = [first]
        for _ in range(self.rng.randint(1, 2)):
            other = self.conv_matching(v, cout, tuple(out), stride)
            if other >= 0:
                terms.append(other)
        return first if len(terms) == 1 else self.add(terms)

    def long_skip(self, v: int) -> int:
        """``v + u`` for an earlier value ``u`` of the same shape (and rates)."""
        same = [u for u in range(len(self.spec.shapes) - 1)
                if u != v and self.shape(u) == self.shape(v) and self.same_rates((u, v))]
        if not same:
            return self.conv(v)
        return self.add((self.rng.choice(same), v))

    def concat_split(self, v: int) -> int:
        """``cat(conv(v), v or conv(v))``, then maybe split it and use one part, re-join
        the parts in another order, add equal parts, or take a channel slice."""
        rng = self.rng
        first = self.conv(v)
        _, *out = self.shape(first)
        stride = self.spec.ops[-1].params["stride"]
        if tuple(out) == self.shape(v)[1:] and self.same_rates((first, v)) and rng.random() < 0.5:
            second = v
        else:
            second = self.conv_matching(v, rng.randint(1, 3), tuple(out), stride)
            if second < 0:
                return first
        parts = [first, second] if rng.random() < 0.5 else [second, first]
        total = sum(self.shape(p)[0] for p in parts)
        joined = self.emit("concat", tuple(parts), {}, [(total, *out)])[0]
        how = rng.choice(("keep", "one", "rejoin", "add", "slice"))
        if how == "keep" or total < 2:
            return joined
        if how == "slice":
            start = rng.randint(0, total - 1)
            stop = rng.randint(start + 1, total)
            return self.emit("channels_slice", (joined,), dict(start=start, stop=stop),
                             [(stop - start, *out)])[0]
        cut = rng.randint(1, total - 1)
        sizes = (cut, total - cut) if how != "add" or total % 2 else (total // 2, total // 2)
        pieces = self.emit("split", (joined,), dict(sizes=sizes), [(s, *out) for s in sizes])
        if how == "one":
            return rng.choice(pieces)
        if how == "add" and self.shape(pieces[0]) == self.shape(pieces[1]):
            return self.add(pieces)
        order = pieces[::-1]
        return self.emit("concat", tuple(order), {}, [(total, *out)])[0]

    # multirate patterns with no single strided kernel (a polyphase collapse) -----------
    def _up(self, v: int, factor: Shape) -> int:
        """Zero insertion by ``factor``, or a transposed conv at that stride (no bias)."""
        c, *n = self.shape(v)
        if self.rng.random() < 0.5:
            out = tuple((m - 1) * u + 1 for m, u in zip(n, factor))
            return self.emit("upsample", (v,), dict(factor=factor), [(c, *out)])[0]
        kernel = self.axes((1, 2, 3))
        out = tuple((m - 1) * u + k for m, u, k in zip(n, factor, kernel))
        params = dict(weight=self.weights(c, c, *kernel), bias=None, stride=factor,
                      padding=(0,) * self.ndim, output_padding=(0,) * self.ndim,
                      dilation=(1,) * self.ndim, groups=1)
        return self.emit("conv_transpose", (v,), params, [(c, *out)])[0]

    def rate_sum(self, v: int) -> int:
        """``v + down_s K up_u v`` (``s = u``, or other rates with the same size) or
        ``v + K2 up_s K1 down_s v``: a sum of branches with different rates (the first is
        one kernel again, the second periodically shift-varying)."""
        c, *n = self.shape(v)
        if self.rng.random() < 0.4:
            return self._down_up_sum(v)
        factor = self.axes((1, 2, 2, 3) if self.ndim < 3 else (1, 2))
        if all(u == 1 for u in factor):
            factor = (2,) + factor[1:]
        if max(m * u for m, u in zip(n, factor)) > 2 * self.max_size:
            return self.conv(v)
        up = self._up(v, factor)
        stride = tuple(u if self.rng.random() < 0.7 else max(1, u - 1) for u in factor)
        back = self.conv_matching(up, c, tuple(n), stride)
        if back < 0:
            return up if max(self.shape(up)[1:]) <= self.max_size else self.conv(v)
        return self.add((v, back))

    def _down_up_sum(self, v: int) -> int:
        """``v + K2 up_s (K1 down_s v)`` with the size of ``v`` (``-> conv`` if none fits)."""
        c, *n = self.shape(v)
        stride = tuple(s if m >= 2 * s else 1 for m, s in zip(n, self.axes((2, 2, 3))))
        if all(s == 1 for s in stride):
            return self.conv(v)
        down = self.conv_matching(v, self.rng.randint(1, 3),
                                  tuple(conv_out(m, 1, s, 1, 0, 0) for m, s in zip(n, stride)),
                                  stride)
        if down < 0:
            return self.conv(v)
        up = self._up(down, stride)
        back = self.conv_matching(up, c, tuple(n), (1,) * self.ndim)
        return self.add((v, back)) if back >= 0 else up

    def bias_upsample(self, v: int) -> int:
        """A biased conv, then up-sampling: the bias becomes periodic over the phases."""
        h = self.conv(v)
        if self.spec.ops[-1].params["bias"] is None:
            self.spec.ops[-1].params["bias"] = self.weights(self.shape(h)[0], zero=0.2)
            self.biased[h] = True
        c, *n = self.shape(h)
        factor = self.axes((1, 2, 3))
        if all(u == 1 for u in factor) or \
                max((m - 1) * u + 3 for m, u in zip(n, factor)) > self.max_size:
            return h
        return self._up(h, factor)

    def stride_upsample(self, v: int) -> int:
        """A stride ``s`` then up-sampling by ``u`` with ``gcd(u, s) > 1``."""
        c, *n = self.shape(v)
        stride = self.axes((1, 2, 2, 3))
        if all(s == 1 for s in stride) or any(m < 2 * s for m, s in zip(n, stride)):
            return self.conv(v)
        out = tuple(conv_out(m, 1, s, 1, 0, 0) for m, s in zip(n, stride))
        h = self.conv_matching(v, self.rng.randint(1, 3), out, stride)
        if h < 0:
            return self.conv(v)
        factor = tuple(s if s > 1 and self.rng.random() < 0.7 else self.rng.choice((1, 2))
                       for s in stride)
        _, *m = self.shape(h)
        if max((a - 1) * u + 3 for a, u in zip(m, factor)) > self.max_size:
            return h
        return self._up(h, factor)

    def block(self, v: int, kinds: Sequence[str]) -> int:
        return getattr(self, self.rng.choice(kinds))(v)


CHAIN_BLOCKS = ("conv", "conv", "conv", "residual", "branches", "concat_split", "batch_norm",
                "channel_affine", "scale", "avg_pool", "avg_pool", "long_skip")
CHAIN_BLOCKS += ("adaptive_avg_pool",)
MULTIRATE_BLOCKS = CHAIN_BLOCKS + ("conv_transpose", "conv_transpose", "upsample", "upsample")
#: blocks whose collapse is a polyphase operator (no single strided kernel)
POLYPHASE_BLOCKS = ("rate_sum", "rate_sum", "bias_upsample", "stride_upsample")


def _sizes(rng: random.Random, ndim: int) -> tuple[Shape, int]:
    """Input spatial sizes and the cap on every later size (small, so sympy stays fast)."""
    low, high, cap = {1: (3, 9, 12), 2: (3, 8, 9), 3: (3, 4, 5)}[ndim]
    return tuple(rng.randint(low, high) for _ in range(ndim)), cap


def _chain(b: _Builder, v: int, kinds: Sequence[str], depth: int) -> int:
    for _ in range(depth):
        v = b.block(v, kinds)
    return v


def _periodic(b: _Builder, depth: int) -> int:
    """All-circular, size-keeping layers; at least one circular conv wider than 1."""
    rng = b.rng

    def circ(v: int, cout: int | None = None, wide: bool = False) -> int:
        c, *n = b.shape(v)
        cout = rng.randint(1, 3) if cout is None else cout
        kernel, dilation, stride, pairs = [], [], [], []
        for axis, m in enumerate(n):
            k, d = rng.choice((2, 3) if wide and axis == 0 else (1, 2, 3)), rng.choice((1, 1, 2))
            total = d * (k - 1)
            left = rng.randint(0, total)
            if max(left, total - left) > m:
                k, d, total, left = 2, 1, 1, rng.randint(0, 1)
            s = 1 if wide else rng.choice([s for s in (1, 1, 2) if m % s == 0])
            kernel.append(k), dilation.append(d), stride.append(s)
            pairs.append((left, total - left))
        groups = b.groups(c, cout)
        params = dict(weight=b.weights(cout, c // groups, *kernel), bias=b.maybe_bias(cout),
                      stride=tuple(stride), padding=tuple(pairs), pairs=tuple(pairs),
                      dilation=tuple(dilation), groups=groups, mode="circular")
        return b.emit("conv", (v,), params, [(cout, *(m // s for m, s in zip(n, stride)))])[0]

    v = circ(0)
    for _ in range(depth - 1):
        kind = rng.choice(("circ", "circ", "residual", "bn", "pool", "concat"))
        c, *n = b.shape(v)
        if kind == "circ":
            v = circ(v)
        elif kind == "residual":
            v = b.add((v, circ(circ(v, rng.randint(1, 3), wide=True), c, wide=True)))
        elif kind == "bn":
            v = b.batch_norm(v)
        elif kind == "pool":
            k = tuple(rng.choice([s for s in (1, 2) if m % s == 0]) for m in n)
            params = dict(kernel=k, stride=None, padding=(0,) * b.ndim,
                          count_include_pad=rng.random() < 0.5)
            v = b.emit("avg_pool", (v,), params, [(c, *(m // s for m, s in zip(n, k)))])[0]
        else:
            a = circ(v, wide=True)
            v = b.emit("concat", (a, v), {}, [(b.shape(a)[0] + c, *n)])[0]
    return circ(v, wide=True)


#: the ``kernels`` family per dimension: input sizes, kernel sizes, dilations, depth
KERNEL_FAMILY = {1: ((12, 40), (1, 3, 5, 7), (1, 2, 3), (2, 5)),
                 2: ((5, 10), (1, 2, 3, 4, 5), (1, 2), (2, 3)),
                 3: ((3, 5), (1, 2, 3), (1, 2), (2, 2))}


def _kernels(b: _Builder, depth: int) -> int:
    """Valid (mostly) or zero-padded convs with wide, dilated kernels and 1-4 channels
    (sometimes strided, sometimes depthwise), so that the composed kernels reach every
    product method of :func:`~laurentnet.numeric.polymatmul.polymatmul` (1-D chains pass
    48 taps: ``'fft'``); valid convs keep the region non-empty."""
    rng, ndim = b.rng, b.ndim
    _, ks, ds, _ = KERNEL_FAMILY[ndim]
    v = 0
    for _ in range(depth):
        c, *n = b.shape(v)
        for _attempt in range(6):
            kernel, dilation = b.axes(ks), b.axes(ds)
            stride = (1,) * ndim if rng.random() < 0.8 else b.axes((1, 2))
            style = rng.random()
            pairs = ((0, 0),) * ndim if style < 0.6 else same_pairs(kernel, dilation) \
                if style < 0.8 else tuple((rng.randint(0, d * (k - 1) // 2),
                                           rng.randint(0, d * (k - 1) // 2))
                                          for k, d in zip(kernel, dilation))
            out = tuple(conv_out(m, k, s, d, l, r) for m, k, s, d, (l, r)
                        in zip(n, kernel, stride, dilation, pairs))
            if min(out) >= 1 and max(out) <= b.max_size:
                break
        else:
            continue
        cout = rng.randint(1, 4)
        groups = b.groups(c, cout)
        params = dict(weight=b.weights(cout, c // groups, *kernel), bias=b.maybe_bias(cout),
                      stride=stride, padding=pairs, pairs=pairs, dilation=dilation,
                      groups=groups, mode="zeros")
        v = b.emit("conv", (v,), params, [(cout, *out)])[0]
    return v if v else b.conv(0)


def generate(seed: int, index: int) -> Spec:
    """Network ``index`` of the campaign ``seed`` (deterministic: its own RNG)."""
    rng = random.Random(f"laurentnet-fuzz:{seed}:{index}")
    family = rng.choices(FAMILIES, weights=(5, 1, 4, 2, 2))[0]
    ndim = rng.choices((1, 2, 3), weights=(4, 5, 2))[0]
    sizes, cap = _sizes(rng, ndim)
    if family == "periodic":
        sizes = tuple(rng.choice((4, 6, 8) if ndim < 3 else (2, 4)) for _ in range(ndim))
        cap = max(sizes)
    elif family == "kernels":
        sizes = tuple(rng.randint(*KERNEL_FAMILY[ndim][0]) for _ in range(ndim))
        cap = max(sizes)
    spec = Spec(seed, index, family, ndim, (rng.randint(1, 4), *sizes))
    spec.collapsible = family != "multirate" or rng.random() < 0.5
    spec.tight = rng.choices(TIGHT_SETTINGS, weights=(2, 1, 1))[0]
    b = _Builder(rng, spec, cap, collapsible=spec.collapsible)
    if family == "periodic":
        v = _periodic(b, rng.randint(1, 4))
    elif family == "kernels":
        v = _kernels(b, rng.randint(*KERNEL_FAMILY[ndim][3]))
    elif family == "classifier":
        v = _chain(b, 0, CHAIN_BLOCKS, rng.randint(0, 3))
        if rng.random() < 0.4:
            v = b.global_avg_pool(v)
        flat = b.emit("flatten", (v,), {}, [(int(np.prod(b.shape(v))),)])[0]
        width = rng.randint(1, 5)
        v = b.emit("linear", (flat,), dict(weight=b.weights(width, b.shape(flat)[0]),
                                           bias=b.maybe_bias(width)), [(width,)])[0]
        if rng.random() < 0.4:
            out = rng.randint(1, 3)
            v = b.emit("linear", (v,), dict(weight=b.weights(out, width),
                                            bias=b.maybe_bias(out)), [(out,)])[0]
    else:
        kinds = MULTIRATE_BLOCKS if family == "multirate" else CHAIN_BLOCKS
        v = 0
        if family == "multirate" and rng.random() < 0.6:  # up-sample before any bias
            v = b.block(v, ("conv_transpose", "upsample"))
        if family == "multirate" and not spec.collapsible:  # one polyphase pattern at least
            v = b.block(v, POLYPHASE_BLOCKS)
            kinds = kinds + POLYPHASE_BLOCKS
        v = _chain(b, v, kinds, rng.randint(1, 4))
        if rng.random() < 0.1:
            v = b.global_avg_pool(v)
    spec.output = v
    return spec


# -- the network, built with the package ---------------------------------------------------
def build_network(spec: Spec) -> Network:
    """The program as a :class:`laurentnet.algebra.Network` (exact Fraction weights)."""
    net = Network(spec.ndim, spec.input_shape[0])
    values = [net.input]
    for op in spec.ops:
        p, xs = op.params, [values[i] for i in op.inputs]
        if op.kind == "conv":
            out = [net.conv(xs[0], p["weight"], p["bias"], stride=p["stride"], padding=p["padding"],
                            dilation=p["dilation"], groups=p["groups"], padding_mode=p["mode"])]
        elif op.kind == "conv_transpose":
            out = [net.conv_transpose(xs[0], p["weight"], p["bias"], stride=p["stride"],
                                      padding=p["padding"], output_padding=p["output_padding"],
                                      dilation=p["dilation"], groups=p["groups"])]
        elif op.kind == "upsample":
            out = [net.upsample(xs[0], p["factor"])]
        elif op.kind == "batch_norm":
            out = [net.batch_norm(xs[0], p["mean"], p["var"], p["gamma"], p["beta"], eps=p["eps"])]
        elif op.kind == "channel_affine":
            out = [net.channel_affine(xs[0], p["scale"], p["shift"])]
        elif op.kind == "avg_pool":
            out = [net.avg_pool(xs[0], p["kernel"], p["stride"], p["padding"],
                                count_include_pad=p["count_include_pad"],
                                ceil_mode=p.get("ceil_mode", False),
                                divisor_override=p.get("divisor_override"))]
        elif op.kind == "adaptive_avg_pool":
            out = [net.adaptive_avg_pool(xs[0], p["output_size"])]
        elif op.kind == "global_avg_pool":
            out = [net.global_avg_pool(xs[0])]
        elif op.kind == "add":
            c = p["coefficients"]
            out = [xs[0] + xs[1] if c is None and len(xs) == 2 else
                   c[0] * xs[0] if len(xs) == 1 else net.add(*xs, coefficients=c)]
        elif op.kind == "concat":
            out = [net.concat(*xs)]
        elif op.kind == "split":
            out = list(net.split(xs[0], p["sizes"]))
        elif op.kind == "channels_slice":
            out = [net.channels_slice(xs[0], p["start"], p["stop"])]
        elif op.kind == "flatten":
            out = [net.flatten(xs[0])]
        elif op.kind == "linear":
            out = [net.linear(xs[0], p["weight"], p["bias"])]
        else:  # pragma: no cover - a generator bug
            raise AssertionError(op.kind)
        values.extend(out)
    net.set_output(values[spec.output])
    return net


# -- the independent reference -------------------------------------------------------------
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_MODULE = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
ADAPTIVE = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def _t(values: Any) -> torch.Tensor | None:
    """Exact rationals (or floats) as a float64 tensor, each rounded once."""
    if values is None:
        return None
    return torch.tensor(np.vectorize(float, otypes=[np.float64])(np.asarray(values, dtype=object)),
                        dtype=torch.float64)


def _ref_conv(x: torch.Tensor, p: dict[str, Any], ndim: int) -> torch.Tensor:
    """``nn.Conv{n}d`` (its own padding) for symmetric/'same' padding, else F.pad + conv."""
    w, b, pairs = _t(p["weight"]), _t(p["bias"]), p["pairs"]
    mode = REFERENCE_PAD_MODE[p["mode"]]
    if p["padding"] == "same" or all(l == r for l, r in pairs):
        padding = "same" if p["padding"] == "same" else tuple(l for l, _ in pairs)
        m = CONV_MODULE[ndim](w.shape[1] * p["groups"], w.shape[0], tuple(w.shape[2:]),
                              stride=p["stride"], padding=padding, dilation=p["dilation"],
                              groups=p["groups"], bias=b is not None, padding_mode=mode,
                              dtype=torch.float64)
        m.weight.copy_(w)
        if b is not None:
            m.bias.copy_(b)
        return m(x)
    pad = [v for pair in reversed(pairs) for v in pair]
    padded = F.pad(x, pad, mode="constant" if mode == "zeros" else mode)
    return CONV[ndim](padded, w, b, stride=p["stride"], dilation=p["dilation"], groups=p["groups"])


def _ref_upsample(x: torch.Tensor, factor: Shape) -> torch.Tensor:
    shape = (*x.shape[:2], *((m - 1) * u + 1 for m, u in zip(x.shape[2:], factor)))
    y = x.new_zeros(shape)
    y[(slice(None), slice(None), *(slice(None, None, u) for u in factor))] = x
    return y


def _ref_avg_pool(x: torch.Tensor, p: dict[str, Any], ndim: int) -> torch.Tensor:
    """``F.avg_pool{n}d`` with every option; a 1-D pool with ``divisor_override`` (which
    ``avg_pool1d`` lacks) is ``avg_pool2d`` on a trailing axis of size 1."""
    kernel, stride = p["kernel"], p["stride"] or p["kernel"]
    options = dict(ceil_mode=p.get("ceil_mode", False), count_include_pad=p["count_include_pad"])
    divisor = p.get("divisor_override")
    if divisor is None:
        return AVG[ndim](x, kernel, stride, p["padding"], **options)
    if ndim == 1:
        return F.avg_pool2d(x[..., None], (*kernel, 1), (*stride, 1), (*p["padding"], 0),
                            divisor_override=divisor, **options)[..., 0]
    return AVG[ndim](x, kernel, stride, p["padding"], divisor_override=divisor, **options)


def _torch_shape(op: Op, shape: Shape, ndim: int) -> Shape | None:
    """The output shape torch gives one layer on an input of ``shape`` (``None`` when torch
    refuses it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = _ref_op(op, [torch.zeros((1, *shape), dtype=torch.float64)], ndim)[0]
    except (RuntimeError, ValueError):
        return None
    return tuple(out.shape[1:])


def _per_channel(values: Sequence[Any], ndim: int) -> torch.Tensor:
    return _t(list(values)).reshape(1, -1, *(1,) * ndim)


def _ref_op(op: Op, xs: list[torch.Tensor], ndim: int) -> list[torch.Tensor]:
    """One layer of the reference, with torch's own functions."""
    p = op.params
    if op.kind == "conv":
        return [_ref_conv(xs[0], p, ndim)]
    if op.kind == "conv_transpose":
        return [CONV_T[ndim](xs[0], _t(p["weight"]), _t(p["bias"]), stride=p["stride"],
                             padding=p["padding"], output_padding=p["output_padding"],
                             groups=p["groups"], dilation=p["dilation"])]
    if op.kind == "upsample":
        return [_ref_upsample(xs[0], p["factor"])]
    if op.kind == "batch_norm":
        return [F.batch_norm(xs[0], _t(p["mean"]), _t(p["var"]), _t(p["gamma"]), _t(p["beta"]),
                             training=False, eps=p["eps"])]
    if op.kind == "channel_affine":
        y = xs[0] * _per_channel(p["scale"], ndim)
        return [y if p["shift"] is None else y + _per_channel(p["shift"], ndim)]
    if op.kind == "avg_pool":
        return [_ref_avg_pool(xs[0], p, ndim)]
    if op.kind == "adaptive_avg_pool":
        return [ADAPTIVE[ndim](xs[0], p["output_size"])]
    if op.kind == "global_avg_pool":
        return [xs[0].mean(dim=tuple(range(2, 2 + ndim)), keepdim=True)]
    if op.kind == "add":
        c = p["coefficients"] or (1,) * len(xs)
        return [sum((float(ci) * x for ci, x in zip(c[1:], xs[1:])), float(c[0]) * xs[0])]
    if op.kind == "concat":
        return [torch.cat(xs, dim=1)]
    if op.kind == "split":
        return list(torch.split(xs[0], list(p["sizes"]), dim=1))
    if op.kind == "channels_slice":
        return [xs[0][:, p["start"]:p["stop"]]]
    if op.kind == "flatten":
        return [xs[0].flatten(1)]
    if op.kind == "linear":
        return [F.linear(xs[0], _t(p["weight"]), _t(p["bias"]))]
    raise AssertionError(op.kind)  # pragma: no cover


@torch.no_grad()
def reference_forward(spec: Spec, x: torch.Tensor) -> torch.Tensor:
    """The program on a float64 batch ``(N, *input_shape)``, layer by layer in torch."""
    values = [x.to(torch.float64)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on 'same' with even kernels
        for op in spec.ops:
            values.extend(_ref_op(op, [values[i] for i in op.inputs], spec.ndim))
    out = values[spec.output]
    if tuple(out.shape[1:]) != spec.output_shape:  # pragma: no cover - a generator bug
        raise AssertionError(f"reference shape {tuple(out.shape)} != {spec.output_shape}")
    return out


@dataclass
class Reference:
    """``W``, ``B`` of the reference (``f(e_j) - f(0)``, ``f(0)``) and ``ys = f(xs)`` at
    ``SAMPLES`` random float64 inputs (``xs[0]`` is the one the exact collapse uses)."""
    W: np.ndarray
    B: np.ndarray
    xs: np.ndarray
    ys: np.ndarray

    @property
    def x(self) -> np.ndarray:
        return self.xs[0]

    @property
    def y(self) -> np.ndarray:
        return self.ys[0]

    @property
    def scale(self) -> float:
        """What ``TOL`` is relative to: 1 + the largest entry of ``W``, ``B`` and ``ys``."""
        return 1.0 + max(float(np.abs(a).max(initial=0)) for a in (self.W, self.B, self.ys))


SAMPLES = 4
IDENTITY_BATCH_MAX = 128  # inputs up to this size: numeric collapse checked on all of W
APPLY_COST_MAX = 20_000  # CollapseResult.apply is also checked when it is this cheap


def reference(spec: Spec) -> Reference:
    """The reference on the identity batch, 0 and ``SAMPLES`` random inputs (one batch)."""
    n_in = int(np.prod(spec.input_shape))
    xs = np.random.default_rng([spec.seed, spec.index]).standard_normal((SAMPLES, n_in))
    batch = torch.cat([torch.zeros(1, n_in, dtype=torch.float64),
                       torch.eye(n_in, dtype=torch.float64),
                       torch.from_numpy(xs)]).reshape(-1, *spec.input_shape)
    out = reference_forward(spec, batch).reshape(len(batch), -1).numpy()
    B = out[0]
    return Reference((out[1:1 + n_in] - B).T.copy(), B.copy(),
                     xs.reshape(SAMPLES, *spec.input_shape),
                     out[1 + n_in:].reshape(SAMPLES, *spec.output_shape))


# -- the exact reference (small networks) ---------------------------------------------------
#: the exact reference runs when the input has at most this many entries and every value
#: at most ``EXACT_REFERENCE_MAX`` rational coefficients
EXACT_REFERENCE_INPUTS = 48
EXACT_REFERENCE_MAX = 150_000


def _fr(value: Any) -> Fraction:
    return Fraction(value) if not isinstance(value, float) else Fraction(*value.as_integer_ratio())


def _pad_index(n: int, left: int, right: int, mode: str) -> np.ndarray:
    """Source index of every padded position ``-left .. n + right - 1`` (``-1``: a zero),
    by PyTorch's rule for ``mode``."""
    out = []
    for i in range(-left, n + right):
        if 0 <= i < n:
            out.append(i)
        elif mode == "zeros":
            out.append(-1)
        elif mode == "replicate":
            out.append(min(max(i, 0), n - 1))
        elif mode == "circular":
            out.append(i % n)
        else:  # reflect: mirror about the edge samples
            out.append(-i if i < 0 else 2 * (n - 1) - i)
    return np.array(out)


def _take(x: np.ndarray, axis: int, index: np.ndarray) -> np.ndarray:
    """``x`` gathered along ``axis`` at ``index`` (``-1`` gives zeros)."""
    out = np.take(x, np.maximum(index, 0), axis=axis)
    if (index < 0).any():
        where = [slice(None)] * x.ndim
        where[axis] = np.nonzero(index < 0)[0]
        out[tuple(where)] = Fraction(0)
    return out


def _exact_conv(x: np.ndarray, p: dict[str, Any], ndim: int) -> np.ndarray:
    """``y[o, i] = b_o + sum_{c, a} w[o, c, a] xpad[c, s i + d a]`` (groups split the
    channels), on the padded input, by index sums."""
    w, g = p["weight"], p["groups"]
    for axis, (l, r) in enumerate(p["pairs"]):
        x = _take(x, axis + 1, _pad_index(x.shape[axis + 1], l, r, p["mode"]))
    cout, cin_g, *k = w.shape
    n = x.shape[1:1 + ndim]
    out_size = [(m - d * (kk - 1) - 1) // s + 1 for m, kk, s, d in
                zip(n, k, p["stride"], p["dilation"])]
    y = np.full((cout, *out_size, x.shape[-1]), Fraction(0), dtype=object)
    per = cout // g
    for o in range(cout):
        group = o // per
        for c in range(cin_g):
            for a in np.ndindex(*k):
                if not w[(o, c, *a)]:
                    continue
                box = tuple(slice(d * aa, d * aa + s * (oo - 1) + 1, s) for aa, s, d, oo in
                            zip(a, p["stride"], p["dilation"], out_size))
                y[o] += w[(o, c, *a)] * x[(group * cin_g + c, *box)]
    if p["bias"] is not None:
        y[..., -1] += np.asarray(p["bias"], dtype=object).reshape(-1, *(1,) * ndim)
    return y


def _exact_conv_transpose(x: np.ndarray, p: dict[str, Any], ndim: int) -> np.ndarray:
    """``y[o, s i - p + d a] += w[c, o, a] x[c, i]`` (groups split the channels), cropped
    to PyTorch's output size."""
    w, g = p["weight"], p["groups"]
    cin, cout_g, *k = w.shape
    n = x.shape[1:1 + ndim]
    full = [(m - 1) * s + d * (kk - 1) + 1 + op for m, s, d, kk, op in
            zip(n, p["stride"], p["dilation"], k, p["output_padding"])]
    y = np.full((cout_g * g, *full, x.shape[-1]), Fraction(0), dtype=object)
    per = cin // g
    for c in range(cin):
        group = c // per
        for o in range(cout_g):
            for a in np.ndindex(*k):
                if not w[(c, o, *a)]:
                    continue
                box = tuple(slice(d * aa, d * aa + s * (m - 1) + 1, s) for aa, s, d, m in
                            zip(a, p["stride"], p["dilation"], n))
                y[(group * cout_g + o, *box)] += w[(c, o, *a)] * x[c]
    crop = tuple(slice(pp, f - pp) for pp, f in zip(p["padding"], full))
    y = y[(slice(None), *crop)]
    if p["bias"] is not None:
        y[..., -1] += np.asarray(p["bias"], dtype=object).reshape(-1, *(1,) * ndim)
    return y


def _pool_windows(n: int, p: dict[str, Any], axis: int) -> list[tuple[range, int]]:
    """PyTorch's windows along one axis: ``(input positions read, divisor factor)``
    (``avg_pool``: start ``s i - p``, end ``min(start + k, n + p)``, ``ceil_mode`` drops a
    window starting in the right padding; ``adaptive``: ``[floor(i n/o), ceil((i+1) n/o))``)."""
    if "output_size" in p:
        o = p["output_size"][axis]
        return [(range(i * n // o, -(-((i + 1) * n) // o)),) * 2 for i in range(o)]
    k, pad = p["kernel"][axis], p["padding"][axis]
    s = (p["stride"] or p["kernel"])[axis]
    span = n + 2 * pad - k
    out = (-(-span // s) if p.get("ceil_mode") else span // s) + 1
    if p.get("ceil_mode") and s * (out - 1) >= n + pad:
        out -= 1
    windows = []
    for i in range(out):
        a, b = s * i - pad, min(s * i - pad + k, n + pad)
        inside = range(max(a, 0), min(b, n))
        windows.append((inside, range(a, b) if p["count_include_pad"] else inside))
    return windows


def _exact_pool(x: np.ndarray, p: dict[str, Any], ndim: int) -> np.ndarray:
    """Average pooling by window sums, divided by ``divisor_override`` or the product of
    the per-axis counts."""
    counts = []
    for axis in range(ndim):
        windows = _pool_windows(x.shape[axis + 1], p, axis)
        parts = []
        for inside, counted in windows:
            part = np.take(x, list(inside), axis=axis + 1).sum(axis=axis + 1, keepdims=True) \
                if len(inside) else np.take(x, [0], axis=axis + 1) * 0
            parts.append(part)
        x = np.concatenate(parts, axis=axis + 1)
        counts.append([len(counted) for _, counted in windows])
    divisor = p.get("divisor_override")
    grid = np.ones([len(c) for c in counts], dtype=object)
    for axis, c in enumerate(counts):
        grid = grid * np.array(c, dtype=object).reshape([-1 if a == axis else 1
                                                         for a in range(ndim)])
    if divisor is not None:
        grid[...] = divisor
    return x / np.vectorize(Fraction, otypes=[object])(grid)[None, ..., None]


def _exact_op(op: Op, xs: list[np.ndarray], ndim: int) -> list[np.ndarray]:
    """One layer on exact affine functions (last axis: input coefficients, then 1)."""
    p = op.params
    if op.kind == "conv":
        return [_exact_conv(xs[0], p, ndim)]
    if op.kind == "conv_transpose":
        return [_exact_conv_transpose(xs[0], p, ndim)]
    if op.kind == "upsample":
        c, *n, f = xs[0].shape
        y = np.full((c, *((m - 1) * u + 1 for m, u in zip(n, p["factor"])), f), Fraction(0),
                    dtype=object)
        y[(slice(None), *(slice(None, None, u) for u in p["factor"]))] = xs[0]
        return [y]
    if op.kind in ("avg_pool", "adaptive_avg_pool"):
        return [_exact_pool(xs[0], p, ndim)]
    if op.kind == "global_avg_pool":
        n = int(np.prod(xs[0].shape[1:-1]))
        return [xs[0].sum(axis=tuple(range(1, 1 + ndim)), keepdims=True) / Fraction(n)]
    if op.kind in ("batch_norm", "channel_affine"):
        if op.kind == "batch_norm":  # the documented float64 factor, taken exactly
            scale = [_fr(g / math.sqrt(v + p["eps"])) for g, v in zip(p["gamma"], p["var"])]
            shift = [_fr(b) - _fr(m) * a for b, m, a in zip(p["beta"], p["mean"], scale)]
        else:
            scale, shift = p["scale"], p["shift"]
        shape = (-1, *(1,) * (ndim + 1))
        y = xs[0] * np.array(scale, dtype=object).reshape(shape)
        if shift is not None:
            y[..., -1] += np.array(shift, dtype=object).reshape(shape[:-1])
        return [y]
    if op.kind == "add":
        c = p["coefficients"] or (1,) * len(xs)
        return [sum((Fraction(ci) * x for ci, x in zip(c[1:], xs[1:])), Fraction(c[0]) * xs[0])]
    if op.kind == "concat":
        return [np.concatenate(xs, axis=0)]
    if op.kind == "split":
        return list(np.split(xs[0], np.cumsum(p["sizes"])[:-1], axis=0))
    if op.kind == "channels_slice":
        return [xs[0][p["start"]:p["stop"]]]
    if op.kind == "flatten":
        return [xs[0].reshape(-1, xs[0].shape[-1])]
    if op.kind == "linear":
        w = np.asarray(p["weight"], dtype=object)
        y = w.dot(xs[0])
        if p["bias"] is not None:
            y[:, -1] += np.asarray(p["bias"], dtype=object)
        return [y]
    raise AssertionError(op.kind)  # pragma: no cover


def exact_reference_fits(spec: Spec) -> bool:
    """Whether :func:`exact_reference` is cheap for ``spec`` (small input and values)."""
    n_in = int(np.prod(spec.input_shape))
    return n_in <= EXACT_REFERENCE_INPUTS and \
        max(int(np.prod(s)) for s in spec.shapes) * (n_in + 1) <= EXACT_REFERENCE_MAX


def exact_reference(spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    """``W``, ``B`` of the program in exact fractions, layer by layer by explicit index
    sums on affine functions of the input (independent of torch and of the package)."""
    n_in = int(np.prod(spec.input_shape))
    basis = np.zeros((n_in, n_in + 1), dtype=object)
    basis[...] = Fraction(0)
    for j in range(n_in):
        basis[j, j] = Fraction(1)
    values = [basis.reshape(*spec.input_shape, n_in + 1)]
    for op in spec.ops:
        values.extend(_exact_op(op, [values[i] for i in op.inputs], spec.ndim))
    out = values[spec.output].reshape(-1, n_in + 1)
    return out[:, :-1], out[:, -1]


# -- running the paths ---------------------------------------------------------------------
class PathTimeout(BaseException):
    """A path ran over its time limit (a BaseException: no ``except Exception`` eats it)."""


@contextlib.contextmanager
def forced_product_method(method: str, counts: Counter) -> Iterator[None]:
    """Every kernel product of :class:`~laurentnet.numeric.kernels.KernelOperator` goes
    through ``polymatmul(..., method=method)`` (counted in ``counts[method]``)."""
    real = numeric_kernels.polymatmul

    def forced(outer: torch.Tensor, inner: torch.Tensor, dilation: Any = 1,
               _method: str = "auto", budget: int | None = None) -> torch.Tensor:
        counts[method] += 1
        return real(outer, inner, dilation, method, budget)
    numeric_kernels.polymatmul = forced
    try:
        yield
    finally:
        numeric_kernels.polymatmul = real


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`PathTimeout` after ``seconds`` (main thread with SIGALRM only)."""
    usable = seconds > 0 and hasattr(signal, "setitimer") and \
        threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def alarm(signum: int, frame: Any) -> None:
        raise PathTimeout(f"over {seconds:g} s")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def refusal_reason(path: str, exc: BaseException) -> str | None:
    """The label of a clear refusal (a documented one, or ``Type: message`` of a package
    error with names and numbers blanked), ``None`` when ``exc`` is a crash."""
    message = str(exc)
    if isinstance(exc, ValueError):  # the package's own errors are ValueErrors too
        for label, pattern, paths in DOCUMENTED_REFUSALS:
            if path in paths and re.search(pattern, message):
                return label
    if isinstance(exc, LaurentnetError):
        first = message.splitlines()[0] if message else ""
        general = re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'…'", first))
        return f"{type(exc).__name__}: {general[:90]}"
    return None


def crash_summary(exc: BaseException) -> str:
    """``Type: message`` and the innermost frames, on one line."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                        for f in reversed(frames))
    message = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"crash {type(exc).__name__}: {message} [at {where}]"


@dataclass
class Outcome:
    """What one path did on one network: ``status`` is ok / refused / mismatch / timeout."""
    path: str
    status: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class NetworkReport:
    spec: Spec
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    not_tight: int = 0           # positions outside the region where the collapse is right
    periodic_missed: bool = False  # a periodic-family network collapsed as zero-extended
    unexpected: list[str] = field(default_factory=list)  # paths that refused unexpectedly
    region_differs: bool = False  # numeric and exact regions differ (information only)
    products: Counter = field(default_factory=Counter)  # polymatmul calls per forced method
    polyphase: bool = False  # the exact collapse is a polyphase operator
    region_positions: int = 0  # output positions in the exact collapse's region
    exact_reference: bool = False  # the exact affine map was checked against fractions

    @property
    def mismatches(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status == "mismatch"]


def _close(got: np.ndarray, want: np.ndarray, scale: float) -> np.ndarray:
    return np.abs(np.asarray(got, dtype=np.float64) - want) <= TOL * scale


def _first_bad(ok: np.ndarray, got: np.ndarray, want: np.ndarray) -> str:
    bad = np.argwhere(~ok)
    index = tuple(int(i) for i in bad[0])
    return (f"{len(bad)} of {ok.size} entries differ, first at {index}: got "
            f"{float(np.asarray(got)[index]):.17g}, reference {float(want[index]):.17g}")


def _check_shape(what: str, got: Sequence[int], want: Sequence[int]) -> None:
    if tuple(got) != tuple(want):
        raise _Mismatch(f"{what} {tuple(got)} != reference {tuple(want)}")


class _Mismatch(Exception):
    """A check failed (the message says which)."""


def _check_map(W: np.ndarray, B: np.ndarray, ref: Reference) -> None:
    _check_shape("W shape", W.shape, ref.W.shape)
    _check_shape("B shape", B.shape, ref.B.shape)
    for name, got, want in (("W", W, ref.W), ("B", B, ref.B)):
        ok = _close(got, want, ref.scale)
        if not ok.all():
            raise _Mismatch(f"{name}: {_first_bad(ok, got, want)}")


def _region_rows(region: np.ndarray, channels: int) -> np.ndarray:
    """Flat output indices (C order) of every channel at the region's positions."""
    return np.broadcast_to(region, (channels, *region.shape)).reshape(-1)


def _as_float(value: Any) -> float:
    """A ``QQ`` element (gmpy or Python rational) or a sympy ``Rational``, correctly
    rounded to float64 (``int / int``)."""
    if isinstance(value, sympy.Rational):
        return int(value.p) / int(value.q)
    return int(value.numerator) / int(value.denominator)


def _fraction(value: Any) -> Fraction:
    """A ``QQ`` element (gmpy or Python rational) or a sympy ``Rational`` as a Fraction."""
    if isinstance(value, sympy.Rational):
        return Fraction(int(value.p), int(value.q))
    return Fraction(int(value.numerator), int(value.denominator))


def exact_to_float(amap: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(W, B)`` of an exact :class:`~laurentnet.algebra.AffineMap` over ``QQ`` as float64
    arrays, each entry rounded once (``int / int``; faster than ``AffineMap.to_numpy``)."""
    W = np.zeros(amap.W.shape)
    for r, row in amap.W.rep.to_dod().items():
        for c, v in row.items():
            W[r, c] = _as_float(v)
    return W, np.array([_as_float(b) for b in amap.B], dtype=np.float64)


def to_float(values: Any) -> np.ndarray:
    """An array of exact rationals rounded once, entry by entry, to float64."""
    return np.vectorize(_as_float, otypes=[np.float64])(np.asarray(values, dtype=object))


def operator_matrix(op: Any, in_shape: Shape, out_shape: Shape, periodic: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The exact ``down_s K up_u + b`` as a dense ``(n_out, n_in)`` matrix on the output
    window, straight from docs/conventions.md (not the package's ``apply``):
    ``y[o, i] = b_o + sum_{c, j} K_oc[s i - u j] x[c, j]``, with the exponents taken modulo
    the input size ``n`` on a periodic grid (``K mod z^n - 1``).  Returns ``W`` and ``B`` as
    ``QQ`` elements and the same rounded once to float64.  A polyphase operator (a multirate
    collapse with no single kernel): :func:`polyphase_matrix`."""
    if getattr(op, "is_polyphase", False):
        return polyphase_matrix(op, in_shape, out_shape)
    zero = op.ring.domain.zero
    (c_in, *n), (c_out, *m) = in_shape, out_shape
    ndim = len(n)
    i = np.indices(m).reshape(ndim, -1).T
    j = np.indices(n).reshape(ndim, -1).T
    diff = np.asarray(op.stride) * i[:, None, :] - np.asarray(op.upsample) * j[None, :, :]
    if periodic:
        diff = np.mod(diff, n)
    W = np.full((c_out, len(i), c_in, len(j)), zero, dtype=object)
    Wf = np.zeros(W.shape)
    for o, row in enumerate(op.matrix):
        for c, poly in enumerate(row):
            terms: dict[tuple[int, ...], Any] = {}
            for e, v in poly.iterterms():
                key = tuple(int(a) % size for a, size in zip(e, n)) if periodic else tuple(e)
                terms[key] = terms.get(key, zero) + v
            if terms:
                W[o, :, c, :], Wf[o, :, c, :] = _gather(terms, diff, zero)
    B = np.array([b for b in op.bias for _ in range(len(i))], dtype=object)
    shape = (c_out * len(i), c_in * len(j))
    return W.reshape(shape), Wf.reshape(shape), B, to_float(B)


def polyphase_matrix(op: Any, in_shape: Shape, out_shape: Shape
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`operator_matrix` of a polyphase operator (input period ``P``, output period
    ``Q``, block ``H``), from docs/conventions.md: ``y[o, mQ + t] = b_{o,t} +
    sum_{c, r, k} H_{(o,t),(c,r)}[m - k] x[c, kP + r]`` (zero extension)."""
    zero = op.ring.domain.zero
    (c_in, *n), (c_out, *m) = in_shape, out_shape
    ndim = len(n)
    P, Q = np.asarray(op.in_period), np.asarray(op.out_period)
    i = np.indices(m).reshape(ndim, -1).T
    j = np.indices(n).reshape(ndim, -1).T
    t_of = np.ravel_multi_index(tuple((i % Q).T), tuple(Q))
    r_of = np.ravel_multi_index(tuple((j % P).T), tuple(P))
    diff = (i // Q)[:, None, :] - (j // P)[None, :, :]
    M, N = int(np.prod(Q)), int(np.prod(P))
    W = np.full((c_out, len(i), c_in, len(j)), zero, dtype=object)
    Wf = np.zeros(W.shape)
    for o in range(c_out):
        for c in range(c_in):
            for t in range(M):
                for r in range(N):
                    poly = op.block.matrix[o * M + t][c * N + r]
                    if not poly:
                        continue
                    rows, cols = np.nonzero(t_of == t)[0], np.nonzero(r_of == r)[0]
                    if not len(rows) or not len(cols):
                        continue
                    sub = np.ix_(rows, cols)
                    W[o, :, c, :][sub], Wf[o, :, c, :][sub] = _gather(
                        dict(poly.iterterms()), diff[sub], zero)
    B = np.array([op.bias[o * M + t] for o in range(c_out) for t in t_of], dtype=object)
    shape = (c_out * len(i), c_in * len(j))
    return W.reshape(shape), Wf.reshape(shape), B, to_float(B)


def _gather(terms: dict[tuple[int, ...], Any], index: np.ndarray, zero: Any
            ) -> tuple[np.ndarray, np.ndarray]:
    """``terms[index[p, q]]`` (``zero`` where absent) for an index array ``(P, Q, ndim)``,
    exact and as float64."""
    exps = np.array(list(terms))
    low, high = exps.min(axis=0), exps.max(axis=0)
    dense = np.full(tuple(high - low + 1), zero, dtype=object)
    dense_f = np.zeros(dense.shape)
    for e, v in terms.items():
        at = tuple(np.asarray(e) - low)
        dense[at], dense_f[at] = v, _as_float(v)
    k = index - low
    inside = ((k >= 0) & (k <= high - low)).all(axis=-1)
    k = tuple(np.where(inside, k[..., a], 0) for a in range(k.shape[-1]))
    out, out_f = dense[k], dense_f[k]
    out[~inside], out_f[~inside] = zero, 0.0
    return out, out_f


def dense_exact(amap: Any) -> tuple[np.ndarray, np.ndarray]:
    """``W`` (dense object array of ``QQ`` elements) and ``B`` of an exact affine map."""
    zero = amap.domain.zero
    W = np.full(amap.W.shape, zero, dtype=object)
    for r, row in amap.W.rep.to_dod().items():
        for c, v in row.items():
            W[r, c] = v
    return W, np.array(list(amap.B), dtype=object)


def apply_cost(op: Any, in_shape: Shape) -> int:
    """Monomial products ``CollapseResult.apply`` needs (kernel terms times input size)."""
    return sum(len(poly) for row in op.matrix for poly in row) * int(np.prod(in_shape[1:]))


def expected_to_accept(spec: Spec, path: str) -> bool:
    """Whether ``path`` should accept the network: the affine paths take every linear
    network, the collapses every one without flatten/linear (a multirate network with no
    single strided kernel collapses to a polyphase operator; transposed convs collapse on
    both sides) and whose summed branches have equal rates ``S / U``."""
    return path not in COLLAPSE_PATHS or (spec.family != "classifier" and
                                          not {RATES_DIFFER, RATES_UNKNOWN} & spec.tags)


class Runner:
    """Runs the six paths on one network and checks each against the reference."""

    def __init__(self, spec: Spec, path_timeout: float):
        self.spec, self.timeout = spec, path_timeout
        self.report = NetworkReport(spec)
        self.net: Network | None = None
        self.ref: Reference | None = None
        self.exact_map: Any = None
        self.exact_collapse: Any = None
        self.numeric_region: np.ndarray | None = None
        self.exact_equal: np.ndarray | None = None  # positions where the exact collapse is right

    def run(self) -> NetworkReport:
        self.net = build_network(self.spec)
        self.ref = reference(self.spec)
        for path in PATHS:
            outcome = self.report.outcomes[path] = self._run_path(path)
            if outcome.status == "refused" and expected_to_accept(self.spec, path):
                self.report.unexpected.append(path)
        self._compare_regions()
        return self.report

    def _run_path(self, path: str) -> Outcome:
        t0 = time.perf_counter()
        try:
            with deadline(self.timeout):
                getattr(self, f"_path_{path}")()
            status, detail = "ok", ""
        except PathTimeout as exc:
            status, detail = "timeout", str(exc)
        except _Mismatch as exc:
            status, detail = "mismatch", str(exc)
        except Exception as exc:  # every other error is a refusal or a crash
            reason = refusal_reason(path, exc)
            status, detail = ("refused", reason) if reason else ("mismatch", crash_summary(exc))
        return Outcome(path, status, detail, time.perf_counter() - t0)

    # the paths -----------------------------------------------------------------------
    def _path_exact_affine(self) -> None:
        amap = algebra.collapse_affine(self.net, self.spec.input_shape)
        _check_shape("input shape", amap.input_shape, self.spec.input_shape)
        _check_shape("output shape", amap.output_shape, self.spec.output_shape)
        _check_map(*exact_to_float(amap), self.ref)
        if exact_reference_fits(self.spec):
            self._check_exact_reference(amap)
        self.exact_map = amap

    def _check_exact_reference(self, amap: Any) -> None:
        """On a small network, ``W`` and ``B`` equal :func:`exact_reference` as rationals."""
        W, B = exact_reference(self.spec)
        Wa, Ba = (np.vectorize(_fraction, otypes=[object])(a) for a in dense_exact(amap))
        for name, got, want in (("W", Wa, W), ("B", Ba, B)):
            bad = np.argwhere(got != want)
            if len(bad):
                at = tuple(int(i) for i in bad[0])
                raise _Mismatch(f"{name} != the exact reference (fractions) at {len(bad)} "
                                f"entries, first {at}: got {got[at]}, reference {want[at]}")
        self.report.exact_reference = True

    def _path_exact_collapse(self) -> None:
        """The detected semantics; for a periodic network also the zero-extended one
        (``periodic=False``), whose region must be right too."""
        result = algebra.collapse(self.net, self.spec.input_shape, tight=self.spec.tight)
        not_tight = self._check_exact_result(result)
        self._check_tight_setting(result)
        self.exact_collapse = result
        self.report.polyphase = bool(result.polyphase)
        self.report.region_positions = int(result.region.sum())
        self.report.periodic_missed = self.spec.family == "periodic" and not result.periodic
        if result.periodic:
            self.exact_equal = None  # the numeric collapse is periodic too
            self._check_exact_result(algebra.collapse(self.net, self.spec.input_shape,
                                                      periodic=False, tight=self.spec.tight))
        else:
            self.report.not_tight = not_tight

    def _check_exact_result(self, result: Any) -> int:
        """Rows of the operator's matrix at the region's positions: within ``TOL`` of the
        reference, and equal to the exact affine map's rows as rationals.  Also the
        package's own ``result.apply`` at ``x`` when that is cheap.  A region tight for
        these weights must leave out only positions where some row differs from the exact
        affine map's.  Returns how many positions outside the region have every row equal
        to the reference's (not tight)."""
        self._check_result_shapes(result)
        ref, out_shape = self.ref, self.spec.output_shape
        W, Wf, B, Bf = operator_matrix(result.operator, self.spec.input_shape, out_shape,
                                       result.periodic)
        rows = _region_rows(result.region, out_shape[0])
        equal = _close(Wf, ref.W, ref.scale).all(axis=1) & _close(Bf, ref.B, ref.scale)
        self._raise_if_rows_differ(~equal & rows, "exact operator vs the reference", result)
        if self.exact_map is not None:
            Wa, Ba = dense_exact(self.exact_map)
            same = (W == Wa).all(axis=1) & (B == Ba)
            self._raise_if_rows_differ(~same & rows, "exact operator != exact affine map (as "
                                       "rationals)", result)
            self.exact_equal = same.reshape(out_shape).all(axis=0)
            outside = ~result.region & self.exact_equal
            if result.tight_for == "these weights" and outside.any():
                raise _Mismatch(f"region said tight for these weights, yet at {int(outside.sum())}"
                                f" positions outside it the operator equals the network exactly"
                                f" (as rationals), first "
                                f"{tuple(int(i) for i in np.argwhere(outside)[0])}; "
                                f"{self._region_words(result)}")
        if apply_cost(result.operator, self.spec.input_shape) <= APPLY_COST_MAX:
            got = to_float(result.apply(ref.x))
            wrong = ~_close(got, ref.y, ref.scale).all(axis=0) & result.region
            if wrong.any():
                raise _Mismatch(f"CollapseResult.apply(x) differs from the reference inside "
                                f"the region at {int(wrong.sum())} positions, first "
                                f"{tuple(int(i) for i in np.argwhere(wrong)[0])}; "
                                f"{self._region_words(result)}")
        return int((~result.region & equal.reshape(out_shape).all(axis=0)).sum())

    def _check_tight_setting(self, result: Any) -> None:
        """``tight=True`` decides every position (unless the region is already all of the
        output); ``tight=False`` never does."""
        want, got = self.spec.tight, result.tight_for
        if want is True and not result.periodic and not result.region.all() \
                and got != "these weights":
            raise _Mismatch(f"tight=True, yet the region is tight for {got}")
        if want is False and got != "generic weights":
            raise _Mismatch(f"tight=False, yet the region is tight for {got}")

    def _raise_if_rows_differ(self, bad: np.ndarray, what: str, result: Any) -> None:
        if bad.any():
            first = tuple(int(i) for i in np.unravel_index(np.argmax(bad), self.spec.output_shape))
            raise _Mismatch(f"{what}: {int(bad.sum())} output entries inside the region differ, "
                            f"first (channel, *position) {first}; {self._region_words(result)}")

    def _path_numeric_collapse(self) -> None:
        """The float collapse with the network's ``tight=`` setting: checked as in
        :meth:`_check_numeric`; a region tight for these weights must be the exact one."""
        result = numeric.collapse_numeric(self.net, self.spec.input_shape, tight=self.spec.tight)
        equal = self._check_numeric(result)
        self._check_tight_setting(result)
        if result.tight_for == "these weights" and self.exact_equal is not None \
                and not result.periodic and (result.region != self.exact_equal).any():
            raise _Mismatch(f"numeric region tight for these weights != the positions where "
                            f"the exact operator equals the network (numeric "
                            f"{int(result.region.sum())}, exact {int(self.exact_equal.sum())} "
                            f"positions); {self._region_words(result)}")
        self.numeric_region = result.region
        if self.exact_collapse is None and not result.periodic:
            close = equal.reshape(self.spec.output_shape).all(axis=0)
            self.report.not_tight = int((~result.region & close).sum())

    def _path_numeric_methods(self) -> None:
        """The float collapse once per product method of ``polymatmul`` (forced for every
        kernel product of the walk; ``tight=False``), each checked as in
        :meth:`_check_numeric`; the products per method are counted."""
        for method in PRODUCT_METHODS:
            products: Counter = Counter()
            with forced_product_method(method, products):
                result = numeric.collapse_numeric(self.net, self.spec.input_shape, tight=False)
            try:
                self._check_numeric(result)
            except _Mismatch as exc:
                raise _Mismatch(f"method {method!r}: {exc}") from None
            self.report.products.update(products)  # counted once checked

    def _check_numeric(self, result: Any) -> np.ndarray:
        """On small inputs the whole map (identity batch) is checked at the region's
        positions, on larger ones (where the batched 3-D conv is slow) ``SAMPLES`` inputs.
        Returns which output entries equal the reference (flat, within ``TOL``)."""
        self._check_result_shapes(result)
        shape, ref = self.spec.input_shape, self.ref
        n_in = int(np.prod(shape))
        full = n_in <= IDENTITY_BATCH_MAX
        batch = torch.cat([torch.zeros(1, n_in, dtype=torch.float64),
                           torch.eye(n_in, dtype=torch.float64)]).reshape(-1, *shape) \
            if full else torch.from_numpy(ref.xs)
        out = result.apply(batch)
        _check_shape("applied output shape", out.shape[1:], self.spec.output_shape)
        out = out.reshape(len(batch), -1).numpy()
        if full:
            pairs = [("W", (out[1:] - out[0]).T, ref.W), ("B", out[0], ref.B)]
        else:
            pairs = [("f(x)", out.T, ref.ys.reshape(SAMPLES, -1).T)]
        rows = _region_rows(result.region, self.spec.output_shape[0])
        equal = np.ones(len(rows), bool)
        for name, got, want in pairs:
            ok = _close(got, want, ref.scale).reshape(len(rows), -1).all(axis=1)
            bad = rows & ~ok
            if bad.any():
                first = tuple(int(i) for i in np.unravel_index(np.argmax(bad),
                                                               self.spec.output_shape))
                error = float(np.abs(got - want).reshape(len(rows), -1)[bad].max())
                raise _Mismatch(f"inside the region, {name} differs at {int(bad.sum())} output "
                                f"entries, first (channel, *position) {first}, max error "
                                f"{error:.3g}; {self._region_words(result)}")
            equal &= ok
        return equal

    def _path_affine_vjp(self) -> None:
        self._numeric_affine("vjp")

    def _path_affine_jvp(self) -> None:
        self._numeric_affine("jvp")

    def _numeric_affine(self, method: str) -> None:
        amap = numeric.affine_numeric(self.net, self.spec.input_shape, method=method)
        _check_shape("output shape", amap.output_shape, self.spec.output_shape)
        if amap.method != method:
            raise _Mismatch(f"asked for method {method!r}, got {amap.method!r}")
        _check_map(amap.W.numpy(), amap.B.numpy(), self.ref)

    # helpers -------------------------------------------------------------------------
    def _check_result_shapes(self, result: Any) -> None:
        _check_shape("output shape", result.output_shape, self.spec.output_shape)
        _check_shape("region shape", result.region.shape, self.spec.output_shape[1:])
        if result.region.dtype != bool:
            raise _Mismatch(f"region dtype {result.region.dtype}, expected bool")
        if result.periodic and not result.region.all():
            raise _Mismatch("a periodic collapse must be exact everywhere")

    @staticmethod
    def _region_words(result: Any) -> str:
        return f"{'periodic' if result.periodic else 'zero-extended'}, {result.where()}"

    def _compare_regions(self) -> None:
        if self.exact_collapse is not None and self.numeric_region is not None:
            self.report.region_differs = bool(
                (self.exact_collapse.region != self.numeric_region).any())


def run_network(seed: int, index: int, path_timeout: float = 30.0) -> NetworkReport:
    """Generate network ``seed:index``, run every path on it and check each."""
    spec = generate(seed, index)
    try:
        return Runner(spec, path_timeout).run()
    except Exception as exc:  # building the network or the reference failed
        report = NetworkReport(spec)
        report.outcomes["build"] = Outcome("build", "mismatch", crash_summary(exc))
        return report


# -- a campaign ----------------------------------------------------------------------------
def reproducer(seed: int, index: int) -> str:
    return f"python benchmarks/fuzz.py --replay {seed}:{index}"


@dataclass
class Campaign:
    """Counts over many networks (see :meth:`as_json` for the JSON object)."""
    seed: int
    budget_seconds: float | None
    networks: int = 0
    seconds: float = 0.0
    kinds: Counter = field(default_factory=Counter)
    paths: dict[str, Counter] = field(default_factory=lambda: {p: Counter() for p in PATHS})
    refused_reasons: dict[str, Counter] = field(
        default_factory=lambda: {p: Counter() for p in PATHS})
    mismatch_list: list[dict[str, Any]] = field(default_factory=list)
    not_tight_positions: int = 0
    not_tight_examples: list[str] = field(default_factory=list)
    not_tight_networks: int = 0
    region_differs: int = 0
    periodic_missed: list[str] = field(default_factory=list)
    unexpected_refusals: list[dict[str, Any]] = field(default_factory=list)
    timeouts: list[dict[str, Any]] = field(default_factory=list)
    slowest: list[tuple[float, int]] = field(default_factory=list)
    products: Counter = field(default_factory=Counter)
    polyphase_collapses: int = 0
    exact_reference_networks: int = 0

    def add(self, report: NetworkReport) -> None:
        spec = report.spec
        self.networks += 1
        self.kinds.update(spec.features())
        total = 0.0
        for outcome in report.outcomes.values():
            total += outcome.seconds
            if outcome.path in self.paths:
                self.paths[outcome.path][outcome.status] += 1
                self.paths[outcome.path]["seconds"] += outcome.seconds
            if outcome.status == "refused":
                self.refused_reasons[outcome.path][outcome.detail] += 1
            elif outcome.status == "mismatch":
                self.mismatch_list.append(dict(index=spec.index, path=outcome.path,
                                               family=spec.family, ndim=spec.ndim,
                                               detail=outcome.detail,
                                               reproducer=reproducer(spec.seed, spec.index)))
            elif outcome.status == "timeout":
                self.timeouts.append(dict(index=spec.index, path=outcome.path,
                                          reproducer=reproducer(spec.seed, spec.index)))
        if report.not_tight:
            self.not_tight_positions += report.not_tight
            self.not_tight_networks += 1
            if len(self.not_tight_examples) < 10:
                self.not_tight_examples.append(reproducer(spec.seed, spec.index))
        self.region_differs += report.region_differs
        self.products.update(report.products)
        self.polyphase_collapses += report.polyphase
        self.exact_reference_networks += report.exact_reference
        if report.periodic_missed:
            self.periodic_missed.append(reproducer(spec.seed, spec.index))
        for path in report.unexpected:
            self.unexpected_refusals.append(dict(index=spec.index, path=path,
                                                 reason=report.outcomes[path].detail,
                                                 reproducer=reproducer(spec.seed, spec.index)))
        self.slowest = sorted(self.slowest + [(total, spec.index)], reverse=True)[:5]

    @property
    def mismatches(self) -> int:
        return len(self.mismatch_list)

    def as_json(self) -> dict[str, Any]:
        paths = {p: {**{k: int(c[k]) for k in STATUSES}, "seconds": round(c["seconds"], 3)}
                 for p, c in self.paths.items()}
        return {
            "seed": self.seed, "networks": self.networks, "mismatches": self.mismatches,
            "seconds": round(self.seconds, 3), "budget_seconds": self.budget_seconds,
            "networks_per_second": round(self.networks / self.seconds, 2) if self.seconds else None,
            "kinds": dict(sorted(self.kinds.items())), "paths": paths,
            "refused": sum(sum(c.values()) for c in self.refused_reasons.values()),
            "refused_by_path": {p: dict(c) for p, c in self.refused_reasons.items()},
            "region_not_tight": self.not_tight_positions,
            "region_not_tight_networks": self.not_tight_networks,
            "region_not_tight_examples": self.not_tight_examples,
            "region_numeric_differs_from_exact": self.region_differs,
            "polyphase_collapses": self.polyphase_collapses,
            "exact_reference_networks": self.exact_reference_networks,
            "polymatmul_products": {m: int(self.products[m]) for m in PRODUCT_METHODS},
            "periodic_not_detected": self.periodic_missed,
            "unexpected_refusals": self.unexpected_refusals,
            "timeouts": self.timeouts,
            "slowest": [dict(index=i, seconds=round(s, 3), reproducer=reproducer(self.seed, i))
                        for s, i in self.slowest],
            "mismatch_list": self.mismatch_list,
        }


def campaign(seed: int, seconds: float | None = None, max_networks: int | None = None,
             path_timeout: float = 30.0, start: int = 0) -> Campaign:
    """Run networks ``start, start + 1, ...`` of ``seed`` until the time budget or the count
    is spent (at least one network)."""
    result = Campaign(seed, seconds)
    t0 = time.perf_counter()
    index = start
    while True:
        result.add(run_network(seed, index, path_timeout))
        index += 1
        result.seconds = time.perf_counter() - t0
        if max_networks is not None and result.networks >= max_networks:
            break
        if seconds is not None and result.seconds >= seconds:
            break
        if seconds is None and max_networks is None:
            break
    return result


# -- output --------------------------------------------------------------------------------
def table(c: Campaign) -> str:
    """The human report: networks per kind, outcomes per path, refusals, mismatches."""
    rate = f" ({c.networks / c.seconds:.1f}/s)" if c.seconds else ""
    lines = [f"laurentnet fuzz: seed {c.seed}, {c.networks} networks in {c.seconds:.1f} s{rate}",
             "", f"{'kind':<32}{'networks':>9}"]
    lines += [f"  {kind:<30}{n:>9}" for kind, n in sorted(c.kinds.items())]
    lines += ["", f"{'path':<18}{'ok':>7}{'refused':>9}{'mismatch':>10}{'timeout':>9}"
              f"{'seconds':>9}"]
    for path, counts in c.paths.items():
        lines.append(f"  {path:<16}{counts['ok']:>7}{counts['refused']:>9}"
                     f"{counts['mismatch']:>10}{counts['timeout']:>9}{counts['seconds']:>9.1f}")
    refusals = [(p, r, n) for p, cnt in c.refused_reasons.items() for r, n in cnt.most_common()]
    if refusals:
        lines += ["", "refused (clear package errors, not mismatches):"]
        lines += [f"  {p:<16} {n:>5}  {r}" for p, r, n in refusals]
    lines += ["", f"region_not_tight: {c.not_tight_positions} positions in "
              f"{c.not_tight_networks} networks (outside the region yet equal; not mismatches)"]
    lines += [f"  e.g. {e}" for e in c.not_tight_examples[:3]]
    lines.append(f"numeric region != exact region: {c.region_differs} networks (information)")
    lines.append(f"polyphase collapses (no single strided kernel): {c.polyphase_collapses} "
                 f"networks")
    lines.append(f"exact affine maps checked against the exact (fractions) reference: "
                 f"{c.exact_reference_networks} networks")
    lines.append("kernel products checked per polymatmul method: " +
                 ", ".join(f"{m} {c.products[m]}" for m in PRODUCT_METHODS))
    if c.periodic_missed:
        lines.append(f"periodic networks collapsed as zero-extended: {len(c.periodic_missed)}, "
                     f"e.g. {c.periodic_missed[0]}")
    if c.unexpected_refusals:
        lines.append(f"refusals of networks the path should accept: {len(c.unexpected_refusals)}")
        lines += [f"  [{u['path']}] {u['reason']} -- {u['reproducer']}"
                  for u in c.unexpected_refusals[:10]]
    if c.timeouts:
        lines.append(f"timeouts: {len(c.timeouts)}, e.g. {c.timeouts[0]['reproducer']}")
    lines += ["", f"mismatches: {c.mismatches}"]
    for m in c.mismatch_list[:50]:
        lines.append(f"  [{m['path']}] #{m['index']} {m['family']} {m['ndim']}-D: {m['detail']}")
        lines.append(f"      {m['reproducer']}")
    if c.mismatches > 50:
        lines.append(f"  ... and {c.mismatches - 50} more (see --json)")
    return "\n".join(lines)


def replay(seed: int, index: int, as_json: bool, path_timeout: float) -> int:
    """Rebuild network ``seed:index``, print it and what every path did."""
    report = run_network(seed, index, path_timeout)
    spec = report.spec
    if as_json:
        print(json.dumps({"seed": seed, "index": index, "family": spec.family,
                          "features": spec.features(), "network": spec.describe(),
                          "mismatches": len(report.mismatches),
                          "region_not_tight": report.not_tight,
                          "outcomes": {p: dict(status=o.status, detail=o.detail,
                                               seconds=round(o.seconds, 3))
                                       for p, o in report.outcomes.items()}}))
        return 1 if report.mismatches else 0
    print(spec.describe())
    print()
    try:
        print(build_network(spec).summary(spec.input_shape))
    except Exception as exc:  # the report below says what went wrong
        print(f"(no summary: {crash_summary(exc)})")
    print()
    for path, o in report.outcomes.items():
        print(f"{path:<18}{o.status:<10}{o.seconds:7.3f} s  {o.detail}")
    print(f"region_not_tight: {report.not_tight} positions")
    return 1 if report.mismatches else 0


def _replay_arg(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected SEED:INDEX (two non-negative ints), "
                                         f"got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fuzz laurentnet's collapse paths against a layer-by-layer float64 torch "
                    "reference. Exit 0: no mismatch; 1: mismatches; 2: bad arguments.")
    parser.add_argument("--seconds", type=_positive(float), default=None,
                        help="time budget (default 60 s unless --max-networks is given)")
    parser.add_argument("--seed", type=int, default=None,
                        help="campaign seed (default: a fresh random one, printed)")
    parser.add_argument("--max-networks", type=_positive(int), default=None,
                        help="stop after this many networks")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--replay", type=_replay_arg, default=None, metavar="SEED:INDEX",
                        help="rebuild and re-run one network, print its summary")
    parser.add_argument("--path-timeout", type=float, default=30.0,
                        help="seconds one path may take on one network (0: no limit)")
    args = parser.parse_args(argv)
    if args.seconds is None and args.max_networks is None:
        args.seconds = 60.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replay is not None:
        return replay(*args.replay, args.json, args.path_timeout)
    seed = secrets.randbelow(2**31) if args.seed is None else args.seed
    print(f"laurentnet fuzz seed {seed} (replay one network: python benchmarks/fuzz.py "
          f"--replay {seed}:INDEX)",
          file=sys.stderr if args.json else sys.stdout, flush=True)
    result = campaign(seed, args.seconds, args.max_networks, args.path_timeout)
    print(json.dumps(result.as_json()) if args.json else table(result), flush=True)
    return 1 if result.mismatches else 0


if __name__ == "__main__":
    torch.set_num_threads(1)  # one process, one thread: the numbers are per core
    sys.exit(main())
