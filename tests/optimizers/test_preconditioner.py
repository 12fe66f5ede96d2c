"""The preconditioner each adapter reads is the one torch applies, and the preconditioned operator's
top eigenvalue is the dense λ_1(D^½(H + wI)D^½), with bias correction at steps 1, 2 and 100."""

from __future__ import annotations

import pytest
import torch

import cases
from edgewatch.curvature import HessianOperator, lanczos
from edgewatch.optimizers import adapter_for, preconditioned_operator, stability

OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.99)),
    "adam_coupled_wd": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
    "amsgrad": lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.8, 0.95), weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.001, alpha=0.9),
    "rmsprop_centered": lambda p: torch.optim.RMSprop(p, lr=0.001, alpha=0.9, centered=True, weight_decay=0.1),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1),
}


def reference_preconditioner(optimizer, param) -> torch.Tensor:
    """D from the papers' formulas, written independently of the adapters."""
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    state = optimizer.state[param]
    t = float(state["step"])
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        beta1, beta2 = group["betas"]
        v = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
        v_hat = v / (1 - beta2**t)
        return 1 / ((1 - beta1**t) * (v_hat.sqrt() + group["eps"]))  # P_t^-1, Cohen et al. 2022
    if isinstance(optimizer, torch.optim.RMSprop):
        v = state["square_avg"] - (state["grad_avg"] ** 2 if group["centered"] else 0)
        return 1 / (v.sqrt() + group["eps"])
    return 1 / (state["sum"].sqrt() + group["eps"])  # Adagrad


def train(optimizer_name: str, steps: int, dtype=torch.float64):
    model = cases.mlp(hidden=8, dtype=dtype)
    probe = cases.digits_probe(sizes=(64, 32))
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    for step in range(steps):
        x, y = probe[step % 2]
        optimizer.zero_grad()
        cases.cross_entropy(model, (x.to(dtype), y)).backward()
        optimizer.step()
    return model, probe, optimizer


@pytest.mark.parametrize("steps", [1, 2, 100])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_preconditioned_sharpness_matches_dense(name, steps):
    model, probe, optimizer = train(name, steps)
    op = HessianOperator(model, cases.cross_entropy, probe)
    preconditioned, info = preconditioned_operator(op, optimizer)
    ours = lanczos(preconditioned, k=1, tol=1e-11).eigenvalues[0].item()

    hessian = cases.dense_hessian(model, cases.cross_entropy, probe)
    d = torch.cat([reference_preconditioner(optimizer, p).reshape(-1) for p in model.parameters()])
    group = optimizer.param_groups[0]
    coupled = 0.0 if isinstance(optimizer, torch.optim.AdamW) else group["weight_decay"]
    shifted = hessian + coupled * torch.eye(len(d), dtype=torch.float64)
    dense = torch.linalg.eigvalsh(d.sqrt()[:, None] * shifted * d.sqrt()[None, :])[-1].item()
    assert ours == pytest.approx(dense, rel=1e-9)
    lr = adapter_for(optimizer).learning_rate(group, optimizer.state[next(model.parameters())])
    assert info.ratio(ours) == pytest.approx(lr * dense / info.stability_constant, rel=1e-9)


