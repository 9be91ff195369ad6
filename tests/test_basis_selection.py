"""Sensitivity scores against independent evaluations, and the greedy choice respects its
budget (multiply-adds counted independently, accuracy measured independently)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from laurentnet.algebra import InvalidInputError
from laurentnet.bridge import (BasisConv, Budget, decompose, digits, fine_tune,
                               select_layers, sensitivity)
from laurentnet.bridge.models import build_resnet, randomize_batchnorm_
from basis_fixtures import one_torch_thread  # noqa: F401,E402  (autouse)


@pytest.fixture(scope="module")
def data():
    return digits(8, seed=0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_resnet("resnet_tiny", widths=(8, 16))
    randomize_batchnorm_(net, torch.Generator().manual_seed(1))
    return net.eval()


@pytest.fixture(scope="module")
def report(model, data):
    return sensitivity(model, data.x_val, data.y_val, fractions=(0.25, 0.5), gradient=True)


def _svd_weight(w: torch.Tensor, rank: int) -> torch.Tensor:
    """The rank-``rank`` truncated SVD of the filter matrix, by torch (independent of scipy)."""
    u, s, vh = torch.linalg.svd(w.detach().double().reshape(w.shape[0], -1), full_matrices=False)
    return ((u[:, :rank] * s[:rank]) @ vh[:rank]).reshape(w.shape).to(w)


def _loss_acc(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        out = net(x).double()
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


def _conv_macs(net: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds per sample of every Conv2d and Linear, from forward hooks."""
    total = []

    def hook(m, inputs, out):
        if isinstance(m, nn.Conv2d):
            total.append(out[0].numel() * m.weight[0].numel())
        else:
            total.append(m.weight.numel())
    hooks = [m.register_forward_hook(hook) for m in net.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net(x[:1])
    for h in hooks:
        h.remove()
    return sum(total)


def test_scores_are_the_loss_increase_of_one_decomposed_layer(model, data, report):
    base_loss, base_acc = _loss_acc(model, data.x_val, data.y_val)
    assert report.baseline_loss == pytest.approx(base_loss, rel=1e-6)
    for score in report.scores[:4]:
        reference = copy.deepcopy(model)
        conv = reference.get_submodule(score.layer)
        with torch.no_grad():
            conv.weight.copy_(_svd_weight(conv.weight, score.rank))
        loss, acc = _loss_acc(reference, data.x_val, data.y_val)
        assert score.loss_increase == pytest.approx(loss - base_loss, rel=1e-4, abs=1e-6)
        assert score.accuracy_drop == pytest.approx(base_acc - acc, abs=1e-9)


def test_first_order_estimate_matches_a_finite_difference(model, data, report):
    score = report.scores[0]
    conv = model.get_submodule(score.layer)
    delta = (_svd_weight(conv.weight, score.rank) - conv.weight).detach()
    eps = 1e-6   # small: a larger step crosses ReLU kinks
    losses = []
    for sign in (1, -1):
        reference = copy.deepcopy(model).double()
        w = reference.get_submodule(score.layer).weight
        with torch.no_grad():
            w.add_(sign * eps * delta.double())
        losses.append(_loss_acc(reference, data.x_val.double(), data.y_val)[0])
    assert score.estimate == pytest.approx((losses[0] - losses[1]) / (2 * eps), rel=1e-3, abs=1e-7)


def test_scoring_leaves_the_weights_bit_for_bit(model, data):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sensitivity(model, data.x_val[:32], ranks={"stages.1.0.conv2": [1, 3]})
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_candidate_ranks_save_multiply_adds(report):
    found = report.found
    for score in report.scores:
        layer = found[score.layer]
        assert 1 <= score.rank <= layer.break_even_rank
        assert score.multiply_adds_saved == layer.multiply_adds() - layer.multiply_adds(score.rank) > 0


@settings(max_examples=15)
@given(st.floats(0.2, 1.0))
def test_macs_budget_is_respected(model, data, report, fraction):
    selection = select_layers(model, report, Budget("macs", fraction), measure=False)
    found = report.found
    assert selection.multiply_adds_after == found.multiply_adds(selection.ranks)
    if selection.met:
        assert selection.multiply_adds_after <= fraction * selection.multiply_adds_before
    else:   # every layer is at its lowest candidate rank: nothing more to take
        lowest = {n: min(r) for n, r in report.candidates().items()}
        assert selection.ranks == lowest


def test_macs_are_counted_like_the_decomposed_model_runs(model, data, report):
    selection = select_layers(model, report, "macs=0.6", measure=False)
    result = decompose(model, data.x_val[:2], ranks=selection.ranks, found=report.found)
    assert selection.multiply_adds_before == _conv_macs(model, data.x_val)
    assert selection.multiply_adds_after == _conv_macs(result.module, data.x_val)


@pytest.mark.parametrize("budget", ["accuracy=0.02", "loss=0.05"])
def test_quality_budget_is_met_on_the_validation_data(model, data, report, budget):
    selection = select_layers(model, report, budget)
    assert selection.met and selection.ranks
    result = decompose(model, data.x_val[:2], ranks=selection.ranks, found=report.found)
    loss, acc = _loss_acc(result.module, data.x_val, data.y_val)
    base_loss, base_acc = _loss_acc(model, data.x_val, data.y_val)
    kind, value = budget.split("=")
    measured = base_acc - acc if kind == "accuracy" else loss - base_loss
    assert measured <= float(value) + 1e-6
    assert selection.multiply_adds_after < selection.multiply_adds_before


def test_budget_parsing_and_refusals(model, data, report):
    assert Budget.parse(" macs = 0.5 ") == Budget("macs", 0.5)
    for bad, message in (("macs=0", r"\(0, 1\]"), ("accuracy=2", r"\[0, 1\]"),
                         ("loss=-1", ">= 0"), ("speed=2", "budget kind"), ("macs", "look like"),
                         ("macs=x", "not a number")):
        with pytest.raises(InvalidInputError, match=message):
            Budget.parse(bad)
    unlabeled = sensitivity(model, data.x_val[:16], ranks={"stem.0": [2]})
    assert unlabeled.metric == "output_distortion" and unlabeled.baseline_loss == 0
    with pytest.raises(InvalidInputError, match="needs labels"):
        select_layers(model, unlabeled, "accuracy=0.1")
    with pytest.raises(InvalidInputError, match="gradient=True needs labels"):
        sensitivity(model, data.x_val[:16], gradient=True)
    with pytest.raises(InvalidInputError, match="rank 9 for layer stem.0"):
        sensitivity(model, data.x_val[:16], ranks={"stem.0": [9]})


def test_fine_tune_trains_the_factors(data):
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    result = decompose(plain, data.x_val[:2], rank=2)
    module = result.module
    before = module[2].basis.weight.detach().clone()
    tuned = fine_tune(module, data, epochs=1, lr=1e-2)
    assert tuned.loop == "local" and 0 <= tuned.test_accuracy <= 1
    assert isinstance(module[2], BasisConv) and not torch.equal(module[2].basis.weight, before)
    assert tuned.test_accuracy == pytest.approx(_loss_acc(module, data.x_test, data.y_test)[1])


def test_fine_tune_uses_the_trainer_for_a_resnet(model, data):
    result = decompose(model, data.x_val[:2], rank=1, layers=["stages.1.0.conv2"])
    tuned = fine_tune(result.module, data, epochs=1)
    assert tuned.loop == "trainer"
    assert tuned.test_accuracy == pytest.approx(_loss_acc(result.module, data.x_test,
                                                          data.y_test)[1])
