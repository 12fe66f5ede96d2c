"""AdamW is decoupled by its class, not only by the ``decoupled_weight_decay`` group entry.

torch before 2.7 builds AdamW as its own class, with param groups that have no
``decoupled_weight_decay`` entry; torch 2.7 makes AdamW a subclass of Adam and writes the entry
into every group. Removing the entry from a real AdamW's groups reproduces the older layout: the
threshold c_w/η = 38(1 − ηw/2)/η, the coupled decay (none) and the preconditioned operator
D^½HD^½ (no wI shift) must not change.
"""

from __future__ import annotations

import pytest
import torch

import cases
from edgewatch.curvature import HessianOperator, lanczos
from edgewatch.optimizers import AdamAdapter, AdamWAdapter, adapter_for, preconditioned_operator, stability

LR, WEIGHT_DECAY = 0.01, 0.1


def trained(make_optimizer, steps: int = 3):
    model = cases.mlp(hidden=8, dtype=torch.float64)
    probe = [(x.double(), y) for x, y in cases.digits_probe(sizes=(48,))]
    optimizer = make_optimizer(model)
    for _ in range(steps):
        optimizer.zero_grad()
        cases.cross_entropy(model, probe[0]).backward()
        optimizer.step()
    return model, probe, optimizer


def measure(model, probe, optimizer):
    info = stability(optimizer)
    operator, _ = preconditioned_operator(HessianOperator(model, cases.cross_entropy, probe), optimizer)
    sharpness = lanczos(operator, k=1, tol=1e-11).eigenvalues[0].item()
    return info, operator, sharpness


def drop_flag(optimizer) -> None:
    """Param groups as torch < 2.7 builds them for AdamW: no ``decoupled_weight_decay`` entry."""
    for group in optimizer.param_groups:
        group.pop("decoupled_weight_decay", None)
    assert all("decoupled_weight_decay" not in group for group in optimizer.param_groups)


def two_groups(model):
    first, *rest = model.parameters()
    return torch.optim.AdamW(
        [{"params": [first]}, {"params": rest, "lr": LR / 2, "weight_decay": 0.3}],
        lr=LR, weight_decay=WEIGHT_DECAY, betas=(0.8, 0.95),
    )


@pytest.mark.parametrize(
    "make_optimizer",
    [lambda m: torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=WEIGHT_DECAY), two_groups],
    ids=["one_group", "two_groups"],
)
def test_adamw_without_the_flag_keeps_threshold_and_operator(make_optimizer):
    model, probe, optimizer = trained(make_optimizer)
    assert isinstance(adapter_for(optimizer), AdamWAdapter)
    with_flag, operator_with, sharpness_with = measure(model, probe, optimizer)

    drop_flag(optimizer)
    without_flag, operator_without, sharpness_without = measure(model, probe, optimizer)

    assert without_flag == with_flag  # η, c_w, coupled decay and formula of every group
    assert all(group.weight_decay == 0.0 for group in without_flag.groups)  # decoupled: no wI in H
    assert operator_without.shift is None and operator_with.shift is None
    assert torch.equal(operator_without.scale, operator_with.scale)
    assert sharpness_without == pytest.approx(sharpness_with, rel=1e-12)


def test_adamw_without_the_flag_has_the_decoupled_threshold():
    """c_w = (2 + 2β1)/(1 − β1) · (1 − ηw/2), written out: 38 · (1 − 0.0005) at η = 0.01, w = 0.1."""
    model, probe, optimizer = trained(lambda m: torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=WEIGHT_DECAY))
    drop_flag(optimizer)
    info = stability(optimizer)
    assert info.stability_constant == pytest.approx(38 * (1 - LR * WEIGHT_DECAY / 2), rel=1e-15)
    assert info.threshold == pytest.approx(38 * (1 - LR * WEIGHT_DECAY / 2) / LR, rel=1e-15)
    assert "(1-ηw/2)" in info.groups[0].formula


def test_adam_without_the_flag_stays_coupled():
    """Plain Adam (no entry on old torch, False on new) adds w to the gradient: H + wI, c = 38."""
    model, probe, optimizer = trained(lambda m: torch.optim.Adam(m.parameters(), lr=LR, weight_decay=WEIGHT_DECAY))
    assert type(adapter_for(optimizer)) is AdamAdapter
    with_flag = stability(optimizer)
    drop_flag(optimizer)
    without_flag = stability(optimizer)
    assert without_flag == with_flag
    assert without_flag.stability_constant == pytest.approx(38.0, rel=1e-15)
    assert without_flag.groups[0].weight_decay == WEIGHT_DECAY


def test_an_explicit_entry_still_wins_over_the_class():
    """A group that states its decay is read as stated, whichever class holds it."""
    group = dict(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR, weight_decay=WEIGHT_DECAY).param_groups[0])
    group["decoupled_weight_decay"] = False
    assert AdamWAdapter().coupled_weight_decay(group) == WEIGHT_DECAY
    assert AdamWAdapter().stability_constant(group, LR) == pytest.approx(38.0, rel=1e-15)
    group["decoupled_weight_decay"] = True
    assert AdamAdapter().coupled_weight_decay(group) == 0.0
