"""Exact borders at kernel cost: the border-corrected kernel against the layers, the bare
kernel and the dense affine map, side by side.

Model: a linear zero-padded CNN, ``--depth`` (default 8) layers ``Conv2d(C, C, 3,
padding=1)`` with bias, ``C = --channels`` (default 32), float32, eval mode.  For each input
size ``n x n`` (default 16, 32, 128, 224, 512; batch 1) the methods are

* ``layers``  — the original model;
* ``kernel``  — the collapsed kernel alone (``convert(mode="kernel", allow_inexact=True)``):
  one ``(2 depth + 1)``-wide convolution, exact on the interior only;
* ``border``  — the border-corrected kernel (``convert(mode="kernel")``): the kernel on the
  interior box, the original layers on the 4 border strips — exact everywhere;
* ``affine``  — the dense affine map (``convert(mode="affine")``), only where its float64
  extraction (``2 x 8 n_out n_in`` bytes, as ``convert``'s cost model counts it) fits the
  memory budget.

Per row: median ms per call (interleaved repeats on ``--threads`` threads,
:func:`bridge.timing.interleaved_times`), the ratio to ``layers`` (median of per-round
ratios), multiply-adds per sample, and the max absolute error against the ORIGINAL model
in float64 on the interior box and on the border band separately; for ``border`` the
interior/border split (positions and multiply-adds of each part).

    python benchmarks/border.py [--sizes 16,32,128,224,512] [--depth 8] [--channels 32]
                                [--repeats 5] [--threads 1] [--json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from laurentnet.algebra.memory import memory_budget  # noqa: E402
from laurentnet.bridge.convert import convert  # noqa: E402
from laurentnet.bridge.timing import interleaved_times  # noqa: E402


def build(depth: int, channels: int) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(channels, channels, 3, padding=1) for _ in range(depth)]
    return nn.Sequential(*layers).eval()


def _errors(y: torch.Tensor, ref: torch.Tensor, interior: tuple[tuple[int, int], ...]
            ) -> tuple[float, float]:
    """Max |y - ref| on the interior box and on the rest (the border band)."""
    diff = (y.double() - ref).abs().amax(dim=(0, 1))
    inside = torch.zeros_like(diff, dtype=torch.bool)
    (a, b), (c, d) = interior
    inside[a:b, c:d] = True
    inner = float(diff[inside].max()) if inside.any() else 0.0
    outer = float(diff[~inside].max()) if (~inside).any() else 0.0
    return inner, outer


def run_size(model: nn.Module, n: int, channels: int, repeats: int, threads: int
             ) -> list[dict[str, Any]]:
    x = torch.randn(1, channels, n, n, generator=torch.Generator().manual_seed(n))
    modules: dict[str, nn.Module] = {"layers": model}
    macs: dict[str, int] = {}
    convert_seconds: dict[str, float] = {}
    notes: dict[str, str] = {}
    for method, options in (("kernel", dict(mode="kernel", allow_inexact=True)),
                            ("border", dict(mode="kernel"))):
        start = time.perf_counter()
        conversion = convert(model, x, measure=False, **options)
        convert_seconds[method] = time.perf_counter() - start
        modules[method] = conversion.module
        segment = conversion.report.segments[0]
        macs[method] = segment.macs_after
        macs["layers"] = segment.macs_before
        if method == "border":
            split = segment.border
            notes["border"] = (f"interior {split['interior_positions']} pos "
                               f"{split['interior_macs']:,} MACs, border "
                               f"{split['border_positions']} pos {split['border_macs']:,} MACs")
    n_in = n_out = channels * n * n
    if 8 * n_in * n_out * 2 <= memory_budget():
        start = time.perf_counter()
        conversion = convert(model, x, mode="affine", measure=False)
        convert_seconds["affine"] = time.perf_counter() - start
        modules["affine"] = conversion.module
        macs["affine"] = n_in * n_out
    else:
        notes["affine"] = (f"skipped: the {n_out}x{n_in} map needs "
                           f"{16 * n_in * n_out / 2**30:.1f} GiB > budget "
                           f"{memory_budget() / 2**30:.1f} GiB")
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(x.double())
        outputs = {k: m(x) for k, m in modules.items()}
    interior = tuple(tuple(pair) for pair in split["interior_box"])
    timings = interleaved_times({k: (lambda m=m: m(x)) for k, m in modules.items()},
                                repeats=repeats, threads=threads)
    rows = []
    for method in ("layers", "kernel", "border", "affine"):
        if method not in modules:
            rows.append(dict(size=n, method=method, ms=None, ratio_to_layers=None, macs=None,
                             max_err_interior=None, max_err_border=None, note=notes[method]))
            continue
        inner, outer = _errors(outputs[method], ref, interior)
        rows.append(dict(size=n, method=method, ms=1e3 * timings.median[method],
                         ratio_to_layers=timings.ratio(method, "layers"), macs=macs[method],
                         max_err_interior=inner, max_err_border=outer,
                         convert_seconds=convert_seconds.get(method),
                         note=notes.get(method, "")))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'size':>5} {'method':<7} {'ms':>10} {'/layers':>8} {'MACs':>15} "
            f"{'err interior':>12} {'err border':>11}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["ms"] is None:
            lines.append(f"{r['size']:>5} {r['method']:<7} {'-':>10} {'-':>8} {'-':>15} "
                         f"{'-':>12} {'-':>11}  {r['note']}")
            continue
        lines.append(f"{r['size']:>5} {r['method']:<7} {r['ms']:>10.3f} "
                     f"{r['ratio_to_layers']:>8.3f} {r['macs']:>15,} "
                     f"{r['max_err_interior']:>12.2e} {r['max_err_border']:>11.2e}  {r['note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16,32,128,224,512")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    model = build(args.depth, args.channels)
    rows = []
    for n in (int(v) for v in args.sizes.split(",")):
        rows += run_size(model, n, args.channels, args.repeats, args.threads)
        if not args.json:
            print(table([r for r in rows if r["size"] == n]), flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
