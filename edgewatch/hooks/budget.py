r"""The overhead budget: the Monitor spends at most a fixed share of the training loop's wall time.

The Monitor's own time is the time inside its hooks (cheap metrics, curvature probes, detectors,
logging) and its gradient-norm read at the end of backward passes; the training time is
everything else (forward, backward, the optimizer's own update, the user's code). The budget keeps

.. math::
    \text{own} \;\le\; f \cdot \max(\text{train},\; H \cdot \bar t_{\text{step}}),

with f the budget fraction (default 5%), :math:`\bar t_{\text{step}}` the mean training time of a
step so far and H the *horizon* (default 1,000 steps): the Monitor may spend as if the run were
at least H steps long, so a look at the early phase, where curvature decides whether training
is stable (Gilmer et al. 2022), is paid back by the later steps. Runs shorter than H steps pay
more than f.

The policy, at each step after the cheap metrics:

1. *Early points*: step 0 always (at attach, θ₀ before any update, a full solve), and steps 3,
   10, 30 and 100 whenever they fit the allowance, which before step H is f·H·(mean step), so
   they are taken unless a probe costs a large part of H steps' budget. They are streamed (a
   few HVPs from the kept eigenvector).
2. After step 100, a curvature point is taken once its expected cost fits,
   own + cost ≤ allowance, and the mean cost c of a point (over a cycle of one full solve and
   seven streamed) has been earned back at the curvature's rate r since the last point (c / r
   of training time), so that points are spread evenly rather than spent in a burst. Before
   step H, r spreads what is left of the allowance evenly over the steps left to H; after it,
   r = f less what was spent beyond f so far, repaid over H steps; in both, less the share the
   cheap metrics, detectors and logging take, and at least f/10. Every ``full_every``-th point
   (default 8) is a full warm-started Lanczos solve, the others streamed; the cost of each kind
   is the mean of its last few measured costs, so a probe that escalates (a streamed point that
   turned into a full solve) raises the price of the next ones, and the points thin out by
   themselves. A streamed point whose refresh is not trustworthy (residual above 5% of λ₁)
   escalates to a full solve only when the allowance has room for one; otherwise its value is
   not reported (:mod:`~edgewatch.hooks.meters.curvature`), and the next full solve sets it right.
3. The cheap metrics are taken every step while they cost at most half the budget; when a step
   is so short that they would cost more, they are taken every N-th step, the smallest N that
   fits (``every=`` on the Monitor fixes N instead).

Worked example (the policy on a fake clock, as ``tests/hooks/test_budget.py`` runs it): a
training step of 10 ms, cheap metrics 0.1 ms a step (1%), a full solve 150 ms (15 steps' time)
and a streamed point 20 ms, f = 5%, H = 1,000. The allowance is 5% × 1,000 × 10 ms = 0.5 s
until step 1,000 and 0.5 ms a step after it. The early points (a full solve at step 0, streamed
at 3, 10, 30, 100) cost 0.23 s; what is left of the 0.5 s, less the cheap metrics' 1%, is spread
over the steps to 1,000: streamed points at 258, 402 and 533, and the eighth point, a full solve,
once it fits, at step 1,100. From then on a point every 91 steps (the mean point, (150 + 7·20)/8
ms, earned at 5% − 1%), a full solve every eighth: 29 points in 3,000 steps at 4.7% overhead,
where full solves alone would have bought 8.

Under ``torch.distributed`` every rank must take the same decisions: the times that decide are
averaged over the ranks in the all-reduce the Monitor makes on cheap-metric steps anyway, and
decisions are taken only there (at an early step without cheap metrics, on the times of the
last one).

References:
    Gilmer, Ghorbani, Garg, Kudugunta, Neyshabur, Cardoze, Dahl, Nado, Firat 2022, A Loss
    Curvature Perspective on Training Instability in Deep Learning, https://arxiv.org/abs/2110.04369
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

__all__ = ["EARLY_STEPS", "PENDING_FIELDS", "Budget", "Kind"]

#: Curvature points taken when they fit the allowance (besides step 0, always): log-spaced over the first 100 steps.
EARLY_STEPS = (3, 10, 30, 100)

Kind = Literal["full", "stream"]

# How many recent costs of each kind predict the next one.
_COST_MEMORY = 5
# The pending numbers, in order: own, train, steps, cheap seconds, cheap steps, full seconds,
# full points, streamed seconds, streamed points.
PENDING_FIELDS = 9
_OWN, _TRAIN, _STEPS, _CHEAP, _FULL, _STREAM = 0, 1, 2, 3, 5, 7


class Budget:
    """Accounts the Monitor's own time against the training time and places its measurements.

    Args:
        fraction: the share f of training time the Monitor may spend, in (0, 1).
        horizon: H, the run length (in steps) the early spending is paid back over.
        full_every: every this many curvature points one is a full solve (1: all full).
        early: steps with a curvature point whenever it fits the allowance (step 0 always).
        cheap_share: the share of the budget the per-step cheap metrics may take before they are
            thinned to every N-th step.
        clock: seconds, monotonic (a fake clock in tests).

    Raises:
        ValueError: a fraction outside (0, 1), a horizon or ``full_every`` below 1, a
            ``cheap_share`` outside (0, 1].

    Example:
        >>> now = [0.0]
        >>> budget = Budget(0.05, horizon=100, clock=lambda: now[0])
        >>> budget.curvature_due(0)  # step 0 is always measured, in full
        'full'
        >>> budget.enter(); now[0] += 0.2; took = budget.leave(); budget.spent("full", took)
        >>> for step in range(1, 51):  # 50 training steps of 10 ms, nothing else measured
        ...     now[0] += 0.01; budget.enter(); _ = budget.leave(); budget.count_step(); budget.settle()
        >>> round(budget.allowance, 3), round(budget.overhead, 2)  # 5% of 100 steps of 10 ms
        (0.05, 0.4)
    """

    def __init__(
        self,
        fraction: float = 0.05,
        *,
        horizon: int = 1000,
        full_every: int = 8,
        early: Sequence[int] = EARLY_STEPS,
        cheap_share: float = 0.5,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ValueError(f"budget must be a fraction of training time in (0, 1), got {fraction!r}; e.g. budget=0.05 for 5%")
        if horizon < 1 or full_every < 1:
            raise ValueError(f"horizon and full_every must be at least 1, got {horizon} and {full_every}")
        if not 0 < cheap_share <= 1:
            raise ValueError(f"cheap_share must be in (0, 1], got {cheap_share}")
        self.fraction, self.horizon, self.full_every = float(fraction), int(horizon), int(full_every)
        self.early = frozenset(int(s) for s in early) | {0}
        self._early_end = max(self.early)
        self.cheap_share = float(cheap_share)
        self.clock = clock
        self.own = 0.0  # seconds inside the Monitor's hooks, settled
        self.curvature_seconds = 0.0  # the part of own spent on curvature points
        self.train = 0.0  # seconds between them, settled
        self.steps = 0  # training steps settled, for the mean step time
        self.points = 0  # curvature points taken
        self.cheap_every = 1
        self._since_full = 0  # points since the last full solve
        self._train_at_point = 0.0  # settled training time at the last point
        self._costs: dict[str, deque[float]] = {kind: deque(maxlen=_COST_MEMORY) for kind in ("full", "stream", "cheap")}
        self._pending = [0.0] * PENDING_FIELDS
        self._entered: float | None = None
        self._left: float | None = None

    # -- accounting ---------------------------------------------------------------------------
    def enter(self) -> None:
        """A hook starts: the time since the last hook ended was training."""
        now = self.clock()
        if self._left is not None:
            self._pending[_TRAIN] += now - self._left
        self._entered = now

    def leave(self) -> float:
        """A hook ends: returns the seconds it took (its own time)."""
        now = self.clock()
        took = now - self._entered if self._entered is not None else 0.0
        self._pending[_OWN] += took
        self._entered, self._left = None, now
        return took

    def reclaim(self, seconds: float) -> None:
        """Own time spent outside the hooks (inside the training's backward pass): moved from
        the training time to the Monitor's."""
        self._pending[_TRAIN] -= seconds
        self._pending[_OWN] += seconds

    def count_step(self, cheap_seconds: float | None = None) -> None:
        """One more training step; ``cheap_seconds``: its cheap metrics' own time, if it took them."""
        self._pending[_STEPS] += 1
        if cheap_seconds is not None:
            self._pending[_CHEAP] += cheap_seconds
            self._pending[_CHEAP + 1] += 1

    def spent(self, kind: Kind, seconds: float) -> None:
        """The measured cost of one curvature point, ``"full"`` or ``"stream"``."""
        slot = _FULL if kind == "full" else _STREAM
        self._pending[slot] += seconds
        self._pending[slot + 1] += 1
        self.points += 1
        self._since_full = 0 if kind == "full" else self._since_full + 1
        self._train_at_point = self.train

    def pending(self) -> list[float]:
        """What happened since the last :meth:`settle`, as :data:`PENDING_FIELDS` numbers (own and
        training seconds, steps, cheap seconds and steps, full and streamed seconds and counts)."""
        return list(self._pending)

    def settle(self, agreed: Sequence[float] | None = None) -> None:
        """Move the pending numbers into those decisions are made on; ``agreed`` replaces this
        process's :meth:`pending` by its mean over the ranks, so that every rank decides alike."""
        own, train, steps, cheap, cheap_steps, full, fulls, stream, streams = self.pending() if agreed is None else agreed
        self.own += own
        self.train += train
        self.curvature_seconds += full + stream
        self.steps += int(round(steps))
        for kind, seconds, count in (("cheap", cheap, cheap_steps), ("full", full, fulls), ("stream", stream, streams)):
            if count >= 0.5:
                self._costs[kind].append(seconds / count)
        self._pending = [0.0] * PENDING_FIELDS

    # -- decisions ----------------------------------------------------------------------------
    @property
    def step_seconds(self) -> float:
        """Mean training time of a step so far (0 before the first)."""
        return self.train / self.steps if self.steps else 0.0

    @property
    def allowance(self) -> float:
        """Seconds the Monitor may have spent by now: f · max(train, H · mean step)."""
        return self.fraction * max(self.train, self.horizon * self.step_seconds)

    @property
    def overhead(self) -> float:
        """Own time / training time so far (settled), the achieved overhead."""
        return self.own / self.train if self.train > 0 else 0.0

    def cost(self, kind: str) -> float:
        """The expected cost of the next point of ``kind``: the mean of its last few (before the
        first streamed point, a quarter of a full solve's: a gradient and a few HVPs against a
        gradient and 15-30; nothing seen yet costs 0)."""
        costs = self._costs[kind]
        if not costs and kind == "stream":
            return self.cost("full") / 4
        return sum(costs) / len(costs) if costs else 0.0

    def next_kind(self) -> Kind:
        """Full every ``full_every``-th point, streamed otherwise."""
        return "full" if self.points == 0 or self._since_full + 1 >= self.full_every else "stream"

    def affords(self, kind: Kind) -> bool:
        """Whether a point of ``kind`` fits the allowance now."""
        return self.own + self.cost(kind) <= self.allowance

    def curvature_due(self, step: int, decide: bool = True) -> Kind | None:
        """The kind of curvature point to take after ``step``, or None. ``decide=False`` (a step
        whose times were not settled, e.g. without cheap metrics) allows only the early points."""
        kind = self.next_kind()
        if step == 0:
            return kind
        if step in self.early:
            # Taken if it fits the horizon's allowance (decided on settled times, or on the
            # times at the last settle when this step has none).
            return kind if self.affords(kind) else None
        if not decide or step <= self._early_end:
            return None
        # Paced: a mean point's cost is earned back at the curvature's rate before the next, so
        # the allowance is spent evenly rather than in a burst once the early phase is over.
        rested = self.train - self._train_at_point >= self.mean_cost / self.curvature_rate
        return kind if rested and self.affords(kind) else None

    @property
    def mean_cost(self) -> float:
        """The mean cost of a point over a cycle of one full solve and ``full_every - 1`` streamed."""
        return (self.cost("full") + (self.full_every - 1) * self.cost("stream")) / self.full_every

    @property
    def curvature_rate(self) -> float:
        """The share of training time curvature may spend from now on: before the horizon, what
        is left of the allowance f·H·(mean step) spread evenly over the steps left to it; after,
        f less what was spent beyond f so far, repaid over H steps; in both, less the share the
        rest of the Monitor takes (cheap metrics, detectors, logging), and at least f/10."""
        if self.train <= 0:
            return self.fraction
        rest = (self.own - self.curvature_seconds) / self.train
        horizon = self.horizon * self.step_seconds
        if self.train < horizon:
            rate = (self.fraction * horizon - self.own) / (horizon - self.train)
        else:
            rate = self.fraction - max(0.0, self.own - self.fraction * self.train) / horizon
        return max(rate - rest, self.fraction / 10)

    def update_cheap_every(self) -> int:
        """Cheap metrics every N-th step, N the smallest with cost / N ≤ share · f · step time."""
        costs, step = self._costs["cheap"], self.step_seconds
        if costs and step > 0:
            per_step = statistics.median(costs)  # one slow step (a collection, a page fault) is not the rule
            self.cheap_every = max(1, math.ceil(per_step / (self.cheap_share * self.fraction * step)))
        return self.cheap_every

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"own": self.own, "train": self.train, "curvature_seconds": self.curvature_seconds,
                "steps": self.steps, "points": self.points, "since_full": self._since_full,
                "train_at_point": self._train_at_point, "costs": {k: list(v) for k, v in self._costs.items()},
                "cheap_every": self.cheap_every}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the totals (missing keys keep their defaults); the clock restarts at the next hook."""
        self.own = float(state.get("own", self.own))
        self.train = float(state.get("train", self.train))
        self.curvature_seconds = float(state.get("curvature_seconds", self.curvature_seconds))
        self.steps = int(state.get("steps", self.steps))
        self.points = int(state.get("points", self.points))
        self._since_full = int(state.get("since_full", self._since_full))
        self._train_at_point = float(state.get("train_at_point", self._train_at_point))
        for kind, costs in state.get("costs", {}).items():
            if kind in self._costs:
                self._costs[kind] = deque((float(c) for c in costs), maxlen=_COST_MEMORY)
        self.cheap_every = int(state.get("cheap_every", self.cheap_every))
        self._left = None
