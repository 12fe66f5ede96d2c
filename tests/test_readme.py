"""The README's Python examples run as written, in order, as one session would."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_blocks_run():
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
