"""The README's Python examples run as written, in order, as one session would."""

from __future__ import annotations

import re
from pathlib import Path

from edgewatch.loggers import read_jsonl

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write run directories and trainer outputs where they run
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) >= 2, "the README lost its Python examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    kinds = [event.kind for event in namespace["monitor"].events]
    assert "progressive_sharpening" in kinds and "eos_reached" in kinds
    assert namespace["top"].converged
    assert namespace["top"].eigenvalues[0] >= namespace["top"].eigenvalues[-1]
    assert namespace["bottom"].eigenvalues[0] < 0
    assert namespace["info"].threshold == 38 / 1e-3
    assert namespace["lam"] > 0
    written = [record["step"] for record in read_jsonl(tmp_path / "runs" / "digits-gd" / "metrics.jsonl")]
    # every curvature step, and as many cheap-metric steps as the budget allowed (all, on a slow enough machine)
    assert written == sorted(set(written)) and set(range(25, 301, 25)) <= set(written) <= set(range(1, 301))
    assert namespace["result"].png.stat().st_size > 10_000 and namespace["result"].summary["steps"] == 300
    assert namespace["watch"].monitor.step_count == namespace["trainer"].global_step == 60
    assert namespace["watch"].monitor.run_dir.parent == tmp_path / "edgewatch_runs"
    assert (namespace["watch"].monitor.run_dir / "metrics.jsonl").exists()
    assert namespace["hf_watch"].monitor.run_dir.parent.resolve() == (tmp_path / "hf_out" / "edgewatch_runs").resolve()
    steps = [record["step"] for record in read_jsonl(namespace["hf_watch"].monitor.run_dir / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and {10, 20, 30} <= set(steps) <= set(range(1, 31))
