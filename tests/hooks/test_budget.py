"""The overhead budget's policy, on a fake clock: early points, spending within the allowance,
full solves among streamed points, cheap-metric thinning, and the Monitor following it."""

from __future__ import annotations

import pytest
import torch

import cases
from edgewatch.hooks import Monitor
from edgewatch.hooks.budget import EARLY_STEPS, Budget


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(budget: Budget, clock: FakeClock, steps: int, step_s: float, cheap_s: float, cost: dict[str, float]):
    """A training loop of ``steps`` steps of ``step_s`` seconds under the budget's decisions,
    as the Monitor drives it: returns the steps and kinds of the curvature points."""
    points = []
    if budget.curvature_due(0):  # at attach
        budget.enter()
        clock.now += cost["full"]
        budget.spent("full", cost["full"])
        budget.leave()
        points.append((0, "full"))
    for step in range(1, steps + 1):
        clock.now += step_s
        budget.enter()
        cheap = step % budget.cheap_every == 0
        if cheap:
            clock.now += cheap_s
            budget.settle()
        kind = budget.curvature_due(step, decide=cheap)
        if kind:
            clock.now += cost[kind]
            budget.spent(kind, cost[kind])
            points.append((step, kind))
        budget.leave()
        budget.count_step(cheap_s if cheap else None)
    budget.settle()
    return points


def test_early_points_come_first_then_spending_stays_within_the_allowance():
    clock = FakeClock()
    budget = Budget(0.05, horizon=1000, clock=clock)
    cost = {"full": 0.2, "stream": 0.02}  # 20 and 2 steps of 10 ms
    points = simulate(budget, clock, 20_000, 0.01, 0.0001, cost)
    steps = [s for s, _ in points]
    assert steps[:5] == [0, *EARLY_STEPS]
    assert points[0][1] == "full" and all(kind == "stream" for _, kind in points[1:5])
    # every 8th point is a full solve
    kinds = [kind for _, kind in points]
    assert all(kinds[i] == "full" for i in range(0, len(kinds), 8))
    assert kinds.count("full") == -(-len(kinds) // 8)
    # Within budget at the end: own / train ≤ f, allowing one point's overrun.
    assert budget.overhead <= 0.05 + cost["full"] / budget.train
    assert budget.overhead > 0.04  # and the budget is used, not left idle
    # After the horizon points come evenly, at the curvature's rate: f less the cheap metrics'
    # 1%, so the mean cost of a point, (0.2 + 7 · 0.02) / 8 s, every 1.06 s of training (106 steps).
    late = [s for s, _ in points if s > 2000]
    gaps = [b - a for a, b in zip(late, late[1:])]
    assert 104 <= min(gaps) and max(gaps) <= 110


def test_probes_too_costly_for_the_horizon_take_only_step_0_until_paid_back():
    clock = FakeClock()
    budget = Budget(0.05, horizon=1000, clock=clock)
    cost = {"full": 2.0, "stream": 0.2}  # a full solve = 200 training steps of 10 ms; f·H = 50 steps
    points = simulate(budget, clock, 8000, 0.01, 0.0, cost)
    steps = [s for s, _ in points]
    assert steps[0] == 0 and steps[1] > 100  # no early point fits
    assert steps[1] >= (2.0 + 0.2) / 0.05 / 0.01 - 1  # the next one once 5% of training pays for both
    assert budget.own <= 0.05 * budget.train + cost["full"]


def test_more_points_from_streaming_than_from_full_solves_alone():
    cost = {"full": 0.2, "stream": 0.02}
    counts = {}
    for full_every in (1, 8):
        clock = FakeClock()
        budget = Budget(0.05, full_every=full_every, clock=clock)
        counts[full_every] = len(simulate(budget, clock, 20_000, 0.01, 0.0, cost))
    assert counts[8] >= 4 * counts[1]


def test_cheap_metrics_are_thinned_only_when_they_would_cost_more_than_half_the_budget():
    clock = FakeClock()
    budget = Budget(0.05, clock=clock)
    simulate(budget, clock, 50, 0.010, 0.0002, {"full": 0.0, "stream": 0.0})  # 2% ≤ 2.5%
    assert budget.update_cheap_every() == 1
    clock = FakeClock()
    budget = Budget(0.05, clock=clock)
    simulate(budget, clock, 50, 0.010, 0.001, {"full": 0.0, "stream": 0.0})  # 10%: every 4th step is 2.5%
    assert budget.update_cheap_every() == 4


def test_state_round_trip_keeps_the_accounts():
    clock = FakeClock()
    budget = Budget(0.05, clock=clock)
    simulate(budget, clock, 300, 0.01, 0.0001, {"full": 0.2, "stream": 0.02})
    restored = Budget(0.05, clock=clock)
    restored.load_state_dict(budget.state_dict())
    assert (restored.own, restored.train, restored.steps, restored.points) == (budget.own, budget.train, budget.steps, budget.points)
    assert restored.cost("stream") == budget.cost("stream") and restored.next_kind() == budget.next_kind()


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, "5%"])
def test_a_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(ValueError, match="budget must be a fraction"):
        Budget(fraction)


