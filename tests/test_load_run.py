"""`ew.load_run`: a run a Monitor wrote, as metrics per step, events, meta, a DataFrame and a notebook table."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import cases
import numpy as np
import pytest
import torch

import edgewatch as ew
from edgewatch.run import RunDirError, latest_run_dir

STEPS = 12


def watched_run(path: Path, steps: int) -> Path:
    """Full-batch SGD at a high learning rate on the digits MLP, curvature every 3 steps."""
    model, batch = cases.mlp(hidden=8), cases.digits(60)
    optimizer = torch.optim.SGD(model.parameters(), lr=2.0)
    monitor = ew.Monitor(model, optimizer, cases.cross_entropy, probe=[batch], curvature=3, every=1,
                         run_dir=path).attach()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = cases.cross_entropy(model, batch)
        monitor.observe(loss)
        loss.backward()
        optimizer.step()
    monitor.close()
    return path


def records(path: Path) -> list[dict]:
    """The lines of a .jsonl file, read without edgewatch ("nan"/"inf" strings go through float)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_run(path: Path, started: str | None, steps: int = 2) -> Path:
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps({"started": started} if started else {}))
    (path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(steps)))
    return path


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    """Two real runs: ``b`` first, then ``a`` (so the latest is not the last by name)."""
    root = tmp_path_factory.mktemp("load_run") / "runs"
    watched_run(root / "b", STEPS)
    watched_run(root / "a", 2)
    return root


def test_metrics_events_and_meta_are_the_files(runs_root):
    run = ew.load_run(runs_root / "b")
    metrics = records(run.path / "metrics.jsonl")
    lam = [(r["step"], float(r["curvature/lambda_max"])) for r in metrics if "curvature/lambda_max" in r]
    assert [step for step, _ in lam] == [3, 6, 9, 12]
    steps, values = run.series("curvature/lambda_max")
    assert steps.tolist() == [step for step, _ in lam] and values.tolist() == [value for _, value in lam]
    assert run.steps.tolist() == sorted({r["step"] for r in metrics})
    assert [(e["step"], e["kind"]) for e in run.events] == [(e["step"], e["kind"]) for e in records(run.path / "events.jsonl")]
    assert run.meta["optimizer"]["class"] == "SGD" and run.meta["probe"]["batches"] == 1


def test_to_pandas_is_indexed_by_step_with_one_column_per_metric(runs_root):
    run = ew.load_run(runs_root / "b")
    frame = run.to_pandas()
    assert frame.index.name == "step" and frame.index.tolist() == run.steps.tolist()
    assert list(frame.columns) == list(run.metrics)
    assert "time" not in frame.columns and "step" not in frame.columns
    lam = frame["curvature/lambda_max"]
    assert lam.dropna().index.tolist() == [3, 6, 9, 12]  # NaN on steps without curvature
    assert lam.loc[6] == run.series("curvature/lambda_max").values[1]
    loss = run.series("loss")
    assert np.array_equal(frame["loss"].dropna().to_numpy(), loss.values[np.isfinite(loss.values)])


def test_to_pandas_without_pandas_names_the_install(runs_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ew.MissingExtraError, match=r"^Run.to_pandas\(\) needs 'pandas', which is not installed: pip install 'edgewatch\[pandas\]'$"):
        ew.load_run(runs_root / "b").to_pandas()


def test_the_reprs_show_the_numbers(runs_root):
    run = ew.load_run(runs_root / "b")
    lam = [(r["step"], float(r["curvature/lambda_max"])) for r in records(run.path / "metrics.jsonl") if "curvature/lambda_max" in r]
    top = max(lam, key=lambda point: point[1])
    threshold = [float(r["curvature/threshold"]) for r in records(run.path / "metrics.jsonl") if "curvature/threshold" in r][-1]
    page, text = run._repr_html_(), repr(run)
    for shown in (page, text):
        assert f"{lam[-1][1]:.4g} (step {lam[-1][0]})" in shown
        assert f"{top[1]:.4g} (step {top[0]})" in shown
        assert "threshold" in shown and f"{threshold:.4g}" in shown
        assert f"1–{STEPS} ({STEPS} logged)" in shown
        for kind in {event["kind"] for event in run.events}:
            assert f"{kind} ×{sum(e['kind'] == kind for e in run.events)}" in shown
    assert page.startswith("<table") and "\n" not in text


def test_html_escapes_what_the_files_say(tmp_path):
    path = write_run(tmp_path / "hostile", "2026-12-07T01:00:00+0000")
    (path / "events.jsonl").write_text(json.dumps({"step": 1, "kind": "<script>x</script>", "message": "m"}) + "\n")
    page = ew.load_run(path)._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt; ×1" in page
    assert "λ<sub>1</sub> last</th><td style='text-align:left'>—" in page  # no curvature logged


def test_a_runs_root_gives_its_latest_run(runs_root):
    assert ew.load_run(runs_root).path == runs_root / "a"
    assert ew.load_run(str(runs_root)).name == "a"


def test_latest_is_by_start_time_then_directory_time(tmp_path):
    early = write_run(tmp_path / "z-early", "2026-12-07T01:00:00+0000")
    late = write_run(tmp_path / "a-late", "2026-12-07T02:00:00+0100")  # 01:00 UTC, the same instant
    os.utime(early, (1_000, 1_000))
    assert latest_run_dir(tmp_path) == late  # a tie on start: the directory modified last
    write_run(tmp_path / "m-later", "2026-12-07T01:00:01+0000")
    assert latest_run_dir(tmp_path).name == "m-later"
    unknown = write_run(tmp_path / "no-meta", None)
    os.utime(unknown, (4_102_444_800, 4_102_444_800))  # 2100: no start time, so its directory's time
    assert latest_run_dir(tmp_path) == unknown
    crashed = tmp_path / "crashed"  # meta.json only: started, never logged a step
    crashed.mkdir()
    (crashed / "meta.json").write_text(json.dumps({"started": "2030-01-01T00:00:00+0000"}))
    assert latest_run_dir(tmp_path) == unknown


def test_what_is_not_a_run_is_refused_in_one_line(tmp_path):
    with pytest.raises(RunDirError, match="no such run directory"):
        ew.load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match=r"is not an edgewatch run directory .* and holds none; .* e.g. runs/") as refused:
        ew.load_run(tmp_path / "empty")
    assert "\n" not in str(refused.value) and isinstance(refused.value, ValueError)


def test_a_run_that_is_still_writing_is_read_as_far_as_it_is_whole(tmp_path):
    path = write_run(tmp_path / "live", "2026-12-07T01:00:00+0000", steps=3)
    with (path / "metrics.jsonl").open("a") as file:
        file.write('{"step": 3, "loss": 0.')
    run = ew.load_run(path)
    assert run.steps.tolist() == [0, 1, 2] and math.isclose(run.series("loss").values[-1], 1.0)


def test_a_corrupt_line_is_skipped_and_said_so_in_the_notes(tmp_path):
    """A line that is not JSON (a disk that filled up mid-write) costs that record only, and the
    run's notes say which line: the reader once swallowed it without a word."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.0}\n')
    loaded = ew.load_run(run)
    assert list(loaded.metrics["loss"].steps) == [1, 3]
    assert any("metrics.jsonl: line 2 is not valid JSON" in note for note in loaded.notes), loaded.notes
