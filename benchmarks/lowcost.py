"""Seed 002 measured: low-cost channel couplings and PDE blocks vs a fully coupled ResNet.

On scikit-learn's digits (8×8) and the same digits resized to 28×28, the same network
(:class:`laurentnet.bridge.lowcost_resnet.LowCostResNet`: stem, two stages of
``--blocks`` blocks at widths 16 and 32 with a 1×1 + avg-pool transition, global pooling,
a linear classifier; circular padding everywhere) with different blocks:

=======================  ====================================================================
``resnet_dense``         ``relu(Y + BN(K2 relu(BN(K1 Y))))``, ``K`` fully coupled 3×3 (the baseline)
``resnet_lean``          the same with lean ``K`` (depthwise 3×3 + 1×1)
``resnet_circ``          the same with block-circulant ``K`` (4 blocks, FFT over channels)
``pde_explicit``         ``Y − h Kᵀ relu(BN(K Y))``, lean ``K``, ``h = 0.5`` fixed (no step rule)
``pde_explicit_stable``  the same with ``h`` clamped to ``0.9 h_max`` at every training step
``pde_implicit``         ``(I + h LᵀL)^{-1}(Y − h Kᵀ relu(BN(K Y)))``, lean ``K``, depthwise ``L``,
                         ``h = 0.5`` (the implicit diffusion is stable for every ``h``)
=======================  ====================================================================

Each variant is trained from the same seed with the package's trainer
(:func:`laurentnet.bridge.trainer.train`: AdamW, cosine learning rate, batch 64, constant
skip weight 1, deterministic, ``--threads`` threads), then for ``pde_explicit_stable`` the
step rule is applied once more after the last optimizer step (``enforce_stability_``) and
the test accuracy is measured on the model as deployed.  Per row:

* ``params`` (all trainable weights) and ``coupling`` (the weights of the block couplings);
* ``MACs`` per image: torch's FLOP counter on one eval forward, ÷ 2 — convolutions and the
  linear layer; the FFTs of the block-circulant and implicit layers are not multiply-adds
  of a convolution and are not counted;
* ``fwd`` (eval, batch 256) and ``fwd+bwd`` (train mode, batch 64, no optimizer step, the
  step rule switched off: its cost is ``enforce``, one call per block per step) in ms: the
  median of interleaved rounds (:func:`laurentnet.bridge.timing.interleaved_times`), and
  the median per-round ratio to the dense ResNet's time;
* ``acc`` test accuracy (360 test images), ``train`` seconds, and for PDE variants the
  largest ``h_eff / h_max`` of their explicit steps on their grids (≤ 1: every step
  non-expansive; above 1 the linearized step amplifies its top mode).

    python benchmarks/lowcost.py [--sizes 8,28] [--epochs 20,12] [--variants ...] [--threads 1]
                                 [--repeats 5] [--seed 0] [--json]

One table per run, or one JSON object with ``--json`` (``rows``: one object per variant and
data set).  The default run takes a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from laurentnet.bridge.data import digits  # noqa: E402
from laurentnet.bridge.lowcost_resnet import LowCostResNet, coupling_layers  # noqa: E402
from laurentnet.bridge.pde_blocks import DiffusionReaction, enforce_stability_  # noqa: E402
from laurentnet.bridge.schedules import FixedSchedule  # noqa: E402
from laurentnet.bridge.timing import interleaved_times  # noqa: E402
from laurentnet.bridge.trainer import TrainConfig, evaluate, train  # noqa: E402

STABLE = {"stability": "clamp_h", "margin": 0.9}
VARIANTS: dict[str, dict[str, Any]] = {
    "resnet_dense": dict(block="residual", coupling="dense"),
    "resnet_lean": dict(block="residual", coupling="lean"),
    "resnet_circ": dict(block="residual", coupling="block_circulant",
                        coupling_options={"blocks": 4}),
    "pde_explicit": dict(block="pde_explicit", coupling="lean"),
    "pde_explicit_stable": dict(block="pde_explicit", coupling="lean", pde_options=STABLE),
    "pde_implicit": dict(block="pde_implicit", coupling="lean"),
}
BASELINE = "resnet_dense"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="8,28", help="image sizes (digits resized), comma separated")
    p.add_argument("--epochs", default="20,12", help="epochs per size (one value: all sizes)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    p.add_argument("--blocks", type=int, default=2, help="blocks per stage")
    p.add_argument("--h", type=float, default=0.5, help="PDE step before the step rule")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.sizes = [int(v) for v in args.sizes.split(",")]
    epochs = [int(v) for v in args.epochs.split(",")]
    args.epochs = epochs * len(args.sizes) if len(epochs) == 1 else epochs
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or len(args.epochs) != len(args.sizes) or BASELINE not in args.variants:
        p.error(f"unknown variants {unknown}, or --epochs not one per size, or {BASELINE} "
                "(the baseline) missing")
    return args


def build(name: str, args: argparse.Namespace) -> LowCostResNet:
    torch.manual_seed(args.seed)
    return LowCostResNet(**VARIANTS[name], blocks_per_stage=args.blocks, h=args.h)


def count_macs(model: torch.nn.Module, size: int) -> int:
    """Multiply-adds of one eval forward of one image (FLOP counter ÷ 2)."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, size, size))
    return counter.get_total_flops() // 2


def step_ratio(model: torch.nn.Module) -> float | None:
    """``max h_eff / h_max`` over the explicit steps (on the grid each last saw)."""
    steps = [m.stable_step(m.last_grid) for m in model.modules()
             if isinstance(m, DiffusionReaction) and m.last_grid is not None]
    return max(s.h / s.h_max for s in steps) if steps else None


