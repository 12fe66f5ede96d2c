"""A run directory as a Python object: metrics per step, events and meta, for notebooks and scripts.

    run = ew.load_run("runs")                   # a runs root: its latest run (or a run directory)
    run.series("curvature/lambda_max")          # (steps, values) of one metric, numpy
    run.events[0]["kind"], run.meta["optimizer"]["class"]
    frame = run.to_pandas()                     # needs pandas: indexed by step, one column per metric
    run                                         # in a notebook: a summary table

The files are read once, when loaded (see :func:`load_run`); load again to see a run that is
still writing.
"""

from __future__ import annotations

import collections
import html
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgewatch import names
from edgewatch.cli import rundir
from edgewatch.cli.rundir import RunDirError, Series
from edgewatch.extras import require

__all__ = ["Run", "RunDirError", "Series", "latest_run_dir", "load_run"]

# The metrics the summary shows.
LAMBDA_MAX = names.LAMBDA_MAX
THRESHOLD = names.THRESHOLD


def load_run(path: str | os.PathLike) -> Run:
    """Load the run directory at ``path``, or the latest run under ``path`` if it is a runs root.

    A run directory is one holding ``meta.json``, ``metrics.jsonl`` or ``events.jsonl`` (what a
    Monitor writes). Any other directory is read as a runs root (``runs/`` by default, or
    ``$EDGEWATCH_DIR``): its latest run is loaded, as :func:`latest_run_dir` defines it.
    Partial files are read as far as they are whole (a run that is still writing, or was killed).

    Raises:
        RunDirError (a ValueError): ``path`` does not exist, is neither a run directory nor a
            runs root with a run in it, or the run holds no metrics yet.
    """
    return Run(rundir.load_run(rundir.resolve_run_dir(path)))


def latest_run_dir(root: str | os.PathLike) -> Path:
    """The latest run directory directly under ``root``: the one that started last, by the
    ``started`` time in its ``meta.json`` (else its directory's modification time), runs with
    metrics first (one that stopped before its first step does not hide the run before it).

    Raises:
        RunDirError: ``root`` is not a directory, or holds no run directory.
    """
    return rundir.latest_run(root)


class Run:
    """One loaded run: its metrics per step, events and meta (see :func:`load_run`).

    Attributes:
        path: the run directory.
        meta: ``meta.json`` as a dict (empty when missing or unreadable).
        metrics: metric name → :class:`Series` ``(steps, values)`` of numpy arrays, only the steps
            that logged it (curvature metrics appear on curvature steps only); NaN and inf as logged.
        events: the event records, in order, each a dict with ``step``, ``kind``, ``severity``,
            ``message`` and ``values`` (``pandas.DataFrame(run.events)`` makes a table of them).
        notes: what was tolerated while loading (an unreadable ``meta.json``, a torn last line).
    """

    def __init__(self, record: rundir.Run) -> None:
        self._record = record
        self.path: Path = record.path
        self.meta: dict[str, Any] = record.meta
        self.metrics: dict[str, Series] = record.metrics
        self.events: list[dict[str, Any]] = record.events
        self.notes: list[str] = record.notes

    @property
    def name(self) -> str:
        """The run directory's name."""
        return self._record.name

    @property
    def steps(self) -> np.ndarray:
        """Every step that logged at least one metric, ascending."""
        logged = [series.steps for series in self.metrics.values()]
        return np.unique(np.concatenate(logged)) if logged else np.zeros(0, np.int64)

    def series(self, name: str) -> Series:
        """The metric ``name`` as ``(steps, values)``; empty arrays when the run never logged it."""
        return self._record.series(name)

    def to_pandas(self) -> Any:
        """The metrics as a ``pandas.DataFrame``: indexed by step (ascending, named ``step``), one
        float column per metric in the order metrics were first logged, NaN where a metric was not
        logged at that step. A metric logged twice at one step keeps its later value.

        Raises:
            MissingExtraError (an ImportError): pandas is not installed.
        """
        pd = _pandas()
        columns = {name: _last_per_step(series) for name, series in self.metrics.items()}
        return pd.DataFrame({name: pd.Series(values, index=steps) for name, (steps, values) in columns.items()},
                            index=pd.Index(self.steps, name="step"), dtype=float)

    def summary(self) -> dict[str, Any]:
        """What the reprs show: logged steps (count, first, last), λ₁ last and max (with their
        steps), the last threshold, and the number of events of each kind."""
        steps = self.steps
        lam = self.series(LAMBDA_MAX)
        threshold = self.series(THRESHOLD)
        return {
            "run": self.name,
            "optimizer": self._record.optimizer(),
            "steps": len(steps),
            "first_step": int(steps[0]) if len(steps) else None,
            "last_step": int(steps[-1]) if len(steps) else None,
            "lambda_max_last": _last(lam),
            "lambda_max_max": _max(lam),
            "threshold": _last(threshold),
            "events": dict(collections.Counter(event["kind"] for event in self.events)),
        }

    def __repr__(self) -> str:
        s = self.summary()
        events = ", ".join(f"{kind} ×{count}" for kind, count in s["events"].items()) or "none"
        return (f"Run({str(self.path)!r}: steps {_span(s)}, λ1 last {_at(s['lambda_max_last'])}, "
                f"max {_at(s['lambda_max_max'])}, threshold {_number(s['threshold'])}, events: {events})")

    def _repr_html_(self) -> str:
        s = self.summary()
        events = ", ".join(f"{html.escape(kind)} ×{count}" for kind, count in s["events"].items()) or "none"
        rows = [
            ("run", html.escape(str(self.path))),
            ("optimizer", html.escape(s["optimizer"])),
            ("steps", _span(s)),
            ("λ<sub>1</sub> last", _at(s["lambda_max_last"])),
            ("λ<sub>1</sub> max", _at(s["lambda_max_max"])),
            ("threshold", _number(s["threshold"])),
            ("events", events),
        ]
        body = "".join(f"<tr><th style='text-align:left'>{key}</th><td style='text-align:left'>{value}</td></tr>"
                       for key, value in rows)
        return f"<table class='edgewatch-run'>{body}</table>"


def _pandas() -> Any:
    return require("pandas", "pandas", what="Run.to_pandas()")


def _last_per_step(series: Series) -> tuple[np.ndarray, np.ndarray]:
    """The series with one value per step, the last logged, steps ascending."""
    steps, first = np.unique(series.steps[::-1], return_index=True)
    return steps, series.values[::-1][first]


def _last(series: Series) -> tuple[float, int] | None:
    """The last logged value (NaN if NaN was logged last) and its step, None when never logged."""
    if not len(series.steps):
        return None
    return float(series.values[-1]), int(series.steps[-1])


def _max(series: Series) -> tuple[float, int] | None:
    """The largest finite value and its step, None when there is none."""
    finite = np.isfinite(series.values)
    if not finite.any():
        return None
    index = int(np.argmax(np.where(finite, series.values, -np.inf)))
    return float(series.values[index]), int(series.steps[index])


def _number(point: tuple[float, int] | None) -> str:
    return "—" if point is None else _format(point[0])


def _at(point: tuple[float, int] | None) -> str:
    return "—" if point is None else f"{_format(point[0])} (step {point[1]})"


def _format(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _span(s: dict[str, Any]) -> str:
    return "none" if s["first_step"] is None else f"{s['first_step']}–{s['last_step']} ({s['steps']} logged)"
