"""The cheap gradient and parameter metrics against norms computed directly from the tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgewatch.hooks.meters.grads import GradientRecorder, parameter_and_update_norms


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Sequential(nn.Linear(8, 3)))


def _loss(model: nn.Module, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 6, generator=generator), torch.randint(0, 3, (16,), generator=generator)
    return F.cross_entropy(model(x), y)


def _norm(tensors) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def test_norms_total_per_module_and_after_accumulation():
    model = _model()
    recorder = GradientRecorder(model, module_metrics="leaf")
    _loss(model, 0).backward()
    _loss(model, 1).backward()  # gradient accumulation: the second pass holds the sum
    metrics = recorder.metrics()
    assert metrics["grad/norm"] == pytest.approx(_norm(p.grad for p in model.parameters()), rel=1e-6)
    assert metrics["grad/norm/0"] == pytest.approx(_norm([model[0].weight.grad, model[0].bias.grad]), rel=1e-6)
    assert metrics["grad/norm/2.0"] == pytest.approx(_norm([model[2][0].weight.grad, model[2][0].bias.grad]), rel=1e-6)
    assert metrics["grad/nonfinite_params"] == 0.0
    assert recorder.metrics() == {}  # nothing new since


def test_read_before_clipping_in_place():
    model = _model()
    recorder = GradientRecorder(model)
    _loss(model, 0).backward()
    raw = _norm(p.grad for p in model.parameters())
    torch.nn.utils.clip_grad_norm_(model.parameters(), raw / 10)
    assert recorder.metrics()["grad/norm"] == pytest.approx(raw, rel=1e-6)


def test_a_loss_scale_is_divided_out():
    model = _model()
    recorder = GradientRecorder(model)
    (_loss(model, 0) * 1024).backward()
    reduction = recorder.reduction(scale=1024.0)
    metrics = reduction.finish(reduction.values.tolist())
    assert metrics["grad/norm"] == pytest.approx(_norm(p.grad for p in model.parameters()) / 1024, rel=1e-6)


def test_nonfinite_gradients_are_counted_per_parameter_tensor():
    model = _model()
    recorder = GradientRecorder(model)
    (_loss(model, 0) + model[0].bias.sum() * math.inf + model[2][0].bias[0] * math.nan).backward()
    metrics = recorder.metrics()
    assert metrics["grad/nonfinite_params"] == 2.0
    assert not math.isfinite(metrics["grad/norm"])


def test_disarmed_and_removed_recorders_measure_nothing():
    model = _model()
    recorder = GradientRecorder(model)
    recorder.armed = False
    _loss(model, 0).backward()
    assert recorder.metrics() == {}
    recorder.armed = True
    recorder.remove()
    _loss(model, 1).backward()
    assert recorder.metrics() == {}


def test_only_watched_parameters_and_sparse_gradients():
    embedding = nn.Embedding(10, 4, sparse=True)
    model = nn.ModuleDict({"embedding": embedding, "head": nn.Linear(4, 2)})
    recorder = GradientRecorder(model, [embedding.weight])
    model["head"](embedding(torch.tensor([1, 3, 3]))).sum().backward()
    metrics = recorder.metrics()
    assert set(metrics) == {"grad/norm", "grad/nonfinite_params", "grad/norm/embedding"}
    assert metrics["grad/norm"] == pytest.approx(float(embedding.weight.grad.to_dense().norm()), rel=1e-6)


def test_a_backward_that_raises_does_not_stop_later_measurements():
    model = _model()
    recorder = GradientRecorder(model)

    class Boom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("boom")

    # the output layer's gradients accumulate (and note themselves) before the failure upstream
    loss = F.cross_entropy(model[2](model[1](Boom.apply(model[0](torch.randn(4, 6))))), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(RuntimeError, match="boom"):
        loss.backward()
    model.zero_grad()  # a loop that skips the failed batch: no metrics() in between
    _loss(model, 0).backward()
    assert recorder.metrics()["grad/norm"] == pytest.approx(_norm(p.grad for p in model.parameters()), rel=1e-6)


def test_parameter_and_update_norms_and_the_consumed_snapshot():
    model = _model()
    params = list(model.parameters())
    previous = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 1e-3)
    expected = _norm(p.detach() - q for p, q in zip(params, previous))
    reduction = parameter_and_update_norms(params, previous)
    metrics = reduction.finish(reduction.values.tolist())
    assert metrics["update/norm"] == pytest.approx(expected, rel=1e-5)
    assert metrics["param/norm"] == pytest.approx(_norm(params), rel=1e-6)
    assert metrics["update/ratio"] == pytest.approx(expected / _norm(params), rel=1e-5)
    assert _norm(previous) == pytest.approx(expected, rel=1e-5)  # the snapshot now holds the update
    reduction = parameter_and_update_norms(params, None)
    assert set(reduction.finish(reduction.values.tolist())) == {"param/norm"}


def test_the_monitor_reads_gradients_only_for_steps_it_measures(monkeypatch):
    import edgewatch as ew

    measured = []
    original = GradientRecorder._measure
    monkeypatch.setattr(GradientRecorder, "_measure", lambda self: (measured.append(True), original(self)))
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = [(torch.randn(8, 6), torch.randint(0, 3, (8,)))]
    monitor = ew.Monitor(model, optimizer, lambda m, b: F.cross_entropy(m(b[0]), b[1]), probe,
                         every=4, norms_every=1, curvature=1000, run_dir=False).attach()
    norms = {}
    for step in range(1, 13):
        optimizer.zero_grad()
        _loss(model, step).backward()
        norms[step] = _norm(p.grad for p in model.parameters())
        optimizer.step()
        if step % 4 == 0:
            assert monitor.latest["grad/norm"] == pytest.approx(norms[step], rel=1e-6)
    assert len(measured) == 3  # steps 4, 8 and 12 only
    monitor.close()


def _watched(**kwargs):
    import edgewatch as ew

    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = [(torch.randn(8, 6), torch.randint(0, 3, (8,)))]
    monitor = ew.Monitor(model, optimizer, lambda m, b: F.cross_entropy(m(b[0]), b[1]), probe,
                         every=1, curvature=1000, norms_every=1, run_dir=False, **kwargs)  # update norms at every step
    return model, optimizer, monitor


def test_update_norm_after_detach_is_left_out_once_then_right_again():
    model, optimizer, monitor = _watched()
    monitor.attach()
    for step in (1, 2):
        optimizer.zero_grad()
        _loss(model, step).backward()
        optimizer.step()
    monitor.detach()  # the explicit path from here on: no pre-step snapshot any more
    updates = []
    for step in (3, 4):
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad()
        _loss(model, step).backward()
        optimizer.step()
        updates.append((monitor.step(), _norm(p.detach() - q for p, q in zip(model.parameters(), before))))
    (first, _), (second, true_update) = updates
    assert "update/norm" not in first and "param/norm" in first  # its snapshot was used up at step 2
    assert second["update/norm"] == pytest.approx(true_update, rel=1e-5)


def test_a_rank_measuring_alone_logs_its_own_run(monkeypatch, tmp_path):
    from edgewatch.hooks import monitor as monitor_module

    monkeypatch.setattr(monitor_module, "is_main_process", lambda: False)  # as on rank 1 of a group
    assert not _watched()[2].main_process
    assert _watched(process_group=False)[2].main_process
    assert not _watched(process_group=False, main_process=False)[2].main_process


class _Layer(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.attn = nn.ModuleDict({"q": nn.Linear(d, d), "k": nn.Linear(d, d)})
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.Tanh(), nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(x + self.mlp(self.attn["q"](x) * self.attn["k"](x).tanh()))


class _Nested(nn.Module):
    """Blocks at three depths: a ModuleList of layers inside a wrapper, a direct child, a root parameter."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.embed = nn.Linear(6, d)
        self.body = nn.Module()
        self.body.layers = nn.ModuleList([_Layer(d), _Layer(d)])
        self.body.final = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        x = self.embed(x)
        for layer in self.body.layers:
            x = layer(x)
        return self.scale * self.head(self.body.final(x))


