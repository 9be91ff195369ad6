"""Basis convolutions (seed 003) on a ResNet trained on digits at 28×28: every layer
decomposed vs the layers a sensitivity analysis selects, at a few ranks.

One run:

1. trains a ResNet (``resnet_small``: stages of 2 basic blocks, widths 16-32-64 scaled by
   ``--width``) on scikit-learn's digits resized to 28×28 (60/20/20 split), seeded;
2. for each rank fraction ``f`` (``--fractions``) and method (``--methods``: ``svd``,
   ``qr`` = a subset of the filters, the seed's ``[I; A]``):
   * **all**: every convolution at rank ``ceil(f · min(C_out, C_in k²))``;
   * **selected**: the greedy sensitivity choice of layers *and* ranks (candidates at the
     fractions ``(0.25, 0.5, 0.75)``, scores = validation loss increase of one layer
     decomposed alone, no retraining) under a multiply-add budget equal to what **all**
     needs — the two rows have (about) the same multiply-adds, so their accuracies compare;
3. for every model: parameters, multiply-adds per sample, forward time (eval, batch
   ``--batch``) and forward+backward time (train mode, cross-entropy, no optimizer step)
   as the median of interleaved repeats with the ratio to the dense model (median of
   per-round ratios, :func:`laurentnet.bridge.timing.interleaved_times`), and the test
   accuracy: as decomposed, after recalibrating the batch-norm statistics on the training
   images (no gradient step), and after ``--fine-tune`` epochs of fine-tuning (B and C
   trained with the trainer, :func:`laurentnet.bridge.fine_tune`; the dense model is
   fine-tuned as long, so extra training is not credited to the decomposition).

    python benchmarks/basis.py [--epochs 8] [--fine-tune 4] [--width 0.5] [--threads 1] [--json]

A second table times the same architecture at larger widths (``--timing-widths``, random
weights: the speed does not depend on them), dense vs every layer at each rank fraction,
to show from which width fewer multiply-adds become less time.

Everything runs with ``--threads`` torch threads (default 1: on a shared 2-core machine
two threads per process wait for each other more than they compute).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from laurentnet.bridge import (FixedSchedule, TrainConfig, decompose, digits,  # noqa: E402
                               find_conv_layers, fine_tune, interleaved_times, select_layers,
                               sensitivity, train)
from laurentnet.bridge.fine_tune import recalibrate_batchnorm_  # noqa: E402
from laurentnet.bridge.models import build_resnet  # noqa: E402
from laurentnet.bridge.trainer import evaluate  # noqa: E402

CANDIDATE_FRACTIONS = (0.25, 0.5, 0.75)


def _train_dense(args: argparse.Namespace, data: Any) -> nn.Module:
    torch.manual_seed(args.seed)
    model = build_resnet("resnet_small", width_multiplier=args.width)
    config = TrainConfig(epochs=args.epochs, batch_size=64, optimizer="adamw", lr=3e-3,
                         weight_decay=1e-4, seed=args.seed)
    train(model, data, FixedSchedule("constant"), config, progress=False)
    return model.eval()


def _uniform_ranks(found: Any, fraction: float) -> dict[str, int]:
    return {layer.name: max(1, math.ceil(fraction * layer.max_rank))
            for layer in found.decomposable}


def _variants(args: argparse.Namespace, dense: nn.Module, data: Any) -> list[dict[str, Any]]:
    """Every decomposed model of the run (not yet timed or fine-tuned)."""
    rows = []
    for method in args.methods:
        report = sensitivity(dense, data.x_val, data.y_val, fractions=CANDIDATE_FRACTIONS,
                             method=method)
        found = report.found
        for fraction in args.fractions:
            every = decompose(dense, data.x_val[:2], ranks=_uniform_ranks(found, fraction),
                              method=method, found=found)
            budget = every.multiply_adds_after / every.multiply_adds_before
            selection = select_layers(dense, report, f"macs={budget:.6f}", measure=False)
            chosen = decompose(dense, data.x_val[:2], ranks=selection.ranks, method=method,
                               found=found) if selection.ranks else None
            rows.append({"name": f"all r={fraction:g} {method}", "method": method,
                         "fraction": fraction, "kind": "all", "module": every.module,
                         "layers": len(every.layers), "ranks": every.ranks})
            if chosen is not None:
                same = " (= all)" if chosen.ranks == every.ranks else ""
                rows.append({"name": f"selected {method} @ all r={fraction:g}{same}", "method": method,
                             "fraction": fraction, "kind": "selected", "module": chosen.module,
                             "layers": len(chosen.layers), "ranks": chosen.ranks,
                             "budget_met": selection.met})
    return rows


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds per sample of the convolutions and linear layers, by forward hooks."""
    total: list[int] = []

    def hook(m: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        total.append(out[0].numel() * m.weight[0].numel() if isinstance(m, nn.modules.conv._ConvNd)
                     else m.weight.numel())
    mixing = [m for m in model.modules() if type(m).__name__ == "SubsetMixing"]
    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    hooks += [m.register_forward_hook(lambda m, i, o: total.append(o[0].numel() * m.rank))
              for m in mixing]
    with torch.no_grad():
        model.eval()(x[:1])
    for h in hooks:
        h.remove()
    return sum(total)


def _forward(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        return model(x)
    return run


def _forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], Any]:
    def run() -> None:
        with torch.inference_mode(False), torch.enable_grad():
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
    return run


