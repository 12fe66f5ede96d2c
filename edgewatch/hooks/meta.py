"""What a run directory's ``meta.json`` says about the run: versions, model, optimizer, probe, schedules."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from edgewatch.curvature.probe_set import unwrap_model
from edgewatch.distributed import world_size
from edgewatch.hooks.schedule import Schedule
from edgewatch.optimizers import UnsupportedOptimizerError, stability
from edgewatch.version import __version__

if TYPE_CHECKING:
    from edgewatch.hooks.meters.curvature import CurvatureMeter

__all__ = ["WatchedRun", "run_meta"]


class WatchedRun(Protocol):
    """What :func:`run_meta` reads of a watched run (the Monitor has it all)."""

    @property
    def model(self) -> nn.Module: ...
    @property
    def optimizer(self) -> torch.optim.Optimizer: ...
    @property
    def curvature(self) -> CurvatureMeter: ...
    @property
    def step_count(self) -> int: ...
    @property
    def every(self) -> int | None: ...
    @property
    def curvature_schedule(self) -> Any: ...
    @property
    def budget(self) -> Any: ...
    @property
    def detectors(self) -> Sequence[Any]: ...
    @property
    def stop_on(self) -> set[str]: ...
    @property
    def process_group(self) -> Any: ...


def run_meta(monitor: WatchedRun) -> dict[str, Any]:
    """A JSON-ready description of the watched run (written once, when the first record is).

    Under ``torch.distributed`` it is written by the logging rank alone, so it holds no collective:
    the probe's batches and examples are that rank's shard, and ``distributed`` says how many
    ranks there are.
    """
    model, optimizer, probe = unwrap_model(monitor.model), monitor.optimizer, monitor.curvature
    parameters = list(model.parameters())
    first = parameters[0] if parameters else torch.empty(())
    meta: dict[str, Any] = {
        "edgewatch": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "step": monitor.step_count,
        "model": {
            "class": type(model).__name__,
            "parameters": sum(p.numel() for p in parameters),
            "trainable": sum(p.numel() for p in parameters if p.requires_grad),
            "device": str(first.device),
            "dtype": str(first.dtype).removeprefix("torch."),
        },
        "optimizer": {
            "class": type(optimizer).__name__,
            "groups": [
                {key: _plain(value) for key, value in group.items() if key != "params"}
                | {"parameters": sum(p.numel() for p in group["params"])}
                for group in optimizer.param_groups
            ],
        },
        "probe": {
            "batches": len(probe.hessian.probe),
            "examples": sum(_leading_size(batch) for batch in probe.hessian.probe),
            "curvature_parameters": probe.hessian.size,
        },
        "schedules": {
            "every": monitor.every if monitor.every is not None else "budget",
            "curvature": _describe(monitor.curvature_schedule),
            "budget": monitor.budget.fraction,
        },
        "curvature": {"k": probe.k, "tol": probe.tol, "max_hvps": probe.max_hvps, "method": probe.hessian.method or "auto",
                      "seed": probe.hessian.seed, "train": probe.hessian.train},
        "detectors": sorted({kind for detector in monitor.detectors for kind in detector.kinds}),
        "stop_on": sorted(monitor.stop_on),
    }
    group = monitor.process_group
    if group is not None:
        meta["distributed"] = {"world_size": world_size(group), "backend": str(torch.distributed.get_backend(group)),
                               "probe": "each rank its own shard; the probe batches and examples above are this rank's"}
    try:  # the stability constant c per group: what r = ηλ/c divides by
        meta["optimizer"]["stability"] = [
            {"constant": group.stability_constant, "formula": group.formula} for group in stability(optimizer).groups
        ]
    except UnsupportedOptimizerError:
        pass
    except Exception as error:  # noqa: BLE001 - a description of the run must not stop the run
        meta["optimizer"]["stability"] = {"error": f"{type(error).__name__}: {error}"}
    return meta


def _describe(schedule: Any) -> Any:
    """A curvature schedule as JSON can hold it."""
    if schedule is None or isinstance(schedule, str):
        return schedule
    if isinstance(schedule, Schedule):
        return {"every": schedule.every, "dense_until": schedule.dense_until, "per_decade": schedule.per_decade}
    return repr(schedule)


def _plain(value: Any) -> Any:
    """A hyperparameter as JSON can hold it."""
    if isinstance(value, Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return repr(value)


def _leading_size(batch: Any) -> int:
    """Examples in a batch: the leading size of its first tensor."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            size = _leading_size(item)
            if size:
                return size
    return 0
