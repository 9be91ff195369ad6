"""Random *linear network programs* for the collapse / affine-map tests.

A :class:`NetSpec` is a straight-line program over values (``values[0]`` is the input):
every op reads earlier values and appends one value (``split`` appends one per part).
The same program is

* built with :class:`algebra.network.Network` (:func:`build_network`), and
* evaluated layer by layer with ``torch.nn`` / ``torch.nn.functional`` in float64
  (:func:`torch_forward`) — the independent reference: ``nn.Conv{n}d`` with its own
  ``padding_mode`` (or ``F.pad(mode=...)`` then an unpadded conv for asymmetric padding),
  ``F.conv_transpose{n}d``, ``F.avg_pool{n}d(count_include_pad=...)``,
  ``F.batch_norm(training=False)``, explicit zero insertion for up-sampling, ``torch.cat``,
  ``torch.split``, ``flatten``, ``F.linear``.

Shapes are tracked here with PyTorch's own size formulas (not the package's), so the
generator never asks for a layer PyTorch would refuse.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import gcd
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

MODES = ("zeros", "circular", "reflect", "replicate")
CONV_MODULE = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}

MAX_SIZE = 14  # never let a spatial axis grow beyond this (exact arithmetic stays fast)


@dataclass
class Op:
    kind: str
    inputs: tuple[int, ...]
    params: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # short, readable in hypothesis falsifying examples
        shown = {}
        for k, v in self.params.items():
            shown[k] = f"array{tuple(v.shape)}" if isinstance(v, np.ndarray) else v
        return f"Op({self.kind!r}, {self.inputs}, {shown})"


@dataclass
class NetSpec:
    ndim: int
    input_shape: tuple[int, ...]
    ops: list[Op] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # per value, PyTorch's
    output: int = 0

    def describe(self) -> str:
        lines = [f"NetSpec({self.ndim}-D, input {self.input_shape}, output v{self.output})"]
        k = 1
        for op in self.ops:
            n_out = len(op.params["sizes"]) if op.kind == "split" else 1
            outs = ", ".join(f"v{k + j}{self.shapes[k + j]}" for j in range(n_out))
            lines.append(f"  {outs} = {op!r}")
            k += n_out
        return "\n".join(lines)

    __repr__ = describe


# -- PyTorch size formulas ---------------------------------------------------------------
def conv_out(n: int, k: int, s: int, d: int, left: int, right: int) -> int:
    return (n + left + right - d * (k - 1) - 1) // s + 1


def pad_pairs(padding: Any, kernel, dilation, ndim: int) -> tuple[tuple[int, int], ...]:
    """The ``(left, right)`` padding per axis that PyTorch applies for ``padding``."""
    if padding == "valid":
        return ((0, 0),) * ndim
    if padding == "same":
        out = []
        for k, d in zip(kernel, dilation):
            total = d * (k - 1)
            out.append((total // 2, total - total // 2))
        return tuple(out)
    if isinstance(padding, int):
        return ((padding, padding),) * ndim
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def _has_constant_positions(op: Op, in_shape, out_shape) -> bool:
    """Whether some output position of ``op`` reads no input position (PyTorch indexing):
    it then holds a constant (0 or the bias) whatever the input."""
    p = op.params
    if op.kind in ("conv", "avg_pool"):
        if op.kind == "conv":
            if p["mode"] != "zeros":
                return False  # padded positions copy input values
            ks, ss, ds = p["weight"].shape[2:], p["stride"], p["dilation"]
            lefts = [l for l, _ in p["pairs"]]
        else:
            ks, ds, lefts = p["kernel"], (1,) * len(p["kernel"]), p["padding"]
            ss = p["stride"] or p["kernel"]
        for n, m, k, s, d, l in zip(in_shape[1:], out_shape[1:], ks, ss, ds, lefts):
            if any(not any(0 <= s * i - l + d * a < n for a in range(k)) for i in range(m)):
                return True
        return False
    if op.kind == "conv_transpose":
        for n, m, k, s, d, pad in zip(in_shape[1:], out_shape[1:], p["weight"].shape[2:],
                                      p["stride"], p["dilation"], p["padding"]):
            hit = {s * i + d * a - pad for i in range(n) for a in range(k)}
            if any(j not in hit for j in range(m)):
                return True
        return False
    if op.kind == "upsample":
        return any(u > 1 and n > 1 for u, n in zip(p["factor"], in_shape[1:]))
    return False


# -- the generator ------------------------------------------------------------------------
class _Builder:
    """Draws ops for a program, tracking shapes; weights come from a seeded numpy RNG."""

    def __init__(self, draw, ndim: int, input_shape, rng: np.random.Generator, *,
                 allow_modes=MODES, collapsible: bool = True, loose: bool = True):
        self.draw, self.ndim, self.rng = draw, ndim, rng
        self.spec = NetSpec(ndim, tuple(input_shape), [], [tuple(input_shape)], 0)
        self.allow_modes = allow_modes
        # ``collapsible``: stay inside what one multi-rate operator ``down_S K up_U + b``
        # can hold (branches with equal rates, no bias before up-sampling, up-sampling
        # after a stride only when coprime); otherwise anything an affine map can hold.
        self.collapsible = collapsible
        self.rates: list[tuple[tuple[int, ...], tuple[int, ...]]] = [((1,) * ndim, (1,) * ndim)]
        self.biased: list[bool] = [False]
        # ``loose``: also draw the patterns on which the package's region is known to be
        # conservative (see ``linear_networks``)
        self.loose = loose
        self.constant: list[bool] = [False]  # some position holds a constant (no input tap)
        self.split_parts: set[int] = set()

    # numbers
    def weights(self, *shape: int) -> np.ndarray:
        """Generic values bounded away from 0 (random signs, magnitudes in [0.3, 1.2])."""
        mag = self.rng.uniform(0.3, 1.2, size=shape)
        return np.where(self.rng.random(shape) < 0.5, -mag, mag)

    def shape(self, v: int) -> tuple[int, ...]:
        return self.spec.shapes[v]

    def emit(self, op: Op, shapes: list[tuple[int, ...]]) -> list[int]:
        """Append ``op``; track the rates ``(S, U)`` of its output relative to the input
        (noble identities: a local ``down_s K up_u`` after ``(S, U)`` gives ``(sS, uU)``)
        and whether it carries a bias."""
        self.spec.ops.append(op)
        first = len(self.spec.shapes)
        self.spec.shapes.extend(shapes)
        src = op.inputs[0] if op.inputs else 0
        (S, U), biased = self.rates[src], any(self.biased[i] for i in op.inputs)
        p = op.params
        local_s, local_u = (1,) * self.ndim, (1,) * self.ndim
        if op.kind == "conv":
            local_s = p["stride"]
            biased |= p["bias"] is not None
        elif op.kind == "avg_pool":
            local_s = p["stride"] or p["kernel"]
        elif op.kind == "global_avg_pool":
            local_s = self.spec.shapes[src][1:]
        elif op.kind == "conv_transpose":
            local_u = p["stride"]
            biased |= p["bias"] is not None
        elif op.kind == "upsample":
            local_u = p["factor"]
        elif op.kind == "batch_norm":
            biased = True
        rate = (tuple(a * b for a, b in zip(S, local_s)), tuple(a * b for a, b in zip(U, local_u)))
        constant = any(self.constant[i] for i in op.inputs) or _has_constant_positions(
            op, self.spec.shapes[src], shapes[0])
        for _ in shapes:
            self.rates.append(rate)
            self.biased.append(biased)
            self.constant.append(constant)
        return list(range(first, len(self.spec.shapes)))

    def modes_for(self, v: int) -> tuple[str, ...]:
        """Padding modes to draw for a conv reading ``v``.  Unless ``loose``, a value with
        constant positions (zeros inserted by up-sampling, borders of an over-padded zero
        conv) is only zero-padded: reflect/replicate/circular padding copying such a
        constant reproduces the collapsed value by coincidence, whatever the weights."""
        if self.constant[v] and not self.loose:
            return ("zeros",)
        return self.allow_modes

    def may_upsample(self, v: int, factor) -> bool:
        if not self.collapsible:
            return True
        S, _ = self.rates[v]
        return not self.biased[v] and all(gcd(u, s) == 1 or u == 1 for u, s in zip(factor, S))

    # layers --------------------------------------------------------------------------
    def _padding_choice(self, n, kernel, stride, dilation, mode):
        """A padding argument (and its pairs) valid for ``mode``; ``None`` if none fits."""
        draw, ndim = self.draw, self.ndim
        style = draw(st.sampled_from(["valid", "int", "axis", "pairs"]
                                     + (["same"] if all(s == 1 for s in stride) else [])))
        if style == "valid":
            padding = "valid" if draw(st.booleans()) else 0
        elif style == "same":
            padding = "same"
        elif style == "int":
            padding = draw(st.integers(1, 2))
        elif style == "axis":
            padding = tuple(draw(st.integers(0, 2)) for _ in range(ndim))
        else:
            padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2)))
                            for _ in range(ndim))
        pairs = pad_pairs(padding, kernel, dilation, ndim)
        if mode != "zeros" and any(max(p) >= size for p, size in zip(pairs, n)):
            return None
        if any(conv_out(size, k, s, d, l, r) < 1
               for size, k, s, d, (l, r) in zip(n, kernel, stride, dilation, pairs)):
            return None
        if any(conv_out(size, k, s, d, l, r) > MAX_SIZE
               for size, k, s, d, (l, r) in zip(n, kernel, stride, dilation, pairs)):
            return None
        return padding, pairs

    def conv(self, v: int, cout: int | None = None, *, keep_size: bool = False,
             stride1: bool = False) -> int:
        draw, ndim = self.draw, self.ndim
        c, *n = self.shape(v)
        if cout is None:
            cout = draw(st.integers(1, 4))
        common = gcd(c, cout)
        groups = draw(st.sampled_from([g for g in range(1, common + 1) if common % g == 0]))
        mode = draw(st.sampled_from(self.modes_for(v)))
        for _attempt in range(4):
            kernel = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
            dilation = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(ndim))
            if keep_size or stride1:
                stride = (1,) * ndim
            else:
                stride = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(ndim))
            if keep_size:
                padding = "same"
                pairs = pad_pairs(padding, kernel, dilation, ndim)
                if mode != "zeros" and any(max(p) >= size for p, size in zip(pairs, n)):
                    continue
                choice = (padding, pairs)
            else:
                choice = self._padding_choice(n, kernel, stride, dilation, mode)
            if choice is not None:
                break
        else:
            kernel, dilation, stride = (1,) * ndim, (1,) * ndim, (1,) * ndim
            choice = ("valid", ((0, 0),) * ndim)
        padding, pairs = choice
        weight = self.weights(cout, c // groups, *kernel)
        bias = self.weights(cout) if draw(st.booleans()) else None
        out = tuple(conv_out(size, k, s, d, l, r)
                    for size, k, s, d, (l, r) in zip(n, kernel, stride, dilation, pairs))
        if keep_size:
            assert out == tuple(n)
        op = Op("conv", (v,), dict(weight=weight, bias=bias, stride=stride, padding=padding,
                                   dilation=dilation, groups=groups, mode=mode, pairs=pairs))
        return self.emit(op, [(cout, *out)])[0]

    def conv_matching(self, v: int, cout: int, out_spatial: tuple[int, ...],
                      stride: tuple[int, ...] | None = None) -> int:
        """A conv of ``v`` whose output has spatial size ``out_spatial`` (searching for a
        kernel, dilation, asymmetric padding and — unless ``stride`` is given and the
        network must stay collapsible — a stride); ``-1`` if none is found."""
        fixed = stride if self.collapsible else None
        draw, ndim = self.draw, self.ndim
        c, *n = self.shape(v)
        mode = draw(st.sampled_from(self.modes_for(v)))
        kernel = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
        dilation = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(ndim))
        stride, pairs = [], []
        for axis, (size, k, d, target) in enumerate(zip(n, kernel, dilation, out_spatial)):
            found = None
            for s in ((1, 2) if fixed is None else (fixed[axis],)):
                for total in range(0, 5):
                    for left in range(total + 1):
                        right = total - left
                        if mode != "zeros" and max(left, right) >= size:
                            continue
                        if conv_out(size, k, s, d, left, right) == target:
                            found = (s, (left, right))
                            break
                    if found:
                        break
                if found:
                    break
            if found is None:
                return -1
            stride.append(found[0])
            pairs.append(found[1])
        groups = 1
        weight = self.weights(cout, c, *kernel)
        bias = self.weights(cout) if draw(st.booleans()) else None
        padding = tuple(pairs)
        op = Op("conv", (v,), dict(weight=weight, bias=bias, stride=tuple(stride),
                                   padding=padding, dilation=dilation, groups=groups,
                                   mode=mode, pairs=tuple(pairs)))
        return self.emit(op, [(cout, *out_spatial)])[0]

    def conv_transpose(self, v: int) -> int:
        draw, ndim = self.draw, self.ndim
        c, *n = self.shape(v)
        cout = draw(st.integers(1, 3))
        kernel = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
        stride = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
        dilation = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(ndim))
        if not self.may_upsample(v, stride):
            return v
        padding, output_padding, out = [], [], []
        for size, k, s, d in zip(n, kernel, stride, dilation):
            p = draw(st.integers(0, d * (k - 1)))
            op_ = draw(st.integers(0, max(s, d) - 1))
            o = (size - 1) * s - 2 * p + d * (k - 1) + op_ + 1
            if o < 1 or o > MAX_SIZE:
                return v
            padding.append(p)
            output_padding.append(op_)
            out.append(o)
        common = gcd(c, cout)
        groups = draw(st.sampled_from([g for g in range(1, common + 1) if common % g == 0]))
        weight = self.weights(c, cout // groups, *kernel)
        bias = self.weights(cout) if draw(st.booleans()) else None
        op = Op("conv_transpose", (v,), dict(weight=weight, bias=bias, stride=stride,
                                             padding=tuple(padding),
                                             output_padding=tuple(output_padding),
                                             dilation=dilation, groups=groups))
        return self.emit(op, [(cout, *out)])[0]

    def upsample(self, v: int) -> int:
        c, *n = self.shape(v)
        factor = tuple(self.draw(st.integers(1, 2)) for _ in range(self.ndim))
        out = tuple((size - 1) * u + 1 for size, u in zip(n, factor))
        if max(out) > MAX_SIZE or not self.may_upsample(v, factor):
            return v
        return self.emit(Op("upsample", (v,), dict(factor=factor)), [(c, *out)])[0]

    def batch_norm(self, v: int) -> int:
        c = self.shape(v)[0]
        rng = self.rng
        params = dict(mean=rng.normal(size=c), var=rng.uniform(0.2, 2.0, size=c),
                      gamma=self.weights(c), beta=rng.normal(size=c),
                      eps=float(self.draw(st.sampled_from([1e-5, 1e-3]))))
        return self.emit(Op("batch_norm", (v,), params), [self.shape(v)])[0]

    def scale(self, v: int) -> int:
        factor = float(self.weights(1)[0])
        return self.emit(Op("scale", (v,), dict(factor=factor)), [self.shape(v)])[0]

    def avg_pool(self, v: int) -> int:
        draw, ndim = self.draw, self.ndim
        c, *n = self.shape(v)
        kernel = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
        stride = None if draw(st.booleans()) else \
            tuple(draw(st.integers(1, k)) for k in kernel)
        padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
        # an exclude-pad average of constant positions equals the collapsed (include-pad)
        # average by coincidence; unless ``loose``, such values are pooled including pad
        include = draw(st.booleans()) or (self.constant[v] and not self.loose)
        s = kernel if stride is None else stride
        out = tuple((size + 2 * p - k) // si + 1 for size, p, k, si in zip(n, padding, kernel, s))
        if min(out) < 1:
            return v
        op = Op("avg_pool", (v,), dict(kernel=kernel, stride=stride, padding=padding,
                                       count_include_pad=include))
        return self.emit(op, [(c, *out)])[0]

    def global_avg_pool(self, v: int) -> int:
        c = self.shape(v)[0]
        return self.emit(Op("global_avg_pool", (v,)), [(c, *([1] * self.ndim))])[0]

    def residual(self, v: int) -> int:
        """``v + conv(conv(v))`` (size keeping), sometimes with skip/branch coefficients."""
        c = self.shape(v)[0]
        h = self.conv(v, keep_size=True)
        if self.draw(st.booleans()):
            h = self.conv(h, c, keep_size=True)
        else:
            h = self.conv_matching(h, c, self.shape(v)[1:], stride=(1,) * self.ndim)
            if h < 0:
                return v
        if self.draw(st.booleans()):
            coefficients = tuple(float(w) for w in self.weights(2))
            return self.emit(Op("add", (v, h), dict(coefficients=coefficients)),
                             [self.shape(v)])[0]
        return self.emit(Op("add", (v, h), {}), [self.shape(v)])[0]

    def branches(self, v: int) -> int:
        """2 or 3 parallel convs of ``v`` with one output shape, added."""
        first = self.conv(v)
        cout, *out = self.shape(first)
        terms = [first]
        stride = self.spec.ops[-1].params["stride"]
        for _ in range(self.draw(st.integers(1, 2))):
            other = self.conv_matching(v, cout, tuple(out), stride)
            if other >= 0:
                terms.append(other)
        if len(terms) == 1:
            return first
        coefficients = None
        if self.draw(st.booleans()):
            coefficients = tuple(float(w) for w in self.weights(len(terms)))
        return self.emit(Op("add", tuple(terms), dict(coefficients=coefficients)),
                         [self.shape(first)])[0]

    def concat_split(self, v: int) -> int:
        """``cat(conv(v), conv(v) or v)``, then sometimes split and go on with a part
        (or re-join the parts)."""
        first = self.conv(v)
        _, *out = self.shape(first)
        stride = self.spec.ops[-1].params["stride"]
        if tuple(out) == self.shape(v)[1:] and self.draw(st.booleans()) and \
                (all(s == 1 for s in stride) or not self.collapsible):
            second = v
        else:
            second = self.conv_matching(v, self.draw(st.integers(1, 3)), tuple(out), stride)
            if second < 0:
                return first
        parts = [first, second]
        if self.draw(st.booleans()):
            parts = parts[::-1]
        total = sum(self.shape(p)[0] for p in parts)
        joined = self.emit(Op("concat", tuple(parts)), [(total, *out)])[0]
        if total < 2 or self.draw(st.booleans()):
            return joined
        cut = self.draw(st.integers(1, total - 1))
        sizes = [cut, total - cut]
        if total >= 3 and self.draw(st.booleans()):
            cut2 = self.draw(st.integers(cut + 1, total))
            if cut2 < total:
                sizes = [cut, cut2 - cut, total - cut2]
        pieces = self.emit(Op("split", (joined,), dict(sizes=tuple(sizes))),
                           [(s, *out) for s in sizes])
        self.split_parts.update(pieces)
        how = self.draw(st.sampled_from(["one", "rejoin"] if self.loose else
                                        ["rejoin", "add"]))
        if how == "one":
            return self.draw(st.sampled_from(pieces))
        if how == "add":  # all parts of one size: add them (a channel fold), else re-join
            if all(self.shape(q) == self.shape(pieces[0]) for q in pieces):
                return self.emit(Op("add", tuple(pieces), {}), [self.shape(pieces[0])])[0]
        order = self.draw(st.permutations(pieces))
        return self.emit(Op("concat", tuple(order)), [(total, *out)])[0]

    def block(self, v: int, kinds: list[str]) -> int:
        kind = self.draw(st.sampled_from(kinds))
        return getattr(self, kind)(v)


_KINDS = ["conv", "conv", "residual", "branches", "concat_split", "batch_norm", "avg_pool",
          "scale"]


@st.composite
def linear_networks(draw, ndim: int, *, max_depth: int = 4, modes=MODES,
                    transpose: bool = True, classifier: bool = False,
                    collapsible: bool | None = None, loose: bool = False,
                    sizes: tuple[int, int] | None = None) -> NetSpec:
    """A random linear network (see the module docstring) with float64 weights.

    ``collapsible`` (default: not ``classifier``) keeps to what one multi-rate operator
    can hold.  ``loose=False`` avoids two patterns on which the package's region is known
    to be conservative (not tight), so that tightness can be asserted at every position:
    keeping only some channels of a concatenation (``split``), and non-zero padding modes
    reading a value that has constant positions.  Both are tested on their own."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lo, hi = sizes or ((5, 12) if ndim == 1 else (5, 8))
    cin = draw(st.integers(1, 3 if ndim == 1 else 2))
    n = tuple(draw(st.integers(lo, hi)) for _ in range(ndim))
    if collapsible is None:
        collapsible = not classifier
    b = _Builder(draw, ndim, (cin, *n), rng, allow_modes=modes, collapsible=collapsible,
                 loose=loose)
    kinds = list(_KINDS)
    if transpose:
        kinds += ["conv_transpose", "upsample"]
    v = 0
    for _ in range(draw(st.integers(1, max_depth))):
        # mostly a chain, sometimes from an earlier value (a longer skip / side branch)
        if len(b.spec.shapes) > 1 and draw(st.integers(0, 5)) == 0:
            earlier = [u for u in range(len(b.spec.shapes)) if loose or u not in b.split_parts]
            v = draw(st.sampled_from(earlier))
        v = b.block(v, kinds)
    if classifier:
        if draw(st.booleans()):
            v = b.global_avg_pool(v)
        flat = b.emit(Op("flatten", (v,)), [(int(np.prod(b.shape(v))),)])[0]
        width = draw(st.integers(1, 5))
        v = b.emit(Op("linear", (flat,), dict(weight=b.weights(width, b.shape(flat)[0]),
                                              bias=b.weights(width) if draw(st.booleans())
                                              else None)), [(width,)])[0]
        if draw(st.booleans()):
            out = draw(st.integers(1, 3))
            v = b.emit(Op("linear", (v,), dict(weight=b.weights(out, width),
                                               bias=b.weights(out))), [(out,)])[0]
    elif draw(st.integers(0, 7)) == 0:
        v = b.global_avg_pool(v)
    b.spec.output = v
    return b.spec


