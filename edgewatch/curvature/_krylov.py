r"""The Lanczos process: an orthonormal Krylov basis, its projected matrix, and exact residuals.

After m steps from a unit vector :math:`q_1`, :math:`H Q_m = Q_m T_m + β_m q_{m+1} e_m^\top` with
:math:`Q_m` orthonormal and :math:`T_m = Q_m^\top H Q_m` tridiagonal. Both the top-k solver
(:mod:`~edgewatch.curvature.lanczos`) and spectral density estimation
(:mod:`~edgewatch.curvature.density`) run this one process.

Every new vector is orthogonalized against the whole basis twice ("twice is enough", Giraud et
al. 2005). The coefficients of that orthogonalization are kept, so :math:`T_m` is the full
projection :math:`Q_m^\top H Q_m` (tridiagonal up to rounding) and Rayleigh-Ritz stays exact even
after a *restart*: when the Krylov space becomes (nearly) invariant, or when the solver asks for a
fresh direction to look for eigenvalues it may have missed (repeated eigenvalues), the process
continues from a random vector orthogonal to the basis and remembers the residual it set aside.
The residual of a Ritz pair :math:`(θ, Q_m s)` is then, exactly,

.. math::
    H Q_m s - θ Q_m s = β_m s_m q_{m+1} + \sum_{j \in \text{restarts}} s_j (I - Q_m Q_m^\top) w_j,

with :math:`w_j` the residual set aside at restart j. After a restart the process can also be
steered back along a Ritz pair's whole residual (:meth:`LanczosProcess.steer`), which sets the
pending direction aside in turn. Vectors stay in the operator's dtype and on its device (this
rank's part of them when the operator's parameters are sharded, :mod:`~edgewatch.curvature.sharding`,
with every inner product all-reduced); the projected matrix lives on the host in float64 (one small
transfer per step, which the stopping test
needs anyway, and one more for the residuals while directions are set aside).

References:
    Lanczos 1950, https://doi.org/10.6028/jres.045.026; Giraud, Langou, Rozloznik 2005, The loss of
    orthogonality in the Gram-Schmidt orthogonalization process, https://doi.org/10.1016/j.camwa.2005.08.009
    Golub and Van Loan, Matrix Computations (4th ed.), sections 10.1 and 10.3.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from edgewatch.curvature.linear import LinearOperator
from edgewatch.curvature.sharding import inner, local_length, norm

__all__ = ["LanczosProcess", "project_out"]

# Directions set aside (by restarts and steering) beyond which the process stops steering: every
# residual computation projects each of them against the basis.
_MAX_SET_ASIDE = 16


def project_out(w: Tensor, basis: Tensor, op: object = None) -> Tensor:
    """w minus its component in the row space of the orthonormal ``basis`` (m, n), twice over
    ("twice is enough" for orthogonality to working precision); inner products as ``op``'s
    vectors take them (all-reduced when they are sharded)."""
    for _ in range(2):
        w = w - basis.T @ inner(op, basis, w)
    return w


class LanczosProcess:
    """Lanczos with full reorthogonalization and restarts, on any symmetric operator.

    Args:
        op: a symmetric linear operator.
        start: the starting vector (any nonzero norm).
        generator: random source for restart directions.
        restart: on a breakdown (the Krylov space became invariant to rounding), continue with a
            random vector orthogonal to the basis (eigensolves) instead of stopping (quadrature,
            where the Krylov space of the start vector is the point).
        capacity: how many steps to allocate room for at first (grown on demand).
    """

    def __init__(
        self,
        op: LinearOperator,
        start: Tensor,
        *,
        generator: torch.Generator,
        restart: bool = True,
        capacity: int = 16,
    ) -> None:
        self.op = op
        self.dimension = op.shape[0]
        self.length = local_length(op)  # of the vectors held here (their part, when sharded)
        self.generator = generator
        self.allow_restart = restart
        self.exhausted = False  # no further step possible (full space, or breakdown without restart)
        self.nonfinite = False
        self.breakdowns = 0  # restarts forced by an invariant subspace
        self._size = 0
        rows = min(self.dimension, capacity) + 1
        self._basis = torch.empty(rows, self.length, dtype=op.dtype, device=op.device)
        self._basis[0] = start / norm(op, start)
        self._projected = np.zeros((rows, rows))
        self._beta = 0.0  # norm of the residual of the last step, along the pending basis vector
        self._set_aside: list[tuple[int, Tensor]] = []  # (step j, w_j) for restarts with w_j != 0
        self._terms: tuple[int, tuple | None] = (-1, None)  # (size, _residual_terms) of the last ritz()
        self._scale = 0.0  # running estimate of ||H||, for the breakdown test
        self._eps = float(torch.finfo(op.dtype).eps)

    @property
    def size(self) -> int:
        """m, the number of completed steps (= HVPs)."""
        return self._size

    @property
    def basis(self) -> Tensor:
        """Q_m, shape (m, n)."""
        return self._basis[: self._size]

    @property
    def projected(self) -> np.ndarray:
        """T_m = Q_mᵀ H Q_m, (m, m) float64."""
        return self._projected[: self._size, : self._size]

    def step(self) -> None:
        """One HVP: extend the basis by one vector and the projected matrix by one row/column."""
        j = self._size
        q = self._basis[j]
        w = self.op(q)
        basis = self._basis[: j + 1]  # (j+1, n)
        coefficients = inner(self.op, basis, w)
        w = w - basis.T @ coefficients
        correction = inner(self.op, basis, w)
        w = w - basis.T @ correction
        beta = norm(self.op, w)
        host = torch.cat([coefficients + correction, beta[None]]).cpu().double().numpy()  # the sync
        self._size += 1
        self._grow(j + 2)
        self._projected[: j + 1, j] = host[:-1]
        self._projected[j, : j + 1] = host[:-1]
        beta_host = float(host[-1])
        if not np.isfinite(host).all():
            self.nonfinite = self.exhausted = True
            return
        self._scale = max(self._scale, float(np.abs(host[:-1]).max()), beta_host)
        if j + 1 >= self.dimension:
            self.exhausted = True
            self._beta = 0.0
            return
        # Invariant to rounding: what is left of w is noise from orthogonalizing j+1 vectors.
        if beta_host <= 10 * self._eps * (j + 1) ** 0.5 * self._scale:
            self.breakdowns += 1
            if not self.allow_restart:
                self.exhausted = True
                self._beta = beta_host
                self._basis[j + 1] = w / beta if beta_host > 0 else 0.0
                return
            self._restart_from(j, w if beta_host > 0 else None)
            return
        self._beta = beta_host
        self._basis[j + 1] = w / beta

    def restart(self) -> bool:
        """Set the pending direction aside and continue from a random orthogonal vector.

        Used to look for eigenvalues the Krylov space of the start vector cannot see (copies of
        a repeated eigenvalue). Returns False when the space is full.
        """
        if self._size >= self.dimension or self.exhausted:
            return False
        pending = self._beta * self._basis[self._size] if self._beta > 0 else None
        self._restart_from(self._size - 1, pending)
        return True

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values θ (ascending), vectors S of T_m (columns), and residuals ‖HQs − θQs‖."""
        theta, s = np.linalg.eigh(self.projected)
        self._terms = (self._size, self._residual_terms(s))
        return theta, s, self._residual_norms(self._terms[1], s.shape[1])

    def steer(self, pairs: np.ndarray, bars: np.ndarray) -> bool:
        r"""Continue along the residual of the pair among ``pairs`` (indices into the Ritz pairs of
        the last :meth:`ritz`) furthest from its tolerance.

        Without restarts every Ritz residual lies along the pending basis vector, and the next
        Lanczos step is the step that reduces it. After a restart (verification, breakdown) part of
        a residual lies in the directions set aside, which further steps from the new direction
        never reduce: the pairs found before the restart stall. When less than 90% of the worst
        pair's squared residual (scaled by ``bars``, its tolerance) is along the pending vector,
        the pending vector is set aside in turn and the process continues along that pair's whole
        residual :math:`Hy - θy`, which expands the space the way a Lanczos step from y would
        (Davidson's expansion without preconditioner). Returns whether it switched.
        """
        if not self._set_aside or self._beta == 0:  # nothing to go back to, or a fresh direction to try first
            return False
        if len(self._set_aside) >= _MAX_SET_ASIDE:  # each one costs a projection per step from now on
            return False
        size, terms = self._terms
        if size != self._size or terms is None or not terms[0]:  # no ritz() since the last step, or no pending part
            return False
        _, weights, directions, gram = terms
        weights = weights[:, pairs]
        squares = np.maximum(np.einsum("pi,pq,qi->i", weights, gram, weights), 0.0)
        worst = int(np.argmax(squares / np.maximum(bars, 1e-300) ** 2))
        pending = weights[0, worst] ** 2 * gram[0, 0]
        if pending >= 0.9 * squares[worst]:
            return False
        residual = torch.as_tensor(weights[:, worst], dtype=directions.dtype, device=directions.device) @ directions
        self._restart_from(self._size - 1, self._beta * self._basis[self._size], direction=residual)
        return True

    @staticmethod
    def _residual_norms(terms: tuple | None, count: int) -> np.ndarray:
        if terms is None:
            return np.zeros(count)
        _, a, _, gram = terms
        return np.sqrt(np.maximum(np.einsum("pi,pq,qi->i", a, gram, a), 0.0))

    def _residual_terms(self, s: np.ndarray) -> tuple[bool, np.ndarray, Tensor, np.ndarray] | None:
        """residual_i = Σ_l a[l, i] u_l: whether u_0 is the pending basis vector (the others are the
        directions set aside, projected), a (p, k), the u_l (p, n) and their Gram matrix."""
        m = self._size
        directions, weights = [], []
        pending = self._beta > 0 and m < self.dimension
        if pending:
            directions.append(self._basis[m])
            weights.append(self._beta * s[m - 1])
        if self._set_aside:
            basis = self.basis
            for j, w in self._set_aside:
                directions.append(project_out(w, basis, self.op))
                weights.append(s[j])
        if not directions:
            return None
        u = torch.stack(directions)  # (p, n)
        gram = inner(self.op, u, u.T).cpu().double().numpy()  # (p, p)
        return pending, np.stack(weights), u, gram

    def _restart_from(self, j: int, set_aside: Tensor | None, direction: Tensor | None = None) -> None:
        if set_aside is not None:
            self._set_aside.append((j, set_aside))
        basis = self._basis[: j + 1]
        if direction is None:
            direction = torch.randn(self.length, generator=self.generator, dtype=self.op.dtype, device=self.op.device)
        w = project_out(direction, basis, self.op)
        self._basis[j + 1] = w / norm(self.op, w)
        self._beta = 0.0

    def _grow(self, rows: int) -> None:
        if rows <= self._basis.shape[0]:
            return
        capacity = min(max(rows, 2 * self._basis.shape[0]), self.dimension + 1)
        grown = self._basis.new_empty(capacity, self.length)
        grown[: self._basis.shape[0]] = self._basis
        self._basis = grown
        projected = np.zeros((capacity, capacity))
        old = self._projected.shape[0]
        projected[:old, :old] = self._projected
        self._projected = projected
