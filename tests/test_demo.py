"""Smoke test of the shortest example, examples/digits_gd_sharpness.py (a few steps instead of 1500)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).parents[1] / "examples" / "digits_gd_sharpness.py"


def test_demo_runs_and_reports_sharpness_against_the_threshold():
    result = subprocess.run(
        [sys.executable, str(DEMO), "--steps", "40", "--every", "20", "--lr", "0.25"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    lines = result.stdout.splitlines()
    assert "2/η = 8.000" in lines[0]
    rows = [line.split() for line in lines if line.strip() and line.split()[0].isdigit()]
    assert [int(row[0]) for row in rows] == [0, 20, 40]
    for row in rows:
        sharpness, threshold, ratio = float(row[2]), float(row[3]), float(row[4])
        assert sharpness > 0 and threshold == 8.0
        assert abs(ratio - sharpness / threshold) < 1e-3
