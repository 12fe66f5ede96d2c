"""A JSONL run directory (``meta.json``, ``metrics.jsonl``, ``events.jsonl``) as plain Python and numpy.

    run = load_run("runs/20261122-041500")
    steps, loss = run.series("loss")            # (n,) int, (n,) float: only the steps that logged it
    run.events[0]["kind"], run.meta["optimizer"]["class"]

A metric is kept only at the steps that logged it (curvature metrics appear on curvature steps
only), so a value that was logged as ``"nan"`` stays NaN and is never confused with a gap. Files
may be partial: a torn last line is skipped (see :func:`~edgewatch.loggers.jsonl.read_jsonl`),
a missing ``events.jsonl`` means no events and a missing or unreadable ``meta.json`` an empty meta.

Metrics renamed since a run was written are read under their current names
(:data:`edgewatch.names.ALIASES`: ``curvature/precond_lambda_max`` is ``curvature/precond/lambda_max``),
in the metrics and in the events' values alike, so old run directories plot and compare with new ones.

A *runs root* is a directory that holds run directories (``runs/`` by default, see
:func:`~edgewatch.loggers.jsonl.runs_root`); :func:`resolve_run_dir` turns one into its latest run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edgewatch import names
from edgewatch.loggers.jsonl import read_jsonl

__all__ = ["Run", "RunDirError", "Series", "is_run_dir", "latest_run", "load_run", "resolve_run_dir", "run_ended",
           "run_started"]

RUN_FILES = ("meta.json", "metrics.jsonl", "events.jsonl")


class RunDirError(ValueError):
    """A path that is not a readable run directory; the message is one line for the command line."""


class Series(NamedTuple):
    """One metric: the steps that logged it and its values there."""

    steps: np.ndarray  # (n,) int64
    values: np.ndarray  # (n,) float64, NaN/inf as logged


@dataclass
class Run:
    """A loaded run directory.

    Attributes:
        path: the run directory.
        meta: ``meta.json`` as a dict (empty when missing or unreadable).
        metrics: metric name → :class:`Series`, in the order names first appear.
        events: the event records, in file order, each with ``step``, ``kind``, ``severity``,
            ``message`` and ``values`` (defaults filled in).
        notes: what was tolerated while loading (an unreadable ``meta.json``, skipped records).
    """

    path: Path
    meta: dict[str, Any]
    metrics: dict[str, Series]
    events: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.resolve().name or str(self.path)

    @property
    def last_step(self) -> int | None:
        ends = [int(series.steps[-1]) for series in self.metrics.values() if len(series.steps)]
        return max(ends) if ends else None

    def series(self, name: str) -> Series:
        """The metric ``name``; empty arrays when the run never logged it."""
        return self.metrics.get(name, Series(np.zeros(0, np.int64), np.zeros(0)))

    def has(self, name: str) -> bool:
        return name in self.metrics

    def names(self, prefix: str) -> list[str]:
        """Metric names that start with ``prefix``, in first-logged order."""
        return [name for name in self.metrics if name.startswith(prefix)]

    def optimizer(self) -> str:
        """``"SGD lr=0.15"`` from ``meta.json`` (the first group's lr before any schedule), or ``"?"``."""
        optimizer = self.meta.get("optimizer") or {}
        group = (optimizer.get("groups") or [{}])[0]
        lr = group.get("initial_lr", group.get("lr")) if isinstance(group, dict) else None
        text = str(optimizer.get("class", "?"))
        return f"{text} lr={lr:g}" if isinstance(lr, (int, float)) else text

    def stability_constant(self) -> float | None:
        """The stability constant c of the first parameter group (threshold c/η), if recorded."""
        groups = (self.meta.get("optimizer") or {}).get("stability") or [{}]
        constant = groups[0].get("constant") if isinstance(groups[0], dict) else None
        return float(constant) if isinstance(constant, (int, float)) else None


def load_run(path: str | os.PathLike) -> Run:
    """Read the run directory at ``path``.

    Raises:
        RunDirError: ``path`` does not exist, is not a run directory (none of ``meta.json``,
            ``metrics.jsonl``, ``events.jsonl`` in it), or holds no metrics yet.
    """
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"no such run directory: {path}")
    if not path.is_dir() or not any((path / name).is_file() for name in RUN_FILES):
        raise RunDirError(
            f"{path} is not an edgewatch run directory (expected {', '.join(RUN_FILES)}); "
            "pass the directory a Monitor wrote, e.g. runs/20261122-041500"
        )
    notes: list[str] = []
    meta = _read_meta(path / "meta.json", notes)
    metrics = _read_metrics(path / "metrics.jsonl", notes)
    if not metrics:
        raise RunDirError(f"{path} holds no metrics yet (metrics.jsonl is missing or empty)")
    return Run(path, meta, metrics, _read_events(path / "events.jsonl", notes), notes)


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding at least one of ``meta.json``, ``metrics.jsonl``, ``events.jsonl``."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in RUN_FILES)


