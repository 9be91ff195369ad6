"""Torch layers for the structured channel couplings (2-D, stride 1, no bias, "same" size).

Every layer computes ``y = K x`` with ``y[o, i] = Σ_{c,a} w[o, c, a] x[c, i + a − p]``,
``p = k // 2`` (odd ``k``), zero or circular padding, by the shared functions of
:mod:`laurentnet.numeric.coupling_ops`, and its adjoint ``Kᵀ x`` (``K(1/z)ᵀ``, the
gradient of ``K``) by :meth:`CouplingConv2d.adjoint`.  Each knows its parameter count
(``num_parameters``, the module's own ``numel``) and multiply-adds (:meth:`macs`), gives
its exact and float twins (:meth:`structure`, :meth:`exact_structure`) and the dense
weight of the equivalent ``nn.Conv2d`` (:meth:`dense_weight`, differentiable):

=========================  ================================  =============================  ======================
layer                      ``K``                             parameters                     multiply-adds / pixel
=========================  ================================  =============================  ======================
:class:`DenseConv2d`       fully coupled ``k x k``           ``C_out C_in k²``              the same
:class:`DepthwiseConv2d`   ``diag(d_c)``                     ``C k²``                       the same
:class:`PointwiseConv2d`   constant ``M``                    ``C_out C_in``                 the same
:class:`GroupedConv2d`     ``diag(B_g)``                     ``C_out C_in k² / g``          the same
:class:`LeanConv2d`        ``D + M``                         ``C k² + C²``                  the same
:class:`BlockCirculantConv2d`  ``circ(A_0 .. A_{m-1})``      ``m b_out b_in k²``            ``4 J b_out b_in k²`` (fft), ``m² b_out b_in k²`` (dense)
=========================  ================================  =============================  ======================

The block-circulant layer applies ``K`` through an FFT over channels by default
(``method="fft"``, ``J = ⌊m/2⌋ + 1``; the FFTs themselves are not counted as
multiply-adds), or materializes the dense weight from its first block row and runs one
convolution (``method="dense"``: the same function, ``m`` times fewer weights, the dense
cost).  For :func:`laurentnet.bridge.convert` the FFT path is a boundary (``fft_r2c``,
``view_as_real``/``complex``, ``fft_c2r`` are not ops it knows to be linear: kept as they
are); the dense path and every other layer here are ordinary convolutions to it.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..algebra import structured as exact
from ..algebra.errors import InvalidInputError
from ..algebra.validate import choice_arg, int_arg
from ..numeric import structured as twin
from ..numeric.coupling_ops import (PADDING_MODES, adjoint_weight, block_circulant_adjoint_weight,
                                    block_circulant_conv, block_circulant_dense_weight, conv_same)
from ..numeric.kernels import KernelOperator

__all__ = ["CouplingConv2d", "DenseConv2d", "DepthwiseConv2d", "PointwiseConv2d",
           "GroupedConv2d", "LeanConv2d", "BlockCirculantConv2d", "LAYERS", "make_coupling"]


def _kernel(k: Any) -> int:
    k = int_arg(k, "kernel_size", minimum=1)
    if k % 2 == 0:
        raise InvalidInputError(f"kernel_size must be odd (a centred 'same' stencil), got {k}")
    return k


def _init(weight: torch.Tensor, fan_in: int) -> None:
    """He-normal with the fan-in of the dense equivalent (``std = sqrt(2 / fan_in)``)."""
    with torch.no_grad():
        weight.normal_(0.0, math.sqrt(2.0 / fan_in))


class CouplingConv2d(nn.Module):
    """Base of the coupling layers: ``forward`` is ``K x``, :meth:`adjoint` is ``Kᵀ x``."""

    in_channels: int
    out_channels: int
    kernel_size: int
    padding_mode: str

    def _setup(self, in_channels: int, out_channels: int, kernel_size: int,
               padding_mode: str) -> None:
        self.in_channels = int_arg(in_channels, "in_channels", minimum=1)
        self.out_channels = int_arg(out_channels, "out_channels", minimum=1)
        self.kernel_size = _kernel(kernel_size)
        self.padding_mode = choice_arg(padding_mode, "padding_mode", PADDING_MODES)

    @property
    def padding(self) -> tuple[int, int]:
        return (self.kernel_size // 2,) * 2

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def dense_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        """``(C_out, C_in, k, k)``: the weight of the equivalent dense convolution."""
        raise NotImplementedError

    def adjoint(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``Kᵀ x`` (the adjoint under the same padding mode)."""
        raise NotImplementedError

    def structure(self) -> twin.Coupling:  # pragma: no cover - abstract
        """The float64 twin (:mod:`laurentnet.numeric.structured`) of the current weights."""
        raise NotImplementedError

    def exact_structure(self) -> exact.Coupling:
        """The exact twin (every weight as its exact rational)."""
        return self.structure().to_algebra()

    def kernel_operator(self) -> KernelOperator:
        """The dense operator ``K`` (float64, detached)."""
        return KernelOperator.from_weight(self.dense_weight().detach().double(), padding=self.padding)

    def macs(self, size: int | tuple[int, int]) -> int:
        """Multiply-adds for one ``size`` image (the layer's own method)."""
        return self.structure().macs(size)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"padding_mode={self.padding_mode!r}")


