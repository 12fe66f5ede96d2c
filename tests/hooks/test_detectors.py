"""Event detectors on synthetic series with known answers and on state round trips.

The same detectors on real runs (digits GD reaching the edge, a diverging run) are in
test_monitor.py, driven by the Monitor.
"""

from __future__ import annotations

import json
import math

import pytest

from edgewatch.hooks.detectors import (
    CatapultDetector,
    EdgeOfStabilityDetector,
    NonFiniteDetector,
    SpikeDetector,
    attention_entropy_collapse,
    output_logit_divergence,
)
from edgewatch.hooks.events import KINDS, Event


def feed(detector, series: list[dict], start: int = 0) -> list[Event]:
    return [event for step, metrics in enumerate(series, start) for event in detector.update(metrics, step)]


def test_event_record_is_json_ready():
    event = Event(3, "nonfinite", "critical", "loss is nan", {"loss": math.nan, "grad/norm": 2.0})
    assert json.loads(json.dumps(event.to_dict())) == {
        "step": 3, "kind": "nonfinite", "severity": "critical", "message": "loss is nan",
        "values": {"loss": "nan", "grad/norm": 2.0},
    }
    with pytest.raises(ValueError, match="severity must be one of"):
        Event(0, "loss_spike", "fatal", "")
    assert "eos_reached" in KINDS and "catapult" in KINDS


def test_eos_reached_fires_on_crossing_and_rearms_after_falling_back():
    ratios = [0.5, 0.8, 0.94, 0.96, 1.01, 0.99, 0.97, 0.7, 0.85, 1.2]
    events = feed(EdgeOfStabilityDetector(tolerance=0.05), [{"curvature/stability_ratio": r} for r in ratios])
    reached = [(e.step, e.severity) for e in events if e.kind == "eos_reached"]
    assert reached == [(3, "info"), (9, "warning")]  # 0.96 ≥ 0.95; re-armed by 0.7 < 0.9; 1.2 is past the edge


def test_eos_sustained_after_a_stay_at_the_edge_counted_in_steps():
    # probes every 10 steps: at the edge from step 0, overshooting a little; a dip below 0.9 ends the stay
    ratios = [0.97, 1.02, 1.08, 1.04, 1.0, 1.12, 1.01, 0.7, 1.0, 1.03, 0.98, 1.05, 1.0, 1.02, 1.0]
    events = feed_at(EdgeOfStabilityDetector(), [{"curvature/stability_ratio": r} for r in ratios], every=10)
    assert [e.step for e in events if e.kind == "eos_sustained"] == [50, 130]  # 50 steps = half the 100-step stay
    far = [{"curvature/stability_ratio": r} for r in [1.3] * 15]  # past the edge, not at it
    assert not [e for e in feed_at(EdgeOfStabilityDetector(), far, every=10) if e.kind == "eos_sustained"]


@pytest.mark.parametrize("every", [5, 10, 25])
def test_eos_sustained_once_whatever_the_probe_spacing(every):
    series = [{"curvature/stability_ratio": 1.0 + 0.04 * math.sin(s / 7)} for s in range(0, 601, every)]
    events = [e for e in feed_at(EdgeOfStabilityDetector(), series, every=every) if e.kind == "eos_sustained"]
    assert len(events) == 1 and 50 <= events[0].step <= 75


def test_progressive_sharpening_before_the_edge_only():
    # λ_1 up 5% per 10 steps (probes every 10 steps), then at the edge
    sharpness = [1.0 * 1.05 ** i for i in range(12)]
    metrics = [{"curvature/lambda_max": s, "curvature/stability_ratio": s / 4} for s in sharpness]
    events = [e for e in feed_at(EdgeOfStabilityDetector(), metrics, every=10) if e.kind == "progressive_sharpening"]
    assert [e.step for e in events] == [50]  # the first probe with >= 3 points spanning half the 100-step window
    assert events[0].values["rate_per_100_steps"] == pytest.approx(1.05 ** 10 - 1)
    at_edge = [{"curvature/lambda_max": s, "curvature/stability_ratio": 1.0} for s in sharpness]
    assert not [e for e in feed_at(EdgeOfStabilityDetector(), at_edge, every=10) if e.kind == "progressive_sharpening"]


def feed_at(detector, series: list[dict], every: int) -> list[Event]:
    return [event for i, metrics in enumerate(series) for event in detector.update(metrics, i * every)]


