"""Deploying a network trained to λ = 0: no skips, no batch norm, plain torch, verified.

After the homotopy every block computes ``act(0 · S(x) + F(x)) = act(F(x))``.
:func:`deploy_skipless` then

1. checks that every skip weight is exactly 0 (else refuses, naming the blocks);
2. removes the shortcuts — identities and 1×1 projections with their batch norms —
   (:func:`~.models.resnet.remove_zero_skips_`) from a copy of the model;
3. converts that copy with the bridge's partial collapse (``convert(mode="partial")``):
   every maximal linear segment between nonlinearities merged exactly where cheaper, so
   each ``BN ∘ conv`` becomes one convolution ``conv'`` with
   ``W' = (γ/√(σ²+ε)) W``, ``b' = β − γ μ/√(σ²+ε)``;
4. writes it as a ``.pt2`` program (atomically) and loads it back with the safe loader;
5. verifies the result against a float64 copy of the **λ = 0 network as trained** (skips
   still in place, multiplied by 0) on seeded random inputs and the given data
   (:func:`~.verify.verify`: dtype-aware tolerance).

:func:`fold_batchnorm` is step 3 alone on a network that keeps its skips (the
"BN folded, skips kept" point of the benchmark, which separates the two savings).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..algebra.errors import LaurentnetError
from .convert import Conversion, convert
from .count_layers import count_layers
from .models.resnet import ResidualBlock, remove_zero_skips_
from .verify import Verification, verify

__all__ = ["SkipRemovalError", "Deployment", "check_skipless", "deploy_skipless",
           "fold_batchnorm"]


class SkipRemovalError(LaurentnetError, ValueError):
    """A model that cannot be deployed without skips (the message says which blocks)."""


@dataclass
class Deployment:
    """What :func:`deploy_skipless` produced: the deployed ``module`` (loaded back from the
    ``.pt2`` when ``path`` was given), the ``conversion``, the ``verification`` against the
    λ = 0 network, how many shortcuts were removed, and the layer counts before/after."""
    module: nn.Module
    conversion: Conversion
    verification: Verification
    shortcuts_removed: int
    projections_removed: int
    layers_before: dict[str, int]
    layers_after: dict[str, int]
    path: Path | None

    @property
    def ok(self) -> bool:
        return bool(self.verification.ok and self.layers_after.get("batch_norm", 0) == 0)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "path": None if self.path is None else str(self.path),
                "shortcuts_removed": self.shortcuts_removed,
                "projections_removed": self.projections_removed,
                "layers_before": self.layers_before, "layers_after": self.layers_after,
                "verification": self.verification.as_dict()}

    def table(self) -> str:
        v = self.verification
        rows = [("deployed", str(self.path) if self.path else "(in memory)"),
                ("skips removed", f"{self.shortcuts_removed} shortcuts, of which "
                                  f"{self.projections_removed} 1×1 projections"),
                ("layers before", _counts(self.layers_before)),
                ("layers after", _counts(self.layers_after)),
                ("vs the λ = 0 network", f"{'OK' if v.ok else 'FAILED'}: max rel error "
                                         f"{v.max_rel_error:.2e} (tolerance {v.tolerance:.1e}, "
                                         f"{v.inputs} inputs, {v.reference})")]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {val}" for k, val in rows)


def _counts(c: dict[str, int]) -> str:
    return ", ".join(f"{c.get(k, 0)} {k.replace('_', ' ')}" for k in ("conv", "batch_norm", "linear"))


def check_skipless(model: nn.Module) -> None:
    """Refuse a model with a block whose skip weight is not exactly 0."""
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, ResidualBlock)]
    if not blocks:
        raise SkipRemovalError(f"{type(model).__name__} has no residual blocks with a skip weight")
    left = [f"{n} (λ={float(m.skip_weight):g})" for n, m in blocks
            if m.shortcut is not None and float(m.skip_weight) != 0.0]
    if left:
        shown = ", ".join(left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
        raise SkipRemovalError(f"{len(left)} of {len(blocks)} blocks still use their skip: "
                               f"{shown}; train until the schedule reaches λ = 0")


def _projections(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, ResidualBlock)
               and isinstance(m.shortcut, nn.Sequential))


def _eval_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()


def fold_batchnorm(model: nn.Module, example: torch.Tensor, *, progress: bool = False,
                   measure: bool = False) -> Conversion:
    """The partial collapse of ``model`` in eval mode (batch norms folded into their
    convolutions; skips, adds and nonlinearities kept); ``measure`` times every segment
    for the report."""
    return convert(_eval_copy(model), example, mode="partial", progress=progress,
                   measure=measure)


def deploy_skipless(model: nn.Module, example: torch.Tensor, path: str | os.PathLike | None = None,
                    *, data: torch.Tensor | None = None, samples: int = 8,
                    progress: bool = False, measure: bool = False) -> Deployment:
    """Remove the zero skips of ``model``, convert, save to ``path`` (``.pt2``) and verify
    against the λ = 0 network (module docstring).  ``example``: an input batch of the
    deployed size; ``data``: real inputs to verify on as well; ``measure``: time every
    segment in the conversion report.  ``model`` is not changed."""
    check_skipless(model)
    reference = _eval_copy(model)
    skipless = _eval_copy(model)
    projections = _projections(skipless)
    removed = remove_zero_skips_(skipless)
    conversion = convert(skipless, example, mode="partial", progress=progress, measure=measure)
    deployed: nn.Module = conversion.module
    target = None
    if path is not None:
        from .safe_load import load
        target = conversion.save(path)
        deployed = load(target).module
    check = verify(reference, deployed, example, data=data, samples=samples)
    return Deployment(deployed, conversion, check, removed, projections,
                      count_layers(reference), count_layers(deployed), target)