class DenseConv2d(CouplingConv2d):
    """Fully coupled ``k x k``: ``weight (C_out, C_in, k, k)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 padding_mode: str = "zeros"):
        super().__init__()
        self._setup(in_channels, out_channels, kernel_size, padding_mode)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, self.kernel_size,
                                               self.kernel_size))
        _init(self.weight, in_channels * self.kernel_size ** 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_same(x, self.weight, self.padding, 1, self.padding_mode)

    def adjoint(self, x: torch.Tensor) -> torch.Tensor:
        w, p = adjoint_weight(self.weight, self.padding)
        return conv_same(x, w, p, 1, self.padding_mode)

    def dense_weight(self) -> torch.Tensor:
        return self.weight

    def structure(self) -> twin.Dense:
        return twin.Dense.from_weight(self.weight.detach().double(), padding=self.padding)


class GroupedConv2d(CouplingConv2d):
    """Block diagonal: ``weight (C_out, C_in / g, k, k)``, ``groups = g``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 groups: int = 1, padding_mode: str = "zeros"):
        super().__init__()
        self._setup(in_channels, out_channels, kernel_size, padding_mode)
        self.groups = int_arg(groups, "groups", minimum=1)
        if in_channels % groups or out_channels % groups:
            raise InvalidInputError(f"groups={groups} must divide in_channels={in_channels} and "
                                    f"out_channels={out_channels}")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               self.kernel_size, self.kernel_size))
        _init(self.weight, in_channels // groups * self.kernel_size ** 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_same(x, self.weight, self.padding, self.groups, self.padding_mode)

    def adjoint(self, x: torch.Tensor) -> torch.Tensor:
        w, p = adjoint_weight(self.weight, self.padding, self.groups)
        return conv_same(x, w, p, self.groups, self.padding_mode)

    def dense_weight(self) -> torch.Tensor:
        g, k = self.groups, self.kernel_size
        opg, ipg = self.out_channels // g, self.in_channels // g
        blocks = self.weight.reshape(g, opg, ipg, k, k)
        dense = blocks.new_zeros(g, opg, g, ipg, k, k)
        index = torch.arange(g)
        dense[index, :, index] = blocks
        return dense.reshape(self.out_channels, self.in_channels, k, k)

    def structure(self) -> twin.Grouped:
        return twin.Grouped.from_weight(self.weight.detach().double(), groups=self.groups,
                                        padding=self.padding)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", groups={self.groups}"


class DepthwiseConv2d(GroupedConv2d):
    """``diag(d_c)``: ``weight (C, 1, k, k)`` (a grouped convolution with ``g = C``)."""

    def __init__(self, channels: int, kernel_size: int = 3, padding_mode: str = "zeros"):
        super().__init__(channels, channels, kernel_size, channels, padding_mode)

    def structure(self) -> twin.Depthwise:
        return twin.Depthwise.from_weight(self.weight.detach().double(), padding=self.padding)


class PointwiseConv2d(CouplingConv2d):
    """A 1x1 convolution: ``weight (C_out, C_in, 1, 1)``."""

    def __init__(self, in_channels: int, out_channels: int, padding_mode: str = "zeros"):
        super().__init__()
        self._setup(in_channels, out_channels, 1, padding_mode)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1))
        _init(self.weight, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_same(x, self.weight, (0, 0), 1, self.padding_mode)

    def adjoint(self, x: torch.Tensor) -> torch.Tensor:
        return conv_same(x, self.weight.transpose(0, 1), (0, 0), 1, self.padding_mode)

    def dense_weight(self) -> torch.Tensor:
        return self.weight

    def structure(self) -> twin.Pointwise:
        return twin.Pointwise.from_weight(self.weight.detach().double())


class LeanConv2d(CouplingConv2d):
    """``K = D + M``: a depthwise ``k x k`` plus a 1x1 convolution, summed."""

    def __init__(self, channels: int, kernel_size: int = 3, padding_mode: str = "zeros"):
        super().__init__()
        self._setup(channels, channels, kernel_size, padding_mode)
        self.depthwise = DepthwiseConv2d(channels, kernel_size, padding_mode)
        self.pointwise = PointwiseConv2d(channels, channels, padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise(x) + self.pointwise(x)

    def adjoint(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise.adjoint(x) + self.pointwise.adjoint(x)

    def dense_weight(self) -> torch.Tensor:
        p = self.kernel_size // 2
        centre = nn.functional.pad(self.pointwise.weight, (p, p, p, p))
        return self.depthwise.dense_weight() + centre

    def structure(self) -> twin.Lean:
        return twin.Lean(self.depthwise.structure(), self.pointwise.structure())


class BlockCirculantConv2d(CouplingConv2d):
    """``m x m`` blocks, block ``(r, c)`` = ``A_{(c − r) mod m}``; ``weight (m, b_out, b_in,
    k, k)`` is the first block row (channels block-major: ``C = m b``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 blocks: int = 4, padding_mode: str = "zeros", method: str = "fft"):
        super().__init__()
        self._setup(in_channels, out_channels, kernel_size, padding_mode)
        self.blocks = int_arg(blocks, "blocks", minimum=1)
        if in_channels % blocks or out_channels % blocks:
            raise InvalidInputError(f"blocks={blocks} must divide in_channels={in_channels} and "
                                    f"out_channels={out_channels}")
        self.method = choice_arg(method, "method", ("fft", "dense"))
        k = self.kernel_size
        self.weight = nn.Parameter(torch.empty(blocks, out_channels // blocks,
                                               in_channels // blocks, k, k))
        _init(self.weight, in_channels * k * k)

    def _apply_first_row(self, x: torch.Tensor, weight: torch.Tensor,
                         padding: tuple[int, ...]) -> torch.Tensor:
        if self.method == "fft":
            return block_circulant_conv(x, weight, padding, self.padding_mode)
        return conv_same(x, block_circulant_dense_weight(weight), padding, 1, self.padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply_first_row(x, self.weight, self.padding)

    def adjoint(self, x: torch.Tensor) -> torch.Tensor:
        w, p = block_circulant_adjoint_weight(self.weight, self.padding)
        return self._apply_first_row(x, w, p)

    def dense_weight(self) -> torch.Tensor:
        return block_circulant_dense_weight(self.weight)

    def structure(self) -> twin.BlockCirculant:
        return twin.BlockCirculant.from_weight(self.weight.detach().double(), padding=self.padding)

    def macs(self, size: int | tuple[int, int]) -> int:
        """The FFT path: ``4 J b_out b_in k²`` per pixel (FFTs not counted); dense: ``m²
        b_out b_in k²``."""
        s = self.structure()
        n = (size, size) if isinstance(size, int) else tuple(size)
        per = s.fft_macs_per_position if self.method == "fft" else s.macs_per_position
        return per * n[0] * n[1]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", blocks={self.blocks}, method={self.method!r}"


#: the layers by structure name (the names of :data:`laurentnet.algebra.STRUCTURES`)
LAYERS: dict[str, type[CouplingConv2d]] = {
    "dense": DenseConv2d, "depthwise": DepthwiseConv2d, "pointwise": PointwiseConv2d,
    "grouped": GroupedConv2d, "lean": LeanConv2d, "block_circulant": BlockCirculantConv2d}


def make_coupling(kind: str, channels: int, kernel_size: int = 3, *, padding_mode: str = "zeros",
                  groups: int = 4, blocks: int = 4, method: str = "fft") -> CouplingConv2d:
    """A square ``channels -> channels`` coupling layer of the structure ``kind``
    (:data:`LAYERS`); ``groups`` for grouped, ``blocks`` and ``method`` for block-circulant."""
    kind = choice_arg(kind, "kind", tuple(LAYERS))
    if kind == "dense":
        return DenseConv2d(channels, channels, kernel_size, padding_mode)
    if kind == "depthwise":
        return DepthwiseConv2d(channels, kernel_size, padding_mode)
    if kind == "pointwise":
        return PointwiseConv2d(channels, channels, padding_mode)
    if kind == "grouped":
        return GroupedConv2d(channels, channels, kernel_size, groups, padding_mode)
    if kind == "lean":
        return LeanConv2d(channels, kernel_size, padding_mode)
    return BlockCirculantConv2d(channels, channels, kernel_size, blocks, padding_mode, method)
