"""The TensorBoard logger, read back from its event file."""

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


def same(a: float, b: float) -> bool:
    return a == pytest.approx(b, rel=1e-6, nan_ok=True)  # TensorBoard keeps float32


def test_monitor_run_reads_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monitor = watched_run(tmp_path / "run", [f"tensorboard:{tmp_path / 'tb'}"])
    accumulator = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0}).Reload()  # 0: keep all

    metrics = list(read_jsonl(monitor.run_dir / "metrics.jsonl"))
    names = {name for record in metrics for name in record} - {"step", "time"}
    assert set(accumulator.Tags()["scalars"]) == {f"edgewatch/{name}" for name in names}  # every name prefixed, as in W&B and MLflow
    scalars = {name: {e.step: e.value for e in accumulator.Scalars(f"edgewatch/{name}")} for name in names}
    for record in metrics:
        for name in names & record.keys():
            assert same(scalars[name][record["step"]], record[name]), (name, record["step"])
    assert scalars["curvature/lambda_max"].keys() == {5, 10, 15, 20}
    assert math.isnan(scalars["loss"][NAN_AT[0]])

    def texts(tag: str) -> list[tuple[int, str]]:
        return [(e.step, e.tensor_proto.string_val[0].decode()) for e in accumulator.Tensors(f"{tag}/text_summary")]

    events = list(read_jsonl(monitor.run_dir / "events.jsonl"))
    assert [e["kind"] for e in events] == ["nonfinite", "nonfinite"]
    assert texts("edgewatch/events/nonfinite") == [(e["step"], f"**critical** {e['message']}  \nloss = nan") for e in events]
    [(step, meta)] = texts("edgewatch/meta")
    on_disk = json.loads((monitor.run_dir / "meta.json").read_text())
    assert on_disk.pop("ended") > 0  # written at close, after the TensorBoard text
    assert step == 0 and json.loads(meta) == on_disk


def test_default_log_dir_is_beside_the_run_directories():
    assert make_logger("tensorboard").log_dir.parent == Path(os.environ["EDGEWATCH_DIR"]) / "tensorboard"


def test_missing_tensorboard_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what an absent package looks like to import
    with pytest.raises(MissingExtraError, match=r"^the TensorBoard logger needs 'tensorboard', .*pip install 'edgewatch\[tensorboard\]'$"):
        make_logger("tensorboard")


def test_a_failing_writer_is_dropped_and_the_run_directory_keeps_every_step(tmp_path, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", full_disk)
    assert_failure_is_contained(tmp_path / "run", f"tensorboard:{tmp_path / 'tb'}", "tensorboard")
