"""The W&B logger in offline mode, read back from the run's transaction log; and in disabled mode.

An offline run writes no ``wandb-summary.json`` or ``config.yaml`` (those come from syncing): what
it wrote is in ``run-<id>.wandb``, read here record by record.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import cases
import pytest
from watched import NAN_AT, STEPS, assert_failure_is_contained, watched_run

from edgewatch import MissingExtraError
from edgewatch.loggers import make_logger, read_jsonl
from edgewatch.loggers.wandb import EVENT_COLUMNS, STEP_METRIC

wandb = pytest.importorskip("wandb")



def items(updates) -> dict:
    """History rows and config updates as ``{name: value}`` (a table's fields as ``name/field``)."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in updates}


def read_back(run_dir: Path) -> SimpleNamespace:
    """What a finished offline run wrote: history rows, config, metric definitions, alerts."""
    wandb.teardown()  # finish() returns before W&B's service has written the log; this waits for it to exit
    records = cases.wandb_records(run_dir)

    def of(kind: str) -> list:
        return [getattr(record, kind) for record in records if record.WhichOneof("record_type") == kind]

    [run] = of("run")
    return SimpleNamespace(
        rows=[items(history.item) for history in of("history")],
        config=items(run.config.update) | {k: v for c in of("config") for k, v in items(c.update).items()},
        step_metrics={m.name: m.step_metric for m in of("metric") if m.name},
        alerts=[(a.title, a.level) for a in of("alert")],
        files=run_dir / "files",
    )


@pytest.fixture
def wandb_dir(tmp_path, monkeypatch) -> Path:
    """W&B in offline mode writing under tmp_path; the directory its runs go to."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield tmp_path / "wandb"
    assert wandb.run is None  # no run left behind for the next test to reuse
    wandb.teardown()  # W&B reads WANDB_* once per process setup: the next test's variables need a new one


def only_run(wandb_dir: Path) -> Path:
    [run_dir] = wandb_dir.glob("offline-run-*")
    return run_dir


def test_monitor_run_reads_back(tmp_path, wandb_dir):
    monitor = watched_run(tmp_path / "run", ["wandb:edgewatch-tests"])
    wrote = read_back(only_run(wandb_dir))

    metrics = list(read_jsonl(monitor.run_dir / "metrics.jsonl"))
    names = {name for record in metrics for name in record} - {"step", "time"}
    assert not any(name in row for row in wrote.rows for name in names)  # every name prefixed, in a run of its own too
    by_step = {row[STEP_METRIC]: row for row in wrote.rows if "edgewatch/loss" in row}
    assert sorted(by_step) == list(range(1, STEPS + 1))
    for record in metrics:
        logged, row = record.keys() & names, by_step[record["step"]]
        assert {name: row[f"edgewatch/{name}"] for name in logged} == pytest.approx({name: record[name] for name in logged}, nan_ok=True)
    assert math.isnan(by_step[NAN_AT[0]]["edgewatch/loss"])
    ours = [f"edgewatch/{name}" for name in names]
    assert {name: wrote.step_metrics[name] for name in ours} == dict.fromkeys(ours, STEP_METRIC)  # the x-axis of every metric

    meta = json.loads((monitor.run_dir / "meta.json").read_text())
    assert meta.pop("ended") > 0  # written at close, after the W&B config
    assert {k: v for k, v in wrote.config.items() if k != "_wandb"} == meta

    events = list(read_jsonl(monitor.run_dir / "events.jsonl"))
    assert [e["step"] for e in events] == list(NAN_AT)
    last = [row for row in wrote.rows if "edgewatch/events/path" in row][-1]
    table = json.loads((wrote.files / last["edgewatch/events/path"]).read_text())
    assert table["columns"] == EVENT_COLUMNS
    assert table["data"] == [[e["step"], e["kind"], e["severity"], e["message"]] for e in events]
    assert wrote.alerts == [("edgewatch: nonfinite", "ERROR")]  # the second nonfinite came within 10 minutes


def test_an_active_run_is_reused_with_prefixed_names_and_left_open(wandb_dir):
    run = wandb.init(project="user-project", config={"lr": 0.1})
    run.define_metric("loss", summary="min")
    run.log({"loss": 9.0})
    logger = make_logger("wandb")
    logger.start({"model": {"class": "MLP"}})
    logger.log({"loss": 1.0, "curvature/lambda_max": math.inf}, step=5)
    for kind in ("loss_spike", "loss_spike", "grad_spike"):
        logger.log_event({"step": 5, "kind": kind, "severity": "warning", "message": "spike", "values": {}})
    logger.close()
    assert wandb.run is run
    run.log({"loss": 8.0})
    run.finish()

    wrote = read_back(only_run(wandb_dir))
    assert [row["loss"] for row in wrote.rows if "loss" in row] == [9.0, 8.0]
    assert [(row[STEP_METRIC], row["edgewatch/loss"], row["edgewatch/curvature/lambda_max"])
            for row in wrote.rows if "edgewatch/loss" in row] == [(5, 1.0, math.inf)]
    assert wrote.config["lr"] == 0.1 and wrote.config["edgewatch"] == {"model": {"class": "MLP"}}
    ours = ["edgewatch/loss", "edgewatch/curvature/lambda_max", "edgewatch/events"]
    assert wrote.step_metrics == {"loss": "", STEP_METRIC: ""} | dict.fromkeys(ours, STEP_METRIC)  # the user's `loss` untouched
    assert wrote.alerts == [("edgewatch: loss_spike", "WARN"), ("edgewatch: grad_spike", "WARN")]  # one per kind


def test_disabled_mode_logs_nothing_and_raises_nothing(wandb_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = make_logger("wandb")
    logger.start({"model": {"class": "MLP"}})
    logger.log({"loss": math.nan}, step=1)
    logger.log_event({"step": 1, "kind": "nonfinite", "severity": "critical", "message": "loss is nan", "values": {"loss": "nan"}})
    logger.close()
    assert not wandb_dir.exists()


def test_missing_wandb_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingExtraError, match=r"^the W&B logger needs 'wandb', .*pip install 'edgewatch\[wandb\]'$"):
        make_logger("wandb")


def test_a_failing_log_is_dropped_and_the_run_directory_keeps_every_step(tmp_path, wandb_dir, monkeypatch):
    def unreachable(self, *args, **kwargs):
        raise wandb.Error("the W&B service is unreachable")

    monkeypatch.setattr(wandb.Run, "log", unreachable)
    assert_failure_is_contained(tmp_path / "run", "wandb", "wandb")
