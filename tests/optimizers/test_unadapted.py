"""Optimizers without a stability adapter: the raw Hessian is still measured, only the
preconditioned sharpness, its threshold and the stability ratio are skipped, with one warning
that says how to add them (``register_adapter``)."""

from __future__ import annotations

import warnings

import pytest
import torch

import cases
import edgewatch as ew
from edgewatch.optimizers import OptimizerAdapter, registry

PRECONDITIONED = ("curvature/threshold", "curvature/precond/lambda_max", "curvature/stability_ratio")


class PlainSGD(torch.optim.Optimizer):
    """A user's own optimizer: θ ← θ − η g, unknown to edgewatch."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            with torch.enable_grad():
                closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])


def watched(make_optimizer, **settings):
    """A float64 MLP, its optimizer, a probe and a Monitor probing at every step."""
    model = cases.mlp(hidden=8, dtype=torch.float64)
    probe = [(x.double(), y) for x, y in cases.digits_probe(sizes=(60, 40))]
    optimizer = make_optimizer(model)
    monitor = ew.Monitor(model, optimizer, cases.cross_entropy, probe, every=1, curvature=1, run_dir=False, **settings)
    return model, optimizer, probe, monitor.attach()


def train(model, optimizer, probe, steps: int) -> list[str]:
    """``steps`` steps on the first probe batch (through a closure, as LBFGS needs); the
    warnings raised, but for the one on a costly fixed schedule."""
    def closure():
        optimizer.zero_grad()
        loss = cases.cross_entropy(model, probe[0])
        loss.backward()
        return loss

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            optimizer.step(closure)
    return [str(w.message) for w in caught if "slow training" not in str(w.message)]


def top_eigenvalue(model, probe) -> float:
    return torch.linalg.eigvalsh(cases.dense_hessian(model, cases.cross_entropy, probe))[-1].item()


@pytest.mark.parametrize(("make", "name"), [
    (lambda model: PlainSGD(model.parameters(), lr=0.1), "PlainSGD"),
    (lambda model: torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3), "LBFGS"),
])
def test_an_optimizer_without_adapter_still_gets_the_hessians_top_eigenvalue(make, name):
    model, optimizer, probe, monitor = watched(make, tol=1e-10, max_hvps=200)
    messages = train(model, optimizer, probe, 3)
    assert monitor.latest_step["curvature/lambda_max"] == 3  # measured at every probe, the last at θ_3
    assert monitor.latest["curvature/lambda_max"] == pytest.approx(top_eigenvalue(model, probe), rel=1e-8)
    assert "curvature/directional_sharpness" in monitor.latest and "curvature/failed" not in monitor.latest
    assert not set(PRECONDITIONED) & set(monitor.latest)
    assert len(messages) == 1, messages  # once per Monitor, not at every probe
    assert f"edgewatch.optimizers.register_adapter({name}, MyAdapter())" in messages[0]
    assert f"no stability adapter for {name}" in messages[0]


def test_an_adapter_registered_later_brings_the_threshold_back(monkeypatch):
    model, optimizer, probe, monitor = watched(lambda model: PlainSGD(model.parameters(), lr=0.1))
    assert len(train(model, optimizer, probe, 1)) == 1
    assert "curvature/lambda_max" in monitor.latest and "curvature/threshold" not in monitor.latest
    monkeypatch.setitem(registry._ADAPTERS, PlainSGD, OptimizerAdapter())  # plain GD: 2/η
    assert train(model, optimizer, probe, 1) == []
    assert monitor.latest["curvature/threshold"] == pytest.approx(2 / 0.1)
    assert monitor.latest["curvature/stability_ratio"] == pytest.approx(0.1 * monitor.latest["curvature/lambda_max"] / 2)


def test_an_option_the_adapter_does_not_cover_skips_only_the_threshold():
    model, optimizer, probe, monitor = watched(lambda model: torch.optim.SGD(model.parameters(), lr=0.1, maximize=True))
    [message] = train(model, optimizer, probe, 2)
    assert monitor.latest_step["curvature/lambda_max"] == 2 and "curvature/threshold" not in monitor.latest
    assert "maximize=True" in message and "register_adapter(SGD" in message
