"""Quick smoke runs of the science benchmarks (the real runs are `make bench-science`, results in benchmarks/RESULTS.md).

Each benchmark runs its whole code path for a few steps: it must train with the Monitor, write its
JSON findings with every column RESULTS.md shows, and draw its figure. Whether the phenomenon
reproduces is the full run's business, not this test's.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCIENCE = Path(__file__).parents[1] / "benchmarks" / "science"


def _load_run_all():
    spec = importlib.util.spec_from_file_location("science_run_all", SCIENCE / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_all = _load_run_all()

COLUMNS = {"phenomenon", "paper", "setting", "criterion", "measured", "passed"}


@pytest.mark.parametrize("name", run_all.BENCHMARKS)
def test_benchmark_smoke_run_writes_findings_and_figure(name, tmp_path):
    pytest.importorskip("matplotlib", reason="the benchmarks draw figures: the [plot] extra")
    pytest.importorskip("sklearn", reason="the benchmarks train on scikit-learn's digits: the [dev] extra")
    result = subprocess.run([sys.executable, str(SCIENCE / f"{name}.py"), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert data["benchmark"] == name and data["smoke"] is True
    assert data["findings"] and all(COLUMNS <= set(row) for row in data["findings"])
    assert all(isinstance(row["passed"], bool) and row["measured"] for row in data["findings"])
    assert (tmp_path / data["figure"]).stat().st_size > 10_000
    assert any((tmp_path / "runs").rglob("metrics.jsonl"))  # trained with the Monitor's run directory


def test_results_markdown_lists_every_finding_and_escapes_pipes():
    results = [{"benchmark": "b", "seconds": 12.3, "notes": "", "figure": "b.png", "smoke": False, "findings": [
        {"phenomenon": "EoS", "paper": "Cohen et al. 2021", "setting": "a | b", "criterion": "r ≈ 1",
         "measured": "0.98", "passed": True},
        {"phenomenon": "EoS", "paper": "Cohen et al. 2021", "setting": "c", "criterion": "r ≈ 1",
         "measured": "1.5", "passed": False}]}]
    text = run_all.results_markdown(results, {"cpus": 2, "torch": "2.13.0", "python": "3.11", "platform": "x",
                                              "edgewatch": "0.1"})
    assert "1 of 2 criteria pass" in text
    assert "| EoS | Cohen et al. 2021 | a \\| b | r ≈ 1 | 0.98 | pass |" in text
    assert "| c | r ≈ 1 | 1.5 | FAIL |" in text and "![b](figures/b.png)" in text
    assert "commit ?" in text  # results without a commit are marked so
