"""The memory guard refuses oversized work *before* using the memory, on every path.

The refusals are measured in a fresh process (``tests/memory_probe.py``): the peak resident
size may not grow by more than a small fraction of the estimate while the path decides.
The estimates are then checked against what feasible work really uses (resident growth
for float paths, tracemalloc for the exact ones), and budget arguments are validated.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from laurentnet.algebra import (InvalidBudgetError, MemoryBudgetError, Network, collapse,
                                collapse_affine, memory_limit)
from laurentnet.algebra.collapse import AlgebraBackend, check_walk_budget
from laurentnet.algebra.footprint import walk_footprint
from laurentnet.algebra.memory import memory_budget, resolve_budget
from laurentnet.bridge.demo import EXACT_PROOF_MAX_CHANNELS, _proof_plan, run_demo
from laurentnet.numeric import affine_numeric, collapse_numeric, estimate_costs, extract_affine
from laurentnet.numeric.kernels import KernelOperator
from laurentnet.numeric.network_collapse import NumericBackend

HERE = Path(__file__).resolve().parent
linux_only = pytest.mark.skipif(platform.system() != "Linux",
                                reason="peak memory is read from /proc/self/status")
MB = 2**20


def _run_probe(*selected: str) -> list[dict]:
    env = dict(os.environ)
    env.pop("LAURENTNET_MEMORY_BUDGET", None)
    done = subprocess.run([sys.executable, str(HERE / "memory_probe.py"), *selected],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def probe_records() -> list[dict]:
    return _run_probe()


@linux_only
def test_the_probe_covers_every_guarded_path(probe_records):
    names = " | ".join(r["case"] for r in probe_records)
    for path in ("global collapse_numeric", "global collapse |", "global affine_numeric",
                 "global collapse_affine", "pool128 collapse_numeric", "128 channels exact-width "
                 "collapse", "2048 wide collapse_numeric", "2048 wide affine_numeric",
                 "NumericCollapse.apply", "polymatmul", "KernelOperator.compose",
                 "apply_operator exact", "extract_affine", "demo 3000 channels"):
        assert path in names + " |", f"no probe case for {path!r}"


@linux_only
@pytest.mark.parametrize("index", range(19))
def test_refused_before_the_memory_is_used(probe_records, index):
    record = probe_records[index]
    assert record["refused"], f"{record['case']}: not refused under {record['budget']} bytes"
    assert record["estimate"] > record["budget"] == record["refused_budget"]
    # deciding costs at most a few MB: far below the estimate and the budget
    allowed = min(record["estimate"] / 20, 32 * MB)
    assert record["peak_growth"] <= allowed, (
        f"{record['case']}: the peak grew {record['peak_growth'] / MB:.1f} MB before the "
        f"refusal (estimate {record['estimate'] / MB:.0f} MB)")
    assert record["seconds"] < 5


@linux_only
def test_probe_case_count(probe_records):
    assert len(probe_records) == 19


# -- the estimates against real use -------------------------------------------------------

_REAL_USE = r"""
import json, sys, numpy as np, torch
sys.path.insert(0, sys.argv.pop(1))
from memory_probe import peak_growth, start_peak
from laurentnet.algebra import Network
from laurentnet.algebra.collapse import check_walk_budget
from laurentnet.numeric import collapse_numeric
from laurentnet.numeric.network_collapse import NumericBackend
c, layers, n, stride = map(int, sys.argv[1:])
g = np.random.default_rng(0)
net = Network(2, c)
x = net.input
for i in range(layers):
    x = net.conv(x, g.standard_normal((c, c, 3, 3)), padding=1, stride=stride if i == 0 else 1)
