"""Quick smoke run of the performance benchmarks (the real run is `make bench-perf`, results in benchmarks/PERFORMANCE.md).

Every script runs its whole code path on tiny workloads: the peers that are installed (make test
installs them all), HVP costs, warm starts, the Monitor's overhead, the Monitor at its defaults
(overhead.py: bare against watched, streamed points against tight full solves), and finite-difference
HVPs (finite_difference.py: accuracy against double backward, cost and memory on a transformer). The numbers are not checked
here, only that each script ran, printed its tables and wrote its JSON, and that a smoke run leaves
PERFORMANCE.md alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
PERFORMANCE_MD = ROOT / "benchmarks" / "PERFORMANCE.md"


def test_perf_benchmarks_smoke_run(tmp_path):
    before = PERFORMANCE_MD.stat().st_mtime_ns if PERFORMANCE_MD.exists() else None
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "perf" / "run_all.py"), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("peers", "costs", "overhead", "finite_difference"):
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["benchmark"] == name and data["smoke"] is True and data["results"]
        assert f"== {name}: " in result.stdout
    assert "edgewatch" in result.stdout and "Monitor overhead" in result.stdout
    _check_overhead(json.loads((tmp_path / "overhead.json").read_text()), result.stdout)
    _check_finite_difference(json.loads((tmp_path / "finite_difference.json").read_text()), result.stdout)
    assert (PERFORMANCE_MD.stat().st_mtime_ns if PERFORMANCE_MD.exists() else None) == before


def _check_overhead(data, stdout):
    """overhead.py's tables were printed and its JSON has every part for every workload (numbers unchecked)."""
    assert "Monitor at its defaults: overhead" in stdout and "Streamed λ1 points" in stdout and "λ1 points the same budget" in stdout
    workloads = ("transformer", "cnn_bn", "mlp")
    by_part = {}
    for record in data["results"]:
        by_part.setdefault(record["part"], {})[record.get("workload")] = record
    assert set(by_part["overhead"]) == set(by_part["streaming_accuracy"]) == set(by_part["points_per_budget"]) == set(workloads)
    for name in workloads:
        timing = by_part["overhead"][name]
        assert set(timing["ratio"]) == {"watched", "watched+jsonl"} and timing["step_ms_bare"] > 0
        assert all(timing["identical"].values())  # watching does not change training
        for key in ("full_solves", "streamed_points", "early_points_worst", "max_gap_worst", "monitor_overhead", "final_loss"):
            assert key in timing
        assert len(timing["runs"]["bare"]) == len(timing["runs"]["watched"]) == data["rounds"]
        accuracy = by_part["streaming_accuracy"][name]
        kinds = {"lambda", "precond"} if name in ("transformer", "mlp") else {"lambda"}
        assert set(accuracy["summary"]) == kinds and accuracy["same_as_bare"]
        for summary in accuracy["summary"].values():
            assert {"compared", "median_error", "max_error", "within_residual"} <= set(summary)
        assert {"streaming_points", "ratio", "met"} <= set(by_part["points_per_budget"][name])


def _check_finite_difference(data, stdout):
    """finite_difference.py printed both tables; its JSON has every model's accuracy runs and every
    method's cost at two sequence lengths (numbers unchecked)."""
    assert "Finite-difference accuracy" in stdout and "Finite-difference cost on the transformer" in stdout
    accuracy = {r["model"]: r for r in data["results"] if r["part"] == "accuracy"}
    assert set(accuracy) == {"mlp", "cnn_bn_relu", "cnn_bn_gelu", "transformer"}
    for record in accuracy.values():
        assert record["truth"]["eigenvalues"]
        for run in ("fd_float32", "fd_bfloat16", "fd_float64", "db_float32"):
            assert "error" in record[run] or {"lambda1_error", "top5_max_error", "fd_error", "converged"} <= set(record[run])
        assert "met" in record["fd_float32"]  # the float32 target is judged on every model
    cost = [r for r in data["results"] if r["part"] == "cost"]
    assert {(r["method"], r["seq"]) for r in cost} == {(m, t) for m in ("finite_difference", "double_backward")
                                                       for t in {r["seq"] for r in cost}}
    assert len({r["seq"] for r in cost}) == 2
    for record in cost:
        assert record["seconds"]["hvp"] > 0 and "solve" in record["peak_mib"] and record["kernels_hvp"]


def test_markdown_is_rebuilt_from_the_recorded_output_with_the_current_docstrings(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks" / "perf"))
    try:
        import run_all
    finally:
        sys.path.pop(0)
    record, markdown = tmp_path / "run_all.json", tmp_path / "PERFORMANCE.md"
    monkeypatch.setattr(run_all, "RUN_RECORD", record)
    monkeypatch.setattr(run_all, "PERFORMANCE_MD", markdown)
    assert run_all.main(["--markdown"]) == 1 and not markdown.exists()  # nothing recorded yet
    record.write_text(json.dumps({"machine": "a machine; commit abc1234, 2026-12-01",
                                  "outputs": {"peers": "peers table | 1.0\n", "costs": "costs table\n"}}))
    assert run_all.main(["--markdown"]) == 0
    text = markdown.read_text()
    assert "Machine: a machine; commit abc1234, 2026-12-01." in text
    assert "```\npeers table | 1.0\n```" in text and "```\ncosts table\n```" in text
    assert "Time to accuracy for the top Hessian eigenvalues" in text  # peers.py's docstring, as it is now
