"""Quick smoke runs of the benchmark scripts (the real runs are `make bench-perf`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_hvp_cost_benchmark_runs_and_writes_json():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "hvp_cost.py"), "--repeats", "1"],
        capture_output=True, text=True, timeout=600, check=True,
    )
    assert "mlp_digits" in result.stdout and "causal_transformer" in result.stdout
    data = json.loads((ROOT / "benchmarks" / "results" / "hvp_cost.json").read_text())
    assert {row["workload"] for row in data["results"]} == {"mlp_digits", "cnn_bn_digits", "causal_transformer"}
    for row in data["results"]:
        assert row["auto_choice"] in ("double_backward", "forward_over_reverse")
        assert all(ratio > 0 for ratio in row["hvp_per_gradient"].values())
