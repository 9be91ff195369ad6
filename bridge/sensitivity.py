"""Which layers to decompose: per-layer sensitivity scores and a greedy choice under a budget.

**Scores** (:func:`sensitivity`).  For each candidate layer ``L`` and rank ``r`` the model is
evaluated on validation data with that one layer's weight replaced by its rank-``r``
approximation ``W_r = C B`` (no retraining; the same map as the ``BasisConv`` up to
round-off), and the score is the increase of the validation metric,

    Δ(L, r) = metric(model with W_L := W_{L,r}) − metric(model).

The metric is the mean cross-entropy when labels are given (the accuracy drop is reported
too), else the relative output distortion ``Σ ‖f_r(x) − f(x)‖² / Σ ‖f(x)‖²`` over the
inputs (0 for the model itself).  Optionally (``gradient=True``, labels needed) the
first-order estimate ``Δ ≈ ⟨∇_W L, W_r − W⟩`` from one backward pass is reported beside it
— cheap, but at a trained minimum the gradient is small and the estimate poor; the tables
show both.

**Greedy choice** (:func:`select_layers`).  Starting from the dense model, each step moves
one layer to a candidate rank with fewer multiply-adds, the move with the largest saving of
multiply-adds per unit of score increase (moves that do not increase the score first); the
scores of several layers are assumed to add up.  Budgets (:class:`Budget`):

* ``macs=F`` — stop as soon as the model's multiply-adds are at most ``F`` times the
  original's (when one move reaches it, the one with the smallest score increase);
* ``loss=D`` / ``accuracy=D`` — take moves while the predicted sum of score increases
  (loss) or accuracy drops stays within ``D``, and — with ``measure=True`` — while the
  *measured* metric of the combined model does (a move that breaks it is rejected and its
  layer kept where it is), so the chosen model meets the budget on the validation data.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..algebra.errors import InvalidInputError, InvalidTypeError
from ..algebra.validate import choice_arg
from ..numeric.basis import MatrixFactors
from .conv_layers import ConvLayer, ConvLayers, find_conv_layers, substituted_weights, tensor_at
from .decompose import METHODS, layer_factors

__all__ = ["LayerScore", "SensitivityReport", "sensitivity", "Budget", "Selection",
           "select_layers", "candidate_ranks", "BUDGET_KINDS"]

BUDGET_KINDS = ("macs", "loss", "accuracy")


# ------------------------------------------------------------------------ evaluation


class _Evaluator:
    """The validation metric (module docstring) of a model on fixed inputs."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, chunk: int):
        self.x, self.y, self.chunk = x, y, chunk
        self.reference = None if y is not None else self._outputs(model)
        self.baseline = self.evaluate(model)

    def _outputs(self, model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(self.x[i:i + self.chunk]).detach().to(torch.float64)
                              for i in range(0, len(self.x), self.chunk)])

    def evaluate(self, model: nn.Module) -> tuple[float, float | None]:
        """(loss, accuracy) — accuracy None without labels."""
        out = self._outputs(model)
        if self.y is None:
            scale = float((self.reference ** 2).sum())
            return float(((out - self.reference) ** 2).sum()) / (scale or 1.0), None
        loss = float(F.cross_entropy(out, self.y))
        return loss, float((out.argmax(1) == self.y).double().mean())


def _check_data(model: nn.Module, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or len(x) == 0:
        raise InvalidTypeError("x must be a non-empty batch tensor (N, C, ...) of validation inputs")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), x.dtype)
    x = x.detach().to(dtype)
    if y is None:
        return x, None
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or len(y) != len(x) or \
            y.is_floating_point() or y.is_complex():
        raise InvalidInputError(f"y must be integer class labels, one per input ({len(x)}), got "
                                f"{getattr(y, 'shape', type(y).__name__)}")
    return x, y.detach().long()


# ------------------------------------------------------------------------ scores


