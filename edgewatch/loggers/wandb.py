"""Weights & Biases: metrics against the optimizer step, events as alerts and a table.

Names. Every name carries the prefix ``edgewatch/`` (``edgewatch/loss``, ``edgewatch/events``;
:func:`edgewatch.names.prefixed`), as in every logger outside the run directory, so it never
collides with the script's own ``loss`` and reads alike in W&B, TensorBoard and MLflow.

Run. An active ``wandb.run`` (``wandb.init()`` in the training script) is reused and left open,
with the meta under the config key ``edgewatch``, so nothing of the script's is overwritten.
Otherwise :meth:`start` calls ``wandb.init(project=..., config=meta, **init_kwargs)`` and
:meth:`close` finishes that run.

Step. Every record carries ``edgewatch/step``, the optimizer step, and each name edgewatch logs
is declared against it with ``define_metric`` the first time it is logged: charts use the
optimizer step as x-axis. Only edgewatch's own names are declared, so the script's metrics keep
their axes. ``step=`` is never passed to ``run.log``: W&B's ``_step`` belongs to the run's owner,
and each record is its own row, so in a reused run ``_step`` advances once per record of ours
too (as with Lightning's logger). A script that passes its own ``step=`` to ``wandb.log`` would
then see rows dropped (W&B drops a ``step`` behind ``_step``): it should log its step as a metric
of its own instead, or leave the run to edgewatch.

Events. Each is a row of the ``events`` table (step, kind, severity, message), logged again
whole at each event so its latest version holds them all, and a W&B alert (email, Slack): at
most one per event kind every ``alert_interval`` seconds (default 10 minutes), since alerts
reach people and a detector that fires often must not flood them; the table keeps every event.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from edgewatch import names
from edgewatch.extras import require
from edgewatch.loggers._base import Logger

__all__ = ["EVENT_COLUMNS", "STEP_METRIC", "WandbLogger"]

STEP_METRIC = names.prefixed("step")
EVENT_COLUMNS = ["step", "kind", "severity", "message"]
_ALERT_LEVELS = {"info": "INFO", "warning": "WARN", "critical": "ERROR"}


class WandbLogger(Logger):
    """Logs to a W&B run; see the module docstring.

    Args:
        project: the project of a run started here (the spec ``"wandb:my-project"`` passes it).
        alert_interval: seconds between two alerts of the same event kind (0: an alert per
            event; ``None``: no alerts).
        init_kwargs: more ``wandb.init`` arguments (``entity``, ``name``, ``mode``, ``tags`` ...).

    Raises:
        edgewatch.MissingExtraError: ``wandb`` is not installed.
    """

    name = "wandb"

    def __init__(self, project: str | None = None, *, alert_interval: float | None = 600.0, **init_kwargs: Any) -> None:
        self._wandb = require("wandb", "wandb", what="the W&B logger")
        self.project, self.alert_interval, self.init_kwargs = project, alert_interval, init_kwargs
        self.run: Any = None
        self._owned = False
        self._defined: set[str] = set()
        self._events: list[list[Any]] = []
        self._last_alert: dict[str, float] = {}  # kind -> time.monotonic() of its last alert

    def start(self, meta: Mapping[str, Any]) -> None:
        # a logger handed to a second Monitor (a second fit()) starts from nothing of the first run's
        self._owned, self._defined, self._events = False, set(), []
        wandb = self._wandb
        if wandb.run is not None:
            self.run = wandb.run
            self.run.config.update({"edgewatch": dict(meta)}, allow_val_change=True)
        else:
            self.run = wandb.init(project=self.project, config=dict(meta), **self.init_kwargs)
            self._owned = True
        self.run.define_metric(STEP_METRIC)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self._log({names.prefixed(name): value for name, value in metrics.items()}, step)

    def log_event(self, event: Mapping[str, Any]) -> None:
        step, kind, severity = int(event["step"]), str(event["kind"]), str(event["severity"])
        self._events.append([step, kind, severity, str(event["message"])])
        table = self._wandb.Table(columns=EVENT_COLUMNS, data=self._events)  # a logged table is frozen: a new one each time
        self._log({names.prefixed("events"): table}, step)
        now, last = time.monotonic(), self._last_alert.get(kind, -math.inf)
        if self.alert_interval is not None and now - last >= self.alert_interval:
            self._last_alert[kind] = now
            self.run.alert(title=f"edgewatch: {kind}", text=f"step {step}: {event['message']}",
                           level=_ALERT_LEVELS.get(severity, "INFO"))

    def _log(self, row: dict[str, Any], step: int) -> None:
        for name in row.keys() - self._defined:
            self.run.define_metric(name, step_metric=STEP_METRIC)
        self._defined.update(row)
        self.run.log({**row, STEP_METRIC: step})

    def close(self) -> None:
        if self._owned and self.run is not None:
            self.run.finish()
        self.run, self._owned = None, False
