"""Logit growth: attention logits, output log Z, and attention entropy collapse (Wortsman et al. 2023).

Growth of the attention logits precedes divergence in small transformers at high learning rates
(qk-layernorm prevents it); the output logits drifting to a large log Z is the other failure mode
(z-loss prevents it); and attention whose entropy collapses toward 0 attends to one key only.
Defaults: attention logits above 100 (the τ MuonClip caps per head) or doubling within the last
10 probes once above 20; log Z above 50, or doubling once above 10 while the probe loss does not
fall; mean attention entropy below 0.1 nats or a quarter of its first value.

References:
    Wortsman et al. 2023, Small-scale proxies for large-scale Transformer training instabilities,
    https://arxiv.org/abs/2309.14322
    Dehghani et al. 2023, Scaling Vision Transformers to 22 Billion Parameters (attention logit
    growth, qk-layernorm), https://arxiv.org/abs/2302.05442
    Zhai et al. 2023, Stabilizing Transformer Training by Preventing Attention Entropy Collapse,
    https://arxiv.org/abs/2303.06296
    Kimi Team 2025, Kimi K2 (MuonClip, τ = 100), https://arxiv.org/abs/2507.20534
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from edgewatch import names
from edgewatch.hooks.detectors.base import Detector
from edgewatch.hooks.events import Event

__all__ = ["EntropyCollapseDetector", "GrowthDetector", "attention_entropy_collapse", "attention_logit_growth", "output_logit_divergence"]


class GrowthDetector(Detector):
    """``kind`` when ``metric`` exceeds ``level`` (critical), or reaches ``factor`` × its minimum
    over the last ``window`` probes while above ``floor`` (warning). A warning is followed by the
    critical event when the metric then passes ``level``; re-arms once back below both.

    With ``loss`` (a metric measured alongside, e.g. ``curvature/probe_loss``), growth counts only
    when that loss has not fallen by more than ``loss_fall`` (relative) since the window's minimum
    of ``metric``: growth that comes with a falling loss is the model becoming confident.
    """

    def __init__(self, metric: str, kind: str, *, level: float, factor: float = 2.0, window: int = 10, floor: float = 0.0,
                 loss: str | None = None, loss_fall: float = 0.5) -> None:
        if not 0 <= loss_fall < 1:
            raise ValueError(f"loss_fall must be in [0, 1), got {loss_fall}")
        self.metric, self.kind, self.level, self.factor, self.floor = metric, kind, level, factor, floor
        self.loss, self.loss_fall = loss, loss_fall
        self.kinds = (kind,)
        self._recent: deque[tuple[float, float]] = deque(maxlen=window)  # (|metric|, loss or NaN)
        self._reported: str | None = None  # the severity reported since the metric last came back

    def update(self, metrics: Mapping[str, float], step: int) -> list[Event]:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return []
        value = abs(float(value))
        loss = float(metrics.get(self.loss, math.nan)) if self.loss is not None else math.nan
        low, low_loss = min(self._recent) if self._recent else (value, loss)
        self._recent.append((value, loss))
        over = value > self.level
        grew = value >= self.floor and low > 0 and value >= self.factor * low and not self._confident(loss, low_loss)
        if not (over or grew):
            self._reported = None
            return []
        severity = "critical" if over else "warning"
        if self._reported == "critical" or self._reported == severity:
            return []
        self._reported = severity
        if over:
            message = f"{self.metric} = {value:.4g} is above {self.level:g}"
        else:
            message = f"{self.metric} grew {value / low:.1f}× within {len(self._recent)} probes, to {value:.4g}"
            if self.loss is not None and math.isfinite(loss):
                message += f", while {self.loss} went from {low_loss:.4g} to {loss:.4g}"
        values = {self.metric: value, "recent_min": low}
        if self.loss is not None:
            values[self.loss] = loss
        return [Event(step, self.kind, severity, message, values)]

    def _confident(self, loss: float, low_loss: float) -> bool:
        """The loss fell since the window's minimum: the growth is learning, not divergence."""
        if self.loss is None or not (math.isfinite(loss) and math.isfinite(low_loss)):
            return False
        return loss < (1 - self.loss_fall) * low_loss

    def state_dict(self) -> dict[str, Any]:
        return {"recent_points": [list(point) for point in self._recent], "reported": self._reported}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._recent.clear()
        if "recent_points" in state:
            self._recent.extend((float(value), float(loss)) for value, loss in state["recent_points"])
        else:  # a checkpoint from before the loss was kept beside the metric
            self._recent.extend((float(v), math.nan) for v in state.get("recent", []))
        reported = state.get("reported")
        # a checkpoint from before the severity was kept holds True: whatever it was, say nothing twice
        self._reported = "critical" if reported is True else (reported if reported in ("warning", "critical") else None)


