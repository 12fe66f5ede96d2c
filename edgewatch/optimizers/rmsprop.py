r"""RMSprop: the square-average preconditioner, centered or not, with optional momentum.

torch.optim.RMSprop keeps :math:`v \leftarrow αv + (1-α)g^2` (centered: also
:math:`\bar g \leftarrow α\bar g + (1-α)g` and uses :math:`v - \bar g^2`) and steps
:math:`θ \leftarrow θ - η\, g/(\sqrt{v} + ε)`, or with momentum μ
:math:`b \leftarrow μb + g/(\sqrt v + ε)`, :math:`θ \leftarrow θ - ηb`. With v held fixed:

.. math::
    D = \mathrm{diag}\big(1/(\sqrt{v} + ε)\big), \qquad c = 2 + 2μ,

the heavy-ball constant (μ = 0: plain preconditioned GD, 2/η). There is no bias correction.
Weight decay is coupled (H + wI).

References:
    Tieleman and Hinton 2012, Lecture 6.5, RMSProp, COURSERA: Neural Networks for Machine Learning.
    Graves 2013, Generating Sequences With Recurrent Neural Networks (the centered variant),
    https://arxiv.org/abs/1308.0850
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from edgewatch.optimizers._base import OptimizerAdapter, OptimizerStateError, exact

__all__ = ["RMSpropAdapter"]


class RMSpropAdapter(OptimizerAdapter):
    """torch.optim.RMSprop."""

    needs_state = True

    def stability_constant(self, group: dict[str, Any], lr: float) -> float:
        return float(2 + 2 * exact(group.get("momentum", 0.0)))

    def preconditioner(self, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        if "square_avg" not in state:
            raise OptimizerStateError(
                "RMSprop has taken no step yet, so it has no square average to precondition "
                "with; measure after the first optimizer.step()"
            )
        average = state["square_avg"]
        if group.get("centered", False):
            average = average - state["grad_avg"] ** 2
        return torch.reciprocal(average.sqrt() + group["eps"])

    def describe(self, group: dict[str, Any]) -> str:
        momentum = group.get("momentum", 0.0)
        return f"(2+2μ)/η, μ={momentum}" if momentum else "2/η"