def run_started(path: str | os.PathLike) -> float:
    """When the run in ``path`` started, in seconds since the epoch.

    The ``started`` time in its ``meta.json`` (a resumed run keeps its first start); the
    directory's modification time when the meta is missing, unreadable or has no start time.
    """
    path = Path(path)
    try:
        started = json.loads((path / "meta.json").read_text(encoding="utf-8")).get("started")
        return _parse_time(started).timestamp()
    except (OSError, ValueError, TypeError, AttributeError):
        return path.stat().st_mtime


def _parse_time(text: Any) -> datetime:
    """``"2026-11-22T04:15:00+0100"`` (what the Monitor writes) or any ISO 8601 time; naive means local."""
    if not isinstance(text, str):
        raise TypeError("no start time")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return datetime.fromisoformat(text)


def latest_run(root: str | os.PathLike) -> Path:
    """The run directory directly under ``root`` that started last (see :func:`run_started`).

    Runs with metrics come first: one that stopped before logging a step (``meta.json`` only)
    does not hide the run before it, unless no run under ``root`` has metrics yet (a run that
    just started, followed with ``edgewatch report --follow``). Ties on the start go to the
    directory modified last, then to the name that sorts last (the Monitor names directories
    by their start time).

    Raises:
        RunDirError: ``root`` holds no run directory.
    """
    root = Path(root)
    runs = [child for child in root.iterdir() if is_run_dir(child)] if root.is_dir() else []
    if not runs:
        raise RunDirError(
            f"{root} is not an edgewatch run directory (expected {', '.join(RUN_FILES)}) and holds none; "
            "pass the directory a Monitor wrote, e.g. runs/20261122-041500, or the runs root above it"
        )
    return max(runs, key=lambda run: (_has_metrics(run), run_started(run), run.stat().st_mtime, run.name))


def _has_metrics(path: Path) -> bool:
    metrics = path / "metrics.jsonl"
    return metrics.is_file() and metrics.stat().st_size > 0


def resolve_run_dir(path: str | os.PathLike) -> Path:
    """``path`` itself when it is a run directory; when it is a runs root, its :func:`latest_run`.

    Raises:
        RunDirError: ``path`` does not exist, or is neither a run directory nor a directory holding one.
    """
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"no such run directory: {path}")
    return path if is_run_dir(path) or not path.is_dir() else latest_run(path)


def run_ended(meta: dict[str, Any]) -> bool:
    """Whether a run's meta records its end (a truthy ``ended`` or ``finished`` key)."""
    return bool(meta.get("ended") or meta.get("finished"))


def _read_meta(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        notes.append(f"{path.name} could not be read ({error}); going on without it")
        return {}
    return meta if isinstance(meta, dict) else {}


def _records(path: Path, notes: list[str]) -> Iterator[dict[str, Any]]:
    """The dict records of a ``.jsonl`` file with an integer ``step``; a line that is not valid JSON
    is skipped, and said so in ``notes``."""
    if not path.is_file():
        return

    def skipped(line: int, error: ValueError) -> None:
        notes.append(f"{path.name}: line {line} is not valid JSON ({error}); skipped")

    for record in read_jsonl(path, skipped):
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, (int, float)) and not isinstance(step, bool) and math.isfinite(step):
            yield {**record, "step": int(step)}


def _read_metrics(path: Path, notes: list[str]) -> dict[str, Series]:
    columns: dict[str, tuple[list[int], list[float]]] = {}
    for record in _records(path, notes):
        for name, value in record.items():
            if name in ("step", "time") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            steps, values = columns.setdefault(names.current_name(name), ([], []))
            steps.append(record["step"])
            values.append(float(value))
    return {name: Series(np.asarray(s, np.int64), np.asarray(v, np.float64)) for name, (s, v) in columns.items()}


def _read_events(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    events = []
    for record in _records(path, notes):
        values = record.get("values")
        events.append({
            "step": record["step"],
            "kind": str(record.get("kind", "?")),
            "severity": str(record.get("severity", "info")),
            "message": str(record.get("message", "")),
            "values": {names.current_name(k): v for k, v in values.items()} if isinstance(values, dict) else {},
        })
    return events
