"""Small ResNets whose blocks use structured couplings or PDE steps (the seed-002 benchmark).

:class:`LowCostResNet` — stem ``conv3x3(C_in → w_1) → BN → ReLU``, then per stage ``s``
``blocks_per_stage`` blocks at width ``w_s``, between stages a transition ``conv1x1(w_s →
w_{s+1}) → BN → ReLU → avgpool 2``, then global average pooling and a linear classifier.
Stem, transitions and head are the same for every variant; only the blocks differ:

* ``block="residual"``: :class:`StructuredBasicBlock`, ``relu(λ Y + BN(K_2 relu(BN(K_1 Y))))``
  with ``K_1, K_2`` of the structure ``coupling`` (``"dense"``: the fully coupled 3x3 ResNet);
* ``block="pde_explicit"``: :class:`~.pde_blocks.ExplicitPDEBlock` ``Y + h F_K(Y)`` with one
  ``K`` of the structure ``coupling`` (batch norm inside ``F``);
* ``block="pde_implicit"``: :class:`~.pde_blocks.ImplicitPDEBlock` ``(I + h LᵀL)^{-1}(Y + h
  F_K(Y))``, ``K`` of the structure ``coupling`` and ``L`` depthwise 3x3.

PDE blocks need ``padding_mode="circular"`` for the implicit solve and for an exact
stability bound; every variant uses the same padding mode (default circular).  Every
block is a :class:`~.models.resnet.ResidualBlock`, so :func:`laurentnet.bridge.trainer.train`
trains these models (with a constant skip weight λ = 1).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..algebra.errors import InvalidInputError
from ..algebra.validate import choice_arg, int_arg
from .lowcost_layers import LAYERS, CouplingConv2d, make_coupling
from .models.resnet import ResidualBlock
from .pde_blocks import ExplicitPDEBlock, ImplicitPDEBlock

__all__ = ["StructuredBasicBlock", "LowCostResNet", "BLOCK_TYPES", "coupling_layers"]

BLOCK_TYPES = ("residual", "pde_explicit", "pde_implicit")


class StructuredBasicBlock(ResidualBlock):
    """``relu(λ Y + BN_2(K_2 relu(BN_1(K_1 Y))))`` with two coupling layers."""

    def __init__(self, first: CouplingConv2d, second: CouplingConv2d, skip_weight: float = 1.0):
        super().__init__()
        self.conv1, self.bn1 = first, nn.BatchNorm2d(first.out_channels)
        self.act1 = nn.ReLU()
        self.conv2, self.bn2 = second, nn.BatchNorm2d(second.out_channels)
        self.act2 = nn.ReLU()
        self._init_shortcut(first.in_channels, second.out_channels, 1, skip_weight)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))

    def output_activation(self) -> nn.Module:
        return self.act2


class LowCostResNet(nn.Module):
    """The benchmark network (module docstring).  ``coupling_options`` go to
    :func:`~.lowcost_layers.make_coupling` (``blocks=``, ``groups=``, ``method=``);
    ``pde_options`` to the PDE blocks' :class:`~.pde_blocks.DiffusionReaction`
    (``stability=``, ``margin=``, ``norm=``)."""

    def __init__(self, block: str = "residual", coupling: str = "dense", *,
                 widths: Sequence[int] = (16, 32), blocks_per_stage: int = 2, in_channels: int = 1,
                 num_classes: int = 10, padding_mode: str = "circular", h: float = 0.5,
                 coupling_options: dict[str, Any] | None = None,
                 pde_options: dict[str, Any] | None = None):
        super().__init__()
        self.block_type = choice_arg(block, "block", BLOCK_TYPES)
        self.coupling_type = choice_arg(coupling, "coupling", tuple(LAYERS))
        widths = tuple(int_arg(w, "widths", minimum=1) for w in widths)
        n = int_arg(blocks_per_stage, "blocks_per_stage", minimum=1)
        if not widths:
            raise InvalidInputError("widths must not be empty")
        self.padding_mode = padding_mode
        copt, popt = dict(coupling_options or {}), dict(pde_options or {})
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False,
                                            padding_mode=padding_mode),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages: list[nn.Module] = []
        for s, w in enumerate(widths):
            if s:
                stages.append(nn.Sequential(nn.Conv2d(widths[s - 1], w, 1, bias=False),
                                            nn.BatchNorm2d(w), nn.ReLU(), nn.AvgPool2d(2)))
            stages += [self._block(w, h, copt, popt) for _ in range(n)]
        self.stages = nn.Sequential(*stages)
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def _coupling(self, width: int, options: dict[str, Any]) -> CouplingConv2d:
        return make_coupling(self.coupling_type, width, 3, padding_mode=self.padding_mode, **options)

    def _block(self, width: int, h: float, copt: dict[str, Any], popt: dict[str, Any]) -> nn.Module:
        if self.block_type == "residual":
            return StructuredBasicBlock(self._coupling(width, copt), self._coupling(width, copt))
        if self.block_type == "pde_explicit":
            return ExplicitPDEBlock(self._coupling(width, copt), h, **popt)
        diffusion = make_coupling("depthwise", width, 3, padding_mode=self.padding_mode)
        return ImplicitPDEBlock(diffusion, self._coupling(width, copt), h, **popt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))


def coupling_layers(model: nn.Module) -> list[CouplingConv2d]:
    """The outermost coupling layers of ``model`` (a lean layer counts once)."""
    found: list[CouplingConv2d] = []

    def walk(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, CouplingConv2d):
                found.append(child)
            else:
                walk(child)
    walk(model)
    return found
