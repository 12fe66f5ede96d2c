"""The JSONL run directory: edgewatch's own record of a run, always on (DESIGN.md section 6).

::

    runs/20261122-041500/
        meta.json        the run's configuration: versions, model size, optimizer, probe, schedules
        metrics.jsonl    one line per logged step: {"step": 16, "time": ..., "loss": 0.41, ...}
        events.jsonl     one line per event: {"step", "kind", "severity", "message", "values", "time"}

Every record is one line, flushed as it is written, so a killed process loses at most the line
being written (a torn last line is cut off when the directory is opened again). Opening a
directory that already holds records resumes it: lines are appended, and steps already written
are not written again. Non-finite numbers, which JSON cannot hold, are written as the strings
``"nan"``, ``"inf"`` and ``"-inf"``; :func:`read_jsonl` turns them back into floats.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from edgewatch.loggers._base import Logger

__all__ = ["ENV_RUNS_ROOT", "JsonlLogger", "default_run_dir", "jsonable", "read_jsonl"]

#: Environment variable for the directory new run directories are made in (default ``runs``).
ENV_RUNS_ROOT = "EDGEWATCH_DIR"


def default_run_dir() -> Path:
    """A new directory under ``$EDGEWATCH_DIR`` (default ``./runs``) named by the local time."""
    root = Path(os.environ.get(ENV_RUNS_ROOT) or "runs")
    stem = time.strftime("%Y%m%d-%H%M%S")
    candidate, number = root / stem, 1
    while candidate.exists():
        number += 1
        candidate = root / f"{stem}-{number}"
    return candidate


class JsonlLogger(Logger):
    """Writes ``meta.json``, ``metrics.jsonl`` and ``events.jsonl`` into ``run_dir``.

    Args:
        run_dir: the run directory, created when the run starts; default :func:`default_run_dir`.
    """

    name = "jsonl"

    def __init__(self, run_dir: str | os.PathLike | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir()
        self._files: dict[str, IO[str]] = {}
        self._written_until = {"metrics": 0, "events": 0}  # steps already in the files at start

    def start(self, meta: Mapping[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stream in self._written_until:
            path = self.run_dir / f"{stream}.jsonl"
            self._written_until[stream] = _last_step(path)
            self._files[stream] = path.open("a", encoding="utf-8")
        previous = self._written_until["metrics"]
        meta_path = self.run_dir / "meta.json"
        record = dict(meta)
        if meta_path.exists():
            record = json.loads(meta_path.read_text(encoding="utf-8"))
            record.setdefault("resumes", []).append({"step": meta.get("step", 0), "time": time.time()})
            if previous and not meta.get("step"):
                warnings.warn(
                    f"edgewatch: {self.run_dir} already holds a run with steps up to {previous}; steps up to "
                    "that are not written again. Use a new run_dir for a new run.", stacklevel=3,
                )
        _write_atomically(meta_path, json.dumps(jsonable(record), indent=2, allow_nan=False) + "\n")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self._append("metrics", step, {"step": step, "time": time.time(), **metrics})

    def log_event(self, event: Mapping[str, Any]) -> None:
        self._append("events", int(event["step"]), {**event, "time": time.time()})

    def _append(self, stream: str, step: int, record: Mapping[str, Any]) -> None:
        if step <= self._written_until[stream]:
            return  # written before a resume
        file = self._files.get(stream)
        if file is None:
            raise RuntimeError(f"the JSONL logger for {self.run_dir} was closed or never started")
        file.write(json.dumps(jsonable(record), allow_nan=False) + "\n")
        file.flush()

    def close(self) -> None:
        for file in self._files.values():
            file.close()
        self._files.clear()


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The records of a ``.jsonl`` file, non-finite strings back as floats; a torn last line is skipped."""
    with open(path, encoding="utf-8") as file:
        for line in file:
            if not line.endswith("\n"):
                return  # the line being written when the process stopped
            if line.strip():
                yield _from_json(json.loads(line))


def _last_step(path: Path) -> int:
    """The last step in a ``.jsonl`` file (0 if none), after cutting off a torn last line."""
    if not path.exists():
        return 0
    with path.open("rb+") as file:
        data = file.read()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            file.truncate(complete)
    lines = data[:complete].splitlines()
    return int(json.loads(lines[-1])["step"]) if lines else 0


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float as the string JSON can hold (``"nan"``, ``"inf"``, ``"-inf"``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _from_json(value: Any) -> Any:
    if isinstance(value, str):
        return _NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _write_atomically(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