def attention_logit_growth() -> GrowthDetector:
    """``attention_logit_growth``: the largest attention logit on the probe batch above 100
    (critical), or doubled within 10 probes once above 20 (warning).

    Wortsman et al. 2023 / Dehghani et al. 2023: without qk-layernorm the attention logits of a
    transformer at a large learning rate grow until the attention collapses onto one key.
    Validated on benchmarks/detectors: a 1-layer causal byte transformer at Adam η = 3e-2 (found);
    silent on the same model at AdamW η = 1e-3 with warm-up.
    """
    return GrowthDetector(names.ATTN_MAX_LOGIT, "attention_logit_growth", level=100.0, floor=20.0)


def output_logit_divergence() -> GrowthDetector:
    """``output_logit_divergence``: the largest log Z of the probe's outputs above 50 (critical), or
    doubled within 10 probes once above 10 while the probe loss did not fall by half or more
    (warning).

    Wortsman et al. 2023: the softmax loss cannot see a shift of every logit, so log Z can drift
    away (z-loss prevents it). A classifier becoming confident also grows log Z, but its loss
    falls meanwhile, and fast: the cross-entropy of a correct example falls exponentially in its
    margin, so logits doubling by confidence cut the loss far more than in half (an ordinary digits
    classifier grew log Z 2.1× while its loss fell 10×); a drift leaves it where it was. Validated
    on benchmarks/detectors: found in a run whose output
    bias drifts by 0.5 per step; silent on the healthy classifiers.
    """
    return GrowthDetector(names.LOGITS_LOG_Z_MAX, "output_logit_divergence", level=50.0, floor=10.0,
                          loss=names.PROBE_LOSS)


class EntropyCollapseDetector(Detector):
    """``attention_entropy_collapse`` (warning): the mean attention entropy on the probe batch
    (``attn/entropy_mean``) below ``level`` nats, or below ``fraction`` of its first measured value.

    Zhai et al. 2023: in unstable transformer training the attention entropy collapses, whole heads
    attending to one key. The *mean* over queries and heads, because single queries attending to
    one key are normal (a previous-token head; the healthy byte transformer of the benchmark has a
    query at 0.01 nats after 200 steps, its mean at 87% of the start). Once per episode: re-arms
    when back above both. Defaults: level 0.1 nats, fraction 0.25. Validated on
    benchmarks/detectors: silent on the healthy transformer (AdamW η = 1e-3).
    """

    kinds = ("attention_entropy_collapse",)

    def __init__(self, level: float = 0.1, fraction: float = 0.25, metric: str = names.ATTN_ENTROPY_MEAN) -> None:
        if level < 0 or not 0 <= fraction < 1:
            raise ValueError(f"need level >= 0 and 0 <= fraction < 1, got {level}, {fraction}")
        self.level, self.fraction, self.metric = level, fraction, metric
        self._first: float | None = None
        self._below = False

    def update(self, metrics: Mapping[str, float], step: int) -> list[Event]:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return []
        value = float(value)
        if self._first is None:
            self._first = value
        below = value < self.level or value < self.fraction * self._first
        was_below, self._below = self._below, below
        if not below or was_below:
            return []
        return [Event(step, "attention_entropy_collapse", "warning",
                      f"{self.metric} = {value:.3g} nats, down from {self._first:.3g}: attention collapses onto single keys",
                      {self.metric: value, "first": self._first})]

    def state_dict(self) -> dict[str, Any]:
        return {"first": self._first, "below": self._below}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._first = state.get("first")
        self._below = bool(state.get("below", False))


def attention_entropy_collapse(level: float = 0.1, fraction: float = 0.25) -> EntropyCollapseDetector:
    """The default :class:`EntropyCollapseDetector` (mean entropy below 0.1 nats or a quarter of its start)."""
    return EntropyCollapseDetector(level, fraction)
