"""``laurentnet demo``: collapse a linear residual CNN on the digits and check it honestly.

The network (random weights from a seed, float64): a 3x3 stem, then residual blocks
``y = S x + K2 K1 x`` (``S`` the identity, or a strided 1x1 shortcut where ``K1`` has a
stride), all convolutions circularly padded, on scikit-learn's 8x8 digits.  Because every
layer is circular and every stride divides the size, the whole network is exactly

    y = down_S( K_total(z) X(z) mod (z^n - 1) ) + b_total,

one strided convolution.  The demo builds the network as an :class:`algebra.Network`,
collapses it exactly over QQ (weights converted from float64 without rounding), proves the
collapse (explicit index sums of the network against the collapsed coefficients), runs the
original layer by layer with ``torch.nn.functional`` in float64 and the collapsed operator
as one ``conv2d``, and prints the table.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..algebra import Network, collapse, prove_collapse
from ..numeric import DirectConv, KernelOperator, NetworkModule


__all__ = ["DemoReport", "demo_network", "run_demo", "load_digits_images"]


def demo_network(seed: int = 0, channels: int = 8, strides: tuple[int, ...] = (1, 2, 1, 2)
                 ) -> Network:
    """A circular 3x3 stem ``1 -> channels`` and one residual block per entry of ``strides``."""
    rng = np.random.default_rng(seed)

    def conv(x, c_in: int, k: int, stride: int):
        weight = rng.normal(0.0, 0.7 / np.sqrt(c_in * k * k), (channels, c_in, k, k))
        return net.conv(x, weight, rng.normal(0.0, 0.1, channels), stride=stride,
                        padding=(k - 1) // 2, padding_mode="circular")

    net = Network(ndim=2, in_channels=1)
    h = conv(net.input, 1, 3, 1)
    for s in strides:
        branch = conv(conv(h, channels, 3, s), channels, 3, 1)
        shortcut = conv(h, channels, 1, s) if s > 1 else h
        h = shortcut + branch
    return net


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
    proof: str = ""
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
            ("proof of the collapse", ("PROVED over QQ: " + self.proof) if self.exact_match
             else "REFUTED: the exact collapse differs from the network"),
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


def run_demo(seed: int = 0, channels: int = 8, repeats: int = 7, tolerance: float = 1e-10
             ) -> DemoReport:
    """Build, collapse, prove, verify and time the demo network; see the module docstring."""
    images = load_digits_images()
    net = demo_network(seed, channels)
    shape = tuple(images.shape[1:])

    start = time.perf_counter()
    result = collapse(net, shape)
    collapse_seconds = time.perf_counter() - start
    if not (result.periodic and result.exact_everywhere):
        raise RuntimeError(f"the demo network should collapse exactly: {result.describe()}")
    proof = prove_collapse(net, shape)

    layerwise = NetworkModule(net)
    # y = down_s((K X) mod (z^n - 1)) + b: one circular convolution of the folded kernel
    collapsed = DirectConv(KernelOperator.from_algebra(result.operator), shape[1:], "circular")
    with torch.inference_mode():
        reference = layerwise(images)
        prediction = collapsed(images)
        layerwise_seconds = _median_seconds(lambda: layerwise(images), repeats)
        collapsed_seconds = _median_seconds(lambda: collapsed(images), repeats)
    error = (prediction - reference).abs().max().item()
    rel = error / reference.abs().max().item()
    n_convs = sum(1 for node in net.nodes.values() if type(node).__name__ == "Conv")
    n_blocks = sum(1 for node in net.nodes.values() if type(node).__name__ == "Add")
    return DemoReport(layers=n_convs, blocks=n_blocks, channels=channels,
                      images=images.shape[0], input_size=shape[1:],
                      total_stride=result.operator.stride,
                      kernel_size=result.operator.kernel_size,
                      periodic_kernel_size=tuple(collapsed.weight.shape[2:]),
                      collapse_seconds=collapse_seconds, layerwise_seconds=layerwise_seconds,
                      collapsed_seconds=collapsed_seconds, max_abs_error=error,
                      max_rel_error=rel, tolerance=tolerance, exact_match=bool(proof),
                      proof=str(proof).splitlines()[3].strip())
