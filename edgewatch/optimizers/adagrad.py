r"""Adagrad: the accumulated-squares preconditioner and the decayed step size.

torch.optim.Adagrad keeps :math:`G \leftarrow G + g^2` (from ``initial_accumulator_value``) and at its
t-th step moves :math:`θ \leftarrow θ - η_t\, g/(\sqrt{G} + ε)` with
:math:`η_t = η / (1 + (t-1)\,\text{lr\_decay})`. With G held fixed this is preconditioned GD:

.. math::
    D = \mathrm{diag}\big(1/(\sqrt{G} + ε)\big), \qquad c = 2, \qquad \text{threshold } 2/η_t,

with t the optimizer's own step count (the step size of the last step taken). Weight decay is
coupled (H + wI).

References:
    Duchi, Hazan, Singer 2011, Adaptive Subgradient Methods for Online Learning and Stochastic
    Optimization, https://jmlr.org/papers/v12/duchi11a.html
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from edgewatch.optimizers._base import OptimizerAdapter, OptimizerStateError

__all__ = ["AdagradAdapter"]


class AdagradAdapter(OptimizerAdapter):
    """torch.optim.Adagrad."""

    needs_state = True

    def learning_rate(self, group: dict[str, Any], state: dict[str, Any]) -> float:
        lr = float(group["lr"])
        decay = float(group.get("lr_decay", 0.0))
        if not decay:
            return lr
        step = max(float(state.get("step", 0.0)), 1.0)  # before any step: the first step's η
        return lr / (1 + (step - 1) * decay)

    def preconditioner(self, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        if "sum" not in state:
            raise OptimizerStateError(
                "Adagrad has no accumulator state for this parameter; build the optimizer from "
                "the model's parameters and measure after optimizer.step()"
            )
        if float(state["step"]) == 0:
            raise OptimizerStateError(
                "Adagrad has taken no step yet, so its accumulator holds only the initial value; "
                "measure after the first optimizer.step()"
            )
        return torch.reciprocal(state["sum"].sqrt() + group["eps"])

    def describe(self, group: dict[str, Any]) -> str:
        return "2/η_t, η_t = η/(1+(t-1)·lr_decay)" if group.get("lr_decay", 0.0) else "2/η"