@pytest.mark.parametrize("every", [2, 10, 50, 100])
def test_progressive_sharpening_does_not_depend_on_the_probe_spacing(every):
    """Issue 15: λ_1 up 33% over 900 steps, rising at every probe, must be found however often it is probed
    (a rate per step over a window of steps, not a growth over a number of probes)."""
    steps = range(0, 901, every)
    series = [{"curvature/lambda_max": 10.0 * 1.33 ** (s / 900), "curvature/stability_ratio": 0.5} for s in steps]
    detector = EdgeOfStabilityDetector(sharpening_window=200)
    events = [e for s, m in zip(steps, series) for e in detector.update(m, s) if e.kind == "progressive_sharpening"]
    assert len(events) == 1 and events[0].step <= 200
    assert events[0].values["rate_per_100_steps"] == pytest.approx(1.33 ** (100 / 900) - 1, rel=1e-6)


def test_progressive_sharpening_ignores_flat_noise_and_slow_drift():
    noisy = [{"curvature/lambda_max": 10.0 * (1 + 0.03 * (-1) ** i)} for i in range(60)]
    assert not feed_at(EdgeOfStabilityDetector(), noisy, every=10)
    slow = [{"curvature/lambda_max": 10.0 * 1.01 ** (i / 10)} for i in range(60)]  # 1% per 100 steps
    assert not feed_at(EdgeOfStabilityDetector(), slow, every=10)


def test_adam_first_preconditioners_are_not_an_edge_of_stability():
    """Issue 15: after one Adam step v̂ = g², r is 5-100 while the run is healthy; an adaptive r is judged
    only from step ``adaptive_warmup`` on, GD's from step 0 (a catapult at η·λ_0 > 2 is past the edge)."""
    adaptive = {"curvature/precond/converged": 1.0}
    early = [{**adaptive, "curvature/stability_ratio": r} for r in (11.5, 1.5, 0.4, 0.2)]
    assert not feed(EdgeOfStabilityDetector(), early, start=1)
    detector = EdgeOfStabilityDetector()
    assert not detector.update({**adaptive, "curvature/stability_ratio": 11.5}, 1)
    reached = detector.update({**adaptive, "curvature/stability_ratio": 0.97}, 60)
    assert [(e.kind, e.severity) for e in reached] == [("eos_reached", "info")]
    gd = EdgeOfStabilityDetector().update({"curvature/stability_ratio": 1.5}, 0)
    assert [(e.kind, e.severity) for e in gd] == [("eos_reached", "warning")]
    with pytest.raises(ValueError, match="adaptive_warmup"):
        EdgeOfStabilityDetector(adaptive_warmup=-1)


def test_spike_rules():
    calm = [{"loss": 1.0 + 0.01 * math.sin(i)} for i in range(40)]
    detector = SpikeDetector()
    assert feed(detector, calm) == []
    sigma_spike = detector.update({"loss": 1.6}, 40)  # ~80σ and +60% above a calm window
    assert [(e.kind, e.severity) for e in sigma_spike] == [("loss_spike", "warning")]
    huge = detector.update({"loss": 17.0}, 41)  # over 10x the running max (1.6, the spike counts)
    assert [(e.kind, e.severity) for e in huge] == [("loss_spike", "critical")]
    assert detector.update({"loss": 1.0}, 42) == []
    assert detector.update({"loss": math.nan}, 43) == []  # NaN is for NonFiniteDetector
    grads = SpikeDetector("grad/norm", "grad_spike")
    assert feed(grads, [{"grad/norm": 2.0 + 0.01 * (i % 2)} for i in range(20)] + [{"grad/norm": 30.0}])[-1].kind == "grad_spike"


def test_spike_needs_a_relative_rise_not_only_sigmas():
    """A calm series has a tiny σ: a 20% wiggle is 28σ there, but no spike under the 50% floor."""
    calm = [{"loss": 1.0 + 0.01 * math.sin(i)} for i in range(40)]
    detector = SpikeDetector()
    feed(detector, calm)
    assert detector.update({"loss": 1.2}, 40) == []
    strict = SpikeDetector(min_rise=0.0)
    feed(strict, calm)
    assert [e.severity for e in strict.update({"loss": 1.2}, 40)] == ["warning"]
    with pytest.raises(ValueError, match="min_rise"):
        SpikeDetector(min_rise=-0.1)


