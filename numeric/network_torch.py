"""Running an :class:`algebra.Network` layer by layer with ``torch.nn.functional``.

This is the floating-point evaluation of the same DAG that :mod:`algebra.collapse`
collapses: ``F.pad(mode)`` + ``F.conv{n}d`` for convolutions, ``F.conv_transpose{n}d``,
per-channel scale and shift, ``F.avg_pool{n}d``, mean over the spatial axes, flatten and
``F.linear``.  Weights are converted once (exact rationals and sympy numbers to the
requested dtype); symbolic weights are refused.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.network import (AdaptiveAvgPool, Add, AvgPool, ChannelAffine, Concat, Conv,
                               ConvTranspose, Flatten, GlobalAvgPool, Input, Linear, Network,
                               Split)
from .functional import adaptive_avg_pool_nd, avg_pool, conv_nd, conv_transpose_nd
from .inputs import check_float_dtype, rounded_tensor

__all__ = ["NetworkModule", "network_forward"]


def _pad_list(padding: tuple[tuple[int, int], ...]) -> list[int]:
    """``F.pad`` order: last axis first, ``(left, right)`` each."""
    out: list[int] = []
    for left, right in reversed(padding):
        out += [left, right]
    return out


class NetworkModule(torch.nn.Module):
    """``nn.Module`` evaluating a :class:`Network` on batches ``(B, C, *n)``."""

    def __init__(self, network: Network, dtype: torch.dtype = torch.float64):
        super().__init__()
        if not isinstance(network, Network):
            raise InvalidTypeError(f"NetworkModule needs an algebra Network, got {type(network).__name__}")
        check_float_dtype(dtype)
        self.network = network
        self._checked: set[tuple[int, ...]] = set()
        self.order = network.order()
        self.dtype = dtype
        self.params: dict[str, dict[str, torch.Tensor | None]] = {}
        for name in self.order:
            node = network.nodes[name]
            if isinstance(node, (Conv, ConvTranspose, Linear)):
                self.params[name] = {
                    "weight": rounded_tensor(node.weight, dtype, f"node {name!r} weight"),
                    "bias": None if node.bias is None else rounded_tensor(node.bias, dtype, f"node {name!r} bias")}
            elif isinstance(node, ChannelAffine):
                self.params[name] = {
                    "scale": rounded_tensor(list(node.scale), dtype, f"node {name!r} scale"),
                    "shift": None if node.shift is None else rounded_tensor(list(node.shift), dtype, f"node {name!r} shift")}
            elif isinstance(node, Add) and node.coefficients is not None:
                self.params[name] = {"coefficients": rounded_tensor(list(node.coefficients), dtype,
                                                             f"node {name!r} coefficients")}

    def _check_input(self, x: Any) -> None:
        """``x`` must be a real tensor of shape ``(B, C, *n)`` the network accepts."""
        net = self.network
        expected = f"(batch, {net.in_channels}{', n' * net.ndim})"
        if not isinstance(x, torch.Tensor):
            raise InvalidTypeError(f"the input must be a torch.Tensor of shape {expected}, got "
                                   f"{type(x).__name__} (convert it with torch.as_tensor)")
        if x.is_complex():
            raise InvalidTypeError(f"complex input ({x.dtype}) not supported: the network is real")
        if x.ndim != net.ndim + 2:
            raise InvalidInputError(f"the input must have shape {expected} ({net.ndim + 2} axes, the "
                                    f"first the batch), got {tuple(x.shape)}")
        shape = tuple(x.shape[1:])
        if shape in self._checked:
            return
        if shape[0] != net.in_channels:
            raise InvalidInputError(f"the network takes {net.in_channels} input channels: expected "
                                    f"shape {expected}, got {tuple(x.shape)}")
        try:
            net.shapes(shape)
        except InvalidInputError as exc:
            raise InvalidInputError(f"the network cannot run on an input of shape {tuple(x.shape)} "
                                    f"(batch, C, *n): {exc}") from None
        self._checked.add(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        ndim = self.network.ndim
        values: dict[str, torch.Tensor] = {}
        for name in self.order:
            node = self.network.nodes[name]
            p = self.params.get(name, {})
            if isinstance(node, Input):
                values[name] = x.to(self.dtype)
                continue
            inputs = [values[i] for i in node.inputs]
            if isinstance(node, Conv):
                h = inputs[0]
                if any(pair != (0, 0) for pair in node.padding):
                    mode = "constant" if node.mode == "zeros" else node.mode
                    h = F.pad(h, _pad_list(node.padding), mode=mode)
                out = conv_nd(ndim)(h, p["weight"], p["bias"], stride=node.stride,
                                  dilation=node.dilation, groups=node.groups)
            elif isinstance(node, ConvTranspose):
                out = conv_transpose_nd(ndim)(inputs[0], p["weight"], p["bias"], stride=node.stride,
                                    padding=node.padding, output_padding=node.output_padding,
                                    groups=node.groups, dilation=node.dilation)
            elif isinstance(node, ChannelAffine):
                view = (1, -1) + (1,) * ndim
                out = inputs[0] * p["scale"].view(view)
                if p["shift"] is not None:
                    out = out + p["shift"].view(view)
            elif isinstance(node, Add):
                if "coefficients" in p:
                    out = sum(c * v for c, v in zip(p["coefficients"], inputs))
                else:
                    out = sum(inputs[1:], inputs[0])
            elif isinstance(node, Concat):
                out = torch.cat(inputs, dim=1)
            elif isinstance(node, Split):
                out = inputs[0][:, node.start:node.stop]
            elif isinstance(node, AvgPool):
                out = avg_pool(inputs[0], node.kernel_size, node.stride, node.padding,
                               node.ceil_mode, node.count_include_pad, node.divisor_override)
            elif isinstance(node, AdaptiveAvgPool):
                out = adaptive_avg_pool_nd(ndim)(inputs[0], node.output_size)
            elif isinstance(node, GlobalAvgPool):
                out = inputs[0].mean(dim=tuple(range(2, 2 + ndim)), keepdim=True)
            elif isinstance(node, Flatten):
                out = inputs[0].flatten(1)
            elif isinstance(node, Linear):
                out = F.linear(inputs[0], p["weight"], p["bias"])
            else:
                raise TypeError(f"node {name!r}: no torch evaluation for {type(node).__name__}")
            values[name] = out
        return values[self.network.output_name]


def network_forward(network: Network, x: torch.Tensor, dtype: torch.dtype = torch.float64
                    ) -> torch.Tensor:
    """``NetworkModule(network, dtype)(x)``."""
    return NetworkModule(network, dtype)(x)
