r"""From a live optimizer to the stability threshold and the operator whose top eigenvalue meets it.

For one parameter group with step size η, stability constant c and preconditioner D, the step is
stable along the top eigendirection iff :math:`η\,λ_1(D^{1/2}(H + wI)D^{1/2}) < c`. The stability
ratio

.. math::
    r = \frac{η\, λ_1(D^{1/2} (H + W) D^{1/2})}{c}

is 1 at the edge of stability. Several groups (different η_g, c_g, w_g) are folded into one
operator against the reference group's η and c (the first group with η > 0):

.. math::
    S = \mathrm{diag}\Big(\frac{η_g}{η}\,\frac{c}{c_g}\, D_g\Big), \qquad
    r = \frac{η\, λ_1(S^{1/2}(H + W)S^{1/2})}{c},

exact at the edge for any mix of groups: the iteration acquires an eigenvalue −1 exactly when
:math:`\mathrm{diag}(η_i D_i / c_i)\,(H + W)\,θ = θ` has a solution, i.e. when r = 1 (a
coordinate's momentum rule enters the condition only through its :math:`c_i`).
Parameters of the operator that the optimizer does not update (not in it, or no state yet while
others have some) get S = 0: they do not move.

References:
    Cohen et al. 2021, https://arxiv.org/abs/2103.00065; Cohen et al. 2022,
    https://arxiv.org/abs/2207.14484.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from edgewatch.curvature.linear import LinearOperator
from edgewatch.curvature.operator import CurvatureOperator
from edgewatch.curvature.preconditioned import PreconditionedOperator
from edgewatch.curvature.sharding import local, sum_over_shards
from edgewatch.optimizers._base import OptimizerStateError
from edgewatch.optimizers.registry import adapter_for

__all__ = ["GroupStability", "Stability", "preconditioned_operator", "stability"]


@dataclass(frozen=True)
class GroupStability:
    """One parameter group: η (after schedulers), c, coupled weight decay, threshold c/η."""

    lr: float
    stability_constant: float
    weight_decay: float
    formula: str

    @property
    def threshold(self) -> float:
        return self.stability_constant / self.lr if self.lr > 0 else math.inf


@dataclass(frozen=True)
class Stability:
    """The optimizer's stability model: reference η and c, and each group's.

    Attributes:
        optimizer: the optimizer's class name.
        lr: the reference η (the first group with η > 0; 0 when no group moves).
        stability_constant: the reference c.
        reference_group: index of the reference group.
        groups: per-group values, in ``optimizer.param_groups`` order.
        preconditioned: whether D comes from optimizer state (adaptive methods).
    """

    optimizer: str
    lr: float
    stability_constant: float
    reference_group: int
    groups: tuple[GroupStability, ...]
    preconditioned: bool

    @property
    def threshold(self) -> float:
        """c/η: the edge of stability for the preconditioned sharpness (38/η for Adam, β1 = 0.9)."""
        return self.groups[self.reference_group].threshold

    def ratio(self, sharpness: float) -> float:
        """r = η λ / c for a (preconditioned) sharpness λ; 1.0 is the edge of stability."""
        return self.lr * sharpness / self.stability_constant if self.lr > 0 else 0.0


def stability(optimizer: torch.optim.Optimizer) -> Stability:
    """Read η, c and coupled weight decay of every group from the live optimizer.

    Example:
        >>> p = [torch.nn.Parameter(torch.zeros(2))]
        >>> s = stability(torch.optim.Adam(p, lr=0.01))
        >>> s.lr, s.stability_constant, round(s.threshold, 9)
        (0.01, 38.0, 3800.0)
    """
    adapter = adapter_for(optimizer)
    groups = []
    for group in optimizer.param_groups:
        adapter.check_group(group)
        lr = adapter.learning_rate(group, _latest_state(optimizer, group))
        groups.append(
            GroupStability(
                lr=lr,
                stability_constant=adapter.stability_constant(group, lr),
                weight_decay=adapter.coupled_weight_decay(group),
                formula=adapter.describe(group),
            )
        )
    reference = next((i for i, g in enumerate(groups) if g.lr > 0), 0)
    return Stability(
        optimizer=type(optimizer).__name__,
        lr=groups[reference].lr,
        stability_constant=groups[reference].stability_constant,
        reference_group=reference,
        groups=tuple(groups),
        preconditioned=adapter.needs_state,
    )


def _latest_state(optimizer: torch.optim.Optimizer, group: dict) -> dict:
    """The state of the group's most-stepped parameter (a frozen first one may lag behind)."""
    states = [optimizer.state.get(p, {}) for p in group["params"]]
    return max(states, key=lambda state: float(state.get("step", 0.0)), default={})


def preconditioned_operator(
    op: CurvatureOperator, optimizer: torch.optim.Optimizer
) -> tuple[PreconditionedOperator, Stability]:
    r"""The operator :math:`S^{1/2}(H + W)S^{1/2}` for ``op`` = H and the optimizer's current state.

    Its top eigenvalue (by :func:`~edgewatch.curvature.lanczos`) is the preconditioned sharpness,
    to compare with ``stability.threshold``; ``stability.ratio(λ)`` gives r. Build it again after
    optimizer steps: it captures D, η and c as they are now.

    Raises:
        OptimizerStateError: an adaptive optimizer has taken no step yet.
        ValueError: the optimizer updates none of the operator's parameters.
        UnsupportedOptimizerError: no adapter for the optimizer (or an option such as maximize).
    """
    info = stability(optimizer)
    adapter = adapter_for(optimizer)
    owner = {id(p): index for index, group in enumerate(optimizer.param_groups) for p in group["params"]}
    named = dict(op.model.named_parameters())
    scales, shifts, missing_state = [], [], None
    for name in op.param_names:
        param = named[name]
        numel = local(param).numel()  # this rank's part under FSDP2, as the operator's vectors
        index = owner.get(id(param))
        d = None
        if index is not None:
            group, group_info = optimizer.param_groups[index], info.groups[index]
            state = optimizer.state.get(param, {})
            try:
                d = adapter.preconditioner(group, state)
            except OptimizerStateError as error:
                missing_state, index = error, None
        if index is None:  # not optimized, or never updated yet: it does not move
            scales.append(torch.zeros(numel, dtype=op.dtype, device=op.device))
            shifts.append(torch.zeros(numel, dtype=op.dtype, device=op.device))
            continue
        lr = adapter.learning_rate(group, state)
        c = group_info.stability_constant
        factor = (lr / info.lr if info.lr > 0 else 1.0) * (info.stability_constant / c if c > 0 else 0.0)
        d = torch.ones(numel, dtype=op.dtype, device=op.device) if d is None else local(d).reshape(-1).to(op.device, op.dtype)
        scales.append(factor * d)
        shifts.append(torch.full((numel,), group_info.weight_decay, dtype=op.dtype, device=op.device))
    scale, shift = torch.cat(scales), torch.cat(shifts)
    if not _any(op, scale):
        if missing_state is not None:
            raise missing_state
        raise ValueError(
            f"the optimizer ({info.optimizer}) updates none of the operator's parameters "
            f"({', '.join(op.param_names[:3])}, ...); build the optimizer from the same model"
        )
    return PreconditionedOperator(cast(LinearOperator, op), scale, shift if _any(op, shift) else None), info


def _any(op: CurvatureOperator, values: Tensor) -> bool:
    """Whether any entry is nonzero, on any rank when the vectors are sharded (the same answer on
    every rank: a rank may hold no entry of a small parameter)."""
    nonzero = (values != 0).sum().to(torch.float64).reshape(1)
    return bool(sum_over_shards(op, nonzero) > 0)
