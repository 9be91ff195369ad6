"""Affine extraction and the collapsed module against what a user would run instead (issue 14).

Two rows, one torch thread (``--affine-threads``), medians of interleaved repeats
(:func:`laurentnet.bridge.timing.interleaved_times`: every candidate once per round, the
order rotated, ratios = medians of per-round ratios, so a change of load hits all alike):

* ``affine`` — extracting ``W, B`` of the linear ``--affine-model`` (default ResNet-34,
  ``bridge.models.MODELS``) on 1x28x28 with random eval-mode batch norm, float64:
  ``extract_affine`` (vjp: one forward at batch 1 for ``B = f(0)``, then the adjoint of
  the ``n_out`` unit cotangents as ONE batched backward) against ``torch.func.jacrev`` on a
  float64 copy (the copy made outside the timing; ``has_aux`` returns ``B`` from the same
  forward), ``jacrev`` inside the package's :class:`GemmConvMode` (isolates the conv
  routing from the rest), and ``--affine-jacfwd`` (784 tangents: minutes, one sample).
  The cost is also given over the FLOP floor ``(F + n_out F) / peak``: ``F`` = the FLOPs
  of one forward counted from the layer shapes (``2 C_out C_in/g k_h k_w H_out W_out`` per
  conv, ``2 n_in n_out`` per linear; batch norm, pooling and adds are not counted), the
  adjoint of each layer the same count, and ``peak`` a 2048^3 float64 ``mm`` timed in the
  same interleaved rounds.  Errors: ``max|W - W_jacrev| / max|W|`` and, for each map, the
  rel. error of ``X W^T + B`` against the float64 network on random inputs.
* ``module`` — the collapsed float32 :class:`AffineModule` (10 x 784) on a batch of
  ``--affine-batch`` against the bare torch calls on the same weights (``addmm(B, X, W.t())``,
  ``F.linear``, ``W^T`` stored contiguous, ``mm(W, X.T)`` without bias, ``addmm(B 1^T, W,
  X^T)^T``, the product the module runs) and the GEMM bound
  ``2 N n_in n_out / peak`` (peak: a 2048^3 float32 ``mm`` in the same rounds); then the
  kernel evaluators against their bare torch call: ``DirectConv`` vs ``F.conv2d``, the
  ``'gemm'`` :class:`OperatorEvaluator` vs ``F.linear`` on its matrix, ``'fft'`` vs its
  bare rfft-bmm-irfft sequence (``_fft_apply``).

* ``compiled`` (extra, not in the default rows) — the original linear network eager and
  under ``torch.compile`` against the collapsed :class:`AffineModule` on the same batch.

    python benchmarks/peers_affine.py [--rows affine,module,compiled] [--repeats 5] [--json]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from laurentnet.bridge.models import MODELS, build_resnet, randomize_batchnorm_  # noqa: E402
from laurentnet.bridge.timing import interleaved_times  # noqa: E402
from laurentnet.numeric import KernelOperator, OperatorEvaluator  # noqa: E402
from laurentnet.numeric.affine import AffineModule, GemmConvMode, extract_affine  # noqa: E402
from laurentnet.numeric.evaluator import DirectConv, _fft_apply  # noqa: E402

IN_SHAPE = (1, 28, 28)
PEAK_N = 2048


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This file's options (``--affine-*``; ``--repeats`` and ``--seed`` are the caller's)."""
    parser.add_argument("--affine-model", default="resnet34", choices=tuple(MODELS),
                        help="linear network whose affine map is extracted (default resnet34)")
    parser.add_argument("--affine-batch", type=int, default=256, help="batch of the module row")
    parser.add_argument("--affine-threads", type=int, default=1, help="torch threads (the issue: 1)")
    parser.add_argument("--affine-jacfwd", action="store_true",
                        help="also time torch.func.jacfwd once (784 tangents: minutes)")


def build_model(name: str, seed: int) -> torch.nn.Module:
    """The linear ``MODELS[name]`` on 1 channel, 10 classes, random eval-mode batch norm."""
    torch.manual_seed(seed)
    model = build_resnet(name, in_channels=1, num_classes=10, linear=True)
    randomize_batchnorm_(model, torch.Generator().manual_seed(seed))
    return model.eval()


