"""The Monitor: watching changes nothing, events fire on real runs, state survives a resume."""

from __future__ import annotations

import gc
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cases
import edgewatch as ew
from edgewatch.hooks import Monitor, StopTraining


# -- three seeded training runs, each with its own model, optimizer and data -------------------
def mlp_sgd():
    model = cases.mlp(seed=1)
    return model, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), None, cases.cross_entropy, cases.digits_probe(sizes=(64, 64))


def cnn_adam():
    model = cases.cnn_bn(seed=2, dropout=0.3)
    return model, torch.optim.Adam(model.parameters(), lr=1e-2), None, cases.cross_entropy, cases.digits_probe(sizes=(48, 48), images=True)


def transformer_adamw():
    model = cases.block(seed=3, dropout=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=20)
    return model, optimizer, warmup, cases.next_token_loss, cases.token_probe(batches=2, size=8)


RUNS = {"mlp_sgd": mlp_sgd, "cnn_bn_dropout_adam": cnn_adam, "transformer_adamw_warmup": transformer_adamw}


def train(make, steps=50, watch=False):
    torch.manual_seed(123)
    model, optimizer, scheduler, loss_fn, batches = make()
    monitor = Monitor(model, optimizer, loss_fn, batches[:1], every=1, curvature=5, k=2, max_hvps=20).attach() if watch else None
    losses = []
    for step in range(steps):
        batch = batches[step % len(batches)]
        optimizer.zero_grad()
        loss = loss_fn(model, batch)
        if monitor:
            monitor.observe(loss)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if scheduler:
            scheduler.step()
        losses.append(loss.item())
    return model, optimizer, losses, monitor, torch.get_rng_state()


@pytest.mark.parametrize("name", list(RUNS))
def test_watching_changes_nothing(name):
    model_a, opt_a, losses_a, _, rng_a = train(RUNS[name])
    model_b, opt_b, losses_b, monitor, rng_b = train(RUNS[name], watch=True)
    assert monitor.step_count == 50 and "curvature/lambda_max" in monitor.latest  # it did measure
    assert losses_a == losses_b
    for (name_a, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), name_a  # parameters and BatchNorm buffers
    for p_a, p_b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(p_a.grad, p_b.grad)
        for key, value in opt_a.state[p_a].items():
            assert torch.equal(value, opt_b.state[p_b][key]), key
    assert torch.equal(rng_a, rng_b)
    assert [m.training for m in model_a.modules()] == [m.training for m in model_b.modules()]


def test_it_can_fail_if_watching_changed_something():
    """The comparison above is sharp: one extra dropout draw in the loop breaks bit-identity."""
    _, _, losses_a, _, _ = train(cnn_adam, steps=3)
    model, optimizer, _, loss_fn, batches = cnn_adam()
    torch.manual_seed(123)
    losses = []
    for step in range(3):
        optimizer.zero_grad()
        loss = loss_fn(model, batches[step % 2])
        torch.rand(1)  # what an unguarded probe would do
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses != losses_a


def test_metrics_of_a_watched_run():
    _, _, _, monitor, _ = train(transformer_adamw, steps=20, watch=True)
    latest = monitor.latest  # step 20: cheap metrics and a curvature probe
    for name in ("loss", "lr", "grad/norm", "param/norm", "update/norm", "update/ratio", "adam/epsilon_fraction",
                 "grad/nonfinite_params", "curvature/lambda_max", "curvature/lambda_2", "curvature/precond/lambda_max",
                 "curvature/threshold", "curvature/stability_ratio", "curvature/directional_sharpness",
                 "curvature/gradient_overlap", "curvature/lambda_max_residual", "curvature/hvps"):
        assert name in latest and math.isfinite(latest[name]), name
    eta = 3e-3 * (0.1 + 0.9 * 19 / 20)  # measured after step 20, before its scheduler.step()
    assert latest["lr"] == pytest.approx(eta) and latest["curvature/reference_lr"] == pytest.approx(eta)
    assert latest["curvature/threshold"] == pytest.approx(38 * (1 - eta * 0.1 / 2) / eta)
    assert latest["curvature/stability_ratio"] == pytest.approx(
        eta * latest["curvature/precond/lambda_max"] / (38 * (1 - eta * 0.05)))
    shares = [v for k, v in latest.items() if k.startswith("curvature/top_energy/")]
    assert sum(shares) == pytest.approx(1.0, abs=1e-4)
    assert 0 <= latest["curvature/gradient_overlap"] <= 1 + 1e-6


