"""When to measure: every step, every N steps, and log-spaced early on.

Cheap metrics are taken every step; curvature every N steps, and optionally densely in the first
steps, log-spaced, because early curvature decides stability (Gilmer et al. 2022, where warmup's
benefit is that it keeps η·λ_1 below the threshold in the first steps).

References:
    Gilmer, Ghorbani, Garg, Kudugunta, Neyshabur, Cardoze, Dahl, Nado, Firat 2022, A Loss
    Curvature Perspective on Training Instability in Deep Learning, https://arxiv.org/abs/2110.04369
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Schedule"]


@dataclass(frozen=True)
class Schedule:
    """Steps at which to measure: multiples of ``every``, plus log-spaced steps below ``dense_until``.

    Args:
        every: measure at steps 0, every, 2·every, … (``every=1``: every step).
        dense_until: also measure at the steps ⌊10^(i/per_decade)⌋ below this step.
        per_decade: how many log-spaced steps per factor of 10.

    Example:
        >>> schedule = Schedule(every=100, dense_until=50, per_decade=4)
        >>> [step for step in range(250) if schedule(step)]
        [0, 1, 3, 5, 10, 17, 31, 100, 200]
    """

    every: int = 1
    dense_until: int = 0
    per_decade: int = 10
    _dense: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every must be a positive number of steps, got {self.every}")
        if self.dense_until < 0 or self.per_decade < 1:
            raise ValueError(f"need dense_until >= 0 and per_decade >= 1, got {self.dense_until}, {self.per_decade}")
        count = math.ceil(self.per_decade * math.log10(self.dense_until)) + 1 if self.dense_until > 1 else 0
        dense = {int(10 ** (i / self.per_decade)) for i in range(count)}
        object.__setattr__(self, "_dense", frozenset(s for s in dense if s < self.dense_until))

    def __call__(self, step: int) -> bool:
        return step % self.every == 0 or step in self._dense
