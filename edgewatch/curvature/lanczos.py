r"""Top-k (or bottom-k) eigenpairs of a symmetric operator by Lanczos with full reorthogonalization.

Ritz pairs :math:`(θ_i, y_i = Q_m s_i)` of :math:`T_m` approximate eigenpairs of H, and their residual
is available without another HVP:

.. math::
    \| H y_i - θ_i y_i \| = |β_m\, s_{m,i}|,

which also bounds the eigenvalue error, :math:`\min_j |λ_j - θ_i| \le |β_m s_{m,i}|`. The solver stops
as soon as every requested pair has :math:`|β_m s_{m,i}| \le \text{tol}\, |θ_i|`, or at the HVP
budget, and says which: a result is never silently unconverged.

References:
    Lanczos 1950, An iteration method for the solution of the eigenvalue problem of linear
    differential and integral operators, https://doi.org/10.6028/jres.045.026
    Golub and Van Loan, Matrix Computations (4th ed.), section 10.1.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from edgewatch.curvature._base import LinearOperator
from edgewatch.curvature._krylov import LanczosProcess

__all__ = ["EigenResult", "WHICH", "lanczos"]

WHICH = ("LA", "SA", "LM", "BE")


class EigenResult(NamedTuple):
    """Eigenpairs from an iterative solver.

    Attributes:
        eigenvalues: (k,) float64 on the CPU, in the order the solver documents.
        eigenvectors: (n, k) unit columns, in the operator's dtype and on its device.
        residuals: (k,) float64, :math:`\\|H y_i - θ_i y_i\\|` for each pair.
        converged: every pair met the tolerance.
        num_hvps: operator applications this solve used.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    converged: bool
    num_hvps: int


def lanczos(
    op: LinearOperator,
    k: int = 1,
    *,
    which: str = "LA",
    tol: float = 1e-4,
    max_hvps: int | None = None,
    v0: Tensor | None = None,
    seed: int = 0,
) -> EigenResult:
    r"""k eigenpairs of a symmetric operator, with residuals and a converged flag.

    Args:
        op: any symmetric :class:`~edgewatch.curvature._base.LinearOperator` (e.g.
            :class:`~edgewatch.curvature.hessian.HessianOperator`).
        k: how many eigenpairs, ``1 <= k <= n``.
        which: ``"LA"`` largest algebraic (sharpness: λ_1 ≥ λ_2 ≥ …, descending), ``"SA"``
            smallest algebraic (most negative first, ascending), ``"LM"`` largest magnitude
            (descending |λ|), ``"BE"`` both ends (⌈k/2⌉ largest and ⌊k/2⌋ smallest, descending).
        tol: stop when every requested pair has :math:`\|Hy - θy\| \le \text{tol}\,|θ|`. In float32
            the HVPs themselves carry relative error ~1e-6, so tolerances much below that cannot
            be met and the solve ends unconverged at the budget.
        max_hvps: HVP budget (= maximum Krylov dimension); default ``min(n, max(100, 10 k))``.
        v0: warm start: a flat vector ``(n,)``, or previous Ritz vectors ``(n, j)`` whose
            normalized sum starts the iteration, so every one of them is in the Krylov space.
        seed: seeds the random start (and fresh directions after an exact breakdown); the
            global RNG is not used.

    Returns:
        :class:`EigenResult`. ``converged=False`` means the budget ran out first; the
        eigenvalues are then the best Ritz values found, with their (too large) residuals.

    Raises:
        ValueError: k out of range, unknown ``which``, nonpositive ``tol``, a budget below k,
            a zero or wrongly shaped ``v0``.

    Example:
        >>> from edgewatch.curvature import MatrixOperator
        >>> A = torch.diag(torch.tensor([5.0, 3.0, 1.0, -4.0], dtype=torch.float64))
        >>> lanczos(MatrixOperator(A), k=2, tol=1e-10).eigenvalues.round(decimals=8)
        tensor([5., 3.], dtype=torch.float64)
        >>> lanczos(MatrixOperator(A), k=1, which="SA", tol=1e-10).eigenvalues.round(decimals=8)
        tensor([-4.], dtype=torch.float64)
    """
    n = op.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the operator's dimension {n}, got {k}")
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    budget = min(n, max(100, 10 * k)) if max_hvps is None else min(max_hvps, n)
    if budget < k:
        raise ValueError(f"max_hvps={max_hvps} is below k={k}: Lanczos needs at least k HVPs")

    generator = torch.Generator(device=op.device).manual_seed(seed)
    start = _start_vector(op, v0, generator)
    process = LanczosProcess(op, start, generator=generator, restart=True)
    while True:
        process.step()
        if process.nonfinite:
            return _nonfinite_result(op, k, process.size)
        out_of_budget = process.size >= budget or process.exhausted
        # Right after a breakdown every Ritz pair so far is exact, but eigenvalues outside the
        # invariant subspace found have not been seen yet: never claim convergence there.
        can_stop = process.size >= k and not process.restarted
        if not (can_stop or out_of_budget):
            continue
        theta, s = process.tridiagonal_eigh()
        chosen = _select(theta, k, which)
        # |β_m s_mi| can fall far below what the operator's own rounding allows (eps ||H||);
        # reporting less than that floor would claim an accuracy no HVP in this dtype has.
        floor = torch.finfo(op.dtype).eps * np.abs(theta).max()
        residuals = np.maximum(np.abs(process.last_beta * s[-1, chosen]), floor)
        converged = can_stop and bool(np.all(residuals <= tol * np.abs(theta[chosen])))
        if converged and process.block_start > 0:
            converged = _newest_block_settled(process, theta, s, which, tol, floor)
        if converged or out_of_budget:
            break

    ritz = torch.as_tensor(s[:, chosen], dtype=op.dtype, device=op.device)  # (m, k)
    eigenvectors = process.basis.T @ ritz  # (n, k)
    return EigenResult(
        eigenvalues=torch.as_tensor(theta[chosen], dtype=torch.float64),
        eigenvectors=eigenvectors,
        residuals=torch.as_tensor(residuals, dtype=torch.float64),
        converged=converged,
        num_hvps=process.size,
    )


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    """Indices of the wanted Ritz values (theta ascending), in the documented order."""
    if which == "LA":
        return np.arange(len(theta) - 1, len(theta) - 1 - k, -1)
    if which == "SA":
        return np.arange(k)
    if which == "LM":
        return np.argsort(-np.abs(theta), kind="stable")[:k]
    top, bottom = (k + 1) // 2, k // 2
    return np.concatenate([np.arange(len(theta) - 1, len(theta) - 1 - top, -1), np.arange(bottom)[::-1]])


