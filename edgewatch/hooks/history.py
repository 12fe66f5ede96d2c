"""The Monitor's memory: the last value of every metric ever measured, and a bounded history.

``monitor.latest[name]`` is the last value of ``name`` whenever it was measured (curvature is
measured on few steps, gradient norms on most), ``monitor.latest_step[name]`` its step, and
``monitor.history[name]`` its series: ``.steps`` and ``.values``, compact arrays. A series holds
at most ``limit`` points plus the newest: when it is full, every other point is dropped and from
then on only every other measurement is kept (every 4th after the next time, …), so a long run
keeps an evenly thinned record of its whole length, not only its end, in bounded memory (16
bytes a point). The newest measurement is always the last point.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Mapping

__all__ = ["History", "Series"]


class Series:
    """One metric's recorded points: ``steps`` (int64) and ``values`` (float64) arrays, in step order."""

    __slots__ = ("_count", "_stride", "_tail", "steps", "values")

    def __init__(self) -> None:
        self.steps = array("q")
        self.values = array("d")
        self._count = 0  # measurements seen
        self._stride = 1  # every stride-th measurement is kept
        self._tail = False  # the last point is the newest measurement, kept off the stride

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"Series({len(self)} points, steps {self.steps[0] if self else '-'}..{self.steps[-1] if self else '-'})"

    def append(self, step: int, value: float, limit: int) -> None:
        if self.steps and self.steps[-1] == step:  # measured twice in one step: the later value wins
            self.values[-1] = value
            return
        if self._tail:
            self.steps.pop()
            self.values.pop()
        index, self._count = self._count, self._count + 1
        if index % self._stride == 0 and len(self.steps) >= limit:
            self.steps, self.values = self.steps[::2], self.values[::2]
            self._stride *= 2
        self._tail = index % self._stride != 0
        self.steps.append(step)
        self.values.append(value)


class History(Mapping[str, Series]):
    """Every metric's series, by name; read-only to users, fed by the Monitor.

    Args:
        limit: points kept per metric (at least 2).

    Example:
        >>> history = History(limit=4)
        >>> for step in range(10):
        ...     history.record({"loss": 1.0 / (step + 1)}, step)
        >>> list(history["loss"].steps)  # thinned evenly, the newest kept
        [0, 4, 8, 9]
    """

    def __init__(self, limit: int = 2048) -> None:
        if limit < 2:
            raise ValueError(f"history limit must be at least 2 points per metric, got {limit}")
        self.limit = limit
        self._series: dict[str, Series] = {}

    def record(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            series = self._series.get(name)
            if series is None:
                series = self._series[name] = Series()
            series.append(step, value, self.limit)

    def __getitem__(self, name: str) -> Series:
        try:
            return self._series[name]
        except KeyError:
            known = ", ".join(sorted(self._series)[:8])
            raise KeyError(f"{name!r} was never measured; measured so far: {known}{', …' if len(self._series) > 8 else ''}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._series)

    def __len__(self) -> int:
        return len(self._series)
