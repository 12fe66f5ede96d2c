r"""Top-k (or bottom-k) eigenpairs of a symmetric operator by Lanczos with full reorthogonalization.

Ritz pairs :math:`(θ_i, y_i = Q_m s_i)` of :math:`T_m` approximate eigenpairs of H, and their residual
is available without another HVP (without restarts, :math:`\| H y_i - θ_i y_i \| = |β_m\, s_{m,i}|`;
see :mod:`~edgewatch.curvature._krylov`). It bounds the eigenvalue error,
:math:`\min_j |λ_j - θ_i| \le \|H y_i - θ_i y_i\|`. The solver stops as soon as every requested pair
has a residual below :math:`\text{tol}\, |θ_i|` (and the answer survives verification, below), or at
the HVP budget, and says which: a result is never silently unconverged.

That residual is the one of the *computed* products, and the recurrence keeps lowering it past the
products' own rounding noise :math:`e(y) = \mathrm{fl}(Hy) - Hy`. The residual reported is therefore
:math:`r_i + ρ \max_j |θ_j|`, with ρ the operator's relative rounding noise
(:func:`~edgewatch.curvature.noise.hvp_noise`, measured once per operator), which bounds
:math:`\|Hy_i - θ_i y_i\| \le r_i + \|e(y_i)\|` for the exact H: in float32 the old floor
:math:`\text{eps}\,|θ|` could be below the true error (a digits CNN, k = 3: λ_1 error 3.6e-6,
residual 2.4e-6); in float64 the added term is of order 1e-15 relative.

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

from edgewatch.curvature._krylov import LanczosProcess
from edgewatch.curvature.linear import LinearOperator, solver
from edgewatch.curvature.noise import hvp_noise, resolves
from edgewatch.curvature.sharding import all_finite, column_norms, local_length, norm

__all__ = ["EigenResult", "WHICH", "lanczos"]

WHICH = ("LA", "SA", "LM", "BE")

# Relative weight of the random vector mixed into a warm start.
_WARM_NOISE = 1e-2


class EigenResult(NamedTuple):
    """Eigenpairs from an iterative solver.

    Attributes:
        eigenvalues: (k,) float64 on the CPU, in the order the solver documents.
        eigenvectors: (n, k) unit columns, in the operator's dtype and on its device.
        residuals: (k,) float64, a bound on :math:`\\|H y_i - θ_i y_i\\|` for the exact H: the
            Ritz residual of the computed products plus their rounding noise (see
            :func:`~edgewatch.curvature.noise.hvp_noise`). Some eigenvalue of H lies within it of
            θ_i: :math:`\\min_j |λ_j - θ_i| \\le` ``residuals[i]``. That is the *nearest*
            eigenvalue: only a converged solve (the pairs verified to be the wanted ones) makes it
            a bound on :math:`|λ_i - θ_i|` itself; an unconverged θ_1 may sit near λ_2.
        converged: every pair met the tolerance.
        num_hvps: operator applications of this solve's Krylov process. An operator's first
            solve also spends two products measuring its rounding noise, counted in the
            operator's own ``num_hvps`` only.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    converged: bool
    num_hvps: int


