"""`edgewatch report`: files, numbers checked against the JSONL read independently, escaping, errors."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import cases
import pytest
import torch

import edgewatch
from edgewatch.cli.__main__ import main
from edgewatch.cli.report import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert(1)</script>"


def monitored_run(path: Path) -> Path:
    """A real run directory: digits MLP, full-batch SGD lr 0.8 for 40 steps (r ≈ 1 at step 10), curvature every 5."""
    model, batch = cases.mlp(hidden=16), cases.digits(120)
    opt = torch.optim.SGD(model.parameters(), lr=0.8)
    monitor = edgewatch.Monitor(model, opt, cases.cross_entropy, probe=[batch], curvature=5, run_dir=path).attach()
    for _ in range(40):
        opt.zero_grad()
        loss = cases.cross_entropy(model, batch)
        monitor.observe(loss)
        loss.backward()
        opt.step()
    monitor.close()
    return path


def write_run(path: Path, metrics: list[dict], events: list[dict] = (), meta: dict | None = None, torn: str = "") -> Path:
    """A hand-written run directory; ``torn`` is appended to both .jsonl files without a newline."""
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps(meta or {"optimizer": {"class": "SGD", "groups": [{"lr": 0.1}]}}))
    for name, records in (("metrics", metrics), ("events", events)):
        (path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + torn)
    return path


def records(path: Path) -> list[dict]:
    """Complete lines of a .jsonl file, read without edgewatch ("nan"/"inf" strings go through float)."""
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def printed_table(out: str) -> dict[str, str]:
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines() if re.search(r"\S\s{2,}\S", line))


def hostile_run(path: Path) -> Path:
    metrics = [{"step": s, "time": 0.0, "loss": 1.0 / s, "weird<metric": 1.0} for s in range(1, 8)]
    metrics[3]["loss"] = "nan"
    metrics[-1]["loss"] = "inf"
    events = [{"step": 3, "kind": HOSTILE + " $\\frac$", "severity": "critical", "message": f"boom {HOSTILE} & co",
               "values": {"x<y": "nan"}, "time": 0.0},
              {"step": 5, "kind": "loss_spike", "severity": "warning", "message": "ok", "values": {}, "time": 0.0}]
    meta = {"model": {"class": "<img src=x onerror=alert(1)>"}, "optimizer": {"class": "SGD", "groups": [{"lr": 0.1}]}}
    return write_run(path, metrics, events, meta, torn='{"step": 8, "loss": 0.0')


@pytest.fixture(scope="module")
def sgd_run(tmp_path_factory) -> Path:
    return monitored_run(tmp_path_factory.mktemp("report") / "sgd")


def test_report_numbers_match_the_jsonl(sgd_run, capsys):
    assert main(["report", str(sgd_run)]) == 0
    out = capsys.readouterr().out
    metrics, events = records(sgd_run / "metrics.jsonl"), records(sgd_run / "events.jsonl")
    ratios = [float(r["curvature/stability_ratio"]) for r in metrics if "curvature/stability_ratio" in r]
    first_eos = next(e["step"] for e in events if e["kind"] == "eos_reached")
    table = printed_table(out)
    assert table["steps"] == "40" and len(ratios) == 8
    assert table["first eos_reached"] == str(first_eos) == "10"
    assert float(table["max r = ηλ/c"]) == pytest.approx(max(ratios), rel=1e-3)
    assert float(table["final loss"]) == pytest.approx(float(metrics[-1]["loss"]), rel=1e-3)
    assert float(table["max λ_1"]) == pytest.approx(max(r["curvature/lambda_max"] for r in metrics if "curvature/lambda_max" in r), rel=1e-3)
    for name in ("report.png", "report.html"):
        assert f"wrote {sgd_run / name}" in out
    png = (sgd_run / "report.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000
    page = (sgd_run / "report.html").read_text()
    assert "data:image/png;base64," in page and "curvature/stability_ratio" in page and "eos_reached" in page


def test_report_api_returns_paths_and_summary(sgd_run, tmp_path):
    result = report(sgd_run, out=tmp_path / "figures" / "run.png")
    assert result.png == tmp_path / "figures" / "run.png" and result.html == tmp_path / "figures" / "run.html"
    assert result.png.read_bytes().startswith(PNG_MAGIC) and result.html.exists()
    metrics, events = records(sgd_run / "metrics.jsonl"), records(sgd_run / "events.jsonl")
    summary = result.summary
    assert summary["max_ratio"] == max(r["curvature/stability_ratio"] for r in metrics if "curvature/stability_ratio" in r)
    assert summary["final_loss"] == metrics[-1]["loss"] and summary["steps"] == 40
    assert summary["events"] == len(events) and sum(summary["event_kinds"].values()) == len(events)
    assert summary["max_precond_lambda"] == summary["max_lambda"]  # SGD: nothing to precondition


def test_report_escapes_run_strings_and_tolerates_nans_torn_lines_and_no_curvature(tmp_path, capsys):
    run = hostile_run(tmp_path / "evil<run>")
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    table = printed_table(capsys.readouterr().out)
    assert table["steps"] == "7"  # the torn step 8 is not read
    assert table["final loss"] == "inf" and table["max λ_1"] == "-" and table["first eos_reached"] == "-"
    assert (tmp_path / "out" / "report.png").read_bytes().startswith(PNG_MAGIC)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "boom &lt;script&gt;" in page
    assert "weird&lt;metric" in page and "x&lt;y=nan" in page and "evil&lt;run&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    for raw in ("<script", "<img src=x", "weird<metric", "evil<run>"):
        assert raw not in page


@pytest.mark.parametrize("make", ["missing", "file", "other_dir", "no_metrics"])
def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys, make):
    path = tmp_path / "run"
    if make == "file":
        path.write_text("hello")
    elif make == "other_dir":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    elif make == "no_metrics":
        write_run(path, [], torn='{"step": 1, "loss"')
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgewatch report: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert {"missing": "no such run directory", "file": "not an edgewatch run directory",
            "other_dir": "not an edgewatch run directory", "no_metrics": "holds no metrics"}[make] in err


def test_missing_matplotlib_names_the_plot_extra(sgd_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    assert main(["report", str(sgd_run), "--out", str(tmp_path)]) == 2
    assert "pip install 'edgewatch[plot]'" in capsys.readouterr().err


def test_help_documents_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--help"])
    assert exit_.value.code == 0
    help_ = capsys.readouterr().out
    assert "RUN_DIR" in help_ and "--out" in help_ and "38/η" in help_


def test_python_dash_m_runs_the_command(sgd_run, tmp_path):
    result = subprocess.run([sys.executable, "-m", "edgewatch.cli", "report", str(sgd_run), "--out", str(tmp_path / "r.png")],
                            check=False, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "first eos_reached" in result.stdout and (tmp_path / "r.png").stat().st_size > 20_000
    assert math.isfinite(float(printed_table(result.stdout)["max r = ηλ/c"]))
