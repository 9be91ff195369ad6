"""``laurentnet decompose MODEL -o OUT.pt2 --rank R | --energy E [--budget KIND=VALUE]``.

Replaces convolutions of MODEL by basis convolutions (:mod:`laurentnet.bridge.decompose`):
every decomposable convolution (or ``--layers``) at rank ``R``, or each at the smallest
rank keeping the share ``E`` of ``‖W‖_F²``; with ``--budget`` only the layers the greedy
sensitivity choice picks (:mod:`laurentnet.bridge.sensitivity`), scored on ``--data``
(and ``--labels``) or, without data, on seeded random inputs by the output distortion.

The same conventions as ``collapse``: the model is loaded safely (``.pt2`` without
unpickling, state dicts with ``--arch``), the output is a ``.pt2`` program written
atomically and never over the input, and only after the check passed — the decomposed
model must compute what the model computes with the low-rank weights ``W_r = C·B``
substituted (float64 reference, dtype-aware tolerance; ``--no-verify`` skips it).  The
report gives per layer the rank, the relative reconstruction error
``‖W − C·B‖_F / ‖W‖_F`` and the multiply-adds, and for the model the parameters,
multiply-adds and how far its outputs (loss, accuracy with labels) moved.

Exit status: 0 written; 1 a check failed (the budget cannot be met, or the verification
failed): nothing written; 2 bad input; 3 internal error.
"""
from __future__ import annotations

