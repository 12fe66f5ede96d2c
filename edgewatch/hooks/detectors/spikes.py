r"""Spikes in a scalar series (loss, gradient norm), and catapults: a loss spike then a sharpness drop.

A value is a spike when it lies more than ``sigmas`` standard deviations above the mean of the
last ``window`` values (default 6σ over 128 steps) or above ``factor`` times
the largest value seen so far (default 10×). Spikes are kept out of the window, so a run of them
stays visible.

In the catapult phase of large learning rates the loss first grows, then falls, while the
sharpness drops until the step is stable again (Lewkowycz et al. 2020): a loss spike, or a climb
of the loss over consecutive steps to ``rise`` times where it started, followed within a few
hundred steps by a clear fall of λ_1. The climb is what a catapult from initialization looks
like: the loss grows ×1.5-3 per step from the first step on, never 10× at once, and is over
before a spike detector's window has filled.

References:
    Lewkowycz, Bahri, Dyer, Sohl-Dickstein, Gur-Ari 2020, The large learning rate phase of deep
    learning: the catapult mechanism, https://arxiv.org/abs/2003.02218
    Lightning Fabric's SpikeDetection (mean + k·σ over a window), for the spike rule.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from edgewatch.hooks.events import Detector, Event

__all__ = ["CatapultDetector", "SpikeDetector"]


class SpikeDetector(Detector):
    """``loss_spike`` (metric ``loss``) or ``grad_spike`` (metric ``grad/norm``), or any series.

    Args:
        metric: the metric name to watch.
        kind: the event kind to raise.
        window: how many past (non-spike) values the mean and σ come from.
        sigmas: a value above mean + sigmas·σ of the window is a spike (``warning``).
        factor: a value above factor × the running maximum is a spike (``critical``).
        min_history: no σ-test before this many values are in the window.

    A run of spikes raises one event (and one more if it turns critical); from its third step on
    the values join the window, so a lasting change of level becomes the new normal instead of
    an event every step.
    """

    def __init__(
        self,
        metric: str = "loss",
        kind: str = "loss_spike",
        *,
        window: int = 128,
        sigmas: float = 6.0,
        factor: float = 10.0,
        min_history: int = 16,
    ) -> None:
        if window < 2 or min_history < 2 or min_history > window:
            raise ValueError(f"need 2 <= min_history <= window, got {min_history}, {window}")
        self.metric, self.kind = metric, kind
        self.kinds = (kind,)
        self.sigmas, self.factor, self.min_history = sigmas, factor, min_history
        self._window: deque[float] = deque(maxlen=window)
        self._running_max = -math.inf
        self._streak = 0  # consecutive spiking steps
        self._critical = False  # the current episode already raised a critical event
        self.patience = 3

    def update(self, metrics: Mapping[str, float], step: int) -> list[Event]:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):  # non-finite values are NonFiniteDetector's
            return []
        value = float(value)
        events = []
        if self._running_max > 0 and value > self.factor * self._running_max:
            events.append(Event(
                step, self.kind, "critical",
                f"{self.metric} = {value:.4g} is over {self.factor:g}× its largest value so far ({self._running_max:.4g})",
                {self.metric: value, "running_max": self._running_max},
            ))
        elif len(self._window) >= self.min_history and value > (mean := sum(self._window) / len(self._window)):
            # The spread only for values above the mean: it is the costly part, every step.
            std = math.sqrt(sum((x - mean) ** 2 for x in self._window) / (len(self._window) - 1))
            if std > 0 and value > mean + self.sigmas * std:
                events.append(Event(
                    step, self.kind, "warning",
                    f"{self.metric} = {value:.4g} is {(value - mean) / std:.1f}σ above the mean of the "
                    f"last {len(self._window)} steps ({mean:.4g})",
                    {self.metric: value, "mean": mean, "std": std},
                ))
        # One event per episode; a spike that lasts (a new level, not a spike) joins the window.
        if events:
            self._streak += 1
            escalated = events[0].severity == "critical" and not self._critical
            self._critical = self._critical or events[0].severity == "critical"
            if self._streak > 1 and not escalated:  # one event per episode, unless it worsens
                events = []
            if self._streak >= self.patience:
                self._window.append(value)
        else:
            self._streak, self._critical = 0, False
            self._window.append(value)
        self._running_max = max(self._running_max, value)
        return events

    def state_dict(self) -> dict[str, Any]:
        return {"window": list(self._window), "running_max": self._running_max, "streak": self._streak, "critical": self._critical}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._window.clear()
        self._window.extend(state.get("window", []))
        self._running_max = float(state.get("running_max", -math.inf))
        self._streak = int(state.get("streak", 0))
        self._critical = bool(state.get("critical", False))


class CatapultDetector(Detector):
    """``catapult``: a loss spike or climb, then λ_1 falls by ``drop`` within ``within`` steps.

    Args:
        drop: relative fall of ``curvature/lambda_max`` below its value before the loss went up.
        within: steps after the spike or climb in which the fall must be measured.
        spike: the loss-spike rule (a :class:`SpikeDetector` on ``loss``; its events are not
            re-raised here, the Monitor runs its own ``loss_spike`` detector).
        rise: a climb counts once the loss, rising at every step, has reached ``rise`` times
            its value before the climb.
        climb_steps: the fewest consecutive rising steps a climb needs (one noisy step is not one).
    """

    kinds = ("catapult",)

    def __init__(self, drop: float = 0.2, within: int = 200, spike: SpikeDetector | None = None, *,
                 rise: float = 2.0, climb_steps: int = 2) -> None:
        if not 0 < drop < 1:
            raise ValueError(f"drop must be in (0, 1), got {drop}")
        if not rise > 1 or climb_steps < 1:
            raise ValueError(f"need rise > 1 and climb_steps >= 1, got {rise}, {climb_steps}")
        self.drop, self.within, self.rise, self.climb_steps = drop, within, rise, climb_steps
        self.spike = spike if spike is not None else SpikeDetector("loss", "loss_spike")
        self._sharpness_before: float | None = None  # λ_1 at the last probe before now
        self._pending: tuple[int, float] | None = None  # (spike step, λ_1 before it)
        self._last_loss: float | None = None
        self._climb: tuple[float, int, float | None] | None = None  # (loss before it, rising steps, λ_1 before it)

    def _climbed(self, metrics: Mapping[str, float]) -> float | None:
        """λ_1 from before the climb, the first time the loss has climbed ``rise``×; None otherwise.

        One climb counts once however long it goes on; a fall of the loss (or a non-finite one)
        ends it.
        """
        loss = metrics.get("loss")
        if loss is None:
            return None
        last = self._last_loss
        self._last_loss = float(loss) if math.isfinite(loss) else None
        if last is None or self._last_loss is None or loss <= last:
            self._climb = None
            return None
        start, rising, sharpness = self._climb or (last, 0, self._sharpness_before)
        if sharpness is None:  # λ_1 unknown before the climb: nothing to measure a fall against
            sharpness = self._sharpness_before
        counted = rising >= self.climb_steps and start > 0 and last >= self.rise * start  # counted at the last step
        self._climb = (start, rising + 1, sharpness)
        if counted or rising + 1 < self.climb_steps or not start > 0 or loss < self.rise * start:
            return None
        return sharpness

    def update(self, metrics: Mapping[str, float], step: int) -> list[Event]:
        events = []
        spiked = bool(self.spike.update(metrics, step))
        climbed = self._climbed(metrics)
        if self._pending is None:
            if spiked and self._sharpness_before is not None:
                self._pending = (step, self._sharpness_before)
            elif climbed is not None:
                self._pending = (step, climbed)
        sharpness = metrics.get("curvature/lambda_max")
        if sharpness is not None and math.isfinite(sharpness):
            if self._pending is not None:
                spike_step, before = self._pending
                if step - spike_step > self.within:
                    self._pending = None
                elif sharpness <= (1 - self.drop) * before:
                    events.append(Event(
                        step, "catapult", "info",
                        f"loss went up at step {spike_step}, then λ_1 fell from {before:.4g} to "
                        f"{sharpness:.4g}: a catapult to a flatter region",
                        {"lambda_before": before, "lambda_after": float(sharpness), "spike_step": float(spike_step)},
                    ))
                    self._pending = None
            self._sharpness_before = float(sharpness)
        return events

    def state_dict(self) -> dict[str, Any]:
        return {"spike": self.spike.state_dict(), "sharpness_before": self._sharpness_before, "pending": self._pending,
                "last_loss": self._last_loss, "climb": self._climb}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.spike.load_state_dict(state.get("spike", {}))
        self._sharpness_before = state.get("sharpness_before")
        pending, climb = state.get("pending"), state.get("climb")
        self._pending = tuple(pending) if pending is not None else None
        self._last_loss = state.get("last_loss")
        self._climb = tuple(climb) if climb is not None else None
