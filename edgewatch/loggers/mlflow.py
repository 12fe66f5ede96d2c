"""MLflow: metrics at the optimizer step, the run's meta as params, events as a JSON lines artifact.

Run. An active MLflow run (``mlflow.start_run()`` in the training script) is reused and left open.
Otherwise a run is created in ``experiment`` and finished in :meth:`close`, through an
``MlflowClient``: MLflow's global state (tracking URI, active run) is left alone. Either way every
name carries the prefix ``edgewatch/`` (:func:`edgewatch.names.prefixed`), as in every logger
outside the run directory, written ``edgewatch.`` here (``edgewatch.loss``,
``edgewatch.model.class``): never a collision with the script's own ``loss`` or with params it
logged (MLflow refuses to change a param), and runs compare alike in MLflow, W&B and TensorBoard.

Tracking URI. The argument, else ``$MLFLOW_TRACKING_URI``, else the file store
``file:$EDGEWATCH_DIR/mlruns`` (``./runs/mlruns``). MLflow 3 refuses file stores unless
``MLFLOW_ALLOW_FILE_STORE=true``; for a file store that variable is set in this process (unless
it is set already), since a local directory is what a user who names none expects.

Names. ``/`` becomes ``.`` (``edgewatch/grad/norm/fc`` → ``edgewatch.grad.norm.fc``): MLflow's file store keeps a
metric in a file named by its path, and ``grad/norm`` beside ``grad/norm/fc`` (or ``lr`` beside
``lr/group_1``) would need a file and a directory of the same name. Of the other characters,
MLflow allows alphanumerics, ``_ - .`` and spaces; the rest become ``_``
(``attn/max_logit[0]`` → ``attn.max_logit_0_``). Param values are cut to MLflow's length limit;
params already in a reused run (a resumed one) keep their first value, since MLflow refuses to
change a param.

Values. Non-finite metrics are logged as they are: MLflow's stores keep NaN (SQL stores clip
infinities to the largest float), and a NaN loss is exactly what the run should show.

Events. Every event is a line of ``edgewatch/events.jsonl`` among the run's artifacts (the file
is rewritten whole at each event: events are rare), the same records as the run directory's
``events.jsonl``: ``mlflow.artifacts.load_text(run.info.artifact_uri + "/edgewatch/events.jsonl")``.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlparse

from edgewatch import names
from edgewatch.extras import require
from edgewatch.loggers._base import Logger
from edgewatch.loggers.jsonl import jsonable, runs_root

__all__ = ["MlflowLogger", "mlflow_name"]

EVENTS_ARTIFACT = "edgewatch/events.jsonl"
_INVALID = re.compile(r"[^\w.\- ]")  # what MLflow allows in names, less "/" (see the module docstring)


def mlflow_name(name: str) -> str:
    """``name`` as a valid MLflow metric or param name (see the module docstring).

    >>> mlflow_name("grad/norm/blocks.0"), mlflow_name("attn/max_logit[0]"), mlflow_name("..")
    ('grad.norm.blocks.0', 'attn.max_logit_0_', '_..')
    """
    name = _INVALID.sub("_", name.replace("/", "."))
    return name if name and not name.startswith(".") else "_" + name  # "." and ".." are paths MLflow refuses


class MlflowLogger(Logger):
    """Logs to an MLflow run; see the module docstring.

    Args:
        tracking_uri: where runs are stored; default ``$MLFLOW_TRACKING_URI`` or
            ``file:$EDGEWATCH_DIR/mlruns``. The spec ``"mlflow:file:./mlruns"`` passes it.
        experiment: the experiment a new run is created in (created if missing).
        run_name: the new run's name; default MLflow's.

    Raises:
        edgewatch.MissingExtraError: MLflow is not installed.
    """

    name = "mlflow"

    def __init__(self, tracking_uri: str | None = None, experiment: str = "edgewatch", run_name: str | None = None) -> None:
        self._mlflow = require("mlflow", "mlflow", what="the MLflow logger")
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (runs_root() / "mlruns").resolve().as_uri()
        self.experiment, self.run_name = experiment, run_name
        self.client: Any = None
        self.run_id: str | None = None
        self._owned = False
        self._names: dict[str, str] = {}  # metric name -> MLflow name, computed once per name
        self._events: list[str] = []

    def start(self, meta: Mapping[str, Any]) -> None:
        mlflow = self._mlflow
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

        active = mlflow.active_run()
        if active is not None:
            self.client, self.run_id = mlflow.MlflowClient(), active.info.run_id
        else:
            scheme = urlparse(self.tracking_uri).scheme
            if scheme in ("", "file") or len(scheme) == 1:  # a file store (a path, a Windows drive): MLflow 3
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # refuses those without this
            self.client = mlflow.MlflowClient(self.tracking_uri)
            found = self.client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
            self.run_id, self._owned = self.client.create_run(experiment_id, run_name=self.run_name).info.run_id, True
        # A param cannot change once logged: those already in the run (a resumed run) stay as they were.
        logged = self.client.get_run(self.run_id).data.params
        params = {mlflow_name(names.prefixed(key))[:MAX_ENTITY_KEY_LENGTH]: value[:MAX_PARAM_VAL_LENGTH]
                  for key, value in _flatten(jsonable(meta))}
        self.client.log_batch(self.run_id, params=[Param(key, value) for key, value in params.items() if key not in logged])

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(self._name(name), float(value), now, step) for name, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)  # split by the client into MLflow's batch limits

    def log_event(self, event: Mapping[str, Any]) -> None:
        self._events.append(json.dumps(jsonable(dict(event)), allow_nan=False))
        self.client.log_text(self.run_id, "\n".join(self._events) + "\n", EVENTS_ARTIFACT)

    def close(self) -> None:
        if self._owned and self.run_id is not None:
            self.client.set_terminated(self.run_id)
        self.run_id, self._owned = None, False

    def _name(self, name: str) -> str:
        if name not in self._names:
            self._names[name] = mlflow_name(names.prefixed(name))
        return self._names[name]


def _flatten(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """``("optimizer.groups.0.lr", "0.1")`` pairs of nested dicts (and lists of dicts); other leaves as JSON."""
    if isinstance(value, Mapping) and value:
        items: Any = value.items()
    elif isinstance(value, list) and any(isinstance(item, Mapping) for item in value):
        items = enumerate(value)  # per-group optimizer settings
    else:
        yield key, value if isinstance(value, str) else json.dumps(value)
        return
    for name, item in items:
        yield from _flatten(item, f"{key}.{name}" if key else str(name))
