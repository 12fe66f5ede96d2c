"""Non-finite values: a NaN or infinity anywhere in a step's metrics, or in the gradients."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from edgewatch import names
from edgewatch.hooks.detectors.base import Detector
from edgewatch.hooks.events import Event

__all__ = ["NonFiniteDetector"]

NONFINITE_GRADIENTS = names.GRAD_NONFINITE


class NonFiniteDetector(Detector):
    """``nonfinite`` (critical): some metric is NaN/inf, or ``grad/nonfinite_params`` > 0.

    Fires at the first such step and again only after a step where everything was finite, so a
    diverged run reports once rather than every step. Validated on benchmarks/detectors: a NaN
    input and GD diverging at η·λ_0 = 6 are found at the step of the first non-finite loss.
    """

    kinds = ("nonfinite",)

    def __init__(self) -> None:
        self._reported = False

    def update(self, metrics: Mapping[str, float], step: int) -> list[Event]:
        bad = sorted(name for name, value in metrics.items() if not math.isfinite(value))
        count = metrics.get(NONFINITE_GRADIENTS, 0.0)
        if count and math.isfinite(count) and count > 0:
            bad.append(f"{NONFINITE_GRADIENTS}={int(count)}")
        if not bad:
            self._reported = False
            return []
        if self._reported:
            return []
        self._reported = True
        return [Event(
            step, "nonfinite", "critical",
            f"non-finite values at step {step}: {', '.join(bad[:6])}{' ...' if len(bad) > 6 else ''}",
            {name: float(metrics[name]) for name in bad if name in metrics},
        )]

    def state_dict(self) -> dict[str, Any]:
        return {"reported": self._reported}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._reported = bool(state.get("reported", False))
