"""Hugging Face: a ``TrainerCallback`` that runs the Monitor from the Trainer's own hooks.

    from edgewatch.integrations.transformers import EdgewatchCallback

    trainer = Trainer(model, args, train_dataset=data, callbacks=[EdgewatchCallback(probe, stop_on=["nonfinite"])])
    trainer.train()       # metrics in every report_to integration as edgewatch/..., and in <output_dir>/edgewatch_runs/<time>

Where the records go:

- the Trainer's own logs: at each of its training logs (every ``logging_steps``) and in its final
  summary, the Trainer's ``logs`` carry the latest value of every metric edgewatch measured since
  the previous log, named ``edgewatch/<name>``, so every ``report_to`` integration (TensorBoard,
  W&B, MLflow, ...) receives them at the Trainer's global step, as it receives ``loss`` (most
  integrations show them as ``train/edgewatch/<name>``), and ``trainer.state.log_history`` holds
  them. With ``logging_steps=1`` that is every measured step; otherwise the steps between two logs
  are in the run directory only. The console printout of the logs leaves them out. Events are not
  metrics: they stay in ``events.jsonl`` and ``callback.monitor.events``. ``trainer_loggers=False``
  turns this off.
- a W&B logger given in ``loggers`` while ``report_to`` holds ``"wandb"`` sends only the events
  (its table and alerts): the metrics already reach that run through the Trainer.
- the JSONL run directory, by default ``<output_dir>/edgewatch_runs/<time>``; a resumed run
  continues the directory its checkpoint names.

Callback events are not given the Trainer, so the callback finds it once, at train begin, as the
``Trainer`` whose ``train()`` called it, and puts a small relay first in its callback list (ahead of
the ``report_to`` integrations), removed at train end. Without a Trainer among the callers (the
callback driven by some other loop) the metrics go to the run directory and ``loggers`` only, with
a warning.

How each hook is used:

- ``on_train_begin``: the Monitor is built on the model and the torch optimizer inside accelerate's
  ``AcceleratedOptimizer`` (its step hooks see exactly the steps taken), with ``state.global_step``
  as its step, after the Trainer loaded the checkpoint it resumes from.
- the training loss: Trainer callbacks are not given it, so a forward hook on the model reads
  ``outputs.loss`` of the training forwards (train mode, outside the optimizer step, where the
  curvature probe runs). It is the mean over the step's micro-batches, or their sum when the Trainer
  passed ``num_items_in_batch`` (the model then normalized each by the whole accumulated batch):
  either way, the loss the Trainer logs for that step. A loss computed outside the model
  (``compute_loss_func``, label smoothing) is not seen, and ``loss`` is then the probe's.
- gradient norms come from autograd's accumulate hooks: the norm before ``max_grad_norm`` clips.
- ``on_step_end``: the step counts are compared, and a ``stop_on`` event sets
  ``control.should_training_stop``.
- ``on_log``: the relay, first of the callbacks, adds the metrics to the Trainer's logs; this
  callback, after the integrations, takes them out again before the console printout.
- ``on_save``: the Monitor's state goes to ``edgewatch_monitor.pt`` in the ``checkpoint-N`` folder. On
  resume it is read from ``args.resume_from_checkpoint`` when that names the checkpoint of the
  resumed step, else from ``<output_dir>/checkpoint-<global_step>``; without it (a checkpoint saved
  without the callback) the Monitor starts afresh at the resumed step, in a new run directory,
  with a warning.
- ``on_train_end``: the hook and the relay are removed, the Monitor detached and its loggers
  closed. The Trainer has no hook for exceptions: after a crash the Monitor stays attached to the
  optimizer.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from edgewatch.curvature.probe_set import LossFn
from edgewatch.extras import require
from edgewatch.hooks.validation import check_callback_arguments
from edgewatch.integrations._adapter import PREFIX, Adapter, EventsOnly, any_rank, run_dir_under
from edgewatch.loggers import Logger, WandbLogger, make_logger

transformers = require("transformers", "transformers", what="edgewatch.integrations.transformers")
send_to_device = require("accelerate.utils", "transformers", what="edgewatch.integrations.transformers").send_to_device
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # noqa: E402 - after require() names the extra

__all__ = ["STATE_FILE", "EdgewatchCallback", "model_loss"]

#: The Monitor's state inside a ``checkpoint-N`` folder.
STATE_FILE = "edgewatch_monitor.pt"


def model_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """The model's own loss, ``model(**batch).loss``: the batch must hold ``labels``."""
    return model(**batch).loss


