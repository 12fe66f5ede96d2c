r"""The rounding noise of an operator's products, measured once per operator and kept.

A product computed in floating point is :math:`\mathrm{fl}(Hv) = Hv + e(v)`. A Krylov solver's Ritz
residual :math:`r = \|\mathrm{fl}(H)y - θy\|` comes from its recurrence over the *computed*
products, and keeps falling after :math:`r` has reached :math:`\|e(y)\|`: the recurrence is
consistent with the noisy products, not with H. For the exact H the bound that holds is

.. math::
    \min_j |λ_j - θ| \;\le\; \|Hy - θy\| \;\le\; r + \|e(y)\|,

(the first inequality: Parlett 1998, chapter 4; the second: the triangle inequality). In float32
the second term matters: on a small digits CNN with BatchNorm (k = 3, tol 1e-6) the λ_1 error
against a float64 reference was 3.6e-6 while the reported residual, floored at eps·|θ|, was 2.4e-6.

Measurement (two products): :math:`v` random and :math:`3v` (not a power of two, so every rounding
in the product differs while the exact result is the same, :math:`H(3v)/3 = Hv`),

.. math::
    ρ = 2\,\frac{\|\mathrm{fl}(H(3v))/3 - \mathrm{fl}(Hv)\|}{\|\mathrm{fl}(Hv)\|}
    \;\approx\; \frac{2\sqrt{2}\,\|e(v)\|}{\|Hv\|},

kept relative to the product so that it stays valid as θ, and with it the operator's scale, change
between solves. A solver bounds :math:`\|e(y)\|` for a unit vector by :math:`ρ \max_i |θ_i|`: for a
random v, :math:`\|Hv\| \le \|H\| ≈ \max_i|θ_i|`, and the noise grows with the scale of the
operator, not with :math:`\|Hy\|` alone. Measured in float32 against float64 products at the top
eigenvector y of the digits MLP, the BatchNorm CNN and a LayerNorm transformer block (3 seeds
each), the difference quotient times λ_1 (ρ/2·λ_1) was 0.9-2.5x the true :math:`\|e(y)\|`; the
factor 2 covers that spread. The old floor eps·λ_1 was up to 3.5x below :math:`\|e(y)\|`.

Finite-difference products (``HessianOperator(method="finite_difference")``) err by more than their
rounding, and the measurement above does not see it: their step is :math:`ε \propto 1/\|v\|`, so
:math:`v` and :math:`3v` are differenced over the same displacement and share the truncation error
(on a digits MLP in float32: ρ = 5.8e-6 against a true relative error of 6.6e-5; in float64
7e-16 against 9e-11). The level is therefore never below :math:`2\,` ``op.fd_error``, the error
the operator estimated at its first product from the same products with step 2ε.

The level assumes the noise keeps its size relative to the operator's scale; for a run whose
Hessian changes character (e.g. softmax outputs saturating, where products cancel), calling
``hvp_noise(op, refresh=True)`` now and then measures it again.

References:
    Parlett, The Symmetric Eigenvalue Problem (1998), chapter 4 (residual error bounds);
    Higham, Accuracy and Stability of Numerical Algorithms (2nd ed., 2002), chapter 3.
"""

from __future__ import annotations

import math
import weakref

import torch

from edgewatch.curvature.linear import LinearOperator
from edgewatch.curvature.sharding import local_length, norm

__all__ = ["RESOLUTION", "finite_difference_floor", "hvp_noise", "resolves"]

# Innermost operator -> {types of the wrappers around it: ρ}. Weak keys: a level dies with its
# operator, and an operator made anew (a new model, a new probe set) is measured anew.
_LEVELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# Scale of the second product: not a power of two, so its roundings are not those of the first.
_SCALE = 3.0
# Spread of ‖e(y)‖ / (difference quotient · λ_1) over vectors and models: measured up to 1.1
# (module docstring); 2 leaves room for models not measured.
_SAFETY = 2.0
# Seed of the measurement vector: fixed, so that every rank of a process group and every rerun
# measures the same vector.
_SEED = 15
#: The coarsest relative resolution of eigenvalues (5 times the products' noise level) a solve may
#: call converged.
RESOLUTION = 0.1


