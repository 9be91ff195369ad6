"""The converter (``bridge.convert.convert``) on whole models: original vs converted, side by side.

Models (eval mode, every batch norm with random statistics and affine parameters):

* linear ResNet-34 (``bridge.models.resnet34(linear=True)``, 1×28×28 → 10): one affine map;
* a RepVGG-style network (``repvgg_net``, 3×32×32): three parallel branches per block;
* a MobileOne-style network (``mobileone_net``, depthwise + pointwise, 3×32×32);
* a torchvision-style ResNet-18 with ReLUs (``resnet18_relu``, 3×32×32, ~11.2M parameters).

For each, in ONE run: the conversion time (``convert(model, x[:1], mode=...)`` on one
thread: ``"auto"`` for the nonlinear models, ``--linear-mode`` (default ``"affine"``) for
the linear one); the prediction time of the original and of the converted module on a
float32 batch (median of ``--repeats`` samples, the two timed in alternating samples, with
``torch.set_num_threads(1)`` and with all threads) and their ratio ``original / converted``
(the median of the per-pair ratios); the max relative error ``max|y - y64| / max|y64|``
of both against the ORIGINAL model in float64; the conv / batch-norm counts before and
after (and of the hand-written re-parameterization, where the family has one).  For the nonlinear models, the converted module is also timed against
what a user would run instead, ``torch.fx.experimental.optimization.fuse`` (conv+BN
folding only), on one thread.

Targets (DESIGN.md): converting the ~11M-parameter ResNet-18 takes <= 10 s on one core;
a converted nonlinear model is never slower than the original (ratio >= 1 at both thread
counts) and has no batch norm left; the linear model is >= 1000× faster; every converted
error is within ``verify.tolerance_for(float32, original error)`` =
``max(1000 ε32, 10 × the original float32 error)``.  ``--quick`` runs small
models with fewer repeats (a smoke test: its targets are indicative only).

    python benchmarks/convert.py [--quick] [--repeats 7] [--batch 64]
                                 [--linear-mode affine|auto|kernel|partial] [--json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from laurentnet.bridge.convert import convert, count_layers  # noqa: E402
from laurentnet.bridge.models.reparam import (deploy, mobileone_net, randomize_bn_,  # noqa: E402
                                              repvgg_net, resnet18_relu)
from laurentnet.bridge.models.resnet import resnet34  # noqa: E402
from laurentnet.bridge.timing import interleaved_times  # noqa: E402
from laurentnet.bridge.verify import tolerance_for  # noqa: E402


@dataclass
class Case:
    """One benchmarked model: a builder, its input shape, and whether it is linear."""
    name: str
    build: Callable[[], nn.Module]
    in_shape: tuple[int, int, int]
    linear: bool
    hand_written: bool = False  # the family has a hand-written re-parameterization (deploy)
    mode: str = "auto"


def cases(quick: bool, linear_mode: str) -> list[Case]:
    """Full-size models, or small ones for ``--quick``."""
    rw = (16, 32) if quick else (64, 128, 256, 512)
    return [
        Case(f"linear ResNet-34 (width {16 if quick else 64})",
             lambda: resnet34(1, 10, linear=True, base_width=16 if quick else 64),
             (1, 28, 28), linear=True, mode=linear_mode),
        Case(f"RepVGG-style {'-'.join(map(str, rw))}",
             lambda: repvgg_net(3, 10, widths=rw, depth=2), (3, 32, 32), False, True),
        Case(f"MobileOne-style {'-'.join(map(str, rw))}",
             lambda: mobileone_net(3, 10, widths=rw, depth=2, branches=3), (3, 32, 32),
             False, True),
        Case(f"ResNet-18 ReLU (width {16 if quick else 64})",
             lambda: resnet18_relu(3, 10, width=16 if quick else 64), (3, 32, 32), False),
    ]


def paired_times(original: Callable[[], Any], converted: Callable[[], Any], repeats: int,
                 min_seconds: float = 0.05) -> dict[str, float]:
    """Median seconds per call of both functions, timed in interleaved rounds
    (:func:`laurentnet.bridge.timing.interleaved_times`: both see the same machine load),
    and the median of the per-round ratios ``original/converted``; ``spread`` is the
    largest max/min sample ratio of the two (far above 1: a busy machine)."""
    t = interleaved_times({"original": original, "converted": converted}, repeats, min_seconds)
    return {"original_s": t.median["original"], "converted_s": t.median["converted"],
            "ratio": t.ratio("original", "converted"),
            "spread": max(t.spread("original"), t.spread("converted"))}


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """``max|y - ref| / max|ref|`` in float64."""
    return float((y.double() - ref).abs().max() / ref.abs().max())


def timed_convert(model: nn.Module, x: torch.Tensor, mode: str) -> tuple[Any, float]:
    """``convert(model, x, mode=mode)`` on one thread, and its wall time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = time.perf_counter()
        conversion = convert(model, x, mode=mode)
        return conversion, time.perf_counter() - t
    finally:
        torch.set_num_threads(threads)


