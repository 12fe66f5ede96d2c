r"""Cheap per-step metrics: gradient, parameter and update norms, Adam's ε share, non-finite counts.

Gradients are read when autograd accumulates them (``register_post_accumulate_grad_hook``), so
the norm is the one *before* any clipping the loop applies between ``backward()`` and
``optimizer.step()``; with gradient accumulation the last accumulation wins, which is the full
gradient. Values stay on the device as 0-dim tensors; the Monitor moves them to the host in one
transfer per measured step.

Everett et al. 2024 point out that when :math:`\sqrt{\hat v} < ε` for many coordinates, Adam's ε
dominates its denominator and the update is plain SGD with step η/ε there.

References:
    Everett et al. 2024, Scaling Exponents Across Parameterizations and Optimizers,
    https://arxiv.org/abs/2407.05872
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor, nn

__all__ = ["GradientRecorder", "adam_epsilon_fraction", "module_of", "parameter_and_update_norms"]


def module_of(name: str) -> str:
    """The module path that owns parameter ``name`` ("" for parameters of the root)."""
    return name.rpartition(".")[0]


class GradientRecorder:
    """Squared norms and non-finite counts of each parameter's gradient, as autograd writes it."""

    def __init__(self, model: nn.Module, params: list[Tensor] | None = None) -> None:
        """Watch ``params`` (default: every trainable parameter of ``model``), named as in the model."""
        watched = {id(p) for p in params} if params is not None else None
        self._squares: dict[str, Tensor] = {}
        self._nonfinite: dict[str, Tensor] = {}
        self._handles = [
            p.register_post_accumulate_grad_hook(self._hook(name))
            for name, p in model.named_parameters()
            if p.requires_grad and (watched is None or id(p) in watched)
        ]

    def _hook(self, name: str):
        def record(param: Tensor) -> None:
            try:
                grad = param.grad.detach()
                if grad.is_sparse:
                    grad = grad.coalesce().values()
                self._squares[name] = grad.float().pow(2).sum()
                self._nonfinite[name] = (~torch.isfinite(grad)).sum()
            except Exception:  # noqa: BLE001 - a metric must never break the user's backward()
                self._squares.pop(name, None)

        return record

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def metrics(self) -> dict[str, Tensor]:
        """``grad/norm``, ``grad/norm/<module>`` and ``grad/nonfinite_count`` since the last call."""
        if not self._squares:
            return {}
        per_module: dict[str, Tensor] = defaultdict(lambda: torch.zeros((), device=next(iter(self._squares.values())).device))
        for name, square in self._squares.items():
            per_module[module_of(name)] = per_module[module_of(name)] + square
        total = torch.stack(list(self._squares.values())).sum()
        metrics = {"grad/norm": total.sqrt(), "grad/nonfinite_count": torch.stack(list(self._nonfinite.values())).sum().float()}
        metrics.update({f"grad/norm/{module or 'root'}": square.sqrt() for module, square in per_module.items()})
        self._squares, self._nonfinite = {}, {}
        return metrics


def parameter_and_update_norms(params: list[Tensor], previous: list[Tensor] | None) -> dict[str, Tensor]:
    """``param/norm``, and with the parameters before the step ``update/norm`` and ``update/ratio``."""
    param_norm = torch.stack([p.detach().float().pow(2).sum() for p in params]).sum().sqrt()
    metrics = {"param/norm": param_norm}
    if previous is not None:
        update = torch.stack([(p.detach() - q).float().pow(2).sum() for p, q in zip(params, previous)]).sum().sqrt()
        metrics["update/norm"] = update
        metrics["update/ratio"] = update / param_norm.clamp_min(torch.finfo(param_norm.dtype).tiny)
    return metrics


def adam_epsilon_fraction(optimizer: torch.optim.Optimizer) -> Tensor | None:
    r"""Share of coordinates where :math:`\sqrt{\hat v_t} < ε` (Adam and AdamW; None for others)."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return None
    below, total = [], 0
    for group in optimizer.param_groups:
        beta2, eps = group["betas"][1], group["eps"]
        states = [optimizer.state.get(p, {}) for p in group["params"]]
        states = [state for state in states if "exp_avg_sq" in state]
        if not states:
            continue
        # √(v/(1-β2^t)) < ε  ⇔  v < ε²(1-β2^t): no per-parameter copy; one step count per group.
        bound = eps**2 * (1 - beta2 ** float(states[0]["step"]))
        below += [(state["exp_avg_sq"] < bound).sum() for state in states]
        total += sum(state["exp_avg_sq"].numel() for state in states)
    return torch.stack(below).sum() / total if total else None
