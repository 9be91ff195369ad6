"""``laurentnet train``: train a ResNet while its skips fade out, deploy it skipless, time it.

The command builds a model of the zoo (``--model``, ``--block``, ``--width-multiplier``),
loads the data (``--data``: digits, digits28, mnist:FOLDER, synthetic), trains it with a
skip-weight schedule (``--schedule`` with ``--t0``/``--per-block``, or ``auto``) into the
output folder (checkpoint, JSON-lines log, plots; ``--resume`` continues), then writes
``model.pt2``: with every λ at 0, the network without skips and with batch norm folded
(verified against the λ = 0 network); with skips kept (``--schedule constant``), the
network with batch norm folded.  It ends with the timing table (median of interleaved
rounds on a batch of ``--timing-batch``): the trained network as is, with batch norm folded,
and deployed.  Under ``torchrun --nproc_per_node N`` the training runs data-parallel;
rank 0 alone deploys, prints and writes.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run_train"]

DEPLOYED = "model.pt2"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``train`` on the ``laurentnet`` sub-command parsers."""
    from .models.resnet import MODELS
    from .schedules import PER_BLOCK, SCHEDULES
    p = commands.add_parser(
        "train", help="train a ResNet with fading skips, deploy it skipless (.pt2), time it",
        description=__doc__.split("\n\n")[1].replace("\n", " ").replace("``", ""))
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="output folder (created if its parent exists)")
    p.add_argument("--model", choices=sorted(MODELS), default="resnet_small",
                   help="architecture (default resnet_small)")
    p.add_argument("--block", choices=("basic", "bottleneck"), help="override the block type")
    p.add_argument("--width-multiplier", type=_positive_float, default=1.0,
                   help="scale every stage width (default 1)")
    p.add_argument("--data", default="digits",
                   help="digits | digits28 | mnist:FOLDER | synthetic (default digits)")
    p.add_argument("--schedule", choices=SCHEDULES, default="linear",
                   help="skip-weight schedule (default linear; constant keeps the skips)")
    p.add_argument("--t0", type=_positive_float,
                   help="epoch at which λ reaches 0 (default: half the epochs)")
    p.add_argument("--per-block", default="all", choices=[*PER_BLOCK, "deep-first", "shallow-first"],
                   help="all blocks together, deep blocks first or shallow first")
    p.add_argument("--steps", type=_positive_int, default=4, help="drops of the step schedule")
    p.add_argument("--rate", type=_positive_float, default=4.0, help="rate of the exponential one")
    p.add_argument("--epochs", type=_positive_int, default=30, help="epochs (default 30)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="global batch (default 64)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--lr", type=_positive_float, help="learning rate (default 0.05 sgd, 2e-3 adamw)")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and data order")
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="torch threads per process (default 1: small models train fastest so)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in DIR")
    p.add_argument("--no-plots", action="store_true", help="do not write train.png")
    p.add_argument("--repeats", type=_positive_int, default=7, help="timing rounds (default 7)")
    p.add_argument("--timing-batch", type=_positive_int, default=256,
                   help="batch size of the timing (default 256)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_train)
    return p


def _schedule(args: argparse.Namespace) -> Any:
    from .schedules import make_schedule
    per_block = args.per_block.replace("-", "_")
    if args.schedule == "auto":
        if args.t0 is not None or per_block != "all":
            raise _usage("--schedule auto finds its own end point: drop --t0 / --per-block")
        return make_schedule("auto")
    if args.schedule == "constant":
        return make_schedule("constant")
    t0 = args.t0 if args.t0 is not None else args.epochs / 2
    return make_schedule(args.schedule, t0=t0, per_block=per_block, steps=args.steps,
                         rate=args.rate)


def _usage(message: str) -> Exception:
    from .train_io import TrainingError
    return TrainingError(message)


def _model(args: argparse.Namespace, data: Any) -> Any:
    import torch
    from .models.resnet import build_resnet
    torch.manual_seed(args.seed)
    return build_resnet(args.model, in_channels=data.in_channels, num_classes=data.num_classes,
                        block=args.block, width_multiplier=args.width_multiplier)


def _deploy(model: Any, data: Any, out: Path, skipless: bool) -> tuple[Any, dict[str, Any]]:
    """``model.pt2``: skipless (verified) or, with skips, batch norm folded (verified)."""
    from .count_layers import count_layers
    from .safe_load import load
    from .skip_removal import deploy_skipless, fold_batchnorm
    from .verify import verify
    example = data.x_test[:2]
    if skipless:
        dep = deploy_skipless(model, example, out / DEPLOYED, data=data.x_test)
        return dep.module, {"kind": "skipless", **dep.as_dict(), "text": dep.table()}
    conversion = fold_batchnorm(model, example)
    path = conversion.save(out / DEPLOYED)
    module = load(path).module
    check = verify(model.eval(), module, example, data=data.x_test)
    text = (f"deployed              {path} (skips kept: λ = "
            f"{', '.join(sorted({f'{float(b.skip_weight):g}' for b in model.blocks()}))}; "
            f"batch norm folded)\nverification          {'OK' if check.ok else 'FAILED'}: max rel "
            f"error {check.max_rel_error:.2e} (tolerance {check.tolerance:.1e})")
    return module, {"kind": "bn_folded_with_skips", "ok": check.ok, "path": str(path),
                    "layers_after": count_layers(module), "verification": check.as_dict(),
                    "text": text}


def _timing(model: Any, deployed: Any, data: Any, args: argparse.Namespace) -> Any:
    import torch
    from .skip_removal import fold_batchnorm
    from .timing import interleaved_times
    n = args.timing_batch
    x = data.x_test[:n]
    if len(x) < n:  # repeat the test images to fill the batch
        x = x.repeat((n + len(x) - 1) // len(x), 1, 1, 1)[:n]
    folded = fold_batchnorm(model, x[:2]).module
    model.eval()
    return interleaved_times({"trained": lambda: model(x), "bn_folded": lambda: folded(x),
                              "deployed": lambda: deployed(x)}, repeats=args.repeats,
                             threads=args.threads), torch.Size(x.shape)


_LABELS = {"trained": "trained (skips, BN)", "bn_folded": "BN folded (skips kept)",
           "deployed": "deployed model.pt2"}


def _summary(args: argparse.Namespace, data: Any, result: Any, deploy_text: str) -> str:
    last = result.history[-1] if result.history else {}
    zero = "never (skips kept)" if result.zero_at is None else f"epoch {result.zero_at:g}"
    if result.forced_zero:
        zero += " (forced by the budget reserve)"
    rows = [("data", data.describe()), ("model", f"{args.model} ×{args.width_multiplier:g}"),
            ("schedule", args.schedule), ("λ reached 0", zero),
            ("epochs", f"{len(result.history)} ({result.seconds:.1f} s this run, "
                       f"{result.world_size} process{'es' if result.world_size > 1 else ''})"),
            ("val accuracy", f"{100 * last.get('val_accuracy', math.nan):.2f}%"),
            ("test accuracy", f"{100 * result.test_accuracy:.2f}% (at the final λ)")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + "\n" + deploy_text


def run_train(args: argparse.Namespace) -> int:
    """The ``train`` command (module docstring); exit 0 when the deployment verified."""
    from .data import load_data
    from .trainer import TrainConfig, train
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise _usage(f"--output {out}: exists and is not a folder")
    if args.seed < 0:
        raise _usage(f"--seed must be >= 0, got {args.seed}")
    data = load_data(args.data, seed=args.seed)
    schedule = _schedule(args)
    model = _model(args, data)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                         lr=args.lr, lr_schedule=args.lr_schedule, weight_decay=args.weight_decay,
                         seed=args.seed, threads=args.threads)
    result = train(model, data, schedule, config, out_dir=out, resume=args.resume,
                   progress=not (args.json or args.no_progress), plot=not args.no_plots)
    if result.rank != 0:
        return 0
    deployed, deployment = _deploy(model, data, out, result.skipless)
    timings, shape = _timing(model, deployed, data, args)
    payload = {"data": data.describe(), "model": args.model, "schedule": schedule.config(),
               "train": {k: v for k, v in result.as_dict().items() if k != "history"},
               "history": result.history, "deployment": {k: v for k, v in deployment.items()
                                                         if k != "text"},
               "timing": {**timings.as_dict(), "batch": list(shape),
                          "time_reduction_total": 1 - timings.ratio("deployed", "trained"),
                          "time_reduction_skips": 1 - timings.ratio("deployed", "bn_folded")}}
    text = (_summary(args, data, result, deployment["text"]) + "\n\n"
            + f"prediction time, batch {shape[0]}:\n" + timings.table("trained", _LABELS))
    print(json.dumps(payload, default=str) if args.json else text)
    return 0 if deployment["ok"] else 1
