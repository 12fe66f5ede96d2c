r"""Adam-atan2: Adam without ε, its preconditioner and its (2 + 2β_1)/(1 − β_1) threshold.

The update (Everett et al. 2024, with a = b = 1 as in their reference) replaces Adam's
:math:`\hat m/(\sqrt{\hat v} + ε)` by a bounded function of the same ratio:

.. math::
    θ \leftarrow (1 - ηw)\,θ, \qquad
    θ \leftarrow θ - η\, a \,\mathrm{atan2}\!\big(\hat m_t,\; b\sqrt{\hat v_t}\big),

with Adam's moments and bias corrections, :math:`\hat m_t = m_t/(1-β_1^t)`,
:math:`\hat v_t = v_t/(1-β_2^t)`, and AdamW's decoupled weight decay w. There is no ε: atan2 is
finite at :math:`\hat v = 0`, so the gradient scale never meets an ε floor.

Linearisation. For x > 0, atan2(y, x) = arctan(y/x) = y/x − (y/x)³/3 + …, so when
:math:`|\hat m| \ll b\sqrt{\hat v}` the step is

.. math::
    η\, \frac{a}{b}\, \frac{\hat m_t}{\sqrt{\hat v_t}} = η\, D_t\, m_t, \qquad
    D_t = \frac{a/b}{(1-β_1^t)\sqrt{\hat v_t}},

Adam's step with ε = 0 (times a/b), the factor :math:`1-β_1^t` absorbing the first moment's bias
correction exactly as in :class:`~edgewatch.optimizers.adam.AdamAdapter`. Holding v fixed, m is
EMA momentum, i.e. heavy-ball with step η(1 − β_1); along an eigendirection of
:math:`D^{1/2}HD^{1/2}` with eigenvalue λ, x = η(1 − β_1)λ and a = 1 − ηw, the companion matrix
:math:`z^2 - (β_1 + a - x)z + β_1 a` has a root at −1 iff x = (1 + β_1)(1 + a), so

.. math::
    c_w = \frac{(1+β_1)(2 - ηw)}{1 - β_1} = c\,(1 - ηw/2), \qquad c = \frac{2 + 2β_1}{1 - β_1}
    \;(38 \text{ at } β_1 = 0.9).

Where it holds. The linearisation needs :math:`|\hat m| \ll b\sqrt{\hat v}` per coordinate: at a
cubic relative error of :math:`(\hat m/b\sqrt{\hat v})^2/3`, 1% at a ratio of 0.17. That is the
regime near a minimum (and the one the threshold is about): the oscillation along the top
direction starts small against the gradient history kept in v. Beyond it the rule differs from Adam
in kind: the atan2 term of every step is at most :math:`ηaπ/2` per coordinate, so past the edge
the top-direction oscillation does not grow exponentially, as Adam's does until v catches up with
the larger gradients, but saturates: a bounded oscillation of amplitude O(ηa). The ratio r > 1
therefore predicts that oscillation starts, not that the loss blows up.

Coordinates with :math:`\hat v = 0` have had a zero gradient at every step; there D is infinite
and the step is a sign, not linear in the gradient. The adapter gives them D = 0, the limit of
:math:`D^{1/2}HD^{1/2}` when the Hessian's row vanishes there too, as it does for weights that
read an input which is always zero.

References:
    Everett, Xiao, Wortsman, Alemi, Novak, Liu, Gur, Sohl-Dickstein, Kaelbling, Lee, Pennington
    2024, Scaling Exponents Across Parameterizations and Optimizers, https://arxiv.org/abs/2407.05872
    Loshchilov and Hutter 2019, Decoupled Weight Decay Regularization, https://arxiv.org/abs/1711.05101
    Cohen et al. 2022, Adaptive Gradient Methods at the Edge of Stability,
    https://arxiv.org/abs/2207.14484 (the preconditioned sharpness with v held fixed).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from edgewatch.optimizers.adam import AdamAdapter

__all__ = ["AdamAtan2", "AdamAtan2Adapter"]


class AdamAtan2(torch.optim.Optimizer):
    r"""Adam-atan2 (Everett et al. 2024): θ ← θ(1 − ηw) − η·a·atan2(m̂, b·√v̂), no ε.

    Moments and bias corrections are Adam's; the weight decay w is decoupled, as in AdamW. The
    state layout (``step``, ``exp_avg``, ``exp_avg_sq``) is torch.optim.Adam's.

    >>> import torch
    >>> p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> opt = AdamAtan2([p], lr=0.1)
    >>> p.grad = torch.tensor([1e-12, 3.0])  # the first step is ±π/4, whatever the gradient's scale
    >>> opt.step()
    >>> torch.allclose(p.detach(), torch.tensor([1.0, -2.0]) - 0.1 * torch.pi / 4)
    True
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        a: float = 1.0,
        b: float = 1.0,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"invalid learning rate: {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid betas: {betas}")
        if not weight_decay >= 0:
            raise ValueError(f"invalid weight_decay: {weight_decay}")
        if not (a > 0 and b > 0):
            raise ValueError(f"a and b must be positive, got a={a}, b={b}")
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay, "a": a, "b": b})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), weight_decay = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamAtan2 does not support sparse gradients")
                state = self.state[p]
                if not state:
                    # float32 step tensor and zeroed moments: torch.optim.Adam's layout, so tools
                    # that read Adam's state (and the adapter) read this one the same way.
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = float(state["step"])
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(p.grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                if weight_decay:
                    p.mul_(1 - lr * weight_decay)  # decoupled, before the step (AdamW's order)
                bias_correction1 = 1 - beta1**step
                bias_correction2 = 1 - beta2**step
                # √v̂ written as torch.optim.adam writes it, so the adapter's D is this step's.
                denominator = exp_avg_sq.sqrt() / math.sqrt(bias_correction2) * group["b"]
                p.add_(torch.atan2(exp_avg / bias_correction1, denominator), alpha=-lr * group["a"])
        return loss


class AdamAtan2Adapter(AdamAdapter):
    r"""AdamAtan2: Adam's threshold c = (2 + 2β_1)/(1 − β_1), decoupled decay, D without ε.

    >>> import torch
    >>> p = [torch.nn.Parameter(torch.zeros(1))]
    >>> group = AdamAtan2(p, lr=0.1, weight_decay=0.5).param_groups[0]
    >>> AdamAtan2Adapter().stability_constant(group, 0.1), AdamAtan2Adapter().coupled_weight_decay(group)
    (37.05, 0.0)
    """

    # AdamAtan2 groups have no decoupled_weight_decay entry: its decay is always AdamW's.
    decoupled_by_default = True

    optimizer_name = "AdamAtan2"

    def preconditioner(self, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        bias_correction1, bias_correction2, second_moment = self.moments(group, state)
        # √v̂ as this optimizer's step computes it (math.sqrt, not ** 0.5: they differ in the last bit).
        denominator = second_moment.sqrt() / math.sqrt(bias_correction2) * group["b"]
        scale = group["a"] / (bias_correction1 * denominator)
        # v̂ = 0: never a gradient there; D = 0 instead of ∞ (module docstring).
        return torch.where(denominator > 0, scale, torch.zeros_like(scale))

    def describe(self, group: dict[str, Any]) -> str:
        return "atan2: " + super().describe(group)
