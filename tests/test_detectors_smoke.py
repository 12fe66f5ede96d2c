"""Quick smoke run of the detector benchmark (the real run is `make bench-detectors`, results in benchmarks/DETECTORS.md).

Every run of the labelled corpus trains for a dozen steps with the Monitor: the script must score
them, print its per-detector table and write its JSON, and leave DETECTORS.md alone. Whether the
detectors find the labelled events is the full run's business, not this test's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DETECTORS_MD = ROOT / "benchmarks" / "DETECTORS.md"


def test_detector_benchmark_smoke_run(tmp_path):
    pytest.importorskip("sklearn", reason="the corpus trains on scikit-learn's digits: the [dev] extra")
    before = DETECTORS_MD.stat().st_mtime_ns if DETECTORS_MD.exists() else None
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "detectors" / "run.py"), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "detectors.json").read_text())
    assert data["smoke"] is True and len(data["runs"]) >= 12
    assert sum(run["healthy"] for run in data["runs"]) >= 6
    assert {"eos_reached", "catapult", "progressive_sharpening", "output_logit_divergence"} <= set(data["table"])
    assert all({"tp", "fp", "missed", "lags"} <= set(row) for row in data["table"].values())
    assert "detector (event kind)" in result.stdout and "healthy runs:" in result.stdout
    assert "| `catapult` |" in (tmp_path / "DETECTORS.md").read_text()
    assert (DETECTORS_MD.stat().st_mtime_ns if DETECTORS_MD.exists() else None) == before