@dataclass
class LayerScore:
    """Decomposing ``layer`` alone at ``rank``: the metric increase ``loss_increase``, the
    ``accuracy_drop`` (labels only), the first-order ``estimate`` (``gradient=True``), the
    multiply-adds it saves per sample and the weight's relative reconstruction error."""
    layer: str
    rank: int
    loss_increase: float
    accuracy_drop: float | None
    estimate: float | None
    multiply_adds_saved: int
    relative_error: float

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class SensitivityReport:
    """Scores of every candidate ``(layer, rank)`` (``scores``), the baseline metric, what
    the metric is (``"cross_entropy"`` or ``"output_distortion"``) and the method of the
    approximations."""
    scores: list[LayerScore]
    baseline_loss: float
    baseline_accuracy: float | None
    metric: str
    method: str
    samples: int
    found: ConvLayers = field(repr=False)
    _evaluator: _Evaluator = field(repr=False)
    _factors: dict[str, MatrixFactors] = field(repr=False)

    def score(self, layer: str, rank: int) -> LayerScore:
        for s in self.scores:
            if s.layer == layer and s.rank == rank:
                return s
        raise InvalidInputError(f"no score for layer {layer!r} at rank {rank}")

    def candidates(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for s in self.scores:
            out.setdefault(s.layer, []).append(s.rank)
        return out

    def table(self) -> str:
        head = ("layer", "rank", "Δ" + ("loss" if self.metric == "cross_entropy" else "distortion"),
                "Δacc", "1st-order", "MACs saved", "rel. error")
        rows = [(s.layer, str(s.rank), f"{s.loss_increase:+.4g}",
                 "" if s.accuracy_drop is None else f"{-100 * s.accuracy_drop + 0.0:+.1f}%",
                 "" if s.estimate is None else f"{s.estimate:+.3g}",
                 f"{s.multiply_adds_saved:,}", f"{s.relative_error:.3f}") for s in self.scores]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                           enumerate(zip(r, widths))) for r in [head, *rows]]
        base = f"baseline {self.metric} {self.baseline_loss:.4g}" + \
            ("" if self.baseline_accuracy is None else f", accuracy {100 * self.baseline_accuracy:.1f}%")
        return "\n".join([*lines, f"({base}; {self.samples} validation samples, {self.method})"])

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "method": self.method, "samples": self.samples,
                "baseline_loss": self.baseline_loss, "baseline_accuracy": self.baseline_accuracy,
                "scores": [s.as_dict() for s in self.scores]}


def candidate_ranks(layer: ConvLayer, fractions: Sequence[float] = (0.25, 0.5)) -> list[int]:
    """``ceil(f · max_rank)`` for each fraction ``f``, keeping the ranks whose basis form
    saves multiply-adds (``rank ≤ break_even_rank``)."""
    ranks = {max(1, math.ceil(f * layer.max_rank)) for f in fractions}
    return sorted(r for r in ranks if r <= layer.break_even_rank)


def _candidates(found: ConvLayers, layers: Sequence[str] | None,
                ranks: Mapping[str, Sequence[int]] | None,
                fractions: Sequence[float]) -> dict[str, list[int]]:
    if ranks is not None:
        out = {}
        for name, values in ranks.items():
            layer = found[name]
            if not layer.decomposable:
                raise InvalidInputError(f"layer {name} cannot be decomposed: {layer.reason}")
            for r in values:
                if not 1 <= int(r) <= layer.max_rank:
                    raise InvalidInputError(f"rank {r} for layer {name}: must be between 1 and "
                                            f"{layer.max_rank} (min(C_out, C_in·k))")
            out[name] = sorted({int(r) for r in values})
        return out
    chosen = [found[n] for n in layers] if layers is not None else found.decomposable
    out = {layer.name: candidate_ranks(layer, fractions) for layer in chosen if layer.decomposable}
    return {name: values for name, values in out.items() if values}


def _gradients(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor,
               chunk: int) -> dict[str, torch.Tensor]:
    """``∇_W`` of the mean cross-entropy over ``(x, y)`` for each weight that is a
    parameter (eval mode)."""
    weights = {n: tensor_at(model, n) for n in names}
    weights = {n: w for n, w in weights.items() if w.requires_grad}
    grads = {n: torch.zeros_like(w) for n, w in weights.items()}
    for i in range(0, len(x), chunk):
        loss = F.cross_entropy(model(x[i:i + chunk]), y[i:i + chunk], reduction="sum") / len(x)
        for n, g in zip(weights, torch.autograd.grad(loss, list(weights.values()))):
            grads[n] += g
    return grads


