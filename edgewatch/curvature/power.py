r"""Power iteration with deflation: the baseline the Lanczos solver is measured against.

Iterates :math:`v \leftarrow Hv / \|Hv\|` in the orthogonal complement of the eigenvectors already
found (deflation by projection), one pair at a time, then for k > 1 takes the best pairs in the
span of all of them (Rayleigh-Ritz). It converges to the largest-magnitude
eigenvalue at rate :math:`|λ_2/λ_1|`, so it needs many more HVPs than Lanczos on a clustered
spectrum, and when a negative eigenvalue dominates in magnitude it returns that one (PyHessian's
behaviour). Stopping rule as in :func:`~edgewatch.curvature.lanczos.lanczos`:
:math:`\|Hv - θv\| \le \text{tol}\,|θ|` with :math:`θ = v^\top Hv`.

References:
    von Mises and Pollaczek-Geiringer 1929, Praktische Verfahren der Gleichungsauflösung.
    Yao, Gholami, Keutzer, Mahoney 2020, PyHessian: Neural Networks Through the Lens of the
    Hessian, https://arxiv.org/abs/1912.07145
"""

from __future__ import annotations

import torch
from torch import Tensor

from edgewatch.curvature._krylov import project_out
from edgewatch.curvature.lanczos import EigenResult
from edgewatch.curvature.linear import LinearOperator, solver

__all__ = ["power_iteration"]


@solver
def power_iteration(
    op: LinearOperator,
    k: int = 1,
    *,
    tol: float = 1e-4,
    max_hvps: int = 1000,
    seed: int = 0,
) -> EigenResult:
    """The k largest-magnitude eigenpairs, found one after another with deflation.

    Args:
        op: a symmetric linear operator.
        k: number of eigenpairs, ``1 <= k <= n``.
        tol: relative residual at which a pair counts as converged.
        max_hvps: total HVP budget for all k pairs (k > 1 keeps k of it for the final
            Rayleigh-Ritz step).
        seed: seeds the random start vectors; the global RNG is not used.

    Returns:
        :class:`~edgewatch.curvature.lanczos.EigenResult`, pairs by descending magnitude.

    Example:
        >>> from edgewatch.curvature import MatrixOperator
        >>> A = torch.diag(torch.tensor([4.0, -2.0, 1.0], dtype=torch.float64))
        >>> power_iteration(MatrixOperator(A), k=2, tol=1e-8).eigenvalues.round(decimals=6)
        tensor([ 4., -2.], dtype=torch.float64)
    """
    n = op.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the operator's dimension {n}, got {k}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    reserve = k if k > 1 else 0  # the closing Rayleigh-Ritz step
    if max_hvps < k + reserve:
        raise ValueError(f"max_hvps={max_hvps} is below {k + reserve}, the least k={k} pairs need")
    generator = torch.Generator(device=op.device).manual_seed(seed)
    vectors = torch.zeros(n, 0, dtype=op.dtype, device=op.device)  # (n, found)
    values, residuals, used, converged = [], [], 0, True
    floor, largest = float(torch.finfo(op.dtype).eps) ** (2 / 3), 0.0
    for i in range(k):
        v = _deflate(torch.randn(n, generator=generator, dtype=op.dtype, device=op.device), vectors)
        v = v / torch.linalg.vector_norm(v)
        pair_budget = (max_hvps - reserve - used) // (k - i)  # leave room for the pairs to come
        for _ in range(pair_budget):
            hv = op(v)
            used += 1
            theta = torch.dot(v, hv)
            residual = torch.linalg.vector_norm(hv - theta * v)
            theta_host, residual_host = torch.stack([theta, residual]).cpu().tolist()  # the sync
            # Near-zero eigenvalues are judged against eps^(2/3)·||H|| (as in ARPACK).
            scale = max(abs(theta_host), floor * max(abs(theta_host), largest))
            if residual_host <= tol * scale or not _all_finite(theta_host, residual_host):
                break
            w = _deflate(hv, vectors)
            v = w / torch.linalg.vector_norm(w)
        pair_converged = residual_host <= tol * scale
        largest = max(largest, abs(theta_host))
        converged = converged and pair_converged
        values.append(theta_host)
        residuals.append(residual_host)
        vectors = torch.cat([vectors, v[:, None]], dim=1)
    if k == 1:
        return EigenResult(
            torch.tensor(values, dtype=torch.float64), vectors, torch.tensor(residuals, dtype=torch.float64), converged, used
        )
    return _rayleigh_ritz(op, vectors, tol, used)


def _rayleigh_ritz(op: LinearOperator, vectors: Tensor, tol: float, used: int) -> EigenResult:
    """Best pairs in span(Y) (k more HVPs).

    Each deflated pair inherits the error of the pairs found before it (a component along their
    true eigenvectors), so its residual cannot fall below theirs; that contamination lies inside
    span(Y), where the Rayleigh-Ritz step removes it.
    """
    q, _ = torch.linalg.qr(vectors)  # (n, k)
    hq = torch.stack([op(col) for col in q.T], dim=1)  # (n, k)
    small = (q.T @ hq).cpu().double()
    theta, s = torch.linalg.eigh((small + small.T) / 2)
    order = torch.argsort(theta.abs(), descending=True, stable=True)
    theta, s = theta[order], s[:, order].to(q.dtype).to(q.device)
    y = q @ s
    residuals = torch.linalg.vector_norm(hq @ s - y * theta.to(q.dtype).to(q.device), dim=0).cpu().double()
    floor = float(torch.finfo(q.dtype).eps) ** (2 / 3) * theta.abs().max()
    converged = bool(torch.all(residuals <= tol * torch.clamp(theta.abs(), min=floor)))
    return EigenResult(theta, y, residuals, converged, used + q.shape[1])


def _deflate(v: Tensor, vectors: Tensor) -> Tensor:
    """Project out the eigenvectors found so far (columns of ``vectors``)."""
    return project_out(v, vectors.T)


def _all_finite(*values: float) -> bool:
    return all(abs(x) < float("inf") for x in values)
