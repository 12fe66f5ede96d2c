"""Power iteration: the baseline agrees with the dense Hessian, and needs more HVPs than Lanczos."""

from __future__ import annotations

import torch

from edgewatch.curvature import HessianOperator, MatrixOperator, lanczos, power_iteration


def test_power_iteration_top_eigenvalue_matches_dense(case):
    op = HessianOperator(case.model, case.loss_fn, case.probe, dtype=torch.float64)
    result = power_iteration(op, k=1, tol=1e-6, max_hvps=2000)
    expected = case.eigenvalues[0]  # positive and dominant in magnitude for both cases
    assert case.eigenvalues[0] > -case.eigenvalues[-1]
    assert result.converged
    assert abs(result.eigenvalues[0] - expected) <= 1e-6 * expected
    lanczos_hvps = lanczos(op, k=1, tol=1e-6).num_hvps
    assert lanczos_hvps < result.num_hvps


def test_deflation_finds_the_next_pairs_in_magnitude():
    spectrum = torch.tensor([6.0, -4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    result = power_iteration(MatrixOperator(q @ torch.diag(spectrum) @ q.T), k=3, tol=1e-8)
    assert result.converged
    torch.testing.assert_close(result.eigenvalues, spectrum[:3], rtol=1e-8, atol=0)


def test_budget_exhaustion_is_reported():
    spectrum = torch.tensor([1.0, 0.999, 0.5], dtype=torch.float64)  # ratio 0.999: slow
    result = power_iteration(MatrixOperator(torch.diag(spectrum)), k=1, tol=1e-10, max_hvps=10)
    assert not result.converged
    assert result.num_hvps == 10
    assert result.residuals[0] > 1e-10 * result.eigenvalues[0]
