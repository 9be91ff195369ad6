"""``laurentnet demo``: collapse a linear residual CNN on the digits and check it honestly.

The network (random weights from a seed, float64): a 3x3 stem, then residual blocks
``y = S x + K2 K1 x`` (``S`` the identity, or a strided 1x1 shortcut where ``K1`` has a
stride), all convolutions circularly padded, on scikit-learn's 8x8 digits.  Because every
layer is circular and every stride divides the size, the whole network is exactly

    y = down_S( K_total(z) X(z) mod (z^n - 1) ) + b_total,

one strided convolution.  The demo computes ``K_total`` exactly over QQ (weights converted
from float64 without rounding), runs the original layer by layer with
``torch.nn.functional`` in float64 and the collapsed operator as one ``conv2d``, checks the
exact collapse against the exact layer-by-layer evaluation on one image, and prints the table.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from algebra import ConvOperator, apply_operator

from .torch_conv import PeriodicConv

__all__ = ["DemoLayer", "DemoReport", "demo_network", "run_demo", "load_digits_images"]


@dataclass(frozen=True)
class DemoLayer:
    """One conv layer: ``F.conv2d(F.pad(x, p, 'circular'), weight, bias, stride)``."""
    weight: np.ndarray
    bias: np.ndarray
    stride: int

    @property
    def padding(self) -> int:
        return (self.weight.shape[-1] - 1) // 2

    def operator(self) -> ConvOperator:
        return ConvOperator.from_weight(self.weight, self.bias, stride=self.stride,
                                        padding=self.padding)

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        padded = F.pad(x, (p, p, p, p), mode="circular") if p else x
        return F.conv2d(padded, torch.from_numpy(self.weight), torch.from_numpy(self.bias),
                        stride=self.stride)


@dataclass(frozen=True)
class DemoBlock:
    """``y = shortcut(x) + second(first(x))``; ``shortcut`` is ``None`` for the identity."""
    first: DemoLayer
    second: DemoLayer
    shortcut: DemoLayer | None

    def operator(self) -> ConvOperator:
        branch = self.second.operator() @ self.first.operator()
        skip = self.shortcut.operator() if self.shortcut is not None else \
            ConvOperator.identity(branch.ring, branch.in_channels)
        return skip + branch

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.shortcut.torch_forward(x) if self.shortcut is not None else x
        return skip + self.second.torch_forward(self.first.torch_forward(x))

    def layers(self) -> list[DemoLayer]:
        return [self.first, self.second] + ([self.shortcut] if self.shortcut else [])


def _layer(rng: np.random.Generator, c_out: int, c_in: int, k: int, stride: int) -> DemoLayer:
    scale = 0.7 / np.sqrt(c_in * k * k)
    return DemoLayer(rng.normal(0.0, scale, (c_out, c_in, k, k)),
                     rng.normal(0.0, 0.1, c_out), stride)


def demo_network(seed: int = 0, channels: int = 8, strides: tuple[int, ...] = (1, 2, 1, 2)
                 ) -> tuple[DemoLayer, list[DemoBlock]]:
    """A stem ``1 -> channels`` and one residual block per entry of ``strides``."""
    rng = np.random.default_rng(seed)
    stem = _layer(rng, channels, 1, 3, 1)
    blocks = []
    for s in strides:
        first = _layer(rng, channels, channels, 3, s)
        second = _layer(rng, channels, channels, 3, 1)
        shortcut = _layer(rng, channels, channels, 1, s) if s > 1 else None
        blocks.append(DemoBlock(first, second, shortcut))
    return stem, blocks


def load_digits_images() -> torch.Tensor:
    """scikit-learn's 1797 handwritten digits (shipped with the package), as float64
    ``(1797, 1, 8, 8)`` in ``[0, 1]``."""
    from sklearn.datasets import load_digits
    images = load_digits().images.astype(np.float64) / 16.0
    return torch.from_numpy(images).unsqueeze(1)


def _median_seconds(function: Callable[[], Any], repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass
class DemoReport:
    layers: int
    blocks: int
    channels: int
    images: int
    input_size: tuple[int, int]
    total_stride: tuple[int, ...]
    kernel_size: tuple[int, ...]
    periodic_kernel_size: tuple[int, ...]
    collapse_seconds: float
    layerwise_seconds: float
    collapsed_seconds: float
    max_abs_error: float
    max_rel_error: float
    tolerance: float
    exact_match: bool
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        self.ok = self.max_rel_error <= self.tolerance and self.exact_match

    def table(self) -> str:
        rows = [
            ("network", f"linear residual CNN, {self.layers} conv layers in {self.blocks} blocks, "
                        f"{self.channels} channels, circular padding"),
            ("data", f"{self.images} scikit-learn digits, 1x{self.input_size[0]}x{self.input_size[1]}"),
            ("collapsed operator", f"{self.channels}x1 kernel {_box(self.kernel_size)}, stride "
                                   f"{_box(self.total_stride)}; mod z^n-1: {_box(self.periodic_kernel_size)}"),
            ("exact collapse time", f"{self.collapse_seconds * 1e3:.1f} ms (QQ, sympy sparse polys)"),
            ("exact check, image 0", "collapsed == layer by layer over QQ" if self.exact_match
             else "MISMATCH between exact collapse and exact layer-by-layer"),
            ("max abs error (float64)", f"{self.max_abs_error:.3e}"),
            ("max rel error (float64)", f"{self.max_rel_error:.3e}  (tolerance {self.tolerance:.0e})"),
            ("time layer by layer", f"{self.layerwise_seconds * 1e3:.3f} ms"),
            ("time collapsed", f"{self.collapsed_seconds * 1e3:.3f} ms"),
            ("speedup", f"{self.layerwise_seconds / self.collapsed_seconds:.1f}x"),
            ("result", "OK" if self.ok else "FAILED"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["speedup"] = self.layerwise_seconds / self.collapsed_seconds
        return out


def _box(values: tuple[int, ...]) -> str:
    return "x".join(map(str, values))


def _exact_layerwise(stem: DemoLayer, blocks: list[DemoBlock], image: np.ndarray) -> np.ndarray:
    """Layer by layer over QQ on one periodic image (explicit circular application per layer)."""
    def run(layer: DemoLayer, x: np.ndarray) -> np.ndarray:
        return apply_operator(layer.operator(), x, periodic=True)
    x = run(stem, image)
    for block in blocks:
        skip = run(block.shortcut, x) if block.shortcut is not None else x
        x = skip + run(block.second, run(block.first, x))
    return x


def run_demo(seed: int = 0, channels: int = 8, repeats: int = 7, tolerance: float = 1e-10
             ) -> DemoReport:
    """Build, collapse, verify and time the demo network; see the module docstring."""
    images = load_digits_images()
    stem, blocks = demo_network(seed, channels)

    start = time.perf_counter()
    collapsed = stem.operator()
    for block in blocks:
        collapsed = block.operator() @ collapsed
    collapse_seconds = time.perf_counter() - start

    def layerwise() -> torch.Tensor:
        x = stem.torch_forward(images)
        for block in blocks:
            x = block.torch_forward(x)
        return x

    size = tuple(images.shape[2:])
    collapsed_forward = PeriodicConv(collapsed, size)

    with torch.inference_mode():
        reference = layerwise()
        prediction = collapsed_forward(images)
        layerwise_seconds = _median_seconds(layerwise, repeats)
        collapsed_seconds = _median_seconds(lambda: collapsed_forward(images), repeats)
    error = (prediction - reference).abs().max().item()
    rel = error / reference.abs().max().item()

    exact_net = _exact_layerwise(stem, blocks, images[0].numpy())
    exact_collapsed = apply_operator(collapsed, images[0].numpy(), periodic=True)
    exact_match = bool(np.all(exact_net == exact_collapsed))

    return DemoReport(layers=1 + sum(len(b.layers()) for b in blocks), blocks=len(blocks),
                      channels=channels, images=images.shape[0], input_size=size,
                      total_stride=collapsed.stride, kernel_size=collapsed.kernel_size(),
                      periodic_kernel_size=tuple(collapsed_forward.weight.shape[2:]),
                      collapse_seconds=collapse_seconds, layerwise_seconds=layerwise_seconds,
                      collapsed_seconds=collapsed_seconds, max_abs_error=error,
                      max_rel_error=rel, tolerance=tolerance, exact_match=exact_match)

