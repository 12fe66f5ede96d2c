r"""A streamed estimate of the top eigenpair: a few Lanczos steps from a kept vector.

Between full solves the top eigenvector moves slowly, so the kept vector :math:`v` of the last
solve is already a good start. :math:`m` Lanczos steps from it (m HVPs, as few as meet the
tolerance) give the top Ritz pair
:math:`(θ, y)` of the Krylov space :math:`\mathcal K_m(H, v)`, and its residual exactly:

.. math::
    θ = \max_{u \in \mathcal K_m} \frac{u^\top H u}{u^\top u} \;\ge\; v^\top H v,
    \qquad r = \|H y - θ y\| = |β_m s_m|,

so θ is at least the Rayleigh quotient of v (m = 1 is exactly that Rayleigh quotient), never
above :math:`λ_1`, and some eigenvalue lies within r of θ. When v has drifted far from the top
eigenvector (eigenvalues crossed, a catapult) θ may follow another eigenvalue: r is then large
relative to θ, which is what tells a caller to escalate to a full solve. The returned Ritz vector
is the start of the next refinement.

r comes from the recurrence over the computed products, which does not see their rounding noise
:math:`e(y)`; the residual reported is :math:`r + ρ \max|θ|`, an upper estimate of
:math:`r + \|e(y)\| \ge \|Hy - θy\|` for the exact H, with ρ the operator's relative rounding noise
(:func:`~edgewatch.curvature.noise.hvp_noise`), measured at the operator's first solve and reused:
a streamed refinement on an operator already solved spends no product on it.

References:
    Lanczos 1950, https://doi.org/10.6028/jres.045.026; Parlett, The Symmetric Eigenvalue
    Problem (1998), section 11.4 (Ritz residual bounds).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from edgewatch.curvature._krylov import LanczosProcess
from edgewatch.curvature.lanczos import EigenResult
from edgewatch.curvature.linear import LinearOperator, solver
from edgewatch.curvature.noise import hvp_noise
from edgewatch.curvature.sharding import local_length, norm

__all__ = ["refine"]


@solver
def refine(op: LinearOperator, v: Tensor, *, steps: int = 2, tol: float = 1e-2) -> EigenResult:
    r"""The top Ritz pair of at most ``steps`` Lanczos steps from ``v``: a cheap update of a kept
    eigenpair, stopping at the first step whose residual meets ``tol``.

    Args:
        op: any symmetric :class:`~edgewatch.curvature.linear.LinearOperator`.
        v: the kept vector ``(n,)`` or ``(n, j)`` (its first column is used), e.g. the last
            :func:`~edgewatch.curvature.lanczos` result's top eigenvector.
        steps: the most HVPs to spend (≥ 1).
        tol: stop, ``converged``, once :math:`r \le \text{tol}\,|θ|`.

    Returns:
        :class:`~edgewatch.curvature.lanczos.EigenResult` with k = 1: θ, its Ritz vector (v
        itself after one step), the residual bound :math:`r + ρ\max|θ|`, whether it met tol,
        and the HVP count (Lanczos steps; on an operator never solved before, the two products
        measuring ρ are counted by the operator only). The residual bounds the distance from θ
        to the *nearest* eigenvalue of H; it is a bound on :math:`λ_1 - θ` only when v has not
        drifted to another eigenvector, which a converged result with a small relative residual
        and no sudden fall of θ is the evidence for.

    Raises:
        ValueError: ``steps < 1``, ``tol <= 0``, a zero, non-finite or wrongly shaped ``v``.

    Example:
        >>> from edgewatch.curvature import MatrixOperator
        >>> A = torch.diag(torch.tensor([4.0, 1.0, 0.5], dtype=torch.float64))
        >>> v = torch.tensor([1.0, 0.1, 0.0], dtype=torch.float64)
        >>> result = refine(MatrixOperator(A), v, steps=1)
        >>> round(result.eigenvalues.item(), 6)  # vᵀAv / vᵀv = 4.01 / 1.01
        3.970297
        >>> round(refine(MatrixOperator(A), v, steps=2).eigenvalues.item(), 6)  # exact: v spans two eigenvectors
        4.0
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    n, length = op.shape[0], local_length(op)
    v = v.detach().to(dtype=op.dtype, device=op.device)
    if v.ndim == 2:
        v = v[:, 0]
    if v.ndim != 1 or v.shape[0] != length:
        raise ValueError(f"v must have shape ({length},) or ({length}, j), got {tuple(v.shape)}")
    size = norm(op, v)
    if not bool(torch.isfinite(size)) or not size > 0:
        raise ValueError("v must be a finite, nonzero vector (the kept eigenvector of a previous solve)")
    # No restarts: the Krylov space of v is the point; a breakdown means v spans an invariant subspace.
    generator = torch.Generator(device=op.device).manual_seed(0)
    process = LanczosProcess(op, v, generator=generator, restart=False, capacity=steps)
    level = hvp_noise(op)  # kept from the operator's first solve: no product here after that
    while True:
        process.step()
        if process.nonfinite:
            nan = torch.full((1,), float("nan"), dtype=torch.float64)
            vector = torch.full((length, 1), float("nan"), dtype=op.dtype, device=op.device)
            return EigenResult(nan, vector, nan.clone(), False, process.size)
        theta, s, residuals = process.ritz()
        top = int(np.argmax(theta))
        value = float(theta[top])
        # The recurrence's residual misses the products' rounding noise; the bound adds it.
        residual = float(residuals[top]) + level * float(np.abs(theta).max())
        if residual <= tol * abs(value) or process.size >= min(steps, n) or process.exhausted:
            break
    ritz = torch.as_tensor(s[:, top], dtype=op.dtype, device=op.device)
    vector = process.basis.T @ ritz  # (n,)
    return EigenResult(
        eigenvalues=torch.tensor([value], dtype=torch.float64),
        eigenvectors=vector[:, None],
        residuals=torch.tensor([residual], dtype=torch.float64),
        converged=bool(residual <= tol * abs(value)),
        num_hvps=process.size,
    )
