"""`edgewatch report RUN_DIR`: one run's summary table, figure (PNG) and self-contained HTML page.

    result = report("runs/20261122-041500")     # writes runs/.../report.png and report.html
    result.summary["first_eos_step"], result.png

The summary holds what a person asks first about a run: how far it got (``steps``, the last
optimizer step logged), ``final_loss``, the largest sharpness ``max_lambda`` (λ_1 of H) and
``max_precond_lambda`` (λ_1 of P^-½ H P^-½), the largest stability ratio ``max_ratio``
(r = ηλ/c, 1 = edge of stability) and its step, the step of the first ``eos_reached`` event,
and the events by kind (``notes`` says what was tolerated while reading). Every string taken from a
run is passed through :func:`html.escape`
before it reaches the HTML page.

Given a runs root instead of a run directory, the latest run under it is reported (see
:func:`~edgewatch.cli.rundir.resolve_run_dir`). :func:`follow` redraws the report while a run is
being written.
"""

from __future__ import annotations

import base64
import html
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edgewatch import names
from edgewatch.cli.rundir import RUN_FILES, Run, RunDirError, load_run, resolve_run_dir, run_ended

__all__ = ["ReportResult", "follow", "output_paths", "report", "summarize", "write_report"]


class ReportResult(NamedTuple):
    png: Path
    html: Path
    summary: dict[str, Any]


def report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> ReportResult:
    """Write the figure and HTML page of the run in ``run_dir`` and return their paths and summary.

    Args:
        run_dir: a run directory written by :class:`~edgewatch.Monitor`, or a runs root holding
            run directories: then the one that started last (its ``meta.json`` start time, else
            the directory's modification time).
        out: a ``.png`` path (the ``.html`` goes beside it) or a directory; default the run
            directory itself (``report.png``, ``report.html``).

    Raises:
        RunDirError: ``run_dir`` is missing, neither a run directory nor a root holding one, or
            holds no metrics.
        MissingExtraError: matplotlib is not installed (``pip install 'edgewatch[plot]'``).
    """
    return write_report(load_run(resolve_run_dir(run_dir)), out)


def write_report(run: Run, out: str | os.PathLike | None = None) -> ReportResult:
    """Draw the figure and HTML page of a loaded run (``out`` as in :func:`report`)."""
    from edgewatch.cli import plots

    png, page = output_paths(out, run.path / "report.png")
    summary = summarize(run)
    plots.report_figure(run, png)
    page.write_text(_report_html(run, summary, png), encoding="utf-8")
    return ReportResult(png, page, summary)


