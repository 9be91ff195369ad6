"""Skip-weight schedules λ(t) for the skip-removal homotopy.

``t`` is training time in epochs (fractional inside an epoch: step ``i`` of ``n`` in epoch
``e`` is ``t = e + i / n``); every residual block ``b`` of a network gets ``λ_b(t)``, the
weight of its shortcut (``y = act(λ_b S(x) + F(x))``).  Fixed schedules fade λ from 1 to
0 at a hand-set end point ``t₀``; with ``u = t / t₀`` (clipped to ``[0, 1]``):

* ``linear``:       ``λ = 1 - u``;
* ``cosine``:       ``λ = (1 + cos(π u)) / 2``;
* ``step``:         ``λ = 1 - floor(k u) / k`` for ``u < 1`` (``k`` equal drops), 0 at ``u = 1``;
* ``exponential``:  ``λ = (e^{-r u} - e^{-r}) / (1 - e^{-r})`` (rate ``r``; exactly 0 at ``u = 1``);
* ``constant``:     ``λ = c`` always (``c = 1``: the ordinary ResNet, no homotopy).

Per-block variants give block ``b`` (of ``B``) its own end point ``t₀ (r_b + 1) / B`` with
rank ``r_b = B - 1 - b`` (``deep_first``: the deepest block is the first to lose its skip)
or ``r_b = b`` (``shallow_first``); all blocks start fading at ``t = 0`` and every skip is
gone at ``t₀``.

:class:`AutoSchedule` needs no ``t₀``: after each epoch it compares the validation loss
with the best so far and lowers λ (by a step that grows while it succeeds) when the loss
is within a tolerance of its best, backs off (raises λ by half a step, halves the step)
otherwise; a λ below ``min_step`` becomes a hard, final 0.  The only bound is the
training budget: when λ is not 0 with ``reserve`` of the epochs left it is set to 0 then
(``forced``), so the network always ends skipless with epochs to recover.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from ..algebra.errors import LaurentnetError

__all__ = ["ScheduleError", "Schedule", "FixedSchedule", "AutoSchedule", "SHAPES", "PER_BLOCK",
           "make_schedule", "SCHEDULES"]


class ScheduleError(LaurentnetError, ValueError):
    """A schedule that cannot be built (bad name or parameter; the message says which)."""


def _linear(u: float, **_: Any) -> float:
    return 1.0 - u


def _cosine(u: float, **_: Any) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * u))


def _step(u: float, steps: int = 4, **_: Any) -> float:
    return 0.0 if u >= 1.0 else 1.0 - math.floor(steps * u) / steps


def _exponential(u: float, rate: float = 4.0, **_: Any) -> float:
    tail = math.exp(-rate)
    return (math.exp(-rate * u) - tail) / (1.0 - tail)


#: shape name -> ``f(u)`` on ``u = t / t₀ ∈ [0, 1]`` with ``f(0) = 1`` and ``f(1) = 0``
SHAPES: dict[str, Callable[..., float]] = {"linear": _linear, "cosine": _cosine,
                                           "step": _step, "exponential": _exponential}
PER_BLOCK = ("all", "deep_first", "shallow_first")


class Schedule:
    """λ per block as a function of training time; the interface the trainer uses.

    ``values(t, num_blocks)`` — λ of every block (shallowest first) at time ``t`` epochs;
    ``zero_at()`` — the time from which every λ is 0 (``None``: never, or not known yet);
    ``observe(epoch, val_loss, epochs)`` — called after each epoch with the validation
    loss (only the automatic schedule uses it); ``config()`` — what defines it (JSON);
    ``state_dict()`` / ``load_state_dict()`` — what a checkpoint needs to resume it."""

    name = "schedule"

    def values(self, t: float, num_blocks: int) -> list[float]:  # pragma: no cover
        raise NotImplementedError

    def zero_at(self) -> float | None:
        return None

    def observe(self, epoch: int, val_loss: float, epochs: int) -> None:
        """The validation loss after epoch ``epoch`` (0-based) of ``epochs``."""

    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def describe(self) -> str:
        items = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{self.name}({items})"


class FixedSchedule(Schedule):
    """A hand-set schedule: ``shape`` (a :data:`SHAPES` name, or ``"constant"``) ending at
    ``t0`` epochs, for all blocks at once or per block (:data:`PER_BLOCK`); ``steps`` for
    the step shape, ``rate`` for the exponential one, ``value`` for the constant one."""

    def __init__(self, shape: str = "linear", t0: float | None = None, per_block: str = "all",
                 *, steps: int = 4, rate: float = 4.0, value: float = 1.0):
        if shape != "constant" and shape not in SHAPES:
            raise ScheduleError(f"schedule {shape!r} not in {('constant', *SHAPES)}")
        if per_block not in PER_BLOCK:
            raise ScheduleError(f"per_block {per_block!r} not in {PER_BLOCK}")
        if shape != "constant" and not (t0 is not None and math.isfinite(t0) and t0 > 0):
            raise ScheduleError(f"the {shape} schedule needs an end point t0 > 0 (epochs), got {t0}")
        if int(steps) < 1 or not (math.isfinite(rate) and rate > 0):
            raise ScheduleError(f"steps must be >= 1 and rate > 0, got steps={steps}, rate={rate}")
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise ScheduleError(f"a constant λ must be in [0, 1], got {value}")
        self.name, self.shape, self.per_block = shape, shape, per_block
        self.t0 = None if shape == "constant" else float(t0)
        self.steps, self.rate, self.value = int(steps), float(rate), float(value)

    def _end(self, block: int, num_blocks: int) -> float:
        """The end point of ``block``: ``t₀ (rank + 1) / B``."""
        assert self.t0 is not None
        if self.per_block == "all":
            return self.t0
        rank = num_blocks - 1 - block if self.per_block == "deep_first" else block
        return self.t0 * (rank + 1) / num_blocks

    def values(self, t: float, num_blocks: int) -> list[float]:
        if self.shape == "constant":
            return [self.value] * num_blocks
        f = SHAPES[self.shape]
        out = []
        for b in range(num_blocks):
            u = min(1.0, max(0.0, t / self._end(b, num_blocks)))
            out.append(0.0 if u >= 1.0 else min(1.0, max(0.0, f(u, steps=self.steps, rate=self.rate))))
        return out

    def zero_at(self) -> float | None:
        if self.shape == "constant":
            return 0.0 if self.value == 0 else None
        return self.t0

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"name": self.shape}
        if self.shape == "constant":
            cfg["value"] = self.value
            return cfg
        cfg.update(t0=self.t0, per_block=self.per_block)
        if self.shape == "step":
            cfg["steps"] = self.steps
        if self.shape == "exponential":
            cfg["rate"] = self.rate
        return cfg


class AutoSchedule(Schedule):
    """λ lowered while the validation loss stays near its best (module docstring).

    ``plan[e]`` is λ at the end of epoch ``e`` (λ at its start is ``plan[e-1]``, 1 before
    epoch 0); inside an epoch λ moves linearly between the two.  The first ``warmup``
    epochs keep λ = 1.  After epoch ``e`` with validation loss ``L`` and best earlier loss
    ``L*``: if ``L <= L* (1 + tolerance) + slack`` the step grows (``step · grow``, at most
    ``max_step``) and ``plan[e+1] = plan[e] - step``; else ``plan[e+1] = min(1, plan[e] +
    step / 2)`` and the step shrinks (``step · shrink``, at least ``min_step``).  A planned
    λ below ``min_step`` is 0, and 0 is final.  With ``ceil(reserve · epochs)`` epochs left
    a non-zero λ is set to 0 (``forced``).  ``zero_epochs`` is how many epochs it took.

    The defaults (``tolerance = 0.25``, ``slack = 0.02``) were picked on the validation
    set of the digits with seed 1 (ResNet-small, 30 epochs: λ = 0 after 14 epochs, not
    forced); the benchmark uses seed 0.
    """

    name = "auto"

    def __init__(self, step: float = 0.1, tolerance: float = 0.25, slack: float = 0.02,
                 grow: float = 1.5, shrink: float = 0.5, min_step: float = 0.02,
                 max_step: float = 0.5, reserve: float = 0.25, warmup: int = 1):
        checks = {"step": 0 < step <= 1, "tolerance": tolerance >= 0, "slack": slack >= 0,
                  "grow": grow >= 1,
                  "shrink": 0 < shrink <= 1, "min_step": 0 < min_step <= step,
                  "max_step": step <= max_step <= 1, "reserve": 0 <= reserve < 1,
                  "warmup": int(warmup) >= 1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ScheduleError(f"auto schedule: bad {', '.join(bad)} (need 0 < min_step <= step "
                                "<= max_step <= 1, tolerance >= 0, grow >= 1, 0 < shrink <= 1, "
                                "0 <= reserve < 1, warmup >= 1, slack >= 0)")
        self.step0, self.tolerance, self.slack = float(step), float(tolerance), float(slack)
        self.grow, self.shrink = float(grow), float(shrink)
        self.min_step, self.max_step, self.reserve, self.warmup = min_step, max_step, reserve, int(warmup)
        self.plan: list[float] = [1.0]
        self.step = self.step0
        self.best = math.inf
        self.forced = False
        self.decisions: list[str] = []

    def values(self, t: float, num_blocks: int) -> list[float]:
        e = max(0, math.floor(t))
        frac = t - e
        start = 1.0 if e == 0 else self._planned(e - 1)
        end = self._planned(e)
        return [start + (end - start) * frac] * num_blocks

    def _planned(self, e: int) -> float:
        return self.plan[min(e, len(self.plan) - 1)]

    def observe(self, epoch: int, val_loss: float, epochs: int) -> None:
        if epoch != len(self.plan) - 1:
            raise ScheduleError(f"auto schedule: expected the result of epoch {len(self.plan) - 1}, "
                                f"got epoch {epoch}")
        current = self.plan[-1]
        if not math.isfinite(val_loss):
            decision, nxt = "loss not finite: back off", min(1.0, current + self.step / 2)
        elif current == 0.0:
            decision, nxt = "at zero (final)", 0.0
        elif epoch + 1 < self.warmup:
            decision, nxt = "warm-up", 1.0
        elif val_loss <= self.best * (1 + self.tolerance) + self.slack:
            if epoch + 1 > self.warmup:
                self.step = min(self.max_step, self.step * self.grow)
            decision, nxt = "lower", current - self.step
        else:
            decision, nxt = "back off", min(1.0, current + self.step / 2)
            self.step = max(self.min_step, self.step * self.shrink)
        if 0 < nxt < self.min_step or nxt < 0:
            nxt = 0.0
        left = epochs - (epoch + 1)
        if nxt > 0 and left <= math.ceil(self.reserve * epochs):
            nxt, decision, self.forced = 0.0, decision + "; budget reserve reached: forced to 0", True
        if math.isfinite(val_loss):
            self.best = min(self.best, val_loss)
        self.plan.append(float(nxt))
        self.decisions.append(decision)

    def zero_at(self) -> float | None:
        """The time (epochs) at which λ reached 0, if it has."""
        for e, lam in enumerate(self.plan):
            if lam == 0.0:
                return float(e + 1)
        return None

    @property
    def zero_epochs(self) -> int | None:
        """How many epochs the schedule needed to bring λ to 0 (None: not yet)."""
        z = self.zero_at()
        return None if z is None else int(z)

    def config(self) -> dict[str, Any]:
        return {"name": "auto", "step": self.step0, "tolerance": self.tolerance,
                "slack": self.slack, "grow": self.grow, "shrink": self.shrink,
                "min_step": self.min_step,
                "max_step": self.max_step, "reserve": self.reserve, "warmup": self.warmup}

    def state_dict(self) -> dict[str, Any]:
        return {"plan": list(self.plan), "step": self.step, "best": self.best,
                "forced": self.forced, "decisions": list(self.decisions)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plan = [float(v) for v in state["plan"]]
        self.step, self.best = float(state["step"]), float(state["best"])
        self.forced, self.decisions = bool(state["forced"]), list(state["decisions"])


SCHEDULES = ("constant", *SHAPES, "auto")


def make_schedule(name: str, t0: float | None = None, per_block: str = "all",
                  **options: Any) -> Schedule:
    """A schedule by name (:data:`SCHEDULES`): ``"auto"`` takes :class:`AutoSchedule`'s
    options, the others :class:`FixedSchedule`'s (``t0``, ``per_block``, ``steps``,
    ``rate``, ``value``)."""
    if name == "auto":
        if t0 is not None:
            raise ScheduleError("the auto schedule takes no t0 (it finds when to reach 0)")
        if per_block != "all":
            raise ScheduleError("the auto schedule moves every block together (per_block='all')")
        return AutoSchedule(**options)
    if name not in SCHEDULES:
        raise ScheduleError(f"schedule {name!r} not in {SCHEDULES}")
    return FixedSchedule(name, t0, per_block, **options)