def test_block_norms_are_the_root_sum_of_their_leaf_squares():
    torch.manual_seed(0)
    model = _Nested()
    blocks, leaves = GradientRecorder(model), GradientRecorder(model, module_metrics="leaf")
    _loss(model, 0).backward()
    by_block, by_leaf = blocks.metrics(), leaves.metrics()
    assert by_block["grad/norm"] == pytest.approx(by_leaf["grad/norm"], rel=1e-12)
    per_block = {name.removeprefix("grad/norm/") for name in by_block if name.startswith("grad/norm/")}
    assert per_block == {"embed", "body.layers.0", "body.layers.1", "body", "head", "root"}
    per_leaf = {name.removeprefix("grad/norm/") for name in by_leaf if name.startswith("grad/norm/")}
    assert "body.layers.0.attn.q" in per_leaf and "body.layers.1.mlp.2" in per_leaf and "body.final" in per_leaf
    for block in per_block:
        inside = [leaf for leaf in per_leaf if leaf == block or leaf.startswith(block + ".")]
        if block == "body":  # its layers are blocks of their own
            inside = [leaf for leaf in inside if not leaf.startswith("body.layers.")]
        assert inside or block == "root", block
        expected = math.sqrt(sum(by_leaf[f"grad/norm/{leaf}"] ** 2 for leaf in inside))
        assert by_block[f"grad/norm/{block}"] == pytest.approx(expected, rel=1e-9), block
    layer = model.body.layers[1]
    assert by_block["grad/norm/body.layers.1"] == pytest.approx(_norm(p.grad for p in layer.parameters()), rel=1e-6)
    assert by_block["grad/norm/root"] == pytest.approx(abs(model.scale.grad.item()), rel=1e-6)