def resolves(level: float) -> bool:
    """Whether products with noise level ``level`` (:func:`hvp_noise`) resolve eigenvalues to
    :data:`RESOLUTION`: a residual at 5 times the level is where a solve stops improving."""
    return 5 * level <= RESOLUTION


def hvp_noise(op: LinearOperator, *, refresh: bool = False) -> float:
    r"""ρ, the relative rounding noise of ``op``'s products: ``‖e(y)‖ ≤ ρ·max|θ|`` for unit y.

    Measured on the first call for an operator with two products, :math:`\mathrm{fl}(Hv)` and
    :math:`\mathrm{fl}(H(3v))/3` on a fixed random v, as
    :math:`ρ = 2\|\mathrm{fl}(H(3v))/3 - \mathrm{fl}(Hv)\| / \|\mathrm{fl}(Hv)\|` (the 2 a safety
    factor, see the module docstring), never below the dtype's eps nor, for finite-difference
    products, below twice the operator's ``fd_error``; kept for the operator's
    lifetime (no product on later calls) unless ``refresh``. The two products count in
    ``op.num_hvps`` and are made inside the caller's ``with op:`` session when there is one.
    Operators that cannot be weakly referenced are measured on every call. Non-finite products
    give eps and are not kept (the solve will report them anyway).

    An operator that wraps another as ``op.op`` (a
    :class:`~edgewatch.curvature.preconditioned.PreconditionedOperator`, made anew at every probe
    around the same Hessian) shares the level of the first wrapper of its type around that inner
    operator: a new preconditioner changes the scale, which ρ is relative to, not how the inner
    products round. So a streamed probe of the preconditioned sharpness spends no product here.

    Args:
        op: a symmetric :class:`~edgewatch.curvature.linear.LinearOperator`.
        refresh: measure again (two products) and keep the new level.

    Example:
        >>> from edgewatch.curvature import MatrixOperator
        >>> op = MatrixOperator(torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)))
        >>> hvp_noise(op) < 1e-14, op.num_matvecs, hvp_noise(op) == hvp_noise(op), op.num_matvecs
        (True, 2, True, 2)
    """
    inner, wrappers = _unwrapped(op)
    if not refresh:
        try:
            level = _LEVELS.get(inner, {}).get(wrappers)
        except TypeError:  # not weakly referenceable (or unhashable): measure every time
            level = None
        if level is not None:
            return level
    level, finite = _measure(op)
    level = max(level, finite_difference_floor(inner))
    if finite:
        try:
            _LEVELS.setdefault(inner, {})[wrappers] = level
        except TypeError:
            pass
    return level


def finite_difference_floor(op: object) -> float:
    """``_SAFETY`` times the relative error a finite-difference operator measured, else 0."""
    error = getattr(op, "fd_error", None)
    return _SAFETY * error if isinstance(error, float) and math.isfinite(error) else 0.0


def _unwrapped(op: LinearOperator) -> tuple[object, tuple[type, ...]]:
    """The innermost operator under ``op.op`` links, and the types of the wrappers around it."""
    wrappers: list[type] = []
    while isinstance(getattr(op, "op", None), LinearOperator):
        wrappers.append(type(op))
        op = op.op  # type: ignore[attr-defined]
    return op, tuple(wrappers)


def _measure(op: LinearOperator) -> tuple[float, bool]:
    """ρ from the two products, and whether both were finite."""
    eps = float(torch.finfo(op.dtype).eps)
    generator = torch.Generator(device=op.device).manual_seed(_SEED)
    v = torch.randn(local_length(op), generator=generator, dtype=op.dtype, device=op.device)
    product = op(v)
    again = op(_SCALE * v) / _SCALE
    size = float(norm(op, product))
    difference = float(norm(op, again - product))
    if not (math.isfinite(size) and math.isfinite(difference)):
        return eps, False
    if size == 0:  # H v = 0 exactly: nothing to scale a noise level by
        return eps, True
    return max(_SAFETY * difference / size, eps), True
