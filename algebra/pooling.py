"""Average-pooling windows as PyTorch computes them: the one rule the exact side, the float
side and the bridge share.

Per spatial axis of size ``n`` (checked by brute force against torch in
``tests/test_pooling.py``):

* ``F.avg_pool{n}d(x, k, s, p, ceil_mode, count_include_pad, divisor_override)``: output size
  ``o = floor((n + 2p - k) / s) + 1``; with ``ceil_mode`` ``o = ceil((n + 2p - k) / s) + 1``,
  minus one when the last window would start in the right padding (``s (o - 1) - p >= n``).
  Window ``i`` starts at ``a = s i - p`` and ends at ``b = min(a + k, n + p)``; it reads
  ``x[max(a, 0) : min(b, n)]``.  The divisor is ``divisor_override`` when given, otherwise the
  product over the axes of ``b - a`` (``count_include_pad``: the padded zeros count, the
  ceil-mode overflow past ``n + p`` does not) or of ``min(b, n) - max(a, 0)`` (padding
  excluded).
* ``F.adaptive_avg_pool{n}d(x, o)``: window ``i`` is ``[floor(i n / o), ceil((i + 1) n / o))``,
  divided by its size.

**The operator form.** A pool is the depthwise operator ``(1 / D) Σ_{a < k} z^(p - a)`` with
stride ``s`` (:class:`StridedPool`): it reads the box ``[s i - p, s i - p + k)`` of the
zero-extended input and divides by the constant ``D``.  It equals the layer at the output
positions where the layer reads that box (clipped to the input) and divides by ``D``
(:meth:`StridedPool.regular`); at the other positions — ceil-mode overflow windows and
border windows that exclude padding (their divisor differs), adaptive windows of another
size or offset — the collapse is exact only where the whole input there is one bare
constant (:func:`pool_extent`).  ``divisor_override`` only changes ``D``.  An adaptive pool
takes the strided pool that agrees with the most of its windows (:func:`fit_strided`); when
``o`` divides ``n`` that is ``k = s = n / o``, exact everywhere.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import InvalidInputError
from .regions import Extent, TapPattern, propagate

__all__ = ["AxisWindows", "PoolWindows", "StridedPool", "pool_output_size", "avg_pool_axis",
           "adaptive_axis", "fit_strided", "pool_extent"]


def pool_output_size(n: int, k: int, s: int, p: int, ceil_mode: bool = False) -> int:
    """PyTorch's output size of an average (or max) pool along one axis (module docstring);
    at most 0 when the kernel does not fit."""
    span = n + 2 * p - k  # negative: the kernel overhangs the padded input
    out = ((span + s - 1) // s if ceil_mode else span // s) + 1  # floor division, as torch
    if ceil_mode and s * (out - 1) - p >= n:
        out -= 1
    return max(out, 0)


@dataclass(frozen=True)
class AxisWindows:
    """One axis of a pool: output ``i`` reads input ``[start[i], stop[i])`` (inside
    ``[0, size)``) and contributes the factor ``count[i]`` to the divisor."""
    size: int
    start: tuple[int, ...]
    stop: tuple[int, ...]
    count: tuple[int, ...]

    @property
    def out_size(self) -> int:
        return len(self.start)


def avg_pool_axis(n: int, k: int, s: int, p: int, ceil_mode: bool = False,
                  count_include_pad: bool = True) -> AxisWindows:
    """The windows of ``F.avg_pool`` along one axis (module docstring)."""
    out = pool_output_size(n, k, s, p, ceil_mode)
    if out <= 0:
        raise InvalidInputError(f"average pooling kernel {k} (padding {p}) does not fit an "
                                f"input of size {n}")
    start, stop, count = [], [], []
    for i in range(out):
        a = s * i - p
        b = min(a + k, n + p)
        lo, hi = max(a, 0), min(b, n)
        start.append(lo)
        stop.append(hi)
        count.append(b - a if count_include_pad else hi - lo)
    return AxisWindows(n, tuple(start), tuple(stop), tuple(count))


def adaptive_axis(n: int, o: int) -> AxisWindows:
    """The windows of ``F.adaptive_avg_pool`` from ``n`` to ``o`` along one axis:
    ``[floor(i n / o), ceil((i + 1) n / o))``."""
    if o < 1 or n < 1:
        raise InvalidInputError(f"adaptive average pooling from {n} to {o} positions: both "
                                "must be positive")
    start = tuple(i * n // o for i in range(o))
    stop = tuple(-(-((i + 1) * n) // o) for i in range(o))
    return AxisWindows(n, start, stop, tuple(b - a for a, b in zip(start, stop)))


@dataclass(frozen=True)
class PoolWindows:
    """A separable pool: the windows of every axis and the divisor rule.  Output ``i``
    is ``(1 / D(i)) Σ_{j in box(i)} x[j]`` with ``D(i) = divisor_override`` or
    ``Π_a count_a[i_a]``."""
    axes: tuple[AxisWindows, ...]
    divisor_override: int | None = None

    @property
    def out_size(self) -> tuple[int, ...]:
        return tuple(ax.out_size for ax in self.axes)

    def box(self, index: Sequence[int]) -> tuple[range, ...]:
        """The input positions output ``index`` reads, per axis."""
        return tuple(range(ax.start[i], ax.stop[i]) for ax, i in zip(self.axes, index))

    def divisor(self, index: Sequence[int]) -> int:
        if self.divisor_override is not None:
            return self.divisor_override
        return math.prod(ax.count[i] for ax, i in zip(self.axes, index))

    def reads(self, index: Sequence[int]) -> int:
        """How many input positions output ``index`` reads."""
        return math.prod(ax.stop[i] - ax.start[i] for ax, i in zip(self.axes, index))


@dataclass(frozen=True)
class StridedPool:
    """The operator form ``(1 / divisor) Σ_{a < kernel} z^(padding - a)``, stride ``stride``
    (per axis; ``padding`` is the left offset and may be negative for a fitted adaptive
    pool)."""
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    divisor: int

    def taps(self) -> dict[tuple[int, ...], int]:
        """Exponent ``p - a`` of every tap (all with weight ``1 / divisor``)."""
        return {tuple(p - a for p, a in zip(self.padding, index)): 1
                for index in np.ndindex(*self.kernel)}

    def axis_regular(self, windows: PoolWindows) -> list[np.ndarray]:
        """Per axis: where the layer reads exactly the operator's box clipped to the input
        and (without an override) counts all ``k`` taps."""
        out = []
        for ax, k, s, p in zip(windows.axes, self.kernel, self.stride, self.padding):
            i = np.arange(ax.out_size)
            a = s * i - p
            ok = (np.array(ax.start) == np.maximum(a, 0)) & \
                (np.array(ax.stop) == np.minimum(a + k, ax.size))
            if windows.divisor_override is None:
                ok &= np.array(ax.count) == k
            out.append(ok)
        return out

    def regular(self, windows: PoolWindows) -> np.ndarray:
        """Output positions where the layer equals this operator on every input whose
        zero-extension it reads (the windows agree and so do the divisors)."""
        if windows.divisor_override is not None and windows.divisor_override != self.divisor:
            return np.zeros(windows.out_size, bool)
        if windows.divisor_override is None and self.divisor != math.prod(self.kernel):
            return np.zeros(windows.out_size, bool)
        return _outer_and(self.axis_regular(windows))


def fit_strided(axis: AxisWindows) -> tuple[int, int, int, int]:
    """``(k, s, p, matches)``: the strided window ``[s i - p, s i - p + k)`` that equals the
    most of ``axis``'s windows (ties: the smallest stride, kernel, then offset).  For
    ``o | n`` it is ``k = s = n / o``, every window."""
    o, n = axis.out_size, axis.size
    if o == 1:
        return n, n, -axis.start[0], 1
    strides = {b - a for a, b in zip(axis.start, axis.start[1:]) if b > a} | {max(n // o, 1)}
    candidates = []
    for s in strides:
        tally = Counter((axis.stop[i] - axis.start[i], s * i - axis.start[i]) for i in range(o))
        candidates += [((-count, s, k, abs(p), p), (k, s, p, count))
                       for (k, p), count in tally.items()]
    return min(candidates)[1]


def pool_extent(extent: Extent, windows: PoolWindows, form: StridedPool, pattern: TapPattern,
                window: tuple[int, ...], biased: np.ndarray) -> Extent:
    """The :class:`Extent` of a pool layer whose collapsed operator is ``form``.

    Regular positions (:meth:`StridedPool.regular`) follow the zero-padding rule of
    :func:`algebra.regions.propagate`.  Elsewhere the layer reads ``box(i)`` and divides by
    ``D(i)``, the operator reads its own box ``O(i)`` and divides by ``D``; both agree for
    generic weights only when the collapsed value is one bare constant ``b_c`` on
    ``box(i) ∪ O(i)`` (no support, exact where inside the input) and either ``b_c = 0`` or
    ``|box(i)| / D(i) = |O(i)| / D`` (a constant averages to itself on both sides)."""
    out = propagate(extent, pattern, form.stride, (1,) * len(window), window, "zeros", biased,
                    extent.channels)
    irregular = np.argwhere(~form.regular(windows))
    if len(irregular) == 0:
        return out
    axes = windows.axes
    k_total = math.prod(form.kernel)
    ok = np.ones((extent.channels, len(irregular)), bool)
    for boxes in (_layer_boxes(axes, irregular), _form_boxes(form, irregular)):
        ok &= _constant_on(extent, boxes)
    ratio = np.array([windows.reads(i) * form.divisor == windows.divisor(i) * k_total
                      for i in irregular])
    ok &= ~extent.biased[:, None] | ratio[None]
    exact = out.exact.copy()
    exact[(slice(None), *irregular.T)] = ok
    return Extent(out.window, exact, out.support_offset, out.support, out.biased)


def _outer_and(axes: Sequence[np.ndarray]) -> np.ndarray:
    """``out[i_1, ..., i_n] = Π_a axes[a][i_a]`` (logical and)."""
    out = np.ones(tuple(len(a) for a in axes), bool)
    for d, a in enumerate(axes):
        out &= a.reshape((-1,) + (1,) * (len(axes) - d - 1))
    return out


def _layer_boxes(axes: Sequence[AxisWindows], positions: np.ndarray
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.array(ax.start)[positions[:, a]], np.array(ax.stop)[positions[:, a]])
            for a, ax in enumerate(axes)]


def _form_boxes(form: StridedPool, positions: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    boxes = []
    for a, (k, s, p) in enumerate(zip(form.kernel, form.stride, form.padding)):
        lo = s * positions[:, a] - p
        boxes.append((lo, lo + k))
    return boxes


def _constant_on(extent: Extent, boxes: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``(C, m)``: on the ``m`` boxes ``Π_a [lo_a, hi_a)`` the collapsed value has no
    support, and the node is exact wherever the box is inside its window."""
    ok = np.ones((extent.channels, len(boxes[0][0])), bool)
    reach = [int((hi - lo).max()) for lo, hi in boxes]
    for offset in np.ndindex(*reach):
        j = tuple(lo + t for (lo, _), t in zip(boxes, offset))
        valid = np.logical_and.reduce([lo + t < hi for (lo, hi), t in zip(boxes, offset)])
        fine = ~extent.nonzero_at(j) & (~extent.inside(j)[None] | extent.exact_at(j))
        ok &= fine | ~valid[None]
    return ok
