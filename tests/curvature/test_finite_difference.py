"""method="finite_difference": accuracy against double backward, an honest error bound, and a model
left bit for bit as it was (parameters, .grad, buffers, RNG), also when the loss raises mid-product."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cases
from edgewatch.curvature import HessianOperator, lanczos
from edgewatch.curvature.noise import hvp_noise


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def unit_vectors(n: int, dtype: torch.dtype, count: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    vectors = [torch.randn(n, dtype=dtype, generator=generator) for _ in range(count)]
    return [v / v.norm() for v in vectors]


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-6), (torch.float32, 1e-2)])
def test_products_match_double_backward(dtype, tolerance):
    model, probe = cases.mlp(dtype=dtype), cases.digits_probe()
    fd = HessianOperator(model, cases.cross_entropy, probe, method="finite_difference")
    exact = HessianOperator(model, cases.cross_entropy, probe, method="double_backward")
    errors = [relative_error(fd(v), exact(v)) for v in unit_vectors(fd.shape[0], dtype)]
    assert max(errors) < tolerance
    # The error the operator estimated for itself, doubled as hvp_noise does, covers the true one.
    assert fd.fd_error is not None and max(errors) <= 2 * fd.fd_error


def test_float32_lambda_1_within_its_residual_of_the_dense_value():
    model, probe = cases.mlp(), cases.digits_probe()
    exact = float(torch.linalg.eigvalsh(cases.dense_hessian(model, cases.cross_entropy, probe))[-1])
    op = HessianOperator(model, cases.cross_entropy, probe, method="finite_difference")
    result = lanczos(op, k=1)
    assert abs(float(result.eigenvalues[0]) - exact) <= float(result.residuals[0])
    assert hvp_noise(op) >= 2 * op.fd_error  # the residual's noise floor includes the FD error


def test_the_noise_measurement_alone_misses_the_truncation_error():
    """v and 3v are differenced over the same displacement: without the floor ρ would be far too small."""
    op = HessianOperator(cases.mlp(dtype=torch.float64), cases.cross_entropy, cases.digits_probe(), method="finite_difference")
    level = hvp_noise(op)
    assert op.fd_error > 1e3 * torch.finfo(torch.float64).eps
    assert level == pytest.approx(2 * op.fd_error)


def test_exact_methods_have_no_fd_error():
    op = HessianOperator(cases.mlp(), cases.cross_entropy, cases.digits_probe(), method="double_backward")
    op(torch.ones(op.shape[0]))
    assert op.fd_error is None


def test_parameters_grads_and_versions_are_left_bit_for_bit():
    model, probe = cases.mlp(), cases.digits_probe()
    model[0].weight.grad = torch.full_like(model[0].weight, 0.5)  # one .grad set, the others None
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    versions = [p._version for p in model.parameters()]
    op = HessianOperator(model, cases.cross_entropy, probe, method="finite_difference")
    for v in unit_vectors(op.shape[0], torch.float32):
        op(v)
    lanczos(op, k=2, max_hvps=10)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
        assert (p.grad is None) if grads[name] is None else torch.equal(p.grad, grads[name]), name
    assert [p._version for p in model.parameters()] == versions


def test_a_graph_the_caller_built_survives_a_product():
    """The shift is undone before anyone runs: a pending backward over θ must not see it."""
    model, probe = cases.mlp(), cases.digits_probe()
    loss = cases.cross_entropy(model, probe[0])
    op = HessianOperator(model, cases.cross_entropy, probe, method="finite_difference")
    op(unit_vectors(op.shape[0], torch.float32, 1)[0])
    loss.backward()
    reference = cases.mlp()
    cases.cross_entropy(reference, probe[0]).backward()
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(model.parameters(), reference.parameters()))


@pytest.mark.parametrize("failing_call", [1, 2])
def test_parameters_restored_when_the_loss_raises_mid_product(failing_call):
    """Call 1 runs at θ + εv, call 2 at θ - εv: the copy taken before restores θ from either."""
    model, probe = cases.mlp(), cases.digits_probe(sizes=(50,))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        if len(calls) == failing_call:
            raise RuntimeError("user code failed")
        return cases.cross_entropy(m, batch)

    op = HessianOperator(model, loss_fn, probe, method="finite_difference")
    with pytest.raises(RuntimeError, match="user code failed"):
        op(unit_vectors(op.shape[0], torch.float32, 1)[0])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_dropout_masks_are_the_same_in_both_gradients_and_every_product():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 24), nn.Tanh(), nn.Dropout(0.3), nn.Linear(24, 10)).double()
    probe = cases.digits_probe()
    rng = torch.get_rng_state()
    fd = HessianOperator(model, cases.cross_entropy, probe, method="finite_difference")
    exact = HessianOperator(model, cases.cross_entropy, probe, method="double_backward")
    v = unit_vectors(fd.shape[0], torch.float64, 1)[0]
    first = fd(v)
    assert torch.equal(first, fd(v))
    # Other masks in the two gradients would leave an O(1/ε) error, not 1e-6.
    assert relative_error(first, exact(v)) < 1e-6
    assert torch.equal(rng, torch.get_rng_state())


def test_float64_probe_of_a_float32_model_shifts_private_copies():
    model, probe = cases.mlp(), cases.digits_probe()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fd = HessianOperator(model, cases.cross_entropy, probe, method="finite_difference", dtype=torch.float64)
    exact = HessianOperator(model, cases.cross_entropy, probe, method="double_backward", dtype=torch.float64)
    v = unit_vectors(fd.shape[0], torch.float64, 1)[0]
    assert relative_error(fd(v), exact(v)) < 1e-6
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_zero_vector_gives_zero_without_a_gradient():
    def loss_fn(m, batch):
        raise AssertionError("no gradient is needed for H·0")

    op = HessianOperator(cases.mlp(), loss_fn, cases.digits_probe(), method="finite_difference")
    assert torch.equal(op(torch.zeros(op.shape[0])), torch.zeros(op.shape[0]))
    assert op.fd_error is None


class _FusedTanhBackward(torch.autograd.Function):
    """The backward kernel of :class:`_FusedTanh`, without a derivative of its own."""

    @staticmethod
    def forward(ctx, grad, y):
        return grad * (1 - y * y)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("derivative for fused_tanh_backward is not implemented")


class _FusedTanh(torch.autograd.Function):
    """tanh with a backward that cannot be differentiated again, as fused kernels often are."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return _FusedTanhBackward.apply(grad, y)


