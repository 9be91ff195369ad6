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
    assert failed and {o.path for o in failed} == {"numeric_collapse", "numeric_methods"}
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



# -- the generators added for pooling options, polyphase, tight regions, product methods ----
NEW_KINDS = ("avg_pool ceil_mode", "avg_pool divisor_override", "avg_pool padded exclude_pad",
             "adaptive_avg_pool", "adaptive_avg_pool non-dividing", "polyphase: bias before up",
             "polyphase: non-coprime up", "polyphase: sum of rates", "conv_transpose",
             "family kernels", "wide kernel", "tight=True", "tight=False")


def _small_with(fuzz: ModuleType, feature: str, seed: int = SEED, limit: int = 3000
                ) -> Iterator[int]:
    """Networks of ``seed`` with ``feature``, few inputs and outputs, that every path
    should accept (so that they are checked, not refused)."""
    for index in range(limit):
        spec = fuzz.generate(seed, index)
        if feature in spec.features() and np.prod(spec.input_shape) <= 48 and \
                np.prod(spec.output_shape) <= 64 and len(spec.ops) <= 6 and \
                all(fuzz.expected_to_accept(spec, p) for p in fuzz.PATHS):
            yield index


def _checked(fuzz: ModuleType, feature: str, polyphase: bool = False):
    """The report of the first small network with ``feature`` whose exact region is not
    empty (and, if asked, whose collapse is a polyphase operator)."""
    for tries, index in enumerate(_small_with(fuzz, feature)):
        report = fuzz.run_network(SEED, index)
        if report.region_positions and (report.polyphase or not polyphase):
            return report
        assert tries < 8, f"no small checked network with {feature!r}"


POLYPHASE_KINDS = ("polyphase: bias before up", "polyphase: non-coprime up")


@pytest.mark.parametrize("feature", NEW_KINDS)
def test_each_new_kind_is_generated_and_checked(fuzz, feature):
    report = _checked(fuzz, feature, polyphase=feature in POLYPHASE_KINDS)
    statuses = {p: o.status for p, o in report.outcomes.items()}
    assert statuses == {p: "ok" for p in fuzz.PATHS}, (report.spec.describe(), report.outcomes)
    assert feature in report.spec.features()


def test_every_product_method_is_forced_and_counted(fuzz):
    report = _checked(fuzz, "family kernels")
    assert report.outcomes["numeric_methods"].status == "ok"
    assert set(report.products) == set(fuzz.PRODUCT_METHODS)
    assert len(set(report.products.values())) == 1 and min(report.products.values()) > 0


def test_a_short_run_reports_the_new_counts(fuzz):
    result = fuzz.campaign(SEED, max_networks=6)
    assert result.mismatches == 0 and result.paths["numeric_methods"]["ok"] > 0
    report = result.as_json()
    assert set(report["polymatmul_products"]) == set(fuzz.PRODUCT_METHODS)
    assert all(report["polymatmul_products"][m] > 0 for m in fuzz.PRODUCT_METHODS)
    assert isinstance(report["polyphase_collapses"], int)
    assert "polymatmul method" in fuzz.table(result)


def test_detects_a_wrong_product_method(fuzz, monkeypatch):
    real = fuzz.numeric_kernels.polymatmul

    def wrong_fft(outer, inner, dilation=1, method="auto", budget=None):
        out = real(outer, inner, dilation, method, budget)
        return out * (1 + 1e-6) if method == "fft" else out
    index = _checked(fuzz, "family kernels").spec.index
    monkeypatch.setattr(fuzz.numeric_kernels, "polymatmul", wrong_fft)
    report = fuzz.run_network(SEED, index)
    [failed] = report.mismatches
    assert failed.path == "numeric_methods" and "method 'fft'" in failed.detail


def test_detects_a_region_tight_for_these_weights_that_claims_too_little(fuzz, monkeypatch):
    real = fuzz.algebra.collapse

    def shrunk(network, input_shape, **kw):
        result = real(network, input_shape, **kw)
        if result.region.any() and not result.periodic:
            result.region = result.region.copy()
            result.region.flat[np.argmax(result.region)] = False
            result.tight_for = "these weights"
        return result
    index = _checked(fuzz, "pad zeros").spec.index
    monkeypatch.setattr(fuzz.algebra, "collapse", shrunk)
    report = fuzz.run_network(SEED, index)
    detail = report.outcomes["exact_collapse"].detail
    assert report.outcomes["exact_collapse"].status == "mismatch" and "tight" in detail


