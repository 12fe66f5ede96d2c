"""Streamed eigenpairs: refine() against scipy's eigsh and dense float64 Hessians, and the
curvature probe's streamed points against full solves on the same parameters."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg
import torch

import cases
from edgewatch.curvature import HessianOperator, MatrixOperator, lanczos, refine
from edgewatch.hooks.config import CurvatureConfig
from edgewatch.hooks.meters.curvature import CurvatureMeter


def spectrum_matrix(n=200, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eigenvalues = np.concatenate([[10.0, 8.0, 7.5], rng.uniform(-2.0, 5.0, n - 3)])
    return torch.tensor((q * eigenvalues) @ q.T), q[:, 0]


@pytest.mark.parametrize("angle", [0.01, 0.1, 0.3])
def test_refine_is_a_lower_bound_within_its_residual_of_the_top_eigenvalue(angle):
    a, top = spectrum_matrix()
    reference = scipy.sparse.linalg.eigsh(a.numpy(), k=1, which="LA", tol=1e-12)[0][0]
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(len(top))
    noise -= noise @ top * top
    kept = np.cos(angle) * top + np.sin(angle) * noise / np.linalg.norm(noise)
    for steps in (1, 2, 4):
        result = refine(MatrixOperator(a), torch.tensor(kept), steps=steps, tol=1e-12)
        value, residual = result.eigenvalues.item(), result.residuals.item()
        y = result.eigenvectors[:, 0]
        assert result.num_hvps == steps
        assert value <= reference + 1e-12  # a Ritz value never exceeds λ_1
        assert residual == pytest.approx(torch.linalg.vector_norm(a @ y - value * y).item(), rel=1e-6, abs=1e-12)
        # some eigenvalue lies within the residual; here the nearest is λ_1 itself
        assert reference - value <= residual
    one, two = (refine(MatrixOperator(a), torch.tensor(kept), steps=s, tol=1e-12).eigenvalues.item() for s in (1, 2))
    assert one == pytest.approx(float(kept @ a.numpy() @ kept), rel=1e-12)  # m = 1: the Rayleigh quotient
    assert two >= one


def test_refine_stops_at_the_first_step_that_meets_tol():
    a, top = spectrum_matrix()
    result = refine(MatrixOperator(a), torch.tensor(top), steps=6, tol=1e-6)
    assert result.num_hvps == 1 and result.converged


def test_refine_refuses_bad_vectors():
    a, _ = spectrum_matrix(n=10)
    with pytest.raises(ValueError, match="finite, nonzero"):
        refine(MatrixOperator(a), torch.zeros(10, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        refine(MatrixOperator(a), torch.ones(9, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 1"):
        refine(MatrixOperator(a), torch.ones(10, dtype=torch.float64), steps=0)


def trained_mlp(steps: int, lr: float = 0.2):
    torch.manual_seed(0)
    model = cases.mlp(seed=0, dtype=torch.float64)
    probe = [(x.double(), y) for x, y in cases.digits_probe(sizes=(64, 32))]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        cases.cross_entropy(model, probe[0]).backward()
        optimizer.step()
    return model, optimizer, probe


def test_streamed_points_track_the_dense_hessian_between_full_solves():
    model, optimizer, probe = trained_mlp(0)
    curvature = CurvatureMeter(model, optimizer, cases.cross_entropy, probe, CurvatureConfig(tol=1e-8, max_hvps=200))
    full = curvature.measure()
    assert full["curvature/streamed"] == 0.0
    batch = probe[0]
    for _ in range(6):  # the top eigenvector moves little between a few steps
        for _ in range(3):
            optimizer.zero_grad()
            cases.cross_entropy(model, batch).backward()
            optimizer.step()
        streamed = curvature.measure(streamed=True)
        dense = torch.linalg.eigvalsh(cases.dense_hessian(model, cases.cross_entropy, probe))[-1].item()
        assert streamed["curvature/streamed"] == 1.0
        assert streamed["curvature/hvps"] <= curvature.stream_hvps
        value, residual = streamed["curvature/lambda_max"], streamed["curvature/lambda_max_residual"]
        assert value <= dense + 1e-10 and dense - value <= residual
        assert abs(value - dense) <= 0.02 * dense
        assert streamed["curvature/stability_ratio"] == pytest.approx(0.2 * value / 2)


def test_a_streamed_point_escalates_to_a_full_solve_when_the_kept_vector_is_useless():
    model, optimizer, probe = trained_mlp(5)
    curvature = CurvatureMeter(model, optimizer, cases.cross_entropy, probe, CurvatureConfig(tol=1e-8, max_hvps=200))
    curvature.measure()
    rng = torch.Generator().manual_seed(3)
    curvature.vectors = torch.randn(curvature.vectors.shape, generator=rng, dtype=torch.float64)
    escalated = curvature.measure(streamed=True)
    dense = torch.linalg.eigvalsh(cases.dense_hessian(model, cases.cross_entropy, probe))[-1].item()
    assert escalated["curvature/streamed"] == 0.0 and escalated["curvature/converged"] == 1.0
    assert escalated["curvature/lambda_max"] == pytest.approx(dense, rel=1e-6)
    # Without permission to escalate: marked unconverged, with its residual, and no value reported
    # (one HVP from a random vector is nowhere near λ_1).
    curvature.vectors = torch.randn(curvature.vectors.shape, generator=rng, dtype=torch.float64)
    curvature.stream_hvps = 1
    kept = curvature.measure(streamed=True, escalate=False)
    assert kept["curvature/streamed"] == 1.0 and kept["curvature/converged"] == 0.0
    assert kept["curvature/lambda_max_residual"] > 0.05 * dense
    assert "curvature/lambda_max" not in kept and "curvature/stability_ratio" not in kept


def test_streamed_preconditioned_sharpness_matches_a_full_solve_for_adam():
    torch.manual_seed(0)
    model = cases.mlp(seed=0, dtype=torch.float64)
    probe = [(x.double(), y) for x, y in cases.digits_probe(sizes=(64,))]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    curvature = CurvatureMeter(model, optimizer, cases.cross_entropy, probe, CurvatureConfig(tol=1e-8, max_hvps=200))
    for step in range(40):
        optimizer.zero_grad()
        cases.cross_entropy(model, probe[0]).backward()
        optimizer.step()
        if step == 36:
            curvature.measure()
    streamed = curvature.measure(streamed=True)
    from edgewatch.optimizers import preconditioned_operator

    operator, _ = preconditioned_operator(HessianOperator(model, cases.cross_entropy, probe), optimizer)
    reference = lanczos(operator, k=1, tol=1e-10, max_hvps=400).eigenvalues.item()
    assert streamed["curvature/precond/streamed"] == 1.0
    assert abs(streamed["curvature/precond/lambda_max"] - reference) <= 0.02 * reference


def test_the_first_preconditioned_point_streams_from_the_hessians_vector_when_it_may_not_escalate():
    """Adam has no preconditioner at step 0, so the first streamed point has no kept vector of its
    own: it refines H's top vector (a few HVPs) instead of running the full solve nobody paid for."""
    torch.manual_seed(0)
    model = cases.mlp(seed=0, dtype=torch.float64)
    probe = [(x.double(), y) for x, y in cases.digits_probe(sizes=(64,))]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    curvature = CurvatureMeter(model, optimizer, cases.cross_entropy, probe, CurvatureConfig(tol=1e-8, max_hvps=200))
    at_zero = curvature.measure()
    assert "curvature/precond/lambda_max" not in at_zero and curvature.preconditioned_vectors is None
    for _ in range(3):
        optimizer.zero_grad()
        cases.cross_entropy(model, probe[0]).backward()
        optimizer.step()
    streamed = curvature.measure(streamed=True, escalate=False)
    assert streamed["curvature/precond/streamed"] == 1.0
    assert streamed["curvature/precond/hvps"] <= curvature.stream_hvps
    assert curvature.preconditioned_vectors is not None  # the next point refines its own vector
    if streamed["curvature/precond/converged"] == 1.0:  # a value is reported only when trustworthy
        from edgewatch.optimizers import preconditioned_operator

        operator, _ = preconditioned_operator(HessianOperator(model, cases.cross_entropy, probe), optimizer)
        reference = lanczos(operator, k=1, tol=1e-10, max_hvps=400).eigenvalues.item()
        assert reference - streamed["curvature/precond/lambda_max"] <= streamed["curvature/precond/lambda_max_residual"]
    else:
        assert "curvature/precond/lambda_max" not in streamed
