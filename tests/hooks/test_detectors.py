"""Event detectors on synthetic series with known answers and on state round trips.

The same detectors on real runs (digits GD reaching the edge, a diverging run) are in
test_monitor.py, driven by the Monitor.
"""

from __future__ import annotations

import json
import math

import pytest

from edgewatch.hooks.detectors import CatapultDetector, EdgeOfStabilityDetector, NonFiniteDetector, SpikeDetector
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


def test_eos_sustained_after_k_probes_in_band():
    ratios = [0.97, 1.02, 0.99, 1.04, 1.0, 1.01, 0.7, 1.0, 1.0, 1.0, 1.0, 1.0]
    events = feed(EdgeOfStabilityDetector(sustained_probes=5), [{"curvature/stability_ratio": r} for r in ratios])
    assert [e.step for e in events if e.kind == "eos_sustained"] == [4, 11]


def test_progressive_sharpening_before_the_edge_only():
    sharpness = [1.0, 1.05, 1.1, 1.16, 1.22, 1.3, 1.25, 1.3, 1.4, 1.5, 1.6, 1.7]
    metrics = [{"curvature/lambda_max": s, "curvature/stability_ratio": s / 2} for s in sharpness]
    events = [e for e in feed(EdgeOfStabilityDetector(sharpening_probes=5), metrics) if e.kind == "progressive_sharpening"]
    assert [e.step for e in events] == [4, 10]  # once per rising stretch
    at_edge = [{"curvature/lambda_max": s, "curvature/stability_ratio": 1.0} for s in sharpness]
    assert not [e for e in feed(EdgeOfStabilityDetector(), at_edge) if e.kind == "progressive_sharpening"]


def test_spike_rules():
    calm = [{"loss": 1.0 + 0.01 * math.sin(i)} for i in range(40)]
    detector = SpikeDetector()
    assert feed(detector, calm) == []
    sigma_spike = detector.update({"loss": 1.2}, 40)  # ~28σ above a calm window
    assert [(e.kind, e.severity) for e in sigma_spike] == [("loss_spike", "warning")]
    huge = detector.update({"loss": 15.0}, 41)  # over 10x the running max (1.2, the spike counts)
    assert [(e.kind, e.severity) for e in huge] == [("loss_spike", "critical")]
    assert detector.update({"loss": 1.0}, 42) == []
    assert detector.update({"loss": math.nan}, 43) == []  # NaN is for NonFiniteDetector
    grads = SpikeDetector("grad/norm", "grad_spike")
    assert feed(grads, [{"grad/norm": 2.0}] * 20 + [{"grad/norm": 30.0}])[0].kind == "grad_spike"


def test_catapult_is_a_spike_then_a_sharpness_drop():
    series = [{"loss": 1.0 - 0.001 * i, "curvature/lambda_max": 10.0} for i in range(30)]
    series.append({"loss": 5.0})  # the loss catapults up
    series += [{"loss": 2.0}, {"loss": 1.0, "curvature/lambda_max": 9.0}, {"loss": 0.9, "curvature/lambda_max": 6.0}]
    events = feed(CatapultDetector(drop=0.2), series)
    assert [(e.kind, e.step) for e in events] == [("catapult", 33)]
    assert events[0].values["lambda_before"] == 10.0 and events[0].values["lambda_after"] == 6.0
    # no spike, no catapult, however much λ_1 falls
    quiet = [{"loss": 1.0, "curvature/lambda_max": 10.0 / (1 + i)} for i in range(40)]
    assert feed(CatapultDetector(), quiet) == []