def _time(rows: list[dict[str, Any]], args: argparse.Namespace, data: Any) -> None:
    x = data.x_train[:args.batch].clone()
    y = data.y_train[:args.batch].clone()
    names = [r["name"] for r in rows]
    for r in rows:
        r["module"].eval()
    forward = interleaved_times({r["name"]: _forward(r["module"], x) for r in rows},
                                repeats=args.repeats, min_seconds=args.min_seconds,
                                threads=args.threads)
    copies = {r["name"]: copy.deepcopy(r["module"]).train() for r in rows}
    backward = interleaved_times({n: _forward_backward(copies[n], x, y) for n in names},
                                 repeats=args.repeats, min_seconds=args.min_seconds,
                                 threads=args.threads)
    for r in rows:
        n = r["name"]
        r.update(forward_ms=1e3 * forward.median[n], forward_ratio=forward.ratio(n, names[0]),
                 forward_spread=forward.spread(n),
                 train_step_ms=1e3 * backward.median[n],
                 train_step_ratio=backward.ratio(n, names[0]),
                 train_step_spread=backward.spread(n))


def _timing_rows(args: argparse.Namespace, data: Any) -> list[dict[str, Any]]:
    """Dense vs every layer decomposed (SVD) at each fraction, for each timing width."""
    out = []
    for width in args.timing_widths:
        torch.manual_seed(args.seed)
        dense = build_resnet("resnet_small", width_multiplier=width).eval()
        rows = [{"name": f"x{width:g} dense", "module": dense, "layers": 0}]
        found = find_conv_layers(dense, data.x_val[:2])
        for fraction in args.fractions:
            every = decompose(dense, data.x_val[:2], ranks=_uniform_ranks(found, fraction),
                              found=found)
            rows.append({"name": f"x{width:g} all r={fraction:g}", "module": every.module,
                         "layers": len(every.layers)})
        for r in rows:
            r["parameters"] = sum(p.numel() for p in r["module"].parameters())
            r["multiply_adds"] = _macs(r["module"], data.x_test)
        _time(rows, args, data)
        for r in rows:
            r["parameters_ratio"] = r["parameters"] / rows[0]["parameters"]
            r["multiply_adds_ratio"] = r["multiply_adds"] / rows[0]["multiply_adds"]
            r["width"] = width
            del r["module"]
        out += rows
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    data = digits(28, seed=args.seed)
    dense = _train_dense(args, data)
    trained = time.perf_counter() - start
    rows = [{"name": "dense", "method": None, "fraction": None, "kind": "dense",
             "module": dense, "layers": 0, "ranks": {}}] + _variants(args, dense, data)
    for r in rows:
        r["parameters"] = sum(p.numel() for p in r["module"].parameters())
        r["multiply_adds"] = _macs(r["module"], data.x_test)
        r["accuracy_before"] = evaluate(r["module"], data.x_test, data.y_test)[1]
    _time(rows, args, data)
    for r in rows:
        calibrated = recalibrate_batchnorm_(copy.deepcopy(r["module"]), data)
        r["accuracy_recalibrated"] = evaluate(calibrated, data.x_test, data.y_test)[1]
        tuned = copy.deepcopy(r["module"])
        r["accuracy_after"] = fine_tune(tuned, data, epochs=args.fine_tune, lr=args.lr,
                                        seed=args.seed).test_accuracy
    base = rows[0]
    for r in rows:
        r["parameters_ratio"] = r["parameters"] / base["parameters"]
        r["multiply_adds_ratio"] = r["multiply_adds"] / base["multiply_adds"]
        del r["module"]
    timing = _timing_rows(args, data)
    return {"rows": rows, "timing_rows": timing, "model": f"resnet_small width x{args.width:g}", "data": data.describe(),
            "epochs": args.epochs, "fine_tune_epochs": args.fine_tune, "threads": args.threads,
            "batch": args.batch, "repeats": args.repeats, "train_seconds": trained,
            "fine_tune_lr": args.lr,
            "seconds": time.perf_counter() - start}


