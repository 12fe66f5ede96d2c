r"""Adam, AdamW and AMSGrad: the preconditioner :math:`P_t` and the 38/η threshold.

torch.optim.Adam steps :math:`θ \leftarrow θ - \frac{η}{1-β_1^t}\, m_t / (\sqrt{\hat v_t} + ε)` with
:math:`m_t` an EMA (weight :math:`1-β_1`) of gradients and :math:`\hat v_t = v_t/(1-β_2^t)`. Holding
:math:`v` fixed (Cohen et al. 2022) this is EMA momentum with the diagonal preconditioner

.. math::
    D_t = P_t^{-1}, \qquad P_t = (1 - β_1^t)\, \mathrm{diag}(\sqrt{\hat v_t} + ε),

and EMA momentum is heavy-ball with step :math:`η(1-β_1)`, so the update is stable along an
eigendirection of :math:`D^{1/2}HD^{1/2}` iff :math:`ηλ < c = (2 + 2β_1)/(1 - β_1)`: 38/η at
β_1 = 0.9. AMSGrad uses :math:`\max_{s \le t} v_s` for :math:`v_t`.

Weight decay. Adam's ``weight_decay`` is coupled (added to g before the moments): H becomes H + wI.
AdamW's (and Adam's with ``decoupled_weight_decay=True``) shrinks θ by :math:`(1 - ηw)` outside
the preconditioner;
on the quadratic the companion matrix :math:`z^2 - (β_1 + a - x)z + β_1 a`, with
:math:`a = 1 - ηw` and :math:`x = η(1-β_1)λ`, has a root at −1 iff :math:`x = (1+β_1)(1+a)`, so

.. math::
    c_w = \frac{(1+β_1)(2 - ηw)}{1 - β_1} = c\,(1 - ηw/2).

t is the optimizer's own step count, so D is exactly the preconditioner of the last step taken.

Which decay a group uses is read from its ``decoupled_weight_decay`` entry when it has one (torch
2.7 and later write it into every Adam and AdamW group). Older torch has no such entry: there
AdamW is its own class, not a subclass of Adam, and its groups say nothing about decoupling. So
the class decides the default: :class:`AdamWAdapter` (registered for ``torch.optim.AdamW``)
treats a group without the entry as decoupled, :class:`AdamAdapter` as coupled.

References:
    Kingma and Ba 2015, Adam: A Method for Stochastic Optimization, https://arxiv.org/abs/1412.6980
    Loshchilov and Hutter 2019, Decoupled Weight Decay Regularization, https://arxiv.org/abs/1711.05101
    Cohen et al. 2022, Adaptive Gradient Methods at the Edge of Stability,
    https://arxiv.org/abs/2207.14484 (section 3: preconditioned sharpness and the 38/η threshold).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from edgewatch.optimizers._base import OptimizerAdapter, OptimizerStateError, exact

__all__ = ["AdamAdapter", "AdamWAdapter"]


class AdamAdapter(OptimizerAdapter):
    """torch.optim.Adam and AdamW (also amsgrad, foreach and fused: they share one state layout).

    >>> import torch
    >>> p = [torch.nn.Parameter(torch.zeros(1))]
    >>> AdamAdapter().stability_constant(torch.optim.Adam(p, lr=1e-3).param_groups[0], 1e-3)
    38.0
    """

    needs_state = True

    #: Whether a group without a ``decoupled_weight_decay`` entry decays decoupled (AdamW) or not.
    decoupled_by_default: bool = False

    def decoupled(self, group: dict[str, Any]) -> bool:
        """True when the group's weight decay is AdamW's θ ← (1 − ηw)θ rather than g + wθ."""
        return bool(group.get("decoupled_weight_decay", self.decoupled_by_default))

    def stability_constant(self, group: dict[str, Any], lr: float) -> float:
        beta1 = exact(group["betas"][0])
        constant = (2 + 2 * beta1) / (1 - beta1)
        if self.decoupled(group):
            decay = exact(lr) * exact(group["weight_decay"])
            if decay >= 2:
                raise ValueError(
                    f"lr·weight_decay = {float(decay):g} >= 2: the decoupled decay θ ← (1 − ηw)θ "
                    "alone is unstable, whatever the curvature; lower lr or weight_decay"
                )
            constant *= 1 - decay / 2
        return float(constant)

    def coupled_weight_decay(self, group: dict[str, Any]) -> float:
        return 0.0 if self.decoupled(group) else float(group["weight_decay"])

    #: The optimizer's name in the error before its first step.
    optimizer_name = "Adam"

    def moments(self, group: dict[str, Any], state: dict[str, Any]) -> tuple[float, float, Tensor]:
        """The bias corrections 1 − β₁^t and 1 − β₂^t of the last step t, and the second moment v_t
        the step divided by (``max_exp_avg_sq`` under AMSGrad)."""
        if "step" not in state:
            raise OptimizerStateError(
                f"{self.optimizer_name} has taken no step yet, so it has no second-moment estimate to precondition "
                "with; measure after the first optimizer.step()"
            )
        beta1, beta2 = group["betas"]
        step = float(state["step"])
        second_moment = state["max_exp_avg_sq"] if group.get("amsgrad", False) else state["exp_avg_sq"]
        return 1 - beta1**step, 1 - beta2**step, second_moment

    def preconditioner(self, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        bias_correction1, bias_correction2, second_moment = self.moments(group, state)
        # The same arithmetic as torch.optim.adam: sqrt(v)/sqrt(1 - β2^t) + ε.
        denominator = second_moment.sqrt() / (bias_correction2**0.5) + group["eps"]
        return torch.reciprocal(bias_correction1 * denominator)

    def describe(self, group: dict[str, Any]) -> str:
        beta1 = group["betas"][0]
        base = f"(2+2β1)/((1-β1)η), β1={beta1}"
        if self.decoupled(group) and group["weight_decay"]:
            return base + f" × (1-ηw/2), w={group['weight_decay']}"
        return base


class AdamWAdapter(AdamAdapter):
    """torch.optim.AdamW: Adam whose weight decay is decoupled unless a group says otherwise.

    The class, not only the group's flag, marks the decay as decoupled, because torch before 2.7
    builds AdamW groups without a ``decoupled_weight_decay`` entry:

    >>> import torch
    >>> p = [torch.nn.Parameter(torch.zeros(1))]
    >>> group = dict(torch.optim.AdamW(p, lr=0.1, weight_decay=0.5).param_groups[0])
    >>> _ = group.pop("decoupled_weight_decay", None)  # as torch before 2.7 builds it
    >>> AdamWAdapter().stability_constant(group, 0.1), AdamWAdapter().coupled_weight_decay(group)
    (37.05, 0.0)
    """

    decoupled_by_default = True
