"""`edgewatch compare RUN_A RUN_B ...`: runs side by side, as one table, one figure and one HTML page.

    rows = compare(["runs/gd", "runs/adam"], out="cmp.png", labels=["GD", "Adam"])
    rows[0]["first_eos_step"], rows[1]["max_ratio"]

Each row is :func:`~edgewatch.cli.report.summarize` of one run with its ``label``: steps, the
step of the first ``eos_reached`` event, the largest stability ratio r = ηλ/c, the events by
kind and the final loss.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from edgewatch.cli.report import (
    events_html,
    html_page,
    html_table,
    output_paths,
    summarize,
    text_table,
)
from edgewatch.cli.rundir import Run, load_run

__all__ = ["Progress", "compare", "compare_text", "default_labels"]

COLUMNS = (
    ("run", "label"), ("optimizer", "optimizer"), ("steps", "steps"), ("first eos_reached", "first_eos_step"),
    ("max r", "max_ratio"), ("final loss", "final_loss"), ("events", "events"), ("kinds", "event_kinds"),
)


class Progress:
    """A one-line text progress bar (stderr by default); silent when disabled. The figure adds its panels.

    >>> bar = Progress(2, "demo", enabled=False)
    >>> bar.tick("one"); bar.tick("two"); bar.close()
    >>> bar.done
    2
    """

    def __init__(self, total: int, what: str, enabled: bool = True, stream: IO[str] | None = None, width: int = 24) -> None:
        self.total, self.what, self.width, self.done = total, what, width, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled

    def add(self, steps: int) -> None:
        """More work than planned: ``steps`` more ticks."""
        self.total += steps

    def tick(self, detail: str = "") -> None:
        self.done += 1
        if self.enabled:
            filled = self.width * min(self.done, self.total) // max(self.total, 1)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r{self.what} [{bar}] {self.done}/{self.total} {detail[:40]:<40}")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * (len(self.what) + self.width + 56) + "\r")
            self.stream.flush()


def compare(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    labels: Sequence[str] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Overlay the runs in one figure, write it with an HTML page, and return one table row per run.

    Args:
        run_dirs: run directories written by :class:`~edgewatch.Monitor`.
        out: a ``.png`` path (the ``.html`` goes beside it) or a directory; default
            ``compare.png`` in the current directory.
        labels: one per run; default the run directory names (with the parent folder when two
            names are the same).
        progress: show a progress bar on stderr (one tick per run loaded and per panel drawn).

    Raises:
        ValueError: no runs, or a number of labels different from the number of runs.
        RunDirError: a path is missing, not a run directory, or holds no metrics.
        MissingExtraError: matplotlib is not installed (``pip install 'edgewatch[plot]'``).
    """
    from edgewatch.cli import plots

    if not run_dirs:
        raise ValueError("compare needs at least one run directory")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"got {len(labels)} labels for {len(run_dirs)} runs; pass one label per run")
    bar = Progress(len(run_dirs), "compare", enabled=progress)
    try:
        runs = []
        for path in run_dirs:
            runs.append(load_run(path))
            bar.tick(f"loaded {Path(path).name}")
        labels = list(labels) if labels is not None else default_labels(runs)
        png, page = output_paths(out, Path("compare.png"))
        rows = [{**summarize(run), "label": label} for run, label in zip(runs, labels)]
        plots.compare_figure(runs, labels, png, progress=bar)
        page.write_text(_compare_html(runs, rows, png), encoding="utf-8")
    finally:
        bar.close()
    return rows


def default_labels(runs: Sequence[Run]) -> list[str]:
    """Run directory names; ``parent/name`` for names that repeat."""
    names = [run.name for run in runs]
    repeated = {name for name, count in Counter(names).items() if count > 1}
    return [f"{run.path.resolve().parent.name}/{name}" if name in repeated else name for run, name in zip(runs, names)]


def compare_text(rows: Sequence[dict[str, Any]]) -> str:
    return text_table([name for name, _ in COLUMNS], [[row[key] for _, key in COLUMNS] for row in rows])


def _compare_html(runs: Sequence[Run], rows: Sequence[dict[str, Any]], png: Path) -> str:
    table = html_table([name for name, _ in COLUMNS] + ["directory"], [[row[key] for _, key in COLUMNS] + [row["run"]] for row in rows])
    events = "\n".join(events_html(run.events, row["label"]) for run, row in zip(runs, rows) if run.events) or "<p>No events.</p>"
    return html_page("edgewatch compare: " + ", ".join(row["label"] for row in rows), png, [("Runs", table), ("Events", events)])
