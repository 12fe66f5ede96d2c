r"""The curvature probe: sharpness, preconditioned sharpness against its threshold, and friends.

On the fixed probe set, at the current θ: the top-k Hessian eigenvalues (Lanczos, warm-started
from the previous probe's Ritz vectors), the preconditioned sharpness
:math:`λ_1(S^{1/2}(H+W)S^{1/2})` with its threshold and the stability ratio r (DESIGN.md section 3),
the directional sharpness :math:`g^\top Hg / g^\top g`, the share of the gradient in the top-k
eigenspace :math:`\|V_k^\top g\|^2/\|g\|^2` (Gur-Ari et al. 2018), and where the top eigenvector
lives (its energy per module); and, from the same forward passes, the output and attention
logits (:mod:`~edgewatch.hooks.probes.logits`). All solves of one probe share one gradient graph.

Under ``torch.distributed`` each rank passes its own probe shard; every product and the gradient
are all-reduced (:mod:`edgewatch.distributed`) and the logit statistics gathered once, so every
rank computes the same numbers, those of the union of the shards. A probe that fails on one rank
fails on every rank at the same point, so none is left waiting in a collective.

References:
    Gur-Ari, Roberts, Dyer 2018, Gradient Descent Happens in a Tiny Subspace, https://arxiv.org/abs/1812.04754
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from edgewatch.curvature import HessianOperator, lanczos
from edgewatch.distributed import GroupSpec
from edgewatch.hooks.probes.grads import module_of
from edgewatch.hooks.probes.logits import LogitRecorder
from edgewatch.optimizers import OptimizerStateError, preconditioned_operator

__all__ = ["CurvatureProbe"]


class CurvatureProbe:
    """Measures curvature of ``loss_fn`` on ``probe`` over the parameters ``optimizer`` updates.

    Args:
        k: how many top eigenvalues of H to report.
        tol, max_hvps: Lanczos tolerance and HVP budget per solve.
        method, seed, train, process_group: see :class:`~edgewatch.curvature.HessianOperator`.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Any,
        probe: Iterable[Any],
        *,
        k: int = 1,
        tol: float = 1e-3,
        max_hvps: int = 100,
        method: str = "auto",
        seed: int = 0,
        train: bool | None = True,
        process_group: GroupSpec = None,
    ) -> None:
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        # Tensors, not names: a DDP or compiled wrapper names them differently from the module inside.
        params = [p for p in model.parameters() if id(p) in optimized and p.requires_grad]
        self.hessian = HessianOperator(
            model, loss_fn, probe, params=params, method=method, seed=seed, train=train, process_group=process_group
        )
        self.optimizer = optimizer
        self.k = min(k, self.hessian.size)
        self.tol, self.max_hvps = tol, max_hvps
        self.vectors: Tensor | None = None  # warm start for H
        self.preconditioned_vectors: Tensor | None = None  # warm start for S^½(H+W)S^½
        self._slices = self.hessian.parameter_slices()
        self.logits = LogitRecorder(self.hessian.model)

    def measure(self) -> dict[str, Tensor | float]:
        """One probe: every curvature metric, keyed by DESIGN.md section 6 names."""
        metrics: dict[str, Tensor | float] = {}
        with self.hessian:  # one gradient graph for every product below
            with self.logits.recording():  # the probe's forward passes also show its logits
                loss, gradient = self.hessian.loss_and_gradient()
            metrics.update(self.logits.metrics(self.hessian.process_group))
            metrics["curvature/probe_loss"] = loss
            top = lanczos(self.hessian, k=self.k, tol=self.tol, max_hvps=self.max_hvps, v0=_finite(self.vectors))
            self.vectors = top.eigenvectors if top.converged else None
            metrics.update(_eigen_metrics("curvature", top))
            for i, value in enumerate(top.eigenvalues.tolist()[1:], start=2):
                metrics[f"curvature/lambda_{i}"] = value
            metrics.update(self._gradient_metrics(gradient, top.eigenvectors))
            metrics.update(self._energy_share(top.eigenvectors[:, 0]))
            metrics.update(self._preconditioned(top))
        return metrics

    def _gradient_metrics(self, gradient: Tensor, vectors: Tensor) -> dict[str, Tensor]:
        squared = gradient.dot(gradient)
        tiny = torch.finfo(squared.dtype).tiny
        directional = gradient.dot(self.hessian(gradient)) / squared.clamp_min(tiny)
        overlap = (vectors.T @ gradient).pow(2).sum() / squared.clamp_min(tiny)
        return {
            "curvature/directional_sharpness": directional,
            "curvature/gradient_overlap": overlap,
            "grad/probe_norm": squared.sqrt(),
        }

    def _energy_share(self, vector: Tensor) -> dict[str, Tensor]:
        """Which modules carry the sharpest direction: Σ v_i² over each module's coordinates."""
        shares: dict[str, Tensor] = defaultdict(lambda: torch.zeros((), dtype=vector.dtype, device=vector.device))
        for name, where in self._slices.items():
            shares[module_of(name)] = shares[module_of(name)] + vector[where].pow(2).sum()
        return {f"curvature/top_energy/{module or 'root'}": share for module, share in shares.items()}

    def _preconditioned(self, top) -> dict[str, Tensor | float]:
        try:
            operator, info = preconditioned_operator(self.hessian, self.optimizer)
        except OptimizerStateError:  # adaptive optimizer before its first step: nothing to read
            return {}
        # The threshold is c/η for the reference η (the first group that moves), stated beside it.
        metrics: dict[str, Tensor | float] = {"curvature/threshold": info.threshold, "curvature/reference_lr": info.lr}
        if operator.shift is None and bool((operator.scale == 1).all()):
            sharpness, result = top.eigenvalues[0].item(), top  # S = I: the same operator
        else:
            result = lanczos(operator, k=1, tol=self.tol, max_hvps=self.max_hvps, v0=_finite(self.preconditioned_vectors))
            self.preconditioned_vectors = result.eigenvectors if result.converged else None
            sharpness = result.eigenvalues[0].item()
            metrics.update(_eigen_metrics("curvature/precond", result, value=False))
        metrics["curvature/precond_lambda_max"] = sharpness
        metrics["curvature/stability_ratio"] = info.ratio(sharpness)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"vectors": self.vectors, "preconditioned_vectors": self.preconditioned_vectors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore warm starts; vectors of another size (a changed model) are dropped."""
        self.vectors = self._usable(state.get("vectors"))
        self.preconditioned_vectors = self._usable(state.get("preconditioned_vectors"))

    def _usable(self, vectors: Tensor | None) -> Tensor | None:
        if not isinstance(vectors, Tensor) or vectors.ndim != 2 or vectors.shape[0] != self.hessian.size:
            return None
        return vectors.to(device=self.hessian.device, dtype=self.hessian.dtype)


def _eigen_metrics(prefix: str, result, value: bool = True) -> dict[str, float]:
    metrics = {
        f"{prefix}/lambda_max_residual": result.residuals[0].item(),  # |λ_1 − θ_1| ≤ this
        f"{prefix}/hvps": float(result.num_hvps),
        f"{prefix}/converged": float(result.converged),
    }
    if value:
        metrics[f"{prefix}/lambda_max"] = result.eigenvalues[0].item()
    return metrics


def _finite(vectors: Tensor | None) -> Tensor | None:
    return vectors if vectors is not None and bool(torch.isfinite(vectors).all()) else None
