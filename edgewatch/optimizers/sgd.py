r"""SGD: gradient descent, heavy-ball and Nesterov momentum, dampening, coupled weight decay.

torch.optim.SGD with momentum β and dampening d keeps :math:`b \leftarrow βb + (1-d)g` and steps
:math:`θ \leftarrow θ - ηb` (Nesterov: :math:`θ \leftarrow θ - η(g + βb)`, d = 0). On
:math:`L = \tfrac12 θ^\top Aθ` the companion matrix of :math:`(b, θ)` has an eigenvalue at −1 exactly
when

=====================  ==========================  ===========================
update                 stable iff ηλ <             threshold on λ_1(H + wI)
=====================  ==========================  ===========================
GD (β = 0)             2                           2/η
heavy-ball β, d        (2 + 2β)/(1 − d)            (2 + 2β)/(η(1 − d))
Nesterov β, d          (2 + 2β)/(1 + 2β − βd)      (2 + 2β)/((1 + 2β)η) at d = 0
=====================  ==========================  ===========================

(Heavy-ball: :math:`z^2 - (1 + β - η'λ)z + β` with :math:`η' = η(1-d)` vanishes at −1 iff
:math:`η'λ = 2 + 2β`; Nesterov: :math:`z^2 - (1 + β - ηλ(1 + β - βd))z + β(1 - ηλ)` iff
:math:`ηλ(1 + 2β - βd) = 2 + 2β`.) D is the identity; coupled weight decay w adds wI to H.

References:
    Cohen, Kaur, Li, Kolter, Talwalkar 2021, Gradient Descent on Neural Networks Typically Occurs
    at the Edge of Stability, https://arxiv.org/abs/2103.00065 (GD and heavy-ball thresholds).
    Polyak 1964, Some methods of speeding up the convergence of iteration methods.
"""

from __future__ import annotations

from typing import Any

from edgewatch.optimizers._base import OptimizerAdapter, UnsupportedOptimizerError, exact

__all__ = ["SGDAdapter"]


class SGDAdapter(OptimizerAdapter):
    """torch.optim.SGD in all its forms.

    >>> import torch
    >>> p = [torch.nn.Parameter(torch.zeros(1))]
    >>> SGDAdapter().stability_constant(torch.optim.SGD(p, lr=0.1, momentum=0.9).param_groups[0], 0.1)
    3.8
    """

    def check_group(self, group: dict[str, Any]) -> None:
        super().check_group(group)
        beta, dampening = group.get("momentum", 0.0), group.get("dampening", 0.0)
        if not beta:
            return
        nesterov = group.get("nesterov", False)
        if (nesterov and 1 + 2 * beta - beta * dampening <= 0) or (not nesterov and dampening >= 1):
            raise UnsupportedOptimizerError(
                f"SGD with momentum={beta}, dampening={dampening}"
                f"{', nesterov' if nesterov else ''}: the gradient enters the step with a weight "
                "<= 0, so there is no descent step to be stable or not; use dampening < 1"
            )

    def stability_constant(self, group: dict[str, Any], lr: float) -> float:
        beta, dampening = exact(group.get("momentum", 0.0)), exact(group.get("dampening", 0.0))
        if beta == 0:
            return 2.0
        if group.get("nesterov", False):
            # torch refuses dampening with nesterov only in the constructor's defaults; a group
            # may still set it, and then the constant depends on it.
            return float((2 + 2 * beta) / (1 + 2 * beta - beta * dampening))
        return float((2 + 2 * beta) / (1 - dampening))

    def describe(self, group: dict[str, Any]) -> str:
        beta, dampening = group.get("momentum", 0.0), group.get("dampening", 0.0)
        if beta == 0:
            return "2/η"
        if group.get("nesterov", False):
            return f"(2+2β)/((1+2β-βd)η), β={beta}, d={dampening}" if dampening else f"(2+2β)/((1+2β)η), β={beta}"
        return f"(2+2β)/(η(1-d)), β={beta}, d={dampening}" if dampening else f"(2+2β)/η, β={beta}"
