"""Lightning: a ``Callback`` that runs the Monitor from the Trainer's own hooks.

    from edgewatch.integrations.lightning import EdgewatchCallback

    trainer = L.Trainer(callbacks=[EdgewatchCallback(loss_fn, probe, stop_on=["nonfinite"])])
    trainer.fit(module)   # metrics in <trainer.log_dir>/edgewatch, events in callback.monitor.events

How each hook is used:

- ``on_train_start``: the Monitor is built on the LightningModule and ``trainer.optimizers[0]`` (the
  torch optimizer; its step hooks see every step, whatever Lightning wraps around it), with
  ``trainer.global_step`` as its step, after Lightning restored the checkpoint, so a resumed run
  continues its step count, detector histories and warm starts.
- ``on_before_backward``: the training loss. Lightning hands over ``training_step``'s loss divided by
  ``accumulate_grad_batches`` (and multiplied by the AMP loss scale); the Monitor gets the mean of the
  micro-batches' ``training_step`` losses, unscaled.
- gradient norms come from autograd's accumulate hooks, so they are the norms before Lightning's
  ``gradient_clip_val`` clips them.
- ``on_train_batch_end``: the step counts are compared, and a ``stop_on`` event sets
  ``trainer.should_stop`` (Lightning ends training after this batch, or once ``min_steps``/``min_epochs``
  allow).
- ``state_dict``/``load_state_dict``: the Monitor's state travels in Lightning's checkpoints.
- ``on_fit_end``/``on_exception``: the Monitor is detached and its loggers closed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from edgewatch._optional import require
from edgewatch.curvature._base import LossFn
from edgewatch.hooks.validation import check_callback_arguments
from edgewatch.integrations._adapter import Adapter

L = require("lightning", "lightning", what="edgewatch.integrations.lightning")
from lightning.fabric.utilities.apply_func import move_data_to_device

__all__ = ["EdgewatchCallback"]


class EdgewatchCallback(Adapter, L.Callback):
    """Watches the LightningModule and its first optimizer while ``trainer.fit`` runs.

    Args:
        loss_fn: ``loss_fn(pl_module, batch) -> scalar``, the training loss of one batch (for the
            curvature probe; the training loss itself is taken from the loop).
        probe: the fixed probe batches (moved to the module's device at train start).
        stop_on: event kinds that stop training through ``trainer.should_stop``.
        **monitor_kwargs: passed to :class:`~edgewatch.Monitor` (``curvature``, ``detectors``,
            ``callbacks``, ``loggers``, ...). ``run_dir`` defaults to ``<trainer.log_dir>/edgewatch``
            (``default_root_dir`` without a logger); a run resumed into the same directory appends
            to it, without writing a step twice. Under DDP only global rank 0 logs.

    Attributes:
        monitor: the :class:`~edgewatch.Monitor`, built at train start.
        stopped_by: the event that stopped training, if any.

    Raises:
        ValueError, TypeError: at construction, a bad ``loss_fn``, an empty probe or one holding
            NaN or inf, unknown ``stop_on`` kinds, or a Monitor argument in ``monitor_kwargs``
            that the Monitor would refuse (:mod:`~edgewatch.hooks.validation`; an unknown name
            too); at train start, a module without optimizers or the Monitor's checks of the
            model (a probe batch that does not fit it, all parameters frozen).
    """

    def __init__(self, loss_fn: LossFn, probe: Iterable[Any], *, stop_on: Iterable[str] = (),
                 **monitor_kwargs: Any) -> None:
        probe = check_callback_arguments(loss_fn, probe, monitor_kwargs, "EdgewatchCallback")
        Adapter.__init__(self, stop_on, monitor_kwargs)
        self.loss_fn, self.probe = loss_fn, probe
        self._losses: list[torch.Tensor] = []
        self._restored: dict[str, Any] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.optimizers:
            raise ValueError("EdgewatchCallback watches an optimizer, but configure_optimizers() returned none")
        probe = [move_data_to_device(batch, pl_module.device) for batch in self.probe]
        run_dir = Path(trainer.log_dir or trainer.default_root_dir) / "edgewatch"
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._start(pl_module, trainer.optimizers[0], self.loss_fn, probe, step=trainer.global_step,
                    run_dir=run_dir, main_process=trainer.is_global_zero, state=self._restored, grad_scaler=scaler)
        self._restored, self._losses = None, []

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach())

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        # Runs after the last backward of the step and before the torch step's post-hook measures.
        if self.monitor is not None and self._losses:
            # each micro-batch's loss arrives divided by accumulate_grad_batches: undo it, then average
            loss = torch.stack(self._losses).sum() * (trainer.accumulate_grad_batches / len(self._losses))
            scaler = self.monitor.grad_scaler
            if scaler is not None and scaler.is_enabled():
                loss = loss / scaler.get_scale()  # CPU-GPU sync, only under fp16 AMP
            self.monitor.observe(loss)
        self._losses = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # one rank's event stops every rank (an all-reduce under DDP, nothing on one device)
        if trainer.strategy.reduce_boolean_decision(self._step_end(trainer.global_step), all=False):
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step_end(trainer.global_step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict() if self.monitor is not None else dict(self._restored or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before train start, when there is no Monitor yet.
        self._restored = state_dict
