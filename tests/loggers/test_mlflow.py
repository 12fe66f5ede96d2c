"""The MLflow logger on a local file store, read back with ``MlflowClient``."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
from watched import NAN_AT, assert_failure_is_contained, watched_run

from edgewatch import MissingExtraError
from edgewatch.loggers import make_logger, read_jsonl
from edgewatch.loggers.mlflow import EVENTS_ARTIFACT, MlflowLogger, mlflow_name

mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def file_store(tmp_path, monkeypatch) -> str:
    """A file store in tmp_path, MLflow's environment as a user without settings has it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # restored after, whatever the logger sets
    return (tmp_path / "mlruns").as_uri()


def history(client, run_id: str, name: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, name)}


def events_artifact(run) -> list[dict]:
    return [json.loads(line) for line in mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{EVENTS_ARTIFACT}").splitlines()]


def test_monitor_run_reads_back(tmp_path, file_store):
    monitor = watched_run(tmp_path / "run", [f"mlflow:{file_store}"])
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"
    client = mlflow.MlflowClient(file_store)
    [run] = client.search_runs([client.get_experiment_by_name("edgewatch").experiment_id])
    assert run.info.status == "FINISHED"

    metrics = list(read_jsonl(monitor.run_dir / "metrics.jsonl"))
    names = {name for record in metrics for name in record} - {"step", "time"}
    assert set(run.data.metrics) == {mlflow_name(f"edgewatch/{name}") for name in names}  # prefixed, as in W&B and TensorBoard
    for name in names:
        expected = {record["step"]: record[name] for record in metrics if name in record}
        assert history(client, run.info.run_id, mlflow_name(f"edgewatch/{name}")) == pytest.approx(expected, nan_ok=True), name
    assert math.isnan(history(client, run.info.run_id, "edgewatch.loss")[NAN_AT[0]])  # non-finite values are logged
    assert {"edgewatch.grad.norm", "edgewatch.grad.norm.0", "edgewatch.lr"} <= set(run.data.metrics)  # a metric and its parts

    meta = json.loads((monitor.run_dir / "meta.json").read_text())
    params = run.data.params
    assert params["edgewatch.model.class"] == "Sequential"
    assert params["edgewatch.model.parameters"] == str(meta["model"]["parameters"])
    assert params["edgewatch.optimizer.groups.0.lr"] == "0.1" and json.loads(params["edgewatch.detectors"]) == meta["detectors"]

    events = [{k: v for k, v in e.items() if k != "time"} for e in read_jsonl(monitor.run_dir / "events.jsonl")]
    assert [e["step"] for e in events] == list(NAN_AT)
    assert events_artifact(run) == [{**e, "values": {"loss": "nan"}} for e in events]  # as written, before read_jsonl


def test_an_active_run_is_reused_with_prefixed_names_and_left_open(file_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", file_store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    with mlflow.start_run() as run:
        mlflow.log_param("lr", 0.1)
        mlflow.log_metric("loss", 9.0, step=5)
        for model in ("MLP", "Other"):  # a second Monitor in the same run, as after a resume
            logger = make_logger("mlflow")
            logger.start({"model": {"class": model}})
            logger.log({"loss": 1.0, "attn/max_logit[0]": math.inf}, step=5)
            logger.log_event({"step": 5, "kind": "loss_spike", "severity": "warning", "message": "spike", "values": {}})
            logger.close()
        assert mlflow.active_run().info.run_id == run.info.run_id
    client = mlflow.MlflowClient()
    data = client.get_run(run.info.run_id).data
    assert data.params == {"lr": "0.1", "edgewatch.model.class": "MLP"}  # the first value of a param stays
    assert history(client, run.info.run_id, "loss") == {5: 9.0}
    assert history(client, run.info.run_id, "edgewatch.loss") == {5: 1.0}
    assert history(client, run.info.run_id, "edgewatch.attn.max_logit_0_") == {5: math.inf}
    assert [e["kind"] for e in events_artifact(client.get_run(run.info.run_id))] == ["loss_spike"]


def test_default_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert MlflowLogger().tracking_uri == (Path(os.environ["EDGEWATCH_DIR"]) / "mlruns").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///somewhere.db")
    assert MlflowLogger().tracking_uri == "sqlite:///somewhere.db"


def test_missing_mlflow_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(MissingExtraError, match=r"^the MLflow logger needs 'mlflow', .*pip install 'edgewatch\[mlflow\]'$"):
        make_logger("mlflow")


def test_a_failing_store_is_dropped_and_the_run_directory_keeps_every_step(tmp_path, file_store, monkeypatch):
    log_batch = mlflow.MlflowClient.log_batch

    def unavailable(self, run_id, metrics=(), **kwargs):
        if metrics:
            raise mlflow.exceptions.MlflowException("the tracking store is unavailable")
        return log_batch(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", unavailable)
    assert_failure_is_contained(tmp_path / "run", f"mlflow:{file_store}", "mlflow")
