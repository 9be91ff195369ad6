"""Skip removal by homotopy on the digits: accuracy with and without skips, prediction time.

Trains, on scikit-learn's digits (8×8; 60/20/20 train/validation/test, seeded), the same
ResNet (default ``resnet_small``: basic blocks [2, 2, 2], widths 16-32-64, ReLU, BN), same
epochs, seed, optimizer and data order:

* (A) with its skips (λ = 1 throughout);
* (B) with the homotopy, λ linear from 1 to 0 at ``t0`` (default half the epochs), then
  deployed: zero skips removed, batch norm folded by the bridge's partial collapse,
  written as ``.pt2`` and verified against the λ = 0 network;
* a sweep of hand-set ``t0`` (``--sweep``, fractions of the epochs; B is the one at 0.5),
  the best of it chosen by validation accuracy;
* (C) with the automatic schedule (no ``t0``), reporting the epochs it needed.

Test accuracy of each at the end of training.  Then, in ONE run, the prediction time on a
batch of ``--batch`` test images (repeated to fill it), median of ``--repeats``
interleaved rounds (``bridge.timing``), ``--threads`` torch threads, of:

  (a) A as trained: skips, batch norm unfolded (eager PyTorch; no multiply by λ = 1);
  (b) A with batch norm folded, skips kept (the bridge's partial collapse);
  (c) B deployed: no skips, batch norm folded (the ``.pt2`` loaded back);
  (d) B without skips but batch norm unfolded (eager; the skip saving without folding).

``time_reduction_total = 1 − c/a`` (both savings), ``time_reduction_skips = 1 − c/b`` (the
skips alone, at folded batch norm), ``time_reduction_bn = 1 − b/a`` (folding alone) and
``time_reduction_skips_unfolded = 1 − d/a``; every ratio is the median of the per-round
ratios.  Targets (DESIGN.md): B and C within 1 point of A, ``time_reduction_skips > 0``,
``time_reduction_total >= 0.22`` (the paper's 22–46%).  ``--paper-shape`` adds the same
(a)–(d) timing for an untrained ResNet-34 (width ``--paper-width``) on 1×28×28 (random
batch-norm statistics), the reference paper's shape.  ``--quick`` is a smoke test (tiny
model, few epochs: its numbers mean nothing).

    python benchmarks/skip_removal.py [--epochs 30] [--seed 0] [--repeats 15] [--threads 1]
                                      [--batch 256] [--sweep 0.25,0.5,0.75] [--paper-shape]
                                      [--quick] [--json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from laurentnet.bridge.data import Splits, digits  # noqa: E402
from laurentnet.bridge.models.resnet import (build_resnet, fix_unit_skips_,  # noqa: E402
                                             randomize_batchnorm_, remove_zero_skips_,
                                             set_skip_weight_)
from laurentnet.bridge.schedules import AutoSchedule, make_schedule  # noqa: E402
from laurentnet.bridge.skip_removal import deploy_skipless, fold_batchnorm  # noqa: E402
from laurentnet.bridge.timing import Timings, interleaved_times  # noqa: E402
from laurentnet.bridge.trainer import TrainConfig, train  # noqa: E402

LABELS = {"a": "(a) A as trained: skips, BN", "b": "(b) A, BN folded, skips kept",
          "c": "(c) B deployed: no skips, BN folded", "d": "(d) B no skips, BN unfolded"}


def run_training(args: argparse.Namespace, data: Splits, schedule: Any) -> tuple[nn.Module, dict]:
    """One training run of the benchmark's model with ``schedule``; the model and a row."""
    torch.manual_seed(args.seed)
    model = build_resnet(args.model, in_channels=data.in_channels, num_classes=data.num_classes,
                         width_multiplier=args.width_multiplier)
    config = TrainConfig(epochs=args.epochs, batch_size=64, seed=args.seed, threads=args.threads)
    result = train(model, data, schedule, config, progress=False)
    row = {"schedule": schedule.describe(), "test_accuracy": result.test_accuracy,
           "val_accuracy": result.history[-1]["val_accuracy"], "zero_at": result.zero_at,
           "forced_zero": result.forced_zero, "train_seconds": result.seconds}
    return model, row


