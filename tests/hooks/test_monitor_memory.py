"""What the Monitor keeps and when it measures: latest and history over every metric ever
measured, measure() on demand, step 0 at attach, curvature=None, callables and bad schedules."""

from __future__ import annotations

import math

import pytest
import torch

import cases
from edgewatch.hooks import Monitor, Schedule


def setup(optimizer="sgd", **kwargs):
    model = cases.mlp(seed=0)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = cases.digits_probe(sizes=(48,))
    monitor = Monitor(model, opt, cases.cross_entropy, probe, run_dir=False, **{"every": 1, **kwargs})
    return model, opt, probe, monitor


def train(model, optimizer, probe, monitor, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        loss = cases.cross_entropy(model, probe[0])
        monitor.observe(loss)
        loss.backward()
        optimizer.step()


def test_latest_keeps_every_metric_ever_measured_with_its_step():
    model, optimizer, probe, monitor = setup(curvature=25)
    monitor.attach()
    train(model, optimizer, probe, monitor, 30)  # the README example run 610 steps instead of 600
    assert monitor.latest_step["curvature/stability_ratio"] == 25 and monitor.latest_step["loss"] == 30
    assert monitor.latest["curvature/stability_ratio"] == monitor.history["curvature/stability_ratio"].values[-1]
    assert list(monitor.history["curvature/lambda_max"].steps) == [25]
    assert list(monitor.history["loss"].steps) == list(range(1, 31))


def test_history_is_bounded_and_keeps_the_newest_point():
    model, optimizer, probe, monitor = setup(curvature=None, history=16)
    monitor.attach()
    train(model, optimizer, probe, monitor, 100)
    steps = list(monitor.history["grad/norm"].steps)
    assert len(steps) <= 17 and steps[0] == 1 and steps[-1] == 100
    spacing = {b - a for a, b in zip(steps[:-2], steps[1:-1])}
    assert len(spacing) == 1  # evenly thinned
    with pytest.raises(KeyError, match="never measured"):
        monitor.history["curvature/lambda_max"]


def test_step_zero_is_measured_at_attach_before_any_update():
    model, optimizer, probe, monitor = setup(budget=0.9)  # a generous budget: these tiny steps pay for little
    dense = torch.linalg.eigvalsh(cases.dense_hessian(model, cases.cross_entropy, probe))[-1].item()
    monitor.attach()
    assert monitor.history["curvature/lambda_max"].steps[0] == 0
    assert monitor.history["curvature/streamed"].values[0] == 0.0  # a full solve
    assert monitor.latest["curvature/lambda_max"] == pytest.approx(dense, rel=2e-3)
    assert monitor.latest["curvature/stability_ratio"] == pytest.approx(0.3 * monitor.latest["curvature/lambda_max"] / 2)
    train(model, optimizer, probe, monitor, 10)
    assert list(monitor.history["curvature/lambda_max"].steps) == [0, 3, 10]
    assert list(monitor.history["curvature/streamed"].values)[1:] == [1.0, 1.0]


def test_adam_has_no_preconditioned_sharpness_at_step_zero():
    model, optimizer, probe, monitor = setup("adam")
    monitor.attach()
    assert monitor.latest_step["curvature/lambda_max"] == 0
    assert "curvature/precond/lambda_max" not in monitor.latest  # no second moment exists yet
    train(model, optimizer, probe, monitor, 3)
    assert monitor.latest_step["curvature/precond/lambda_max"] == 3
    assert math.isfinite(monitor.latest["curvature/stability_ratio"])


def test_measure_forces_a_full_probe_now():
    model, optimizer, probe, monitor = setup(curvature=None)
    monitor.attach()
    assert "curvature/lambda_max" not in monitor.latest  # curvature=None: nothing at attach either
    train(model, optimizer, probe, monitor, 7)
    metrics = monitor.measure()
    assert metrics["curvature/streamed"] == 0.0 and monitor.latest_step["curvature/lambda_max"] == 7
    dense = torch.linalg.eigvalsh(cases.dense_hessian(model, cases.cross_entropy, probe))[-1].item()
    assert metrics["curvature/lambda_max"] == pytest.approx(dense, rel=2e-3)
    train(model, optimizer, probe, monitor, 20)
    assert list(monitor.history["curvature/lambda_max"].steps) == [7]  # and nothing on its own


@pytest.mark.parametrize(
    ("curvature", "expected"),
    [(lambda step: step in (2, 5), [2, 5]), (4, [4, 8]), (Schedule(every=100, dense_until=10, per_decade=2), [1, 3])],
)
def test_fixed_schedules_are_followed_exactly(curvature, expected):
    model, optimizer, probe, monitor = setup(curvature=curvature)
    monitor.attach()
    train(model, optimizer, probe, monitor, 9)
    assert list(monitor.history["curvature/lambda_max"].steps) == expected


@pytest.mark.parametrize("curvature", ["often", 0, -3, 2.5, True])
def test_a_bad_curvature_schedule_is_refused_at_construction(curvature):
    with pytest.raises(ValueError, match="curvature"):
        setup(curvature=curvature)


@pytest.mark.parametrize(("name", "value"), [("every", 0), ("every", "1"), ("norms_every", None), ("budget", 0.0), ("budget", 2)])
def test_bad_cadences_and_budgets_are_refused(name, value):
    with pytest.raises(ValueError, match=name):
        setup(**{name: value})


def test_norms_every_thins_only_the_parameter_and_update_norms():
    model, optimizer, probe, monitor = setup(curvature=None, norms_every=3)
    monitor.attach()
    train(model, optimizer, probe, monitor, 9)
    assert list(monitor.history["update/norm"].steps) == [1, 4, 7]
    assert list(monitor.history["grad/norm"].steps) == list(range(1, 10))
    before = [p.detach().clone() for p in model.parameters()]
    train(model, optimizer, probe, monitor, 1)  # step 10 measures the update of step 10 alone
    update = torch.sqrt(sum(((a - p.detach()) ** 2).sum() for a, p in zip(before, model.parameters())))
    assert monitor.latest_step["update/norm"] == 10
    assert monitor.latest["update/norm"] == pytest.approx(update.item(), rel=1e-5)


def test_the_budget_keeps_its_accounts_across_a_resume():
    model, optimizer, probe, monitor = setup()
    monitor.attach()
    train(model, optimizer, probe, monitor, 12)
    state = monitor.state_dict()
    monitor.close()
    _, _, _, resumed = setup()
    resumed.load_state_dict(state)
    assert resumed.budget.points == monitor.budget.points and resumed.budget.train == monitor.budget.train
    assert resumed.overhead == pytest.approx(monitor.overhead)
