"""Every threshold is an experimental fact: at r = 0.97 the real optimizer stays bounded on a
quadratic, at r = 1.03 it diverges along the top eigendirection (:mod:`edgewatch.optimizers.stability`).

For each row of the table, L(θ) = ½ θᵀAθ with a known spectrum, the real torch.optim optimizer with
its preconditioner held fixed (state pre-filled, β2 or α so close to 1 that it cannot move within
the test), and the learning rate chosen so that edgewatch reports r = 0.97 or 1.03.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from edgewatch.curvature import HessianOperator, lanczos
from edgewatch.optimizers import AdamAtan2, OptimizerAdapter, preconditioned_operator, register_adapter

FROZEN = 1 - 1e-10  # β2 / α: the second moment moves by 1e-10 of itself per step
SPECTRUM = torch.tensor([10.0, 6.0, 3.0, 1.0, 0.5, 0.2], dtype=torch.float64)
STEPS = 400


class Quadratic(nn.Module):
    """L(θ) = ½ θᵀAθ with θ split into parameters of the given sizes (for several groups)."""

    def __init__(self, a: torch.Tensor, sizes=(6,), seed: int = 0):
        super().__init__()
        self.register_buffer("a", a)
        theta = 1e-9 * torch.randn(a.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        self.parts = nn.ParameterList(nn.Parameter(chunk.clone()) for chunk in theta.split(list(sizes)))

    def theta(self) -> torch.Tensor:
        return torch.cat(list(self.parts))

    def forward(self) -> torch.Tensor:
        theta = self.theta()
        return 0.5 * theta @ self.a @ theta


def rotated(spectrum: torch.Tensor, seed: int = 1) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(spectrum), len(spectrum), dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q @ torch.diag(spectrum) @ q.T


def quadratic_loss(model: nn.Module, batch) -> torch.Tensor:
    return model()


def prefill(optimizer: torch.optim.Optimizer, model: Quadratic) -> None:
    """Take one real step to create the state, then pin it: a fixed, non-trivial preconditioner."""
    start = [p.detach().clone() for p in model.parts]
    optimizer.zero_grad()
    model().backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(2)
    for p, p0 in zip(model.parts, start):
        state = optimizer.state[p]
        second_moment = 0.25 + 4 * torch.rand(p.shape, dtype=torch.float64, generator=generator)  # D spans 16x
        for key in ("exp_avg", "momentum_buffer", "grad_avg"):
            if key in state and state[key] is not None:
                state[key].zero_()
        if "grad_avg" in state:  # centered RMSprop: a mean gradient below the square average
            state["grad_avg"].copy_(0.5 * second_moment.sqrt())
        for key in ("exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum"):
            if key in state:
                state[key].copy_(second_moment)
        if "step" in state:  # far past bias correction: β^t = 0 in float64
            state["step"].fill_(1e12)
        with torch.no_grad():
            p.copy_(p0)
        p.grad = None


def measured_ratio(model, optimizer) -> tuple[float, torch.Tensor, torch.Tensor]:
    """edgewatch's r, the scale S of its preconditioned operator, and the top eigenvector of it."""
    op = HessianOperator(model, quadratic_loss, [torch.zeros(1)], method="double_backward")
    preconditioned, info = preconditioned_operator(op, optimizer)
    result = lanczos(preconditioned, k=1, tol=1e-12)
    assert result.converged
    return info.ratio(result.eigenvalues[0].item()), preconditioned.scale, result.eigenvectors[:, 0]