def _newest_block_settled(
    process: LanczosProcess, theta: np.ndarray, s: np.ndarray, which: str, tol: float, floor: float
) -> bool:
    """After a breakdown, the pairs of the earlier blocks are exact but only span an invariant
    subspace; the eigenvalues outside it show up in the newest block. Its extreme Ritz pair (at
    the end ``which`` asks for) must have converged too before the answer can be trusted."""
    newest = np.flatnonzero((s[process.block_start :] ** 2).sum(axis=0) > 0.5)
    ends = {"LA": [newest[-1]], "SA": [newest[0]], "BE": [newest[-1], newest[0]]}
    sentinels = ends.get(which, [newest[np.argmax(np.abs(theta[newest]))]])
    residuals = np.maximum(np.abs(process.last_beta * s[-1, sentinels]), floor)
    return bool(np.all(residuals <= tol * np.abs(theta[sentinels])))


def _start_vector(op: LinearOperator, v0: Tensor | None, generator: torch.Generator) -> Tensor:
    n = op.shape[0]
    if v0 is None:
        return torch.randn(n, generator=generator, dtype=op.dtype, device=op.device)
    v0 = v0.detach().to(dtype=op.dtype, device=op.device)
    if v0.ndim == 1:
        v0 = v0[:, None]
    if v0.ndim != 2 or v0.shape[0] != n:
        raise ValueError(f"v0 must have shape ({n},) or ({n}, j), got {tuple(v0.shape)}")
    if not torch.isfinite(v0).all():
        raise ValueError("v0 has non-finite entries (a previous solve on a diverged model?); pass None")
    norms = torch.linalg.vector_norm(v0, dim=0)
    start = (v0 / norms.clamp_min(torch.finfo(op.dtype).tiny)).sum(dim=1)
    if not torch.linalg.vector_norm(start) > 0:
        raise ValueError("v0 is zero (or its columns cancel); pass previous Ritz vectors or None")
    return start


def _nonfinite_result(op: LinearOperator, k: int, num_hvps: int) -> EigenResult:
    nan = torch.full((k,), float("nan"), dtype=torch.float64)
    vectors = torch.full((op.shape[0], k), float("nan"), dtype=op.dtype, device=op.device)
    return EigenResult(nan, vectors, nan.clone(), False, num_hvps)
