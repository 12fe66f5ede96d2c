"""The ``edgewatch`` command: arguments → load runs → tables → figures (see ``edgewatch --help``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from edgewatch._optional import MissingExtraError
from edgewatch.cli.rundir import RUN_FILES, RunDirError

DESCRIPTION = """\
Read the run directories edgewatch.Monitor writes (meta.json, metrics.jsonl, events.jsonl) and
turn them into figures, HTML pages and summary tables. Figures need matplotlib:
pip install 'edgewatch[plot]'. Errors print one line and exit with status 2."""

REPORT_HELP = """\
One run: writes a PNG (loss with events; sharpness λ_1 against the stability threshold c/η,
dashed — for SGD the raw λ_1 against 2/η, for adaptive optimizers the preconditioned λ_1 against
c/η, e.g. 38/η for Adam, with the raw λ_1 too; the stability ratio r = ηλ/c with the edge of
stability at r = 1; output and attention logits; gradient and update norms) and a self-contained
HTML page (the PNG inlined, summary, events, metrics, meta). Prints the summary table and the
paths written."""

COMPARE_HELP = """\
Several runs overlaid in one figure, one color per run (loss; λ_1, preconditioned for adaptive
optimizers, with each run's threshold dashed in its color; r; gradient norm; attention max
logit), with an HTML page beside it. Prints one row per run: label, optimizer, last step, step of
the first eos_reached event, max r, events and their kinds, final loss."""


EXAMPLES = """\
examples:
  edgewatch report runs/20261122-041500                 # runs/20261122-041500/report.png and .html
  edgewatch compare runs/gd runs/adam --labels GD Adam --out figures/gd-vs-adam.png"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgewatch", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{report,compare}")

    report = commands.add_parser("report", help="figure, HTML page and summary of one run", description=REPORT_HELP)
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by edgewatch.Monitor")
    report.add_argument("--out", metavar="PATH", help="a .png file (the .html is written beside it) or a directory; "
                        "default RUN_DIR/report.png and RUN_DIR/report.html")

    compare = commands.add_parser("compare", help="several runs overlaid in one figure and one table", description=COMPARE_HELP)
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by edgewatch.Monitor")
    compare.add_argument("--out", metavar="PATH", help="a .png file (the .html is written beside it) or a directory; "
                         "default ./compare.png and ./compare.html")
    compare.add_argument("--labels", nargs="+", metavar="LABEL", help="one label per run, after the run directories; "
                         "default the directory names")
    compare.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                         help="a progress bar on stderr (default: when stderr is a terminal)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "report":
            return _report(args)
        return _compare(args)
    except (RunDirError, MissingExtraError, OSError) as error:  # a user's mistake: one line, no traceback
        return _error(args.command, str(error))


def _error(command: str, message: str) -> int:
    print(f"edgewatch {command}: error: {message}", file=sys.stderr)
    return 2


def _notes(command: str, notes: list[str]) -> None:
    for note in notes:
        print(f"edgewatch {command}: note: {note}", file=sys.stderr)


def _report(args: argparse.Namespace) -> int:
    from edgewatch.cli.report import report, summary_text

    result = report(args.run_dir, out=args.out)
    _notes("report", result.summary["notes"])
    print(summary_text(result.summary))
    print(f"\nwrote {result.png}\nwrote {result.html}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from edgewatch.cli.compare import compare, compare_text
    from edgewatch.cli.report import output_paths

    if args.labels is not None and len(args.labels) != len(args.run_dirs):
        return _error("compare", f"got {len(args.labels)} labels for {len(args.run_dirs)} runs; pass one label per run")
    run_dirs = args.run_dirs
    if args.labels is None and len(run_dirs) > 1:
        # `compare runs/*` also matches what other loggers keep under the runs root (runs/tensorboard, runs/mlruns)
        strangers = [path for path in run_dirs if Path(path).is_dir() and not any((Path(path) / name).is_file() for name in RUN_FILES)]
        if len(strangers) < len(run_dirs):
            _notes("compare", [f"skipped {path}: not a run directory" for path in strangers])
            run_dirs = [path for path in run_dirs if path not in strangers]
    png, page = output_paths(args.out, Path("compare.png"))
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    rows = compare(run_dirs, out=png, labels=args.labels, progress=progress)
    _notes("compare", [f"{row['label']}: {note}" for row in rows for note in row["notes"]])
    print(compare_text(rows))
    print(f"\nwrote {png}\nwrote {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
