r"""Spikes in a scalar series (loss, gradient norm), and catapults: a loss rise that comes back down as λ_1 falls.

One module for both: a catapult is judged on the same running statistics of the loss as a spike.

A value is a spike when it lies more than ``sigmas`` standard deviations above the mean of the
last ``window`` values (default 6σ over 128 steps) and at least ``min_rise`` above that mean in
relative terms (default +50%), or above ``factor`` times the largest value seen so far (default
10×). Spikes are kept out of the window, so a run of them stays visible.

In the catapult phase of large learning rates the loss first grows, then falls, while the
sharpness drops until the step is stable again (Lewkowycz et al. 2020). The catapult detector
reads the loss of the fixed probe batch (``curvature/probe_loss``: the same batch at every probe,
so one hard training batch does not move it) and needs all three: a rise to ``rise``× the lowest
probe loss of the recent past, a return below that level, and λ_1 fallen meanwhile.

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

from edgewatch import names
from edgewatch.hooks.detectors.base import Detector
from edgewatch.hooks.events import Event

PROBE_LOSS = names.PROBE_LOSS
SHARPNESS = names.LAMBDA_MAX
RATIO = names.STABILITY_RATIO
ADAPTIVE = names.PRECOND_CONVERGED  # only when the preconditioner is not the identity

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
        min_rise: a σ-spike must also exceed the window's mean by this fraction of its magnitude:
            a calm series (a smooth full-batch loss, a steady gradient norm) has a tiny σ, and a
            wiggle of 1% would otherwise be a 6σ event.

    Defaults: 6σ over 128 steps, ≥ +50%, 10× the running maximum, 16 values before the σ-test.
    Validated on benchmarks/detectors: a shuffled-label batch in SGD and Adam runs (loss and
    gradient) and a 30× learning-rate jump are found at their step (lag 0-2); no event on the
    healthy runs. Full-batch GD crossing 2/η raises a ``grad_spike``: the gradient along the top
    direction really grows 30× there before GD self-stabilizes (Cohen et al. 2021).

    A run of spikes raises one event (and one more if it turns critical); from its third step on
    the values join the window, so a lasting change of level becomes the new normal instead of
    an event every step.
    """

    def __init__(
        self,
        metric: str = names.LOSS,
        kind: str = "loss_spike",
        *,
        window: int = 128,
        sigmas: float = 6.0,
        factor: float = 10.0,
        min_history: int = 16,
        min_rise: float = 0.5,
    ) -> None:
        if window < 2 or min_history < 2 or min_history > window:
            raise ValueError(f"need 2 <= min_history <= window, got {min_history}, {window}")
        if min_rise < 0:
            raise ValueError(f"min_rise must be >= 0, got {min_rise}")
        self.metric, self.kind = metric, kind
        self.kinds = (kind,)
        self.sigmas, self.factor, self.min_history, self.min_rise = sigmas, factor, min_history, min_rise
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
            if std > 0 and value > mean + self.sigmas * std and value >= mean + self.min_rise * abs(mean):
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
    """``catapult`` (info): the probe loss rose ``rise``× and came back down as the step turned stable.

    Rule (Lewkowycz et al. 2020, the catapult phase: with η·λ_1 above 2 the loss grows, the
    curvature drops until η·λ_1 is below 2, then the loss falls in a flatter region), on the
    probe points, which carry ``curvature/probe_loss`` (the same fixed batch every time, free of
    minibatch noise), ``curvature/lambda_max`` and the stability ratio r:

    1. rise: a probe loss ≥ ``rise`` × the lowest probe loss of the last ``window`` steps (the
       *base*); λ_1 of the probe before it is kept as "before";
    2. unstable: r ≥ 1 at the probe before the rise or at some probe since (the mechanism);
    3. within ``within`` steps of the rise, at a probe where the loss is back below ``rise`` ×
       base, r < 1 and λ_1 ≤ (1 − ``drop``) × λ_1 before: the event.

    Never while the loss is still up (the event needs it back below the level that started the
    episode) or non-finite (that is divergence: the episode is dropped). A rise from one hard
    training batch leaves the fixed batch's loss alone, so it is no catapult; and a probe-loss
    bump of a stable run (r well below 1: minibatch noise near a small loss) is none either.

    Probes may be sparse (the Monitor's budget schedule), so between them the training loss
    (``loss``, on the steps with cheap metrics) is a trigger, never a verdict: the detector asks
    for a curvature point (:attr:`wants_curvature`; the Monitor takes it at the next step under
    its budget schedule) when the training loss rises to ``rise`` × the lowest of its running
    medians over ``smooth`` steps while the last probe said the step is unstable (r ≥ 1: the
    catapult's mechanism; at most once per ``cooldown`` steps, so a run at the edge with noisy
    minibatches asks rarely), and, in an episode, once when the training loss is back below its
    own ``rise`` × level, so that the fall of λ_1 is measured when it happens (the loss of a
    catapult from initialization rises for 4-8 steps and is back down within 10-20). Without
    any r (no threshold known for the optimizer) conditions 2 and r < 1 are skipped and nothing
    is asked for. An adaptive optimizer's r before step ``adaptive_warmup`` is not used (see
    :class:`~edgewatch.hooks.detectors.eos.EdgeOfStabilityDetector`).

    Defaults: rise 1.5, drop 0.2, within 200 steps, window 200 steps, smooth 3, cooldown 10,
    adaptive_warmup 50.
    Validated on benchmarks/detectors: full-batch GD of a width-1024 two-layer ReLU net at
    η·λ_0 = 2.5, 3 and 3.5 (found a few steps after the loss passed 1.5×); no catapult on a run
    diverging at η·λ_0 = 6, on shuffled-label batches, or on the healthy minibatch runs.
    """

    kinds = ("catapult",)

    def __init__(self, rise: float = 1.5, drop: float = 0.2, within: int = 200, window: int = 200,
                 adaptive_warmup: int = 50, smooth: int = 3, cooldown: int = 10) -> None:
        if not rise > 1:
            raise ValueError(f"need rise > 1, got {rise}")
        if not 0 < drop < 1:
            raise ValueError(f"drop must be in (0, 1), got {drop}")
        if within < 1 or window < 1 or smooth < 1 or cooldown < 1:
            raise ValueError(f"within, window, smooth and cooldown must be positive numbers of steps, "
                             f"got {within}, {window}, {smooth}, {cooldown}")
        self.rise, self.drop, self.within, self.window = rise, drop, within, window
        self.adaptive_warmup, self.smooth, self.cooldown = adaptive_warmup, smooth, cooldown
        self._asked_at = -cooldown  # the step of the last probe asked for
        #: Set when the episode needs a curvature point now (the loss came back down); the Monitor
        #: takes one at the next step under its budget schedule, and the next probe clears it.
        self.wants_curvature = False
        self._recent: deque[tuple[int, float, float | None, float | None]] = deque()  # (step, loss, λ_1, r)
        self._losses: deque[float] = deque(maxlen=smooth)  # the last training losses
        self._trained: deque[tuple[int, float]] = deque()  # (step, running median of the training loss)
        self._episode: dict[str, float] | None = None  # start, base, peak, lambda_before, ratio_max, train_level, asked

    def update(self, metrics: Mapping[str, float], step: int) -> list[Event]:
        training = metrics.get(names.LOSS)
        if training is not None:
            if not math.isfinite(training):
                self._diverged()
                return []
            self._observe_training(float(training), step)
        loss = metrics.get(PROBE_LOSS)
        if loss is None:
            return []
        self.wants_curvature = False  # a probe point: what was asked for is here
        if not math.isfinite(loss):  # divergence, not a catapult
            self._diverged()
            return []
        sharpness, ratio = _finite_or_none(metrics.get(SHARPNESS)), _finite_or_none(metrics.get(RATIO))
        if ADAPTIVE in metrics and step < self.adaptive_warmup:
            ratio = None  # Adam's first preconditioners make r meaningless
        events = self._judge(float(loss), sharpness, ratio, step) if self._episode else []
        if self._episode is None and not events:
            self._start(float(loss), step)
        if events:
            self._recent.clear()  # the flatter region is the new baseline
            self._trained.clear()
        self._recent.append((step, float(loss), sharpness, ratio))
        while self._recent and self._recent[0][0] < step - self.window:
            self._recent.popleft()
        return events

    def _diverged(self) -> None:
        self._episode = None
        self.wants_curvature = False
        self._recent.clear()
        self._trained.clear()
        self._losses.clear()

    def _observe_training(self, loss: float, step: int) -> None:
        """The training loss between probes: a trigger for probes, never a verdict (one hard
        minibatch moves it; the fixed probe batch's loss decides)."""
        self._losses.append(loss)
        median = sorted(self._losses)[len(self._losses) // 2]
        episode, last = self._episode, self._recent[-1] if self._recent else None
        if episode is None:
            # Opening: the last probe said unstable and the training loss rose past the level; a
            # probe now shows whether the fixed batch's loss rose too (rate-limited, so a run
            # sitting at the edge with noisy minibatches asks at most every ``cooldown`` steps).
            unstable = last is not None and last[3] is not None and last[3] >= 1
            # The lowest running median of the window, only when it can matter (a healthy run never
            # pays for the scan).
            if unstable and step - self._asked_at >= self.cooldown:
                base = min((value for _, value in self._trained), default=math.inf)
                if loss >= self.rise * base:
                    self._ask(step)
        elif not episode.get("asked") and episode["ratio_max"] >= 1 and loss < episode["train_level"]:
            episode["asked"] = 1.0  # closing: back down, so a probe now shows whether λ_1 fell
            self._ask(step)
        self._trained.append((step, median))
        while self._trained and self._trained[0][0] < step - self.window:
            self._trained.popleft()

    def _ask(self, step: int) -> None:
        self.wants_curvature = True
        self._asked_at = step

    def _start(self, loss: float, step: int) -> None:
        if not self._recent:
            return
        base = min(point[1] for point in self._recent)
        if base > 0 and loss >= self.rise * base:
            _, _, sharpness, ratio = self._recent[-1]
            # The training loss's level matching the probe loss's rise level, for asking a probe
            # when it is back down (the two batches differ, so their scales may too).
            train_base = min((value for _, value in self._trained), default=math.nan)
            self._episode = {"start": step, "base": base, "peak": loss, "asked": 0.0,
                             "train_level": self.rise * train_base if math.isfinite(train_base) else -math.inf,
                             "lambda_before": math.nan if sharpness is None else sharpness,
                             "ratio_max": math.nan if ratio is None else ratio}

    def _judge(self, loss: float, sharpness: float | None, ratio: float | None, step: int) -> list[Event]:
        episode = self._episode
        assert episode is not None  # judged only during an episode
        episode["peak"] = max(episode["peak"], loss)
        if step - episode["start"] > self.within:
            self._episode = None
            return []
        if ratio is not None:
            episode["ratio_max"] = ratio if math.isnan(episode["ratio_max"]) else max(episode["ratio_max"], ratio)
        before, ratio_max = episode["lambda_before"], episode["ratio_max"]
        flatter = sharpness is not None and sharpness <= (1 - self.drop) * before  # False with λ before unknown (NaN)
        stabilized = math.isnan(ratio_max) or (ratio_max >= 1 and ratio is not None and ratio < 1)
        if loss >= self.rise * episode["base"] or not (flatter and stabilized):
            return []
        self._episode = None
        return [Event(
            step, "catapult", "info",
            f"the probe loss rose {episode['peak'] / episode['base']:.1f}× from step {int(episode['start'])} on and came "
            f"back down to {loss:.4g} while λ_1 fell from {before:.4g} to {sharpness if sharpness is not None else math.nan:.4g}: "
            "a catapult to a flatter region",
            {"lambda_before": before, "lambda_after": math.nan if sharpness is None else sharpness,
             "rise_step": episode["start"], "peak_loss": episode["peak"], "base_loss": episode["base"],
             "ratio_max": ratio_max},
        )]

    def state_dict(self) -> dict[str, Any]:
        return {"recent": [list(point) for point in self._recent], "episode": self._episode,
                "losses": list(self._losses), "trained": [list(point) for point in self._trained],
                "wants_curvature": self.wants_curvature, "asked_at": self._asked_at}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._recent.clear()
        self._recent.extend(tuple(point) for point in state.get("recent", []))
        self._losses.clear()
        self._losses.extend(float(v) for v in state.get("losses", []))
        self._trained.clear()
        self._trained.extend((int(step), float(value)) for step, value in state.get("trained", []))
        self.wants_curvature = bool(state.get("wants_curvature", False))
        self._asked_at = int(state.get("asked_at", self._asked_at))
        episode = state.get("episode")
        self._episode = {k: float(v) for k, v in episode.items()} if episode else None


def _finite_or_none(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None
