"""The JSONL run directory: edgewatch's own record of a run, always on.

::

    runs/20261122-041500/
        meta.json        the run's configuration: versions, model size, optimizer, probe, schedules
        metrics.jsonl    one line per logged step: {"step": 16, "time": ..., "loss": 0.41, ...}
        events.jsonl     one line per event: {"step", "kind", "severity", "message", "values", "time"}

Every record is one line, flushed as it is written, so a killed process loses at most the line
being written (a torn last line is cut off when the directory is opened again). A run that
resumes (its first step is past 0) into a directory that already holds records appends to it,
and steps already written are not written again; a new run (from step 0) never mixes its records
with an old run's: it goes to the first free ``DIR-2``, ``DIR-3``, ... with a warning that says so.
An unreadable ``meta.json`` is moved aside (``meta.json.unreadable``), not lost. Non-finite
numbers, which JSON cannot hold, are written as the strings
``"nan"``, ``"inf"`` and ``"-inf"``; :func:`read_jsonl` turns them back into floats.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from edgewatch.loggers._base import Logger

__all__ = ["ENV_RUNS_ROOT", "JsonlLogger", "default_run_dir", "jsonable", "read_jsonl", "runs_root"]

#: Environment variable for the directory new run directories are made in (default ``runs``).
ENV_RUNS_ROOT = "EDGEWATCH_DIR"


def runs_root() -> Path:
    """Where new run directories are made: ``$EDGEWATCH_DIR``, default ``./runs``."""
    return Path(os.environ.get(ENV_RUNS_ROOT) or "runs")


def default_run_dir() -> Path:
    """A directory under :func:`runs_root` named by the local time (not yet created)."""
    return runs_root() / time.strftime("%Y%m%d-%H%M%S")


def _reserve(path: Path) -> Path:
    """Create and return the first of ``path``, ``path-2``, ``path-3``, ... that did not exist.

    ``mkdir`` without ``exist_ok`` is the reservation: two processes starting in the same second
    never share a directory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, number = path, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1
            candidate = path.with_name(f"{path.name}-{number}")


class JsonlLogger(Logger):
    """Writes ``meta.json``, ``metrics.jsonl`` and ``events.jsonl`` into ``run_dir``.

    Args:
        run_dir: the run directory, created when the run starts; default :func:`default_run_dir`
            (``$EDGEWATCH_DIR/<time>``, with ``-2``, ``-3``, ... when that is taken).

    Attributes:
        run_dir: where the records go; after :meth:`start`, the directory actually written (a new
            run given an occupied directory moves to ``DIR-2``).
    """

    name = "jsonl"

    def __init__(self, run_dir: str | os.PathLike | None = None) -> None:
        self._named = run_dir is not None
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir()
        self._files: dict[str, IO[str]] = {}
        self._written_until = {"metrics": -1, "events": -1}  # steps already in the files at start (-1: none)

    def start(self, meta: Mapping[str, Any]) -> None:
        resuming = bool(meta.get("step"))
        if not self._named:
            self.run_dir = _reserve(self.run_dir)
        elif not resuming and _holds_records(self.run_dir):
            occupied, self.run_dir = self.run_dir, _reserve(self.run_dir)
            warnings.warn(f"edgewatch: {occupied} already holds a run's records and this run starts at step 0; "
                          f"writing it to {self.run_dir} instead (resume from a checkpoint to append)", stacklevel=3)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stream in self._written_until:
            path = self.run_dir / f"{stream}.jsonl"
            self._written_until[stream] = _last_step(path)
            self._files[stream] = path.open("a", encoding="utf-8")
        meta_path = self.run_dir / "meta.json"
        record = dict(meta)
        if resuming and meta_path.exists():  # the run's first meta stays; each resume adds its own
            try:
                record = json.loads(meta_path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as error:
                aside = meta_path.with_name("meta.json.unreadable")
                os.replace(meta_path, aside)
                warnings.warn(f"edgewatch: {meta_path} could not be read ({error}); moved to {aside.name}, "
                              "a new one is written", stacklevel=3)
        if resuming:
            record.setdefault("resumes", []).append({**meta, "time": time.time()})
            record.pop("ended", None)  # running again
        _write_atomically(meta_path, json.dumps(jsonable(record), indent=2, allow_nan=False) + "\n")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self._append("metrics", step, {"step": step, "time": time.time(), **metrics})

    def log_event(self, event: Mapping[str, Any]) -> None:
        self._append("events", int(event["step"]), {**event, "time": time.time()})

    def _append(self, stream: str, step: int, record: Mapping[str, Any]) -> None:
        if step <= self._written_until[stream]:
            return  # in the files before this run resumed
        file = self._files.get(stream)
        if file is None:
            raise RuntimeError(f"the JSONL logger for {self.run_dir} was closed or never started")
        file.write(json.dumps(jsonable(record), allow_nan=False) + "\n")
        file.flush()

    def close(self) -> None:
        """Close the files and record the end of the run in ``meta.json`` (``ended``: the time),
        which ``edgewatch report --follow`` stops at; a resumed run removes it until it closes."""
        started = bool(self._files)
        for file in self._files.values():
            file.close()
        self._files.clear()
        meta_path = self.run_dir / "meta.json"
        if started and meta_path.exists():
            try:
                record = json.loads(meta_path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                return  # an unreadable meta is left as it is (start() moves it aside on resume)
            record["ended"] = time.time()
            _write_atomically(meta_path, json.dumps(jsonable(record), indent=2, allow_nan=False) + "\n")


def read_jsonl(
    path: str | os.PathLike, skipped: Callable[[int, ValueError], None] | None = None
) -> Iterator[dict[str, Any]]:
    """The records of a ``.jsonl`` file, non-finite strings back as floats.

    A torn last line (the one being written when the process stopped) is skipped; so is a line
    that does not parse: ``skipped(line_number, error)`` is told of each one, or, without it, one
    warning per file counts them.
    """
    unreadable = 0
    with open(path, encoding="utf-8", errors="replace") as file:
        for number, line in enumerate(file, start=1):
            if not line.endswith("\n"):
                break
            if line.strip():
                try:
                    yield _from_json(json.loads(line))
                except ValueError as error:
                    unreadable += 1
                    if skipped is not None:
                        skipped(number, error)
    if unreadable and skipped is None:
        warnings.warn(f"edgewatch: skipped {unreadable} unreadable line(s) in {path}", stacklevel=2)


def _holds_records(run_dir: Path) -> bool:
    return any((run_dir / f"{stream}.jsonl").is_file() and (run_dir / f"{stream}.jsonl").stat().st_size
               for stream in ("metrics", "events"))


def _last_step(path: Path) -> int:
    """The step of the last complete record in a ``.jsonl`` file (-1 if none: step 0, measured at
    attach time, is a step like any other), after cutting off a torn last line.

    Read from the end, so a long run resumes at once; a line that does not parse (a disk that
    filled up mid-write, then freed) is passed over rather than stopping the run.
    """
    if not path.exists():
        return -1
    with path.open("rb+") as file:
        size = file.seek(0, os.SEEK_END)
        tail_start = max(0, size - (1 << 16))
        file.seek(tail_start)
        tail = file.read()
        if tail_start and b"\n" not in tail:  # one line longer than the tail: read it all
            tail_start = file.seek(0)
            tail = file.read()
        complete = tail.rfind(b"\n") + 1
        if tail_start + complete < size:
            file.truncate(tail_start + complete)
    for line in reversed(tail[:complete].splitlines()):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return -1


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
