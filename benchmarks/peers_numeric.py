"""The numeric collapse at width against composing the weights with ``F.conv2d`` (issue 14).

A chain of ``--numeric-layers`` 2-D 3x3 convolutions ``C -> C`` (``--numeric-channels``,
PyTorch's default initialisation, padding 1) is collapsed by
``laurentnet.numeric.collapse_numeric`` in float64 and in float32, and — what a user
would write instead — its weights are composed with ``F.conv2d`` in float64 and float32:
the composite weight of ``w2`` after ``w1`` is ``W[o, c] = sum_m w2[o, m] * w1[m, c]``
(full convolution), i.e. ``F.conv2d(W1^T, flip(w2), padding=k2 - 1)^T`` with the ``C_in``
axis of ``W1`` as the batch.  All four run one thread, timed as medians of interleaved
rounds (``bridge.timing.interleaved_times``; ratios are medians of per-round ratios).

The errors are max relative errors ``max |A - R| / max |R|`` against the float64
``F.conv2d`` composition ``R`` (the package's float64 result must agree to round-off; the
float32 modes show their precision).  ``--numeric-methods`` adds the per-product methods
of ``numeric.polymatmul`` (``dft``, ``fft``, ``taps``, ``conv``) on one 3x3 x k x k product
per size, the measurement behind ``polymatmul.auto_method``.

``--json`` keys: ``numeric_speedup_vs_conv2d`` (float64 ``F.conv2d`` time over the float64
collapse), ``numeric32_speedup_vs_conv2d32``, ``numeric_seconds``, ``numeric_errors``.

    python benchmarks/peers_numeric.py [--numeric-channels 256] [--numeric-layers 8] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from laurentnet.bridge.timing import interleaved_times  # noqa: E402
from laurentnet.numeric import collapse_numeric, polymatmul  # noqa: E402
from peers import chain_network, float32_weights  # noqa: E402  (this folder is on sys.path)

LABELS = {"package": "laurentnet collapse_numeric, float64",
          "package32": "laurentnet collapse_numeric, float32",
          "conv64": "weights composed by F.conv2d, float64",
          "conv32": "weights composed by F.conv2d, float32"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This row's options (``--repeats`` and ``--seed`` are the caller's)."""
    parser.add_argument("--numeric-channels", type=int, default=256)
    parser.add_argument("--numeric-layers", type=int, default=8)
    parser.add_argument("--numeric-methods", type=lambda s: [int(x) for x in s.split(",") if x],
                        default=[], help="also time each polymatmul method on one 3x3 x k x k "
                        "product for these k (comma-separated)")


def compose_conv2d(weights: list[torch.Tensor]) -> torch.Tensor:
    """The weight of ``conv(w_L) ∘ ... ∘ conv(w_1)`` (cross-correlations, no padding):
    ``W[o, c, t] = sum_m sum_{a + b = t} w2[o, m, b] W1[m, c, a]`` (a full convolution), as
    ``F.conv2d`` of ``W1`` (batch ``C_in``, channels ``C_mid``) with ``flip(w2)`` and padding
    ``k2 - 1``."""
    acc = weights[0]
    for w in weights[1:]:
        pad = tuple(k - 1 for k in w.shape[2:])
        acc = F.conv2d(acc.transpose(0, 1), w.flip((2, 3)), padding=pad).transpose(0, 1)
    return acc


def relative_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |a - ref| / max |ref|`` in float64."""
    a, ref = a.to(torch.float64), ref.to(torch.float64)
    return float((a - ref).abs().max() / ref.abs().max())


def _method_rows(channels: int, sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    """Seconds of each polymatmul method on ``(C, C, 3, 3) x (C, C, k, k)``, float64."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for k in sizes:
        a = torch.randn(channels, channels, 3, 3, generator=g, dtype=torch.float64)
        b = torch.randn(channels, channels, k, k, generator=g, dtype=torch.float64)
        fns: dict[str, Callable[[], Any]] = {
            m: (lambda m=m: polymatmul(a, b, method=m)) for m in ("dft", "fft", "taps", "conv")}
        t = interleaved_times(fns, repeats=repeats, min_seconds=0.0, threads=1)
        rows.append({"k": k, "seconds": dict(t.median)})
    return rows


def row_numeric(args: argparse.Namespace) -> dict[str, Any]:
    """The row: times, ratios and errors (module docstring)."""
    channels, layers = args.numeric_channels, args.numeric_layers
    weights = float32_weights(getattr(args, "seed", 0), layers, channels)
    net = chain_network(weights)
    shape = (channels, 32, 32)
    w64 = [torch.from_numpy(w).to(torch.float64) for w in weights]
    w32 = [torch.from_numpy(w) for w in weights]
    results: dict[str, torch.Tensor] = {}

    def keep(name: str, fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def go() -> None:
            results[name] = fn()
        return go

    # the collapsed operator's coefficients ascend in z: the torch weight is their reverse
    fns = {"package": keep("package", lambda: collapse_numeric(net, shape).operator.coeffs.flip((2, 3))),
           "package32": keep("package32", lambda: collapse_numeric(
               net, shape, dtype=torch.float32).operator.coeffs.flip((2, 3))),
           "conv64": keep("conv64", lambda: compose_conv2d(w64)),
           "conv32": keep("conv32", lambda: compose_conv2d(w32))}
    t = interleaved_times(fns, repeats=args.repeats, min_seconds=0.0, threads=1)
    ref = results["conv64"]
    errors = {name: relative_error(results[name], ref) for name in ("package", "package32", "conv32")}
    row = {"channels": channels, "layers": layers, "threads": t.threads,
           "repeats": args.repeats, "seconds": dict(t.median),
           "numeric_speedup_vs_conv2d": t.ratio("conv64", "package"),
           "numeric32_speedup_vs_conv2d32": t.ratio("conv32", "package32"),
           "numeric32_speedup_vs_conv2d": t.ratio("conv64", "package32"),
           "errors_vs_conv2d_float64": errors}
    if getattr(args, "numeric_methods", None):
        row["methods"] = _method_rows(channels, args.numeric_methods, args.repeats)
    return row


def table_lines(row: dict[str, Any]) -> list[str]:
    """The row as text: one line per path with its time, the ratio to the float64 collapse
    and its error."""
    s, err = row["seconds"], row["errors_vs_conv2d_float64"]
    out = [f"numeric collapse at width: {row['layers']} layers x {row['channels']} channels of "
           f"3x3, {row['threads']} thread, medians of {row['repeats']} interleaved rounds",
           f"  {'path':<42}{'seconds':>10}{'/ package':>11}{'max rel err':>13}"]
    for key, label in LABELS.items():
        e = "(reference)" if key == "conv64" else f"{err[key]:.1e}"
        out.append(f"  {label:<42}{s[key]:>10.3f}{s[key] / s['package']:>11.2f}{e:>13}")
    out.append(f"  F.conv2d float64 / collapse float64 = {row['numeric_speedup_vs_conv2d']:.2f} "
               f"(target >= 2); float32: {row['numeric32_speedup_vs_conv2d32']:.2f}")
    for m in row.get("methods", []):
        times = "  ".join(f"{k} {v:.3f}" for k, v in m["seconds"].items())
        out.append(f"  polymatmul 3x3 x {m['k']}x{m['k']} seconds: {times}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    row = row_numeric(args)
    print(json.dumps(row, default=float) if args.json else "\n".join(table_lines(row)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
