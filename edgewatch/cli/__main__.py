"""The ``edgewatch`` command: arguments → load runs → tables → figures (see ``edgewatch --help``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from edgewatch.cli.rundir import RUN_FILES, RunDirError, resolve_run_dir
from edgewatch.extras import MissingExtraError
from edgewatch.version import __version__

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
paths written.

RUN_DIR may also be a runs root (a directory holding run directories, e.g. runs/): the run that
started last is reported, by the start time in its meta.json, else by the directory's
modification time. With --follow the report is redrawn while the run is being written: every
--interval seconds the files are checked, and when they grew they are read again, the PNG and
HTML rewritten and one progress line printed, until Ctrl-C or until meta.json records the run's
end.

In the r and λ_1 panels a diverged run does not flatten the others: r above 10 (and λ_1 above
10× the threshold c/η) is cut off, the curve runs off the top edge with a ▲ where it leaves, and
the panel says so. Events are marked on the curve they concern (eos_reached on r, loss_spike on
the loss, grad_spike on the gradient norm, ...)."""

COMPARE_HELP = """\
Several runs overlaid in one figure, one color per run (loss; λ_1, preconditioned for adaptive
optimizers, with each run's threshold dashed in its color; r; gradient norm; attention max
logit), with an HTML page beside it. Prints one row per run: label, optimizer, last step, step of
the first eos_reached event, max r, events and their kinds, final loss. r and λ_1 are cut and
events marked on their curves as in report."""


EXAMPLES = """\
examples:
  edgewatch report runs/20261122-041500                 # runs/20261122-041500/report.png and .html
  edgewatch report runs --follow                        # the latest run under runs/, redrawn as it grows
  edgewatch compare runs/gd runs/adam --labels GD Adam --out figures/gd-vs-adam.png"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgewatch", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"edgewatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{report,compare}")

    report = commands.add_parser("report", help="figure, HTML page and summary of one run", description=REPORT_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by edgewatch.Monitor, or a runs "
                        "root holding run directories (then the latest run)")
    report.add_argument("--out", metavar="PATH", help="a .png file (the .html is written beside it) or a directory; "
                        "default RUN_DIR/report.png and RUN_DIR/report.html")
    report.add_argument("--follow", action="store_true", help="redraw while the run is being written, until Ctrl-C "
                        "or the run's end")
    report.add_argument("--interval", type=_seconds, default=5.0, metavar="SECONDS",
                        help="with --follow, how often to look for new records (default 5)")
    # Stops --follow after this many looks; for tests and scripts, hence undocumented.
    report.add_argument("--max-checks", type=int, default=None, help=argparse.SUPPRESS)

    compare = commands.add_parser("compare", help="several runs overlaid in one figure and one table", description=COMPARE_HELP,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by edgewatch.Monitor")
    compare.add_argument("--out", metavar="PATH", help="a .png file (the .html is written beside it) or a directory; "
                         "default ./compare.png and ./compare.html")
    compare.add_argument("--labels", nargs="+", metavar="LABEL", help="one label per run, after the run directories; "
                         "default the directory names")
    compare.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                         help="a progress bar on stderr (default: when stderr is a terminal)")
    return parser


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
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
    from edgewatch.cli.report import follow, report, summary_text

    run_dir = resolve_run_dir(args.run_dir)
    if run_dir != Path(args.run_dir):
        _notes("report", [f"{args.run_dir} is a runs root; reporting its latest run, {run_dir}"])
    if args.follow:
        print(f"following {run_dir} every {args.interval:g} s; Ctrl-C to stop", flush=True)
        result = follow(run_dir, out=args.out, interval=args.interval, max_checks=args.max_checks,
                        echo=lambda line: print(line, flush=True))
        if result is None:
            return _error("report", f"{run_dir} held no metrics while it was followed")
        print()
    else:
        result = report(run_dir, out=args.out)
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
