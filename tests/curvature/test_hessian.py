"""HessianOperator: every HVP method against the dense float64 Hessian and against each other."""

from __future__ import annotations

import itertools

import pytest
import scipy.sparse.linalg
import torch
from threadpoolctl import threadpool_limits

import cases
from edgewatch.curvature import HessianOperator, as_scipy_operator, lanczos
from edgewatch.curvature import hessian as hessian_module

METHODS = [
    pytest.param({"method": "double_backward", "reuse_graph": True}, id="double_backward-reuse"),
    pytest.param({"method": "double_backward", "reuse_graph": False}, id="double_backward"),
    pytest.param({"method": "forward_over_reverse"}, id="forward_over_reverse"),
]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("options", METHODS)
def test_hvp_matches_dense_hessian_float64(case, options):
    op = HessianOperator(case.model, case.loss_fn, case.probe, dtype=torch.float64, **options)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(op.shape[0], dtype=torch.float64, generator=generator)
        assert relative_error(op(v), case.hessian @ v) < 1e-12


@pytest.mark.parametrize("options", METHODS)
def test_hvp_float32_close_to_dense(case, options):
    op = HessianOperator(case.model, case.loss_fn, case.probe, **options)
    assert op.dtype == torch.float32
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(2))
    assert relative_error(op(v).double(), case.hessian @ v.double()) < 1e-5


def test_block_operator_is_the_dense_sub_block(case):
    block = case.model[-1]  # the output layer
    op = HessianOperator(case.model, case.loss_fn, case.probe, params=block, dtype=torch.float64)
    names = [name for name, _ in case.model.named_parameters()]
    index = torch.cat([
        torch.arange(start, start + p.numel())
        for start, (name, p) in zip(_offsets(case.model), case.model.named_parameters())
        if any(p is q for q in block.parameters())
    ])
    assert op.param_names == tuple(n for n in names if n.startswith(f"{len(case.model) - 1}."))
    v = torch.randn(op.shape[0], dtype=torch.float64)
    assert relative_error(op(v), case.hessian[index][:, index] @ v) < 1e-12


def test_parameters_by_name_and_tensor_agree():
    model, probe = cases.mlp(), cases.digits_probe()
    by_name = HessianOperator(model, cases.cross_entropy, probe, params=["2.weight", "0.bias"], dtype=torch.float64)
    by_tensor = HessianOperator(model, cases.cross_entropy, probe, params=[model[2].weight, model[0].bias], dtype=torch.float64)
    assert by_name.param_names == by_tensor.param_names == ("0.bias", "2.weight")  # model order
    v = torch.randn(by_name.shape[0], dtype=torch.float64)
    assert torch.equal(by_name(v), by_tensor(v))


def test_probe_batches_are_weighted_by_size():
    """Batches of 140 and 100 examples give the Hessian of the mean loss over all 240."""
    model = cases.mlp()
    split = cases.digits_probe(sizes=(140, 100))
    whole = [(torch.cat([b[0] for b in split]), torch.cat([b[1] for b in split]))]
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    a = HessianOperator(model, cases.cross_entropy, split, dtype=torch.float64)(v)
    b = HessianOperator(model, cases.cross_entropy, whole, dtype=torch.float64)(v)
    assert relative_error(a, b) < 1e-12


def test_explicit_weights_override_sizes():
    model = cases.mlp()
    probe = cases.digits_probe(sizes=(140, 100))
    first_only = HessianOperator(model, cases.cross_entropy, probe, dtype=torch.float64, weights=[1.0, 0.0])
    reference = HessianOperator(model, cases.cross_entropy, probe[:1], dtype=torch.float64)
    v = torch.randn(first_only.shape[0], dtype=torch.float64)
    assert relative_error(first_only(v), reference(v)) < 1e-12


def test_all_methods_agree_on_transformer_with_layernorm_and_sdpa():
    """jvp(jacrev) is wrong around LayerNorm in torch 2.13; our methods must all match double backward."""
    model, probe = cases.block(dtype=torch.float64), cases.token_probe()
    ops = {
        name: HessianOperator(model, cases.next_token_loss, probe, **options)
        for name, options in [
            ("reuse", {"method": "double_backward", "reuse_graph": True}),
            ("plain", {"method": "double_backward", "reuse_graph": False}),
            ("forward", {"method": "forward_over_reverse"}),
        ]
    }
    generator = torch.Generator().manual_seed(3)
    v = torch.randn(ops["plain"].shape[0], dtype=torch.float64, generator=generator)
    reference = ops["plain"](v)
    assert reference.norm() > 0
    for name in ("reuse", "forward"):
        assert relative_error(ops[name](v), reference) < 1e-12, name
    # LayerNorm rows specifically (where jvp(jacrev) fails):
    slices = ops["plain"].parameter_slices()
    for name, where in slices.items():
        if name.startswith("ln"):
            assert relative_error(ops["forward"](v)[where], reference[where]) < 1e-12, name