class _FusedTanhModule(nn.Module):
    def forward(self, x):
        return _FusedTanh.apply(x)


def test_auto_falls_back_to_finite_differences_without_double_backward():
    from edgewatch.curvature import hessian as hessian_module

    hessian_module._AUTO_CHOICES.clear()
    model, probe = cases.mlp(dtype=torch.float64), cases.digits_probe()
    reference = HessianOperator(model, cases.cross_entropy, probe, method="double_backward")
    v = unit_vectors(reference.shape[0], torch.float64, 1)[0]
    expected = reference(v)
    model[1] = _FusedTanhModule()  # the same function, now without double backward
    with pytest.raises(RuntimeError, match="is not implemented"):
        HessianOperator(model, cases.cross_entropy, probe, method="double_backward")(v)
    op = HessianOperator(model, cases.cross_entropy, probe, method="auto")
    with pytest.warns(UserWarning, match="finite-difference"):
        result = op(v)
    assert op.method == "finite_difference" and relative_error(result, expected) < 1e-6
    again = HessianOperator(model, cases.cross_entropy, probe, method="auto")
    assert again.method == "finite_difference"  # remembered: no second failure, no second warning
    hessian_module._AUTO_CHOICES.clear()


def test_finite_differences_keep_the_models_attention_kernel():
    """Double backward needs the math SDPA backend; finite differences leave the fused kernels on,
    whose memory grows with the sequence rather than its square."""
    seen = []

    class Attending(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.qkv, self.head = nn.Linear(8, 24), nn.Linear(8, 3)

        def forward(self, x):
            seen.append(torch.backends.cuda.flash_sdp_enabled())  # the global switch sdpa_kernel sets
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            return self.head(nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).mean(1))

    x = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(1))
    batch = (x, torch.tensor([0, 1, 2, 0]))
    kernels = {}
    for method in ("double_backward", "finite_difference"):
        seen.clear()
        op = HessianOperator(Attending(), lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), [batch], method=method)
        op(torch.ones(op.size))
        kernels[method] = set(seen)
    assert kernels == {"double_backward": {False}, "finite_difference": {True}}
    assert torch.backends.cuda.flash_sdp_enabled()  # and the switch is back as it was


def test_products_through_relu_kinks_warn_and_never_converge():
    """Float32 central differences through ReLU and max-pool err by O(1): the operator says so once,
    and lanczos stops at that noise floor without calling the result converged."""
    x, y = cases.digits(64)
    op = HessianOperator(cases.cnn_bn(seed=0), cases.cross_entropy, [(x.view(-1, 1, 8, 8), y)], method="finite_difference")
    with pytest.warns(UserWarning, match="finite-difference products of .* err by up to"):
        result = lanczos(op, k=1, tol=1e-3, max_hvps=60)
    assert op.fd_error > 0.1 and not result.converged