def set_ratio(model, optimizer, target: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale every group's lr (keeping their ratios) until edgewatch reports r = target."""
    for _ in range(60):  # r is linear in η except through AdamW's c(1 - ηw/2): a fixed point
        r, scale, top = measured_ratio(model, optimizer)
        if abs(r - target) < 1e-12:
            return scale, top
        for group in optimizer.param_groups:  # damped: AdamW's c(η) makes the plain step overshoot
            group["lr"] *= (target / r) ** 0.5
    raise AssertionError(f"could not set r = {target}, at {r}")


def top_mode_growth(model, optimizer, scale, top, steps=STEPS) -> tuple[float, float]:
    """Growth of θ's top-mode amplitude |u₁ᵀ S^-½ θ| and the final alignment with that mode.

    Stops once the amplitude has grown 10⁴-fold: by then a diverging run has shown it, and θ is
    still so small (θ₀ ~ 1e-9) that the gradients cannot move the frozen second moments.
    """
    root = scale.sqrt()
    start = (top @ (model.theta().detach() / root)).abs().item()
    for _ in range(steps):
        optimizer.zero_grad()
        model().backward()
        optimizer.step()
        phi = model.theta().detach() / root
        if (top @ phi).abs().item() > 1e4 * start:
            break
    return (top @ phi).abs().item() / start, ((top @ phi).abs() / phi.norm()).item()


@dataclass
class Row:
    """One row of the threshold table: how to build the optimizer, and its c at the final η."""

    name: str
    make: callable
    sizes: tuple = (6,)
    a: torch.Tensor = field(default_factory=lambda: rotated(SPECTRUM))


def _groups(model, **per_group):
    """Two parameter groups: the second with half the learning rate and its own options."""
    first, second = model.parts
    return [{"params": [first]}, {"params": [second], **per_group}]


BLOCK_DIAGONAL = torch.block_diag(rotated(SPECTRUM[:3], seed=3), rotated(SPECTRUM[3:] * 8, seed=4))

ROWS = [
    Row("gd", lambda m: torch.optim.SGD(m.parameters(), lr=0.1)),
    Row("gd+coupled_wd", lambda m: torch.optim.SGD(m.parameters(), lr=0.1, weight_decay=2.0)),
    Row("heavy_ball", lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)),
    Row("heavy_ball+dampening", lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, dampening=0.5)),
    Row("nesterov", lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True)),
    Row("adam", lambda m: torch.optim.Adam(m.parameters(), lr=0.1, betas=(0.9, FROZEN))),
    Row("adam_beta1_0.5", lambda m: torch.optim.Adam(m.parameters(), lr=0.1, betas=(0.5, FROZEN), eps=1e-3)),
    Row("adam+coupled_wd", lambda m: torch.optim.Adam(m.parameters(), lr=0.1, betas=(0.9, FROZEN), weight_decay=3.0)),
    Row("adamw", lambda m: torch.optim.AdamW(m.parameters(), lr=0.1, betas=(0.9, FROZEN), weight_decay=0.05)),
    Row("adam_decoupled_flag", lambda m: torch.optim.Adam(m.parameters(), lr=0.1, betas=(0.9, FROZEN), weight_decay=0.05, decoupled_weight_decay=True)),
    Row("amsgrad", lambda m: torch.optim.Adam(m.parameters(), lr=0.1, betas=(0.9, FROZEN), amsgrad=True)),
    Row("adam_foreach", lambda m: torch.optim.Adam(m.parameters(), lr=0.1, betas=(0.9, FROZEN), foreach=True)),
    # θ ≤ 1e-5 (θ₀ ~ 1e-9, at most 10⁴-fold) against √v̂ ≥ 0.5: atan2 stays linear, so Adam's rule holds.
    Row("adam_atan2", lambda m: AdamAtan2(m.parameters(), lr=0.1, betas=(0.9, FROZEN))),
    Row("adam_atan2+wd", lambda m: AdamAtan2(m.parameters(), lr=0.1, betas=(0.9, FROZEN), weight_decay=0.05)),
    Row("rmsprop", lambda m: torch.optim.RMSprop(m.parameters(), lr=0.1, alpha=FROZEN)),
    Row("rmsprop_centered", lambda m: torch.optim.RMSprop(m.parameters(), lr=0.1, alpha=FROZEN, centered=True)),
    Row("rmsprop_momentum", lambda m: torch.optim.RMSprop(m.parameters(), lr=0.1, alpha=FROZEN, momentum=0.9)),
    Row("adagrad", lambda m: torch.optim.Adagrad(m.parameters(), lr=0.1)),
    Row("adagrad+coupled_wd", lambda m: torch.optim.Adagrad(m.parameters(), lr=0.1, weight_decay=1.0)),
    Row("sgd_two_groups", lambda m: torch.optim.SGD(_groups(m, lr=0.05), lr=0.1, momentum=0.9), sizes=(3, 3)),
    Row("adam_two_groups", lambda m: torch.optim.Adam(_groups(m, lr=0.05, eps=1e-2), lr=0.1, betas=(0.9, FROZEN)), sizes=(3, 3)),
    Row("adam_groups_betas_wd", lambda m: torch.optim.Adam(_groups(m, lr=0.05, betas=(0.5, FROZEN), weight_decay=1.0), lr=0.1, betas=(0.9, FROZEN)), sizes=(3, 3)),
    Row("nesterov_dampening_group", lambda m: torch.optim.SGD(_groups(m, dampening=0.5, momentum=0.9, nesterov=True), lr=0.1, momentum=0.9, nesterov=True), sizes=(3, 3)),
    # Groups with different momentum (so different c), on decoupled blocks and on a coupled matrix:
    Row("sgd_mixed_momentum", lambda m: torch.optim.SGD(_groups(m, lr=0.05, momentum=0.0), lr=0.1, momentum=0.9),
        sizes=(3, 3), a=BLOCK_DIAGONAL),
    Row("sgd_mixed_momentum_coupled", lambda m: torch.optim.SGD(_groups(m, lr=0.05, momentum=0.0), lr=0.1, momentum=0.9),
        sizes=(3, 3)),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_below_threshold_stays_bounded_above_it_diverges_along_the_top_direction(row):
    outcomes = {}
    for target in (0.97, 1.03):
        model = Quadratic(row.a, row.sizes)
        optimizer = row.make(model)
        prefill(optimizer, model)
        scale, top = set_ratio(model, optimizer, target)
        outcomes[target] = top_mode_growth(model, optimizer, scale, top)
    (stable_growth, _), (unstable_growth, alignment) = outcomes[0.97], outcomes[1.03]
    assert stable_growth < 1.0, f"r = 0.97 grew by {stable_growth:.3g}"
    assert unstable_growth > 1e3, f"r = 1.03 grew only by {unstable_growth:.3g}"
    assert alignment > 0.999, f"divergence not along the top eigendirection (cos {alignment:.4f})"


class DiagonalGD(torch.optim.Optimizer):
    """A user's optimizer: θ ← θ − η D g with a fixed diagonal D kept in state["scale"]."""

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if "scale" not in state:
                    state["scale"] = 0.25 + torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape)
                p.add_(state["scale"] * p.grad, alpha=-group["lr"])


def test_a_registered_custom_optimizer_gets_its_threshold_checked_the_same_way():
    class DiagonalGDAdapter(OptimizerAdapter):
        needs_state = True

        def preconditioner(self, group, state):
            return state["scale"]

    register_adapter(DiagonalGD, DiagonalGDAdapter())
    growth = {}
    for target in (0.97, 1.03):
        model = Quadratic(rotated(SPECTRUM))
        optimizer = DiagonalGD(model.parameters(), lr=0.01)
        optimizer.zero_grad()
        model().backward()
        optimizer.step()  # creates the state
        scale, top = set_ratio(model, optimizer, target)
        growth[target] = top_mode_growth(model, optimizer, scale, top)[0]
    assert growth[0.97] < 1.0 < 1e3 < growth[1.03]
