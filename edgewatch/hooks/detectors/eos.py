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

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from edgewatch import names
from edgewatch.hooks.detectors.base import Detector
from edgewatch.hooks.events import Event

__all__ = ["EdgeOfStabilityDetector", "fitted_rate"]

RATIO = names.STABILITY_RATIO
SHARPNESS = names.LAMBDA_MAX
# Present only when the preconditioner is not the identity (Adam, AdamW, RMSprop, ...).
ADAPTIVE = names.PRECOND_CONVERGED


def fitted_rate(points: list[tuple[int, float]]) -> float:
    """The relative growth per step of positive values, ``exp(slope) − 1`` of a least-squares line
    through (step, log value): a rate per step whatever the spacing of the points."""
    steps = [float(s) for s, _ in points]
    logs = [math.log(v) for _, v in points]
    mean_s, mean_l = sum(steps) / len(steps), sum(logs) / len(logs)
    spread = sum((s - mean_s) ** 2 for s in steps)
    if spread == 0:
        return 0.0
    slope = sum((s - mean_s) * (v - mean_l) for s, v in zip(steps, logs)) / spread
    return math.expm1(slope)


class EdgeOfStabilityDetector(Detector):
    """``eos_reached``, ``eos_sustained`` and ``progressive_sharpening`` from curvature probes.

    Rules (Cohen et al. 2021 for GD and momentum, 2 /η and (2 + 2β)/η; Cohen et al. 2022 for Adam,
    38/η at β1 = 0.9):

    - ``eos_reached``: r first rises to ``1 − tolerance`` (again after falling below
      ``1 − 2·tolerance``); severity ``warning`` when it is already above ``1 + tolerance``
      ("past the edge": the top direction is unstable), else ``info``.
    - Adaptive warm-up: while the preconditioner is not the identity (the step's metrics carry
      ``curvature/precond/*``), probes before step ``adaptive_warmup`` are not judged. Adam's
      bias-corrected second moment v̂_t is then the average of fewer than ``adaptive_warmup``
      squared gradients, the newest weighing ≥ 1/t in it (for t ≪ 1/(1 − β2)); after one step
      v̂ = g², so coordinates with a small first gradient get a huge step size and r is 5-100,
      while the preconditioner changes by tens of percent per step. The 38/η threshold is derived
      for a slowly varying preconditioner, which this is not; the loss falls normally meanwhile.
    - ``eos_sustained``: r has stayed at the edge for ``sustained_steps`` steps: every probe of
      the last ``sustained_steps`` steps (≥ 3, spanning at least half of them) has r ≥ 1 − 2·tolerance
      and their median is within 1 ± 2·tolerance (at the edge r hovers and overshoots by a few
      percent, Cohen et al. 2021). Once per stay: re-armed when a probe falls below
      1 − 2·tolerance. Counted in steps, so the verdict does not depend on the probe spacing.
    - ``progressive_sharpening``: λ_1 (``curvature/lambda_max``) grows at a fitted rate of at least
      ``sharpening_rate`` per 100 steps: a least-squares line through (step, log λ_1) of the probes
      in the last ``sharpening_window`` steps, which need ≥ 3 points spanning at least half the
      window; while r is below the band. Once per stretch: it re-arms when the fitted rate turns
      negative or r reaches the band. A rate per step over a window of steps, so the verdict does
      not depend on how densely probes are sampled.

    Defaults: tolerance 0.05, sustained_steps 100, adaptive_warmup 50 steps, sharpening_rate 2%
    per 100 steps (the 33% over 900 steps of issue 15 is 3.2%) over a 100-step window. Validated on
    benchmarks/detectors (benchmarks/DETECTORS.md): full-batch GD crossing 2/η (found at the probe
    η·λ_1 reached 2), full-batch Adam reaching 38/η, catapults past 2/η at step 0, and no event
    of severity warning on healthy SGD, momentum, Adam and AdamW runs probed from step 1 on.

    Probes without ``curvature/stability_ratio`` (or ``curvature/lambda_max``) are ignored, so
    the detector can see every step's metrics.
    """

    kinds = ("eos_reached", "eos_sustained", "progressive_sharpening")

    def __init__(
        self,
        tolerance: float = 0.05,
        sustained_steps: int = 100,
        *,
        adaptive_warmup: int = 50,
        sharpening_rate: float = 0.02,
        sharpening_window: int = 100,
    ) -> None:
        if not 0 < tolerance < 0.5:
            raise ValueError(f"tolerance must be in (0, 0.5), got {tolerance}")
        if sustained_steps < 1 or adaptive_warmup < 0:
            raise ValueError("sustained_steps must be >= 1 and adaptive_warmup >= 0")
        if not sharpening_rate > 0 or sharpening_window < 2:
            raise ValueError(f"need sharpening_rate > 0 and sharpening_window >= 2, got {sharpening_rate}, {sharpening_window}")
        self.tolerance = tolerance
        self.sustained_steps = sustained_steps
        self.adaptive_warmup = adaptive_warmup
        self.sharpening_rate, self.sharpening_window = sharpening_rate, sharpening_window
        self._armed = True  # eos_reached may fire
        self._at_edge: deque[tuple[int, float]] = deque()  # (step, r) since r last fell below 1 - 2·tolerance
        self._sustained_reported = False
        self._sharpness: deque[tuple[int, float]] = deque()
        self._sharpening_reported = False

    def update(self, metrics: Mapping[str, float], step: int) -> list[Event]:
        events = []
        ratio = metrics.get(RATIO)
        if ratio is not None and math.isfinite(ratio):
            if ADAPTIVE in metrics and step < self.adaptive_warmup:
                ratio = None  # Adam's v̂ is still warming up: not an edge-of-stability signal
            else:
                events += self._ratio_events(float(ratio), step)
        else:
            ratio = None
        sharpness = metrics.get(SHARPNESS)
        if sharpness is not None and math.isfinite(sharpness) and sharpness > 0:
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
        events += self._sustained_events(ratio, step)
        return events

    def _sustained_events(self, ratio: float, step: int) -> list[Event]:
        tol, stay, span = self.tolerance, self._at_edge, self.sustained_steps
        if ratio < 1 - 2 * tol:
            stay.clear()
            self._sustained_reported = False
            return []
        stay.append((step, ratio))
        while stay and stay[0][0] < step - span:
            stay.popleft()
        if self._sustained_reported or len(stay) < 3 or stay[-1][0] - stay[0][0] < span / 2:
            return []
        median = sorted(r for _, r in stay)[len(stay) // 2]
        if abs(median - 1) > 2 * tol:
            return []
        self._sustained_reported = True
        return [Event(
            step, "eos_sustained", "info",
            f"r has stayed at the edge of stability for {stay[-1][0] - stay[0][0]} steps "
            f"({len(stay)} probes, median {median:.3f}, now {ratio:.3f})",
            {"stability_ratio": ratio, "median": median, "probes": float(len(stay))},
        )]

    def _sharpening_events(self, sharpness: float, ratio: float | None, step: int) -> list[Event]:
        history, window = self._sharpness, self.sharpening_window
        history.append((step, sharpness))
        while history and history[0][0] < step - window:
            history.popleft()
        if len(history) < 3 or history[-1][0] - history[0][0] < window / 2:
            return []
        rate = (1 + fitted_rate(list(history))) ** 100 - 1  # per 100 steps
        if rate < 0 or (ratio is not None and ratio >= 1 - self.tolerance):
            self._sharpening_reported = False
            return []
        if self._sharpening_reported or rate < self.sharpening_rate:
            return []
        self._sharpening_reported = True
        span = history[-1][0] - history[0][0]
        return [Event(
            step, "progressive_sharpening", "info",
            f"λ_1 rose at {rate:.1%} per 100 steps over the last {span} steps ({len(history)} probes), to {sharpness:.4g}",
            {"lambda_max": sharpness, "rate_per_100_steps": rate, "window_steps": float(span)},
        )]

    def state_dict(self) -> dict[str, Any]:
        return {
            "armed": self._armed,
            "at_edge": [list(point) for point in self._at_edge],
            "sustained_reported": self._sustained_reported,
            "sharpness_points": [list(point) for point in self._sharpness],
            "sharpening_reported": self._sharpening_reported,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._armed = bool(state.get("armed", True))
        self._at_edge.clear()
        self._at_edge.extend((int(s), float(r)) for s, r in state.get("at_edge", []))
        self._sustained_reported = bool(state.get("sustained_reported", False))
        self._sharpness.clear()
        self._sharpness.extend((int(s), float(v)) for s, v in state.get("sharpness_points", []))
        self._sharpening_reported = bool(state.get("sharpening_reported", False))