import argparse
import copy
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``decompose`` on the ``laurentnet`` sub-command parser ``commands``."""
    from .cli import _add_memory_budget, _model_arguments
    parser = commands.add_parser(
        "decompose", help="replace convolutions by basis convolutions (rank R or energy E)",
        description="Factor the convolutions of MODEL as W = C·B (r basis filters, then a "
                    "1x1 mixing) by truncated SVD or a subset of the filters (column-pivoted "
                    "QR), optionally only in the layers a sensitivity analysis picks under a "
                    "budget, check the result and write it as a torch.export program.")
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.pt2")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--rank", type=int, metavar="R", help="rank of every decomposed layer")
    which.add_argument("--energy", type=float, metavar="E",
                       help="per layer the smallest rank keeping E of ||W||_F^2, 0 < E <= 1")
    parser.add_argument("--method", choices=("svd", "qr"), default="svd",
                        help="svd: optimal; qr: a subset of the filters, the [I; A] form "
                             "(default svd)")
    parser.add_argument("--layers", metavar="NAME,NAME",
                        help="decompose only these layers (default: every decomposable conv)")
    parser.add_argument("--budget", metavar="KIND=VALUE",
                        help="choose layers greedily by sensitivity: macs=F (keep at most F of "
                             "the multiply-adds), loss=D (metric increase <= D) or "
                             "accuracy=D (accuracy drop <= D, needs --labels)")
    parser.add_argument("--data", help="validation inputs: a .npy array or a .pt tensor (N, C, H, W)")
    parser.add_argument("--labels", help="their integer class labels: .npy or .pt, shape (N,)")
    parser.add_argument("--samples", type=int, default=64,
                        help="random inputs when no --data is given (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--no-verify", action="store_true", help="skip the verification")
    _add_memory_budget(parser)
    _model_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def _check_numbers(args: argparse.Namespace) -> None:
    import math
    from .cli import UsageError
    if args.rank is not None and args.rank < 1:
        raise UsageError(f"--rank must be a positive integer, got {args.rank}")
    if args.energy is not None and not (math.isfinite(args.energy) and 0 < args.energy <= 1):
        raise UsageError(f"--energy must be in (0, 1] (the share of ||W||_F^2 to keep), got {args.energy}")
    if args.samples < 1:
        raise UsageError(f"--samples must be a positive integer, got {args.samples}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.labels and not args.data:
        raise UsageError("--labels needs --data (the inputs they label)")


def _budget(args: argparse.Namespace) -> Any:
    from ..algebra.errors import InvalidInputError
    from .cli import UsageError
    from .sensitivity import Budget
    if args.budget is None:
        return None
    try:
        budget = Budget.parse(args.budget)
    except InvalidInputError as exc:
        raise UsageError(f"--budget: {exc}") from None
    if budget.kind == "accuracy" and not args.labels:
        raise UsageError("--budget accuracy=... needs --data and --labels")
    return budget


def _labels(path: str, count: int) -> Any:
    import numpy as np
    import torch
    from pathlib import Path
    from .cli import UsageError
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--labels {path}: no such file")
    try:
        if file.suffix == ".npy":
            value = torch.from_numpy(np.load(file, allow_pickle=False))
        elif file.suffix in (".pt", ".pth"):
            value = torch.load(file, map_location="cpu", weights_only=True)
        else:
            raise UsageError(f"--labels {path}: use a .npy array or a .pt tensor")
    except (ValueError, OSError, RuntimeError) as exc:
        raise UsageError(f"--labels {path}: cannot read it ({exc})") from None
    if not isinstance(value, torch.Tensor) or value.ndim != 1 or len(value) != count \
            or value.is_floating_point() or value.is_complex():
        raise UsageError(f"--labels {path}: expected {count} integer labels (one per input of "
                         f"--data), got {getattr(value, 'shape', type(value).__name__)} "
                         f"{getattr(value, 'dtype', '')}")
    return value.long()


def _inputs(args: argparse.Namespace, shape: tuple[int, ...], batch: int | None) -> tuple[Any, Any]:
    """Validation inputs (``--data`` or seeded random ones) and labels, a multiple of a
    fixed batch size when the program has one."""
    from .cli import UsageError, _load_data
    from .verify import random_inputs
    if args.data:
        x = _load_data(args.data)
        if tuple(x.shape[1:]) != tuple(shape):
            raise UsageError(f"--data {args.data}: inputs of shape {tuple(x.shape[1:])}, the "
                             f"model takes {tuple(shape)}")
        y = _labels(args.labels, len(x)) if args.labels else None
    else:
        x, y = random_inputs(shape, args.samples, seed=args.seed), None
    if batch:
        keep = len(x) // batch * batch
        if keep == 0:
            raise UsageError(f"the program runs on batches of exactly {batch}; give at least "
                             f"{batch} inputs")
        x, y = x[:keep], None if y is None else y[:keep]
    return x, y


def _ranks(args: argparse.Namespace, model: Any, found: Any) -> dict[str, int]:
    """The rank of every chosen layer (``--rank`` checked against each layer)."""
    from ..algebra.errors import InvalidInputError
    from .cli import UsageError
    from .decompose import choose_rank, layer_factors
    names = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None
    try:
        chosen = [found[n] for n in names] if names is not None else found.decomposable
    except InvalidInputError as exc:
        raise UsageError(f"--layers: {exc}") from None
    if not chosen:
        why = "; ".join(f"{layer.name}: {layer.reason}" for layer in found.layers)
        raise UsageError(f"{args.model}: the model has no convolution layer to decompose"
                         + (f" ({why})" if why else ""))
    ranks = {}
    for layer in chosen:
        if not layer.decomposable:
            raise UsageError(f"--layers: layer {layer.name} cannot be decomposed: {layer.reason}")
        if args.rank is not None and args.rank > layer.max_rank:
            raise UsageError(f"--rank {args.rank} is above what layer {layer.name} allows: at "
                             f"most min(C_out={layer.out_channels}, C_in·k={layer.taps}) = "
                             f"{layer.max_rank} (use --layers or --energy)")
        ranks[layer.name] = args.rank if args.rank is not None else \
            choose_rank(layer, layer_factors(model, layer), energy=args.energy)
    return ranks


def _quality(original: Any, decomposed: Any, x: Any, y: Any, chunk: int) -> dict[str, Any]:
    """How far the decomposed model's outputs moved on the validation inputs."""
    import torch
    import torch.nn.functional as F

    def outputs(model: Any) -> Any:
        with torch.no_grad():
            return torch.cat([model(x[i:i + chunk]).double() for i in range(0, len(x), chunk)])
    before, after = outputs(original), outputs(decomposed)
    out: dict[str, Any] = {"inputs": len(x), "output_rel_error": float(
        (after - before).norm() / max(float(before.norm()), 1e-300))}
    if y is not None:
        out.update(loss_before=float(F.cross_entropy(before, y)),
                   loss_after=float(F.cross_entropy(after, y)),
                   accuracy_before=float((before.argmax(1) == y).double().mean()),
                   accuracy_after=float((after.argmax(1) == y).double().mean()))
    return out


