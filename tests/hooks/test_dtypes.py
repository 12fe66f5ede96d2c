"""Every per-step metric for float64, bfloat16, float16 and mixed-dtype models, against references
computed here in float64; and a metric that fails warns once instead of vanishing."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import cases
import edgewatch as ew
from edgewatch.hooks.meters import grads
from edgewatch.hooks.meters.grads import GradientRecorder, parameter_and_update_norms


def _cross_entropy(model: nn.Module, batch) -> Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _batch(dtype: torch.dtype, seed: int, size: int = 12) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 4, generator=generator).to(dtype), torch.randint(0, 3, (size,), generator=generator)


def _mlp(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)


def _norm64(tensors) -> float:
    """The 2-norm of all tensors together, in float64 (no edgewatch code involved)."""
    return float(torch.linalg.vector_norm(torch.cat([t.detach().reshape(-1).double() for t in tensors])))


class _Records(ew.loggers.Logger):
    """Each step's metrics as the Monitor logs them (``latest`` may keep older steps' values)."""

    def __init__(self) -> None:
        self.steps: dict[int, dict[str, float]] = {}

    def log(self, metrics, step: int) -> None:
        self.steps[step] = dict(metrics)


def _monitor(model: nn.Module, optimizer: torch.optim.Optimizer, probe: list, steps: int,
             **kwargs) -> tuple[ew.Monitor, _Records]:
    """An attached Monitor with cheap metrics every step and one curvature probe after ``steps``
    steps (both explicit, so that the defaults' schedules do not matter)."""
    records = _Records()
    monitor = ew.Monitor(model, optimizer, _cross_entropy, probe=probe, every=1, curvature=steps,
                         loggers=[records], run_dir=False, **kwargs)
    return monitor.attach(), records


def _train(model: nn.Module, steps: int, dtype: torch.dtype, probe: list) -> tuple[ew.Monitor, dict, dict]:
    """SGD on a float64 or bfloat16 model under a Monitor; the metrics logged at each step, and
    the references taken right after its backward and its step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5)
    monitor, records = _monitor(model, optimizer, probe, steps, tol=1e-10)
    expected = {}
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        loss = _cross_entropy(model, _batch(dtype, seed=step))
        loss.backward()
        grad_norm = _norm64(p.grad for p in model.parameters())
        before = [p.detach().double().clone() for p in model.parameters()]  # a float64 .double() is no copy
        monitor.observe(loss)
        optimizer.step()
        after = [p.detach().double() for p in model.parameters()]
        expected[step] = {
            "loss": loss.item(),
            "grad/norm": grad_norm,
            "param/norm": _norm64(after),
            "update/norm": _norm64(b - a for b, a in zip(before, after)),
        }
    return monitor, records.steps, expected


def _lambda_max(model: nn.Module, probe) -> float:
    """λ_max of the probe loss's dense float64 Hessian at the model's parameters, upcast."""
    return float(torch.linalg.eigvalsh(cases.dense_hessian(model, _cross_entropy, probe))[-1])


@pytest.mark.parametrize(("dtype", "rel", "update_rel", "curvature_rel"), [
    # float64 throughout: as exact as float64 allows (a float32 norm would be off by ~1e-8).
    (torch.float64, 1e-12, 1e-12, 1e-8),
    # bfloat16 parameters: norms summed in float32 (one rounded to bfloat16 would be off by up
    # to its unit roundoff 2⁻⁸); the update θ_{t-1} − θ_t is itself a bfloat16 difference, exact
    # where |Δ| ≤ |θ|/2 (Sterbenz) and within 2⁻⁸ elsewhere; the curvature probe runs in float32.
    (torch.bfloat16, 1e-6, 2.0**-8, 1e-5),
])
def test_every_metric_of_a_float64_or_bfloat16_model(dtype, rel, update_rel, curvature_rel):
    model = _mlp(dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    probe = [_batch(dtype, seed=100, size=16)]
    monitor, logged, expected = _train(model, steps=3, dtype=dtype, probe=probe)
    assert set(logged) >= {1, 2, 3}
    for step, reference in expected.items():
        metrics = logged[step]
        assert "metrics/failed" not in metrics and "curvature/failed" not in metrics
        assert metrics["loss"] == pytest.approx(reference["loss"], rel=1e-12)
        assert metrics["grad/norm"] == pytest.approx(reference["grad/norm"], rel=rel)
        # Parameter and update norms may be taken on fewer steps than the gradient's: check
        # them wherever they are, and that they are somewhere.
        if "param/norm" in metrics:
            assert metrics["param/norm"] == pytest.approx(reference["param/norm"], rel=rel)
        if "update/norm" in metrics:
            assert metrics["update/norm"] == pytest.approx(reference["update/norm"], rel=update_rel)
            assert metrics["update/norm"] > 0
    assert {"grad/norm", "param/norm", "update/norm", "loss", "curvature/lambda_max"} <= set(monitor.latest)
    # The curvature of the last step, measured after it, at the parameters the model holds now.
    assert logged[3]["curvature/lambda_max"] == pytest.approx(_lambda_max(model, probe), rel=curvature_rel)
    monitor.close()


def test_bfloat16_norms_are_not_rounded_to_bfloat16():
    """A norm rounded to bfloat16 keeps 8 significant bits: the recorder's must match float64 to float32's."""
    model = _mlp(torch.bfloat16)
    recorder = GradientRecorder(model)
    _cross_entropy(model, _batch(torch.bfloat16, seed=0)).backward()
    reduction = recorder.reduction()
    assert reduction.values.dtype == torch.float32
    metrics = reduction.finish(reduction.values.tolist())
    assert metrics["grad/norm"] == pytest.approx(_norm64(p.grad for p in model.parameters()), rel=1e-6)
    assert metrics["grad/norm/0"] == pytest.approx(_norm64([model[0].weight.grad, model[0].bias.grad]), rel=1e-6)


def test_float16_norms_beyond_its_range():
    """A float16 gradient and parameter whose norms exceed float16's largest value (65504)."""
    weight = nn.Parameter(torch.full((10_000,), 1000.0, dtype=torch.float16))
    model = nn.ParameterDict({"weight": weight})
    recorder = GradientRecorder(model)
    (weight.float() * 1000).sum().backward()  # every entry of the gradient is 1000: norm 1e5
    assert recorder.metrics()["grad/norm"] == pytest.approx(1e5, rel=1e-5)  # 10⁴ float32 terms
    previous = [weight.detach().clone()]
    with torch.no_grad():
        weight.sub_(1.0)
    reduction = parameter_and_update_norms([weight], previous)
    metrics = reduction.finish(reduction.values.tolist())
    assert metrics["param/norm"] == pytest.approx(999.0 * 100, rel=1e-5)
    assert metrics["update/norm"] == pytest.approx(100.0, rel=1e-5)


class _Mixed(nn.Module):
    """float64, float32, float64 and bfloat16 layers in turn; each casts its input to its own dtype."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 6).double()
        self.b = nn.Linear(6, 5)
        self.c = nn.Linear(5, 5).double()
        self.d = nn.Linear(5, 3).to(torch.bfloat16)

    def forward(self, x: Tensor) -> Tensor:
        for layer in (self.a, self.b, self.c):
            x = torch.tanh(layer(x.to(layer.weight.dtype)))
        return self.d(x.to(self.d.weight.dtype)).float()


# Per-module tolerances of _Mixed: float64 layers exact to float64, the others to float32.
_MIXED_REL = {"a": 1e-12, "b": 1e-6, "c": 1e-12, "d": 1e-6}


def test_mixed_dtypes_directly_in_order_and_in_float64():
    model = _Mixed()
    recorder = GradientRecorder(model)
    _cross_entropy(model, _batch(torch.float64, seed=0)).backward()
    reduction = recorder.reduction()
    assert reduction.values.dtype == torch.float64  # one vector, one transfer
    metrics = reduction.finish(reduction.values.tolist())
    for name, rel in _MIXED_REL.items():  # a norm in the wrong place would show here
        layer = getattr(model, name)
        assert metrics[f"grad/norm/{name}"] == pytest.approx(_norm64([layer.weight.grad, layer.bias.grad]), rel=rel)
    assert metrics["grad/norm"] == pytest.approx(_norm64(p.grad for p in model.parameters()), rel=1e-6)

    params = list(model.parameters())
    previous = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.mul_(0.5)
    expected_update = _norm64(q.double() - p.double() for p, q in zip(params, previous))
    reduction = parameter_and_update_norms(params, previous)
    assert reduction.values.dtype == torch.float64
    metrics = reduction.finish(reduction.values.tolist())
    assert metrics["param/norm"] == pytest.approx(_norm64(params), rel=1e-6)
    assert metrics["update/norm"] == pytest.approx(expected_update, rel=1e-6)
    # The snapshot, subtracted in place in each tensor's own dtype, now holds the update.
    assert [q.dtype for q in previous] == [p.dtype for p in params]
    assert _norm64(previous) == pytest.approx(expected_update, rel=1e-6)


def test_a_mixed_dtype_model_under_the_monitor():
    model = _Mixed()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = [_batch(torch.float64, seed=100)]
    monitor, records = _monitor(model, optimizer, probe, steps=2, tol=1e-10)
    for step in (1, 2):
        optimizer.zero_grad()
        _cross_entropy(model, _batch(torch.float64, seed=step)).backward()
        layers = {name: getattr(model, name) for name in _MIXED_REL}
        expected = {name: _norm64([layer.weight.grad, layer.bias.grad]) for name, layer in layers.items()}
        optimizer.step()
        metrics = records.steps[step]
        assert "metrics/failed" not in metrics
        for name, rel in _MIXED_REL.items():
            assert metrics[f"grad/norm/{name}"] == pytest.approx(expected[name], rel=rel)
        if "param/norm" in metrics:
            assert metrics["param/norm"] == pytest.approx(_norm64(model.parameters()), rel=1e-6)
    assert {"param/norm", "update/norm"} <= set(monitor.latest) and monitor.latest["update/norm"] > 0
    # The probe of a mixed model runs in float32, every parameter cast to it.
    assert records.steps[2]["curvature/lambda_max"] == pytest.approx(_lambda_max(model, probe), rel=1e-5)
    monitor.close()


def _recorder_warnings(caught: list[warnings.WarningMessage], what: str = "could not be measured") -> list[str]:
    return [str(w.message) for w in caught if f"edgewatch: gradient norms {what}" in str(w.message)]


def test_a_failing_gradient_norm_warns_once_and_training_goes_on(monkeypatch):
    model = _mlp(torch.float32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, records = _monitor(model, optimizer, [_batch(torch.float32, seed=100)], steps=1000)
    foreach_norm = torch._foreach_norm

    def failing_on_gradients(tensors, *args, **kwargs):
        gradients = {p.grad.data_ptr() for p in model.parameters() if p.grad is not None}
        if any(t.data_ptr() in gradients for t in tensors):
            raise RuntimeError("no norms today")
        return foreach_norm(tensors, *args, **kwargs)

    monkeypatch.setattr(grads.torch, "_foreach_norm", failing_on_gradients)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 5):
            before = [p.detach().clone() for p in model.parameters()]
            optimizer.zero_grad()
            loss = _cross_entropy(model, _batch(torch.float32, seed=step))
            loss.backward()  # must not raise
            monitor.observe(loss)
            optimizer.step()
            assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))  # it trained
            assert "grad/norm" not in records.steps[step] and "loss" in records.steps[step]
    assert "param/norm" in monitor.latest  # only the gradient norms are missing
    messages = _recorder_warnings(caught)
    assert len(messages) == 1, messages
    assert "RuntimeError: no norms today" in messages[0] and "grad/norm is missing from the metrics" in messages[0]

    monkeypatch.undo()  # repaired: the next step has its gradient norm again
    optimizer.zero_grad()
    _cross_entropy(model, _batch(torch.float32, seed=9)).backward()
    expected = _norm64(p.grad for p in model.parameters())
    optimizer.step()
    assert records.steps[5]["grad/norm"] == pytest.approx(expected, rel=1e-6)
    monitor.close()


def test_recorder_warnings_are_once_per_failure_and_exception_type(monkeypatch):
    model = _mlp(torch.float32)
    recorder = GradientRecorder(model)
    errors = iter([ValueError("first"), ValueError("second"), TypeError("third")])

    def failing(*args, **kwargs):
        raise next(errors)

    monkeypatch.setattr(grads, "_grouped_norms", failing)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(3):
            _cross_entropy(model, _batch(torch.float32, seed=seed)).backward()
    messages = _recorder_warnings(caught)
    assert len(messages) == 2 and "ValueError: first" in messages[0] and "TypeError: third" in messages[1]
    assert recorder.metrics() == {}  # no norm from a failed pass stands in for it

    # The measurement could not even be scheduled: same rule, its own message.
    def closed(callback) -> None:
        raise RuntimeError("queue closed")

    monkeypatch.setattr(grads, "_run_after_backward", closed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(2):
            _cross_entropy(model, _batch(torch.float32, seed=seed)).backward()
    messages = _recorder_warnings(caught, "could not be scheduled")
    assert len(messages) == 1 and "RuntimeError: queue closed" in messages[0]
