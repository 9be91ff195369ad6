"""The package against what a user would run instead, side by side in one process.

Rows (issue 14), each the package's path and its alternatives on the same inputs, timed as
medians of interleaved repeats (A, B, A, B, ...), with the ratio and the error:

* ``exact``: the exact collapse of ``--layers`` 2-D 3x3 convolutions ``C -> C`` with random
  rational weights ``p/q`` (|p|, q <= 9): ``laurentnet.algebra.collapse`` (``backend="auto"``,
  which is python-flint for numeric weights; ``backend="sympy"`` too) against the same chain
  of products ``K_L (... (K_2 K_1))`` in bare python-flint ``fmpq_mpoly`` (matrices as lists
  of lists, ``sum(m[i][k] * acc[k][j])``).  Both results are compared term by term.
  ``package_over_flint`` is the package's time over the bare products' (target <= 2).
* ``exact-wide``: the same for ``--wide-channels`` (64) channels with float32 weights
  (PyTorch's default initialisation), the package alone by default (target <= 60 s);
  ``--wide-baseline`` adds the bare ``fmpq_mpoly`` chain (minutes at 64 channels).
* ``kernels``: the FLINT backend's two product kernels forced on the same 8-layer chain at
  several widths (the crossover behind ``algebra.flint_operator.DENSE_MIN_TRIPLES``).
* ``ground-types``: the sympy-ring path with sympy's ``gmpy`` and ``flint`` ground types
  (each in a child process, since sympy fixes them at import; interleaved).

* ``affine`` (:mod:`peers_affine`): extracting ``W, B`` of the linear ResNet-34 on 1x28x28
  in float64, ``extract_affine`` against ``torch.func.jacrev`` at equal accuracy, also as
  FLOPs over the floor (one forward + ``n_out`` adjoints at the dgemm peak measured in the
  same rounds).  ``speedup_vs_jacrev`` (target >= 2).
* ``module`` (:mod:`peers_affine`): the collapsed ``AffineModule`` (10 x 784, batch 256,
  float32) against ``addmm``, ``F.linear``, ``mm`` and the GEMM bound; the kernel evaluators
  against their bare torch call.  ``affine_module_over_addmm`` (target <= 1.2).
* ``numeric`` (:mod:`peers_numeric`): the numeric collapse of 8 layers of 3x3 at 256
  channels against composing the weights with ``F.conv2d``, float64 and float32.
  ``numeric_speedup_vs_conv2d`` (target >= 2).
* ``compiled`` (extra, not in the defaults; minutes of compiling): the original network
  eager and under ``torch.compile`` against the collapsed module.

``--json`` prints one object: ``package_over_flint``, ``speedup_vs_jacrev``,
``numeric_speedup_vs_conv2d``, ``affine_module_over_addmm``, ``exact_seconds_package``,
``exact_seconds_flint``, ``exact_agree``, ``wide_seconds_package`` ... and the errors.

    python benchmarks/peers.py [--rows exact,exact-wide,affine,module,numeric] [--repeats 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from laurentnet.algebra import Network, collapse, sympy_ground_types  # noqa: E402
from laurentnet.algebra import flint_operator  # noqa: E402

ROWS = ("exact", "exact-wide", "kernels", "ground-types", "affine", "module", "numeric",
        "compiled")


CPU: dict[str, float] = {}


def interleaved(functions: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall seconds of each function over ``repeats`` rounds; a round calls every
    function once, in turn, so a busy machine slows all of them alike.  The median CPU
    seconds of this process land in ``CPU[name]`` (less sensitive to other processes)."""
    samples: dict[str, list[float]] = {name: [] for name in functions}
    cpu: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            samples[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    CPU.update({name: statistics.median(values) for name, values in cpu.items()})
    return {name: statistics.median(values) for name, values in samples.items()}


# -- exact collapse ---------------------------------------------------------------------------
def rational_weights(seed: int, layers: int, channels: int) -> list[np.ndarray]:
    """Random rationals ``p/q`` (|p|, q <= 9), as in ``benchmarks/symbolic.py``."""
    from symbolic import random_weights  # this folder is on sys.path when run as a script
    return random_weights(seed, layers, channels)


def float32_weights(seed: int, layers: int, channels: int) -> list[np.ndarray]:
    """PyTorch's default ``Conv2d`` initialisation (uniform, bound ``1/sqrt(fan_in)``)."""
    g = np.random.default_rng(seed)
    bound = 1 / np.sqrt(9 * channels)
    return [g.uniform(-bound, bound, (channels, channels, 3, 3)).astype(np.float32)
            for _ in range(layers)]


def chain_network(weights: list[np.ndarray]) -> Network:
    net = Network(2, weights[0].shape[1])
    x = net.input
    for w in weights:
        x = net.conv(x, w, padding=1)
    net.set_output(x)
    return net


def _fraction(value: Any) -> tuple[int, int]:
    if isinstance(value, (float, np.floating)):
        return float(value).as_integer_ratio()
    return int(value.p), int(value.q)


def bare_flint_matrices(weights: list[np.ndarray]) -> tuple[Any, list[Any]]:
    """Each layer as a list of lists of ``fmpq_mpoly``: ``K_{o,c} = sum_a w[o,c,a]
    x^(2-a1) y^(2-a2)`` (padding 1 shifted by ``x y`` so exponents are nonnegative)."""
    import flint
    ctx = flint.fmpq_mpoly_ctx.get(("x", "y"), "lex")
    mats = []
    for w in weights:
        c_out, c_in = w.shape[:2]
        mats.append([[ctx.from_dict({(2 - a, 2 - b): flint.fmpq(*_fraction(w[o, c, a, b]))
                                     for a in range(3) for b in range(3) if w[o, c, a, b] != 0})
                      for c in range(c_in)] for o in range(c_out)])
    return ctx, mats


def bare_flint_chain(ctx: Any, mats: list[Any]) -> list[list[Any]]:
    """``K_L (... (K_2 K_1))``, entry by entry."""
    zero = ctx.from_dict({})
    acc = mats[0]
    for m in mats[1:]:
        n_mid, n_cols = len(acc), len(acc[0])
        acc = [[sum((row[k] * acc[k][j] for k in range(n_mid)), zero) for j in range(n_cols)]
               for row in m]
    return acc


def same_result(operator: Any, bare: list[list[Any]], layers: int) -> bool:
    """Term by term: the package's ``z^e`` coefficient is bare flint's at ``e + layers``."""
    for o, row in enumerate(operator.matrix):
        for c, entry in enumerate(row):
            expected = {tuple(int(v) for v in e): coefficient
                        for e, coefficient in zip(bare[o][c].monoms(), bare[o][c].coeffs())}
            got = {tuple(a + layers for a in e): value for e, value in entry.iterterms()}
            if set(got) != set(expected):
                return False
            if any(int(got[e].numerator) != int(expected[e].p) or
                   int(got[e].denominator) != int(expected[e].q) for e in got):
                return False
    return True


def row_exact(args: argparse.Namespace, layers: int, channels: int, weights: list[np.ndarray],
              baseline: bool = True, repeats: int | None = None) -> dict[str, Any]:
    net = chain_network(weights)
    shape = (channels, 20, 20)
    result: dict[str, Any] = {}
    functions: dict[str, Callable[[], Any]] = {
        "package": lambda: result.__setitem__("package", collapse(net, shape))}
    if baseline:
        ctx, mats = bare_flint_matrices(weights)
        functions["flint"] = lambda: result.__setitem__("flint", bare_flint_chain(ctx, mats))
    if args.sympy and channels <= 16:
        functions["sympy"] = lambda: collapse(net, shape, backend="sympy")
    times = interleaved(functions, repeats or args.repeats)
    out = {"layers": layers, "channels": channels, "seconds": times,
           "cpu_seconds": {name: CPU[name] for name in times}}
    if baseline:
        out["agree"] = same_result(result["package"].operator, result["flint"], layers)
        out["package_over_flint"] = times["package"] / times["flint"]
    return out


def row_kernels(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Both FLINT product kernels forced, at several widths (float32 weights)."""
    rows = []
    original = flint_operator.product_kernel
    for channels in args.kernel_channels:
        weights = float32_weights(args.seed, args.kernel_layers, channels)
        net = chain_network(weights)
        shape = (channels, 20, 20)

        def run(kernel: str) -> Callable[[], Any]:
            def go() -> Any:
                flint_operator.product_kernel = lambda outer, inner: kernel
                try:
                    return collapse(net, shape)
                finally:
                    flint_operator.product_kernel = original
            return go
        times = interleaved({"sparse": run("sparse"), "dense": run("dense")}, args.repeats)
        rows.append({"channels": channels, "layers": args.kernel_layers, "seconds": times,
                     "dense_over_sparse": times["dense"] / times["sparse"]})
    return rows


_GROUND_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from peers import chain_network, rational_weights
from laurentnet.algebra import collapse, sympy_ground_types
layers, channels, seed = map(int, sys.argv[2:5])
net = chain_network(rational_weights(seed, layers, channels))
start = time.perf_counter()
collapse(net, (channels, 20, 20), backend="sympy")
print(json.dumps({"seconds": time.perf_counter() - start, "types": sympy_ground_types().in_use}))
"""


def row_ground_types(args: argparse.Namespace) -> dict[str, Any]:
    here = os.path.dirname(os.path.abspath(__file__))
    samples: dict[str, list[float]] = {"gmpy": [], "flint": []}
    for _ in range(args.repeats):
        for types in samples:
            env = dict(os.environ, SYMPY_GROUND_TYPES=types)
            done = subprocess.run([sys.executable, "-c", _GROUND_CHILD, here, str(args.layers),
                                   str(args.channels), str(args.seed)], env=env,
                                  capture_output=True, text=True, check=True)
            got = json.loads(done.stdout.splitlines()[-1])
            assert got["types"] == types, got
            samples[types].append(got["seconds"])
    times = {k: statistics.median(v) for k, v in samples.items()}
    return {"seconds": times, "flint_over_gmpy": times["flint"] / times["gmpy"]}


# -- the report -----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = set(args.rows)
    report: dict[str, Any] = {"ground_types": str(sympy_ground_types()), "repeats": args.repeats}
    if "exact" in rows:
        weights = rational_weights(args.seed, args.layers, args.channels)
        exact = row_exact(args, args.layers, args.channels, weights)
        report["exact"] = exact
        report["package_over_flint"] = exact["package_over_flint"]
        report["exact_seconds_package"] = exact["seconds"]["package"]
        report["exact_seconds_flint"] = exact["seconds"]["flint"]
        report["exact_agree"] = exact["agree"]
        if args.deep_layers:
            deep = row_exact(args, args.deep_layers, args.channels,
                             rational_weights(args.seed, args.deep_layers, args.channels))
            report["exact_deep"] = deep
    if "exact-wide" in rows:
        weights = float32_weights(args.seed, args.layers, args.wide_channels)
        wide = row_exact(args, args.layers, args.wide_channels, weights,
                         baseline=args.wide_baseline, repeats=1)
        report["exact_wide"] = wide
        report["wide_seconds_package"] = wide["seconds"]["package"]
        report["wide_cpu_seconds_package"] = wide["cpu_seconds"]["package"]
        if args.wide_baseline:
            report["wide_package_over_flint"] = wide["package_over_flint"]
            report["wide_agree"] = wide["agree"]
    if "kernels" in rows:
        report["kernels"] = row_kernels(args)
    if "ground-types" in rows:
        report["sympy_ground_types"] = row_ground_types(args)
    if "affine" in rows:
        import peers_affine  # this folder is on sys.path when run as a script
        report["affine"] = peers_affine.row_affine(args)
        report["speedup_vs_jacrev"] = report["affine"]["speedup_vs_jacrev"]
    if "module" in rows:
        import peers_affine
        report["module"] = peers_affine.row_module(args)
        report["affine_module_over_addmm"] = report["module"]["affine_module_over_addmm"]
    if "compiled" in rows:
        import peers_affine
        report["compiled"] = peers_affine.row_compiled(args)
    if "numeric" in rows:
        import peers_numeric
        report["numeric"] = peers_numeric.row_numeric(args)
        report["numeric_speedup_vs_conv2d"] = report["numeric"]["numeric_speedup_vs_conv2d"]
    return report


def table(r: dict[str, Any]) -> str:
    out = [f"{r['ground_types']}; medians of {r['repeats']} interleaved repeats"]

    def exact_rows(label: str, row: dict[str, Any]) -> None:
        s = row["seconds"]
        out.append(f"\n{label}: {row['layers']} layers x {row['channels']} channels of 3x3")
        cpu = row["cpu_seconds"]
        out.append(f"  {'path':<48}{'seconds':>10}{'cpu s':>9}{'ratio':>9}")
        for key, label in (("package", "laurentnet collapse (auto: python-flint)"),
                           ("flint", "bare python-flint fmpq_mpoly, same products"),
                           ("sympy", "laurentnet collapse, backend=sympy")):
            if key in s:
                out.append(f"  {label:<48}{s[key]:>10.3f}{cpu[key]:>9.3f}"
                           f"{s[key] / s['package']:>9.2f}")
        if "agree" in row:
            out.append(f"  package / bare flint = {row['package_over_flint']:.2f} (target <= 2); "
                       f"results agree term by term: {row['agree']}")
    if "exact" in r:
        exact_rows("exact collapse, rational weights", r["exact"])
    if "exact_deep" in r:
        exact_rows("exact collapse, rational weights", r["exact_deep"])
    if "exact_wide" in r:
        exact_rows("exact collapse, float32 weights", r["exact_wide"])
        out.append(f"  {r['wide_seconds_package']:.1f} s wall, "
                   f"{r['wide_cpu_seconds_package']:.1f} s CPU (target <= 60 s)")
    if "kernels" in r:
        out.append("\nFLINT product kernels forced (float32 weights)")
        out.append(f"  {'channels':>8}{'layers':>8}{'sparse s':>10}{'dense s':>10}{'dense/sparse':>14}")
        for k in r["kernels"]:
            out.append(f"  {k['channels']:>8}{k['layers']:>8}{k['seconds']['sparse']:>10.3f}"
                       f"{k['seconds']['dense']:>10.3f}{k['dense_over_sparse']:>14.2f}")
    if "sympy_ground_types" in r:
        g = r["sympy_ground_types"]
        out.append(f"\nsympy-ring collapse (backend=sympy) by ground types: gmpy "
                   f"{g['seconds']['gmpy']:.3f} s, flint {g['seconds']['flint']:.3f} s "
                   f"(flint / gmpy = {g['flint_over_gmpy']:.2f})")
    if "affine" in r or "module" in r or "compiled" in r:
        import peers_affine
        out += ["", *peers_affine.table_lines(r)]
    if "numeric" in r:
        import peers_numeric
        out += ["", *peers_numeric.table_lines(r["numeric"])]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=lambda s: [x for x in s.split(",") if x],
                   default=["exact", "exact-wide", "affine", "module", "numeric"], help=f"comma-separated, of {', '.join(ROWS)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--deep-layers", type=int, default=0,
                   help="also the exact row with this many layers (the issue's 16)")
    p.add_argument("--wide-channels", type=int, default=64)
    p.add_argument("--wide-baseline", action="store_true",
                   help="also run the bare fmpq_mpoly chain at the wide width (slow)")
    p.add_argument("--kernel-channels", type=lambda s: [int(x) for x in s.split(",")],
                   default=[8, 16, 24, 32])
    p.add_argument("--kernel-layers", type=int, default=6)
    p.add_argument("--sympy", action="store_true", help="also time backend='sympy'")
    import peers_affine
    import peers_numeric  # the rows of issue 14 points 2-4, in their own files
    peers_affine.add_arguments(p)
    peers_numeric.add_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    unknown = set(args.rows) - set(ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    report = run(args)
    print(json.dumps(report, default=float) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