# -- the Monitor under its budget -------------------------------------------------------------
def watched_mlp(clock: FakeClock, probe_cost: dict[str, float], **kwargs):
    model = cases.mlp(seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer, cases.cross_entropy, cases.digits_probe(sizes=(32,)), run_dir=False, **kwargs)
    monitor.budget = Budget(monitor.budget.fraction, clock=clock)
    measure = monitor.curvature.measure

    def timed(streamed=False, escalate=True):
        metrics = measure(streamed=streamed, escalate=escalate)
        clock.now += probe_cost["stream" if metrics.get("curvature/streamed") else "full"]
        return metrics

    monitor.curvature.measure = timed
    return model, optimizer, monitor


def test_the_monitor_places_points_where_its_budget_says():
    clock = FakeClock()
    model, optimizer, monitor = watched_mlp(clock, {"full": 0.2, "stream": 0.02})
    monitor.attach()
    x, y = cases.digits(64)
    for _ in range(1500):
        optimizer.zero_grad()
        cases.cross_entropy(model, (x, y)).backward()
        clock.now += 0.01  # a 10 ms training step
        optimizer.step()
    steps = list(monitor.history["curvature/lambda_max"].steps)
    streamed = list(monitor.history["curvature/streamed"].values)
    assert steps[:5] == [0, 3, 10, 30, 100]
    assert streamed[0] == 0.0 and streamed[1:5] == [1.0] * 4  # a full solve at θ0, then streamed
    # 0.28 s spent by step 100 of the 0.5 s allowed until step 1,000: the rest spread evenly
    # over the steps to it, then evenly, a point every (0.2 + 7·0.02)/8 s / 5% = 85 steps (more
    # when a streamed point escalates to a full solve, which raises the mean cost).
    late = [s for s in steps if s > 1000]
    gaps = [b - a for a, b in zip(late, late[1:])]
    assert 85 <= min(gaps) and max(gaps) <= min(gaps) + 2 and max(gaps) <= 110
    assert monitor.latest["monitor/overhead"] == pytest.approx(monitor.overhead)
    assert 0.035 <= monitor.overhead <= 0.05 + 0.2 / 15  # within budget but for one point, and used


def test_a_fixed_schedule_is_followed_exactly_and_warned_about_when_costly():
    clock = FakeClock()
    model, optimizer, monitor = watched_mlp(clock, {"full": 0.5, "stream": 0.05}, curvature=lambda step: step % 7 == 2)
    monitor.attach()
    x, y = cases.digits(64)
    with pytest.warns(UserWarning, match="curvature=\"budget\""):
        for _ in range(30):
            optimizer.zero_grad()
            cases.cross_entropy(model, (x, y)).backward()
            clock.now += 0.01
            optimizer.step()
    assert list(monitor.history["curvature/lambda_max"].steps) == [2, 9, 16, 23, 30]
    assert set(monitor.history["curvature/streamed"].values) == {0.0}  # fixed schedules solve in full