def sensitivity(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *,
                layers: Sequence[str] | None = None,
                ranks: Mapping[str, Sequence[int]] | None = None,
                fractions: Sequence[float] = (0.25, 0.5), method: str = "svd",
                gradient: bool = False, found: ConvLayers | None = None,
                chunk: int = 256) -> SensitivityReport:
    """Score every candidate ``(layer, rank)`` on validation inputs ``x`` (labels ``y``).

    Candidates: ``ranks`` (layer -> ranks), else for each of ``layers`` (default every
    decomposable convolution) the :func:`candidate_ranks` of ``fractions``.  ``model`` must
    be in eval mode; its weights are changed only inside the evaluation and restored."""
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    method = choice_arg(method, "method", METHODS)
    x, y = _check_data(model, x, y)
    if gradient and y is None:
        raise InvalidInputError("gradient=True needs labels y (the first-order estimate is of "
                                "the cross-entropy)")
    found = found or find_conv_layers(model, x[:2])
    candidates = _candidates(found, layers, ranks, fractions)
    if not candidates:
        raise InvalidInputError("no candidate layer: the model has no decomposable convolution "
                                "with a rank that saves multiply-adds")
    evaluator = _Evaluator(model, x, y, chunk)
    factors = {name: layer_factors(model, found[name]) for name in candidates}
    grads = _gradients(model, [found[n].weight_name for n in candidates], x, y, chunk) \
        if gradient else {}
    scores = []
    for name, values in candidates.items():
        layer = found[name]
        weight = tensor_at(model, layer.weight_name).detach()
        for r in values:
            f = factors[name].factor(r, method)
            w_r = f.product().reshape(weight.shape).to(weight)
            with substituted_weights(model, {layer.weight_name: w_r}):
                loss, acc = evaluator.evaluate(model)
            g = grads.get(layer.weight_name)
            estimate = None if g is None else float((g.double() * (w_r - weight).double()).sum())
            scores.append(LayerScore(name, r, loss - evaluator.baseline[0],
                                     None if acc is None else evaluator.baseline[1] - acc,
                                     estimate, layer.multiply_adds() - layer.multiply_adds(r),
                                     f.relative_error))
    metric = "cross_entropy" if y is not None else "output_distortion"
    return SensitivityReport(scores, evaluator.baseline[0], evaluator.baseline[1], metric, method,
                             len(x), found, evaluator, factors)


# ------------------------------------------------------------------------ selection


@dataclass(frozen=True)
class Budget:
    """``kind`` ``"macs"`` (``value``: the largest fraction of the model's multiply-adds to
    keep, in (0, 1]), ``"loss"`` (the largest metric increase, ≥ 0) or ``"accuracy"`` (the
    largest accuracy drop, in [0, 1]; needs labels)."""
    kind: str
    value: float

    def __post_init__(self) -> None:
        choice_arg(self.kind, "budget kind", BUDGET_KINDS)
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InvalidInputError(f"the {self.kind} budget must be a finite number, got {v!r}")
        if self.kind == "macs" and not 0 < v <= 1:
            raise InvalidInputError(f"a macs budget is the fraction of the model's multiply-adds "
                                    f"to keep, in (0, 1], got {v}")
        if self.kind == "accuracy" and not 0 <= v <= 1:
            raise InvalidInputError(f"an accuracy budget is the largest drop, in [0, 1] (0.01 = one "
                                    f"point), got {v}")
        if self.kind == "loss" and v < 0:
            raise InvalidInputError(f"a loss budget is the largest increase, >= 0, got {v}")

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """``"macs=0.5"``, ``"loss=0.05"``, ``"accuracy=0.01"``."""
        match = re.fullmatch(r"\s*(\w+)\s*=\s*(\S+)\s*", text) if isinstance(text, str) else None
        if match is None:
            raise InvalidInputError(f"budget {text!r} must look like macs=0.5, loss=0.05 or "
                                    "accuracy=0.01")
        try:
            value = float(match.group(2))
        except ValueError:
            raise InvalidInputError(f"budget {text!r}: {match.group(2)!r} is not a number") from None
        return cls(match.group(1), value)

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"


@dataclass
class Selection:
    """The chosen ``ranks`` (layer -> rank), the ``budget``, whether it was ``met``, the
    model's multiply-adds before and after, the predicted (sum of single-layer scores) and
    measured metric increase and accuracy drop of the combined model, and the ``steps``."""
    ranks: dict[str, int]
    budget: Budget
    met: bool
    multiply_adds_before: int
    multiply_adds_after: int
    predicted_loss_increase: float
    measured_loss_increase: float | None
    measured_accuracy_drop: float | None
    steps: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["budget"] = str(self.budget)
        return out

    def describe(self) -> str:
        ratio = self.multiply_adds_after / max(self.multiply_adds_before, 1)
        measured = "" if self.measured_loss_increase is None else \
            f", measured Δ{self.measured_loss_increase:+.4g}"
        if self.measured_accuracy_drop is not None:
            measured += f" (accuracy {-100 * self.measured_accuracy_drop + 0.0:+.1f} points)"
        return (f"budget {self.budget}: {'met' if self.met else 'NOT met'}; {len(self.ranks)} "
                f"layers decomposed, multiply-adds {ratio:.3f}x; predicted "
                f"Δ{self.predicted_loss_increase:+.4g}{measured}")


