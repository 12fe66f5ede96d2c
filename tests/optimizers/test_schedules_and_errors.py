"""Schedulers move η and the threshold step by step; unsupported cases fail with one clear error."""

from __future__ import annotations

import math

import pytest
import torch

import cases
from edgewatch.curvature import HessianOperator, lanczos
from edgewatch.optimizers import (
    OptimizerStateError,
    UnsupportedOptimizerError,
    preconditioned_operator,
    registered_optimizers,
    stability,
)


def step(model, optimizer, probe):
    optimizer.zero_grad()
    cases.cross_entropy(model, probe[0]).backward()
    optimizer.step()


SCHEDULES = [
    # (scheduler, η_t / η_0 written out independently)
    pytest.param(lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=10),
                 lambda t: 0.1 + 0.9 * min(t, 10) / 10, id="linear_warmup"),
    pytest.param(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20),
                 lambda t: 0.5 * (1 + math.cos(math.pi * t / 20)), id="cosine"),
    pytest.param(lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: min(1.0, s / 10)),
                 lambda t: min(1.0, t / 10), id="warmup_from_zero"),
]


@pytest.mark.parametrize("make_scheduler, factor", SCHEDULES)
def test_scheduler_changes_eta_threshold_and_ratio_every_step(make_scheduler, factor):
    """Parameters held still, only the schedule moves: r must follow η_t exactly."""
    model, probe = cases.mlp(hidden=8, dtype=torch.float64), cases.digits_probe(sizes=(32,))
    probe = [(probe[0][0].double(), probe[0][1])]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    scheduler = make_scheduler(optimizer)
    step(model, optimizer, probe)  # one step for Adam's state; then only the schedule moves
    state = {p: {k: v.clone() for k, v in optimizer.state[p].items()} for p in model.parameters()}
    weights = [p.detach().clone() for p in model.parameters()]
    op = HessianOperator(model, cases.cross_entropy, probe)
    thresholds = []
    for t in range(1, 13):
        scheduler.step()
        info = stability(optimizer)
        eta = 0.01 * factor(t)
        assert info.lr == pytest.approx(eta, rel=1e-12, abs=1e-15)
        if eta == 0:  # nothing moves: no threshold to cross
            assert info.threshold == math.inf and info.ratio(1e9) == 0.0
            continue
        assert info.threshold == pytest.approx(38 * (1 - eta * 0.1 / 2) / eta, rel=1e-12)
        preconditioned, _ = preconditioned_operator(op, optimizer)
        sharpness = lanczos(preconditioned, k=1, tol=1e-10).eigenvalues[0].item()
        thresholds.append(info.threshold)
        if t == 1:
            reference = info.ratio(sharpness) * 38 * (1 - eta * 0.05) / eta  # = λ, fixed
        assert info.ratio(sharpness) == pytest.approx(eta * reference / (38 * (1 - eta * 0.05)), rel=1e-8)
    assert len(set(thresholds)) >= 9  # it really moved step by step
    for p, w in zip(model.parameters(), weights):  # the measurement moved nothing
        assert torch.equal(p.detach(), w)
        assert all(torch.equal(v, state[p][k]) for k, v in optimizer.state[p].items())


def test_adagrad_lr_decay_is_the_decayed_step_torch_took():
    model, probe = cases.mlp(hidden=8), cases.digits_probe(sizes=(32,))
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.1, lr_decay=0.5)
    assert stability(optimizer).lr == pytest.approx(0.1)  # before any step: the first step's
    for t in range(1, 5):
        step(model, optimizer, probe)
        assert stability(optimizer).lr == pytest.approx(0.1 / (1 + (t - 1) * 0.5))


def test_exact_38_over_eta_for_adam():
    model = cases.mlp(hidden=8)
    info = stability(torch.optim.Adam(model.parameters(), lr=3e-4))
    assert info.stability_constant == 38.0
    assert info.threshold == 38.0 / 3e-4