def probes(losses, sharpness, lr=0.25, start=0, every=2):
    """Probe points every ``every`` steps: probe loss, λ_1 and r = η λ_1 / 2 (GD)."""
    return [(start + i * every, {"curvature/probe_loss": loss, "curvature/lambda_max": lam,
                                 "curvature/stability_ratio": lr * lam / 2})
            for i, (loss, lam) in enumerate(zip(losses, sharpness))]


def feed_points(detector, points) -> list[Event]:
    return [event for step, metrics in points for event in detector.update(metrics, step)]


def test_catapult_is_a_rise_that_comes_back_down_as_the_step_turns_stable():
    """Lewkowycz et al. 2020: η·λ_0 = 2.5, the probe loss rises ×6, λ_1 falls below 2/η, the loss comes back."""
    points = probes([1.0, 1.8, 6.0, 3.0, 1.4, 0.8], [10.0, 12.0, 11.0, 8.0, 6.0, 5.0])
    events = feed_points(CatapultDetector(), points)
    assert [(e.kind, e.step, e.severity) for e in events] == [("catapult", 8, "info")]  # loss 1.4 < 1.5, r 0.75 < 1
    assert events[0].values["lambda_before"] == 10.0 and events[0].values["rise_step"] == 2
    assert events[0].values["peak_loss"] == 6.0


def test_catapult_never_while_the_loss_is_up_or_diverging():
    # λ_1 falls and r drops below 1 while the loss is still 3x up: not yet
    up = probes([1.0, 2.0, 4.0, 3.0, 3.0], [10.0, 12.0, 6.0, 5.0, 4.0])
    assert feed_points(CatapultDetector(), up) == []
    # a diverging run whose loss oscillates on its way up (1e17, then 1e12) and whose λ_1 falls
    diverging = probes([1.0, 1e5, 1e17, 1e12, 1e20, math.inf, 0.5], [10.0, 9.0, 7.0, 3.0, 2.0, 1.0, 1.0])
    assert feed_points(CatapultDetector(), diverging) == []


def test_catapult_ignores_minibatch_losses_and_stable_bumps():
    # one hard training batch: the training loss jumps 20x, the fixed probe batch's loss does not
    points = probes([1.0, 0.9, 0.85, 0.8, 0.78], [10.0, 10.0, 9.0, 7.0, 6.0])
    metrics = [(step, {**m, "loss": 20.0 if step == 2 else 0.9}) for step, m in points]
    assert feed_points(CatapultDetector(), metrics) == []
    # a probe-loss bump of a stable run (r = 0.1: minibatch noise near a small loss), whatever λ_1 does
    stable = probes([0.05, 0.1, 0.04, 0.03], [10.0, 9.0, 6.0, 6.0], lr=0.02)
    assert feed_points(CatapultDetector(), stable) == []
    # no probe loss at all (curvature off): nothing to judge
    assert feed(CatapultDetector(), [{"loss": v} for v in (1.0, 3.0, 9.0, 1.0, 0.5)]) == []
    with pytest.raises(ValueError, match="rise > 1"):
        CatapultDetector(rise=1.0)


def test_between_probes_the_training_loss_asks_for_the_probes_that_open_and_judge_a_catapult():
    """Under the budget schedule probes are sparse: while the last probe said r ≥ 1, a rise of the
    training loss asks for a probe (which opens the episode on the fixed batch's loss), and its
    return asks for the probe that shows λ_1 fell."""
    detector = CatapultDetector()
    probe = lambda loss, lam, ratio: {"curvature/probe_loss": loss, "curvature/lambda_max": lam,  # noqa: E731
                                      "curvature/stability_ratio": ratio}
    assert detector.update({**probe(1.0, 10.0, 1.5), "loss": 1.0}, 0) == []
    asked = []
    for step, loss in enumerate([1.0, 1.1, 2.5], start=1):
        assert detector.update({"loss": loss}, step) == []
        asked += [step] * detector.wants_curvature
    assert asked == [3]  # 2.5 ≥ 1.5 × the lowest running median (1.0)
    assert detector.update(probe(4.0, 11.0, 1.6), 4) == [] and not detector.wants_curvature  # the rise, on the fixed batch
    for step, loss in enumerate([6.0, 5.0, 2.0, 0.9], start=5):
        assert detector.update({"loss": loss}, step) == []
        asked += [step] * detector.wants_curvature
    assert asked == [3, 8]  # back below 1.5× the training loss's lowest median
    judged = detector.update(probe(0.5, 6.0, 0.9), 9)
    assert [(e.kind, e.step) for e in judged] == [("catapult", 9)]
    assert judged[0].values["lambda_before"] == 10.0 and judged[0].values["peak_loss"] == 4.0


