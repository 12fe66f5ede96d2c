"""Every argument of the Monitor checked when it is built, not at the first probe.

A setting the probe cannot use (``k=0``, ``tol=-1``, ``max_hvps`` below ``k``, a NaN) used to pass
construction; the first probe then failed, warned once, and curvature was absent for the whole
run. Here each argument is checked up front and a bad one raises one line that names the
argument, the value given and the fix. The :class:`~edgewatch.hooks.monitor.Monitor`, the
:class:`~edgewatch.hooks.meters.curvature.CurvatureMeter` and the trainer callbacks
(:mod:`edgewatch.integrations`) all call these functions, so a callback refuses a bad
``**monitor_kwargs`` when it is created, not when training starts.

Convention: a number out of range or of the wrong type raises ``ValueError`` (as ``every`` and
``curvature`` always have); an object of the wrong kind (a model, an optimizer, a detector, a
callback) raises ``TypeError``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any, Literal

import torch
from torch import nn

from edgewatch.curvature.hessian import check_method
from edgewatch.curvature.probe_set import check_loss_fn, check_probe_batches, check_seed, check_train
from edgewatch.distributed import probe_group
from edgewatch.hooks.budget import Budget
from edgewatch.hooks.config import CurvatureConfig, check_count, check_curvature_settings, check_relative
from edgewatch.hooks.detectors.base import Detector
from edgewatch.hooks.events import KINDS
from edgewatch.hooks.meters.blocks import check_module_metrics
from edgewatch.hooks.schedule import Schedule
from edgewatch.loggers import LOGGERS, Logger

__all__ = [
    "check_callback_arguments",
    "check_count",
    "check_curvature_settings",
    "check_every",
    "check_monitor_settings",
    "check_relative",
    "check_stop_on",
    "check_trainable",
    "curvature_schedule",
]


# -- single values ----------------------------------------------------------------------------
def check_flag(name: str, value: Any, allow_none: bool = False) -> None:
    """``value`` is True or False (or None, when that means "as it is")."""
    if not (isinstance(value, bool) or (allow_none and value is None)):
        allowed = "True, False or None" if allow_none else "True or False"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_every(every: Any, name: str = "every") -> int | None:
    """A cadence in steps: a positive int (``every`` alone may also be None: as the budget allows)."""
    if every is None and name == "every":
        return None
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        allowed = " or None (as the budget allows)" if name == "every" else ""
        raise ValueError(f"{name} must be a positive number of steps{allowed}, got {every!r}")
    return every


def curvature_schedule(curvature: Any) -> Literal["budget"] | Callable[[int], bool] | None:
    """``curvature=`` as the Monitor uses it: "budget", a callable step -> bool, or None."""
    if curvature is None or curvature == "budget" or isinstance(curvature, Schedule):
        return curvature
    if isinstance(curvature, int) and not isinstance(curvature, bool):
        if curvature < 1:
            raise ValueError(f"curvature={curvature}: give a positive number of steps, \"budget\" or None to turn curvature off")
        return Schedule(every=curvature)
    if callable(curvature):
        return curvature
    raise ValueError(
        f"curvature must be \"budget\" (the default), a number of steps, a Schedule, a callable step -> bool, "
        f"or None (off); got {curvature!r}"
    )


# -- the Monitor's keyword arguments -------------------------------------------------------------
def check_stop_on(stop_on: Iterable[str], detectors: Sequence[Detector] | None) -> frozenset[str]:
    """``stop_on`` as a set, checked against the kinds the detectors (default: the built-in ones) raise."""
    if isinstance(stop_on, str):
        raise ValueError(f"stop_on must be a list of event kinds, got the string {stop_on!r}; write stop_on=[{stop_on!r}]")
    kinds = frozenset(stop_on)
    unknown = kinds - set(KINDS) - {kind for detector in detectors or () for kind in getattr(detector, "kinds", ())}
    if unknown:
        raise ValueError(f"stop_on has unknown event kinds {sorted(unknown)}; known: {list(KINDS)}")
    return kinds


def _check_budget(budget: Any) -> None:
    Budget(budget)  # its own check, with its own message


def _check_history(history: Any) -> None:
    check_count("history", history, minimum=2, fix="the points kept per metric, e.g. history=2048")


def _check_detectors(detectors: Any) -> None:
    if detectors is None:
        return
    if isinstance(detectors, Detector) or not isinstance(detectors, Iterable):
        raise TypeError(f"detectors must be a list of Detector objects, got {type(detectors).__name__}; wrap one in a list")
    for index, detector in enumerate(detectors):
        if not callable(getattr(detector, "update", None)):
            raise TypeError(
                f"detectors[{index}] is not a detector (a {type(detector).__name__} without update()); "
                "subclass edgewatch.hooks.Detector and implement update(metrics, step)"
            )


def _check_callbacks(callbacks: Any) -> None:
    if callable(callbacks) or not isinstance(callbacks, Iterable):
        raise TypeError(f"callbacks must be a list of functions event -> None, got {type(callbacks).__name__}; wrap one in a list")
    for index, callback in enumerate(callbacks):
        if not callable(callback):
            raise TypeError(f"callbacks[{index}] is not callable (a {type(callback).__name__}); pass functions event -> None")


def _check_grad_scaler(scaler: Any) -> None:
    if scaler is not None and not (callable(getattr(scaler, "get_scale", None)) and callable(getattr(scaler, "is_enabled", None))):
        raise TypeError(f"grad_scaler must be the loop's torch.amp.GradScaler or None, got {type(scaler).__name__}")


def _check_loggers(loggers: Any) -> None:
    specs = [loggers] if isinstance(loggers, (str, Logger)) else loggers
    if not isinstance(specs, Iterable):
        raise TypeError(f"loggers must be a spec like \"stdout\", a Logger, or a list of them, got {type(loggers).__name__}")
    for spec in specs:
        if isinstance(spec, Logger):
            continue
        if not isinstance(spec, str):
            raise TypeError(f"a logger is a spec string like 'jsonl:runs/exp1' or a Logger, got {type(spec).__name__}")
        name = spec.partition(":")[0]
        if name not in LOGGERS:  # the name only: building the logger (a W&B run) waits for the Monitor
            raise ValueError(f"unknown logger {name!r} in {spec!r}; known: {', '.join(LOGGERS)} (as 'name' or 'name:argument')")


def _check_run_dir(run_dir: Any) -> None:
    if run_dir is not None and run_dir is not False and not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"run_dir must be a directory path, None (a new one under $EDGEWATCH_DIR) or False (none), got {run_dir!r}")


def _together(value: Any) -> None:
    """Checked with the arguments it depends on (``max_hvps`` against ``k``, ``stop_on`` against
    the detectors), in :func:`check_monitor_settings`."""


#: What each keyword argument of the Monitor must be; every one has an entry (a test checks).
_SETTINGS: dict[str, Callable[[Any], Any]] = {
    "every": check_every,
    "curvature": curvature_schedule,
    "norms_every": lambda value: check_every(value, "norms_every"),
    "budget": _check_budget,
    "history": _check_history,
    "k": _together,
    "tol": _together,
    "max_hvps": _together,
    "method": check_method,
    "seed": check_seed,
    "train": check_train,
    "detectors": _check_detectors,
    "callbacks": _check_callbacks,
    "stop_on": _together,
    "track_updates": lambda value: check_flag("track_updates", value),
    "module_metrics": check_module_metrics,
    "grad_scaler": _check_grad_scaler,
    "loggers": _check_loggers,
    "run_dir": _check_run_dir,
    "process_group": probe_group,
    "main_process": lambda value: check_flag("main_process", value, allow_none=True),
}

# The Monitor's keyword arguments that make up its CurvatureConfig.
_CURVATURE_FIELDS = tuple(field.name for field in fields(CurvatureConfig))


def check_monitor_settings(settings: Mapping[str, Any], owner: str = "Monitor") -> None:
    """Check the Monitor's keyword arguments (any subset; the others keep their defaults).

    Raises:
        TypeError: a name the Monitor does not take (``owner`` says who was given it), or an
            object of the wrong kind.
        ValueError: a value out of range; the message names the argument, the value and the fix.
    """
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise TypeError(f"{owner} got unknown Monitor arguments {unknown}; the Monitor takes {', '.join(_SETTINGS)}")
    for name, value in settings.items():
        _SETTINGS[name](value)
    CurvatureConfig(**{name: settings[name] for name in _CURVATURE_FIELDS if name in settings})  # checks them together
    check_stop_on(settings.get("stop_on", ()), settings.get("detectors"))


# -- the model and optimizer ---------------------------------------------------------------------
def check_trainable(model: Any, optimizer: Any) -> None:
    """The optimizer updates parameters of ``model``, and at least one of them requires grad.

    Raises:
        TypeError: not a module, not an optimizer.
        ValueError: an optimizer built from another model, or every parameter it updates frozen
            (``requires_grad=False``): training would change nothing. (Some parameters outside
            the model, a learnable loss temperature say, only warn: they are not measured.)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    own = {id(p) for p in model.parameters()}
    updated = [p for group in optimizer.param_groups for p in group["params"]]
    foreign = sum(id(p) not in own for p in updated)
    if not updated or foreign == len(updated):
        raise ValueError(
            f"the optimizer updates none of the model's parameters (its {len(updated)} parameters belong elsewhere); "
            "build it from model.parameters() of the model you pass"
        )
    if foreign:  # e.g. a learnable loss temperature: legitimate, but outside what is measured
        warnings.warn(
            f"edgewatch: the optimizer updates {foreign} of its {len(updated)} parameters outside the model; "
            "curvature and norms cover the model's parameters only (pass the module that holds them all to watch them)",
            stacklevel=3,
        )
    if not any(p.requires_grad for p in updated):
        raise ValueError(
            f"all {len(updated)} parameters the optimizer updates are frozen (requires_grad=False), so training "
            "changes nothing and there is no curvature to measure; unfreeze them with p.requires_grad_(True)"
        )


# -- the trainer callbacks ---------------------------------------------------------------------
def check_callback_arguments(loss_fn: Any, probe: Any, monitor_kwargs: Mapping[str, Any], owner: str) -> list:
    """What a trainer callback can check before training starts: ``loss_fn``, the probe batches
    (not empty, no NaN or inf) and the Monitor's keyword arguments. Returns the probe as a list."""
    check_loss_fn(loss_fn)
    batches = check_probe_batches(probe)
    check_monitor_settings(monitor_kwargs, owner)
    return batches