def test_catapult_from_initialization_is_a_climb_then_a_sharpness_drop():
    """Lewkowycz et al. 2020: the loss grows a few-fold per step from step 1 (never 10x at once, and
    before any spike window has filled), then falls as λ_1 drops below where it started."""
    losses = [1.0, 1.8, 3.5, 6.0, 3.0, 1.0, 0.5, 0.4]
    sharpness = [10.0, 12.0, 12.5, 11.0, 8.5, 5.0, 4.0, 4.0]
    series = [{"loss": loss, "curvature/lambda_max": lam} for loss, lam in zip(losses, sharpness)]
    events = feed(CatapultDetector(drop=0.2), series)
    assert [(e.kind, e.step) for e in events] == [("catapult", 5)]  # λ_1 5.0 <= 0.8 x 10.0, λ_1 before the climb
    assert events[0].values["lambda_before"] == 10.0 and events[0].values["spike_step"] == 2  # 3.5 >= 2 x 1.0
    # noise: single rising steps, however large, and a slow two-step climb short of 2x, are no catapult
    noisy = [{"loss": loss, "curvature/lambda_max": 10.0 / (1 + i)} for i, loss in
             enumerate([1.0, 1.9, 1.0, 1.8, 0.9, 1.2, 1.6, 1.0, 1.7, 0.8])]
    assert feed(CatapultDetector(), noisy) == []
    # the loss climbs 6x but λ_1 never falls: divergence, not a catapult
    diverging = [{"loss": 2.0 ** i, "curvature/lambda_max": 10.0 + i} for i in range(12)]
    assert feed(CatapultDetector(), diverging) == []
    # a climb that goes on after λ_1 has fallen is one catapult, not one per step
    long_climb = [{"loss": 2.0 ** i, "curvature/lambda_max": 10.0 - i} for i in range(8)]
    assert [e.step for e in feed(CatapultDetector(), long_climb)] == [2]  # 8.0 <= 0.8 x 10.0 (λ_1 at the start)
    with pytest.raises(ValueError, match="rise > 1"):
        CatapultDetector(rise=1.0)


def test_nonfinite_fires_once_per_episode():
    series = [{"loss": 1.0}, {"loss": math.inf}, {"loss": math.nan}, {"loss": 1.0, "grad/nonfinite_params": 3.0}, {"loss": 1.0}, {"loss": math.nan}]
    events = feed(NonFiniteDetector(), series)
    assert [e.step for e in events] == [1, 5]
    assert all(e.severity == "critical" for e in events)


@pytest.mark.parametrize("make", [EdgeOfStabilityDetector, SpikeDetector, CatapultDetector, NonFiniteDetector])
def test_state_round_trip_continues_as_if_never_stopped(make):
    series = [{"loss": 1 + 0.1 * math.sin(i) + (8 if i == 50 else 0), "curvature/lambda_max": 1 + 0.05 * i,
               "curvature/stability_ratio": 0.02 * i} for i in range(100)]
    whole = feed(make(), series)
    first, second = make(), make()
    events = feed(first, series[:60])
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))  # through JSON, as a checkpoint
    events += feed(second, series[60:], start=60)
    assert events == whole


def test_attention_logit_growth_by_level_and_by_doubling():
    from edgewatch.hooks.detectors import attention_logit_growth

    steady = [{"attn/max_logit": 5.0 + 0.1 * i} for i in range(15)]
    assert feed(attention_logit_growth(), steady) == []
    doubling = [{"attn/max_logit": v} for v in (12, 13, 14, 18, 22, 27, 30, 31)]
    events = feed(attention_logit_growth(), doubling)
    assert [(e.step, e.severity) for e in events] == [(5, "warning")]  # 27 >= 2 × 12, above the floor 20
    over = feed(attention_logit_growth(), [{"attn/max_logit": v} for v in (90, 95, 120, 130, 80, 150)])
    assert [(e.step, e.severity) for e in over] == [(2, "critical"), (5, "critical")]


def test_output_logit_divergence_and_entropy_collapse():
    from edgewatch.hooks.detectors import attention_entropy_collapse, output_logit_divergence

    assert [e.step for e in feed(output_logit_divergence(), [{"logits/log_z_max": v} for v in (3, 4, 5, 60)])] == [3]
    entropy = [{"attn/entropy_min": v} for v in (1.0, 0.5, 0.04, 0.03, 0.2, 0.01)]
    events = feed(attention_entropy_collapse(), entropy)
    assert [(e.step, e.kind) for e in events] == [(2, "attention_entropy_collapse"), (5, "attention_entropy_collapse")]


def test_a_lasting_level_shift_is_one_event_not_one_per_step():
    series = [{"grad/norm": 1.0 + 0.01 * math.sin(i)} for i in range(200)]
    series += [{"grad/norm": 1.5 + 0.01 * math.sin(i)} for i in range(300)]
    events = feed(SpikeDetector("grad/norm", "grad_spike"), series)
    assert [e.step for e in events] == [200]