@st.composite
def periodic_networks(draw, ndim: int, *, max_depth: int = 4) -> NetSpec:
    """All-circular size-keeping networks: circular convs with ``left + right = d(k-1)``
    (symmetric, asymmetric or ``'same'``), strides dividing the size, 1x1 convs,
    non-overlapping pools (kernel = stride dividing the size), batch norm, residual adds,
    concat/split.  At least one conv is circular with a kernel wider than 1."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    cin = draw(st.integers(1, 2))
    n = tuple(draw(st.sampled_from([4, 6, 8, 12] if ndim == 1 else [4, 6, 8]))
              for _ in range(ndim))
    b = _Builder(draw, ndim, (cin, *n), rng)

    def circ(v: int, cout: int | None = None, stride1: bool = False, wide: bool = False) -> int:
        c, *size = b.shape(v)
        cout = draw(st.integers(1, 3)) if cout is None else cout
        kernel, dilation, stride, pairs = [], [], [], []
        for axis, m in enumerate(size):
            k = draw(st.integers(2 if wide and axis == 0 else 1, 3))
            d = draw(st.sampled_from([1, 2]))
            total = d * (k - 1)
            left = draw(st.integers(0, total))
            if max(left, total - left) > m:  # PyTorch wraps around at most once
                k, d, total, left = (2, 1, 1, 0) if wide and axis == 0 else (1, 1, 0, 0)
            s = 1 if stride1 else draw(st.sampled_from([s for s in (1, 2, 3) if m % s == 0]))
            kernel.append(k)
            dilation.append(d)
            stride.append(s)
            pairs.append((left, total - left))
        if draw(st.booleans()) and all(s == 1 for s in stride) and not wide:
            padding = "same"
            pairs = list(pad_pairs("same", kernel, dilation, ndim))
            if any(max(p) > m for p, m in zip(pairs, size)):
                padding = "valid"
                kernel, dilation = [1] * ndim, [1] * ndim
                pairs = [(0, 0)] * ndim
        else:
            padding = tuple(pairs)
        is_wide = any(k > 1 for k in kernel)
        mode = "circular" if is_wide or draw(st.booleans()) else "zeros"
        common = gcd(c, cout)
        groups = draw(st.sampled_from([g for g in range(1, common + 1) if common % g == 0]))
        weight = b.weights(cout, c // groups, *kernel)
        bias = b.weights(cout) if draw(st.booleans()) else None
        out = tuple(m // s for m, s in zip(size, stride))
        op = Op("conv", (v,), dict(weight=weight, bias=bias, stride=tuple(stride),
                                   padding=padding, dilation=tuple(dilation), groups=groups,
                                   mode=mode, pairs=tuple(pairs)))
        return b.emit(op, [(cout, *out)])[0]

    v = circ(0)
    for _ in range(draw(st.integers(0, max_depth - 1))):
        kind = draw(st.sampled_from(["circ", "residual", "bn", "pool", "concat_split"]))
        c, *size = b.shape(v)
        if kind == "circ":
            v = circ(v)
        elif kind == "residual":
            h = circ(v, c, stride1=True)
            h = circ(h, c, stride1=True)
            v = b.emit(Op("add", (v, h), dict(coefficients=tuple(float(w) for w in
                                                                 b.weights(2)))),
                       [b.shape(v)])[0]
        elif kind == "bn":
            v = b.batch_norm(v)
        elif kind == "pool":
            k = tuple(draw(st.sampled_from([s for s in (1, 2, 3) if m % s == 0]))
                      for m in size)
            op = Op("avg_pool", (v,), dict(kernel=k, stride=None, padding=(0,) * ndim,
                                           count_include_pad=draw(st.booleans())))
            v = b.emit(op, [(c, *(m // s for m, s in zip(size, k)))])[0]
        else:
            a = circ(v, stride1=True)
            joined = b.emit(Op("concat", (a, v)), [(b.shape(a)[0] + c, *size)])[0]
            total = b.shape(joined)[0]
            cut = draw(st.integers(1, total - 1))
            pieces = b.emit(Op("split", (joined,), dict(sizes=(cut, total - cut))),
                            [(cut, *size), (total - cut, *size)])
            v = draw(st.sampled_from(pieces))
    # make sure some wide circular conv is on the path to the output
    v = circ(v, stride1=True, wide=True)
    b.spec.output = v
    return b.spec


# -- the two interpreters -----------------------------------------------------------------
def build_network(spec: NetSpec, Network):
    """The program as a :class:`Network` (``Network`` passed in, so this module does not
    import the package at all)."""
    net = Network(spec.ndim, spec.input_shape[0])
    values = [net.input]
    for op in spec.ops:
        p = op.params
        xs = [values[i] for i in op.inputs]
        if op.kind == "conv":
            out = [net.conv(xs[0], p["weight"], p["bias"], stride=p["stride"],
                            padding=p["padding"], dilation=p["dilation"], groups=p["groups"],
                            padding_mode=p["mode"])]
        elif op.kind == "conv_transpose":
            out = [net.conv_transpose(xs[0], p["weight"], p["bias"], stride=p["stride"],
                                      padding=p["padding"], output_padding=p["output_padding"],
                                      dilation=p["dilation"], groups=p["groups"])]
        elif op.kind == "upsample":
            out = [net.upsample(xs[0], p["factor"])]
        elif op.kind == "batch_norm":
            out = [net.batch_norm(xs[0], p["mean"], p["var"], p["gamma"], p["beta"],
                                  eps=p["eps"])]
        elif op.kind == "scale":
            out = [p["factor"] * xs[0]]
        elif op.kind == "avg_pool":
            out = [net.avg_pool(xs[0], p["kernel"], p["stride"], p["padding"],
                                count_include_pad=p["count_include_pad"])]
        elif op.kind == "global_avg_pool":
            out = [net.global_avg_pool(xs[0])]
        elif op.kind == "add":
            coefficients = p.get("coefficients")
            if coefficients is None and len(xs) == 2:
                out = [xs[0] + xs[1]]
            else:
                out = [net.add(*xs, coefficients=coefficients)]
        elif op.kind == "concat":
            out = [net.concat(*xs)]
        elif op.kind == "split":
            out = list(net.split(xs[0], p["sizes"]))
        elif op.kind == "flatten":
            out = [net.flatten(xs[0])]
        elif op.kind == "linear":
            out = [net.linear(xs[0], p["weight"], p["bias"])]
        else:  # pragma: no cover
            raise AssertionError(op.kind)
        values.extend(out)
    net.set_output(values[spec.output])
    return net


def _t(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def _torch_pad(pairs) -> list[int]:
    pad: list[int] = []
    for left, right in reversed(pairs):
        pad += [left, right]
    return pad


def torch_forward(spec: NetSpec, x: np.ndarray) -> np.ndarray:
    """The program evaluated layer by layer with PyTorch in float64 on a batch ``x`` of
    shape ``(B, *input_shape)``; returns a numpy array ``(B, *output_shape)``."""
    ndim = spec.ndim
    values = [torch.from_numpy(np.asarray(x, dtype=np.float64))]
    with torch.no_grad():
        for op in spec.ops:
            p = op.params
            xs = [values[i] for i in op.inputs]
            if op.kind == "conv":
                w = _t(p["weight"])
                pairs = p["pairs"]
                symmetric = all(l == r for l, r in pairs)
                if symmetric or p["padding"] in ("same", "valid"):
                    # nn.Conv with its own padding semantics (``same``: extra on the right)
                    padding = p["padding"] if isinstance(p["padding"], str) else \
                        tuple(l for l, _ in pairs)
                    m = CONV_MODULE[ndim](w.shape[1] * p["groups"], w.shape[0], w.shape[2:],
                                          stride=p["stride"], padding=padding,
                                          dilation=p["dilation"], groups=p["groups"],
                                          bias=p["bias"] is not None,
                                          padding_mode=p["mode"], dtype=torch.float64)
                    m.weight.copy_(w)
                    if p["bias"] is not None:
                        m.bias.copy_(_t(p["bias"]))
                    out = [m(xs[0])]
                else:
                    mode = "constant" if p["mode"] == "zeros" else p["mode"]
                    padded = F.pad(xs[0], _torch_pad(pairs), mode=mode)
                    out = [CONV[ndim](padded, w, _t(p["bias"]), stride=p["stride"],
                                      dilation=p["dilation"], groups=p["groups"])]
            elif op.kind == "conv_transpose":
                out = [CONV_T[ndim](xs[0], _t(p["weight"]), _t(p["bias"]), stride=p["stride"],
                                    padding=p["padding"], output_padding=p["output_padding"],
                                    groups=p["groups"], dilation=p["dilation"])]
            elif op.kind == "upsample":
                src = xs[0]
                u = p["factor"]
                shape = (*src.shape[:2], *((m - 1) * f + 1 for m, f in zip(src.shape[2:], u)))
                y = torch.zeros(shape, dtype=torch.float64)
                y[(slice(None), slice(None), *(slice(None, None, f) for f in u))] = src
                out = [y]
            elif op.kind == "batch_norm":
                out = [F.batch_norm(xs[0], _t(p["mean"]), _t(p["var"]), _t(p["gamma"]),
                                    _t(p["beta"]), training=False, eps=p["eps"])]
            elif op.kind == "scale":
                out = [xs[0] * p["factor"]]
            elif op.kind == "avg_pool":
                stride = p["stride"] if p["stride"] is not None else p["kernel"]
                out = [AVG[ndim](xs[0], p["kernel"], stride, p["padding"],
                                 count_include_pad=p["count_include_pad"])]
            elif op.kind == "global_avg_pool":
                out = [xs[0].mean(dim=tuple(range(2, 2 + ndim)), keepdim=True)]
            elif op.kind == "add":
                coefficients = p.get("coefficients") or (1.0,) * len(xs)
                acc = xs[0] * coefficients[0]
                for c, term in zip(coefficients[1:], xs[1:]):
                    acc = acc + c * term
                out = [acc]
            elif op.kind == "concat":
                out = [torch.cat(xs, dim=1)]
            elif op.kind == "split":
                out = list(torch.split(xs[0], list(p["sizes"]), dim=1))
            elif op.kind == "flatten":
                out = [xs[0].flatten(1)]
            elif op.kind == "linear":
                out = [F.linear(xs[0], _t(p["weight"]), _t(p["bias"]))]
            else:  # pragma: no cover
                raise AssertionError(op.kind)
            values.extend(out)
    result = values[spec.output].numpy()
    assert result.shape[1:] == tuple(spec.shapes[spec.output]), (result.shape, spec.shapes[spec.output])
    return result


def random_inputs(spec: NetSpec, batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *spec.input_shape))