def test_sgd_rows_of_the_table():
    params = cases.mlp(hidden=8).parameters
    assert stability(torch.optim.SGD(params(), lr=0.1)).threshold == pytest.approx(20.0)
    assert stability(torch.optim.SGD(params(), lr=0.1, momentum=0.9)).stability_constant == 3.8
    assert stability(torch.optim.SGD(params(), lr=0.1, momentum=0.9, dampening=0.5)).stability_constant == 7.6
    assert stability(torch.optim.SGD(params(), lr=0.1, momentum=0.9, nesterov=True)).stability_constant == pytest.approx(3.8 / 2.8)
    assert stability(torch.optim.RMSprop(params(), lr=0.1, momentum=0.5)).stability_constant == 3.0
    assert stability(torch.optim.Adagrad(params(), lr=0.1)).stability_constant == 2.0


def test_adaptive_optimizer_before_its_first_step():
    model, probe = cases.mlp(hidden=8), cases.digits_probe(sizes=(32,))
    op = HessianOperator(model, cases.cross_entropy, probe)
    for optimizer in (torch.optim.Adam(model.parameters()), torch.optim.RMSprop(model.parameters()), torch.optim.Adagrad(model.parameters())):
        with pytest.raises(OptimizerStateError, match="has taken no step yet.*after the first optimizer.step"):
            preconditioned_operator(op, optimizer)
        assert stability(optimizer).lr == pytest.approx(optimizer.defaults["lr"])  # η needs no state
    # SGD needs no state at all
    preconditioned_operator(op, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))


def test_a_parameter_without_state_while_others_have_some_does_not_move():
    model, probe = cases.mlp(hidden=8), cases.digits_probe(sizes=(32,))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model[0].weight.requires_grad_(False)  # gets no gradient, so Adam gives it no state
    step(model, optimizer, probe)
    model[0].weight.requires_grad_(True)
    op = HessianOperator(model, cases.cross_entropy, probe)
    preconditioned, _ = preconditioned_operator(op, optimizer)
    assert not preconditioned.scale[op.parameter_slices()["0.weight"]].any()
    assert preconditioned.scale[op.parameter_slices()["2.weight"]].all()


def test_unknown_optimizer_says_how_to_register():
    model = cases.mlp(hidden=8)
    with pytest.raises(UnsupportedOptimizerError) as error:
        stability(torch.optim.NAdam(model.parameters()))
    message = str(error.value)
    assert "no stability adapter for NAdam" in message
    assert all(name in message for name in ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad"))
    assert "register_adapter(NAdam, MyAdapter())" in message
    assert set(registered_optimizers()) >= {"Adagrad", "Adam", "AdamW", "RMSprop", "SGD"}


def test_dampening_that_would_ascend_is_refused():
    model = cases.mlp(hidden=8)
    with pytest.raises(UnsupportedOptimizerError, match="use dampening < 1"):
        stability(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=1.5))


def test_maximize_is_refused():
    model = cases.mlp(hidden=8)
    with pytest.raises(UnsupportedOptimizerError, match="maximize=True"):
        stability(torch.optim.SGD(model.parameters(), lr=0.1, maximize=True))


def test_decoupled_decay_that_is_unstable_by_itself():
    model = cases.mlp(hidden=8)
    with pytest.raises(ValueError, match=r"lr·weight_decay = 2.5 >= 2"):
        stability(torch.optim.AdamW(model.parameters(), lr=5.0, weight_decay=0.5))


def test_optimizer_over_another_model():
    model, other = cases.mlp(hidden=8), cases.mlp(hidden=8)
    op = HessianOperator(model, cases.cross_entropy, cases.digits_probe(sizes=(32,)))
    with pytest.raises(ValueError, match="updates none of the operator's parameters"):
        preconditioned_operator(op, torch.optim.SGD(other.parameters(), lr=0.1))
