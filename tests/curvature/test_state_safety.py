"""Watching changes nothing: every operator and solver call leaves the model and the RNG as they were."""

from __future__ import annotations

import pytest
import torch

import cases
from edgewatch.curvature import (
    HessianOperator,
    hutchinson_trace,
    hutchpp_trace,
    lanczos,
    power_iteration,
    spectral_density,
)

METHODS = [
    pytest.param({"method": "auto"}, id="auto"),
    pytest.param({"method": "double_backward", "reuse_graph": True}, id="double_backward-reuse"),
    pytest.param({"method": "double_backward", "reuse_graph": False}, id="double_backward"),
    pytest.param({"method": "forward_over_reverse"}, id="forward_over_reverse"),
    pytest.param({"method": "finite_difference"}, id="finite_difference"),
]


def snapshot(model: torch.nn.Module) -> dict:
    """Everything of the model and the process a training run could observe."""
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "modes": [m.training for m in model.modules()],
        "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "grad_enabled": torch.is_grad_enabled(),
    }


def assert_unchanged(before: dict, after: dict) -> None:
    for name, value in before["params"].items():
        assert torch.equal(value, after["params"][name]), f"parameter {name} changed"
    assert before["requires_grad"] == after["requires_grad"]
    for name, grad in before["grads"].items():
        if grad is None:
            assert after["grads"][name] is None, f".grad of {name} was written"
        else:
            assert torch.equal(grad, after["grads"][name]), f".grad of {name} changed"
    for name, value in before["buffers"].items():
        assert torch.equal(value, after["buffers"][name]), f"buffer {name} changed"
    assert before["modes"] == after["modes"], "a submodule's train/eval mode changed"
    assert torch.equal(before["cpu_rng"], after["cpu_rng"]), "the global CPU RNG advanced"
    assert all(torch.equal(a, b) for a, b in zip(before["cuda_rng"], after["cuda_rng"]))
    assert before["grad_enabled"] == after["grad_enabled"]


def prepared_model(mode: str) -> torch.nn.Module:
    """A CNN with BatchNorm and dropout, with history: trained a step, some .grad set, mixed modes."""
    model = cases.cnn_bn(dropout=0.3)
    probe = cases.digits_probe(sizes=(32,), images=True)
    cases.cross_entropy(model, probe[0]).backward()  # BN stats move, num_batches_tracked = 1
    model[-1].weight.grad = None  # one parameter without .grad, the others with
    model.train(mode == "train")
    if mode == "train":
        model[1].eval()  # a frozen BatchNorm inside a training model
    return model


# What is checked is the model's state, not the products: finite differences through this ReLU CNN's
# kinks are coarse, and the operator says so.
@pytest.mark.filterwarnings("ignore:finite-difference products of")
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("options", METHODS)
def test_operator_and_solvers_leave_everything_unchanged(mode, options, context):
    model = prepared_model(mode)
    probe = cases.digits_probe(sizes=(24, 16), images=True)
    before = snapshot(model)
    with context():  # callers inside no_grad (or a trainer's inference_mode) still get HVPs
        op = HessianOperator(model, cases.cross_entropy, probe, **options)
        v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0))
        first = op(v)
        op(op.unflatten(v))
        lanczos(op, k=2, max_hvps=12)
        power_iteration(op, k=1, max_hvps=5)
        hutchinson_trace(op, num_samples=3)
        hutchpp_trace(op, num_hvps=6)
        spectral_density(op, num_probes=1, num_steps=4)
        second = op(v)
    assert_unchanged(before, snapshot(model))
    # One seed per operator: every product sees the same dropout masks.
    assert torch.equal(first, second)


@pytest.mark.filterwarnings("ignore:finite-difference products of")
@pytest.mark.parametrize("options", METHODS)
def test_dropout_is_active_in_train_mode_probes_and_seeded(options):
    model = prepared_model("train")
    probe = cases.digits_probe(sizes=(24,), images=True)
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0))
    a = HessianOperator(model, cases.cross_entropy, probe, seed=0, **options)(v)
    b = HessianOperator(model, cases.cross_entropy, probe, seed=0, **options)(v)
    c = HessianOperator(model, cases.cross_entropy, probe, seed=1, **options)(v)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)  # other masks, other Hessian: dropout really is in the probe


def test_batchnorm_uses_batch_statistics_in_train_probes():
    """train=True probes the loss being optimized (batch statistics), train=False the eval loss."""
    model = prepared_model("eval")
    probe = cases.digits_probe(sizes=(24,), images=True)
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0))
    train_probe = HessianOperator(model, cases.cross_entropy, probe, train=True, dtype=torch.float64)(v)
    eval_probe = HessianOperator(model, cases.cross_entropy, probe, train=False, dtype=torch.float64)(v)
    model.eval()
    dense_eval = cases.dense_hessian(model, cases.cross_entropy, probe, train=False) @ v.double()
    assert torch.allclose(eval_probe, dense_eval, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(train_probe, eval_probe)


def test_train_none_keeps_a_frozen_batchnorm_frozen():
    """A BatchNorm kept in eval mode while training: train=None probes that loss, train=True does not."""
    model = prepared_model("train")  # model[1] is a BatchNorm in eval mode
    probe = cases.digits_probe(sizes=(24,), images=True)
    model[-2].p = 0.0  # no dropout, so the dense reference can be compared exactly
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    as_is = HessianOperator(model, cases.cross_entropy, probe, train=None, dtype=torch.float64)(v)
    all_train = HessianOperator(model, cases.cross_entropy, probe, train=True, dtype=torch.float64)(v)
    assert model[1].training is False
    dense = _dense_mixed_modes(model, probe) @ v
    assert torch.allclose(as_is, dense, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(all_train, dense, rtol=1e-3)


def _dense_mixed_modes(model, probe):
    """Dense Hessian with each module in the mode it has now (BatchNorm stats read, not written)."""
    import copy

    model64 = copy.deepcopy(model).double()
    for module, original in zip(model64.modules(), model.modules()):
        module.training = original.training
    names = [n for n, _ in model64.named_parameters()]
    shapes = [p.shape for p in model64.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model64.parameters()])

    def loss(theta):
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = theta[start : start + shape.numel()].view(shape)
            start += shape.numel()
        buffers = {n: b.clone() for n, b in model64.named_buffers()}
        x, y = probe[0]
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model64, {**params, **buffers}, (x.double(),)), y)

    return torch.autograd.functional.hessian(loss, flat)


def test_autocast_does_not_reach_the_probe():
    model, probe = cases.mlp(), cases.digits_probe()
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0))
    plain = HessianOperator(model, cases.cross_entropy, probe, method="double_backward")(v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = HessianOperator(model, cases.cross_entropy, probe, method="double_backward")(v)
    assert torch.equal(plain, under_autocast)


def test_state_is_restored_when_the_loss_raises():
    model = prepared_model("train")
    probe = cases.digits_probe(sizes=(24,), images=True)
    before = snapshot(model)

    def failing_loss(m, batch):
        cases.cross_entropy(m, batch)  # the forward pass runs (dropout draws, BN in train mode)
        raise RuntimeError("user code failed")

    op = HessianOperator(model, failing_loss, probe, method="double_backward")
    with pytest.raises(RuntimeError, match="user code failed"):
        op(torch.zeros(op.shape[0]))
    assert_unchanged(before, snapshot(model))
