r"""Spectral density of a symmetric operator by stochastic Lanczos quadrature (SLQ).

For a unit random vector v, m Lanczos steps give :math:`T_m = S\,\mathrm{diag}(θ)\,S^\top`, and the
Gauss quadrature :math:`\sum_j τ_j f(θ_j)`, :math:`τ_j = S_{1j}^2`, approximates
:math:`v^\top f(H) v`, exactly for polynomials of degree < 2m. Averaging over probes and taking f a
Gaussian kernel estimates the smoothed eigenvalue density

.. math::
    φ_σ(t) = \frac1n \sum_{i=1}^n \mathcal N(t;\, λ_i, σ^2)
    \approx \frac1{n_v} \sum_{l=1}^{n_v} \sum_{j=1}^{m} τ_j^{(l)}\, \mathcal N(t;\, θ_j^{(l)}, σ^2),

which integrates to 1 (multiply by n for an eigenvalue count per unit).

References:
    Ghorbani, Krishnan, Xiao 2019, An Investigation into Neural Net Optimization via Hessian
    Eigenvalue Density, https://arxiv.org/abs/1901.10159
    Lin, Saad, Yang 2016, Approximating spectral densities of large matrices,
    https://doi.org/10.1137/130934283
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from edgewatch.curvature._krylov import LanczosProcess
from edgewatch.curvature.linear import LinearOperator, solver
from edgewatch.curvature.trace import rademacher

__all__ = ["SpectralDensity", "gaussian_density", "spectral_density"]


class SpectralDensity(NamedTuple):
    """An SLQ density estimate.

    Attributes:
        grid: (g,) evaluation points t.
        density: (g,) φ_σ(t), integrating to 1 over the grid.
        nodes: per probe, the Ritz values θ_j (float64 arrays; fewer than m after a breakdown).
        weights: per probe, the quadrature weights τ_j (each set sums to 1).
        sigma: the Gaussian width used.
        num_hvps: operator applications used.
    """

    grid: Tensor
    density: Tensor
    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    sigma: float
    num_hvps: int


@solver
def spectral_density(
    op: LinearOperator,
    num_probes: int = 4,
    num_steps: int = 40,
    *,
    sigma: float | None = None,
    grid_size: int = 512,
    seed: int = 0,
) -> SpectralDensity:
    """Estimate the Gaussian-smoothed eigenvalue density of ``op`` (Ghorbani et al. 2019).

    Args:
        op: a symmetric linear operator.
        num_probes: independent Rademacher start vectors :math:`n_v`.
        num_steps: Lanczos steps m per probe (capped at n); cost is ``num_probes * num_steps``.
        sigma: Gaussian width σ; default 1% of the span of all Ritz values (Ghorbani et al.
            use σ² = 1e-5 on a spectrum rescaled to [-1, 1], which needs m ≈ 90).
        grid_size: number of evaluation points, spanning the Ritz values ± 4σ.
        seed: seeds the probes; the global RNG is not used.
    """
    if num_probes < 1 or num_steps < 1:
        raise ValueError(f"num_probes and num_steps must be positive, got {num_probes}, {num_steps}")
    generator = torch.Generator(device=op.device).manual_seed(seed)
    nodes, weights, used = [], [], 0
    for start in rademacher(op.shape[0], num_probes, op, generator).T:
        process = LanczosProcess(op, start, generator=generator, restart=False, capacity=num_steps)
        while process.size < num_steps and not process.exhausted:
            process.step()
        used += process.size
        if process.nonfinite:
            raise FloatingPointError("the operator returned non-finite values; no density to estimate")
        theta, s = np.linalg.eigh(process.projected)
        nodes.append(theta)
        weights.append(s[0] ** 2)
    all_nodes = np.concatenate(nodes)
    span = float(all_nodes.max() - all_nodes.min())
    if sigma is None:
        sigma = 0.01 * span if span > 0 else 1.0
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    grid = np.linspace(all_nodes.min() - 4 * sigma, all_nodes.max() + 4 * sigma, grid_size)
    density = sum(gaussian_density(grid, theta, tau, sigma) for theta, tau in zip(nodes, weights)) / num_probes
    return SpectralDensity(
        torch.from_numpy(grid), torch.from_numpy(density), nodes, weights, float(sigma), used
    )


def gaussian_density(grid: np.ndarray, centers: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    r""":math:`\sum_j w_j \mathcal N(t; c_j, σ^2)` on the grid (the smoothing shared with references).

    >>> float(gaussian_density(np.array([0.0]), np.array([0.0]), np.array([1.0]), 1.0)[0])  # 1/√(2π)
    0.3989422804014327
    """
    z = (grid[:, None] - centers[None, :]) / sigma
    return (np.exp(-0.5 * z**2) / (sigma * np.sqrt(2 * np.pi))) @ weights
