"""The README's DDP script runs as written on 2 ranks, as ``torchrun --nproc_per_node=2`` would run it.

(``tests/test_readme.py`` runs the README's blocks in one process, where this one only defines
``main``.)
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

from edgewatch.loggers import read_jsonl
from spawning import run_ranks

README = Path(__file__).parents[2] / "README.md"


def script() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    (ddp,) = [block for block in blocks if "init_process_group" in block]
    return ddp


def _worker(rank: int, world_size: int, source: str, workdir: str) -> None:
    os.chdir(workdir)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(source, str(README), "exec"), {"__name__": "__main__"})  # noqa: S102 - our own README
    Path(f"stdout-rank{rank}.txt").write_text(printed.getvalue())


def test_the_readme_ddp_script_runs_on_two_ranks(tmp_path):
    run_ranks(_worker, script(), str(tmp_path), init=False)
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["digits-ddp"]  # rank 0's only
    steps = [record["step"] for record in read_jsonl(tmp_path / "runs" / "digits-ddp" / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and set(range(20, 101, 20)) <= set(steps) <= set(range(1, 101))
    lam, loss = map(float, (tmp_path / "stdout-rank0.txt").read_text().split())
    assert lam > 0 and 0 < loss < 2.5
    assert (tmp_path / "stdout-rank1.txt").read_text() == ""