def test_gradient_norm_is_taken_before_clipping():
    model, probe = cases.mlp(), cases.digits_probe(sizes=(64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer, cases.cross_entropy, probe, curvature=1000).attach()
    loss = cases.cross_entropy(model, probe[0]) * 100
    loss.backward()
    raw = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm().item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    optimizer.step()
    assert monitor.latest["grad/norm"] == pytest.approx(raw, rel=1e-6) and raw > 0.1


def test_eos_reached_on_digits_full_batch_gd():
    x, y = cases.digits(1000)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    loss_fn = lambda m, b: 0.5 * (m(b[0]) - F.one_hot(b[1], 10).float()).pow(2).sum(-1).mean()  # noqa: E731
    optimizer = torch.optim.SGD(model.parameters(), lr=0.15)
    seen = []
    with ew.Monitor(model, optimizer, loss_fn, [(x, y)], curvature=25, callbacks=[seen.append]) as monitor:
        for _ in range(800):
            optimizer.zero_grad()
            loss_fn(model, (x, y)).backward()
            optimizer.step()
    kinds = [e.kind for e in monitor.events]
    assert "eos_reached" in kinds and seen == monitor.events
    eos = next(e for e in monitor.events if e.kind == "eos_reached")
    assert eos.values["stability_ratio"] >= 0.95


def test_nan_run_gives_nonfinite_and_the_monitor_survives():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    batch = cases.digits_probe(sizes=(64,))[0]
    loss_fn = lambda m, b: (m(b[0]) - F.one_hot(b[1], 10).float()).pow(2).sum(-1).mean()  # noqa: E731
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    monitor = Monitor(model, optimizer, loss_fn, [batch], curvature=2).attach()
    for _ in range(40):
        optimizer.zero_grad()
        loss = loss_fn(model, batch)
        monitor.observe(loss)
        loss.backward()
        optimizer.step()
    assert [e.kind for e in monitor.events if e.kind == "nonfinite"] == ["nonfinite"]
    assert monitor.step_count == 40


def test_stop_on_raises_from_the_optimizer_step():
    model, probe = cases.mlp(), cases.digits_probe(sizes=(64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    Monitor(model, optimizer, cases.cross_entropy, probe, curvature=1000, stop_on=["nonfinite"]).attach()
    optimizer.zero_grad()
    cases.cross_entropy(model, probe[0]).backward()
    model[0].weight.grad[0, 0] = float("nan")
    with pytest.raises(StopTraining, match="stopped training at step 1: nonfinite"):
        optimizer.step()


def test_resume_continues_as_if_never_stopped():
    def run(steps, monitor_state=None):
        torch.manual_seed(0)
        model = cases.mlp(seed=4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
        # method fixed: "auto" picks by timing, and the two methods differ in the last float32 bits
        monitor = Monitor(model, optimizer, cases.cross_entropy, cases.digits_probe(sizes=(64,)), curvature=4,
                          method="double_backward")
        return model, optimizer, monitor

    model, optimizer, whole = run(0)
    probe = cases.digits_probe(sizes=(64,))
    records = []
    for _ in range(24):
        optimizer.zero_grad()
        cases.cross_entropy(model, probe[0]).backward()
        optimizer.step()
        records.append(whole.step())
    # the same run, stopped after 12 steps and resumed with a fresh Monitor from a checkpoint
    model2, optimizer2, first = run(0)
    resumed_records = []
    for step in range(24):
        if step == 12:
            checkpoint = first.state_dict()
            first.detach()
            first = Monitor(model2, optimizer2, cases.cross_entropy, probe, curvature=4, method="double_backward")
            first.load_state_dict(checkpoint)
        optimizer2.zero_grad()
        cases.cross_entropy(model2, probe[0]).backward()
        optimizer2.step()
        resumed_records.append(first.step())
    assert first.step_count == whole.step_count == 24
    assert [r.get("curvature/lambda_max") for r in resumed_records] == [r.get("curvature/lambda_max") for r in records]
    assert [r.get("curvature/hvps") for r in resumed_records] == [r.get("curvature/hvps") for r in records]  # warm starts kept
    assert first.events == whole.events


def test_no_memory_growth_over_1000_probes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    batch = (torch.randn(16, 8), torch.randint(0, 2, (16,)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = Monitor(model, optimizer, cases.cross_entropy, [batch], curvature=1, max_hvps=8).attach()

    def tensors():
        gc.collect()
        with warnings.catch_warnings():  # isinstance on torch.distributed's deprecated proxies warns
            warnings.simplefilter("ignore", FutureWarning)
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    for step in range(1000):
        if step == 100:
            baseline = tensors()
        optimizer.zero_grad()
        cases.cross_entropy(model, batch).backward()
        optimizer.step()
    assert monitor.step_count == 1000
    assert tensors() <= baseline + 10


def test_clear_errors():
    model, probe = cases.mlp(), cases.digits_probe(sizes=(16,))
    other = cases.mlp()
    with pytest.raises(ValueError, match=r"the optimizer updates none of the model.s parameters \(its 4 parameters belong elsewhere\)"):
        Monitor(model, torch.optim.SGD(other.parameters(), lr=0.1), cases.cross_entropy, probe)
    images = cases.digits_probe(sizes=(16,), images=True)
    with pytest.raises(ValueError, match=r"probe batch 0 does not fit the model: loss_fn\(model, probe\[0\]\) raised RuntimeError"):
        Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), cases.cross_entropy, images)
    with pytest.raises(ValueError, match=r"loss_fn must accept two positional arguments \(model, batch\)"):
        Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda batch: 0.0, probe)
    with pytest.raises(ValueError, match="stop_on has unknown event kinds"):
        Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), cases.cross_entropy, probe, stop_on=["explosion"])


def test_review_cases_scaler_subset_reattach_and_resume():
    """Gradient norms unscaled under GradScaler and restricted to what the optimizer updates;
    hooks come back on re-attach; update/norm after a checkpoint load; observe() wants a scalar."""
    model, probe = cases.mlp(), cases.digits_probe(sizes=(64,))
    optimizer = torch.optim.SGD(model[2].parameters(), lr=0.1)  # the last layer only
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    monitor = Monitor(model, optimizer, cases.cross_entropy, probe, curvature=1000, norms_every=1, grad_scaler=scaler)
    for round_ in range(2):  # attach, detach, attach again
        with monitor:
            optimizer.zero_grad()
            scaler.scale(cases.cross_entropy(model, probe[0])).backward()
            scaler.step(optimizer)
            scaler.update()
        # scaler.step() unscaled .grad in place before the optimizer ran: .grad is the true gradient
        true = torch.cat([p.grad.reshape(-1) for p in model[2].parameters()]).norm().item()
        assert monitor.latest["grad/norm"] == pytest.approx(true, rel=1e-5), round_
        assert not any(k.startswith("grad/norm/0") for k in monitor.latest)
    with pytest.raises(ValueError, match="observe\\(\\) takes the scalar training loss"):
        monitor.observe(torch.ones(3))
    checkpoint = monitor.state_dict()
    with torch.no_grad():
        model[2].weight.add_(1.0)  # "loading" other weights
    monitor.load_state_dict(checkpoint)
    monitor.attach()
    before = model[2].weight.detach().clone()
    optimizer.zero_grad()
    cases.cross_entropy(model, probe[0]).backward()
    optimizer.step()
    update = (model[2].weight.detach() - before).norm() ** 2 + (optimizer.param_groups[0]["lr"] * model[2].bias.grad).norm() ** 2
    assert monitor.latest["update/norm"] == pytest.approx(update.sqrt().item(), rel=1e-5)