def test_the_training_loss_asks_for_nothing_on_a_stable_run_and_rarely_at_the_edge():
    """r < 1 at the last probe: a rise of the training loss is noise or a hard batch. At r ≥ 1 a
    noisy minibatch loss asks at most once per ``cooldown`` steps."""
    stable = CatapultDetector()
    stable.update({"curvature/probe_loss": 1.0, "curvature/lambda_max": 10.0, "curvature/stability_ratio": 0.5, "loss": 1.0}, 0)
    noisy = [1.0 if step % 2 else 3.0 for step in range(1, 41)]
    assert not any(stable.update({"loss": loss}, step) or stable.wants_curvature for step, loss in enumerate(noisy, 1))
    edge = CatapultDetector(cooldown=10)
    edge.update({"curvature/probe_loss": 1.0, "curvature/lambda_max": 10.0, "curvature/stability_ratio": 1.05, "loss": 1.0}, 0)
    asks = 0
    for step, loss in enumerate(noisy, start=1):
        edge.update({"loss": loss}, step)
        asks += edge.wants_curvature
        edge.wants_curvature = False  # as if the Monitor's point came and showed nothing
    assert 1 <= asks <= 4


def test_the_monitor_sees_the_textbook_catapult_at_its_defaults():
    """Full-batch GD at η·λ_0 = 3 on a wide two-layer ReLU net (Lewkowycz et al. 2020): the loss
    rises for a few steps and comes back as λ_1 falls below 2/η. At the default budget schedule
    the probes are few (step 0 and a few early ones): the catapult is still found, because the
    detector asks for the point that shows λ_1 fell."""
    import torch

    import cases
    import edgewatch as ew
    from edgewatch.curvature import HessianOperator, lanczos

    class TwoLayer(torch.nn.Module):  # NTK parametrization, where η·λ_0 in (2, 4) catapults
        def __init__(self, width=512):
            super().__init__()
            generator = torch.Generator().manual_seed(0)
            self.hidden = torch.nn.Parameter(torch.randn(width, 64, generator=generator))
            self.readout = torch.nn.Parameter(torch.randn(10, width, generator=generator))

        def forward(self, x):
            return torch.relu(x @ self.hidden.T / 8.0) @ self.readout.T / math.sqrt(self.readout.shape[1])

    def mse(model, batch):
        x, y = batch
        out = model(x)
        return 0.5 * (out - torch.nn.functional.one_hot(y, 10).to(out.dtype)).pow(2).sum(-1).mean()

    x, y = cases.digits(128)
    batch = ((x - x.mean(0)) / (x.std(0) + 1e-6), y)
    model = TwoLayer()
    lam0 = lanczos(HessianOperator(model, mse, [batch]), k=1, tol=1e-6).eigenvalues[0].item()
    optimizer = torch.optim.SGD(model.parameters(), lr=3.0 / lam0)
    monitor = ew.Monitor(model, optimizer, mse, probe=[batch], run_dir=False).attach()
    for _ in range(40):
        optimizer.zero_grad()
        loss = mse(model, batch)
        loss.backward()
        monitor.observe(loss)
        optimizer.step()
    kinds = [(e.kind, e.step) for e in monitor.events]
    catapults = [step for kind, step in kinds if kind == "catapult"]
    assert len(catapults) == 1 and 5 <= catapults[0] <= 30, kinds


def test_nonfinite_fires_once_per_episode():
    series = [{"loss": 1.0}, {"loss": math.inf}, {"loss": math.nan}, {"loss": 1.0, "grad/nonfinite_params": 3.0}, {"loss": 1.0}, {"loss": math.nan}]
    events = feed(NonFiniteDetector(), series)
    assert [e.step for e in events] == [1, 5]
    assert all(e.severity == "critical" for e in events)


@pytest.mark.parametrize("make", [EdgeOfStabilityDetector, SpikeDetector, CatapultDetector, NonFiniteDetector,
                                  output_logit_divergence, attention_entropy_collapse])