class _Greedy:
    """The state of the greedy choice: current rank per layer (None: dense)."""

    def __init__(self, model: nn.Module, report: SensitivityReport, budget: Budget, measure: bool):
        self.model, self.report, self.budget, self.measure = model, report, budget, measure
        self.found = report.found
        self.current: dict[str, int | None] = {n: None for n in report.candidates()}
        self.frozen: set[str] = set()
        self.steps: list[dict[str, Any]] = []

    def chosen(self) -> dict[str, int]:
        return {n: r for n, r in self.current.items() if r is not None}

    def macs(self) -> int:
        return self.found.multiply_adds(self.chosen())

    def _score(self, name: str, rank: int | None, what: str = "loss_increase") -> float:
        if rank is None:
            return 0.0
        value = getattr(self.report.score(name, rank), what)
        return 0.0 if value is None else float(value)

    def predicted(self, what: str = "loss_increase") -> float:
        return sum(self._score(n, r, what) for n, r in self.current.items())

    def moves(self) -> list[tuple[str, int, int, float]]:
        """(layer, rank, multiply-adds saved, score increase) of every possible move."""
        out = []
        for name, now in self.current.items():
            if name in self.frozen:
                continue
            layer = self.found[name]
            for r in self.report.candidates()[name]:
                gain = layer.multiply_adds(now) - layer.multiply_adds(r)
                if gain > 0:
                    out.append((name, r, gain, self._score(name, r) - self._score(name, now)))
        return out

    def measured(self, ranks: Mapping[str, int]) -> tuple[float, float | None]:
        """(metric increase, accuracy drop) of the model with ``ranks`` substituted."""
        weights = {}
        for name, r in ranks.items():
            layer = self.found[name]
            w = tensor_at(self.model, layer.weight_name)
            f = self.report._factors[name].factor(r, self.report.method)
            weights[layer.weight_name] = f.product().reshape(w.shape).to(w)
        ev = self.report._evaluator
        with substituted_weights(self.model, weights):
            loss, acc = ev.evaluate(self.model)
        return loss - ev.baseline[0], None if acc is None else ev.baseline[1] - acc


def _ratio(move: tuple[str, int, int, float]) -> tuple[bool, float]:
    _, _, gain, cost = move
    return (cost <= 0, gain if cost <= 0 else gain / cost)


def _within(budget: Budget, loss: float, accuracy: float | None) -> bool:
    if budget.kind == "loss":
        return loss <= budget.value
    return accuracy is not None and accuracy <= budget.value


def _select_macs(g: _Greedy, target: float) -> None:
    while g.macs() > target:
        moves = g.moves()
        if not moves:
            return
        total = g.macs()
        reaching = [m for m in moves if total - m[2] <= target]
        move = min(reaching, key=lambda m: (m[3], -m[2])) if reaching else max(moves, key=_ratio)
        g.current[move[0]] = move[1]
        g.steps.append({"layer": move[0], "rank": move[1], "multiply_adds": g.macs(),
                        "predicted": g.predicted()})


def _select_quality(g: _Greedy) -> None:
    what = "loss_increase" if g.budget.kind == "loss" else "accuracy_drop"
    while True:
        moves = g.moves()
        if not moves:
            return
        name, rank, _, _ = max(moves, key=_ratio)
        trial = {**g.chosen(), name: rank}
        before = g.current[name]
        g.current[name] = rank
        predicted = g.predicted(what)
        ok = predicted <= g.budget.value
        measured = g.measured(trial) if ok and g.measure else None
        if measured is not None:
            ok = _within(g.budget, *measured)
        step = {"layer": name, "rank": rank, "multiply_adds": g.macs(), "predicted": predicted,
                "measured": None if measured is None else list(measured), "accepted": ok}
        g.steps.append(step)
        if not ok:
            g.current[name] = before
            g.frozen.add(name)


def select_layers(model: nn.Module, report: SensitivityReport, budget: Budget | str, *,
                  measure: bool = True) -> Selection:
    """The greedy choice of layers and ranks (module docstring) from ``report`` (made by
    :func:`sensitivity` on the same ``model``) under ``budget`` (a :class:`Budget` or text
    like ``"macs=0.5"``).  ``measure``: evaluate the combined model (for the loss and
    accuracy budgets: before accepting each move)."""
    if isinstance(budget, str):
        budget = Budget.parse(budget)
    if not isinstance(budget, Budget):
        raise InvalidTypeError(f"budget must be a Budget or text like 'macs=0.5', got {budget!r}")
    if not isinstance(report, SensitivityReport):
        raise InvalidTypeError("report must be a SensitivityReport (from sensitivity())")
    if budget.kind == "accuracy" and report.baseline_accuracy is None:
        raise InvalidInputError("an accuracy budget needs labels: score the layers with y given")
    g = _Greedy(model, report, budget, measure)
    before = g.macs()
    if budget.kind == "macs":
        target = budget.value * before
        _select_macs(g, target)
        met = g.macs() <= target
    else:
        _select_quality(g)
        met = True
    measured = g.measured(g.chosen()) if measure else (None, None)
    if measure and budget.kind != "macs":
        met = _within(budget, *measured)
    return Selection(g.chosen(), budget, met, before, g.macs(), g.predicted(), measured[0],
                     measured[1], g.steps)
