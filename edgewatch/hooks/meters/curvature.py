r"""The curvature probe: sharpness, preconditioned sharpness against its threshold, and friends.

On the fixed probe set, at the current θ: the top-k Hessian eigenvalues (Lanczos, warm-started
from the previous probe's Ritz vectors), the preconditioned sharpness
:math:`λ_1(S^{1/2}(H+W)S^{1/2})` with its threshold and the stability ratio r (:mod:`edgewatch.optimizers.stability`),
the directional sharpness :math:`g^\top Hg / g^\top g`, the share of the gradient in the top-k
eigenspace :math:`\|V_k^\top g\|^2/\|g\|^2` (Gur-Ari et al. 2018), and where the top eigenvector
lives (its energy per module); and, from the same forward passes, the output and attention
logits (:mod:`~edgewatch.hooks.meters.logits`). All solves of one probe share one gradient graph.

A probe is *full* (warm-started Lanczos to ``tol``, and everything above) or *streamed*: between
full solves the kept top eigenvector is refreshed with a few HVPs (:func:`~edgewatch.curvature.refine`:
Lanczos steps from it until the residual meets ``stream_tol``, at most ``stream_hvps``; one to three
while the top direction moves slowly), for H and for the preconditioned operator alike (the
preconditioner changes every step; the vector carries over). A streamed λ₁ is a Ritz value, so
never above λ₁, and its residual r bounds the distance to the nearest eigenvalue; it is
trustworthy when r ≤ ``stream_tol`` · λ₁ (5%: the error itself is of order r²/(λ₁ − λ₂), Parlett
1998, section 11.7, far smaller; the benchmark compares streamed points with full solves). An
untrustworthy refresh, or one that fell below ``1 - stream_drop`` of the last reported value (a
kept vector that lost the top direction shows as such a fall), escalates to a full solve
warm-started from the refreshed vector, on the spot, if the caller allows it (the Monitor does
when its budget can pay for one). A fall with a small residual that may not escalate is
reported as it is. An untrustworthy refresh that may not escalate is not reported at all: the
point then carries ``curvature/streamed`` 1 and ``curvature/converged`` 0 with the residual, but
no ``curvature/lambda_max`` (for the preconditioned operator: no ``curvature/precond/lambda_max``
and no stability ratio), so a value that may be far off never reaches a chart or a detector.
``curvature/streamed`` (and ``curvature/precond/streamed``) say which kind each λ₁ point is: 1.0
streamed, 0.0 full. Streamed points report λ₁, its residual,
the threshold and stability ratio, the probe loss, gradient norm and logits, but not λ₂…λ_k,
the directional sharpness, the gradient overlap or the top direction's modules (they need a
full solve).

An optimizer without a stability adapter (``torch.optim.LBFGS``, a Lion implementation, a user's
own ``Optimizer`` subclass), or with an option its adapter does not cover (``maximize=True``),
has no preconditioner D or stability constant c to read: everything above that needs neither
(λ₁…λ_k, the directional sharpness, the gradient overlap, the top direction's modules, the
logits) is measured as usual; the preconditioned sharpness, the threshold and the stability ratio
are skipped, with one warning per probe that names :func:`edgewatch.optimizers.register_adapter`.
An adapter registered later is used from the next probe on.

Under ``torch.distributed`` each rank passes its own probe shard; every product and the gradient
are all-reduced (:mod:`edgewatch.distributed`) and the logit statistics gathered once, so every
rank computes the same numbers, those of the union of the shards. Under DDP a probe that fails on
one rank fails on every rank at the same point, so none is left waiting in a collective. Under FSDP2
a failure inside the model's own sharded passes on one rank is not agreed: the others wait in FSDP's
collectives until the process group's timeout.

References:
    Gur-Ari, Roberts, Dyer 2018, Gradient Descent Happens in a Tiny Subspace, https://arxiv.org/abs/1812.04754
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import Tensor, nn

from edgewatch import names
from edgewatch.curvature import EigenResult, HessianOperator, lanczos, refine
from edgewatch.curvature.sharding import all_finite, inner, sum_over_shards
from edgewatch.distributed import GroupSpec
from edgewatch.hooks.config import CurvatureConfig
from edgewatch.hooks.meters.blocks import module_key
from edgewatch.hooks.meters.grads import module_of
from edgewatch.hooks.meters.logits import LogitRecorder
from edgewatch.hooks.validation import check_trainable
from edgewatch.optimizers import OptimizerStateError, UnsupportedOptimizerError, adapter_for, preconditioned_operator

__all__ = ["CurvatureMeter"]


class CurvatureMeter:
    """Measures curvature of ``loss_fn`` on the ``probe`` batches over the parameters ``optimizer``
    updates, as ``config`` says.

    Args:
        config: the solver's and the operator's settings (:class:`CurvatureConfig`).
        module_metrics: ``curvature/top_energy/<module>`` per block (``"blocks"``) or per leaf
            module (``"leaf"``): see :mod:`~edgewatch.hooks.meters.blocks`.
        process_group: see :class:`~edgewatch.curvature.HessianOperator`.

    Raises:
        ValueError: an optimizer that updates no parameter of the model, or only frozen ones.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Any,
        probe: Iterable[Any],
        config: CurvatureConfig | None = None,
        *,
        module_metrics: str = "blocks",
        process_group: GroupSpec = None,
    ) -> None:
        config = CurvatureConfig() if config is None else config
        check_trainable(model, optimizer)
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        # Tensors, not names: a DDP or compiled wrapper names them differently from the module inside.
        params = [p for p in model.parameters() if id(p) in optimized and p.requires_grad]
        self.hessian = HessianOperator(
            model, loss_fn, probe, params=params, method=config.method, seed=config.seed, train=config.train,
            process_group=process_group,
        )
        self.optimizer = optimizer
        self.config = config
        self.k = min(config.k, self.hessian.size)
        self.tol, self.max_hvps = config.tol, config.max_hvps
        self.stream_hvps, self.stream_tol, self.stream_drop = config.stream_hvps, config.stream_tol, config.stream_drop
        self.vectors: Tensor | None = None  # warm start for H
        self.preconditioned_vectors: Tensor | None = None  # warm start for S^½(H+W)S^½
        self._last: dict[str, float] = {}  # the last reported λ₁ of each operator, for the drop test
        self._warned_unadapted = False
        self._slices = self.hessian.parameter_slices()
        self._module_key = module_key(self.hessian.model, module_metrics)
        self.logits = LogitRecorder(self.hessian.model, skip=lambda: self.hessian.padding_pass)

    def measure(self, streamed: bool = False, escalate: bool = True) -> dict[str, Tensor | float]:
        """One probe: every curvature metric (``curvature/...``, ``grad/probe_norm``, logits);
        ``streamed`` refreshes the kept eigenvectors instead of solving, escalating to a full
        solve where the refresh is not trustworthy only if ``escalate``."""
        metrics: dict[str, Tensor | float] = {}
        with self.hessian:  # one gradient graph for every product below
            with self.logits.recording():  # the probe's forward passes also show its logits
                loss, gradient = self.hessian.loss_and_gradient()
            metrics.update(self.logits.metrics(self._ranks))
            metrics[names.PROBE_LOSS] = loss
            top, was_streamed = self._top(names.CURVATURE, self.hessian, self.k, self.vectors, streamed, escalate)
            if was_streamed:
                assert self.vectors is not None  # a point streams only from kept vectors
                self.vectors = torch.cat([top.eigenvectors, self.vectors[:, 1:]], dim=1)
            else:
                self.vectors = top.eigenvectors if top.converged else None
            trusted = top.converged or not was_streamed  # an unconverged full solve still reports its best
            metrics.update(_eigen_metrics(names.CURVATURE, top, value=trusted))
            metrics[names.STREAMED] = float(was_streamed)
            squared = inner(self.hessian, gradient, gradient)
            metrics[names.GRAD_PROBE_NORM] = squared.sqrt()
            if not was_streamed:
                for i, value in enumerate(top.eigenvalues.tolist()[1:], start=2):
                    metrics[names.family(names.LAMBDA_I, i=i)] = value
                metrics.update(self._gradient_metrics(gradient, squared, top.eigenvectors))
                metrics.update(self._energy_share(top.eigenvectors[:, 0]))
            metrics.update(self._preconditioned(top if trusted else None, streamed, escalate))
        return metrics

    def _top(self, name: str, op: Any, k: int, kept: Tensor | None, streamed: bool,
             escalate: bool = True, fallback: Tensor | None = None) -> tuple[EigenResult, bool]:
        """λ₁ (top-k when full) of ``op``: refreshed from ``kept`` (or, with none kept, from
        ``fallback``) when ``streamed`` and the refresh is trustworthy (or escalating is not
        allowed), else a full solve warm-started from the best vector at hand."""
        kept = _finite_vectors(op, kept)
        if kept is None and streamed:
            # No vector of this operator's yet (Adam's preconditioner appears after its first
            # step): a related one is a better start than a full solve the budget did not ask for.
            kept = _finite_vectors(op, fallback)
        start = kept
        hvps = 0
        if streamed and kept is not None:
            fresh = refine(op, kept, steps=self.stream_hvps, tol=self.stream_tol)
            value = fresh.eigenvalues[0].item()
            last = self._last.get(name)
            fell = last is not None and value < (1 - self.stream_drop) * last
            finite = all_finite(op, fresh.eigenvectors)
            if (fresh.converged and not fell) or (not escalate and finite):
                if fresh.converged:
                    self._last[name] = value
                return fresh, True
            hvps = fresh.num_hvps
            if finite:
                start = torch.cat([fresh.eigenvectors, kept[:, 1:]], dim=1)
        top = lanczos(op, k=k, tol=self.tol, max_hvps=self.max_hvps, v0=start)
        self._last[name] = top.eigenvalues[0].item()
        return top._replace(num_hvps=top.num_hvps + hvps), False

    def _gradient_metrics(self, gradient: Tensor, squared: Tensor, vectors: Tensor) -> dict[str, Tensor]:
        """gᵀHg/gᵀg (one HVP) and ‖V_kᵀg‖²/‖g‖², with ``squared`` = gᵀg."""
        tiny = torch.finfo(squared.dtype).tiny
        product = cast(Tensor, self.hessian(gradient))  # flat in, flat out
        directional = inner(self.hessian, gradient, product) / squared.clamp_min(tiny)
        overlap = inner(self.hessian, vectors.T, gradient).pow(2).sum() / squared.clamp_min(tiny)
        return {names.DIRECTIONAL_SHARPNESS: directional, names.GRADIENT_OVERLAP: overlap}

    def _energy_share(self, vector: Tensor) -> dict[str, Tensor]:
        """Which blocks (or leaf modules) carry the sharpest direction: Σ v_i² over their coordinates."""
        shares: dict[str, Tensor] = defaultdict(lambda: torch.zeros((), dtype=vector.dtype, device=vector.device))
        for name, where in self._slices.items():
            key = self._module_key(module_of(name))
            shares[key] = shares[key] + vector[where].pow(2).sum()
        if self.hessian.shard_group is not None:  # each rank summed its own part of every block
            summed = sum_over_shards(self.hessian, torch.stack(list(shares.values())))
            shares = dict(zip(shares, summed.unbind()))
        return {names.family(names.TOP_ENERGY, module=module): share for module, share in shares.items()}

    @property
    def _ranks(self) -> Any:
        """The ranks whose probe shards make up the probe (DDP's or FSDP2's), or None."""
        return self.hessian.shard_group if self.hessian.shard_group is not None else self.hessian.process_group

    def _preconditioned(self, top: EigenResult | None, streamed: bool, escalate: bool) -> dict[str, Tensor | float]:
        """The preconditioned sharpness against its threshold; ``top``: H's result, None when not
        reported (the same operator when the preconditioner is the identity)."""
        try:
            operator, info = preconditioned_operator(self.hessian, self.optimizer)
        except OptimizerStateError:  # adaptive optimizer before its first step: no preconditioner exists yet
            return {}
        except UnsupportedOptimizerError as error:  # no D or c to read: only this part is skipped
            self._warn_unadapted(error)
            return {}
        # The threshold is c/η for the reference η (the first group that moves), stated beside it.
        metrics: dict[str, Tensor | float] = {names.THRESHOLD: info.threshold, names.REFERENCE_LR: info.lr}
        # Agreed over the shards (FSDP2): a rank may hold no entry at all, and every rank must take the same branch.
        plain = (operator.scale != 1).any().double().reshape(1)
        if operator.shift is None and not bool(sum_over_shards(self.hessian, plain)):
            if top is None:
                return metrics
            sharpness = top.eigenvalues[0].item()  # S = I: the same operator
        else:
            result, was_streamed = self._top(names.PRECOND, operator, 1, self.preconditioned_vectors, streamed,
                                             escalate, fallback=None if self.vectors is None else self.vectors[:, :1])
            if was_streamed or result.converged:
                self.preconditioned_vectors = result.eigenvectors
            else:
                self.preconditioned_vectors = None
            sharpness = result.eigenvalues[0].item()
            metrics.update(_eigen_metrics(names.PRECOND, result, value=False))
            metrics[names.PRECOND_STREAMED] = float(was_streamed)
            if was_streamed and not result.converged:
                return metrics
        metrics[names.PRECOND_LAMBDA_MAX] = sharpness
        metrics[names.STABILITY_RATIO] = info.ratio(sharpness)
        return metrics

    def _warn_unadapted(self, error: UnsupportedOptimizerError) -> None:
        """Once per probe: what is skipped, and how to get it (an adapter for the optimizer)."""
        if self._warned_unadapted:
            return
        self._warned_unadapted = True
        name = type(self.optimizer).__name__
        skipped = ("curvature/lambda_max and the rest of curvature are measured, but not the preconditioned "
                   "sharpness, its threshold or the stability ratio")
        try:
            adapter_for(self.optimizer)
        except UnsupportedOptimizerError:  # no adapter at all (not just an option it does not cover)
            reason = f"edgewatch has no stability adapter for {name}"
        else:
            reason = f"edgewatch cannot read {name}'s stability threshold ({error})"
        warnings.warn(
            f"{reason}: {skipped}; to add them, subclass edgewatch.optimizers.OptimizerAdapter and call "
            f"edgewatch.optimizers.register_adapter({name}, MyAdapter())", stacklevel=2,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"vectors": self.vectors, "preconditioned_vectors": self.preconditioned_vectors, "last": dict(self._last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore warm starts; vectors of another size (a changed model) are dropped."""
        self.vectors = self._kept_vectors(state.get("vectors"))
        self.preconditioned_vectors = self._kept_vectors(state.get("preconditioned_vectors"))
        self._last = {str(k): float(v) for k, v in state.get("last", {}).items()}

    def _kept_vectors(self, vectors: Tensor | None) -> Tensor | None:
        if not isinstance(vectors, Tensor) or vectors.ndim != 2 or vectors.shape[0] != self.hessian.local_size:
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


def _finite_vectors(op: Any, vectors: Tensor | None) -> Tensor | None:
    """``vectors`` if every entry is finite (on every rank, for sharded vectors), else None."""
    return vectors if vectors is not None and all_finite(op, vectors) else None
