"""Linear ResNet-34 on 1×28×28 (the reference paper's setting): original vs collapsed.

The network: basic blocks [3, 4, 6, 3], widths 64-128-256-512, identity activations,
batch norm in eval mode with non-trivial statistics and affine parameters, average
pooling, 10 classes.  It is exactly one affine map ``f(X) = W X + B`` (W: 10 × 784).

One run prints, side by side (same threads, same input, warm-up for every timed call,
medians over ``--repeats``):

* the float32 network vs the collapsed float32 map on a batch (and the speedup);
* the collapse time (``extract_affine``, method ``auto`` = vjp, float64) in units of one
  float32 forward pass of a single image, and the same for the identity-batch method;
* the max relative error ``max|y - y_ref| / max|y_ref|`` of both against the float64
  network (on the same float32 input).

Targets: speedup >= 1000, collapse <= 20 single-image forward
passes, collapsed error <= the float32 original's error.

    python benchmarks/linear_resnet.py [--repeats 5] [--batch 256] [--threads N] [--json]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from laurentnet.bridge.models import calibrate_batchnorm_, randomize_batchnorm_, resnet34  # noqa: E402
from laurentnet.numeric.affine import extract_affine  # noqa: E402

IN_SHAPE = (1, 28, 28)


SPREADS: dict[str, float] = {}


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1,
                min_seconds: float = 0.05, name: str = "") -> float:
    """Median seconds per call of ``fn`` over ``repeats`` samples, after ``warmup`` calls.

    A sample times ``k`` back-to-back calls and divides by ``k``; ``k`` is chosen once so a
    sample lasts at least ``min_seconds`` (1 for slow calls), the same rule for every
    function timed, so fast and slow calls are measured alike.  The spread (max / min
    sample) is recorded in ``SPREADS[name]``: far above 1 means the machine was busy.
    """
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    fn()
    once = time.perf_counter() - t
    k = max(1, math.ceil(min_seconds / max(once, 1e-9)))
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(k):
            fn()
        samples.append((time.perf_counter() - t) / k)
    SPREADS[name] = max(samples) / min(samples)
    return statistics.median(samples)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """``max|y - ref| / max|ref|`` computed in float64."""
    return float((y.double() - ref).abs().max() / ref.abs().max())


def build(seed: int, bn: str) -> torch.nn.Module:
    """Linear ResNet-34 with deterministic weights and non-trivial batch norm, eval mode."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = resnet34(in_channels=1, num_classes=10, linear=True)
    randomize_batchnorm_(model, gen)
    if bn == "calibrated":  # running stats = the data's, as after training; affine random
        calibrate_batchnorm_(model, torch.randn(128, *IN_SHAPE, generator=gen))
        randomize_batchnorm_(model, gen, stats=False)
    return model.eval()


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    model = build(args.seed, args.bn)
    gen = torch.Generator().manual_seed(args.seed + 1)
    x32 = torch.randn(args.batch, *IN_SHAPE, generator=gen)
    x1 = x32[:1].clone()

    # float64 reference: the same network, the same (float32-representable) input
    model64 = copy.deepcopy(model).double()
    with torch.inference_mode():
        y_ref = model64(x32.double())
    del model64

    # collapse (auto = vjp, float64): the first (cold) call, then the median of warm ones
    t = time.perf_counter()
    amap = extract_affine(model, IN_SHAPE)
    t_cold = time.perf_counter() - t
    t_collapse_samples = []
    for _ in range(args.collapse_repeats):
        t = time.perf_counter()
        amap = extract_affine(model, IN_SHAPE)
        t_collapse_samples.append(time.perf_counter() - t)
    t_collapse = statistics.median(t_collapse_samples)
    SPREADS["collapse"] = max(t_collapse_samples) / min(t_collapse_samples)
    collapsed = amap.to_module(torch.float32).eval()

    # the obvious method: push an identity batch through the network (float64 as well)
    t = time.perf_counter()
    amap_id = extract_affine(model, IN_SHAPE, method="identity_batch")
    t_identity = time.perf_counter() - t

    t = time.perf_counter()
    extract_affine(model, IN_SHAPE, method="identity_batch", dtype=torch.float32)
    t_identity32 = time.perf_counter() - t

    # cheap alternative for the record: the same vjp in float32
    extract_affine(model, IN_SHAPE, dtype=torch.float32)
    t32 = []
    for _ in range(args.collapse_repeats):
        t = time.perf_counter()
        amap32 = extract_affine(model, IN_SHAPE, dtype=torch.float32)
        t32.append(time.perf_counter() - t)
    t_collapse32 = statistics.median(t32)

    with torch.inference_mode():
        t_single = median_time(lambda: model(x1), args.repeats, name="single_forward")
        t_orig = median_time(lambda: model(x32), args.repeats, name="original")
        t_coll = median_time(lambda: collapsed(x32), args.repeats, name="collapsed")
        y_orig = model(x32)
        y_coll = collapsed(x32)
        y_coll32 = amap32.to_module(torch.float32)(x32)
        y_id = amap_id.to_module(torch.float32)(x32)
        y_coll64 = amap(x32.double())

    return {
        "setting": "linear ResNet-34 [3,4,6,3], widths 64-512, 1x28x28 -> 10, eval, "
                   f"BN {args.bn}",
        "batch": args.batch, "threads": threads, "repeats": args.repeats, "seed": args.seed,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "original_s": t_orig, "collapsed_s": t_coll, "speedup": t_orig / t_coll,
        "single_forward_s": t_single,
        "collapse_s": t_collapse, "collapse_over_forward": t_collapse / t_single,
        "collapse_cold_s": t_cold, "collapse_cold_over_forward": t_cold / t_single,
        "collapse_method": amap.method, "collapse_passes": amap.passes,
        "collapse_setup_s": amap.info["seconds_setup"],
        "collapse_passes_s": amap.info["seconds_passes"],
        "identity_batch_s": t_identity, "identity_batch_over_forward": t_identity / t_single,
        "identity_batch_passes": amap_id.passes,
        "identity_batch_float32_s": t_identity32,
        "identity_batch_float32_over_forward": t_identity32 / t_single,
        "collapse_float32_s": t_collapse32,
        "collapse_float32_over_forward": t_collapse32 / t_single,
        "original_rel_err": rel_err(y_orig, y_ref),
        "collapsed_rel_err": rel_err(y_coll, y_ref),
        "collapsed_float32_vjp_rel_err": rel_err(y_coll32, y_ref),
        "identity_batch_rel_err": rel_err(y_id, y_ref),
        "collapsed_float64_rel_err": rel_err(y_coll64, y_ref),
        "W_vjp_vs_identity_max_abs": float((amap.W - amap_id.W).abs().max()),
        "timing_spread": dict(SPREADS),
        "timing_unstable": max(SPREADS.values()) > 1.5,
        "targets": {"speedup>=1000": t_orig / t_coll >= 1000,
                    "collapse<=20": t_collapse / t_single <= 20,
                    "collapsed_err<=original_err":
                        rel_err(y_coll, y_ref) <= rel_err(y_orig, y_ref)},
    }


