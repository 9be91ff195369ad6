"""What the converter did, per segment and per kept op: :class:`ConversionReport`.

``as_dict()`` is JSON-ready (plain ints, floats, strings, lists); ``table()`` is a text table
with one line per segment (its ops, what it merged into, exact or where, merged or why not,
multiply-adds per sample before/after and measured seconds before/after on the example
batch) followed by the kept ops (node, op, reason).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SegmentReport", "BoundaryReport", "ConversionReport"]


@dataclass
class SegmentReport:
    """One linear segment.  ``nodes``: ``"name: op"`` of its layers in graph order;
    ``merged_into``: the emitted form per exit (``"Conv2d 64->64 3x3"``), '' when there is
    none; ``exact``/``region``: whether the merged form equals the layers everywhere, in
    words; ``merged``/``reason``: the decision; ``macs_*``: multiply-adds per sample;
    ``seconds_*``: median measured time on the example batch (None: not measured);
    ``border``: for a border-corrected kernel the interior/border split — output positions
    (``interior_positions``, ``border_positions``, per output channel), multiply-adds per
    sample (``interior_macs`` of the kernel, ``border_macs`` of the layers on the strips),
    ``strips`` and ``interior_box`` (``[lo, hi)`` per output axis)."""
    name: str
    source: str
    nodes: list[str]
    exits: list[str]
    merged_into: str
    exact: bool
    region: str
    merged: bool
    reason: str
    macs_before: int
    macs_after: int | None
    seconds_before: float | None = None
    seconds_after: float | None = None
    border: dict[str, Any] | None = None


@dataclass
class BoundaryReport:
    """An op kept as it is: node name, ATen op, why (``affine``: it is affine, so it does
    not stop ``mode='affine'``)."""
    name: str
    op: str
    reason: str
    affine: bool = False


@dataclass
class ConversionReport:
    """The whole conversion: the mode used (``requested`` is what was asked, ``reason``
    why this mode), the front end that traced the model, the segments, the kept ops and
    notes (front-end fallbacks, fixed sizes, ...)."""
    mode: str
    requested: str
    front_end: str
    reason: str
    segments: list[SegmentReport] = field(default_factory=list)
    boundaries: list[BoundaryReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    macs_before: int | None = None
    macs_after: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        lines = [f"mode: {self.mode}" + (f" (asked: {self.requested})" if self.requested != self.mode
                                         else ""),
                 f"why: {self.reason}", f"traced by: {self.front_end}"]
        if self.macs_before is not None:
            after = "?" if self.macs_after is None else f"{self.macs_after:,}"
            lines.append(f"multiply-adds per sample: {self.macs_before:,} -> {after}")
        if self.segments:
            head = (f"{'segment':<12} {'merged':<6} {'exact':<5} {'MACs before':>13} "
                    f"{'MACs after':>13} {'t before':>10} {'t after':>10}  into / why")
            lines += ["", head, "-" * len(head)]
            for s in self.segments:
                after = "-" if s.macs_after is None else f"{s.macs_after:,}"
                into = s.merged_into if s.merged else f"kept: {s.reason}"
                lines.append(f"{s.name:<12} {'yes' if s.merged else 'no':<6} "
                             f"{'yes' if s.exact else 'no':<5} {s.macs_before:>13,} {after:>13} "
                             f"{_seconds(s.seconds_before):>10} {_seconds(s.seconds_after):>10}  "
                             f"{into}")
                ops = ", ".join(s.nodes)
                lines.append(f"{'':<12} reads {s.source}; ops: {ops[:160]}"
                             + ("..." if len(ops) > 160 else ""))
                if s.merged:
                    lines.append(f"{'':<12} {s.region}; {s.reason}")
                if s.merged and s.border:
                    b = s.border
                    lines.append(f"{'':<12} border-corrected: interior {b['interior_positions']:,}"
                                 f" positions {b['interior_macs']:,} MACs (kernel), border "
                                 f"{b['border_positions']:,} positions {b['border_macs']:,} MACs "
                                 f"({b['strips']} strips of the original layers)")
        if self.boundaries:
            lines += ["", "kept ops (boundaries):"]
            width = max(len(b.name) for b in self.boundaries)
            lines += [f"  {b.name:<{width}}  {b.op:<36} {b.reason}" for b in self.boundaries]
        if self.notes:
            lines += ["", "notes:"] + [f"  {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.3f}ms" if value < 1 else f"{value:.2f}s"