def prediction_times(original: nn.Module, converted: nn.Module, x: torch.Tensor,
                     repeats: int, threads: int) -> dict[str, float]:
    """:func:`paired_times` of both modules on ``x`` with ``threads`` torch threads."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return paired_times(lambda: original(x), lambda: converted(x), repeats)
    finally:
        torch.set_num_threads(saved)


def run_case(case: Case, batch: int, repeats: int, all_threads: int, seed: int) -> dict[str, Any]:
    """Build, convert, verify and time one model; one row of the table."""
    torch.manual_seed(seed)
    model = randomize_bn_(case.build(), torch.Generator().manual_seed(seed)).eval()
    x = torch.randn(batch, *case.in_shape, generator=torch.Generator().manual_seed(seed + 1))
    with torch.inference_mode():
        ref = copy.deepcopy(model).double()(x.double())
        y_orig = model(x)
    conversion, t_convert = timed_convert(model, x[:1], case.mode)
    with torch.inference_mode():
        y_conv = conversion.module(x)
    before, after = count_layers(model), count_layers(conversion.module)
    err_orig, err_conv = rel_err(y_orig, ref), rel_err(y_conv, ref)
    tolerance = tolerance_for(torch.float32, err_orig)
    times = {n: prediction_times(model, conversion.module, x, repeats, n)
             for n in sorted({1, all_threads})}
    baseline = None if case.linear else prediction_times(
        fuse(copy.deepcopy(model)), conversion.module, x, repeats, 1)
    row = {
        "model": case.name, "linear": case.linear, "input": list(case.in_shape),
        "mode": case.mode, "mode_used": conversion.report.mode,
        "params": sum(p.numel() for p in model.parameters()), "batch": batch,
        "repeats": repeats, "convert_s": t_convert, "times": {str(n): t for n, t in times.items()},
        "min_ratio": min(t["ratio"] for t in times.values()),
        "fx_fuse_over_converted_1_thread": None if baseline is None else baseline["ratio"],
        "original_rel_err": err_orig, "converted_rel_err": err_conv, "tolerance": tolerance,
        "conv_before": before.get("conv", 0), "conv_after": after.get("conv", 0),
        "bn_before": before.get("batch_norm", 0), "bn_after": after.get("batch_norm", 0),
        "linear_after": after.get("linear", 0),
        "segments": len(conversion.report.segments),
        "segments_merged": sum(bool(s.merged) for s in conversion.report.segments),
        "hand_written_conv": (count_layers(deploy(model))["conv"] if case.hand_written
                              else None),
    }
    row["targets"] = targets(row, case)
    return row


def targets(row: dict[str, Any], case: Case) -> dict[str, bool]:
    """Which targets the row meets (the ResNet-18 one only for the ResNet-18)."""
    met = {"error<=tolerance": row["converted_rel_err"] <= row["tolerance"]}
    if case.linear:
        met["ratio>=1000"] = row["min_ratio"] >= 1000
    else:
        met["never_slower"] = row["min_ratio"] >= 1.0
        met["no_bn_left"] = row["bn_after"] == 0
    if row["hand_written_conv"] is not None:
        met["conv<=hand_written"] = row["conv_after"] <= row["hand_written_conv"]
    if "ResNet-18" in case.name:
        met["convert<=10s_one_core"] = row["convert_s"] <= 10.0
    return met


def table(rows: list[dict[str, Any]], all_threads: int, quick: bool) -> str:
    """The side-by-side table: one line per model, then the targets."""
    head = ["model", "params", "convert", "threads", "original", "converted", "ratio",
            "rel.err orig", "rel.err conv", "conv b->a", "BN b->a"]
    lines = []
    for r in rows:
        for k, (n, t) in enumerate(r["times"].items()):
            first = k == 0
            lines.append([
                r["model"] if first else "", f"{r['params'] / 1e6:.2f}M" if first else "",
                f"{r['convert_s']:.2f} s" if first else "", n,
                f"{t['original_s'] * 1e3:.2f} ms", f"{t['converted_s'] * 1e3:.3f} ms",
                f"{t['ratio']:.2f}x",
                f"{r['original_rel_err']:.1e}" if first else "",
                f"{r['converted_rel_err']:.1e}" if first else "",
                f"{r['conv_before']}->{r['conv_after']}" if first else "",
                f"{r['bn_before']}->{r['bn_after']}" if first else ""])
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [f"convert benchmark: batch {rows[0]['batch']}, float32, median of "
           f"{rows[0]['repeats']}, 1 and {all_threads} thread(s), conversion on 1 thread; "
           f"ratio = original / converted{'; QUICK: small models' if quick else ''}"]
    out += [fmt.format(*head)] + [fmt.format(*map(str, line)) for line in lines]
    for r in rows:
        extra = (f", hand-written re-parameterization: {r['hand_written_conv']} convs"
                 if r["hand_written_conv"] is not None else "")
        spread = max(t["spread"] for t in r["times"].values())
        if r["fx_fuse_over_converted_1_thread"] is not None:
            extra += (f"; vs torch.fx fuse (conv+BN folding only): "
                      f"{r['fx_fuse_over_converted_1_thread']:.2f}x on 1 thread")
        out.append(f"  {r['model']}: mode {r['mode']} -> {r['mode_used']}, "
                   f"{r['segments_merged']}/{r['segments']} segments merged"
                   f"{extra}; tolerance {r['tolerance']:.1e}; timing spread {spread:.2f}")
        out.append("    targets: " + ", ".join(f"{k} {'MET' if v else 'MISSED'}"
                                              for k, v in r["targets"].items()))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small models, fewer repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed samples (default 7, quick 3)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--linear-mode", choices=("affine", "auto", "kernel", "partial"),
                   default="affine",
                   help="convert mode for the linear ResNet-34 (default affine: auto first "
                        "tries the whole-network kernel, which is slow at this size)")
    p.add_argument("--json", action="store_true", help='print one JSON object {"rows": [...]}')
    args = p.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 7)
    if min(repeats, args.batch) < 1:
        p.error("--repeats and --batch must be >= 1")
    all_threads = torch.get_num_threads()
    rows = [run_case(c, args.batch, repeats, all_threads, args.seed)
            for c in cases(args.quick, args.linear_mode)]
    print(json.dumps({"rows": rows}) if args.json else table(rows, all_threads, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