def test_a_sum_of_unequal_rates_must_be_refused(fuzz):
    index = next(i for i in range(3000) if fuzz.RATES_DIFFER in fuzz.generate(SEED, i).tags)
    spec = fuzz.generate(SEED, index)
    assert not fuzz.expected_to_accept(spec, "exact_collapse")
    assert fuzz.expected_to_accept(spec, "affine_vjp")


@pytest.mark.parametrize("ndim", [1, 2])
def test_the_pool_reference_is_the_window_sum(fuzz, ndim):
    """The reference's average pools (every option) against explicit window sums in exact
    fractions, from PyTorch's documented rule (independent of the package)."""
    rng = np.random.default_rng(ndim)
    for trial in range(30):
        n = tuple(int(v) for v in rng.integers(3, 8, ndim))
        k = tuple(int(v) for v in rng.integers(1, 4, ndim))
        s = tuple(int(v) for v in rng.integers(1, 4, ndim))
        p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        params = dict(kernel=k, stride=s, padding=p, count_include_pad=bool(trial % 2),
                      ceil_mode=bool(trial % 3), divisor_override=[None, 3][trial % 4 == 0])
        x = rng.integers(-5, 6, (1, 1, *n))
        got = fuzz._ref_avg_pool(fuzz.torch.tensor(x, dtype=fuzz.torch.float64), params, ndim)
        want = _window_sums(x[0, 0], params)
        np.testing.assert_allclose(got[0, 0].numpy(), np.vectorize(float)(want), rtol=1e-15)


def _window_sums(x: np.ndarray, params: dict) -> np.ndarray:
    """``avg_pool`` by its definition: window ``i`` starts at ``s i - p``, ends at
    ``min(start + k, n + p)``; ``ceil_mode`` drops a window starting in the right padding."""
    from fractions import Fraction
    axes = []
    for n, k, s, p in zip(x.shape, params["kernel"], params["stride"], params["padding"]):
        span = n + 2 * p - k
        out = (-(-span // s) if params["ceil_mode"] else span // s) + 1
        if params["ceil_mode"] and s * (out - 1) >= n + p:
            out -= 1
        axes.append([(s * i - p, min(s * i - p + k, n + p)) for i in range(out)])
    out = np.empty([len(a) for a in axes], dtype=object)
    for index in np.ndindex(*out.shape):
        boxes = [axes[a][i] for a, i in enumerate(index)]
        inside = [range(max(a, 0), min(b, n)) for (a, b), n in zip(boxes, x.shape)]
        total = sum((int(x[j]) for j in np.ndindex(*[len(r) for r in inside])
                     for j in [tuple(r[t] for r, t in zip(inside, j))]), 0)
        if params["divisor_override"] is not None:
            divisor = params["divisor_override"]
        elif params["count_include_pad"]:
            divisor = int(np.prod([b - a for a, b in boxes]))
        else:
            divisor = int(np.prod([len(r) for r in inside]))
        out[index] = Fraction(total, divisor)
    return out


@pytest.mark.parametrize("feature", ["avg_pool ceil_mode", "avg_pool divisor_override",
                                     "adaptive_avg_pool non-dividing", "conv_transpose",
                                     "pad reflect", "polyphase: bias before up"])
def test_the_exact_reference_agrees_with_the_torch_reference(fuzz, feature):
    """The two independent references (fractions by index sums, torch in float64) agree,
    and the exact affine path is checked against the fractions."""
    index = next(i for i in _small_with(fuzz, feature)
                 if fuzz.exact_reference_fits(fuzz.generate(SEED, i)))
    spec = fuzz.generate(SEED, index)
    W, B = fuzz.exact_reference(spec)
    ref = fuzz.reference(spec)
    np.testing.assert_allclose(fuzz.to_float(W), ref.W, rtol=0, atol=1e-12 * ref.scale)
    np.testing.assert_allclose(fuzz.to_float(B), ref.B, rtol=0, atol=1e-12 * ref.scale)
    report = fuzz.run_network(SEED, index)
    assert report.exact_reference and report.outcomes["exact_affine"].status == "ok"


def test_the_exact_reference_catches_what_the_float_check_cannot(fuzz, monkeypatch):
    real = fuzz.algebra.collapse_affine

    def nudged(network, input_shape):  # far below TOL: only an exact comparison sees it
        amap = real(network, input_shape)
        amap.B[0] = amap.B[0] + amap.domain.convert(1) / 10**15
        return amap
    index = next(i for i in _small_with(fuzz, "conv")
                 if fuzz.exact_reference_fits(fuzz.generate(SEED, i)))
    monkeypatch.setattr(fuzz.algebra, "collapse_affine", nudged)
    outcome = fuzz.run_network(SEED, index).outcomes["exact_affine"]
    assert outcome.status == "mismatch" and "exact reference (fractions)" in outcome.detail
