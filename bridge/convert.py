"""Convert a torch model into a faster equivalent one: collapse its linear parts, keep the rest.

``convert(model, example_input, mode=...)`` traces the model to ATen (:mod:`bridge.trace`),
finds its linear layers (:mod:`bridge.linear_ops`) and their maximal single-input segments
(:mod:`bridge.segments`), collapses them with the package's convolution algebra
(:mod:`bridge.convert_merge`) and writes a plain ``torch.fx.GraphModule``
(:mod:`bridge.convert_emit`).  Modes:

* ``"affine"`` — the whole model (linear layers and other affine ops only) as ONE affine
  map ``y = W x + B`` for the traced input size (``nn.Linear`` on the flattened input),
  by :func:`numeric.extract_affine` in float64: exact for every padding mode;
* ``"kernel"`` — the whole linear model as ONE convolution; exact everywhere for valid and
  circular padding, and for zero padding where the algebra proves the border harmless (or
  harmless up to a per-position bias map); otherwise (zero, reflect, replicate padding)
  **border-corrected**: the kernel on the interior box of the exact region and the
  original layers on thin input strips for the border band (:mod:`bridge.border_module`),
  exact at every position at a cost that grows like the image; refused with the exact
  region only when the layers have no strips (global pools, mixed circular padding).
  ``allow_inexact=True`` returns the bare kernel instead (it agrees with the model on its
  region, :attr:`Conversion.region`).  A multirate model (a stride then a transposed conv
  or nearest up-sampling) has no single strided kernel: its "convolution" is a
  ``PolyphaseConv`` (pixel-unshuffle, one stride-1 conv of ``M`` phases, pixel-shuffle;
  :mod:`bridge.convert_merge`), not border-corrected (refused with its region unless
  ``allow_inexact``);
* ``"partial"`` — every maximal linear segment between kept ops (ReLU, max pooling, gates,
  ...) merged into one convolution per exit where the merge is EXACT for the traced input
  size and cheaper in multiply-adds than the segment's layers (``merge_slower=True``
  merges slower ones too, ``allow_inexact=True`` inexact ones); this is what RepVGG,
  ACNet, DBB, MobileOne and DiracNet re-parameterization and BN folding do by hand;
* ``"auto"`` — ``"partial"`` for a model with nonlinear ops; for a linear model the
  cheapest of affine, kernel and partial by :class:`numeric.Machine`'s time estimate
  (multiply-adds at the GEMM or convolution rate plus a per-call overhead), the reason in
  the report.

Collapses run in float64 from the model's weights; the emitted weights are rounded once to
the model's dtype.  The converted module takes any batch size when the model does (the
batch is traced dynamically) and the traced per-sample shape only: merged segments are
exact for that size (regions, bias maps and circular folds are size-specific).

A model in training mode is refused (convert its eval-mode behaviour: ``model.eval()``).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ..algebra.errors import InvalidInputError
from ..algebra.memory import memory_budget
from ..numeric import Machine, extract_affine
from ..numeric.cost import border_corrected_seconds
from .border_module import border_corrected_exit
from .convert_emit import GraphWriter, converted_module
from .convert_merge import MergedExit, merge_exits, node_macs
from .convert_plan import (Analysis, analyse, display_nodes, notes, partial_region,
                           plan_segments, segment_report)
from .convert_report import ConversionReport, SegmentReport
from .count_layers import count_layers
from .linear_ops import LinearOp
from .segments import NotMergeable, Segment, build_network
from .trace import ConversionError, quiet_torch

__all__ = ["convert", "Conversion", "ConversionError", "ConversionReport", "count_layers",
           "MODES"]

MODES = ("auto", "affine", "kernel", "partial")


@dataclass
class Conversion:
    """The result of :func:`convert`: ``module`` (a plain ``torch.fx.GraphModule``),
    ``report``, the ``example_input`` it was traced on, and — when the conversion is exact
    only on part of the output (``allow_inexact``) — ``region`` (bool mask over the output
    positions, broadcastable to one output) and ``region_text``; ``region`` is None when
    the conversion is exact everywhere or the exact region is not known (then it must be
    checked everywhere)."""
    module: fx.GraphModule
    report: ConversionReport
    example_input: torch.Tensor
    region: np.ndarray | None = None
    region_text: str | None = None
    dynamic_batch: bool = True

    @property
    def exact(self) -> bool:
        return all(s.exact for s in self.report.segments if s.merged)

    def save(self, path: str | Path) -> Path:
        """Write the converted module as a ``.pt2`` program (``torch.export.export`` on the
        example input, batch dynamic when the model allows it, then ``torch.export.save``),
        atomically: a temporary file in the same folder replaced onto ``path``.  Any other
        suffix is refused (``.pt2`` is the output format)."""
        from .files import atomic_write, check_output_path
        target = check_output_path(path)
        program = _export_module(self.module, self.example_input, self.dynamic_batch)
        atomic_write(target, lambda tmp: torch.export.save(program, str(tmp)))
        return target


def _export_module(module: nn.Module, x: torch.Tensor, dynamic: bool
                   ) -> torch.export.ExportedProgram:
    example = x.to(_first_float_dtype(module, x.dtype))
    with quiet_torch():
        if dynamic:
            batch = torch.cat([example, example]) if example.shape[0] == 1 else example
            return torch.export.export(module, (batch,),
                                       dynamic_shapes=({0: torch.export.Dim.AUTO},))
        return torch.export.export(module, (example,))


def _first_float_dtype(module: nn.Module, fallback: torch.dtype) -> torch.dtype:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return fallback


# ------------------------------------------------------------------------- partial


def _convert_partial(a: Analysis, requested: str, reason: str, **options: Any) -> Conversion:
    plans, reports = plan_segments(a, **options)
    module = converted_module(a.traced, a.part, plans, a.dtype)
    after = sum((r.macs_after if r.merged else r.macs_before) for r in reports) + \
        sum(node_macs(n, a.ops[n], a.traced) for n in a.part.multi_source)
    report = ConversionReport("partial", requested, a.traced.front_end, reason, reports,
                              a.boundaries(), notes(a), a.total_macs(), after)
    region, text = partial_region(a, plans)
    return Conversion(module, report, a.traced.example_input, region, text,
                      a.traced.dynamic_batch)


# --------------------------------------------------------------------- kernel / affine


def _require_linear(a: Analysis, mode: str, allow_affine_ops: bool) -> None:
    bad = a.nonlinear + ([] if allow_affine_ops else a.affine_only)
    if bad:
        node = bad[0]
        hint = "use mode='partial'" + ("" if allow_affine_ops or node in a.nonlinear
                                       else " or mode='affine'")
        raise ConversionError(
            f"mode={mode!r} needs a linear model: node {a.describe(node)} is kept "
            f"({a.ops[node].reason})" + (f", and {len(bad) - 1} more" if len(bad) > 1 else "")
            + f"; {hint}")


def _kernel_exit(a: Analysis, allow_inexact: bool) -> tuple[Segment, MergedExit]:
    """The whole model as one merged exit (refusals name the problem)."""
    _require_linear(a, "kernel", allow_affine_ops=False)
    output = a.single_output()
    segments = a.part.segments
    if len(segments) != 1 or segments[0].source is not a.traced.input_node \
            or segments[0].exits != [output]:
        raise ConversionError("mode='kernel': the model is not one linear segment from its "
                              "input to its output; use mode='affine' or mode='partial'")
    try:
        (merged,) = merge_exits(segments[0], a.traced, a.ops)
    except NotMergeable as exc:
        raise ConversionError(f"mode='kernel': {exc}; use mode='affine' (any linear model)") from None
    if not merged.exact and not allow_inexact:
        merged = _border_corrected(a, segments[0], merged)
    return segments[0], merged


def _border_corrected(a: Analysis, segment: Segment, merged: MergedExit) -> MergedExit:
    """The inexact kernel made exact at every position: the kernel on the interior of its
    region, the original layers on the border strips (:mod:`bridge.border_module`); refused
    with the region when the layers have no strips (non-local layers, circular padding)."""
    try:
        if merged.kind == "polyphase":
            raise InvalidInputError("a polyphase (multirate) exit has no border correction")
        if merged.kind != "conv":
            raise InvalidInputError("the output is a single position")
        sn = build_network(segment, a.traced, a.ops)
        sn.network.set_output(sn.exit_value(merged.exit))
        return border_corrected_exit(merged, sn.network)
    except (InvalidInputError, NotMergeable) as exc:
        raise ConversionError(
            f"mode='kernel': the collapsed convolution is not exact everywhere — "
            f"{merged.where}, and its border cannot be corrected ({exc}). Pass "
            "allow_inexact=True to get it anyway (it agrees with the model on that region, "
            "Conversion.region), or use mode='affine' (exact for every padding mode)") from None


def _convert_kernel(a: Analysis, requested: str, reason: str, segment: Segment,
                    merged: MergedExit) -> Conversion:
    module = converted_module(a.traced, a.part, {segment.name: [merged]}, a.dtype)
    report = segment_report(a, segment)
    report.merged_into, report.exact, report.region = merged.describe(), merged.exact, merged.where
    report.merged, report.macs_after = True, merged.macs
    report.reason = f"mode='kernel'{'' if merged.exact else ' with allow_inexact=True'}"
    if merged.border_plan is not None:
        plan = merged.border_plan
        report.border = dict(interior_positions=plan.interior_positions,
                             border_positions=plan.border_positions,
                             interior_macs=plan.interior_macs, border_macs=plan.border_macs,
                             strips=len(plan.pieces),
                             interior_box=[list(pair) for pair in plan.interior])
    out = ConversionReport("kernel", requested, a.traced.front_end, reason, [report],
                           a.boundaries(), notes(a), a.total_macs(), merged.macs)
    return Conversion(module, out, a.traced.example_input,
                      None if merged.exact else merged.region,
                      None if merged.exact else merged.where, a.traced.dynamic_batch)


def _affine_map(model: Any, a: Analysis) -> MergedExit:
    """``W, B`` of the whole model (float64) as an nn.Linear exit, checked on the example."""
    _require_linear(a, "affine", allow_affine_ops=True)
    output = a.single_output()
    target = model if isinstance(model, nn.Module) else a.traced.graph_module
    amap = extract_affine(target, a.traced.input_shape, refuse_nonlinear_modules=False)
    x = a.traced.example_input.to(torch.float64)
    with torch.no_grad():
        try:
            with quiet_torch():   # deep-copying an exported module copies its pytree specs
                reference = copy.deepcopy(target).double()(x)
        except (RuntimeError, TypeError):
            reference = None
    if isinstance(reference, torch.Tensor):
        error = float((amap(x) - reference).abs().max())
        scale = max(1.0, float(reference.abs().max()))
        if error > 1e-8 * scale:
            raise ConversionError(
                f"mode='affine': the extracted map differs from the model on the example "
                f"input by {error:.3g} (an op mixes the samples of a batch, or is not affine); "
                "use mode='partial'")
    out_shape = a.traced.shape(output)
    return MergedExit(exit=output, kind="linear", weight=amap.W, bias=amap.B,
                      exit_shape=out_shape, input_shape=a.traced.input_shape,
                      macs=int(amap.W.numel()),
                      where="exact at every output position (the affine map of the model)")


def _convert_affine(a: Analysis, requested: str, reason: str, merged: MergedExit) -> Conversion:
    writer = GraphWriter(a.traced, a.dtype)
    x = writer.placeholder(a.traced.input_node)
    writer.output(writer.emit_merged(merged, x, a.traced.input_shape, "affine"))
    module = writer.finish()
    report = SegmentReport("model", a.traced.input_node.name, display_nodes(a, list(a.ops)),
                           [merged.exit.name], merged.describe(), True, merged.where, True,
                           "mode='affine'", a.total_macs(), merged.macs)
    out = ConversionReport("affine", requested, a.traced.front_end, reason, [report],
                           a.boundaries(), notes(a), a.total_macs(), merged.macs)
    return Conversion(module, out, a.traced.example_input, None, None, a.traced.dynamic_batch)


# ------------------------------------------------------------------------------ auto


def _auto(model: Any, a: Analysis, options: dict[str, Any]) -> Conversion:
    """The cheapest exact form of a linear model; partial for a nonlinear one."""
    if a.nonlinear:
        node = a.nonlinear[0]
        return _convert_partial(a, "auto", f"the model has nonlinear ops (first: "
                                f"{a.describe(node)}), so only its linear segments collapse",
                                **options)
    machine = Machine()
    dtype = str(a.dtype).removeprefix("torch.")
    itemsize = torch.empty((), dtype=a.dtype).element_size()
    estimates: dict[str, tuple[float, int, str]] = {}
    layers = a.total_macs()
    calls = sum(1 for op in a.ops.values() if isinstance(op, LinearOp) and op.kind not in
                ("identity", "tuple"))
    estimates["partial"] = (machine.seconds("layers", dtype, layers, 0, calls), layers,
                            "the layers as they are")
    n_in = math.prod(a.traced.input_shape)
    outputs = a.traced.output_node.all_input_nodes
    out_shape = a.traced.shape(outputs[0]) if len(outputs) == 1 else None
    affine_note = ""
    if out_shape is not None:
        n_out = math.prod(out_shape)
        need = 8 * n_in * n_out * 2
        if need <= memory_budget():
            macs = n_in * n_out
            estimates["affine"] = (machine.seconds("gemm", dtype, macs, itemsize * macs, 1),
                                   macs, f"one {n_out}x{n_in} matrix")
        else:
            affine_note = f"; affine skipped: its {n_out}x{n_in} matrix is over the memory budget"
    kernel = None
    kernel_note = ""
    if not a.affine_only and len(a.part.segments) == 1 and out_shape is not None:
        try:
            kernel = _kernel_exit(a, allow_inexact=False)
            macs, plan = kernel[1].macs, kernel[1].border_plan
            seconds = machine.seconds("direct", dtype, macs, 0, 1) if plan is None else \
                border_corrected_seconds(plan, dtype, calls, machine)
            estimates["kernel"] = (seconds, macs, kernel[1].describe())
        except (ConversionError, MemoryError) as exc:
            kernel_note = f"; kernel not available: {str(exc).removeprefix('mode=' + repr('kernel') + ': ')[:200]}"
    best = min(estimates, key=lambda k: estimates[k][0])
    summary = ", ".join(f"{k}: {v[1]:,} multiply-adds, est. {v[0] * 1e3:.3g} ms ({v[2]})"
                        for k, v in sorted(estimates.items(), key=lambda kv: kv[1][0]))
    reason = f"linear model; cheapest by the cost model: {best} — {summary}{affine_note}{kernel_note}"
    if best == "affine":
        return _convert_affine(a, "auto", reason, _affine_map(model, a))
    if best == "kernel":
        return _convert_kernel(a, "auto", reason, *kernel)
    return _convert_partial(a, "auto", reason, **options)


def convert(model: nn.Module | torch.export.ExportedProgram, example_input: torch.Tensor, *,
            mode: str = "auto", allow_inexact: bool = False, merge_slower: bool = False,
            progress: bool = False, measure: bool = True) -> Conversion:
    """Convert ``model`` (eval mode) for inputs shaped like ``example_input`` (batch free).

    ``mode``: ``"auto"``, ``"affine"``, ``"kernel"`` or ``"partial"`` (module docstring);
    ``allow_inexact``: merge (kernel: return, instead of the border-corrected form) a
    collapse that is exact only on a region;
    ``merge_slower``: merge segments even when the merged form needs more multiply-adds;
    ``progress``: a tqdm bar over the segments; ``measure``: time every segment before and
    after on the example batch (median of 3 runs) for the report.

    Raises :class:`ConversionError` naming the node, the op and what to do."""
    if mode not in MODES:
        raise ConversionError(f"mode must be one of {MODES}, got {mode!r}")
    for name, flag in (("allow_inexact", allow_inexact), ("merge_slower", merge_slower),
                       ("progress", progress), ("measure", measure)):
        if not isinstance(flag, bool):
            raise ConversionError(f"{name} must be True or False, got {flag!r}")
    a = analyse(model, example_input)
    options = dict(allow_inexact=allow_inexact, merge_slower=merge_slower, progress=progress,
                   measure=measure)
    if mode == "partial":
        return _convert_partial(a, "partial", "asked for", **options)
    if mode == "kernel":
        return _convert_kernel(a, "kernel", "asked for", *_kernel_exit(a, allow_inexact))
    if mode == "affine":
        return _convert_affine(a, "affine", "asked for", _affine_map(model, a))
    return _auto(model, a, options)