def test_module_metrics_is_checked():
    with pytest.raises(ValueError, match=r'module_metrics must be "blocks" .* or "leaf" .*got \'layers\''):
        GradientRecorder(_model(), module_metrics="layers")


def _watched_nested(module_metrics: str | None) -> dict[str, float]:
    from edgewatch.hooks import Monitor

    torch.manual_seed(0)
    model = _Nested()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = [(torch.randn(16, 6, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 3)]
    kwargs = {} if module_metrics is None else {"module_metrics": module_metrics}
    monitor = Monitor(model, optimizer, lambda m, b: F.cross_entropy(m(b[0]), b[1]), probe, every=1, curvature=1,
                      run_dir=False, **kwargs).attach()
    optimizer.zero_grad()
    _loss(model, 0).backward()
    optimizer.step()
    monitor.close()
    return monitor.latest


def test_the_monitor_keys_per_module_metrics_by_block_unless_asked_for_leaves():
    blocks, leaves = _watched_nested(None), _watched_nested("leaf")
    for family in ("grad/norm/", "curvature/top_energy/"):
        by_block = {k.removeprefix(family): v for k, v in blocks.items() if k.startswith(family)}
        by_leaf = {k.removeprefix(family): v for k, v in leaves.items() if k.startswith(family)}
        assert set(by_block) == {"embed", "body.layers.0", "body.layers.1", "body", "head", "root"}, family
        assert len(by_leaf) == 14, family  # embed, 2 × (q, k, mlp.0, mlp.2, norm), body.final, head, root
        layer = [v for k, v in by_leaf.items() if k.startswith("body.layers.1.")]
        squares = family == "grad/norm/"  # norms add in squares, energy shares add as they are
        expected = math.sqrt(sum(v * v for v in layer)) if squares else sum(layer)
        assert by_block["body.layers.1"] == pytest.approx(expected, rel=1e-6, abs=1e-12), family
    assert sum(v for k, v in blocks.items() if k.startswith("curvature/top_energy/")) == pytest.approx(1.0, abs=1e-6)


def test_the_monitor_refuses_an_unknown_module_metrics():
    with pytest.raises(ValueError, match="module_metrics"):
        _watched_nested("modules")


def test_the_epsilon_share_under_amsgrad_reads_the_running_maximum():
    """AMSGrad divides by max v̂, not by the current v̂: where v has decayed below ε² but its maximum
    has not, ε does not dominate the step."""
    from edgewatch.hooks.meters.grads import adam_epsilon_fraction

    parameter = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.Adam([parameter], lr=0.1, amsgrad=True)
    parameter.grad = torch.ones(4)
    optimizer.step()
    state = optimizer.state[parameter]
    state["exp_avg_sq"].zero_()  # the current second moment gone, its maximum still 1e-3
    assert float(adam_epsilon_fraction(optimizer)) == 0.0
    optimizer.param_groups[0]["amsgrad"] = False
    assert float(adam_epsilon_fraction(optimizer)) == 1.0  # what the old reading saw
