"""Skip-weight schedules (bridge.schedules): values against the formulas computed here,
per-block order, the automatic schedule's decisions on scripted validation losses."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from laurentnet.algebra.errors import LaurentnetError
from laurentnet.bridge.schedules import (AutoSchedule, FixedSchedule, ScheduleError,
                                         make_schedule)


@pytest.mark.parametrize("name,t,expected", [
    ("linear", 0.0, 1.0), ("linear", 2.5, 0.75), ("linear", 5.0, 0.5), ("linear", 10.0, 0.0),
    ("linear", 12.0, 0.0),
    ("cosine", 0.0, 1.0), ("cosine", 5.0, 0.5), ("cosine", 2.5, (1 + math.sqrt(0.5)) / 2),
    ("cosine", 10.0, 0.0),
    ("step", 0.0, 1.0), ("step", 2.49, 1.0), ("step", 2.5, 0.75), ("step", 7.6, 0.25),
    ("step", 9.99, 0.25), ("step", 10.0, 0.0),
    ("exponential", 0.0, 1.0), ("exponential", 10.0, 0.0),
    ("exponential", 5.0, (math.exp(-2) - math.exp(-4)) / (1 - math.exp(-4))),
])
def test_fixed_shapes_match_their_formulas(name, t, expected) -> None:
    schedule = make_schedule(name, t0=10)
    assert schedule.values(t, 3) == pytest.approx([expected] * 3, abs=1e-12)
    assert schedule.zero_at() == 10


@given(st.sampled_from(["linear", "cosine", "step", "exponential"]),
       st.floats(0.5, 50), st.lists(st.floats(0, 60), min_size=2, max_size=6))
def test_fixed_schedules_are_monotone_in_unit_interval(name, t0, times) -> None:
    schedule = make_schedule(name, t0=t0)
    values = [schedule.values(t, 1)[0] for t in sorted(times)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))
    assert schedule.values(t0, 1) == [0.0] and schedule.values(0, 1) == [1.0]


def test_per_block_orders() -> None:
    deep = make_schedule("linear", t0=8, per_block="deep_first")
    # 4 blocks: the deepest (block 3) ends at t0/4 = 2, block 0 at t0 = 8
    assert deep.values(1.0, 4) == pytest.approx([1 - 1 / 8, 1 - 1 / 6, 1 - 1 / 4, 1 - 1 / 2])
    assert deep.values(2.0, 4)[3] == 0.0 and deep.values(7.9, 4)[0] > 0.0
    shallow = make_schedule("linear", t0=8, per_block="shallow_first")
    assert shallow.values(1.0, 4) == pytest.approx(deep.values(1.0, 4)[::-1])
    assert deep.values(8.0, 4) == [0.0] * 4 == shallow.values(8.0, 4)
    assert make_schedule("linear", t0=8).values(1.0, 4) == [1 - 1 / 8] * 4


def test_constant_and_bad_parameters() -> None:
    assert make_schedule("constant").values(100.0, 2) == [1.0, 1.0]
    assert make_schedule("constant").zero_at() is None
    assert FixedSchedule("constant", value=0.0).zero_at() == 0.0
    for kwargs, message in [(dict(name="linear"), "needs an end point t0"),
                            (dict(name="linear", t0=-1), "t0 > 0"),
                            (dict(name="cubic", t0=1), "not in"),
                            (dict(name="linear", t0=1, per_block="middle"), "per_block"),
                            (dict(name="step", t0=1, steps=0), "steps must be"),
                            (dict(name="auto", t0=3), "takes no t0")]:
        with pytest.raises(ScheduleError, match=message) as info:
            make_schedule(**kwargs)
        assert isinstance(info.value, LaurentnetError)
    with pytest.raises(ScheduleError, match="bad tolerance"):
        AutoSchedule(tolerance=-1)


def run_auto(schedule: AutoSchedule, losses: list[float], epochs: int) -> list[float]:
    for e, loss in enumerate(losses):
        schedule.observe(e, loss, epochs)
    return schedule.plan


def test_auto_lowers_while_the_loss_holds_and_backs_off() -> None:
    s = AutoSchedule(step=0.1, tolerance=0.0, slack=0.0, grow=2.0, shrink=0.5, min_step=0.05,
                     max_step=0.5, reserve=0.0)
    # epoch 0: first result -> lower by 0.1; epoch 1 better -> step 0.2; epoch 2 worse ->
    # back off by half a step (0.1), step 0.1; epoch 3 better -> step 0.2 ...
    plan = run_auto(s, [1.0, 0.9, 0.95, 0.8, 0.7, 0.6], epochs=100)
    expected = [1.0, 0.9, 0.7, 0.8, 0.6, 0.2, 0.0]
    assert plan == pytest.approx(expected)
    assert s.decisions[:3] == ["lower", "lower", "back off"]
    # plan[6] = 0 is λ at the end of epoch 6 (0-based): 7 epochs to reach 0
    assert s.zero_epochs == 7 and s.zero_at() == 7.0 and not s.forced
    # 0 is final, whatever the loss does
    s.observe(6, 99.0, 100)
    assert s.plan[-1] == 0.0
    # inside an epoch λ moves linearly from the previous plan to the next
    assert s.values(1.5, 2) == pytest.approx([0.95, 0.95])  # plan[0] = 1 -> plan[1] = 0.9
    assert s.values(2.5, 1) == pytest.approx([0.8])         # plan[1] = 0.9 -> plan[2] = 0.7
    assert s.values(0.0, 1) == [1.0] and s.values(100.0, 1) == [0.0]


def test_auto_is_forced_to_zero_by_the_budget_and_resumes_from_state() -> None:
    s = AutoSchedule(step=0.1, tolerance=0.0, slack=0.0, reserve=0.25)
    losses = [1.0] + [2.0] * 10  # always worse than the best: it only backs off
    plan = run_auto(s, losses[:7], epochs=10)
    # 10 epochs, reserve ceil(2.5) = 3: after epoch 6 (0-based) 3 epochs are left, so λ
    # goes to 0 during epoch 7 (8 epochs) and epochs 8, 9 train at λ = 0
    assert plan[-1] == 0.0 and s.forced and s.zero_epochs == 8
    assert all(v > 0 for v in plan[:-1])
    clone = AutoSchedule(step=0.1, tolerance=0.0, slack=0.0, reserve=0.25)
    clone.load_state_dict(s.state_dict())
    assert clone.plan == s.plan and clone.values(3.3, 2) == s.values(3.3, 2)
    with pytest.raises(ScheduleError, match="expected the result of epoch 7"):
        s.observe(3, 1.0, 10)


def test_auto_tolerance_and_slack_decide() -> None:
    s = AutoSchedule(step=0.1, tolerance=0.1, slack=0.05)
    run_auto(s, [1.0, 1.14], epochs=100)   # 1.14 <= 1.0 * 1.1 + 0.05: lower
    assert s.decisions == ["lower", "lower"]
    run_auto_from = s.plan[-1]
    s.observe(2, 1.16, 100)                # 1.16 > 1.15: back off
    assert s.decisions[-1] == "back off" and s.plan[-1] > run_auto_from
