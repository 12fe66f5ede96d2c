"""The logger interface, the fan-out to several loggers, and logger specs like ``"jsonl:runs/exp1"``.

A logger receives plain data only: the run's ``meta`` dict once, then
``log(metrics, step)`` with a flat ``dict[str, float]`` of plain names (:mod:`edgewatch.names`;
a logger that writes outside the run directory adds :data:`edgewatch.names.PREFIX` itself), and
``log_event(record)`` with an event record ``{step, kind, severity, message, values}``
(:meth:`edgewatch.Event.to_dict`). Every method of the base is a no-op, so a logger overrides
only what it uses.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["LOGGERS", "Logger", "MultiLogger", "make_logger"]


class Logger:
    """Base logger; every method is a no-op.

    The Monitor calls :meth:`start` once before the first record, then :meth:`log` and
    :meth:`log_event` as it measures, and :meth:`close` when it is closed. ``step`` is always the
    optimizer step count.
    """

    #: Shown in warnings and errors.
    name: str = "logger"

    def start(self, meta: Mapping[str, Any]) -> None:
        """The run's configuration (versions, model size, optimizer, probe, schedules)."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """One step's metrics."""

    def log_event(self, event: Mapping[str, Any]) -> None:
        """One event record ``{step, kind, severity, message, values}``."""

    def close(self) -> None:
        """Flush and release what the logger holds (files, runs it started)."""


class MultiLogger(Logger):
    """Sends every call to each of ``loggers``; one that fails is disabled with one warning.

    A failing logger (an exception, a full disk, a W&B error) never stops training: its error is
    reported once and it receives nothing more, while the others, the JSONL run directory among
    them, go on receiving every record.
    """

    name = "multi"

    def __init__(self, loggers: Iterable[Logger] = ()) -> None:
        self.loggers = list(loggers)
        self.failed: dict[str, BaseException] = {}

    def _each(self, method: str, *args: Any) -> None:
        for logger in list(self.loggers):
            try:
                getattr(logger, method)(*args)
            except Exception as error:  # noqa: BLE001 - a logger must never stop the training run
                self.loggers.remove(logger)
                self.failed[logger.name] = error
                warnings.warn(
                    f"edgewatch: the {logger.name} logger failed in {method}() ({type(error).__name__}: {error}); "
                    "it is disabled for the rest of the run, the other loggers go on",
                    stacklevel=3,
                )
                if method != "close":
                    try:
                        logger.close()
                    except Exception:  # noqa: BLE001 - already reported; closing is best effort
                        pass

    def start(self, meta: Mapping[str, Any]) -> None:
        self._each("start", meta)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self._each("log", metrics, step)

    def log_event(self, event: Mapping[str, Any]) -> None:
        self._each("log_event", event)

    def close(self) -> None:
        self._each("close")


#: Logger specs: ``name`` or ``name:argument``, and the class each builds (imported when used, so
#: an integration's package is needed only by those who ask for it). The argument is the class's
#: first parameter: a directory, a project or a tracking URI.
LOGGERS: dict[str, str] = {
    "jsonl": "edgewatch.loggers.jsonl:JsonlLogger",
    "stdout": "edgewatch.loggers.stdout:StdoutLogger",
    "wandb": "edgewatch.loggers.wandb:WandbLogger",
    "tensorboard": "edgewatch.loggers.tensorboard:TensorBoardLogger",
    "mlflow": "edgewatch.loggers.mlflow:MlflowLogger",
}


def make_logger(spec: str | Logger) -> Logger:
    """A logger from a spec: ``"jsonl:runs/exp1"``, ``"wandb"``, ``"wandb:my-project"``,
    ``"tensorboard:tb/exp1"``, ``"mlflow:file:./mlruns"``, ``"stdout"``; a :class:`Logger` is
    returned as is.

    >>> make_logger("stdout").name
    'stdout'

    Raises:
        ValueError: an unknown logger name (the message lists the known ones).
        edgewatch.MissingExtraError: the logger's optional package is not installed.
    """
    if isinstance(spec, Logger):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a logger is a spec string like 'jsonl:runs/exp1' or a Logger, got {type(spec).__name__}")
    name, _, argument = spec.partition(":")
    if name not in LOGGERS:
        raise ValueError(f"unknown logger {name!r} in {spec!r}; known: {', '.join(LOGGERS)} (as 'name' or 'name:argument')")
    module, _, attribute = LOGGERS[name].partition(":")
    cls = getattr(importlib.import_module(module), attribute)
    return cls(argument) if argument else cls()
