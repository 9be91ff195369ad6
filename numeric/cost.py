"""What evaluating a convolution costs, four ways, and which way is cheapest.

For a collapsed operator ``down_s K + b`` (C_out x C_in, stored kernel ``k``) on inputs of
size ``(B, C_in, *n)`` with output window ``out`` (:meth:`KernelOperator.output_shape`):

* **direct** (``conv{n}d``): ``B C_out C_in prod(k) prod(out)`` multiply-adds;
* **fft**: real FFTs of size ``L`` (``L = n`` circular, ``L >= n + k - 1`` zero padding),
  ``~1.25 L log2 L`` multiply-adds each for the ``B C_in`` inputs and ``B C_out`` outputs,
  plus ``4 B C_out C_in F`` for the per-frequency complex products (``F`` one-sided
  frequencies); the kernel spectrum is computed once;
* **gemm**: one dense ``(C_out prod(out)) x (C_in prod(n))`` matrix, ``B rows cols``
  multiply-adds, and the matrix has to fit the memory budget;
* **layers**: the original layers, each a direct convolution on the size it sees.

Time is estimated roofline-style, ``max(macs / rate, bytes / bandwidth) + calls * overhead``
with a rate per method and dtype (a :class:`Machine`; the defaults are rough figures for a
small CPU — the ranking, not the absolute time, is what they are for).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import log2, prod
from typing import TYPE_CHECKING, Mapping, Sequence

from scipy.fft import next_fast_len

from ..algebra.errors import InvalidInputError, InvalidTypeError, UnknownNameError
from ..algebra.validate import int_arg, sequence_arg
from .kernels import KernelOperator

if TYPE_CHECKING:
    from .border import BorderPlan
from .memory import format_bytes, resolve_budget

__all__ = ["Machine", "MethodCost", "CostReport", "estimate_costs", "fft_grid", "METHODS",
           "border_corrected_seconds"]

METHODS = ("direct", "fft", "gemm", "layers")


_RATES = {  # multiply-adds per CPU-second, measured on a small x86 CPU with torch 2.13
    ("gemm", "float32"): 4.5e10, ("direct", "float32"): 8e10, ("fft", "float32"): 1e10,
    ("gemm", "float64"): 2.4e10, ("direct", "float64"): 9e9, ("fft", "float64"): 5e9,
}


@dataclass(frozen=True)
class Machine:
    """Throughput figures that turn counts into seconds: multiply-adds per second per
    ``(method, dtype)`` ('layers' runs at the 'direct' rate; torch's float64 convolution
    has no oneDNN path, hence its low rate), memory bandwidth, and the fixed cost of one
    library call.  Rough defaults; measure and override for a real target."""
    rates: Mapping[tuple[str, str], float] = field(default_factory=lambda: dict(_RATES))
    bytes_per_second: float = 1e10
    call_seconds: float = 3e-5

    def seconds(self, method: str, dtype: str, macs: float, nbytes: float, calls: int) -> float:
        """``max(macs / rate, bytes / bandwidth) + calls * overhead``."""
        key = ("direct" if method == "layers" else method, dtype)
        rate = self.rates.get(key, self.rates.get((key[0], "float32"), 1e10))
        return max(macs / rate, nbytes / self.bytes_per_second) + calls * self.call_seconds


@dataclass(frozen=True)
class MethodCost:
    """One evaluation method: per-call multiply-adds and bytes moved, the memory it keeps
    (``setup_bytes``: weights, spectrum or matrix), the estimated time, and whether it
    fits the memory budget."""
    method: str
    macs: int
    bytes_moved: int
    setup_bytes: int
    seconds: float
    feasible: bool = True
    note: str = ""


@dataclass(frozen=True)
class CostReport:
    """The costs of every method for one operator and input size, the cheapest feasible
    one (``chosen``) and why."""
    input_size: tuple[int, ...]
    padding: str
    costs: tuple[MethodCost, ...]
    chosen: str
    reason: str

    def __getitem__(self, method: str) -> MethodCost:
        for cost in self.costs:
            if cost.method == method:
                return cost
        raise UnknownNameError(f"no cost for method {method!r}; have {[c.method for c in self.costs]}")

    @property
    def collapse_pays(self) -> bool | None:
        """Whether the best collapsed method beats keeping the layers (``None`` when the
        layers were not given)."""
        methods = {c.method: c for c in self.costs if c.feasible}
        if "layers" not in methods:
            return None
        collapsed = [c.seconds for m, c in methods.items() if m != "layers"]
        return bool(collapsed) and min(collapsed) < methods["layers"].seconds

    def __str__(self) -> str:
        head = f"{'method':<8} {'mult-adds':>12} {'bytes moved':>12} {'kept':>11} {'est. time':>11}"
        lines = [f"cost of evaluating on input {self.input_size} ({self.padding} padding)", head]
        for c in self.costs:
            mark = "*" if c.method == self.chosen else " "
            time = f"{c.seconds * 1e3:9.3f}ms" if c.feasible else "  over budget"
            lines.append(f"{mark}{c.method:<7} {c.macs:>12.3e} {format_bytes(c.bytes_moved):>12} "
                         f"{format_bytes(c.setup_bytes):>11} {time:>11}"
                         + (f"  {c.note}" if c.note else ""))
        lines.append(f"chosen: {self.chosen} — {self.reason}")
        return "\n".join(lines)


def fft_grid(op: KernelOperator, sizes: Sequence[int], padding: str) -> tuple[int, ...]:
    """FFT size per axis: ``n`` (circular) or a fast length ``>= n + k - 1`` (zero padding,
    a linear convolution without wrap-around)."""
    if padding == "circular":
        return tuple(sizes)
    return tuple(next_fast_len(n + k - 1, real=True) for n, k in zip(sizes, op.kernel_size))


def _dtype(op: KernelOperator) -> str:
    return str(op.dtype).removeprefix("torch.")


def _direct_kernel(op: KernelOperator, sizes: Sequence[int], padding: str) -> tuple[int, ...]:
    """Kernel extent a direct convolution runs (folded modulo ``n`` for circular
    padding; extended to exponent 0 as :meth:`KernelOperator.to_weight` does)."""
    if padding == "circular":
        op = op.mod_circular(sizes)
    return tuple(max(h, 0) - l + 1 for l, h in zip(op.low, op.high))


def _direct(op: KernelOperator, batch: int, sizes: Sequence[int], padding: str,
            method: str, machine: Machine) -> tuple[MethodCost, tuple[int, ...]]:
    out = op.output_shape(sizes, padding)
    k = _direct_kernel(op, sizes, padding)
    isz = op.coeffs.element_size()
    c_out, c_in = op.shape
    macs = batch * c_out * c_in * prod(k) * prod(out)
    padded = prod(n + kk - 1 for n, kk in zip(sizes, k)) if padding == "circular" else prod(sizes)
    nbytes = isz * (batch * c_in * padded + batch * c_out * prod(out) + c_out * c_in * prod(k))
    calls = 2 if padding == "circular" else 1
    cost = MethodCost(method, macs, nbytes, isz * c_out * c_in * prod(k),
                      machine.seconds(method, _dtype(op), macs, nbytes, calls))
    return cost, out


def _fft(op: KernelOperator, batch: int, sizes: Sequence[int], padding: str,
         machine: Machine, budget: int) -> MethodCost:
    out = op.output_shape(sizes, padding)
    grid = fft_grid(op, sizes, padding)
    n_total, n_freq = prod(grid), prod(grid[:-1]) * (grid[-1] // 2 + 1)
    isz = op.coeffs.element_size()
    c_out, c_in = op.shape
    transforms = batch * (c_in + c_out) * 1.25 * n_total * log2(max(n_total, 2))
    macs = int(transforms + 4 * batch * c_out * c_in * n_freq)
    spectrum = 2 * isz * c_out * c_in * n_freq
    nbytes = isz * batch * (c_in * prod(sizes) + c_out * prod(out)) \
        + 2 * isz * batch * (c_in + c_out) * n_freq + spectrum
    feasible = spectrum <= budget
    seconds = machine.seconds("fft", _dtype(op), macs, nbytes, 4)
    note = "" if feasible else "kernel spectrum over the memory budget"
    return MethodCost("fft", macs, nbytes, spectrum, seconds, feasible, note)


def _gemm(op: KernelOperator, batch: int, sizes: Sequence[int], padding: str,
          machine: Machine, budget: int) -> MethodCost:
    out = op.output_shape(sizes, padding)
    rows, cols = op.out_channels * prod(out), op.in_channels * prod(sizes)
    isz = op.coeffs.element_size()
    macs = batch * rows * cols
    matrix = isz * rows * cols
    nbytes = matrix + isz * batch * (rows + cols)
    feasible = matrix <= budget
    seconds = machine.seconds("gemm", _dtype(op), macs, nbytes, 1)
    note = f"{rows}x{cols} matrix" + ("" if feasible else " over the memory budget")
    return MethodCost("gemm", macs, nbytes, matrix, seconds, feasible, note)


def _layers(layers: Sequence[KernelOperator], batch: int, sizes: Sequence[int], padding: str,
            machine: Machine) -> MethodCost:
    macs = nbytes = setup = 0
    calls, n = 0, tuple(sizes)
    for layer in layers:
        cost, n = _direct(layer, batch, n, padding, "layers", machine)
        macs, nbytes, setup = macs + cost.macs, nbytes + cost.bytes_moved, setup + cost.setup_bytes
        calls += 2 if padding == "circular" else 1
    seconds = machine.seconds("layers", _dtype(layers[0]), macs, nbytes, calls)
    return MethodCost("layers", macs, nbytes, setup, seconds, note=f"{len(layers)} layers")


def _reason(costs: Sequence[MethodCost], chosen: MethodCost) -> str:
    """Why ``chosen`` wins: its estimate against the runner-up's, the methods ruled out by
    the memory budget, and whether collapsing pays compared with the layers."""
    others = sorted((c for c in costs if c.feasible and c is not chosen), key=lambda c: c.seconds)
    parts = []
    if others:
        runner = others[0]
        parts.append(f"est. {chosen.seconds * 1e3:.3g} ms vs {runner.seconds * 1e3:.3g} ms for "
                     f"{runner.method} ({runner.seconds / max(chosen.seconds, 1e-300):.3g}x); "
                     f"{runner.method} needs {runner.macs / max(chosen.macs, 1):.3g}x the "
                     "multiply-adds")
    else:
        parts.append("the only feasible method")
    skipped = [c.method for c in costs if not c.feasible]
    if skipped:
        parts.append(f"{', '.join(skipped)} over the memory budget")
    layers = next((c for c in costs if c.method == "layers" and c.feasible), None)
    if layers is not None:
        collapsed = [c for c in costs if c.feasible and c.method != "layers"]
        best = min(collapsed, key=lambda c: c.seconds) if collapsed else None
        if best is None or best.seconds >= layers.seconds:
            parts.append("collapsing does NOT pay: keeping the layers is cheaper than "
                         + (f"the best collapsed method ({best.method}, "
                            f"{best.seconds / layers.seconds:.3g}x the layers' time)" if best
                            else "any collapsed method"))
        else:
            parts.append(f"collapsing pays: {layers.seconds / best.seconds:.3g}x faster than "
                         "the layers")
    return "; ".join(parts)


def estimate_costs(op: KernelOperator, input_size: Sequence[int], *, padding: str = "zeros",
                   layers: Sequence[KernelOperator] | None = None, budget: int | None = None,
                   machine: Machine | None = None) -> CostReport:
    """Costs of direct, FFT, GEMM (and, given the original ``layers``, keeping them) for
    ``op`` on inputs of size ``(batch, C_in, *n)``; the report names the cheapest method
    within the memory budget."""
    if not isinstance(op, KernelOperator):
        raise InvalidTypeError(f"expected a KernelOperator, got {type(op).__name__}")
    expected = f"a sequence of ints (batch, {op.in_channels}, *n)"
    size = tuple(int_arg(v, "input_size") for v in
                 sequence_arg(input_size, "input_size", expected=expected))
    if len(size) != op.ndim + 2 or size[1] != op.in_channels:
        raise InvalidInputError(f"input_size: the input size must be (batch, {op.in_channels}, {'n, ' * op.ndim}...)"
                                f" for this operator, got {size}")
    if any(v <= 0 for v in size):
        raise InvalidInputError(f"input_size: the input size must be positive (batch >= 1, every spatial size >= 1), "
                                f"got {size}")
    if not isinstance(padding, str) or padding not in ("zeros", "circular"):
        raise InvalidInputError(f"padding must be 'zeros' or 'circular', got {padding!r}")
    if layers is not None:
        layers = sequence_arg(layers, "layers", expected="a sequence of KernelOperators",
                              nonempty=False)
    for i, layer in enumerate(layers or ()):
        if not isinstance(layer, KernelOperator):
            raise InvalidTypeError(f"layers[{i}] must be a KernelOperator, got {type(layer).__name__}")
    machine = machine or Machine()
    budget = resolve_budget(budget)
    batch, sizes = size[0], size[2:]
    costs = [_direct(op, batch, sizes, padding, "direct", machine)[0],
             _fft(op, batch, sizes, padding, machine, budget),
             _gemm(op, batch, sizes, padding, machine, budget)]
    if layers:
        costs.append(_layers(layers, batch, sizes, padding, machine))
    chosen = min((c for c in costs if c.feasible), key=lambda c: c.seconds)
    return CostReport(size, padding, tuple(costs), chosen.method, _reason(costs, chosen))


def border_corrected_seconds(plan: "BorderPlan", dtype: str, layer_calls: int,
                             machine: Machine | None = None) -> float:
    """Estimated time of a border-corrected kernel (:mod:`numeric.border`): the kernel as
    one direct convolution on the interior, plus the ``layer_calls`` layers run on each of
    the plan's strips at the layers' rate, plus one call per crop and concatenation."""
    machine = machine or Machine()
    inner = machine.seconds("direct", dtype, plan.interior_macs, 0,
                            1 if plan.interior_positions else 0)
    strips = len(plan.pieces)
    border = machine.seconds("layers", dtype, plan.border_macs, 0, layer_calls * strips)
    return inner + border + (2 * strips + len(plan.window)) * machine.call_seconds
