"""Planning a partial collapse: the analysed model, and per segment merge or keep.

:func:`analyse` traces and classifies the model and splits it into segments;
:func:`plan_segments` collapses every segment and decides — merged when the merged form is
exact for the traced input size and needs fewer multiply-adds per sample than the
segment's layers (``allow_inexact``/``merge_slower`` relax the two conditions) — and, if
asked, times both forms on the example batch (median of 3 runs after a warm-up, on the
segment's own input value from one run of the model).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import fx

from .classify import classify
from .convert_emit import segment_modules
from .convert_merge import MergedExit, merge_exits, node_macs, original_macs
from .convert_report import BoundaryReport, SegmentReport
from .linear_ops import Boundary, LinearOp
from .timing import interleaved_times
from .segments import NotMergeable, Partition, Segment, partition
from .trace import ConversionError, TracedModel, check_example_input, model_dtype, trace_model

__all__ = ["Analysis", "analyse", "display_nodes", "segment_report", "plan_segments",
           "partial_region", "notes"]


@dataclass
class Analysis:
    traced: TracedModel
    ops: dict[fx.Node, Any]
    part: Partition
    dtype: torch.dtype

    @property
    def nonlinear(self) -> list[fx.Node]:
        return [n for n, op in self.ops.items() if isinstance(op, Boundary) and not op.affine]

    @property
    def affine_only(self) -> list[fx.Node]:
        return [n for n, op in self.ops.items() if isinstance(op, Boundary) and op.affine]

    def boundaries(self) -> list[BoundaryReport]:
        kept = self.part.kept
        return [BoundaryReport(n.name, self.traced.op_name(n), kept[n],
                               isinstance(self.ops.get(n), Boundary) and self.ops[n].affine)
                for n in self.traced.nodes if n in kept]

    def describe(self, node: fx.Node) -> str:
        return self.traced.describe(node)

    def total_macs(self) -> int:
        return sum(node_macs(n, op, self.traced) for n, op in self.ops.items()
                   if isinstance(op, LinearOp))

    def single_output(self) -> fx.Node:
        outputs = self.traced.output_node.all_input_nodes
        if len(outputs) != 1 or self.traced.shape(outputs[0]) is None:
            raise ConversionError("this mode needs a model with one tensor output "
                                  f"(got {len(outputs)} outputs); use mode='partial'")
        return outputs[0]


def analyse(model: Any, example_input: Any) -> Analysis:
    x = check_example_input(example_input)
    traced = trace_model(model, x)
    dtype = model_dtype(model, x.dtype)
    ops = classify(traced)
    return Analysis(traced, ops, partition(traced, ops), dtype)


def display_nodes(a: Analysis, nodes: Sequence[fx.Node]) -> list[str]:
    """``"name: op"`` per linear node; an item of a multi-output op (batch norm's output,
    a split part) shows that op."""
    shown = []
    for n in nodes:
        op = a.ops[n]
        if not isinstance(op, LinearOp) or op.kind == "tuple":
            continue
        source = op.operands[0] if op.operands else n
        is_item = isinstance(a.ops.get(source), LinearOp) and a.ops[source].kind == "tuple"
        shown.append(f"{n.name}: {a.traced.op_name(source if is_item else n)}")
    return shown


def segment_report(a: Analysis, segment: Segment) -> SegmentReport:
    return SegmentReport(segment.name, segment.source.name, display_nodes(a, segment.nodes),
                         [e.name for e in segment.exits], "", False, "", False, "",
                         original_macs(segment, a.traced, a.ops), None)


# ------------------------------------------------------------------------ timing


def _source_values(traced: TracedModel, nodes: set[fx.Node]) -> dict[fx.Node, Any]:
    """The values of ``nodes`` when the traced graph runs on the example input."""
    found: dict[fx.Node, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            value = super().run_node(n)
            if n in nodes:
                found[n] = value
            return value
    with torch.inference_mode():
        Recorder(traced.graph_module).run(traced.example_input)
    return found


def _measure(a: Analysis, segment: Segment, merged: Sequence[MergedExit] | None,
             value: Any, report: SegmentReport) -> None:
    """Median seconds of the segment's layers and of its merged form on the example."""
    if not isinstance(value, torch.Tensor):
        return
    try:
        original, fused = segment_modules(a.traced, segment, merged, a.dtype)
        candidates = {name: (lambda m=module: m(value)) for name, module
                      in (("before", original), ("after", fused)) if module is not None}
        if candidates:
            median = interleaved_times(candidates, repeats=3, min_seconds=0.0).median
            report.seconds_before, report.seconds_after = median.get("before"), median.get("after")
    except (RuntimeError, TypeError, ValueError):
        report.seconds_before = report.seconds_after = None


