"""Smoke test of the main demo (`make demo`): examples/warmup_normalization.py with a few steps per run.

Checks what a user of the demo relies on: one progress line per setting, the three JSONL run
directories with metrics and events, the comparison table, and the figure's path printed last;
and, at step 1 already, the stability ratios that tell the three settings apart.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgewatch.loggers import read_jsonl

DEMO = Path(__file__).parents[1] / "examples" / "warmup_normalization.py"
RUNS = ("no-warmup", "warmup", "batchnorm")
LABELS = ("no warmup, no norm", "warmup 200 steps", "BatchNorm, no warmup")
STEPS = 12


def run_demo(out: Path) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(DEMO), "--out", str(out), "--steps", str(STEPS), "--seed", "0"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def test_demo_runs_three_settings_and_compares_them(tmp_path):
    out = tmp_path / "demo"
    lines = run_demo(out)

    progress = [line for line in lines if line.startswith("[")]
    assert [line[:5] for line in progress] == ["[1/3]", "[2/3]", "[3/3]"]
    for line, label in zip(progress, LABELS):
        assert label in line and "max r over steps" in line and "first eos_reached" in line
    # Without warmup or normalization the run diverges at once and the Monitor stops it.
    assert "stopped at step" in progress[0] and "(nonfinite)" in progress[0]
    assert f"trained {STEPS} steps" in progress[1] and f"trained {STEPS} steps" in progress[2]

    first_ratio, kinds = {}, {}
    for name in RUNS:
        run = out / name
        assert (run / "meta.json").is_file()
        metrics = list(read_jsonl(run / "metrics.jsonl"))
        assert metrics and metrics[0]["step"] == 1 and "loss" in metrics[0]
        first_ratio[name] = next(m["curvature/stability_ratio"] for m in metrics if "curvature/stability_ratio" in m)
        events = list(read_jsonl(run / "events.jsonl")) if (run / "events.jsonl").exists() else []
        kinds[name] = {event["kind"] for event in events}
    # Step 1 (the first probe): far past the edge, far below it, just above it.
    assert first_ratio["no-warmup"] > 10
    assert first_ratio["warmup"] < 0.2
    assert 1 < first_ratio["batchnorm"] < 5
    assert {"eos_reached", "loss_spike", "nonfinite"} <= kinds["no-warmup"]
    assert "eos_reached" not in kinds["warmup"]  # reached around step 25, after these few steps
    assert "eos_reached" in kinds["batchnorm"] and "nonfinite" not in kinds["batchnorm"]

    header = next(index for index, line in enumerate(lines) if line.startswith("run "))
    for column in ("steps", "first eos_reached", "max r", "final loss", "events"):
        assert column in lines[header]
    rows = lines[header + 2: header + 5]
    assert [row.startswith(label) for row, label in zip(rows, LABELS)] == [True, True, True]

    if importlib.util.find_spec("matplotlib") is not None:
        figure = out / "compare.png"
        assert lines[-1] == f"figure: {figure}"
        assert figure.stat().st_size > 0 and figure.with_suffix(".html").is_file()
    else:
        assert any(line.startswith("no figure:") for line in lines)


def load_demo():
    """The demo script as a module, to call its functions in this process."""
    spec = importlib.util.spec_from_file_location("warmup_normalization_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_demo_starts_afresh_in_an_existing_output_directory(tmp_path, capsys):
    """A second demo into the same --out replaces its runs instead of resuming (appending to) them."""
    demo = load_demo()
    out = tmp_path / "demo"
    with torch.random.fork_rng():
        for _ in range(2):
            assert demo.main(["--out", str(out), "--steps", "3"]) == 0
    assert capsys.readouterr().out.count("[3/3] BatchNorm, no warmup") == 2
    for name in RUNS:
        assert [m["step"] for m in read_jsonl(out / name / "metrics.jsonl")] == [1, 2, 3]
    stranger = out / "warmup" / "notes.txt"
    stranger.write_text("not a run file")
    with pytest.raises(SystemExit, match="not a run's"):
        demo.main(["--out", str(out), "--steps", "3"])
    assert stranger.exists()
