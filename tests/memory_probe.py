"""Run oversized work through every guarded path and measure the process's peak memory.

Linux only (the peak is ``VmHWM`` of ``/proc/self/status``, reset before each call).

Run as a script in a fresh process (``tests/test_memory_guard.py`` does): for each case it
builds the inputs, records the peak resident size (``ru_maxrss``), calls the path under a
small budget, and prints one JSON line per case with the refusal's estimate and budget and
how much the peak grew during the call.  A guard that allocates before refusing shows up
as growth; one that never refuses shows up as ``"refused": false``.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

import numpy as np
import torch

from laurentnet.algebra import (MemoryBudgetError, Network, apply_operator, collapse,
                                collapse_affine)
from laurentnet.algebra.operator import ConvOperator
from laurentnet.algebra.layout import default_ring
from laurentnet.numeric import (KernelOperator, affine_numeric, collapse_numeric,
                                extract_affine, polymatmul)

MB = 2**20


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def start_peak() -> int:
    """Reset the peak resident size (Linux: ``5 > /proc/self/clear_refs``, so earlier
    transient peaks cannot hide this call's) and return the resident bytes now."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _status_kib("VmRSS") * 1024


def peak_growth(start: int) -> int:
    """Bytes the peak resident size rose above ``start`` (from :func:`start_peak`)."""
    return max(0, _status_kib("VmHWM") * 1024 - start)


def pooled(kind: str) -> tuple[Network, tuple[int, ...]]:
    """The issue's cases: a global pool / a 128 pool on a (64, 256, 256) input."""
    net = Network(2, 64)
    node = net.global_avg_pool(net.input) if kind == "global" else net.avg_pool(net.input, 128)
    net.set_output(node)
    return net, (64, 256, 256)


def convs(channels: int, layers: int, size: int, integer: bool) -> tuple[Network, tuple[int, ...]]:
    net = Network(2, channels)
    x = net.input
    weight = np.ones((channels, channels, 3, 3), np.int64 if integer else np.float32)
    for _ in range(layers):
        x = net.conv(x, weight, padding=1)
    net.set_output(x)
    return net, (channels, size, size)


def cases() -> list[tuple[str, int, Callable[[], Any], Callable[[Any], Any]]]:
    """``(name, budget, build, call)``: ``build`` runs before the measurement."""
    out: list[tuple[str, int, Callable[[], Any], Callable[[Any], Any]]] = []
    for kind in ("global", "pool128"):
        for path, fn in (("collapse_numeric", collapse_numeric), ("collapse", collapse),
                         ("affine_numeric", affine_numeric), ("collapse_affine", collapse_affine)):
            out.append((f"{kind} {path}", 200 * MB, lambda kind=kind: pooled(kind),
                        lambda built, fn=fn: fn(*built, budget=200 * MB)))
    for path, fn in (("collapse", collapse), ("collapse_numeric", collapse_numeric)):
        out.append((f"128 channels exact-width {path}", 10 * MB,
                    lambda: convs(128, 4, 8, integer=True),
                    lambda built, fn=fn: fn(*built, budget=10 * MB)))
    for path, fn in (("collapse_numeric", collapse_numeric), ("affine_numeric", affine_numeric),
                     ("collapse", collapse)):
        out.append((f"2048 wide {path}", 2**30, lambda: convs(2048, 2, 8, integer=False),
                    lambda built, fn=fn: fn(*built, budget=2**30)))

    def small_collapse():
        net, shape = convs(16, 2, 8, integer=False)
        return collapse_numeric(net, shape)
    out.append(("NumericCollapse.apply huge batch", 100 * MB, small_collapse,
                lambda result: _apply_with_budget(result, 100 * MB)))
    out.append(("polymatmul 512x512x33x33", 100 * MB,
                lambda: (torch.zeros(512, 512, 17, 17, dtype=torch.float64),
                         torch.zeros(512, 512, 17, 17, dtype=torch.float64)),
                lambda built: polymatmul(*built, budget=100 * MB)))
    out.append(("KernelOperator.compose", 50 * MB,
                lambda: (KernelOperator(torch.zeros(256, 256, 9, 9, dtype=torch.float64), 0),),
                lambda built: _compose_with_budget(built[0], 50 * MB)))
    out.append(("apply_operator exact 2x2 on 2x1000x1000", 20 * MB,
                lambda: (ConvOperator.identity(default_ring(2), 2), np.ones((2, 1000, 1000))),
                lambda built: _exact_apply_with_budget(*built, 20 * MB)))
    out.append(("extract_affine 64x64x64 conv module", 200 * MB,
                lambda: torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).double().eval(),
                lambda module: extract_affine(module, (64, 64, 64), budget=200 * MB)))
    out.append(("demo 3000 channels", 100 * MB, lambda: None,
                lambda _: _demo_with_budget(3000, 100 * MB)))
    return out


def _lazy_batch(*shape: int) -> torch.Tensor:
    return torch.zeros(1).expand(*shape)  # no memory behind it


def _apply_with_budget(result: Any, budget: int) -> Any:
    from laurentnet.algebra import memory_limit
    with memory_limit(budget):
        return result.apply(_lazy_batch(2**16, 16, 8, 8))


def _compose_with_budget(op: KernelOperator, budget: int) -> Any:
    return op.compose(op, budget=budget)


def _exact_apply_with_budget(op: ConvOperator, x: np.ndarray, budget: int) -> Any:
    from laurentnet.algebra import memory_limit
    with memory_limit(budget):
        return apply_operator(op, x)


def _demo_with_budget(channels: int, budget: int) -> Any:
    from laurentnet.bridge.demo import run_demo
    return run_demo(channels=channels, budget=budget)


def main(selected: list[str]) -> None:
    for name, budget, build, call in cases():
        if selected and not any(s in name for s in selected):
            continue
        built = build()
        before = start_peak()
        start = time.perf_counter()
        record: dict[str, Any] = {"case": name, "budget": budget}
        try:
            call(built)
            record["refused"] = False
        except MemoryBudgetError as exc:
            record.update(refused=True, estimate=exc.estimate, refused_budget=exc.budget)
        record.update(peak_growth=peak_growth(before),
                      seconds=time.perf_counter() - start)
        del built
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