@solver
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
        op: any symmetric :class:`~edgewatch.curvature.linear.LinearOperator` (e.g.
            :class:`~edgewatch.curvature.hessian.HessianOperator`).
        k: how many eigenpairs, ``1 <= k <= n``.
        which: ``"LA"`` largest algebraic (sharpness: λ_1 ≥ λ_2 ≥ …, descending), ``"SA"``
            smallest algebraic (most negative first, ascending), ``"LM"`` largest magnitude
            (descending |λ|), ``"BE"`` both ends (⌈k/2⌉ largest and ⌊k/2⌋ smallest, descending).
        tol: stop when every requested pair has a residual bound
            :math:`r + ρ\max|θ| \le \text{tol}\,|θ|`, or a Ritz residual at the operator's
            rounding noise (:math:`r \le 4ρ\max|θ|`, ρ from
            :func:`~edgewatch.curvature.noise.hvp_noise`, at least the dtype's eps), which no
            further HVP can improve on: eigenvalues at 0 converge, and a tol finer than the
            products resolve is met at that resolution (the residuals returned show which), as
            long as that resolution, 5ρ, is within 10%: noisier products (finite differences
            through ReLU kinks, or in bfloat16) stop there unconverged.
        max_hvps: HVP budget; default ``min(n, max(100, 10 k))``.
        v0: warm start: a flat vector ``(n,)``, or previous Ritz vectors ``(n, j)`` whose
            normalized sum starts the iteration, so every one of them is in the Krylov space,
            plus a random vector of 1% of its norm so that no direction is missing entirely.
        seed: seeds the random start and restart directions; the global RNG is not used.

    One Krylov space sees each distinct eigenvalue once, so copies of a repeated eigenvalue, or
    eigenvalues outside an invariant subspace the start vector happened to span, are invisible
    to it. Whenever that can matter (k > 1, a warm start, or a breakdown) a converged answer is
    verified: the process continues from a random direction orthogonal to everything seen (for
    k > 1 until that direction's own extreme Ritz pair has converged to 1% or for 3 min(max(3, k), 10)
    steps, otherwise for three steps), and the answer stands only if this does not change it.
    Pairs that lost their convergence to the new directions continue along the direction set
    aside at the restart (:meth:`~edgewatch.curvature._krylov.LanczosProcess.steer`), so a
    verification costs only its own steps. Those few steps
    cannot rule out everything: a warm start almost orthogonal to a new top eigenvector (after
    two eigenvalues cross) can still lock onto the old one. Cold-start now and then when that
    matters.

    Returns:
        :class:`EigenResult`. ``converged=False`` means the budget ran out first, or the
        products are too noisy to resolve the eigenvalues to 10% (5ρ > 0.1); the
        eigenvalues are then the best Ritz values found, with their (too large) residuals, and a
        residual then bounds the distance from θ_i to the *nearest* eigenvalue of H, which need
        not be λ_i (a Krylov space that has not yet seen the top eigenvector gives a θ_1 near λ_2
        with a small residual).

    Raises:
        ValueError: k out of range, unknown ``which``, nonpositive ``tol``, a budget below k,
            a zero, non-finite or wrongly shaped ``v0``.

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
    if v0 is not None:
        # A start with no component along the true top eigenvector can never find it; a little
        # randomness gives every direction one, at a cost of a few HVPs.
        noise = torch.randn(local_length(op), generator=generator, dtype=op.dtype, device=op.device)
        start = start / norm(op, start) + _WARM_NOISE * noise / norm(op, noise)
    process = LanczosProcess(op, start, generator=generator, restart=True, capacity=min(budget, 64))
    level = hvp_noise(op)  # two products at an operator's first solve, none after
    verify_steps = min(max(3, k), 10)
    verifying_from, before = None, None  # first basis index of a running verification
    verified = False  # a verification found nothing new: the complement was looked at already
    while True:
        process.step()
        if process.nonfinite:
            return _nonfinite_result(op, k, process.size)
        out_of_budget = process.size >= budget or process.exhausted
        if process.size < k and not out_of_budget:
            continue
        theta, s, all_residuals = process.ritz()
        chosen = _select(theta, k, which)
        # The recurrence's residual does not see the products' own rounding noise: add it, so
        # that the bound holds for the exact H. A residual at that noise cannot improve: it meets
        # any tolerance (eigenvalues near 0), hence r <= 4 floor, i.e. r + floor <= 5 floor.
        floor = level * np.abs(theta).max()
        residuals = all_residuals[chosen] + floor
        bar = np.maximum(tol * np.abs(theta[chosen]), 5 * floor)
        # Products too noisy to resolve the top eigenvalue to RESOLUTION (finite differences through
        # ReLU kinks, or in bfloat16) stop the solve at their floor, which no HVP improves on, but
        # are not called converged: the residual says how little is known.
        resolved = resolves(level)
        met = process.size >= k and bool(np.all(residuals <= bar))
        converged = False
        if verifying_from is not None:
            changed = bool(np.any(np.abs(theta[chosen] - before) > bar))
            looked = process.size - verifying_from
            # Inside a tight cluster at θ_k the block's own extreme pair can take as long to
            # settle as the whole solve; by 3x the minimum it has shown what it would change.
            settled = looked >= verify_steps and (
                k == 1
                or looked >= 3 * verify_steps
                or _newest_settled(theta, s, all_residuals, verifying_from, which, tol, floor, before[-1])  # type: ignore[index]
            )
            if changed or settled or process.exhausted:
                verifying_from = None
                verified = verified or not changed
                converged = met and (process.exhausted or not changed)  # a full basis is exact
        elif met:
            if process.exhausted or verified or not _needs_verification(k, v0, process):
                converged = True
            elif process.restart():
                before, verifying_from = theta[chosen], process.size
            else:  # the basis spans everything: the pairs are exact
                converged = True
        if converged or out_of_budget:
            break
        if verifying_from is None and not met:
            # The pairs still short of tol may owe their residual to a direction set aside at a
            # restart, which the Krylov space of the new direction would never reduce.
            process.steer(chosen, bar)

    ritz = torch.as_tensor(s[:, chosen], dtype=op.dtype, device=op.device)  # (m, k)
    eigenvectors = process.basis.T @ ritz  # (n, k)
    return EigenResult(
        eigenvalues=torch.as_tensor(theta[chosen], dtype=torch.float64),
        eigenvectors=eigenvectors,
        residuals=torch.as_tensor(residuals, dtype=torch.float64),
        converged=converged and resolved,
        num_hvps=process.size,
    )


def _newest_settled(
    theta: np.ndarray,
    s: np.ndarray,
    residuals: np.ndarray,
    start: int,
    which: str,
    tol: float,
    floor: float,
    kth: float | None = None,
) -> bool:
    """Has the verification block's own extreme Ritz pair (at the end ``which`` asks for)
    converged, to max(tol, 1%)? Only then do its values say what the unexplored complement holds:
    copies of a repeated eigenvalue take more than a few steps to climb past the k-th value."""
    newest = np.flatnonzero((s[start:] ** 2).sum(axis=0) > 0.5)
    if newest.size == 0:
        return True
    ends = {"LA": [newest[-1]], "SA": [newest[0]], "BE": [newest[-1], newest[0]]}
    pairs = ends.get(which, [newest[np.argmax(np.abs(theta[newest]))]])
    if which in ("LA", "SA") and kth is not None:
        # Settled early when the pair's whole interval θ' ± r' lies on the far side of θ_k.
        sign = 1.0 if which == "LA" else -1.0
        if bool(np.all(sign * (theta[pairs] + sign * residuals[pairs]) < sign * kth)):
            return True
    loose = max(tol, 1e-2)
    return bool(np.all(residuals[pairs] <= np.maximum(loose * np.abs(theta[pairs]), 4 * floor)))


def _needs_verification(k: int, v0: Tensor | None, process: LanczosProcess) -> bool:
    """When one Krylov space may have missed a wanted eigenvalue: several wanted (copies of a
    repeated one), a start that is not random, or a subspace that closed on itself."""
    return k > 1 or v0 is not None or process.breakdowns > 0


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


def _start_vector(op: LinearOperator, v0: Tensor | None, generator: torch.Generator) -> Tensor:
    n = local_length(op)
    if v0 is None:
        return torch.randn(n, generator=generator, dtype=op.dtype, device=op.device)
    v0 = v0.detach().to(dtype=op.dtype, device=op.device)
    if v0.ndim == 1:
        v0 = v0[:, None]
    if v0.ndim != 2 or v0.shape[0] != n:
        raise ValueError(f"v0 must have shape ({n},) or ({n}, j), got {tuple(v0.shape)}")
    if not all_finite(op, v0):
        raise ValueError("v0 has non-finite entries (a previous solve on a diverged model?); pass None")
    norms = column_norms(op, v0)
    start = (v0 / norms.clamp_min(torch.finfo(op.dtype).tiny)).sum(dim=1)
    if not norm(op, start) > 0:
        raise ValueError("v0 is zero (or its columns cancel); pass previous Ritz vectors or None")
    return start


def _nonfinite_result(op: LinearOperator, k: int, num_hvps: int) -> EigenResult:
    nan = torch.full((k,), float("nan"), dtype=torch.float64)
    vectors = torch.full((local_length(op), k), float("nan"), dtype=op.dtype, device=op.device)
    return EigenResult(nan, vectors, nan.clone(), False, num_hvps)
