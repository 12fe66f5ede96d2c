"""Logit growth: attention logits, output log Z, and attention entropy collapse (Wortsman et al. 2023).

Growth of the attention logits precedes divergence in small transformers at high learning rates
(qk-layernorm prevents it); the output logits drifting to a large log Z is the other failure mode
(z-loss prevents it); and attention whose entropy collapses toward 0 attends to one key only.
Defaults: attention logits above 100 (the τ MuonClip caps per head) or doubling within the last
10 probes once above 20; log Z above 50 or doubling once above 10; entropy below 0.05 nats.

References:
    Wortsman et al. 2023, Small-scale proxies for large-scale Transformer training instabilities,
    https://arxiv.org/abs/2309.14322
    Zhai et al. 2023, Stabilizing Transformer Training by Preventing Attention Entropy Collapse,
    https://arxiv.org/abs/2303.06296
    Kimi Team 2025, Kimi K2 (MuonClip, τ = 100), https://arxiv.org/abs/2507.20534
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from edgewatch.hooks.detectors.thresholds import ThresholdDetector
from edgewatch.hooks.events import Detector, Event

__all__ = ["GrowthDetector", "attention_entropy_collapse", "attention_logit_growth", "output_logit_divergence"]


class GrowthDetector(Detector):
    """``kind`` when ``metric`` exceeds ``level`` (critical), or reaches ``factor`` × its minimum
    over the last ``window`` probes while above ``floor`` (warning). Re-arms once back below."""

    def __init__(self, metric: str, kind: str, *, level: float, factor: float = 2.0, window: int = 10, floor: float = 0.0) -> None:
        self.metric, self.kind, self.level, self.factor, self.floor = metric, kind, level, factor, floor
        self.kinds = (kind,)
        self._recent: deque[float] = deque(maxlen=window)
        self._reported = False

    def update(self, metrics: Mapping[str, float], step: int) -> list[Event]:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return []
        value = abs(float(value))
        low = min(self._recent) if self._recent else value
        self._recent.append(value)
        over = value > self.level
        grew = value >= self.floor and low > 0 and value >= self.factor * low
        if not (over or grew):
            self._reported = False
            return []
        if self._reported:
            return []
        self._reported = True
        if over:
            message = f"{self.metric} = {value:.4g} is above {self.level:g}"
        else:
            message = f"{self.metric} grew {value / low:.1f}× within {len(self._recent)} probes, to {value:.4g}"
        return [Event(step, self.kind, "critical" if over else "warning", message, {self.metric: value, "recent_min": low})]

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self._recent), "reported": self._reported}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._recent.clear()
        self._recent.extend(state.get("recent", []))
        self._reported = bool(state.get("reported", False))


def attention_logit_growth() -> GrowthDetector:
    return GrowthDetector("attn/max_logit", "attention_logit_growth", level=100.0, floor=20.0)


def output_logit_divergence() -> GrowthDetector:
    return GrowthDetector("logits/log_z_max", "output_logit_divergence", level=50.0, floor=10.0)


def attention_entropy_collapse(level: float = 0.05) -> ThresholdDetector:
    return ThresholdDetector(
        "attn/entropy_min", "attention_entropy_collapse", level, below=True,
        what="some query attends to a single key (entropy collapse)",
    )
