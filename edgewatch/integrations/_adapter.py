"""The Monitor's life inside a trainer, shared by the Lightning and Hugging Face callbacks."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn, optim

from edgewatch.hooks.events import Event
from edgewatch.hooks.monitor import Monitor, check_stop_on
from edgewatch.loggers import JsonlLogger

__all__ = ["Adapter", "any_rank"]


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
               grad_scaler=None) -> Monitor:
        """Build and attach the Monitor at the trainer's ``step``, restoring ``state`` (a checkpoint's) first.

        Only the main process (global rank 0) logs: the other ranks measure and detect (their
        events can stop training) but write nothing, so a run directory has one writer.
        """
        if self.monitor is not None:  # a second fit()/train() with the same callback
            self.monitor.close()
        kwargs = dict(self.monitor_kwargs)
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