net.set_output(x)
estimate = check_walk_budget(net, net.shapes((c, n, n)), NumericBackend(net, torch.float64))
before = start_peak()
collapse_numeric(net, (c, n, n))
grown = peak_growth(before)
print(json.dumps({"estimate": estimate, "grown": grown}))
"""


@linux_only
@pytest.mark.slow
@pytest.mark.parametrize("args", [(128, 6, 16, 1), (64, 8, 16, 2)])
def test_float_estimate_covers_the_measured_peak(args):
    done = subprocess.run([sys.executable, "-c", _REAL_USE, str(HERE), *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["grown"] > 20 * MB  # the case is big enough to measure
    # allocator arenas per thread make the real peak vary run to run (measured 0.4-1.4x
    # the earlier, leaner estimate); the guard must not be far below it
    assert got["grown"] <= 1.25 * got["estimate"] + 32 * MB, got
    assert got["estimate"] <= 8 * got["grown"], got  # and not wildly pessimistic


def _conv_chain(channels: int, layers: int, seed: int = 0, kernel: int = 3) -> Network:
    g = np.random.default_rng(seed)
    net = Network(2, channels)
    x = net.input
    for _ in range(layers):
        x = net.conv(x, g.integers(-3, 4, (channels, channels, kernel, kernel)),
                     padding=kernel // 2)
    net.set_output(x)
    return net


@pytest.mark.parametrize("channels,layers", [(8, 3), (12, 2)])
def test_exact_estimate_covers_the_traced_peak(channels, layers):
    net = _conv_chain(channels, layers)
    shape = (channels, 10, 10)
    estimate = check_walk_budget(net, net.shapes(shape), AlgebraBackend(net))
    tracemalloc.start()
    try:
        collapse(net, shape, backend="sympy")  # the FLINT backend: test_flint_memory.py
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= estimate <= 8 * peak


class _HeldOnly:
    """Operators cost their dense float64 size; building and multiplying cost nothing: the
    walk's peak is then the operators it holds."""

    def __init__(self, backend):
        self.operator_bytes = backend.operator_bytes

    def layer_bytes(self, shape):
        return 0

    def product_bytes(self, outer, inner, result):
        return 0


def test_the_walk_frees_operators_no_later_node_reads():
    """A deep chain holds one composed operator at a time, not one per layer."""
    layers = 40
    net = _conv_chain(4, layers)
    model = _HeldOnly(NumericBackend(net, torch.float64))
    peak = walk_footprint(net, net.shapes((4, 6, 6)), model)[0]
    # after k layers the composed 4x4 kernel has (2k+1)^2 float64 taps (+ a bias)
    size = [4 * 4 * (2 * k + 1) ** 2 * 8 + 4 * 8 for k in range(layers + 1)]
    assert peak == size[-1] + size[-2]  # the new operator while its input is still held
    assert peak < sum(size) / 5  # keeping all 40 would be the sum


def test_a_branch_keeps_its_source_alive_until_read():
    g = np.random.default_rng(1)
    net = Network(1, 2)
    a = net.conv(net.input, g.integers(-2, 3, (2, 2, 5)), padding=2)
    b = net.conv(a, g.integers(-2, 3, (2, 2, 5)), padding=2)
    c = net.conv(b, g.integers(-2, 3, (2, 2, 5)), padding=2)
    net.set_output(net.add(a, c))
    result = collapse(net, (2, 12))
    x = g.integers(-3, 4, (2, 12))
    numeric = collapse_numeric(net, (2, 12))
    exact = np.array(result.apply(x), dtype=np.float64)
    np.testing.assert_allclose(numeric.apply(torch.tensor(x, dtype=torch.float64)).numpy(),
                               exact, rtol=1e-12, atol=1e-12)


def test_a_fitting_budget_lets_the_work_run():
    net = _conv_chain(4, 2)
    estimate = check_walk_budget(net, net.shapes((4, 6, 6)), AlgebraBackend(net))
    collapse(net, (4, 6, 6), budget=estimate + 1, backend="sympy")  # flint: test_flint_memory
    with pytest.raises(MemoryBudgetError) as info:
        collapse(net, (4, 6, 6), budget=estimate - 1, backend="sympy")
    assert info.value.estimate == estimate and info.value.budget == estimate - 1
    assert "budget" in str(info.value) and "--memory-budget" in str(info.value)