def batch_of(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` inputs: ``x`` repeated to fill the batch."""
    return x.repeat((n + len(x) - 1) // len(x), 1, 1, 1)[:n]


def time_variants(with_skips: nn.Module, skipless_trained: nn.Module, deployed: nn.Module,
                  x: torch.Tensor, repeats: int, threads: int) -> Timings:
    """(a)–(d) of the module docstring, interleaved."""
    a = copy.deepcopy(with_skips).eval()
    fix_unit_skips_(a)
    b = fold_batchnorm(a, x[:2]).module
    d = copy.deepcopy(skipless_trained).eval()
    remove_zero_skips_(d)
    return interleaved_times({"a": lambda: a(x), "b": lambda: b(x), "c": lambda: deployed(x),
                              "d": lambda: d(x)}, repeats=repeats, min_seconds=0.1,
                             threads=threads)


def reductions(t: Timings) -> dict[str, float]:
    return {"time_reduction_total": 1 - t.ratio("c", "a"),
            "time_reduction_skips": 1 - t.ratio("c", "b"),
            "time_reduction_bn": 1 - t.ratio("b", "a"),
            "time_reduction_skips_unfolded": 1 - t.ratio("d", "a")}


def paper_shape(args: argparse.Namespace) -> dict[str, Any]:
    """Timing only: an untrained ResNet-34 (random BN statistics) on 1×28×28, λ=1 vs 0."""
    torch.manual_seed(args.seed)
    net = randomize_batchnorm_(build_resnet("resnet34", width_multiplier=args.paper_width),
                               torch.Generator().manual_seed(args.seed)).eval()
    zero = set_skip_weight_(copy.deepcopy(net), 0.0)
    x = torch.randn(args.batch, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed))
    with tempfile.TemporaryDirectory() as tmp:
        dep = deploy_skipless(zero, x[:2], Path(tmp) / "r34.pt2", samples=2)
        t = time_variants(net, zero, dep.module, x, max(3, args.repeats // 2), args.threads)
    return {"model": f"ResNet-34 ×{args.paper_width:g}, 1×28×28, untrained", "timing": t,
            "verified": dep.verification.ok, **reductions(t)}


def targets(out: dict[str, Any]) -> dict[str, bool]:
    a = out["accuracy_with_skips"]
    return {"skipless_within_1_point": out["accuracy_skipless"] >= a - 0.01,
            "auto_within_1_point": out["accuracy_auto"] >= a - 0.01,
            "deployment_verified": out["deployment"]["ok"],
            "time_reduction_skips>0": out["time_reduction_skips"] > 0,
            "time_reduction_total>=0.22": out["time_reduction_total"] >= 0.22}


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    data = digits(seed=args.seed)
    model_a, row_a = run_training(args, data, make_schedule("constant"))
    sweep, models = [], {}
    for f in args.sweep:
        t0 = f * args.epochs
        models[f], row = run_training(args, data, make_schedule("linear", t0=t0))
        sweep.append({"t0": t0, "fraction": f, **row})
    best = max(sweep, key=lambda r: (r["val_accuracy"], -r["t0"]))
    auto = AutoSchedule()
    _, row_c = run_training(args, data, auto)
    row_b = next(r for r in sweep if r["fraction"] == 0.5)
    model_b = models[0.5]
    x = batch_of(data.x_test, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        dep = deploy_skipless(model_b, data.x_test[:2], Path(tmp) / "b.pt2", data=data.x_test)
        timing = time_variants(model_a, model_b, dep.module, x, args.repeats, args.threads)
    out: dict[str, Any] = {
        "model": f"{args.model} ×{args.width_multiplier:g}", "data": data.describe(),
        "epochs": args.epochs, "seed": args.seed,
        "accuracy_with_skips": row_a["test_accuracy"], "accuracy_skipless": row_b["test_accuracy"],
        "accuracy_auto": row_c["test_accuracy"], "accuracy_best_sweep": best["test_accuracy"],
        "best_sweep_t0": best["t0"], "t0_skipless": row_b_t0(sweep), "auto_zero_epochs": auto.zero_epochs,
        "auto_forced": auto.forced, "auto_plan": auto.plan, "runs": {"A": row_a, "C": row_c},
        "sweep": sweep, "deployment": dep.as_dict(), **reductions(timing),
        "timing": {**timing.as_dict(), "batch": args.batch, "labels": LABELS},
    }
    if args.paper_shape:
        extra = paper_shape(args)
        out["paper_shape"] = {**extra, "timing": extra["timing"].as_dict()}
        out["_paper_timing"] = extra["timing"]
    out["targets"] = targets(out)
    out["seconds"] = time.perf_counter() - start
    out["_timing"] = timing
    return out


def row_b_t0(sweep: list[dict[str, Any]]) -> float:
    return next(r["t0"] for r in sweep if r["fraction"] == 0.5)


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def table(out: dict[str, Any]) -> str:
    lines = [f"skip removal benchmark: {out['model']} on {out['data']}; {out['epochs']} epochs, "
             f"seed {out['seed']}, SGD, batch 64, cosine lr", "",
             "test accuracy (at the end of training):",
             f"  (A) with skips                         {pct(out['accuracy_with_skips'])}",
             f"  (B) homotopy, linear t0 = {out['t0_skipless']:g} epochs"
             f"       {pct(out['accuracy_skipless'])}",
             f"  (C) automatic schedule                 {pct(out['accuracy_auto'])}  (λ = 0 after "
             f"{out['auto_zero_epochs']} epochs{', forced by the budget' if out['auto_forced'] else ''})",
             "  sweep of hand-set t0 (linear):"]
    for r in out["sweep"]:
        lines.append(f"    t0 = {r['t0']:5.1f}  val {pct(r['val_accuracy'])}  test {pct(r['test_accuracy'])}")
    lines.append(f"  best of the sweep by validation: t0 = {out['best_sweep_t0']:g} "
                 f"(test {pct(out['accuracy_best_sweep'])})")
    d = out["deployment"]
    lines += ["", f"deployed B: {d['shortcuts_removed']} shortcuts removed "
                  f"({d['projections_removed']} projections); layers {d['layers_before']} -> "
                  f"{d['layers_after']}; vs the λ = 0 network: "
                  f"{'OK' if d['verification']['ok'] else 'FAILED'} (max rel error "
                  f"{d['verification']['max_rel_error']:.1e})", "",
              f"prediction time, batch {out['timing']['batch']}:",
              out["_timing"].table("a", LABELS), _reduction_lines(out)]
    if "paper_shape" in out:
        p = out["paper_shape"]
        lines += ["", f"timing only, {p['model']} (deployment verified: {p['verified']}):",
                  out["_paper_timing"].table("a", LABELS), _reduction_lines(p)]
    lines += ["", "targets: " + ", ".join(f"{k} {'MET' if v else 'MISSED'}"
                                          for k, v in out["targets"].items()),
              f"({out['seconds']:.0f} s in all)"]
    return "\n".join(lines)


def _reduction_lines(r: dict[str, Any]) -> str:
    return (f"  total 1 - c/a = {pct(r['time_reduction_total'])};  BN folding alone 1 - b/a = "
            f"{pct(r['time_reduction_bn'])};  skips alone 1 - c/b = "
            f"{pct(r['time_reduction_skips'])} (BN folded), 1 - d/a = "
            f"{pct(r['time_reduction_skips_unfolded'])} (BN unfolded)")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="resnet_small")
    p.add_argument("--width-multiplier", type=float, default=1.0)
    p.add_argument("--sweep", default="0.25,0.5,0.75",
                   help="hand-set t0 as fractions of the epochs (0.5 is B; default 0.25,0.5,0.75)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--paper-shape", action="store_true", help="also time ResNet-34 on 28×28")
    p.add_argument("--paper-width", type=float, default=0.25)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny model, 4 epochs")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.sweep = sorted({float(f) for f in args.sweep.split(",")} | {0.5})
    if args.quick:
        args.model, args.epochs, args.repeats = "resnet_tiny", 4, 5
    if min(args.epochs, args.batch, args.repeats, args.threads) < 1 or \
            not all(0 < f <= 1 for f in args.sweep):
        p.error("--epochs, --batch, --repeats, --threads must be >= 1 and --sweep in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = run(args)
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if not k.startswith("_")}, default=str))
    else:
        print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
