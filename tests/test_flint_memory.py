"""The memory guard on the python-flint collapse backend.

FLINT allocates with C ``malloc``, which ``tracemalloc`` does not see, so the estimate is
checked against the growth of the peak resident size (``VmHWM``) of a fresh process, as
for the float paths (``tests/memory_probe.py``); both kernels are covered (dense integer
matrices at 32 channels, ``fmpz_mpoly`` entries at 8).  The estimate must bound the growth
and, on the case large enough to measure, not be wildly pessimistic.  The refusals before
any work are in ``tests/test_memory_guard.py`` (its probe collapses go through this backend).
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from laurentnet.algebra import MemoryBudgetError, Network, collapse
from laurentnet.algebra.collapse import check_walk_budget
from laurentnet.algebra.flint_backend import FlintBackend

HERE = Path(__file__).resolve().parent
MB = 2**20

_MEASURE = r"""
import json, sys, numpy as np
sys.path.insert(0, sys.argv.pop(1))
from memory_probe import peak_growth, start_peak
from laurentnet.algebra import Network, collapse
from laurentnet.algebra.collapse import check_walk_budget
from laurentnet.algebra.flint_backend import FlintBackend
c, layers, n = map(int, sys.argv[1:4])
floats = sys.argv[4] == "float32"
g = np.random.default_rng(0)
net = Network(2, c)
x = net.input
for i in range(layers):
    w = (g.uniform(-1, 1, (c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32) if floats \
        else g.integers(-3, 4, (c, c, 3, 3))
    x = net.conv(x, w, padding=1)
net.set_output(x)
shapes = net.shapes((c, n, n))
backend = FlintBackend(net)
backend.prepare(shapes)
estimate = check_walk_budget(net, shapes, backend)
before = start_peak()
collapse(net, (c, n, n), backend="flint")
print(json.dumps({"estimate": estimate, "grown": peak_growth(before)}))
"""


def _measure(*args: object) -> dict:
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(HERE), *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux", reason="peak memory from /proc/self/status")
def test_flint_estimate_covers_the_measured_peak():
    dense = _measure(32, 4, 12, "float32")       # wide: the dense kernel
    assert dense["grown"] > 20 * MB, dense       # big enough to measure
    assert dense["grown"] <= dense["estimate"], dense
    assert dense["estimate"] <= 8 * dense["grown"], dense
    sparse = _measure(8, 6, 12, "int")           # narrow: fmpz_mpoly entries
    assert sparse["grown"] <= sparse["estimate"], sparse


def test_a_flint_collapse_over_budget_is_refused_with_its_estimate():
    g = np.random.default_rng(0)
    net = Network(2, 16)
    x = net.input
    for _ in range(3):
        x = net.conv(x, g.standard_normal((16, 16, 3, 3)), padding=1)
    net.set_output(x)
    shapes = net.shapes((16, 8, 8))
    backend = FlintBackend(net)
    backend.prepare(shapes)
    estimate = check_walk_budget(net, shapes, backend)
    with pytest.raises(MemoryBudgetError) as info:
        collapse(net, (16, 8, 8), backend="flint", budget=estimate - 1)
    assert info.value.estimate == estimate
    collapse(net, (16, 8, 8), backend="flint", budget=estimate)


def test_the_estimate_grows_with_the_coefficient_sizes():
    """Integers are sized from the weights: float32 weights (24-bit mantissas over a
    power-of-two denominator per layer) need more bytes than small integer ones."""
    g = np.random.default_rng(1)

    def estimate(weights):
        net = Network(2, 8)
        x = net.input
        for w in weights:
            x = net.conv(x, w, padding=1)
        net.set_output(x)
        shapes = net.shapes((8, 8, 8))
        backend = FlintBackend(net)
        backend.prepare(shapes)
        return check_walk_budget(net, shapes, backend), backend.bits
    small, small_bits = estimate([g.integers(-1, 2, (8, 8, 3, 3)) for _ in range(4)])
    large, large_bits = estimate([g.standard_normal((8, 8, 3, 3)).astype(np.float32)
                                  for _ in range(4)])
    assert large_bits > small_bits and large > small