def test_sdpa_block_has_the_same_top_eigenvalue_as_explicit_softmax():
    probe = cases.token_probe()
    values = []
    for sdpa in (True, False):
        model = cases.block(dtype=torch.float64, sdpa=sdpa)
        op = HessianOperator(model, cases.next_token_loss, probe)
        result = lanczos(op, k=1, tol=1e-10)
        assert result.converged
        values.append(result.eigenvalues[0].item())
    assert abs(values[0] - values[1]) <= 1e-9 * abs(values[1])
    # and it is the top eigenvalue, by an independent solver
    with op, threadpool_limits(limits=1, user_api="blas"):
        reference = scipy.sparse.linalg.eigsh(as_scipy_operator(op), k=1, which="LA", tol=1e-12)[0][0]
    assert values[0] == pytest.approx(reference, rel=1e-9)


def test_graph_lives_for_one_solve_only(mlp_case):
    """Writes through .data (EMA, SWA) bump no version counter: no graph may survive a solve."""
    model = cases.mlp(dtype=torch.float64)
    op = HessianOperator(model, cases.cross_entropy, mlp_case.probe, method="double_backward")
    v = torch.randn(op.shape[0], dtype=torch.float64)
    lanczos(op, k=1, max_hvps=5)
    assert op._graph is None
    op(v)
    assert op._graph is None  # a lone product frees its graph too
    with op:
        op(v)
        assert op._graph is not None  # reused within a solve
    assert op._graph is None
    for p in model.parameters():
        p.data.mul_(1.5)
    fresh = HessianOperator(model, cases.cross_entropy, mlp_case.probe, method="double_backward")(v)
    assert relative_error(op(v), fresh) < 1e-12


def test_probe_is_a_private_copy(mlp_case):
    model = cases.mlp(dtype=torch.float64)
    probe = [(x.clone(), y.clone()) for x, y in mlp_case.probe]
    op = HessianOperator(model, cases.cross_entropy, probe)
    v = torch.randn(op.shape[0], dtype=torch.float64)
    before = op(v)
    probe[0][0].mul_(0)  # the caller reuses its buffers
    assert torch.equal(op(v), before)


def test_compiled_and_data_parallel_models_are_unwrapped(mlp_case):
    model = cases.mlp(dtype=torch.float64)
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    plain = HessianOperator(model, cases.cross_entropy, mlp_case.probe)(v)
    for wrapped in (torch.compile(model), torch.nn.DataParallel(model)):
        op = HessianOperator(wrapped, cases.cross_entropy, mlp_case.probe)
        assert op.model is model
        assert torch.equal(op(v), plain)


def test_graph_is_rebuilt_after_an_optimizer_step(mlp_case):
    model = cases.mlp()
    probe = mlp_case.probe
    op = HessianOperator(model, cases.cross_entropy, probe, method="double_backward", dtype=torch.float64)
    v = torch.randn(op.shape[0], dtype=torch.float64)
    with op:  # even within one solve, an in-place update of θ is noticed
        before = op(v)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        cases.cross_entropy(model, probe[0]).backward()
        optimizer.step()
        after = op(v)
    fresh = HessianOperator(model, cases.cross_entropy, probe, method="double_backward", dtype=torch.float64)(v)
    assert relative_error(after, fresh) < 1e-12
    assert relative_error(after, before) > 1e-6  # the step did change the Hessian


def test_tuple_input_gives_tuple_output_and_counts(mlp_case):
    op = HessianOperator(mlp_case.model, mlp_case.loss_fn, mlp_case.probe, dtype=torch.float64)
    v = torch.randn(op.shape[0], dtype=torch.float64)
    as_tuple = op(op.unflatten(v))
    assert isinstance(as_tuple, tuple)
    assert [t.shape for t in as_tuple] == [p.shape for p in mlp_case.model.parameters()]
    assert torch.allclose(op.flatten(as_tuple), op(v), rtol=0, atol=1e-14)
    assert op.num_hvps == 2
    n = sum(p.numel() for p in mlp_case.model.parameters())
    assert op.shape == (n, n) and op.device == torch.device("cpu") and op.dtype == torch.float64


