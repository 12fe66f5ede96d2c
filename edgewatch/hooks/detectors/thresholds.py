"""A metric above a fixed level: the shape of ``adam_epsilon_dominates`` (and, later, logit limits)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from edgewatch import names
from edgewatch.hooks.detectors.base import Detector
from edgewatch.hooks.events import Event

__all__ = ["ThresholdDetector", "adam_epsilon_dominates"]


class ThresholdDetector(Detector):
    """Raises ``kind`` when ``metric`` first crosses ``level`` (above it, or below it with
    ``below=True``); again only after it came back."""

    def __init__(
        self, metric: str, kind: str, level: float, *, below: bool = False, severity: str = "warning", what: str = ""
    ) -> None:
        self.metric, self.kind, self.level, self.severity, self.what = metric, kind, level, severity, what
        self.below = below
        self.kinds = (kind,)
        self._above = False  # "past the level", whichever side that is

    def update(self, metrics: Mapping[str, float], step: int) -> list[Event]:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return []
        past = value < self.level if self.below else value > self.level
        was_past, self._above = self._above, past
        if not past or was_past:
            return []
        side = "below" if self.below else "above"
        return [Event(step, self.kind, self.severity,
                      f"{self.metric} = {value:.4g} is {side} {self.level:g}" + (f": {self.what}" if self.what else ""),
                      {self.metric: float(value)})]

    def state_dict(self) -> dict[str, Any]:
        return {"above": self._above}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._above = bool(state.get("above", False))


def adam_epsilon_dominates(level: float = 0.5) -> ThresholdDetector:
    """``adam_epsilon_dominates`` (warning): Adam's ε exceeds √v̂ for more than ``level`` (default
    0.5) of the coordinates (``adam/epsilon_fraction``; Everett et al. 2024). Validated on
    benchmarks/detectors: Adam with ε = 1 found at step 1; silent on the healthy Adam and AdamW runs."""
    return ThresholdDetector(
        names.ADAM_EPSILON_FRACTION, "adam_epsilon_dominates", level,
        what="ε dominates Adam's denominator there, which then steps like SGD with rate η/ε",
    )