def enforce_seconds(model: torch.nn.Module, repeats: int) -> float | None:
    """Median seconds of applying the step rule to every block once (one training step);
    None for a model without a rule."""
    if not any(isinstance(m, DiffusionReaction) and m.stability for m in model.modules()):
        return None
    probe = copy.deepcopy(model)
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        enforce_stability_(probe)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def train_variant(name: str, data: Any, epochs: int, args: argparse.Namespace) -> dict[str, Any]:
    model = build(name, args)
    start = time.perf_counter()
    train(model, data, FixedSchedule("constant"),
          TrainConfig(epochs=epochs, batch_size=64, optimizer="adamw", seed=args.seed,
                      threads=args.threads), progress=False)
    seconds = time.perf_counter() - start
    if any(isinstance(m, DiffusionReaction) and m.stability for m in model.modules()):
        enforce_stability_(model)          # the last optimizer step came after the last rule
    _, accuracy = evaluate(model.eval(), data.x_test, data.y_test)
    return {"model": model, "accuracy": accuracy, "train_seconds": seconds}


def _timing_copy(model: torch.nn.Module) -> torch.nn.Module:
    probe = copy.deepcopy(model)
    for m in probe.modules():
        if isinstance(m, DiffusionReaction):
            m.stability = None             # timed separately (enforce)
    return probe


def candidates(models: dict[str, torch.nn.Module], size: int) -> dict[str, Callable[[], Any]]:
    """``name:fwd`` (eval, batch 256) and ``name:train`` (forward + backward, batch 64)."""
    gen = torch.Generator().manual_seed(1)
    x_eval = torch.rand(256, 1, size, size, generator=gen)
    x_train = torch.rand(64, 1, size, size, generator=gen)
    y_train = torch.randint(0, 10, (64,), generator=gen)
    out: dict[str, Callable[[], Any]] = {}
    for name, model in models.items():
        evaluator, trainee = _timing_copy(model).eval(), _timing_copy(model).train()

        def forward(m=evaluator) -> Any:
            return m(x_eval)

        def step(m=trainee) -> None:
            with torch.inference_mode(False), torch.enable_grad():
                m.zero_grad(set_to_none=True)
                F.cross_entropy(m(x_train), y_train).backward()
        out[f"{name}:fwd"], out[f"{name}:train"] = forward, step
    return out


def run_size(size: int, epochs: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    data = digits(size, seed=args.seed)
    trained = {name: train_variant(name, data, epochs, args) for name in args.variants}
    models = {name: t["model"] for name, t in trained.items()}
    timings = interleaved_times(candidates(models, size), repeats=args.repeats,
                                threads=args.threads)
    rows = []
    for name, t in trained.items():
        model = t["model"]
        enforce = enforce_seconds(model, args.repeats)
        rows.append({
            "data": f"digits {size}x{size}", "variant": name, "epochs": epochs,
            "params": sum(p.numel() for p in model.parameters()),
            "coupling_params": sum(c.num_parameters for c in coupling_layers(model)),
            "macs_per_image": count_macs(model, size),
            "forward_ms": 1e3 * timings.median[f"{name}:fwd"],
            "train_step_ms": 1e3 * timings.median[f"{name}:train"],
            "forward_vs_dense": timings.ratio(f"{name}:fwd", f"{BASELINE}:fwd"),
            "train_step_vs_dense": timings.ratio(f"{name}:train", f"{BASELINE}:train"),
            "forward_spread": timings.spread(f"{name}:fwd"),
            "enforce_ms": None if enforce is None else 1e3 * enforce,
            "test_accuracy": t["accuracy"], "train_seconds": t["train_seconds"],
            "h_over_h_max": step_ratio(model),
        })
    return rows


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    head = ("data", "variant", "params", "coupling", "MACs/img", "fwd ms", "×dense",
            "fwd+bwd ms", "×dense", "enforce ms", "acc", "train s", "h/h_max")
    body = []
    for r in rows:
        body.append((r["data"], r["variant"], f"{r['params']:,}", f"{r['coupling_params']:,}",
                     f"{r['macs_per_image']:,}", f"{r['forward_ms']:.2f}",
                     f"{r['forward_vs_dense']:.2f}", f"{r['train_step_ms']:.2f}",
                     f"{r['train_step_vs_dense']:.2f}",
                     "-" if r["enforce_ms"] is None else f"{r['enforce_ms']:.2f}",
                     f"{100 * r['test_accuracy']:.1f}%", f"{r['train_seconds']:.0f}",
                     "-" if r["h_over_h_max"] is None else f"{r['h_over_h_max']:.3f}"))
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(line, widths))) for line in [head, *body]]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"(epochs {dict(zip(args.sizes, args.epochs))}, seed {args.seed}, "
                 f"{args.threads} thread(s), times: median of {args.repeats} interleaved rounds, "
                 "×dense = median per-round ratio; MACs exclude FFTs)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)    # every timed and untimed call alike
    start = time.perf_counter()
    rows = [row for size, epochs in zip(args.sizes, args.epochs) for row in run_size(size, epochs, args)]
    if args.json:
        print(json.dumps({"rows": rows, "config": {k: v for k, v in vars(args).items() if k != "json"},
                          "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                      "cpus": os.cpu_count()},
                          "seconds": time.perf_counter() - start}, indent=2))
    else:
        print(table(rows, args))
        print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
