"""Bad input gives one clear error, raised at the boundary, that says what to do."""

from __future__ import annotations

import pytest
import torch

import cases
from edgewatch.curvature import HessianOperator, MatrixOperator, hutchinson_trace, lanczos, power_iteration


@pytest.fixture
def model():
    return cases.mlp()


@pytest.fixture
def probe():
    return cases.digits_probe(sizes=(16,))


def test_loss_that_is_not_a_scalar(model, probe):
    per_example = lambda m, batch: torch.nn.functional.cross_entropy(m(batch[0]), batch[1], reduction="none")  # noqa: E731
    op = HessianOperator(model, per_example, probe)
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar tensor, got shape \(16,\) for probe batch 0; reduce it"):
        op(torch.zeros(op.shape[0]))


def test_loss_that_returns_a_float(model, probe):
    op = HessianOperator(model, lambda m, batch: 1.0, probe, method="double_backward")
    with pytest.raises(ValueError, match="got float"):
        op(torch.zeros(op.shape[0]))


def test_loss_with_the_wrong_signature(model, probe):
    with pytest.raises(ValueError, match=r"loss_fn must accept two positional arguments \(model, batch\)"):
        HessianOperator(model, lambda batch: batch, probe)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        HessianOperator(model, "cross_entropy", probe)


def test_empty_probe(model):
    with pytest.raises(ValueError, match="the probe is empty"):
        HessianOperator(model, cases.cross_entropy, [])


def test_single_batch_instead_of_a_list(model, probe):
    with pytest.raises(TypeError, match=r"probe must be a list of batches, got a single Tensor; wrap it: \[batch\]"):
        HessianOperator(model, cases.cross_entropy, probe[0][0])


def test_batch_size_cannot_be_inferred(model):
    with pytest.raises(TypeError, match="pass weights="):
        HessianOperator(model, lambda m, b: m(torch.ones(1, 64)).sum(), [{"scale": 2.0}])


def test_parameters_that_do_not_require_grad(model, probe):
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"parameters \['0.weight'\] do not require grad"):
        HessianOperator(model, cases.cross_entropy, probe, params=["0.weight", "2.weight"])
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter of the model requires grad"):
        HessianOperator(model, cases.cross_entropy, probe)


def test_unknown_parameters(model, probe):
    with pytest.raises(ValueError, match="no parameter named 'fc.weight'"):
        HessianOperator(model, cases.cross_entropy, probe, params=["fc.weight"])
    with pytest.raises(ValueError, match="not a parameter of the model"):
        HessianOperator(model, cases.cross_entropy, probe, params=[torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(TypeError, match="wrap it in a list"):
        HessianOperator(model, cases.cross_entropy, probe, params=model[0].weight)


def test_unknown_method(model, probe):
    with pytest.raises(ValueError, match="method must be one of"):
        HessianOperator(model, cases.cross_entropy, probe, method="jacrev")


def test_vector_of_the_wrong_shape(model, probe):
    op = HessianOperator(model, cases.cross_entropy, probe)
    with pytest.raises(ValueError, match=rf"expected a flat vector of shape \({op.shape[0]},\), got \(3,\)"):
        op(torch.zeros(3))
    with pytest.raises(ValueError, match="expected tensors shaped like the parameters"):
        op([torch.zeros(3)])


def test_k_larger_than_the_dimension():
    op = MatrixOperator(torch.eye(4))
    with pytest.raises(ValueError, match="k must be between 1 and the operator's dimension 4, got 5"):
        lanczos(op, k=5)
    with pytest.raises(ValueError, match="k must be between 1"):
        power_iteration(op, k=5)


def test_solver_arguments():
    op = MatrixOperator(torch.eye(4))
    with pytest.raises(ValueError, match="which must be one of"):
        lanczos(op, which="largest")
    with pytest.raises(ValueError, match="tol must be positive"):
        lanczos(op, tol=0)
    with pytest.raises(ValueError, match="max_hvps=1 is below k=2"):
        lanczos(op, k=2, max_hvps=1)
    with pytest.raises(ValueError, match=r"v0 must have shape \(4,\) or \(4, j\)"):
        lanczos(op, v0=torch.ones(3))
    with pytest.raises(ValueError, match="v0 is zero"):
        lanczos(op, v0=torch.zeros(4))
    with pytest.raises(ValueError, match="num_samples must be at least 2"):
        hutchinson_trace(op, num_samples=1)


def test_loss_detached_from_the_parameters(model, probe):
    op = HessianOperator(model, lambda m, batch: cases.cross_entropy(m, batch).detach(), probe, method="double_backward")
    with pytest.raises(ValueError, match="the loss does not depend on the probed parameters"):
        op(torch.zeros(op.shape[0]))
