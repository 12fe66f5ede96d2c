"""Lanczos: eigenpairs against the dense float64 Hessian, against scipy's eigsh, and its honesty."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg
import torch
from threadpoolctl import threadpool_limits

import cases
from edgewatch.curvature import HessianOperator, MatrixOperator, as_scipy_operator, lanczos
from edgewatch.curvature._krylov import LanczosProcess


def test_top5_float64_matches_dense_to_1e8(case):
    op = HessianOperator(case.model, case.loss_fn, case.probe, dtype=torch.float64)
    result = lanczos(op, k=5, tol=1e-10)
    assert result.converged
    expected = case.eigenvalues[:5]
    assert torch.all((result.eigenvalues - expected).abs() <= 1e-8 * expected.abs())
    # Ritz vectors are eigenvectors of the dense Hessian, and the reported residuals are true ones.
    y = result.eigenvectors
    true_residuals = (case.hessian @ y - y * result.eigenvalues).norm(dim=0)
    assert torch.all(true_residuals <= 1e-10 * expected.abs() + 1e-13)
    assert torch.allclose(y.T @ y, torch.eye(5, dtype=torch.float64), atol=1e-12)
    # + 2: an operator's first solve also measures its rounding noise (hvp_noise), which the
    # operator counts and the result, whose count is the Krylov steps, does not.
    assert result.num_hvps == op.num_hvps - 2 < 100


def test_top5_float32_matches_dense_to_1e4(case):
    op = HessianOperator(case.model, case.loss_fn, case.probe)
    result = lanczos(op, k=5, tol=1e-5)
    assert result.converged
    assert result.eigenvectors.dtype == torch.float32
    expected = case.eigenvalues[:5]
    assert torch.all((result.eigenvalues - expected).abs() <= 1e-4 * expected.abs())


def test_matches_scipy_eigsh(case):
    op = HessianOperator(case.model, case.loss_fn, case.probe, dtype=torch.float64)
    with threadpool_limits(limits=1, user_api="blas"):
        reference = scipy.sparse.linalg.eigsh(as_scipy_operator(op), k=5, which="LA", tol=1e-12)[0][::-1]
    ours = lanczos(op, k=5, tol=1e-10).eigenvalues.numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-8)


def test_most_negative_eigenvalues_match_dense(case):
    op = HessianOperator(case.model, case.loss_fn, case.probe, dtype=torch.float64)
    result = lanczos(op, k=3, which="SA", tol=1e-10, max_hvps=300)
    assert result.converged
    expected = case.eigenvalues.flip(0)[:3]  # most negative first
    assert expected[0] < 0
    assert torch.all((result.eigenvalues - expected).abs() <= 1e-8 * expected.abs())


SPECTRUM = torch.tensor([9.0, 7.0, 4.0, 2.0, 0.5, -1.0, -6.0, -8.0], dtype=torch.float64)


def rotated(spectrum: torch.Tensor, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(spectrum), len(spectrum), dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q @ torch.diag(spectrum) @ q.T


@pytest.mark.parametrize(
    "which, expected",
    [("LA", [9.0, 7.0, 4.0]), ("SA", [-8.0, -6.0, -1.0]), ("LM", [9.0, -8.0, 7.0]), ("BE", [9.0, 7.0, -8.0])],
)
def test_which_selects_and_orders_as_documented(which, expected):
    result = lanczos(MatrixOperator(rotated(SPECTRUM)), k=3, which=which, tol=1e-12)
    assert result.converged
    np.testing.assert_allclose(result.eigenvalues.numpy(), expected, rtol=1e-10)


def test_full_dimension_is_exact():
    result = lanczos(MatrixOperator(rotated(SPECTRUM)), k=8, tol=1e-12)
    assert result.converged and result.num_hvps == 8
    np.testing.assert_allclose(result.eigenvalues.numpy(), SPECTRUM.numpy(), rtol=1e-12, atol=1e-12)


def test_warm_start_without_overlap_with_the_new_top_still_finds_it():
    """After a crossing: the previous top vector is an eigenvector of 10, the new top is 12."""
    n = 20000
    spectrum = torch.cat([torch.tensor([12.0, 10.0]), torch.linspace(0.0, 9.5, n - 2)]).double()
    old_top = torch.zeros(n, dtype=torch.float64)
    old_top[1] = 1.0
    result = lanczos(MatrixOperator(torch.diag(spectrum).to_sparse()), k=1, v0=old_top)
    assert result.converged
    assert result.eigenvalues[0].item() == pytest.approx(12.0, rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_eigenvalues_converge_at_the_rounding_floor(dtype):
    spectrum = torch.cat([torch.linspace(1.0, 50.0, 50), torch.zeros(150)]).to(dtype)
    q, _ = torch.linalg.qr(torch.randn(200, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    matrix = (q @ torch.diag(spectrum.double()) @ q.T).to(dtype)
    result = lanczos(MatrixOperator(matrix), k=1, which="SA", tol=1e-8)
    assert result.converged and result.num_hvps < 100
    assert abs(result.eigenvalues[0].item()) <= (1e-4 if dtype == torch.float32 else 1e-12)


def test_start_on_a_lower_eigenvector_still_finds_the_top():
    """An exact invariant subspace (breakdown) must not be mistaken for convergence to the top."""
    a = torch.diag(torch.tensor([5.0, 3.0, 1.0, 0.5, 0.2], dtype=torch.float64))
    e2 = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    result = lanczos(MatrixOperator(a), k=1, v0=e2, tol=1e-10)
    assert result.converged
    assert result.eigenvalues[0].item() == pytest.approx(5.0, rel=1e-10)


def test_repeated_top_eigenvalue_is_not_missed_by_verification():
    """Eigenvalue 5 three times over (and 3 six times), k = 3: copies climb slowly from a random
    direction, so verification runs until that direction's own top pair has settled (a fixed
    three-step check answered [5, 5, 3] as converged for a few seeds in a hundred)."""
    spectrum = torch.tensor([5.0] * 3 + [3.0] * 6 + [1.0] * 5 + [0.0] * 3 + [-2.0] * 3, dtype=torch.float64)
    wrong = []
    for seed in range(150):
        result = lanczos(MatrixOperator(rotated(spectrum, seed=seed)), k=3, tol=1e-4, seed=seed)
        if result.converged and not torch.allclose(result.eigenvalues, spectrum[:3], rtol=1e-3):
            wrong.append(seed)
    assert wrong == []


def test_repeated_eigenvalues_are_all_found():
    """A linear model with 4 outputs under MSE: H = I_4 ⊗ Σ, every eigenvalue four times over.

    One Krylov space sees each distinct eigenvalue once; the verification restart finds the copies.
    """
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4, bias=False).double()
    batch = (torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 4, dtype=torch.float64))
    loss = lambda m, b: 0.5 * (m(b[0]) - b[1]).pow(2).sum(-1).mean()  # noqa: E731
    op = HessianOperator(model, loss, [batch])
    expected = torch.linalg.eigvalsh(cases.dense_hessian(model, loss, [batch])).flip(0)
    result = lanczos(op, k=5, tol=1e-8)
    assert result.converged
    torch.testing.assert_close(result.eigenvalues, expected[:5], rtol=1e-8, atol=0)
    assert torch.allclose(expected[:4], expected[0].expand(4), rtol=1e-12)  # really repeated


@pytest.mark.parametrize(
    "matrix, expected",
    [
        (torch.eye(300, dtype=torch.float64), 1.0),
        (torch.zeros(300, 300, dtype=torch.float64), 0.0),
        (torch.diag(torch.cat([torch.tensor([5.0, 3.0, 1.0]), torch.zeros(297)]).double()), 5.0),
    ],
    ids=["identity", "zero", "rank3"],
)
def test_low_rank_and_degenerate_operators_converge_quickly(matrix, expected):
    result = lanczos(MatrixOperator(matrix), k=1, tol=1e-8)
    assert result.converged and result.num_hvps <= 10
    assert result.eigenvalues[0].item() == pytest.approx(expected, abs=1e-12)


def test_clustered_spectrum_converges_or_says_it_has_not(mlp_case):
    """An MLP at initialization with a small output layer: eigenvalues 4 to 10 lie within 8%.

    For every budget the solver either reports convergence, and then every eigenvalue is within
    the tolerance of the dense one, or reports that it has not, with residuals that show it.
    """
    model = cases.mlp()
    with torch.no_grad():
        model[2].weight.mul_(0.1)
        model[2].bias.zero_()
    probe = mlp_case.probe
    dense = cases.dense_hessian(model, cases.cross_entropy, probe)
    expected = torch.linalg.eigvalsh(dense).flip(0)[:8]
    assert (expected[3] - expected[7]) / expected[3] < 0.08  # the case really is clustered
    op = HessianOperator(model, cases.cross_entropy, probe, dtype=torch.float64)
    tol = 1e-6
    outcomes = []
    for budget in (8, 24, 48, 96, 200):
        result = lanczos(op, k=8, tol=tol, max_hvps=budget)
        y = result.eigenvectors
        true_residuals = (dense @ y - y * result.eigenvalues).norm(dim=0)
        # The reported residuals are the real ones (up to rounding).
        assert torch.allclose(result.residuals, true_residuals, rtol=1e-6, atol=1e-12)
        if result.converged:
            assert torch.all(result.residuals <= tol * result.eigenvalues.abs())
            assert torch.all((result.eigenvalues - expected).abs() <= tol * expected.abs())
        else:
            assert torch.any(result.residuals > tol * result.eigenvalues.abs())
        outcomes.append(result.converged)
    assert outcomes[0] is False and outcomes[-1] is True  # both branches exercised


def _slowly_decaying(seed: int, n: int = 400) -> tuple[torch.Tensor, np.ndarray]:
    """A spectrum like a network's: a few separated values on top, then a dense cluster."""
    g = np.random.default_rng(seed)
    lam = np.sort(g.gamma(0.5, 1.0, n))[::-1] * (1 + 0.1 * g.standard_normal(n))
    q, _ = np.linalg.qr(g.standard_normal((n, n)))
    return torch.tensor((q * lam) @ q.T), np.sort(lam)[::-1]