def _quality_text(q: dict[str, Any]) -> str:
    text = f"outputs on {q['inputs']} inputs: relative change {q['output_rel_error']:.3g}"
    if "accuracy_before" in q:
        text += (f"; loss {q['loss_before']:.4f} -> {q['loss_after']:.4f}, accuracy "
                 f"{100 * q['accuracy_before']:.1f}% -> {100 * q['accuracy_after']:.1f}%")
    return text


def _select(args: argparse.Namespace, model: Any, x: Any, y: Any, found: Any,
            ranks: dict[str, int], budget: Any, chunk: int) -> Any:
    from .sensitivity import select_layers, sensitivity
    report = sensitivity(model, x, y, ranks={n: [r] for n, r in ranks.items()},
                         method=args.method, found=found, chunk=chunk)
    return report, select_layers(model, report, budget)


def run(args: argparse.Namespace) -> int:
    """The command (module docstring); returns the exit status."""
    from .cli import _check_runs, _emit, _fixed_batch, _input_shape, _load
    from .conv_layers import find_conv_layers
    from .decompose import decompose, low_rank_reference
    from .files import check_output_path
    from .trace import quiet_torch
    from .verify import verify
    _check_numbers(args)
    budget = _budget(args)
    out = check_output_path(args.output, inputs=[args.model])
    loaded = _load(args.model, args)
    shape = _input_shape(args, loaded)
    _check_runs(loaded, shape)
    batch = _fixed_batch(loaded)
    x, y = _inputs(args, shape, batch)
    model, chunk = loaded.module, batch or 256
    x = x.to(next((p.dtype for p in model.parameters() if p.is_floating_point()), x.dtype))
    found = find_conv_layers(model, x[:batch or 2])
    ranks = _ranks(args, model, found)
    payload: dict[str, Any] = {"model": args.model, "method": args.method, "written": None}
    text: list[str] = []
    if budget is not None:
        report, selection = _select(args, model, x, y, found, ranks, budget, chunk)
        payload.update(sensitivity=report.as_dict(), selection=selection.as_dict())
        text += [report.table(), "", selection.describe(), ""]
        if not selection.met:
            _emit(args, payload, "\n".join(text + ["not written: the budget cannot be met"]))
            return 1
        ranks = selection.ranks
    if ranks:
        result = decompose(model, x[:batch or 2], ranks=ranks, method=args.method, found=found)
        module, reference = result.module, low_rank_reference(model, result.layers)
        payload["decomposition"] = result.as_dict()
        text.append(result.table())
    else:
        with quiet_torch():
            module = copy.deepcopy(model)
        result, reference = None, model
        text.append("no layer is decomposed within the budget: the model is written unchanged")
    quality = _quality(model, module, x, y, chunk)
    payload["quality"] = quality
    text.append(_quality_text(quality))
    if not args.no_verify:
        check = verify(reference, module, input_shape=shape, original_batch=batch,
                       converted_batch=batch)
        payload["verification"] = check.as_dict()
        text += ["", "decomposed model vs the model with the low-rank weights W_r = C·B:",
                 check.table()]
        if not check.ok:
            _emit(args, payload, "\n".join(text + ["", "not written: verification failed"]))
            return 1
    if result is not None:
        result.save(out)
    else:
        _save_unchanged(module, x[:batch or 2], batch is None, out)
    payload["written"] = str(out)
    _emit(args, payload, "\n".join(text + ["", f"written {out}"]))
    return 0


def _save_unchanged(module: Any, example: Any, dynamic: bool, out: Any) -> None:
    import torch
    from .files import atomic_write
    from .trace import quiet_torch
    x = torch.cat([example, example]) if dynamic and example.shape[0] == 1 else example
    with quiet_torch():
        program = torch.export.export(module, (x,), dynamic_shapes=(
            {0: torch.export.Dim.AUTO},) if dynamic else None)
    atomic_write(out, lambda tmp: torch.export.save(program, str(tmp)))