class _Pending(Logger):
    """Keeps the latest value of each metric until the Trainer's next log takes them."""

    name = "trainer"

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.values.update(metrics)

    def take(self) -> dict[str, float]:
        values, self.values = {PREFIX + name: value for name, value in self.values.items()}, {}
        return values


class _Relay(transformers.TrainerCallback):
    """First of the Trainer's callbacks: adds the pending metrics to its training logs and log history."""

    def __init__(self, pending: _Pending) -> None:
        self.pending = pending

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if logs is None or not ("loss" in logs or "train_loss" in logs):  # evaluation logs stay as they are
            return
        values = self.pending.take()
        logs.update(values)
        history = state.log_history
        if values and history and history[-1].get("step") == state.global_step:
            history[-1].update(values)  # the Trainer appended its copy of these logs just before


class EdgewatchCallback(Adapter, transformers.TrainerCallback):
    """Watches the Trainer's model and optimizer while ``trainer.train()`` runs.

    Args:
        probe: the fixed probe batches, dicts of model inputs with ``labels`` (moved to the model's
            device at train start).
        loss_fn: ``loss_fn(model, batch) -> scalar`` for the curvature probe; default
            :func:`model_loss`.
        stop_on: event kinds that stop training through ``control.should_training_stop``.
        trainer_loggers: add the metrics to the Trainer's logs too (named ``edgewatch/...``), so
            that every ``report_to`` integration receives them.
        **monitor_kwargs: passed to :class:`~edgewatch.Monitor` (``curvature``, ``detectors``,
            ``callbacks``, ``loggers``, ...). ``run_dir`` defaults to
            ``<args.output_dir>/edgewatch_runs/<time>``; a resumed run appends to the directory its
            checkpoint names. Under distributed training only the main process logs, and a
            ``stop_on`` event on any rank stops every rank.

    Attributes:
        monitor: the :class:`~edgewatch.Monitor`, built at train start.
        stopped_by: the event that stopped training, if any.

    Raises:
        ValueError, TypeError: at construction, a bad ``loss_fn``, an empty probe or one holding
            NaN or inf, unknown ``stop_on`` kinds, or a Monitor argument in ``monitor_kwargs``
            that the Monitor would refuse (:mod:`~edgewatch.hooks.validation`; an unknown name
            too); at train start, the Monitor's checks of the model and optimizer.
    """

    def __init__(self, probe: Iterable[Any], loss_fn: LossFn | None = None, *, stop_on: Iterable[str] = (),
                 trainer_loggers: bool = True, **monitor_kwargs: Any) -> None:
        loss_fn = loss_fn or model_loss
        probe = check_callback_arguments(loss_fn, probe, monitor_kwargs, "EdgewatchCallback")
        Adapter.__init__(self, stop_on, monitor_kwargs)
        self.probe, self.loss_fn = probe, loss_fn
        self.trainer_loggers = trainer_loggers
        self._losses: list[torch.Tensor] = []
        self._summed = False  # the micro-batch losses add up to the step's loss (num_items_in_batch)
        self._reading = True  # False inside optimizer.step(), where the probe's forwards run
        self._hook = None
        self._relay: _Relay | None = None
        self._handler: Any = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs) -> None:
        device = next(model.parameters()).device
        probe = [send_to_device(batch, device) for batch in self.probe]
        self._start(model, getattr(optimizer, "optimizer", optimizer), self.loss_fn, probe, step=state.global_step,
                    run_dir=run_dir_under(args.output_dir), main_process=state.is_world_process_zero,
                    state=self._saved_state(args, state), grad_scaler=getattr(optimizer, "scaler", None),
                    loggers=self._loggers(args))
        if self._hook is not None:
            self._hook.remove()
        self._hook = model.register_forward_hook(self._read_loss, with_kwargs=True)
        self._losses, self._reading = [], True

    def _loggers(self, args) -> list[Any]:
        """The Monitor's loggers: the user's, a W&B one reduced to events beside report_to's W&B, and the relay's."""
        self._remove_relay()
        loggers = self.monitor_kwargs.get("loggers", ())
        loggers = [loggers] if isinstance(loggers, (str, Logger)) else list(loggers)
        if not self.trainer_loggers:
            return loggers
        handler = _callback_handler()
        if handler is None:
            warnings.warn("edgewatch: no transformers.Trainer among the callers of on_train_begin; the metrics go "
                          "to the run directory and `loggers` only, not to report_to", stacklevel=3)
            return loggers
        if "wandb" in (args.report_to or ()):
            loggers = [EventsOnly(make_logger(lg)) if _is_wandb(lg) else lg for lg in loggers]
        pending = _Pending()
        self._relay, self._handler = _Relay(pending), handler
        handler.callbacks.insert(0, self._relay)
        return [*loggers, pending]

    def _remove_relay(self) -> None:
        if self._relay is not None and self._relay in self._handler.callbacks:
            self._handler.callbacks.remove(self._relay)
        self._relay = self._handler = None

    def _read_loss(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self._reading and module.training:
            loss = output.get("loss") if isinstance(output, Mapping) else None
            if isinstance(loss, torch.Tensor) and loss.numel() == 1:
                self._losses.append(loss.detach())
                self._summed = "num_items_in_batch" in kwargs

    def on_pre_optimizer_step(self, args, state, control, **kwargs) -> None:
        if self.monitor is not None and self._losses:
            total = torch.stack(self._losses).sum()
            self.monitor.observe(total if self._summed else total / len(self._losses))
        self._losses, self._reading = [], False

    def on_optimizer_step(self, args, state, control, **kwargs) -> None:
        self._reading = True

    def on_step_end(self, args, state, control, **kwargs):
        stop = self._step_end(state.global_step)
        if self.stop_on:  # no collective unless an event can stop training
            stop = any_rank(stop, args.device)
        if stop:
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        # after the integrations, before the console printout (the Trainer adds that callback last)
        if self._relay is not None and logs is not None:
            for name in [name for name in logs if name.startswith(PREFIX)]:
                del logs[name]

    def on_save(self, args, state, control, **kwargs) -> None:
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if self.monitor is not None and state.is_world_process_zero and folder.is_dir():
            torch.save(self._state(), folder / STATE_FILE)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        self._step_end(state.global_step)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._remove_relay()
        self._close()

    def _saved_state(self, args, state) -> dict[str, Any] | None:
        """The Monitor's state in the checkpoint the Trainer resumed from (None on a fresh start)."""
        if state.global_step == 0:
            return None
        named = args.resume_from_checkpoint if isinstance(args.resume_from_checkpoint, str) else None
        candidates = [Path(named)] if named else []
        candidates.append(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        for folder in candidates:
            if (folder / STATE_FILE).is_file():
                saved = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
                if saved.get("step_count") == state.global_step:  # args may name another checkpoint
                    return saved
        warnings.warn(f"edgewatch: resuming at step {state.global_step} but no {STATE_FILE} in "
                      f"{', '.join(map(str, candidates))}; detectors start afresh", stacklevel=2)
        return None


def _callback_handler() -> Any:
    """The callback handler of the ``Trainer`` whose method is on the call stack, or None."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, transformers.Trainer):
            return candidate.callback_handler
        frame = frame.f_back
    return None


def _is_wandb(logger: Any) -> bool:
    return isinstance(logger, WandbLogger) or (isinstance(logger, str) and logger.partition(":")[0] == "wandb")
