"""The fuzz harness (``benchmarks/fuzz.py``): its JSON contract, ``--replay``, and that it
fails when something is wrong — a perturbed exact affine map, a region that claims too
much, a perturbed numeric operator, a wrong reference padding, a crash — while a clear
refusal is only counted.

Runs a handful of small networks in-process (a few seconds in all).
"""
from __future__ import annotations

import importlib.util
import json
import pathlib
import sys
from types import ModuleType
from typing import Iterator

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEED = 3


@pytest.fixture(scope="module")
def fuzz() -> Iterator[ModuleType]:
    path = ROOT / "benchmarks" / "fuzz.py"
    spec = importlib.util.spec_from_file_location("laurentnet_fuzz", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    threads = module.torch.get_num_threads()
    module.torch.set_num_threads(1)  # tiny networks: threads only add overhead
    yield module
    module.torch.set_num_threads(threads)


def _networks_with(fuzz: ModuleType, feature: str, count: int, seed: int = SEED) -> list[int]:
    """The first ``count`` network indices of ``seed`` that exercise ``feature``."""
    found = []
    index = 0
    while len(found) < count:
        if feature in fuzz.generate(seed, index).features():
            found.append(index)
        index += 1
    return found


def test_json_contract(fuzz, capsys):
    assert fuzz.main(["--seed", str(SEED), "--max-networks", "6", "--json"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)  # exactly one JSON object on stdout
    assert f"seed {SEED}" in out.err
    assert report["seed"] == SEED and report["networks"] == 6 and report["mismatches"] == 0
    assert report["mismatch_list"] == []
    for key in ("kinds", "paths", "refused", "refused_by_path", "region_not_tight",
                "region_not_tight_networks", "timeouts", "seconds", "unexpected_refusals"):
        assert key in report, key
    assert set(report["paths"]) == set(fuzz.PATHS)
    for counts in report["paths"].values():  # every path accounted for on every network
        assert sum(counts[k] for k in ("ok", "refused", "mismatch", "timeout")) == 6
    assert sum(v for k, v in report["kinds"].items() if k.startswith("family ")) == 6
    assert sum(v for k, v in report["kinds"].items() if k.endswith("-D")) == 6
    assert isinstance(report["refused"], int) and isinstance(report["region_not_tight"], int)


def test_human_table_and_exit_status(fuzz, capsys):
    assert fuzz.main(["--seed", str(SEED), "--max-networks", "3"]) == 0
    text = capsys.readouterr().out
    assert f"seed {SEED}, 3 networks" in text
    for word in ("kind", "path", "exact_collapse", "affine_jvp", "mismatches: 0"):
        assert word in text


def test_generation_is_deterministic_and_replay_prints_the_network(fuzz, capsys):
    first, again = fuzz.generate(SEED, 4), fuzz.generate(SEED, 4)
    assert first.describe() == again.describe() and first.features() == again.features()
    assert fuzz.generate(SEED, 5).describe() != first.describe()
    ref_a, ref_b = fuzz.reference(first), fuzz.reference(again)
    np.testing.assert_array_equal(ref_a.W, ref_b.W)
    np.testing.assert_array_equal(ref_a.xs, ref_b.xs)
    assert fuzz.main(["--replay", f"{SEED}:4"]) == 0
    text = capsys.readouterr().out
    assert first.describe() in text
    assert fuzz.build_network(first).summary(first.input_shape) in text
    for path in fuzz.PATHS:
        assert path in text


def test_replay_json(fuzz, capsys):
    assert fuzz.main(["--replay", f"{SEED}:1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["index"] == 1 and report["mismatches"] == 0
    assert set(report["outcomes"]) == set(fuzz.PATHS)


def test_detects_a_perturbed_exact_affine_map(fuzz, monkeypatch, capsys):
    real = fuzz.algebra.collapse_affine

    def perturbed(network, input_shape):
        amap = real(network, input_shape)
        amap.B[0] = amap.B[0] + amap.domain.convert(1) / 10**6
        return amap
    monkeypatch.setattr(fuzz.algebra, "collapse_affine", perturbed)
    assert fuzz.main(["--seed", str(SEED), "--max-networks", "4"]) == 1
    text = capsys.readouterr().out
    assert "[exact_affine]" in text and f"--replay {SEED}:0" in text
    assert "mismatches: 0" not in text


def test_detects_a_region_that_claims_too_much(fuzz, monkeypatch):
    real = fuzz.algebra.collapse

    def everywhere(network, input_shape, **kw):
        result = real(network, input_shape, **kw)
        result.region = np.ones_like(result.region)
        return result
    monkeypatch.setattr(fuzz.algebra, "collapse", everywhere)
    reports = [fuzz.run_network(SEED, i) for i in _networks_with(fuzz, "pad zeros", 4)]
    failed = [o for r in reports for o in r.mismatches if o.path == "exact_collapse"]
    assert failed and "inside the region differ" in failed[0].detail


def test_detects_a_perturbed_numeric_operator(fuzz, monkeypatch):
    real = fuzz.numeric.collapse_numeric

    def shifted(network, input_shape, **kw):
        result = real(network, input_shape, **kw)
        result.operator.bias[0] += 1e-6
        return result
    monkeypatch.setattr(fuzz.numeric, "collapse_numeric", shifted)
    accepted = [i for i in range(40) if fuzz.expected_to_accept(fuzz.generate(SEED, i),
                                                                 "numeric_collapse")]
    reports = [fuzz.run_network(SEED, i) for i in accepted[:4]]
    failed = [o for r in reports for o in r.mismatches]
    assert failed and {o.path for o in failed} == {"numeric_collapse"}
    assert "inside the region" in failed[0].detail


def test_detects_a_wrong_reference_padding(fuzz, monkeypatch):
    monkeypatch.setitem(fuzz.REFERENCE_PAD_MODE, "reflect", "replicate")
    reports = [fuzz.run_network(SEED, i) for i in _networks_with(fuzz, "pad reflect", 3)]
    paths = {o.path for r in reports for o in r.mismatches}
    assert {"exact_affine", "affine_vjp", "affine_jvp"} <= paths


def test_a_crash_is_a_mismatch_and_a_package_error_a_refusal(fuzz, monkeypatch):
    from laurentnet.algebra import LaurentnetError

    class Refusal(LaurentnetError, ValueError):
        pass

    def crash(*args, **kw):
        raise RuntimeError("boom")

    def refuse(*args, **kw):
        raise Refusal("this network is not supported")
    monkeypatch.setattr(fuzz.numeric, "affine_numeric", crash)
    monkeypatch.setattr(fuzz.numeric, "collapse_numeric", refuse)
    report = fuzz.run_network(SEED, 0)
    vjp = report.outcomes["affine_vjp"]
    assert vjp.status == "mismatch" and vjp.detail.startswith("crash RuntimeError: boom")
    refused = report.outcomes["numeric_collapse"]
    assert refused.status == "refused" and "not supported" in refused.detail
    assert report.outcomes["exact_affine"].status == "ok"