# ------------------------------------------------------------------------- partial


def plan_segments(a: Analysis, *, allow_inexact: bool, merge_slower: bool, progress: bool,
          measure: bool) -> tuple[dict[str, list[MergedExit]], list[SegmentReport]]:
    """Per segment: merge or keep (exact and cheaper, or as allowed); the reports."""
    segments = a.part.segments
    values = _source_values(a.traced, {s.source for s in segments}) if measure else {}
    iterator: Any = segments
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(segments, desc="collapsing segments", unit="segment")
    plans: dict[str, list[MergedExit]] = {}
    reports = []
    for segment in iterator:
        report = segment_report(a, segment)
        merged: list[MergedExit] | None = None
        try:
            merged = merge_exits(segment, a.traced, a.ops,
                                 macs_before=None if merge_slower else report.macs_before)
        except NotMergeable as exc:
            report.reason = str(exc)
        except MemoryError as exc:
            report.reason = f"over the memory budget: {exc}"
        if merged is not None:
            report.merged_into = "; ".join(m.describe() for m in merged)
            report.exact = all(m.exact for m in merged)
            report.region = "; ".join(dict.fromkeys(m.where for m in merged))
            report.macs_after = sum(m.macs for m in merged)
            before, after = report.macs_before, report.macs_after
            if not report.exact and not allow_inexact:
                report.reason = (f"not exact ({report.region}); allow_inexact=True merges it "
                                 "anyway")
            elif after >= before and not merge_slower:
                report.reason = (f"the merged form needs {after:,} multiply-adds per sample, "
                                 f"the layers {before:,}; merge_slower=True merges it anyway")
            else:
                report.merged = True
                report.reason = (f"{before:,} -> {after:,} multiply-adds per sample"
                                 + (" (slower: merge_slower=True)" if after >= before else "")
                                 + ("" if report.exact else " (INEXACT: allow_inexact=True)"))
                plans[segment.name] = merged
        if measure:
            _measure(a, segment, merged if report.merged else None,
                     values.get(segment.source), report)
        reports.append(report)
    return plans, reports


def partial_region(a: Analysis, plans: dict[str, list[MergedExit]]
                    ) -> tuple[np.ndarray | None, str | None]:
    """The exact region of the model output when inexact merges were allowed: known when
    the one inexact exit is the model output itself."""
    inexact = [m for ms in plans.values() for m in ms if not m.exact]
    if not inexact:
        return None, None
    outputs = a.traced.output_node.all_input_nodes
    if len(inexact) == 1 and len(outputs) == 1 and inexact[0].exit is outputs[0]:
        return inexact[0].region, inexact[0].where
    return None, ("unknown: inexact merged segments feed other ops; compare every output "
                  "(the converted model may differ near the border)")


def notes(a: Analysis) -> list[str]:
    notes = [f"front end failed: {n}" for n in a.traced.notes]
    if a.part.multi_source:
        notes.append(f"{len(a.part.multi_source)} add/cat op(s) read values from different "
                     "kept ops and are kept, splitting their inputs into single-input segments")
    notes.append(f"built for inputs (batch, {', '.join(map(str, a.traced.input_shape))})"
                 + (", any batch" if a.traced.dynamic_batch else
                    f", batch {a.traced.example_input.shape[0]} only"))
    return notes