# -- budget arguments ---------------------------------------------------------------------

_BAD_BUDGETS = [0, -5, 0.1, 1e-9, True, False, float("nan"), float("inf"), "lots", "-1G",
                [100], object()]


def _tiny() -> Network:
    net = Network(1, 1)
    net.set_output(net.conv(net.input, np.ones((1, 1, 3)), padding=1))
    return net


_ENTRY_POINTS = {
    "collapse": lambda b: collapse(_tiny(), (1, 5), budget=b),
    "collapse_numeric": lambda b: collapse_numeric(_tiny(), (1, 5), budget=b),
    "collapse_affine": lambda b: collapse_affine(_tiny(), (1, 5), budget=b),
    "affine_numeric": lambda b: affine_numeric(_tiny(), (1, 5), budget=b),
    "extract_affine": lambda b: extract_affine(lambda x: 2 * x, (1, 5), budget=b),
    "compose": lambda b: KernelOperator.identity(1, 1).compose(KernelOperator.identity(1, 1),
                                                                budget=b),
    "estimate_costs": lambda b: estimate_costs(KernelOperator.identity(1, 1), (1, 1, 5),
                                               budget=b),
    "memory_limit": lambda b: memory_limit(b).__enter__(),
}


@pytest.mark.parametrize("entry", sorted(_ENTRY_POINTS))
@pytest.mark.parametrize("budget", _BAD_BUDGETS, ids=repr)
def test_bad_budgets_are_refused_by_every_entry_point(entry, budget):
    with pytest.raises(InvalidBudgetError, match="budget"):
        _ENTRY_POINTS[entry](budget)


@pytest.mark.parametrize("entry", sorted(_ENTRY_POINTS))
def test_good_budgets_are_accepted(entry):
    for budget in (2**30, 2.0**30, "1G", "512MiB", np.int64(2**30)):
        _ENTRY_POINTS[entry](budget)


def test_budget_units():
    assert resolve_budget("200M") == 200 * MB
    assert resolve_budget("1.5K") == 1536
    assert resolve_budget(1e9) == 10**9
    assert resolve_budget(2.9) == 2


@pytest.mark.parametrize("value", ["0.1", "0", "-5", "lots", "inf", "nan"])
def test_bad_environment_budget_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("LAURENTNET_MEMORY_BUDGET", value)
    with pytest.raises(InvalidBudgetError, match="LAURENTNET_MEMORY_BUDGET"):
        memory_budget()


def test_memory_limit_nests_and_restores(monkeypatch):
    monkeypatch.setenv("LAURENTNET_MEMORY_BUDGET", "3G")
    with memory_limit("1G"):
        assert memory_budget() == 2**30
        with memory_limit(None):
            assert memory_budget() == 2**30
        with memory_limit("2M"):
            assert memory_budget() == 2 * MB
            with pytest.raises(MemoryBudgetError):
                collapse(_conv_chain(16, 2), (16, 8, 8))
        assert memory_budget() == 2**30
    assert memory_budget() == 3 * 2**30


# -- the demo -------------------------------------------------------------------------------

def test_demo_skips_the_exact_proof_above_its_size_limit():
    assert _proof_plan("auto", EXACT_PROOF_MAX_CHANNELS) is None
    reason = _proof_plan("auto", EXACT_PROOF_MAX_CHANNELS + 1)
    assert reason and "limit" in reason and "--prove always" in reason
    assert _proof_plan("always", 3000) is None
    assert "never" in _proof_plan("never", 2)
    with pytest.raises(ValueError, match="prove"):
        _proof_plan("sometimes", 8)


def test_demo_consults_the_budget_before_training():
    with pytest.raises(MemoryBudgetError, match="3000 channels"):
        run_demo(channels=3000, budget="100M")
    with pytest.raises(InvalidBudgetError):
        run_demo(channels=8, budget=0.1)