@pytest.mark.parametrize("steps", [1, 2, 100])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_adapter_preconditioner_is_the_one_torch_applied(name, steps):
    """The last update, rebuilt from the adapter's η and D, is the update torch made.

    Adam: Δθ = −η D m_t (− ηw θ for AdamW); RMSprop and Adagrad: Δθ = −η_t D (g + wθ).
    """
    model, probe, optimizer = train(name, steps - 1)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    x, y = probe[(steps - 1) % 2]
    cases.cross_entropy(model, (x.double(), y)).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer.step()
    adapter = adapter_for(optimizer)
    group = optimizer.param_groups[0]
    for p, p0, g in zip(model.parameters(), before, grads):
        state = optimizer.state[p]
        lr = adapter.learning_rate(group, state)
        d = adapter.preconditioner(group, state)
        assert torch.equal(d, d) and torch.allclose(d, reference_preconditioner(optimizer, p), rtol=1e-14, atol=0)
        if isinstance(optimizer, torch.optim.AdamW):
            expected = p0 * (1 - lr * group["weight_decay"]) - lr * d * state["exp_avg"]
        elif isinstance(optimizer, torch.optim.Adam):
            expected = p0 - lr * d * state["exp_avg"]
        else:
            expected = p0 - lr * d * (g + group["weight_decay"] * p0)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "make, variants",
    [
        (torch.optim.Adam, ({"foreach": False}, {"foreach": True}, {"fused": True})),
        (torch.optim.AdamW, ({"foreach": False}, {"foreach": True}, {"fused": True})),
        (torch.optim.RMSprop, ({"foreach": False}, {"foreach": True})),
        (torch.optim.Adagrad, ({"foreach": False}, {"foreach": True}, {"fused": True})),
    ],
    ids=["Adam", "AdamW", "RMSprop", "Adagrad"],
)
def test_foreach_and_fused_read_the_same_state(make, variants):
    scales = []
    for options in variants:
        model = cases.mlp(hidden=8)
        probe = cases.digits_probe(sizes=(64,))
        optimizer = make(model.parameters(), lr=0.01, **options)
        for _ in range(3):
            optimizer.zero_grad()
            cases.cross_entropy(model, probe[0]).backward()
            optimizer.step()
        op = HessianOperator(model, cases.cross_entropy, probe)
        scales.append(preconditioned_operator(op, optimizer)[0].scale)
    for scale in scales[1:]:
        torch.testing.assert_close(scale, scales[0], rtol=1e-5, atol=0)


def test_per_group_hyperparameters_are_reported_and_folded():
    model = cases.mlp(hidden=8, dtype=torch.float64)
    optimizer = torch.optim.Adam(
        [
            {"params": model[0].parameters()},
            {"params": model[2].parameters(), "lr": 0.005, "betas": (0.5, 0.99), "eps": 1e-3},
        ],
        lr=0.02,
    )
    probe = cases.digits_probe(sizes=(64,))
    optimizer.zero_grad()
    cases.cross_entropy(model, (probe[0][0].double(), probe[0][1])).backward()
    optimizer.step()
    info = stability(optimizer)
    assert info.lr == 0.02 and info.reference_group == 0
    assert [g.lr for g in info.groups] == [0.02, 0.005]
    assert [g.stability_constant for g in info.groups] == [38.0, 6.0]  # (2+2β1)/(1-β1) at 0.9 and 0.5
    assert info.threshold == pytest.approx(38.0 / 0.02)
    op = HessianOperator(model, cases.cross_entropy, probe)
    preconditioned, _ = preconditioned_operator(op, optimizer)
    slices = op.parameter_slices()
    d_last = adapter_for(optimizer).preconditioner(optimizer.param_groups[1], optimizer.state[model[2].weight])
    # second group: (η_g/η)(c/c_g) D_g = (0.005/0.02)(38/6) D_g
    torch.testing.assert_close(
        preconditioned.scale[slices["2.weight"]], (0.005 / 0.02) * (38 / 6) * d_last.reshape(-1), rtol=1e-12, atol=0
    )


def test_parameters_outside_the_optimizer_do_not_move():
    model = cases.mlp(hidden=8, dtype=torch.float64)
    optimizer = torch.optim.SGD(model[2].parameters(), lr=0.1)
    op = HessianOperator(model, cases.cross_entropy, cases.digits_probe(sizes=(32,)))
    preconditioned, _ = preconditioned_operator(op, optimizer)
    slices = op.parameter_slices()
    assert not preconditioned.scale[slices["0.weight"]].any()
    assert torch.all(preconditioned.scale[slices["2.weight"]] == 1.0)