def _columns(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                      enumerate(zip(r, widths))) for r in [head, *rows]]


def _cost_cells(r: dict[str, Any]) -> tuple[str, ...]:
    return (r["name"], str(r["layers"]), f"{r['parameters']:,} ({r['parameters_ratio']:.2f})",
            f"{r['multiply_adds']:,} ({r['multiply_adds_ratio']:.2f})",
            f"{r['forward_ms']:.2f}", f"{r['forward_ratio']:.3f}", f"{r['train_step_ms']:.2f}",
            f"{r['train_step_ratio']:.3f}")


def table(result: dict[str, Any]) -> str:
    cost = ("model", "layers", "params", "MACs", "fwd ms", "fwd ×", "fwd+bwd ms", "fwd+bwd ×")
    head = (*cost, "acc", "acc BN recal.", f"acc tuned {result['fine_tune_epochs']} ep")
    rows = [(*_cost_cells(r), f"{100 * r['accuracy_before']:.1f}%",
             f"{100 * r['accuracy_recalibrated']:.1f}%",
             f"{100 * r['accuracy_after']:.1f}%") for r in result["rows"]]
    timing = _columns(cost, [_cost_cells(r) for r in result.get("timing_rows", [])])
    return "\n".join([
        f"{result['model']} on {result['data']}; trained {result['epochs']} epochs "
        f"({result['train_seconds']:.0f} s)", "", *_columns(head, rows), "",
        "the same architecture wider (random weights, timing only; × relative to its own dense):",
        *timing, "",
        f"times: batch {result['batch']}, median of {result['repeats']} interleaved rounds, "
        f"{result['threads']} thread(s); × = median per-round ratio to dense. MACs per sample "
        "(convs + linear); 'selected' rows are held to the multiply-adds of the 'all' row of "
        "the same rank ('= all': the same layers and ranks). Test accuracy on the 360 test "
        "digits: as decomposed, after recalibrating batch norm on the training images, after "
        "fine-tuning.",
        f"total {result['seconds']:.0f} s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=8, help="training epochs of the dense model")
    p.add_argument("--fine-tune", type=int, default=4, help="fine-tuning epochs of every model")
    p.add_argument("--lr", type=float, default=2e-3, help="fine-tuning learning rate (AdamW)")
    p.add_argument("--width", type=float, default=0.5, help="width multiplier of 16-32-64")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.25])
    p.add_argument("--timing-widths", type=float, nargs="*", default=[2.0],
                   help="widths timed with random weights (default 2)")
    p.add_argument("--methods", nargs="+", choices=("svd", "qr"), default=["svd", "qr"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--min-seconds", type=float, default=0.2, help="shortest timed sample")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help='one JSON object {"rows": [...], ...}')
    args = p.parse_args()
    result = run(args)
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