def table(r: dict[str, Any]) -> str:
    ms = 1e3
    rows = [
        ("", "original net (f32)", "collapsed W X + B (f32)"),
        (f"time, batch {r['batch']}", f"{r['original_s'] * ms:.1f} ms",
         f"{r['collapsed_s'] * ms:.4f} ms  (speedup {r['speedup']:.0f}x)"),
        ("max rel. error vs f64 net", f"{r['original_rel_err']:.2e}",
         f"{r['collapsed_rel_err']:.2e}"),
    ]
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    out = [f"{r['setting']}; torch {r['torch']}, {r['threads']} thread(s), "
           f"median of {r['repeats']}"]
    out += [f"  {a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    out.append(f"  one f32 forward of 1 image: {r['single_forward_s'] * ms:.2f} ms")
    out.append(f"  collapse, {r['collapse_method']} (float64): {r['collapse_s'] * ms:.0f} ms = "
               f"{r['collapse_over_forward']:.1f} single-image forwards "
               f"(setup: cast + 1 forward {r['collapse_setup_s'] * ms:.0f} ms, "
               f"{r['collapse_passes'] - 1} batched adjoint pass {r['collapse_passes_s'] * ms:.0f} ms; "
               f"first call in the process {r['collapse_cold_over_forward']:.1f})")
    out.append(f"  collapse, identity batch (float64): {r['identity_batch_s'] * ms:.0f} ms = "
               f"{r['identity_batch_over_forward']:.1f} single-image forwards "
               f"(rel. error of its map {r['identity_batch_rel_err']:.2e}); in float32: "
               f"{r['identity_batch_float32_over_forward']:.0f} forwards")
    out.append(f"  for the record, vjp in float32: {r['collapse_float32_s'] * ms:.0f} ms = "
               f"{r['collapse_float32_over_forward']:.1f} forwards, rel. error "
               f"{r['collapsed_float32_vjp_rel_err']:.2e} (not the default: not below the "
               "original's error)")
    out.append(f"  collapsed map in float64: rel. error {r['collapsed_float64_rel_err']:.1e}; "
               f"max|W_vjp - W_identity| = {r['W_vjp_vs_identity_max_abs']:.1e}")
    if r["timing_unstable"]:
        spread = ", ".join(f"{k} {v:.2f}" for k, v in r["timing_spread"].items())
        out.append(f"  WARNING: unstable timings (max/min sample: {spread}); another process "
                   "is probably using the CPU (with several threads, OpenMP barriers then "
                   "stall). Rerun on an idle machine or with --threads 1.")
    t = r["targets"]
    out.append("  targets: " + ", ".join(f"{k} {'MET' if v else 'MISSED'}" for k, v in t.items()))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed samples per measurement")
    p.add_argument("--collapse-repeats", type=int, default=3,
                   help="timed collapses (after one warm-up)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bn", choices=("random", "calibrated"), default="random",
                   help="random BN statistics (randomize_batchnorm_), or statistics of the "
                        "data as after training, with random affine parameters")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if min(args.repeats, args.collapse_repeats, args.batch) < 1:
        p.error("--repeats, --collapse-repeats and --batch must be >= 1")
    result = run(args)
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