def test_auto_takes_double_backward_on_the_cpu_without_timing(monkeypatch):
    """With the graph reused, forward-over-reverse never wins on the CPU: "auto" does not pay to time it."""
    hessian_module._AUTO_CHOICES.clear()

    def must_not_time(self):
        raise AssertionError("auto timed the methods on the CPU")

    monkeypatch.setattr(HessianOperator, "_time_methods", must_not_time)
    model, probe = cases.mlp(), cases.digits_probe()
    op = HessianOperator(model, cases.cross_entropy, probe, method="auto", dtype=torch.float64)
    v = torch.randn(op.shape[0], dtype=torch.float64)
    reference = HessianOperator(model, cases.cross_entropy, probe, method="double_backward", dtype=torch.float64)(v)
    assert torch.equal(op(v), reference) and op.method == "double_backward"
    assert op.num_hvps == 1  # no product spent on measuring


def test_auto_picks_a_correct_method_and_remembers_it(monkeypatch):
    monkeypatch.setattr(hessian_module, "_AUTO_TIMES_CPU", True)  # measure as on other devices
    hessian_module._AUTO_CHOICES.clear()
    model, probe = cases.mlp(), cases.digits_probe()
    op = HessianOperator(model, cases.cross_entropy, probe, method="auto", dtype=torch.float64)
    assert op.method is None
    v = torch.randn(op.shape[0], dtype=torch.float64)
    reference = HessianOperator(model, cases.cross_entropy, probe, method="double_backward", dtype=torch.float64)(v)
    result = op(v)
    assert op.method in ("double_backward", "forward_over_reverse")
    assert relative_error(result, reference) < 1e-12

    def must_not_time(self):
        raise AssertionError("auto measured again for a model and loss it has seen")

    with monkeypatch.context() as patch:
        patch.setattr(HessianOperator, "_choose_method", must_not_time)
        again = HessianOperator(model, cases.cross_entropy, probe[:1], method="auto", dtype=torch.float64)
        assert again.method == op.method
        again(v)
    # Another model (even of the same architecture) is measured on its own: its forward may differ.
    other = HessianOperator(cases.mlp(seed=5), cases.cross_entropy, probe, method="auto", dtype=torch.float64)
    assert other.method is None


@pytest.mark.parametrize(("forward_cost", "expected"), [(0.9, "double_backward"), (0.8, "forward_over_reverse")])
def test_auto_leaves_double_backward_only_for_a_clearly_faster_method(monkeypatch, forward_cost, expected):
    """Timings on a busy machine are noisy: 10% faster is not reason enough to switch, 20% is."""
    hessian_module._AUTO_CHOICES.clear()
    op = HessianOperator(cases.mlp(), cases.cross_entropy, cases.digits_probe(), method="auto", reuse_graph=False)

    def timed(fn, v, device, repeats=1):
        return 1.0 if op._method == "double_backward" else forward_cost

    monkeypatch.setattr(hessian_module, "_timed", timed)
    clock = itertools.count()  # the first product, timed by two readings of the clock, costs 1.0 too
    monkeypatch.setattr(hessian_module, "_now", lambda device: float(next(clock)))
    op(torch.randn(op.shape[0]))
    assert op.method == expected


def test_auto_falls_back_when_forward_mode_fails(monkeypatch):
    """A custom autograd.Function without a jvp rule rules forward-over-reverse out."""

    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 2 * x * grad

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))

        def forward(self, x):
            return Square.apply(self.w * x).sum()

    monkeypatch.setattr(hessian_module, "_AUTO_TIMES_CPU", True)
    hessian_module._AUTO_CHOICES.clear()
    op = HessianOperator(Model(), lambda m, x: m(x), [torch.ones(2)], method="auto")
    with pytest.warns(UserWarning, match="forward-over-reverse HVP unavailable"):
        result = op(torch.tensor([1.0, 0.0]))
    assert op.method == "double_backward"
    assert torch.allclose(result, torch.tensor([2.0, 0.0]))


def _offsets(model):
    offsets, start = [], 0
    for p in model.parameters():
        offsets.append(start)
        start += p.numel()
    return offsets


def test_the_auto_choice_is_held_weakly_and_only_for_the_same_loss():
    """The remembered choice dies with its model (ids are reused by new objects), and a different
    loss function on the same model is measured for anew."""
    import gc

    hessian_module._AUTO_CHOICES.clear()
    model = cases.mlp(hidden=8)
    op = HessianOperator(model, cases.cross_entropy, [cases.digits(32)])
    op(torch.ones(op.size))
    assert len(hessian_module._AUTO_CHOICES) == 1
    assert HessianOperator(model, cases.cross_entropy, [cases.digits(32)]).method == op.method  # remembered
    assert HessianOperator(model, lambda m, b: cases.cross_entropy(m, b), [cases.digits(32)]).method is None
    del op, model
    gc.collect()
    assert len(hessian_module._AUTO_CHOICES) == 0
