"""AdamAtan2: the update is the formula, its threshold is Adam's c/η, and past it the step saturates.

θ ← θ(1 − ηw) − η·a·atan2(m̂, b·√v̂) with Adam's moments (Everett et al. 2024). Linearised at
|m̂| ≪ b√v̂ it is Adam with ε = 0, so D = (a/b)/((1 − β1^t)√v̂) and c = (2 + 2β1)/(1 − β1), times
(1 − ηw/2) for the decoupled decay. The rotated-quadratic check at r = 0.97 and 1.03 is a row of
``test_quadratic_thresholds.py``; here: the hand-computed update, the linear regime on a diagonal
quadratic where r is known in closed form, the saturation beyond it, and the Monitor's metrics.
"""

from __future__ import annotations

import math

import pytest
import torch

import cases
import edgewatch as ew
from edgewatch.optimizers import AdamAtan2, AdamAtan2Adapter, OptimizerStateError, adapter_for, stability

FROZEN = 1 - 1e-10  # β2: v moves by 1e-10 of itself per step
CURVATURE = torch.tensor([10.0, 3.0, 1.0], dtype=torch.float64)  # L = ½ Σ λ_i θ_i²
SECOND_MOMENT = torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64)  # D = 1/√v: λD = 5, 3, 2


def test_the_update_is_the_formula_on_a_hand_computed_example():
    """Two steps, β = (0.5, 0.75), w = 0.1, η = 0.2, a = 1.5, b = 2, written out by hand."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    optimizer = AdamAtan2([p], lr=0.2, betas=(0.5, 0.75), weight_decay=0.1, a=1.5, b=2.0)
    g1 = torch.tensor([0.3, -4.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([-0.1, 2.0, 1e-30], dtype=torch.float64)

    p.grad = g1.clone()
    optimizer.step()
    # t = 1: m̂ = g1, √v̂ = |g1|, so atan2(g, 2|g|) = ±atan(1/2) and atan2(0, 0) = 0.
    theta1 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) * (1 - 0.2 * 0.1)
    theta1 -= 0.2 * 1.5 * torch.tensor([math.atan(0.5), -math.atan(0.5), 0.0], dtype=torch.float64)
    torch.testing.assert_close(p.detach(), theta1, rtol=1e-15, atol=1e-15)

    p.grad = g2.clone()
    optimizer.step()
    m = 0.5 * 0.5 * g1 + 0.5 * g2  # m_2 = β1(1 − β1)g1 + (1 − β1)g2
    v = 0.75 * 0.25 * g1**2 + 0.25 * g2**2
    m_hat, v_hat = m / (1 - 0.5**2), v / (1 - 0.75**2)
    theta2 = theta1 * (1 - 0.2 * 0.1) - 0.2 * 1.5 * torch.atan2(m_hat, 2 * v_hat.sqrt())
    torch.testing.assert_close(p.detach(), theta2, rtol=1e-14, atol=1e-15)
    # The third coordinate moves as far on a gradient of 1e-30 as it would on one of 1: no ε floor.
    ratio = (0.5 / (1 - 0.5**2)) / (2 * 0.5 / math.sqrt(1 - 0.75**2))
    assert theta1[2].item() * (1 - 0.02) - p[2].item() == pytest.approx(0.3 * math.atan(ratio), rel=1e-12)


def test_adapter_threshold_and_preconditioner():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64))
    optimizer = AdamAtan2([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.2, a=2.0, b=0.5)
    assert isinstance(adapter_for(optimizer), AdamAtan2Adapter)
    with pytest.raises(OptimizerStateError, match="no step yet"):
        AdamAtan2Adapter().preconditioner(optimizer.param_groups[0], optimizer.state[p])
    p.grad = torch.tensor([0.5, 2.0, 0.0], dtype=torch.float64)
    optimizer.step()
    info = stability(optimizer)
    assert info.stability_constant == pytest.approx(38 * (1 - 0.1 * 0.2 / 2), rel=1e-15)
    assert info.groups[0].weight_decay == 0.0  # decoupled: no wI in the operator
    # t = 1: (1 − β1)·√v̂ = 0.1·|g|; D = (a/b)/(0.1|g|), and 0 where no gradient was ever seen.
    expected = torch.tensor([4.0 / 0.05, 4.0 / 0.2, 0.0], dtype=torch.float64)
    preconditioner = AdamAtan2Adapter().preconditioner(optimizer.param_groups[0], optimizer.state[p])
    torch.testing.assert_close(preconditioner, expected)


def diagonal_run(r: float, steps: int, make=AdamAtan2, theta0: float = 1e-9, **options):
    """The real optimizer on L = ½ Σ λ_i θ_i², v pinned to SECOND_MOMENT and t far past bias
    correction, at the η where η·max_i(λ_i/√v_i) = r·38; returns η and |θ_top| after each step."""
    lr = r * 38 / (CURVATURE / SECOND_MOMENT.sqrt()).max().item()
    p = torch.nn.Parameter(torch.full((3,), theta0, dtype=torch.float64))
    optimizer = make([p], lr=lr, betas=(0.9, FROZEN), **options)
    p.grad = CURVATURE * p.detach()
    optimizer.step()  # creates the state, then pin it
    state = optimizer.state[p]
    state["exp_avg"].zero_()
    state["exp_avg_sq"].copy_(SECOND_MOMENT)
    state["step"].fill_(1e12)
    with torch.no_grad():
        p.fill_(theta0)
    amplitudes = []
    for _ in range(steps):
        p.grad = CURVATURE * p.detach()
        optimizer.step()
        amplitudes.append(abs(p[0].item()))
    return lr, amplitudes


def test_in_the_linear_regime_the_threshold_separates_decay_from_growth():
    """θ₀ = 1e-9 against √v̂ ≥ 0.5. At r = 0.97 the top mode's companion roots have modulus
    √β1 ≈ 0.949; at r = 1.03 one root is ≈ −1.345, and 40 steps of it (θ ≈ 1e-4, |m̂|/√v̂ below
    1e-3, where arctan is linear to 1e-6) follow Adam with ε = 0 step for step."""
    lr, stable = diagonal_run(0.97, 300)
    _, unstable = diagonal_run(1.03, 40)
    _, adam = diagonal_run(1.03, 40, make=torch.optim.Adam, eps=0.0)
    assert lr * 5 == pytest.approx(0.97 * 38)
    assert stable[-1] / 1e-9 < 1e-6
    assert unstable[-1] / 1e-9 > 1e5
    assert (unstable[-1] / unstable[-11]) ** 0.1 == pytest.approx(1.345, abs=2e-3)
    assert unstable == pytest.approx(adam, rel=1e-7)


def test_far_past_the_edge_the_oscillation_saturates_instead_of_diverging():
    """At r = 1.5 Adam (ε = 0) runs away until v catches up; AdamAtan2's steps are at most ηπ/2,
    so its top coordinate settles into an oscillation of amplitude below ηπ/2 that neither grows
    nor decays."""
    lr, amplitudes = diagonal_run(1.5, 3000, theta0=1e-6)
    _, adam = diagonal_run(1.5, 3000, make=torch.optim.Adam, eps=0.0, theta0=1e-6)
    assert max(amplitudes) < lr * math.pi / 2
    assert min(max(amplitudes[i : i + 100]) for i in range(1000, 3000, 100)) > 0.1 * lr  # still oscillating
    assert max(adam) > 100 * max(amplitudes)


def test_monitor_reports_the_preconditioned_sharpness_against_38_over_eta():
    """The Monitor's threshold is c_w/η and its precond/lambda_max is λ_1(D^½HD^½), D from the state by hand."""
    lr, weight_decay = 0.01, 0.1
    model = cases.mlp(hidden=8, dtype=torch.float64)
    probe = [(x.double(), y) for x, y in cases.digits_probe(sizes=(60, 40))]
    optimizer = AdamAtan2(model.parameters(), lr=lr, weight_decay=weight_decay)
    monitor = ew.Monitor(model, optimizer, cases.cross_entropy, probe, curvature=2, every=1,
                         run_dir=False, tol=1e-10, max_hvps=400).attach()
    for _ in range(4):
        optimizer.zero_grad()
        cases.cross_entropy(model, probe[0]).backward()
        optimizer.step()
    latest = monitor.latest
    assert monitor.latest_step["curvature/precond/lambda_max"] == 4
    assert latest["curvature/threshold"] == pytest.approx(38 * (1 - lr * weight_decay / 2) / lr, rel=1e-12)

    beta1, beta2 = optimizer.param_groups[0]["betas"]
    v_hat = torch.cat([optimizer.state[p]["exp_avg_sq"].reshape(-1) for p in model.parameters()]) / (1 - beta2**4)
    scale = (1 / ((1 - beta1**4) * v_hat.sqrt())).nan_to_num(posinf=0.0)  # D, and 0 where v̂ = 0
    assert (scale == 0).any()  # digits has always-zero pixels: weights that never saw a gradient
    root = scale.sqrt()
    hessian = cases.dense_hessian(model, cases.cross_entropy, probe)
    expected = torch.linalg.eigvalsh(root[:, None] * hessian * root[None, :])[-1].item()
    assert latest["curvature/precond/lambda_max"] == pytest.approx(expected, rel=1e-6)
    ratio = lr * expected / (38 * (1 - lr * weight_decay / 2))
    assert latest["curvature/stability_ratio"] == pytest.approx(ratio, rel=1e-6)