def test_state_round_trip_continues_as_if_never_stopped(make):
    series = [{"loss": math.nan if i == 80 else 1 + 0.1 * math.sin(i) + (8 if i == 50 else 0),
               "curvature/lambda_max": 1 + 0.05 * i if i < 62 else 0.5,
               "curvature/stability_ratio": 0.02 * i if i < 62 else 0.5, "curvature/probe_loss": 1 + (3 if 55 <= i < 62 else 0),
               "logits/log_z_max": 11.0 * 1.05 ** i, "attn/entropy_mean": 2.0 - 0.019 * i}
              for i in range(100)]
    whole = feed(make(), series)
    first, second = make(), make()
    events = feed(first, series[:60])
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))  # through JSON, as a checkpoint
    events += feed(second, series[60:], start=60)
    assert [e.to_dict() for e in events] == [e.to_dict() for e in whole] and whole


def test_attention_logit_growth_by_level_and_by_doubling():
    from edgewatch.hooks.detectors import attention_logit_growth

    steady = [{"attn/max_logit": 5.0 + 0.1 * i} for i in range(15)]
    assert feed(attention_logit_growth(), steady) == []
    doubling = [{"attn/max_logit": v} for v in (12, 13, 14, 18, 22, 27, 30, 31)]
    events = feed(attention_logit_growth(), doubling)
    assert [(e.step, e.severity) for e in events] == [(5, "warning")]  # 27 >= 2 × 12, above the floor 20
    over = feed(attention_logit_growth(), [{"attn/max_logit": v} for v in (90, 95, 120, 130, 80, 150)])
    assert [(e.step, e.severity) for e in over] == [(2, "critical"), (5, "critical")]
    # a warning does not silence what comes next: the run blowing past the level is reported too
    runaway = feed(attention_logit_growth(), [{"attn/max_logit": v} for v in (12, 26, 40, 9.9e4, 2e5)])
    assert [(e.step, e.severity) for e in runaway] == [(1, "warning"), (3, "critical")]


def test_output_logit_divergence_by_level():
    from edgewatch.hooks.detectors import output_logit_divergence

    assert [e.step for e in feed(output_logit_divergence(), [{"logits/log_z_max": v} for v in (3, 4, 5, 60)])] == [3]


def test_output_logit_growth_of_a_confident_classifier_is_not_divergence():
    """Issue 15: a digits classifier's log Z grew 2.1x while its loss fell 10x: learning. The same growth
    with a flat loss (every logit drifting, which the softmax cannot see) is the divergence."""
    from edgewatch.hooks.detectors import output_logit_divergence

    log_z = [6.0, 7.0, 8.5, 10.0, 11.5, 13.0]
    learning = [{"logits/log_z_max": z, "curvature/probe_loss": loss} for z, loss in zip(log_z, (2.3, 1.2, 0.6, 0.4, 0.3, 0.2))]
    assert feed(output_logit_divergence(), learning) == []
    drifting = [{"logits/log_z_max": z, "curvature/probe_loss": loss} for z, loss in zip(log_z, (0.2, 0.2, 0.19, 0.19, 0.18, 0.18))]
    events = feed(output_logit_divergence(), drifting)
    assert [(e.step, e.severity) for e in events] == [(5, "warning")]  # 13 >= 2 x 6, above 10, loss flat
    assert "curvature/probe_loss" in events[0].message
    rising = [{"logits/log_z_max": z, "curvature/probe_loss": loss} for z, loss in zip(log_z, (0.2, 0.3, 0.5, 1.0, 2.0, 4.0))]
    assert [e.step for e in feed(output_logit_divergence(), rising)] == [5]


def test_attention_entropy_collapse_reads_the_mean_not_one_query():
    from edgewatch.hooks.detectors import attention_entropy_collapse

    # one query at 0.01 nats while the mean stays near its start: a sharp head, not a collapse
    healthy = [{"attn/entropy_mean": m, "attn/entropy_min": q} for m, q in ((2.6, 0.6), (2.4, 0.1), (2.25, 0.01))]
    assert feed(attention_entropy_collapse(), healthy) == []
    means = [{"attn/entropy_mean": v} for v in (2.6, 1.5, 0.6, 0.5, 1.2, 0.05)]
    events = feed(attention_entropy_collapse(), means)
    assert [(e.step, e.severity) for e in events] == [(2, "warning"), (5, "warning")]  # 0.6 < 0.25 x 2.6; re-armed at 1.2


def test_a_lasting_level_shift_is_one_event_not_one_per_step():
    series = [{"grad/norm": 1.0 + 0.01 * math.sin(i)} for i in range(200)]
    series += [{"grad/norm": 2.0 + 0.01 * math.sin(i)} for i in range(300)]
    events = feed(SpikeDetector("grad/norm", "grad_spike"), series)
    assert [e.step for e in events] == [200]
