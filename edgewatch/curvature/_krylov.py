r"""The Lanczos process: an orthonormal Krylov basis and its tridiagonal matrix, step by step.

After m steps from a unit vector :math:`q_1`, :math:`H Q_m = Q_m T_m + β_m q_{m+1} e_m^\top` with
:math:`Q_m` orthonormal and :math:`T_m` tridiagonal (diagonal α, off-diagonal β). Both the top-k
solver (:mod:`~edgewatch.curvature.lanczos`) and spectral density estimation
(:mod:`~edgewatch.curvature.density`) run this one process.

Every new vector is orthogonalized against the whole basis twice ("twice is enough", Giraud et
al. 2005): full reorthogonalization costs O(mn) per step, negligible next to an HVP, and keeps the
Ritz values free of the spurious copies plain Lanczos produces in finite precision. The vectors stay
in the operator's dtype and on its device; α and β go to the host in float64 (one sync per step,
which the stopping test needs anyway).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from edgewatch.curvature._base import LinearOperator

__all__ = ["LanczosProcess"]


class LanczosProcess:
    """Lanczos tridiagonalization of ``op`` from ``start`` with full reorthogonalization.

    Args:
        op: a symmetric linear operator.
        start: the starting vector (any nonzero norm).
        generator: random source for a fresh direction after a breakdown.
        restart: on a breakdown (the Krylov space became invariant, β = 0), continue with a random
            vector orthogonal to the basis (top-k solves) instead of stopping (quadrature, where the
            Krylov space of the start vector is the point).
    """

    def __init__(
        self, op: LinearOperator, start: Tensor, *, generator: torch.Generator, restart: bool = True
    ) -> None:
        self.op = op
        self.dimension = op.shape[0]
        self.generator = generator
        self.restart = restart
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.exhausted = False  # no further step possible (full space, or breakdown without restart)
        self.nonfinite = False
        self.restarted = False  # the last step hit an invariant subspace and restarted
        self.block_start = 0  # first basis index after the latest restart (T is block diagonal)
        self._basis = torch.empty(min(self.dimension, 16) + 1, self.dimension, dtype=op.dtype, device=op.device)
        norm = torch.linalg.vector_norm(start)
        self._basis[0] = start / norm
        self._scale = 0.0  # running estimate of ||T||, for the breakdown test

    @property
    def size(self) -> int:
        """m, the number of completed steps (and of basis vectors in T_m)."""
        return len(self.alphas)

    @property
    def basis(self) -> Tensor:
        """Q_m, shape (m, n)."""
        return self._basis[: self.size]

    def step(self) -> None:
        """One HVP: extend the basis by one vector, T by one row."""
        j = self.size
        self.restarted = False
        q = self._basis[j]
        w = self.op(q)
        alpha = torch.dot(q, w)
        basis = self._basis[: j + 1]  # (j+1, n)
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        beta = torch.linalg.vector_norm(w)
        alpha_host, beta_host = torch.stack([alpha, beta]).double().tolist()  # the sync
        self.alphas.append(alpha_host)
        if not (np.isfinite(alpha_host) and np.isfinite(beta_host)):
            self.nonfinite = self.exhausted = True
            self.betas.append(float("nan"))
            return
        self._scale = max(self._scale, abs(alpha_host), beta_host)
        if j + 1 >= self.dimension:
            self.exhausted = True
            self.betas.append(0.0)
            return
        if beta_host <= torch.finfo(self.op.dtype).eps * self._scale:
            self.betas.append(0.0)
            if not self.restart:
                self.exhausted = True
                return
            w = self._random_orthogonal(basis)
            self.restarted = True
            self.block_start = j + 1
        else:
            self.betas.append(beta_host)
            w = w / beta
        self._grow(j + 2)
        self._basis[j + 1] = w

    def tridiagonal_eigh(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues θ (ascending) and eigenvectors S of T_m, in float64."""
        alphas = np.asarray(self.alphas, dtype=np.float64)
        if self.size == 1:
            return alphas, np.ones((1, 1))
        return scipy.linalg.eigh_tridiagonal(alphas, np.asarray(self.betas[:-1], dtype=np.float64))

    @property
    def last_beta(self) -> float:
        """β_m, the coupling to the next basis vector: residual of Ritz pair i is |β_m S[m-1, i]|."""
        return self.betas[-1]

    def _grow(self, rows: int) -> None:
        if rows <= self._basis.shape[0]:
            return
        capacity = min(max(rows, 2 * self._basis.shape[0]), self.dimension + 1)
        grown = self._basis.new_empty(capacity, self.dimension)
        grown[: self._basis.shape[0]] = self._basis
        self._basis = grown

    def _random_orthogonal(self, basis: Tensor) -> Tensor:
        w = torch.randn(self.dimension, generator=self.generator, dtype=self.op.dtype, device=self.op.device)
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        return w / torch.linalg.vector_norm(w)
