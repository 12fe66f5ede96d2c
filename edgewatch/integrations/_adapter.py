"""The Monitor's life inside a trainer, shared by the Lightning and Hugging Face callbacks.

Where a trainer callback's records go:

- the trainer's own loggers (Lightning's ``trainer.loggers``, the Hugging Face ``report_to``
  integrations), every metric named with :data:`PREFIX` (``edgewatch/loss`` beside the user's own
  ``loss``), on the main process only;
- the JSONL run directory, by default ``<root>/edgewatch_runs/<time>`` (:func:`run_dir_under`),
  where ``<root>`` is the trainer's ``default_root_dir`` or ``output_dir``: never a directory named
  like the package in the working directory, which would shadow it on an editable install. A run
  resumed from a checkpoint goes on writing into the directory the checkpoint names.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn, optim

from edgewatch import names
from edgewatch.hooks.events import Event
from edgewatch.hooks.monitor import Monitor, check_stop_on
from edgewatch.loggers import JsonlLogger, Logger, default_run_dir

__all__ = ["PREFIX", "RUNS_FOLDER", "Adapter", "EventsOnly", "any_rank", "run_dir_under"]

#: The prefix of every metric name edgewatch sends through a trainer's loggers.
PREFIX = names.PREFIX

#: The folder under the trainer's root directory that holds edgewatch's run directories.
RUNS_FOLDER = "edgewatch_runs"

# The key of the run directory in the state a callback saves in checkpoints.
_RUN_DIR_KEY = "run_dir"


def run_dir_under(root: str | os.PathLike) -> Path:
    """A new run directory's path, ``<root>/edgewatch_runs/<local time>`` (not yet created)."""
    return Path(root) / RUNS_FOLDER / default_run_dir().name


class EventsOnly(Logger):
    """Passes ``start``, ``log_event`` and ``close`` to ``logger`` but not the metrics.

    For a logger whose backend already receives the metrics through the trainer (a W&B logger
    beside ``report_to=["wandb"]``): its events table and alerts stay, its metric rows would be
    the same numbers twice.
    """

    def __init__(self, logger: Logger) -> None:
        self.logger = logger
        self.name = logger.name

    def start(self, meta: Mapping[str, Any]) -> None:
        self.logger.start(meta)

    def log_event(self, event: Mapping[str, Any]) -> None:
        self.logger.log_event(event)

    def close(self) -> None:
        self.logger.close()


class Adapter:
    """The Monitor's life inside a trainer; the framework callbacks forward their hooks here."""

    def __init__(self, stop_on: Iterable[str], monitor_kwargs: dict[str, Any]) -> None:
        self.stop_on = check_stop_on(stop_on, monitor_kwargs.get("detectors"))
        self.monitor_kwargs = monitor_kwargs
        #: The Monitor, built when training starts (``None`` before and after ``close``).
        self.monitor: Monitor | None = None
        #: The event that stopped training, if one of the ``stop_on`` kinds happened.
        self.stopped_by: Event | None = None
        self._stop_requested: Event | None = None
        self._warned_steps = False

    def _start(self, model: nn.Module, optimizer: optim.Optimizer, loss_fn, probe, *, step: int,
               run_dir: str | os.PathLike, main_process: bool = True, state: dict[str, Any] | None = None,
               grad_scaler=None, loggers: Iterable[Any] | None = None) -> Monitor:
        """Build and attach the Monitor at the trainer's ``step``, restoring ``state`` (a checkpoint's) first.

        ``run_dir`` is the default run directory; a ``state`` saved by :meth:`_state` names the
        one to continue instead. ``loggers``, when given, replaces ``monitor_kwargs["loggers"]``.
        Only the main process (global rank 0) logs: the other ranks measure and detect (their
        events can stop training) but write nothing, so a run directory has one writer.
        """
        if self.monitor is not None:  # a second fit()/train() with the same callback
            self.monitor.close()
        kwargs = dict(self.monitor_kwargs)
        if loggers is not None:
            kwargs["loggers"] = list(loggers)
        if state and state.get(_RUN_DIR_KEY):
            run_dir = state[_RUN_DIR_KEY]
        kwargs["callbacks"] = [*kwargs.get("callbacks", ()), self._on_event]
        if grad_scaler is not None:
            kwargs.setdefault("grad_scaler", grad_scaler)
        kwargs["main_process"] = main_process  # the trainer knows which process is its main one
        if not main_process:
            kwargs["loggers"], kwargs["run_dir"] = (), False
        elif "run_dir" not in kwargs and not _names_a_jsonl_logger(kwargs.get("loggers", ())):
            kwargs["run_dir"] = run_dir
        self.monitor = Monitor(model, optimizer, loss_fn, probe, **kwargs)
        if state:
            self.monitor.load_state_dict(state)
        self.monitor.step_count = step  # the trainer's count wins, so resumed runs line up
        self.stopped_by = self._stop_requested = None
        return self.monitor.attach()

    def _on_event(self, event: Event) -> None:
        if event.kind in self.stop_on and self._stop_requested is None:
            self._stop_requested = event

    def _step_end(self, global_step: int) -> bool:
        """After the trainer counted a step: check the two counts agree; True when training should stop."""
        if self.monitor is None:
            return False
        if self.monitor.step_count != global_step:
            if not self._warned_steps:
                self._warned_steps = True
                warnings.warn(
                    f"edgewatch: the Monitor counted {self.monitor.step_count} optimizer steps but the trainer is at "
                    f"global step {global_step} (a skipped mixed-precision step, or a second optimizer?); "
                    "following the trainer's count", stacklevel=3,
                )
            self.monitor.step_count = global_step
        if self._stop_requested is not None and self.stopped_by is None:
            self.stopped_by = self._stop_requested
            return True
        return False

    def _state(self) -> dict[str, Any]:
        """The Monitor's state for a checkpoint, with the run directory a resumed run continues."""
        monitor = self.monitor
        assert monitor is not None  # saved only once training began
        state = monitor.state_dict()
        if monitor.run_dir is not None:
            state[_RUN_DIR_KEY] = str(monitor.run_dir)
        return state

    def _close(self) -> None:
        """Detach from the optimizer and close the loggers (the Monitor stays readable)."""
        if self.monitor is not None:
            self.monitor.close()


def any_rank(flag: bool, device: torch.device | str) -> bool:
    """True on every rank when ``flag`` is True on any (a MAX all-reduce); ``flag`` itself outside a process group.

    One rank stopping alone would leave the others waiting in their next collective.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    decision = torch.tensor(float(flag), device=device)
    dist.all_reduce(decision, op=dist.ReduceOp.MAX)
    return bool(decision.item())


def _names_a_jsonl_logger(loggers: Iterable[Any]) -> bool:
    return any(isinstance(lg, JsonlLogger) or str(lg).split(":", 1)[0] == "jsonl" for lg in loggers)
