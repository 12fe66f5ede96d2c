r"""Edge of stability: the stability ratio reaching 1, staying there, and the sharpening before it.

The stability ratio :math:`r = η λ_1(D^{1/2} H D^{1/2}) / c` (:mod:`edgewatch.optimizers.stability`) is 1 at the
edge of stability. Gradient descent typically sharpens progressively (λ_1 rises) until r reaches
1, then hovers there while the loss keeps falling non-monotonically (Cohen et al. 2021); adaptive
methods do the same with the preconditioned sharpness against 38/η (Cohen et al. 2022).

References:
    Cohen, Kaur, Li, Kolter, Talwalkar 2021, https://arxiv.org/abs/2103.00065
    Cohen et al. 2022, Adaptive Gradient Methods at the Edge of Stability, https://arxiv.org/abs/2207.14484
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from edgewatch.hooks.events import Detector, Event

__all__ = ["EdgeOfStabilityDetector"]

RATIO = "curvature/stability_ratio"
SHARPNESS = "curvature/lambda_max"


class EdgeOfStabilityDetector(Detector):
    """``eos_reached``, ``eos_sustained`` and ``progressive_sharpening`` from curvature probes.

    Args:
        tolerance: the band ``|r − 1| <= tolerance`` counts as the edge. ``eos_reached`` fires when
            r first rises to ``1 − tolerance`` (again after falling below ``1 − 2·tolerance``);
            severity ``warning`` when it is already above ``1 + tolerance``.
        sustained_probes: ``eos_sustained`` fires once r has stayed in the band for this many
            consecutive probes (again after leaving it).
        sharpening_probes, sharpening_growth: ``progressive_sharpening`` fires when λ_1 rose at
            each of the last ``sharpening_probes`` probes by ``sharpening_growth`` (relative) in
            all, while r is still below the band (once per such stretch).

    Probes without ``curvature/stability_ratio`` (or ``curvature/lambda_max``) are ignored, so
    the detector can see every step's metrics.
    """

    kinds = ("eos_reached", "eos_sustained", "progressive_sharpening")

    def __init__(
        self,
        tolerance: float = 0.05,
        sustained_probes: int = 5,
        sharpening_probes: int = 5,
        sharpening_growth: float = 0.1,
    ) -> None:
        if not 0 < tolerance < 0.5:
            raise ValueError(f"tolerance must be in (0, 0.5), got {tolerance}")
        if sustained_probes < 1 or sharpening_probes < 2:
            raise ValueError("sustained_probes must be >= 1 and sharpening_probes >= 2")
        self.tolerance = tolerance
        self.sustained_probes = sustained_probes
        self.sharpening_growth = sharpening_growth
        self._armed = True  # eos_reached may fire
        self._in_band = 0  # consecutive probes with |r - 1| <= tolerance
        self._sharpness: deque[float] = deque(maxlen=sharpening_probes)
        self._sharpening_reported = False

    def update(self, metrics: Mapping[str, float], step: int) -> list[Event]:
        events = []
        ratio = metrics.get(RATIO)
        if ratio is not None and ratio == ratio:  # not NaN
            events += self._ratio_events(float(ratio), step)
        sharpness = metrics.get(SHARPNESS)
        if sharpness is not None and sharpness == sharpness:
            events += self._sharpening_events(float(sharpness), ratio, step)
        return events

    def _ratio_events(self, ratio: float, step: int) -> list[Event]:
        events, tol = [], self.tolerance
        if self._armed and ratio >= 1 - tol:
            self._armed = False
            above = ratio > 1 + tol
            events.append(Event(
                step, "eos_reached", "warning" if above else "info",
                f"stability ratio r = {ratio:.3f} reached the edge of stability (1 ± {tol:g})"
                + ("; already past it: the top direction is unstable" if above else ""),
                {"stability_ratio": ratio},
            ))
        elif ratio < 1 - 2 * tol:
            self._armed = True
        self._in_band = self._in_band + 1 if abs(ratio - 1) <= tol else 0
        if self._in_band == self.sustained_probes:
            events.append(Event(
                step, "eos_sustained", "info",
                f"r has stayed within 1 ± {tol:g} for {self.sustained_probes} probes (now {ratio:.3f})",
                {"stability_ratio": ratio, "probes": float(self.sustained_probes)},
            ))
        return events

    def _sharpening_events(self, sharpness: float, ratio: float | None, step: int) -> list[Event]:
        history = self._sharpness
        rising = not history or sharpness > history[-1]
        history.append(sharpness)
        if not rising:
            self._sharpening_reported = False
            return []
        below_edge = ratio is None or ratio < 1 - self.tolerance
        if len(history) < history.maxlen or self._sharpening_reported or not below_edge:
            return []
        steadily = all(b > a for a, b in zip(history, list(history)[1:]))
        growth = history[-1] / history[0] - 1 if history[0] > 0 else 0.0
        if not (steadily and growth >= self.sharpening_growth):
            return []
        self._sharpening_reported = True
        return [Event(
            step, "progressive_sharpening", "info",
            f"λ_1 rose at each of the last {len(history)} probes, by {growth:.0%} to {sharpness:.4g}",
            {"lambda_max": sharpness, "growth": growth},
        )]

    def state_dict(self) -> dict[str, Any]:
        return {
            "armed": self._armed,
            "in_band": self._in_band,
            "sharpness": list(self._sharpness),
            "sharpening_reported": self._sharpening_reported,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._armed = bool(state.get("armed", True))
        self._in_band = int(state.get("in_band", 0))
        self._sharpness.clear()
        self._sharpness.extend(state.get("sharpness", []))
        self._sharpening_reported = bool(state.get("sharpening_reported", False))
