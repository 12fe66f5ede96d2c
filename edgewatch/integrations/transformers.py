"""Hugging Face: a ``TrainerCallback`` that runs the Monitor from the Trainer's own hooks.

    from edgewatch.integrations.transformers import EdgewatchCallback

    trainer = Trainer(model, args, train_dataset=data, callbacks=[EdgewatchCallback(probe, stop_on=["nonfinite"])])
    trainer.train()       # metrics in <output_dir>/edgewatch, events in callback.monitor.events

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
- ``on_save``: the Monitor's state goes to ``edgewatch_monitor.pt`` in the ``checkpoint-N`` folder. On
  resume it is read from ``args.resume_from_checkpoint`` when that names the checkpoint of the
  resumed step, else from ``<output_dir>/checkpoint-<global_step>``; without it (a checkpoint saved
  without the callback) the Monitor starts afresh at the resumed step, with a warning.
- ``on_train_end``: the hook is removed, the Monitor detached and its loggers closed. The Trainer
  has no hook for exceptions: after a crash the Monitor stays attached to the optimizer.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from edgewatch._optional import require
from edgewatch.curvature._base import LossFn
from edgewatch.hooks.validation import check_callback_arguments
from edgewatch.integrations._adapter import Adapter, any_rank

transformers = require("transformers", "transformers", what="edgewatch.integrations.transformers")
send_to_device = require("accelerate.utils", "transformers", what="edgewatch.integrations.transformers").send_to_device
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = ["STATE_FILE", "EdgewatchCallback", "model_loss"]

#: The Monitor's state inside a ``checkpoint-N`` folder.
STATE_FILE = "edgewatch_monitor.pt"


def model_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """The model's own loss, ``model(**batch).loss``: the batch must hold ``labels``."""
    return model(**batch).loss


class EdgewatchCallback(Adapter, transformers.TrainerCallback):
    """Watches the Trainer's model and optimizer while ``trainer.train()`` runs.

    Args:
        probe: the fixed probe batches, dicts of model inputs with ``labels`` (moved to the model's
            device at train start).
        loss_fn: ``loss_fn(model, batch) -> scalar`` for the curvature probe; default
            :func:`model_loss`.
        stop_on: event kinds that stop training through ``control.should_training_stop``.
        **monitor_kwargs: passed to :class:`~edgewatch.Monitor` (``curvature``, ``detectors``,
            ``callbacks``, ``loggers``, ...). ``run_dir`` defaults to ``<args.output_dir>/edgewatch``;
            a resumed run appends to it. Under distributed training only the main process logs, and
            a ``stop_on`` event on any rank stops every rank.

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
                 **monitor_kwargs: Any) -> None:
        loss_fn = loss_fn or model_loss
        probe = check_callback_arguments(loss_fn, probe, monitor_kwargs, "EdgewatchCallback")
        Adapter.__init__(self, stop_on, monitor_kwargs)
        self.probe, self.loss_fn = probe, loss_fn
        self._losses: list[torch.Tensor] = []
        self._summed = False  # the micro-batch losses add up to the step's loss (num_items_in_batch)
        self._reading = True  # False inside optimizer.step(), where the probe's forwards run
        self._hook = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs) -> None:
        device = next(model.parameters()).device
        probe = [send_to_device(batch, device) for batch in self.probe]
        self._start(model, getattr(optimizer, "optimizer", optimizer), self.loss_fn, probe, step=state.global_step,
                    run_dir=Path(args.output_dir) / "edgewatch", main_process=state.is_world_process_zero,
                    state=self._saved_state(args, state),
                    grad_scaler=getattr(optimizer, "scaler", None))
        if self._hook is not None:
            self._hook.remove()
        self._hook = model.register_forward_hook(self._read_loss, with_kwargs=True)
        self._losses, self._reading = [], True

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

    def on_save(self, args, state, control, **kwargs) -> None:
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if self.monitor is not None and state.is_world_process_zero and folder.is_dir():
            torch.save(self.monitor.state_dict(), folder / STATE_FILE)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        self._step_end(state.global_step)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
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
