"""Exact regions: where a collapsed operator equals the layer-by-layer network.

In zero-extended semantics the input is the finite signal ``X`` (zero outside its window)
and ``c = A X + b`` is the collapsed value of a node on all of ``Z^n``.  An
:class:`Extent` records, per channel, where the node's layer-by-layer value ``v`` equals
``c`` inside its window (``exact``), where the linear part ``A X`` can be nonzero
(``support``, for generic inputs), and which channels carry a constant ``b_c != 0``.

A layer ``down_s K up_u`` reads input channel ``c`` at ``j = (s i - e) / u`` for each tap
``e`` of ``K_{o,c}``.  The read agrees with ``c`` when

* ``j`` is inside the window and ``v`` is exact there;
* zero padding: ``j`` is outside, ``c_c(j) = 0`` (no bias, outside the support);
* circular/reflect/replicate padding: the copied position ``m(j)`` is exact and both
  ``c(j)`` and ``c(m(j))`` are the bare constant ``b_c`` (outside the support);
* an average pool whose window or divisor at ``i`` differs from its operator's (padding
  excluded, ceil-mode overflow, adaptive windows): equal only when every tap is the bare
  constant ``b_c`` (:func:`algebra.pooling.pool_extent`).

For generic weights these conditions are also necessary, so the region is tight.

A multirate (polyphase) collapsed value carries a bias that is periodic over the output
positions (a bias before zero-insertion up-sampling): ``bias_classes[c, i mod Q]`` labels
it (0: no bias; equal labels: equal values).  Then "no bias" and "the same constant" are
read per position: a zero-padded read needs ``b_c(j) = 0``, a copied read
``b_c(j) = b_c(m(j))``; a pool's irregular window (:func:`periodic_bias_pool`) is taken as
inexact on such a channel (conservative: not tight there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Extent", "TapPattern", "propagate", "merge_add", "merge_concat", "mode_index",
           "periodic_bias_pool"]

TapPattern = dict[tuple[int, ...], np.ndarray]  # tap exponent -> bool (C_out, C_in) "K_oc has it"


def mode_index(mode: str, j: np.ndarray, n: int) -> np.ndarray:
    """Where padding ``mode`` reads position ``j`` of an ``n``-long axis (PyTorch's rules)."""
    if mode == "circular":
        return np.mod(j, n)
    if mode == "replicate":
        return np.clip(j, 0, n - 1)
    if mode == "reflect":
        period = max(2 * (n - 1), 1)
        r = np.mod(np.abs(j), period)
        return np.where(r < n, r, period - r)
    raise ValueError(f"no index map for padding mode {mode!r}")


@dataclass
class Extent:
    """Per-channel knowledge of a node's value (see the module docstring)."""
    window: tuple[int, ...]
    exact: np.ndarray            # (C, *window)
    support_offset: tuple[int, ...]
    support: np.ndarray          # (C, *box), box starting at support_offset
    biased: np.ndarray           # (C,)
    #: ``(C, *Q)`` bias labels per output phase (module docstring); ``None``: the bias of
    #: each channel is one constant
    bias_classes: np.ndarray | None = None

    @classmethod
    def of_input(cls, channels: int, window: tuple[int, ...]) -> "Extent":
        """The input: exact everywhere (zero-extended), supported on its window."""
        full = np.ones((channels, *window), bool)
        return cls(window, full, (0,) * len(window), full.copy(), np.zeros(channels, bool))

    @property
    def channels(self) -> int:
        return self.exact.shape[0]

    def region(self) -> np.ndarray:
        """Positions exact in every channel."""
        return self.exact.all(axis=0)

    def inside(self, index: Sequence[np.ndarray]) -> np.ndarray:
        ok = np.ones(np.broadcast(*index).shape, bool)
        for j, n in zip(index, self.window):
            ok &= (j >= 0) & (j < n)
        return ok

    def exact_at(self, index: Sequence[np.ndarray]) -> np.ndarray:
        """``(C, *grid)``: inside the window and exact there."""
        clipped = tuple(np.clip(j, 0, n - 1) for j, n in zip(index, self.window))
        return self.inside(index)[None] & self.exact[(slice(None), *clipped)]

    def nonzero_at(self, index: Sequence[np.ndarray]) -> np.ndarray:
        """``(C, *grid)``: the collapsed linear part may be nonzero there."""
        ok = np.ones(np.broadcast(*index).shape, bool)
        local = []
        for j, o, n in zip(index, self.support_offset, self.support.shape[1:]):
            k = j - o
            ok &= (k >= 0) & (k < n)
            local.append(np.clip(k, 0, n - 1))
        return ok[None] & self.support[(slice(None), *local)]

    def _classes_at(self, index: Sequence[np.ndarray]) -> np.ndarray:
        """``(C, *grid)``: the bias label at positions ``index`` (``bias_classes`` set)."""
        period = self.bias_classes.shape[1:]
        return self.bias_classes[(slice(None), *(np.mod(j, q) for j, q in zip(index, period)))]

    def unbiased_at(self, index: Sequence[np.ndarray]) -> np.ndarray:
        """``(C, *grid)`` (or broadcastable): the collapsed value has no bias there."""
        if self.bias_classes is None:
            return ~self.biased.reshape(-1, *(1,) * len(index))
        return self._classes_at(index) == 0

    def same_bias_at(self, index: Sequence[np.ndarray], other: Sequence[np.ndarray]
                     ) -> np.ndarray | bool:
        """Whether the collapsed bias is the same at ``index`` and ``other``."""
        if self.bias_classes is None:
            return True
        return self._classes_at(index) == self._classes_at(other)

    def with_support_box(self, low: Sequence[int], high: Sequence[int]) -> np.ndarray:
        """The support re-embedded in the box ``[low, high)`` (which must contain it)."""
        out = np.zeros((self.channels, *(h - l for l, h in zip(low, high))), bool)
        sl = tuple(slice(o - l, o - l + n) for o, l, n in
                   zip(self.support_offset, low, self.support.shape[1:]))
        out[(slice(None), *sl)] = self.support
        return out


def _spread(pattern: np.ndarray, per_input: np.ndarray) -> np.ndarray:
    """``out[o] = OR_c pattern[o, c] & per_input[c]`` for ``per_input`` of shape (C_in, *grid)."""
    c_in = per_input.shape[0]
    grid = per_input.shape[1:]
    if pattern.all():
        return np.broadcast_to(per_input.any(axis=0), (pattern.shape[0], *grid)).copy()
    if pattern.shape[0] == pattern.shape[1] and not (pattern & ~np.eye(c_in, dtype=bool)).any():
        return per_input & pattern.diagonal().reshape(-1, *(1,) * len(grid))
    counts = pattern.astype(np.float32) @ per_input.reshape(c_in, -1).astype(np.float32)
    return (counts > 0).reshape(pattern.shape[0], *grid)


def _reads(stride: tuple[int, ...], upsample: tuple[int, ...], grid: Sequence[np.ndarray],
           e: tuple[int, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """For output positions ``grid``: which read tap ``e`` (``u | s i - e``) and where."""
    numer = [s * i - ei for s, i, ei in zip(stride, grid, e)]
    divisible = np.ones(np.broadcast(*numer).shape, bool)
    for num, u in zip(numer, upsample):
        divisible &= (num % u == 0)
    return divisible, tuple(num // u for num, u in zip(numer, upsample))


def propagate(extent: Extent, pattern: TapPattern, stride: tuple[int, ...],
              upsample: tuple[int, ...], window: tuple[int, ...], padding: str,
              biased: np.ndarray, out_channels: int,
              bias_classes: np.ndarray | None = None) -> Extent:
    """Extent of ``down_s K up_u`` applied to a node.  ``padding`` is ``"zeros"``,
    ``"circular"``, ``"reflect"`` or ``"replicate"`` (pools: :func:`algebra.pooling.pool_extent`)."""
    grid = np.indices(window, sparse=True)
    bad = np.zeros((out_channels, *window), bool)
    for e, taps in pattern.items():
        reads, j = _reads(stride, upsample, grid, e)
        inside = extent.inside(j)[None]
        exact = extent.exact_at(j)
        if padding == "zeros":
            ok = np.where(inside, exact, extent.unbiased_at(j) & ~extent.nonzero_at(j))
        else:
            m = tuple(mode_index(padding, ja, n) for ja, n in zip(j, extent.window))
            copied = extent.exact_at(m) & ~extent.nonzero_at(j) & ~extent.nonzero_at(m) & \
                extent.same_bias_at(j, m)
            ok = np.where(inside, exact, copied)
        bad |= _spread(taps, reads[None] & ~ok)
    low, shape = _support_box(extent, pattern, stride, upsample)
    support = np.zeros((out_channels, *shape), bool)
    if pattern and extent.support.any():
        box = np.indices(shape, sparse=True)
        box = [g + l for g, l in zip(box, low)]
        for e, taps in pattern.items():
            reads, j = _reads(stride, upsample, box, e)
            support |= _spread(taps, reads[None] & extent.nonzero_at(j))
    return Extent(window, ~bad, low, support, biased, bias_classes)


def _support_box(extent: Extent, pattern: TapPattern, stride: tuple[int, ...],
                 upsample: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Output positions ``i`` with ``s i - e = u j`` for some tap ``e`` and ``j`` in the
    input's support box."""
    lows, shape = [], []
    for axis in range(len(stride)):
        lo = extent.support_offset[axis]
        hi = lo + extent.support.shape[1 + axis] - 1
        emin = min((e[axis] for e in pattern), default=0)
        emax = max((e[axis] for e in pattern), default=0)
        u, s = upsample[axis], stride[axis]
        low = -((-(u * lo + emin)) // s)
        high = (u * hi + emax) // s
        lows.append(low)
        shape.append(max(high - low + 1, 1))
    return tuple(lows), tuple(shape)


def _common_box(extents: Sequence[Extent]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    ndim = len(extents[0].window)
    low = tuple(min(e.support_offset[a] for e in extents) for a in range(ndim))
    high = tuple(max(e.support_offset[a] + e.support.shape[1 + a] for e in extents)
                 for a in range(ndim))
    return low, high


def merge_add(extents: Sequence[Extent], biased: np.ndarray,
              bias_classes: np.ndarray | None = None) -> Extent:
    """A sum: exact where every term is; supports united per channel."""
    low, high = _common_box(extents)
    exact = np.logical_and.reduce([e.exact for e in extents])
    support = np.logical_or.reduce([e.with_support_box(low, high) for e in extents])
    return Extent(extents[0].window, exact, low, support, biased, bias_classes)


def merge_concat(extents: Sequence[Extent], biased: np.ndarray,
                 bias_classes: np.ndarray | None = None) -> Extent:
    """Channel concatenation: per-channel knowledge stacked."""
    low, high = _common_box(extents)
    exact = np.concatenate([e.exact for e in extents])
    support = np.concatenate([e.with_support_box(low, high) for e in extents])
    return Extent(extents[0].window, exact, low, support, biased, bias_classes)


def periodic_bias_pool(out: Extent, parent: Extent, regular: np.ndarray,
                       bias_classes: np.ndarray | None) -> Extent:
    """A pool's extent (:func:`algebra.pooling.pool_extent`) when its input's bias may be
    periodic: the regular positions follow :func:`propagate`'s per-position rule already;
    an irregular window (``~regular``) of a channel whose bias varies over the phases
    averages different constants on the two sides, so it is taken as inexact
    (conservative).  The result carries ``bias_classes`` (the node's own labels)."""
    exact = out.exact
    if parent.bias_classes is not None:
        flat = parent.bias_classes.reshape(parent.channels, -1)
        varying = ~(flat == flat[:, :1]).all(axis=1)
        exact = exact & ~(varying.reshape(-1, *(1,) * regular.ndim) & ~regular[None])
    return Extent(out.window, exact, out.support_offset, out.support, out.biased, bias_classes)