def follow(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    interval: float = 5.0,
    max_checks: int | None = None,
    echo: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> ReportResult | None:
    """Redraw the report of a run that is being written, until it ends or the user interrupts.

    Every ``interval`` seconds the run's files are looked at; when they changed they are read
    again and the figure and page rewritten, and one progress line goes to ``echo`` (last step,
    largest r, events). Stops when ``meta.json`` records the run's end (a truthy ``ended`` or
    ``finished``), on Ctrl-C, or after ``max_checks`` looks. A run that holds no metrics yet is
    waited for. A runs root is resolved once, at the start (the latest run then is followed).

    Returns:
        The last report written, or ``None`` when the run never held metrics.

    Raises:
        RunDirError: ``run_dir`` is missing or neither a run directory nor a root holding one.
        MissingExtraError: matplotlib is not installed (``pip install 'edgewatch[plot]'``).
    """
    path = resolve_run_dir(run_dir)
    result, seen, checks, waiting = None, None, 0, False
    try:
        while True:
            # Taken before reading: lines appended during the read change it, so they are drawn next time.
            signature = _signature(path)
            if signature != seen:
                seen = signature
                try:
                    run = load_run(path)
                except RunDirError as error:
                    if "holds no metrics" not in str(error):
                        raise
                    if not waiting:
                        echo(f"{_clock()} {path}: no metrics yet, waiting")
                    waiting = True
                else:
                    result = write_report(run, out)
                    echo(f"{_clock()} {_progress(result.summary)}")
                    if run_ended(run.meta):
                        echo(f"{_clock()} the run ended")
                        return result
            checks += 1
            if max_checks is not None and checks >= max_checks:
                return result
            sleep(interval)
    except KeyboardInterrupt:  # the ordinary way to stop following
        return result


def _signature(path: Path) -> tuple[tuple[int, int], ...]:
    """Size and modification time of the run's files: cheap to take, changes on every appended line."""
    stats = []
    for name in RUN_FILES:
        try:
            stat = (path / name).stat()
            stats.append((stat.st_size, stat.st_mtime_ns))
        except OSError:
            stats.append((-1, -1))
    return tuple(stats)


def _clock() -> str:
    return time.strftime("[%H:%M:%S]")


def _progress(summary: Mapping[str, Any]) -> str:
    return (f"step {fmt(summary['steps'])}, max r {fmt(summary['max_ratio'])}, {summary['events']} events"
            f"{' (' + fmt(summary['event_kinds']) + ')' if summary['events'] else ''}: redrew the report")


def summarize(run: Run) -> dict[str, Any]:
    """The run's summary numbers (see the module docstring); ``None`` where the run has no data."""
    ratio = run.series(names.STABILITY_RATIO)
    kinds = Counter(event["kind"] for event in run.events)
    logged = ~np.isnan(ratio.values)  # inf is a real maximum, NaN is not
    best = int(np.argmax(np.where(logged, ratio.values, -np.inf))) if logged.any() else None
    loss = run.series(names.LOSS).values
    return {
        "run": str(run.path),
        "label": run.name,
        "optimizer": run.optimizer(),
        "steps": run.last_step,
        "records": max(len(series.steps) for series in run.metrics.values()),
        "final_loss": float(loss[-1]) if len(loss) else None,
        "max_lambda": _max(run.series(names.LAMBDA_MAX).values),
        "max_precond_lambda": _max(run.series(names.PRECOND_LAMBDA_MAX).values),
        "max_ratio": float(ratio.values[best]) if best is not None else None,
        "max_ratio_step": int(ratio.steps[best]) if best is not None else None,
        "first_eos_step": next((e["step"] for e in run.events if e["kind"] == "eos_reached"), None),
        "events": len(run.events),
        "event_kinds": dict(sorted(kinds.items())),
        "notes": list(run.notes),
    }


def output_paths(out: str | os.PathLike | None, default: Path) -> tuple[Path, Path]:
    """The (PNG, HTML) pair for ``--out``: a ``.png``/``.html`` file or a directory; parents are made."""
    png = default if out is None else Path(out)
    if png.suffix.lower() == ".html":
        png = png.with_suffix(".png")
    elif png.suffix.lower() != ".png":
        png = png / default.name
    png.parent.mkdir(parents=True, exist_ok=True)
    return png, png.with_suffix(".html")


# --- text ---------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    """A table cell: ``-`` for missing, 4 significant digits for floats, counts as ``kind×n``.

    >>> fmt(None), fmt(0.123456), fmt(float("inf")), fmt({"eos_reached": 2, "nonfinite": 1})
    ('-', '0.1235', 'inf', 'eos_reached×2, nonfinite×1')
    """
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}×{n}" for k, n in value.items()) or "-"
    return str(value)


def text_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned plain-text columns with a rule under the header."""
    cells = [list(header)] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


SUMMARY_ROWS = (
    ("run", "run"), ("optimizer", "optimizer"), ("steps", "steps"), ("final loss", "final_loss"),
    ("max λ_1", "max_lambda"), ("max preconditioned λ_1", "max_precond_lambda"),
    ("max r = ηλ/c", "max_ratio"), ("  at step", "max_ratio_step"), ("first eos_reached", "first_eos_step"),
    ("events", "events"), ("events by kind", "event_kinds"),
)


def summary_text(summary: Mapping[str, Any]) -> str:
    return text_table(("summary", summary["label"]), [(name, summary[key]) for name, key in SUMMARY_ROWS])


# --- HTML ---------------------------------------------------------------------------------------


def esc(value: Any) -> str:
    """Any value as HTML text: formatted with :func:`fmt`, then escaped."""
    return html.escape(fmt(value), quote=True)


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>\n" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def events_html(events: Sequence[Mapping[str, Any]], label: str | None = None) -> str:
    if not events:
        return "<p>No events.</p>"
    header = (["run"] if label is not None else []) + ["step", "kind", "severity", "message", "values"]
    rows = [
        ([label] if label is not None else [])
        + [e["step"], e["kind"], e["severity"], e["message"], ", ".join(f"{k}={fmt(v)}" for k, v in e["values"].items())]
        for e in events
    ]
    return html_table(header, rows)


def html_page(title: str, png: Path, sections: Sequence[tuple[str, str]]) -> str:
    """A self-contained page: the PNG inlined as base64, then (heading, HTML) sections in order."""
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    body = "".join(f"<h2>{esc(heading)}</h2>\n{content}\n" for heading, content in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>{esc(title)}</h1>
<img alt="{esc(title)}" src="data:image/png;base64,{image}">
{body}</body></html>
"""


def _report_html(run: Run, summary: Mapping[str, Any], png: Path) -> str:
    metrics = [
        (name, len(s.values), s.steps[0], s.steps[-1], s.values[-1], _min(s.values), _max(s.values))
        for name, s in sorted(run.metrics.items())
    ]
    sections = [
        ("Summary", html_table(("", "value"), [(name, summary[key]) for name, key in SUMMARY_ROWS])),
        ("Events", events_html(run.events)),
        ("Metrics", html_table(("metric", "points", "first step", "last step", "last", "min", "max"), metrics)),
        ("Run", html_table(("key", "value"), _flatten(run.meta))),
    ]
    if run.notes:
        sections.append(("Notes", html_table(("note",), [(note,) for note in run.notes])))
    return html_page(f"edgewatch report: {run.name}", png, sections)


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested meta as ``("optimizer.groups.0.lr", 0.1)`` rows."""
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list) and any(isinstance(v, (Mapping, list)) for v in value):
        items = enumerate(value)
    else:
        return [(prefix, value)]
    return [row for key, v in items for row in _flatten(v, f"{prefix}.{key}" if prefix else str(key))]


def _max(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.max()) if len(values) else None


def _min(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.min()) if len(values) else None