def forward_flops(model: torch.nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """FLOPs of one forward at batch 1 from the layer shapes (module docstring) and the
    number of layers counted."""
    total, count, hooks = [0], [0], []

    def hook(m: torch.nn.Module, inputs: Any, out: torch.Tensor) -> None:
        if isinstance(m, torch.nn.Conv2d):
            kh, kw = m.kernel_size
            total[0] += 2 * m.out_channels * (m.in_channels // m.groups) * kh * kw * out[0, 0].numel()
        elif isinstance(m, torch.nn.Linear):
            total[0] += 2 * m.in_features * m.out_features
        else:
            return
        count[0] += 1

    for m in model.modules():
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return total[0], count[0]


def _peak(dtype: torch.dtype) -> tuple[Callable[[], Any], float]:
    """A ``PEAK_N``-cube ``mm`` (into a fixed output) and its FLOPs."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(PEAK_N, PEAK_N, generator=g, dtype=dtype) for _ in range(2))
    out = torch.empty(PEAK_N, PEAK_N, dtype=dtype)
    return (lambda: torch.mm(a, b, out=out)), 2.0 * PEAK_N ** 3


class _Timed:
    """:func:`interleaved_times` of ``candidates``, each looped ``k`` times per sample (``k``
    chosen so a sample lasts about ``sample_seconds``), recording the wall AND the CPU
    seconds of this process per sample (other processes on a shared machine inflate wall
    time, much less CPU time).  All figures are per call."""

    def __init__(self, candidates: dict[str, Callable[[], Any]], repeats: int,
                 sample_seconds: float = 0.0):
        self.k: dict[str, int] = {}
        self.cpu_samples: dict[str, list[float]] = {}
        looped = {}
        for name, fn in candidates.items():
            self.k[name] = 1
            if sample_seconds > 0:
                fn()
                start = time.perf_counter()
                fn()
                once = max(time.perf_counter() - start, 1e-9)
                self.k[name] = max(1, math.ceil(sample_seconds / once))
            looped[name] = self._looped(name, fn, self.k[name])
        self.timings = interleaved_times(looped, repeats=repeats, min_seconds=0.0)
        self.threads = self.timings.threads
        # interleaved_times makes two warm-up calls per candidate before its rounds
        self.wall = {n: [t / self.k[n] for t in v] for n, v in self.timings.samples.items()}
        self.cpu_per = {n: [t / self.k[n] for t in v[2:]] for n, v in self.cpu_samples.items()}
        self.median = {n: statistics.median(v) for n, v in self.wall.items()}
        self.cpu = {n: statistics.median(v) for n, v in self.cpu_per.items()}

    def _looped(self, name: str, fn: Callable[[], Any], k: int) -> Callable[[], Any]:
        store = self.cpu_samples.setdefault(name, [])

        def run() -> Any:
            start = time.process_time()
            for _ in range(k):
                out = fn()
            store.append(time.process_time() - start)
            return out
        return run

    def ratio(self, name: str, base: str) -> float:
        """Median over rounds of the per-round wall ratio."""
        return statistics.median(a / b for a, b in zip(self.wall[name], self.wall[base]))

    def cpu_ratio(self, name: str, base: str) -> float:
        """Median over rounds of the per-round CPU ratio."""
        return statistics.median(a / b for a, b in zip(self.cpu_per[name], self.cpu_per[base]))

    def spread(self, name: str) -> float:
        return max(self.wall[name]) / min(self.wall[name])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|`` in float64."""
    b = b.double()
    return float((a.double() - b).abs().max() / b.abs().max())


def _jacrev_map(model64: torch.nn.Module, x0: torch.Tensor, n_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``W, B`` by ``torch.func.jacrev`` (``B`` the aux output of the same forward)."""
    with torch.inference_mode(False), torch.enable_grad():
        def f(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = model64(x)
            return y, y.detach()
        jac, y0 = torch.func.jacrev(f, has_aux=True)(x0)
    return jac.reshape(-1, n_in), y0.reshape(-1)


def row_affine(args: argparse.Namespace) -> dict[str, Any]:
    """Extraction of ``W, B`` (float64): the package vs ``jacrev`` (module docstring)."""
    repeats, seed = getattr(args, "repeats", 5), getattr(args, "seed", 0)
    saved = torch.get_num_threads()
    torch.set_num_threads(args.affine_threads)
    try:
        model = build_model(args.affine_model, seed)
        model64 = copy.deepcopy(model).double().requires_grad_(False)  # no weight-grad graph
        n_in = math.prod(IN_SHAPE)
        x0 = torch.zeros(1, *IN_SHAPE, dtype=torch.float64)
        got: dict[str, Any] = {}
        peak_fn, peak_flops = _peak(torch.float64)

        def jacrev_gemm() -> Any:
            with GemmConvMode():
                return _jacrev_map(model64, x0, n_in)
        candidates = {
            "package": lambda: got.__setitem__("package", extract_affine(model, IN_SHAPE)),
            "jacrev": lambda: got.__setitem__("jacrev", _jacrev_map(model64, x0, n_in)),
            "jacrev_gemm_mode": lambda: got.__setitem__("jacrev_gemm_mode", jacrev_gemm()),
            "dgemm_peak": peak_fn,
        }
        times = _Timed(candidates, repeats)
        cpu = times.cpu
        amap = got["package"]
        W_j, B_j = got["jacrev"]
        flops_fwd, n_layers = forward_flops(model, IN_SHAPE)
        n_out = amap.n_out
        flops = flops_fwd * (1 + n_out)
        peak = peak_flops / times.median["dgemm_peak"]
        floor = flops / peak
        x = torch.randn(64, *IN_SHAPE, generator=torch.Generator().manual_seed(seed + 1),
                        dtype=torch.float64)
        with torch.no_grad():
            y_ref = model64(x).reshape(64, -1)
        scale = float(amap.W.abs().max())
        out: dict[str, Any] = {
            "model": args.affine_model, "input_shape": IN_SHAPE, "n_out": n_out, "n_in": n_in,
            "threads": times.threads, "repeats": repeats,
            "seconds": dict(times.median), "cpu_seconds": cpu,
            "spread": {k: times.spread(k) for k in candidates},
            "speedup_vs_jacrev": times.ratio("jacrev", "package"),
            "speedup_vs_jacrev_gemm_mode": times.ratio("jacrev_gemm_mode", "package"),
            "forward_gflop": flops_fwd / 1e9, "layers_counted": n_layers,
            "gflop_forward_plus_adjoints": flops / 1e9, "dgemm_peak_gflops": peak / 1e9,
            "floor_s": floor, "package_over_floor": times.median["package"] / floor,
            "jacrev_over_floor": times.median["jacrev"] / floor,
            "dgemm_peak_gflops_cpu": peak_flops / cpu["dgemm_peak"] / 1e9,
            "package_over_floor_cpu": cpu["package"] / (flops * cpu["dgemm_peak"] / peak_flops),
            "speedup_vs_jacrev_cpu": times.cpu_ratio("jacrev", "package"),
            "package_gflops": flops / times.median["package"] / 1e9,
            "W_diff_vs_jacrev": float((amap.W - W_j).abs().max()) / scale,  # both float64
            "B_diff_vs_jacrev": float((amap.B - B_j).abs().max()) / float(B_j.abs().max()),
            "W_diff_gemm_mode_vs_jacrev":
                float((got["jacrev_gemm_mode"][0] - W_j).abs().max()) / scale,
            "package_map_rel_err": _rel(amap(x), y_ref),
            "jacrev_map_rel_err": _rel(x.reshape(64, -1) @ W_j.t() + B_j, y_ref),
            "package_passes": amap.passes,
            # the last timed call's split: weight cast + forward at batch 1 (B, tape) / adjoints
            "package_setup_s": amap.info["seconds_setup"], "package_adjoint_s": amap.info["seconds_passes"],
            "floor_forward_s": flops_fwd / peak, "floor_adjoint_s": flops_fwd * n_out / peak,
        }
        out["equal_accuracy"] = out["W_diff_vs_jacrev"] <= 1e-11
        out["target_speedup>=2"] = out["speedup_vs_jacrev"] >= 2
        if args.affine_jacfwd:
            start = time.perf_counter()
            torch.func.jacfwd(model64)(x0)
            out["seconds"]["jacfwd"] = time.perf_counter() - start
            out["jacfwd_over_package"] = out["seconds"]["jacfwd"] / times.median["package"]
        return out
    finally:
        torch.set_num_threads(saved)


def _evaluator_rows(batch: int, repeats: int, seed: int) -> dict[str, Any]:
    """The kernel evaluators vs the bare torch call on the same weights (float32)."""
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(16, 8, 5, 5, generator=g), torch.randn(16, generator=g)
    op = KernelOperator.from_weight(w, b, padding=2, dtype=torch.float32)
    x = torch.randn(batch, 8, 28, 28, generator=g)
    direct = DirectConv(op, (28, 28)).eval()
    fft = OperatorEvaluator(op, tuple(x.shape), method="fft").eval()
    small_w, small_b = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, generator=g)
    small = KernelOperator.from_weight(small_w, small_b, padding=1, dtype=torch.float32)
    xs = torch.randn(batch, 2, 12, 12, generator=g)
    gemm = OperatorEvaluator(small, tuple(xs.shape), method="gemm").eval()
    matrix, mbias = gemm.matrix, gemm.bias
    tw = direct.weight
    candidates = {
        "DirectConv": lambda: direct(x), "F.conv2d": lambda: F.conv2d(x, tw, direct.bias, padding=2),
        "evaluator_fft": lambda: fft(x), "bare_fft": lambda: _fft_apply(fft.op, fft.spectrum, x, "zeros"),
        "evaluator_gemm": lambda: gemm(xs), "F.linear_gemm": lambda: F.linear(xs.flatten(1), matrix, mbias),
    }
    times = _Timed(candidates, repeats, sample_seconds=0.02)
    with torch.no_grad():
        ref_direct = F.conv2d(x.double(), w.double(), b.double(), padding=2)
        ref_small = F.conv2d(xs.double(), small_w.double(), small_b.double(), padding=1)
        errs = {"DirectConv": _rel(direct(x), ref_direct), "evaluator_fft": _rel(fft(x), ref_direct),
                "evaluator_gemm": _rel(gemm(xs), ref_small)}
    pairs = {"DirectConv": "F.conv2d", "evaluator_fft": "bare_fft", "evaluator_gemm": "F.linear_gemm"}
    return {"seconds": dict(times.median),
            "over_bare": {k: times.ratio(k, v) for k, v in pairs.items()},
            "over_bare_cpu": {k: times.cpu_ratio(k, v) for k, v in pairs.items()},
            "rel_err_vs_float64_conv2d": errs, "batch": batch}


def row_module(args: argparse.Namespace) -> dict[str, Any]:
    """The collapsed float32 module vs bare torch products and the GEMM bound."""
    repeats, seed = getattr(args, "repeats", 5), getattr(args, "seed", 0)
    saved = torch.get_num_threads()
    torch.set_num_threads(args.affine_threads)
    try:
        g = torch.Generator().manual_seed(seed)
        n_out, n_in, batch = 10, math.prod(IN_SHAPE), args.affine_batch
        W64 = torch.randn(n_out, n_in, generator=g, dtype=torch.float64) / math.sqrt(n_in)
        B64 = torch.randn(n_out, generator=g, dtype=torch.float64)
        module = AffineModule(W64, B64, IN_SHAPE, (n_out,)).eval()
        W, B = module.weight.detach(), module.bias.detach()
        X = torch.randn(batch, *IN_SHAPE, generator=g)
        X2, Bc, Wt = X.reshape(batch, n_in), B.unsqueeze(1), W.t().contiguous()
        peak_fn, peak_flops = _peak(torch.float32)
        candidates = {
            "AffineModule": lambda: module(X),
            "addmm(B,X,W.t())": lambda: torch.addmm(B, X2, W.t()),
            "F.linear": lambda: F.linear(X2, W, B),
            "addmm(B,X,Wt) Wt contiguous": lambda: torch.addmm(B, X2, Wt),
            "mm(W,X.T)": lambda: torch.mm(W, X2.t()),
            "addmm(B1,W,X.T).T": lambda: torch.addmm(Bc, W, X2.t()).t().contiguous(),
            "sgemm_peak": peak_fn,
        }
        times = _Timed(candidates, repeats, sample_seconds=0.02)
        peak = peak_flops / times.median["sgemm_peak"]
        peak_cpu = peak_flops / times.cpu["sgemm_peak"]
        bound = 2.0 * batch * n_in * n_out / peak
        with torch.no_grad():
            ref = X2.double() @ W.double().t() + B.double()
            y = module(X)
        out: dict[str, Any] = {
            "shape": f"({batch} x {n_in}) @ ({n_in} x {n_out}) + bias, float32",
            "threads": times.threads, "repeats": repeats, "seconds": {
                k: v for k, v in times.median.items() if k != "sgemm_peak"},
            "spread": {k: times.spread(k) for k in candidates},
            "sgemm_peak_gflops": peak / 1e9, "gemm_bound_s": bound,
            "affine_module_over_addmm": times.ratio("AffineModule", "addmm(B,X,W.t())"),
            "affine_module_over_linear": times.ratio("AffineModule", "F.linear"),
            "affine_module_over_same_product": times.ratio("AffineModule", "addmm(B1,W,X.T).T"),
            "affine_module_over_mm_no_bias": times.ratio("AffineModule", "mm(W,X.T)"),
            "affine_module_over_gemm_bound": times.median["AffineModule"] / bound,
            "addmm_over_gemm_bound": times.median["addmm(B,X,W.t())"] / bound,
            "cpu_seconds": {k: v for k, v in times.cpu.items() if k != "sgemm_peak"},
            "sgemm_peak_gflops_cpu": peak_cpu / 1e9,
            "affine_module_over_addmm_cpu": times.cpu_ratio("AffineModule", "addmm(B,X,W.t())"),
            "affine_module_over_same_product_cpu": times.cpu_ratio("AffineModule", "addmm(B1,W,X.T).T"),
            "affine_module_over_gemm_bound_cpu":
                times.cpu["AffineModule"] / (2.0 * batch * n_in * n_out / peak_cpu),
            "module_rel_err_vs_float64": _rel(y, ref),
            "module_vs_F.linear_max_abs": float((y - F.linear(X2, W, B)).abs().max()),
        }
        out["evaluators"] = _evaluator_rows(min(batch, 64), repeats, seed)
        out["target_module<=1.2x_addmm"] = out["affine_module_over_addmm"] <= 1.2
        out["target_module<=2x_bound"] = out["affine_module_over_gemm_bound"] <= 2
        out["target_evaluators<=1.2x_bare"] = max(out["evaluators"]["over_bare"].values()) <= 1.2
        return out
    finally:
        torch.set_num_threads(saved)


def row_compiled(args: argparse.Namespace) -> dict[str, Any]:
    """The extra row: the original linear network on a batch of ``--affine-batch`` in
    float32, eager and under ``torch.compile`` (inductor; compile time reported apart),
    against the collapsed :class:`AffineModule` extracted from it.  When ``torch.compile``
    cannot run here (no working C++ toolchain, say) the row says why instead."""
    repeats, seed = getattr(args, "repeats", 5), getattr(args, "seed", 0)
    saved = torch.get_num_threads()
    torch.set_num_threads(args.affine_threads)
    try:
        model = build_model(args.affine_model, seed)
        x = torch.randn(args.affine_batch, *IN_SHAPE, generator=torch.Generator().manual_seed(seed))
        amap = extract_affine(model, IN_SHAPE)
        module = AffineModule(amap.W, amap.B, IN_SHAPE, (amap.W.shape[0],)).eval()
        out: dict[str, Any] = {"model": args.affine_model, "batch": args.affine_batch}
        candidates: dict[str, Callable[[], Any]] = {"eager": lambda: model(x),
                                                    "AffineModule": lambda: module(x)}
        try:
            compiled = torch.compile(model)
            start = time.perf_counter()
            with torch.no_grad():
                y_compiled = compiled(x)
            out["compile_seconds"] = time.perf_counter() - start
            candidates["torch.compile"] = lambda: compiled(x)
        except Exception as exc:  # noqa: BLE001 - an optional peer; the row records why
            out["compile_unavailable"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            y_compiled = None
        times = _Timed(candidates, repeats, sample_seconds=0.05)
        with torch.no_grad():
            ref = model.double()(x.double())
            model.float()
            out["rel_err_vs_float64"] = {"eager": _rel(model(x), ref), "AffineModule": _rel(module(x), ref)}
            if y_compiled is not None:
                out["rel_err_vs_float64"]["torch.compile"] = _rel(y_compiled, ref)
        out.update({"threads": times.threads, "repeats": repeats, "seconds": dict(times.median),
                    "eager_over_module": times.ratio("eager", "AffineModule")})
        if "torch.compile" in candidates:
            out["compiled_over_module"] = times.ratio("torch.compile", "AffineModule")
        return out
    finally:
        torch.set_num_threads(saved)


def table_lines(report: dict[str, Any]) -> list[str]:
    """The rows of ``report`` (keys ``affine`` and/or ``module``) as text lines."""
    lines: list[str] = []
    if "affine" in report:
        r = report["affine"]
        s = r["seconds"]
        lines.append(f"\naffine extraction, linear {r['model']} on 1x28x28 -> {r['n_out']} "
                     f"(W {r['n_out']} x {r['n_in']}), float64, {r['threads']} thread(s), "
                     f"median of {r['repeats']} interleaved")
        lines.append(f"  {'path':<44}{'seconds':>9}{'cpu s':>8}{'x package':>11}{'/ floor':>9}"
                     f"{'spread':>8}")
        for key, label in (("package", "laurentnet extract_affine (vjp, batched)"),
                           ("jacrev", "torch.func.jacrev, float64 copy"),
                           ("jacrev_gemm_mode", "jacrev inside laurentnet GemmConvMode"),
                           ("jacfwd", "torch.func.jacfwd, float64 copy (1 sample)")):
            if key in s:
                ratio = {"package": 1.0, "jacrev": r["speedup_vs_jacrev"],
                         "jacrev_gemm_mode": r["speedup_vs_jacrev_gemm_mode"]}.get(
                    key, s[key] / s["package"])
                cpu = r["cpu_seconds"].get(key, s[key])
                lines.append(f"  {label:<44}{s[key]:>9.3f}{cpu:>8.3f}{ratio:>11.2f}"
                             f"{s[key] / r['floor_s']:>9.2f}{r['spread'].get(key, 1.0):>8.2f}")
        lines.append(f"  FLOP floor: {r['gflop_forward_plus_adjoints']:.1f} GFLOP (1 forward "
                     f"{r['forward_gflop']:.2f} + {r['n_out']} adjoints, {r['layers_counted']} layers) "
                     f"/ dgemm peak {r['dgemm_peak_gflops']:.1f} GFLOP/s = {r['floor_s']:.3f} s; "
                     f"package {r['package_gflops']:.1f} GFLOP/s = {r['package_over_floor']:.2f}x floor")
        lines.append(f"  package split (last call, wall): cast + forward {r['package_setup_s']:.3f} s "
                     f"(floor {r['floor_forward_s']:.3f}), {r['n_out']} adjoints as one batched "
                     f"backward {r['package_adjoint_s']:.3f} s (floor {r['floor_adjoint_s']:.3f})")
        lines.append(f"  in CPU seconds of this process: dgemm peak {r['dgemm_peak_gflops_cpu']:.1f} "
                     f"GFLOP/s, package {r['package_over_floor_cpu']:.2f}x floor, jacrev / package "
                     f"{r['speedup_vs_jacrev_cpu']:.2f}")
        lines.append(f"  max|W - W_jacrev| / max|W| = {r['W_diff_vs_jacrev']:.1e} (<= 1e-11: "
                     f"{r['equal_accuracy']}), B: {r['B_diff_vs_jacrev']:.1e}; map rel. error vs "
                     f"float64 net: package {r['package_map_rel_err']:.1e}, jacrev "
                     f"{r['jacrev_map_rel_err']:.1e}")
        lines.append(f"  speedup vs jacrev {r['speedup_vs_jacrev']:.2f}x (target >= 2: "
                     f"{'MET' if r['target_speedup>=2'] else 'MISSED'})")
    if "module" in report:
        r = report["module"]
        s = r["seconds"]
        base = s["addmm(B,X,W.t())"]
        lines.append(f"\ncollapsed module {r['shape']}, {r['threads']} thread(s), median of "
                     f"{r['repeats']} interleaved")
        lines.append(f"  {'path':<36}{'us':>9}{'cpu us':>9}{'/ addmm':>9}{'/ bound':>9}{'spread':>8}")
        for key, us in s.items():
            lines.append(f"  {key:<36}{1e6 * us:>9.1f}{1e6 * r['cpu_seconds'][key]:>9.1f}"
                         f"{us / base:>9.2f}{us / r['gemm_bound_s']:>9.2f}{r['spread'][key]:>8.2f}")
        lines.append(f"  GEMM bound 2 N n_in n_out / sgemm peak {r['sgemm_peak_gflops']:.1f} GFLOP/s "
                     f"= {1e6 * r['gemm_bound_s']:.1f} us")
        lines.append(f"  AffineModule / addmm {r['affine_module_over_addmm']:.2f} (per-round median; "
                     f"target <= 1.2), / F.linear {r['affine_module_over_linear']:.2f}, / the same "
                     f"product bare {r['affine_module_over_same_product']:.2f}, / GEMM bound "
                     f"{r['affine_module_over_gemm_bound']:.2f} (target <= 2); rel. error vs float64 "
                     f"{r['module_rel_err_vs_float64']:.1e}")
        lines.append(f"  in CPU seconds: sgemm peak {r['sgemm_peak_gflops_cpu']:.1f} GFLOP/s; AffineModule "
                     f"/ addmm {r['affine_module_over_addmm_cpu']:.2f}, / the same product bare "
                     f"{r['affine_module_over_same_product_cpu']:.2f}, / GEMM bound "
                     f"{r['affine_module_over_gemm_bound_cpu']:.2f}")
        e = r["evaluators"]
        lines.append(f"  kernel evaluators (float32, batch {e['batch']}), over the bare torch call: "
                     + ", ".join(f"{k} {v:.2f}" for k, v in e["over_bare"].items())
                     + " (CPU: " + ", ".join(f"{v:.2f}" for v in e["over_bare_cpu"].values()) + ")"
                     + "; rel. errors vs float64 conv2d: "
                     + ", ".join(f"{k} {v:.1e}" for k, v in e["rel_err_vs_float64_conv2d"].items()))
    if "compiled" in report:
        r = report["compiled"]
        lines.append(f"\nthe original linear {r['model']} on a batch of {r['batch']} (float32, "
                     f"{r.get('threads', '?')} thread(s)) against the collapsed AffineModule")
        if "compile_unavailable" in r:
            lines.append(f"  torch.compile unavailable here: {r['compile_unavailable']}")
        lines.append(f"  {'path':<36}{'ms':>10}{'/ module':>10}{'rel err':>10}")
        for key, sec in r["seconds"].items():
            lines.append(f"  {key:<36}{1e3 * sec:>10.3f}{sec / r['seconds']['AffineModule']:>10.1f}"
                         f"{r['rel_err_vs_float64'][key]:>10.1e}")
        if "compile_seconds" in r:
            lines.append(f"  (torch.compile's first call, compiling: {r['compile_seconds']:.1f} s)")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=lambda s: [x for x in s.split(",") if x], default=["affine", "module"],
                   help="comma-separated, of affine, module, compiled")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    add_arguments(p)
    args = p.parse_args(argv)
    if set(args.rows) - {"affine", "module", "compiled"}:
        p.error(f"unknown rows {sorted(set(args.rows) - {'affine', 'module', 'compiled'})}")
    report: dict[str, Any] = {}
    if "affine" in args.rows:
        report["affine"] = row_affine(args)
        report["speedup_vs_jacrev"] = report["affine"]["speedup_vs_jacrev"]
        report["affine_package_over_floor"] = report["affine"]["package_over_floor"]
        report["affine_W_diff_vs_jacrev"] = report["affine"]["W_diff_vs_jacrev"]
    if "module" in args.rows:
        report["module"] = row_module(args)
        report["affine_module_over_addmm"] = report["module"]["affine_module_over_addmm"]
        report["affine_module_over_gemm_bound"] = report["module"]["affine_module_over_gemm_bound"]
        report["affine_module_rel_err"] = report["module"]["module_rel_err_vs_float64"]
    if "compiled" in args.rows:
        report["compiled"] = row_compiled(args)
    print(json.dumps(report, default=float) if args.json else "\n".join(table_lines(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
