"""Hutchinson, Hutch++ and SLQ against the dense Hessian's trace and eigenvalue histogram (seeded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgewatch.curvature import HessianOperator, MatrixOperator, hutchinson_trace, hutchpp_trace, spectral_density
from edgewatch.curvature.density import gaussian_density


def test_hutchinson_within_four_standard_errors(case):
    op = HessianOperator(case.model, case.loss_fn, case.probe, dtype=torch.float64)
    result = hutchinson_trace(op, num_samples=64, seed=0)
    truth = case.hessian.trace().item()
    assert result.num_hvps == 64
    assert result.std_error > 0
    assert abs(result.estimate - truth) <= 4 * result.std_error


def test_hutchinson_standard_error_is_honest():
    """Over 200 seeds about 95% of the ±2σ intervals must cover the true trace."""
    a = torch.diag(torch.linspace(-1.0, 10.0, 50, dtype=torch.float64))
    q, _ = torch.linalg.qr(torch.randn(50, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    op = MatrixOperator(q @ a @ q.T)
    truth = a.trace().item()
    covered = [abs(r.estimate - truth) <= 2 * r.std_error for r in (hutchinson_trace(op, 30, seed=s) for s in range(200))]
    assert 0.88 <= np.mean(covered) <= 0.99


def test_hutchpp_is_within_its_standard_error_on_a_hessian(case):
    op = HessianOperator(case.model, case.loss_fn, case.probe, dtype=torch.float64)
    truth = case.hessian.trace().item()
    results = [hutchpp_trace(op, 48, seed=s) for s in range(5)]
    assert all(abs(r.estimate - truth) <= 4 * r.std_error for r in results)
    assert all(r.num_hvps == 48 for r in results)


def test_hutchpp_beats_hutchinson_when_a_few_eigenvalues_dominate():
    """Hutch++'s O(1/m^2) regime needs a decaying spectrum; the small digits Hessians are too flat
    (their Frobenius norm is spread over hundreds of eigenvalues), a power law is not."""
    spectrum = 100.0 * torch.arange(1, 201, dtype=torch.float64) ** -2.0
    q, _ = torch.linalg.qr(torch.randn(200, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    op = MatrixOperator(q @ torch.diag(spectrum) @ q.T)
    truth = spectrum.sum().item()
    plain = [hutchinson_trace(op, 48, seed=s).estimate - truth for s in range(20)]
    plus = [hutchpp_trace(op, 48, seed=s).estimate - truth for s in range(20)]
    assert np.sqrt(np.mean(np.square(plus))) < 0.2 * np.sqrt(np.mean(np.square(plain)))


def test_slq_density_matches_the_dense_histogram(case):
    op = HessianOperator(case.model, case.loss_fn, case.probe, dtype=torch.float64)
    result = spectral_density(op, num_probes=8, num_steps=40, seed=0)
    eigenvalues = case.eigenvalues.numpy()
    grid = result.grid.numpy()
    truth = gaussian_density(grid, eigenvalues, np.full(len(eigenvalues), 1 / len(eigenvalues)), result.sigma)
    dx = grid[1] - grid[0]
    assert result.density.sum().item() * dx == pytest.approx(1.0, abs=1e-3)
    # The L1 distance between densities lies in [0, 2]; 8 probes of 40 steps get within 0.25.
    l1 = np.abs(result.density.numpy() - truth).sum() * dx
    assert l1 < 0.25, l1
    # Quadrature reproduces the first moment: n Σ τ θ estimates the trace (Hutchinson in disguise).
    n = op.shape[0]
    traces = [n * float(np.dot(tau, theta)) for tau, theta in zip(result.weights, result.nodes)]
    spread = np.std(traces, ddof=1) / np.sqrt(len(traces))
    assert abs(np.mean(traces) - np.trace(case.hessian.numpy())) <= 4 * spread
    # Every probe's extreme node is inside the true spectrum (Ritz values interlace).
    for theta in result.nodes:
        assert eigenvalues.min() - 1e-9 <= theta.min() and theta.max() <= eigenvalues.max() + 1e-9
    assert result.num_hvps == 8 * 40


def test_slq_in_float32_keeps_the_bulk_beside_large_outliers():
    """Three outliers far above a narrow bulk: float32 rounding must not end the quadrature early."""
    spectrum = torch.cat([torch.tensor([1000.0, 400.0, 100.0]), torch.linspace(0.0, 0.3, 297)])
    q, _ = torch.linalg.qr(torch.randn(300, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    matrix = (q @ torch.diag(spectrum.double()) @ q.T).float()
    result = spectral_density(MatrixOperator(matrix), num_probes=2, num_steps=40, sigma=0.05)
    assert result.num_hvps == 80
    for theta, tau in zip(result.nodes, result.weights):
        in_bulk = (theta > -0.01) & (theta < 0.31)
        assert in_bulk.sum() >= 30
        assert tau[in_bulk].sum() == pytest.approx(297 / 300, abs=0.1)  # the bulk holds 99% of the mass


def test_slq_stops_at_an_invariant_subspace():
    """Fewer distinct eigenvalues than steps: the Krylov space closes and quadrature is exact."""
    op = MatrixOperator(torch.diag(torch.tensor([1.0, 1.0, 3.0, 3.0, 5.0], dtype=torch.float64)))
    result = spectral_density(op, num_probes=2, num_steps=5, sigma=0.1)
    for theta, tau in zip(result.nodes, result.weights):
        assert len(theta) == 3
        np.testing.assert_allclose(theta, [1.0, 3.0, 5.0], atol=1e-12)
        assert tau.sum() == pytest.approx(1.0)
