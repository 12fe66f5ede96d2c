"""Lightning: a ``Callback`` that runs the Monitor from the Trainer's own hooks.

    from edgewatch.integrations.lightning import EdgewatchCallback

    trainer = L.Trainer(callbacks=[EdgewatchCallback(probe, stop_on=["nonfinite"])])
    trainer.fit(module)   # metrics in trainer.loggers as edgewatch/..., and in <default_root_dir>/edgewatch_runs/<time>

Where the records go:

- every logger of ``trainer.loggers`` (TensorBoard, CSV, W&B, MLflow, ...) gets each measured
  step's metrics through ``log_metrics(metrics, step)`` at the trainer's global step, each name
  prefixed ``edgewatch/`` (``edgewatch/loss``, ``edgewatch/curvature/lambda_max``) so they never
  collide with the module's own ``self.log`` names; on the main process only. The step is the one
  the metrics were measured after, as in the run directory: Lightning logs what ``training_step``
  logs at the step count before that batch's update, so the module's ``loss`` at step t-1 is
  ``edgewatch/loss`` at step t. Events are not metrics: they stay in ``events.jsonl`` and
  ``callback.monitor.events``. ``trainer_loggers=False`` turns this off.
- the JSONL run directory, by default ``<default_root_dir>/edgewatch_runs/<time>``; a run resumed
  from a Lightning checkpoint continues the directory the checkpoint names.

The loss: without ``loss_fn`` the curvature probe differentiates the loss ``training_step``
returns, evaluated on each probe batch as ``pl_module.training_step(batch, 0)`` (see
:func:`training_step_loss`).

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
- ``state_dict``/``load_state_dict``: the Monitor's state (and its run directory) travels in
  Lightning's checkpoints.
- ``on_fit_end``/``on_exception``: the Monitor is detached and its loggers closed.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from edgewatch.curvature.probe_set import LossFn
from edgewatch.extras import require
from edgewatch.hooks.validation import check_callback_arguments
from edgewatch.integrations._adapter import PREFIX, Adapter, run_dir_under
from edgewatch.loggers import Logger

L = require("lightning", "lightning", what="edgewatch.integrations.lightning")
from lightning.fabric.utilities.apply_func import move_data_to_device  # noqa: E402 - after require() names the extra

__all__ = ["EdgewatchCallback", "TrainerLoggers", "training_step_loss"]

# What training_step may call to log; silenced while it runs on a probe batch.
_LOGGING_METHODS = ("log", "log_dict")


def training_step_loss(pl_module: L.LightningModule, batch: Any) -> torch.Tensor:
    """The loss ``pl_module.training_step(batch, 0)`` returns: the tensor itself, or its ``"loss"``.

    Calls to ``self.log`` and ``self.log_dict`` inside ``training_step`` do nothing here, so a
    probe's loss never reaches the module's own logged metrics. Anything else ``training_step``
    does happens on every probe evaluation (several forward passes per curvature point, on the
    probe batches, with ``batch_idx`` 0): it should compute the loss and nothing more; a step
    with other side effects needs a ``loss_fn`` of its own.

    Raises:
        TypeError: ``training_step`` returned neither a tensor nor a mapping with ``"loss"``.
    """
    with _silenced_logging(pl_module):
        output = pl_module.training_step(batch, 0)
    loss = output.get("loss") if isinstance(output, Mapping) else output
    if not isinstance(loss, torch.Tensor):
        raise TypeError(
            f"training_step returned {type(output).__name__}, not a loss tensor or a dict with 'loss'; "
            "pass loss_fn=lambda module, batch: ... to EdgewatchCallback"
        )
    return loss


@contextlib.contextmanager
def _silenced_logging(pl_module: L.LightningModule) -> Iterator[None]:
    # The probe's values must not reach the module's logged metrics (and Lightning refuses self.log in the
    # hooks the probe runs from); instance attributes shadow the methods for the duration.
    saved = {name: pl_module.__dict__[name] for name in _LOGGING_METHODS if name in pl_module.__dict__}
    for name in _LOGGING_METHODS:
        object.__setattr__(pl_module, name, _ignore)
    try:
        yield
    finally:
        for name in _LOGGING_METHODS:
            del pl_module.__dict__[name]
        pl_module.__dict__.update(saved)


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


class TrainerLoggers(Logger):
    """Sends the Monitor's metrics to every logger of ``trainer.loggers``, named ``edgewatch/<name>``.

    ``log_metrics(metrics, step)`` is called with the Monitor's step, which the callback keeps equal
    to ``trainer.global_step``: the step the metrics were measured after. Events are not sent.
    """

    name = "lightning"

    def __init__(self, trainer: L.Trainer) -> None:
        self.trainer = trainer

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        row = {PREFIX + name: value for name, value in metrics.items()}
        for logger in self.trainer.loggers:
            logger.log_metrics(row, step=step)


class EdgewatchCallback(Adapter, L.Callback):
    """Watches the LightningModule and its first optimizer while ``trainer.fit`` runs.

    Args:
        probe: the fixed probe batches (moved to the module's device at train start).
        loss_fn: ``loss_fn(pl_module, batch) -> scalar``, the training loss of one batch, for the
            curvature probe (the training loss itself is taken from the loop); default
            :func:`training_step_loss`, the loss ``training_step`` returns.
        stop_on: event kinds that stop training through ``trainer.should_stop``.
        trainer_loggers: send the metrics to ``trainer.loggers`` too (named ``edgewatch/...``).
        **monitor_kwargs: passed to :class:`~edgewatch.Monitor` (``curvature``, ``detectors``,
            ``callbacks``, ``loggers``, ...). ``run_dir`` defaults to
            ``<default_root_dir>/edgewatch_runs/<time>``; a run resumed from a checkpoint appends
            to the directory it names, without writing a step twice. Under DDP only global rank 0
            logs.

    The order of earlier releases, ``EdgewatchCallback(loss_fn, probe)``, still works for now, with
    a ``DeprecationWarning``.

    Attributes:
        monitor: the :class:`~edgewatch.Monitor`, built at train start.
        stopped_by: the event that stopped training, if any.

    Raises:
        ValueError, TypeError: at construction, a bad ``loss_fn``, an empty probe or one holding
            NaN or inf, unknown ``stop_on`` kinds, or a Monitor argument in ``monitor_kwargs``
            that the Monitor would refuse (:mod:`~edgewatch.hooks.validation`; an unknown name
            too); at train start, a module without optimizers, a module with manual optimization
            and no ``loss_fn`` (its ``training_step`` steps the optimizer), or the Monitor's checks
            of the model (a probe batch that does not fit it, all parameters frozen).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # the signature is _setup's (set below); this only lets the old order through, with a warning
        self._setup(*_probe_first(args, kwargs), **kwargs)

    def _setup(self, probe: Iterable[Any], loss_fn: LossFn | None = None, *, stop_on: Iterable[str] = (),
               trainer_loggers: bool = True, **monitor_kwargs: Any) -> None:
        self._default_loss = loss_fn is None
        loss_fn = loss_fn or training_step_loss
        probe = check_callback_arguments(loss_fn, probe, monitor_kwargs, "EdgewatchCallback")
        Adapter.__init__(self, stop_on, monitor_kwargs)
        self.probe, self.loss_fn = probe, loss_fn
        self.trainer_loggers = trainer_loggers
        self._losses: list[torch.Tensor] = []
        self._restored: dict[str, Any] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.optimizers:
            raise ValueError("EdgewatchCallback watches an optimizer, but configure_optimizers() returned none")
        if self._default_loss and not pl_module.automatic_optimization:
            raise ValueError("EdgewatchCallback: with manual optimization training_step steps the optimizer itself, "
                             "so it cannot give the probe's loss; pass loss_fn=lambda module, batch: ...")
        probe = [move_data_to_device(batch, pl_module.device) for batch in self.probe]
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._start(pl_module, trainer.optimizers[0], self.loss_fn, probe, step=trainer.global_step,
                    run_dir=run_dir_under(trainer.default_root_dir), main_process=trainer.is_global_zero,
                    state=self._restored, grad_scaler=scaler, loggers=self._loggers(trainer))
        self._restored, self._losses = None, []

    def _loggers(self, trainer: L.Trainer) -> list[Any]:
        loggers = self.monitor_kwargs.get("loggers", ())
        loggers = [loggers] if isinstance(loggers, (str, Logger)) else list(loggers)
        if self.trainer_loggers and trainer.loggers:
            loggers.append(TrainerLoggers(trainer))
        return loggers

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
        return self._state() if self.monitor is not None else dict(self._restored or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before train start, when there is no Monitor yet.
        self._restored = state_dict


EdgewatchCallback.__init__.__signature__ = inspect.signature(EdgewatchCallback._setup)  # type: ignore[attr-defined]


def _probe_first(args: tuple, kwargs: dict[str, Any]) -> tuple:
    """The positional arguments in today's order. The old order, ``(loss_fn, probe)`` or
    ``(loss_fn, probe=...)``, recognized by a callable first argument, is turned around (``probe``
    taken out of ``kwargs``), with a DeprecationWarning."""
    if not args or not callable(args[0]):
        return args
    if len(args) >= 2 and not callable(args[1]):
        loss_fn, probe, rest = args[0], args[1], args[2:]
    elif len(args) == 1 and "probe" in kwargs:
        loss_fn, probe, rest = args[0], kwargs.pop("probe"), ()
    else:
        return args
    warnings.warn(
        "EdgewatchCallback(loss_fn, probe) is deprecated and will be removed in the next release; "
        "write EdgewatchCallback(probe, loss_fn) (loss_fn may be left out: it defaults to the loss "
        "training_step returns)", DeprecationWarning, stacklevel=3,
    )
    return (probe, loss_fn, *rest)