@pytest.mark.parametrize("seed", [3, 11, 12, 21, 22])
def test_top5_converges_after_its_verification_restart(seed):
    """Verification mixes a random direction into the Ritz pairs, which can push the k-th residual
    back above tol. These seeds spent the whole 100-HVP budget when the solver went on along the
    verification direction instead of the one set aside, or verified a tight cluster forever."""
    matrix, expected = _slowly_decaying(seed)
    result = lanczos(MatrixOperator(matrix), k=5, tol=1e-2, seed=seed)
    assert result.converged and result.num_hvps <= 60
    assert np.all(np.abs(result.eigenvalues.numpy() - expected[:5]) <= 1e-2 * expected[:5])


def test_steer_resumes_the_direction_set_aside_at_a_restart():
    """After a restart, steering back lets the top pair converge about as fast as if there had been
    no restart; going on along the random direction leaves its residual where it was."""
    matrix, expected = _slowly_decaying(0, n=200)
    op = MatrixOperator(matrix)
    start = torch.randn(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain, steered, wandering = (LanczosProcess(op, start, generator=torch.Generator().manual_seed(1)) for _ in range(3))
    for process in (plain, steered, wandering):
        for _ in range(8):
            process.step()
    for process in (steered, wandering):
        assert process.restart()
        process.step()  # one step along the random direction
    steers = 0
    for _ in range(14):
        plain.step()
        wandering.step()
        theta, _, _ = steered.ritz()
        top = np.array([len(theta) - 1])
        switched = steered.steer(top, np.array([1e-8]))
        assert not (switched and steered.steer(top, np.array([1e-8])))  # not twice without a step
        steers += switched
        steered.step()
    assert 1 <= steers <= 7  # it steers while the set-aside part matters, then plain Lanczos again
    top = {name: (theta[-1], residuals[-1]) for name, (theta, _, residuals) in
           {"plain": plain.ritz(), "steered": steered.ritz(), "wandering": wandering.ritz()}.items()}
    # Measured: residuals 9e-12 (no restart), 2e-10 (steered, 5 switches), 0.11 (wandering).
    assert top["steered"][1] <= 100 * top["plain"][1]
    assert top["wandering"][1] >= 1e6 * top["steered"][1]
    assert top["steered"][0] == pytest.approx(expected[0], rel=1e-12)


def test_warm_start_reconverges_in_fewer_hvps_after_a_step(mlp_case):
    model = cases.mlp()
    probe = mlp_case.probe
    op = HessianOperator(model, cases.cross_entropy, probe)
    first = lanczos(op, k=1, tol=1e-4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cases.cross_entropy(model, probe[0]).backward()
    optimizer.step()
    cold = lanczos(op, k=1, tol=1e-4, seed=1)
    warm = lanczos(op, k=1, tol=1e-4, v0=first.eigenvectors)
    assert cold.converged and warm.converged
    assert warm.eigenvalues[0].item() == pytest.approx(cold.eigenvalues[0].item(), rel=1e-4)
    assert warm.num_hvps < cold.num_hvps


def test_nonfinite_operator_gives_nan_result_not_a_crash():
    a = torch.diag(torch.tensor([1.0, float("nan"), 2.0]))
    result = lanczos(MatrixOperator(a), k=1)
    assert not result.converged and torch.isnan(result.eigenvalues).all()


def test_no_host_state_leaks_into_the_global_rng():
    state = torch.get_rng_state()
    lanczos(MatrixOperator(rotated(SPECTRUM)), k=2)
    assert torch.equal(torch.get_rng_state(), state)
