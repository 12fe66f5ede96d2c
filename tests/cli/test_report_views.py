"""`edgewatch report` on a runs root and with --follow; r and λ cut next to a diverged run; events on their curves; --version."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

import edgewatch
from edgewatch.cli import plots
from edgewatch.cli.__main__ import main
from edgewatch.cli.report import follow
from edgewatch.cli.rundir import latest_run, load_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def metrics(ratios: list[float], lr: float, losses: list[float] | None = None) -> list[dict]:
    """One record per step from 1; curvature (λ = r · 2/η) on even steps only, as a sparse probe logs it."""
    threshold, records = 2 / lr, []
    for step, ratio in enumerate(ratios, 1):
        record = {"step": step, "time": 0.0, "loss": losses[step - 1] if losses else 2.3 / step, "grad/norm": 1.0 + 0.1 * step}
        if step % 2 == 0:
            record |= {"curvature/lambda_max": ratio * threshold, "curvature/threshold": threshold,
                       "curvature/stability_ratio": ratio}
        records.append(record)
    return records


def write_run(path: Path, records: list[dict], events: list[dict] = (), started: str | None = None, lr: float = 0.1,
              ended: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    meta = {"optimizer": {"class": "SGD", "groups": [{"lr": lr}]}}
    if started is not None:
        meta["started"] = started
    if ended:
        meta["ended"] = True
    (path / "meta.json").write_text(json.dumps(meta))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def event(step: int, kind: str, severity: str = "info") -> dict:
    return {"step": step, "kind": kind, "severity": severity, "message": "", "values": {}}


# --- a runs root ----------------------------------------------------------------------------------


def test_report_on_a_runs_root_picks_the_run_that_started_last(tmp_path, capsys):
    root = tmp_path / "runs"
    # names sort the other way round: the start time in meta.json decides, not the name
    write_run(root / "aaa", metrics([0.5] * 6, 0.1), started="2026-11-22T05:00:00+0000")
    write_run(root / "zzz", metrics([0.5] * 4, 0.1), started="2026-11-22T04:00:00+0000")
    (root / "tensorboard" / "events").mkdir(parents=True)  # what another logger keeps there
    assert main(["report", str(root)]) == 0
    captured = capsys.readouterr()
    assert f"reporting its latest run, {root / 'aaa'}" in captured.err
    assert f"wrote {root / 'aaa' / 'report.png'}" in captured.out and not (root / "zzz" / "report.png").exists()
    assert (root / "aaa" / "report.png").read_bytes().startswith(PNG_MAGIC)


def test_without_a_start_time_the_directory_modification_time_decides(tmp_path):
    root = tmp_path / "runs"
    old, new = write_run(root / "b", metrics([0.5] * 2, 0.1)), write_run(root / "a", metrics([0.5] * 2, 0.1))
    os.utime(old, (1_000_000, 1_000_000))
    os.utime(new, (2_000_000, 2_000_000))
    assert latest_run(root) == new
    os.utime(new, (500_000, 500_000))
    assert latest_run(root) == old


def test_a_root_without_runs_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty" / "tensorboard").mkdir(parents=True)
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgewatch report: error: ") and "holds none" in err and err.count("\n") == 1


# --- --follow -------------------------------------------------------------------------------------


def test_follow_redraws_when_lines_are_appended_and_stops_when_the_run_ends(tmp_path):
    run = write_run(tmp_path / "live", metrics([0.5] * 10, 0.1))
    lines, sleeps = [], []

    def training_goes_on(seconds: float) -> None:
        """Stands in for the wait between looks: each wait, the run writes more."""
        sleeps.append(seconds)
        if len(sleeps) == 1:  # nothing new: no redraw
            return
        if len(sleeps) == 2:
            with (run / "metrics.jsonl").open("a") as file:
                file.writelines(json.dumps(r) + "\n" for r in metrics([0.5] * 10 + [1.0] * 10, 0.1)[10:])
            with (run / "events.jsonl").open("a") as file:
                file.write(json.dumps(event(14, "eos_reached")) + "\n")
        else:
            write_run(run, metrics([0.5] * 10 + [1.0] * 10, 0.1), [event(14, "eos_reached")], ended=True)

    result = follow(run, interval=0.2, max_checks=10, echo=lines.append, sleep=training_goes_on)
    redraws = [line for line in lines if "redrew the report" in line]
    assert len(redraws) == 3, lines  # the start, the appended lines, the meta that says the run ended
    assert "step 10," in redraws[0] and "0 events" in redraws[0]
    assert "step 20," in redraws[1] and "1 events (eos_reached×1)" in redraws[1]
    assert lines[-1].endswith("the run ended") and sleeps == [0.2, 0.2, 0.2]
    assert result.summary["steps"] == 20 and result.summary["first_eos_step"] == 14
    assert result.png == run / "report.png" and result.png.read_bytes().startswith(PNG_MAGIC)


def test_follow_waits_for_a_run_without_metrics_and_is_bounded(tmp_path):
    run = tmp_path / "starting"
    run.mkdir()
    (run / "meta.json").write_text("{}")
    lines = []
    assert follow(run, interval=0.01, max_checks=3, echo=lines.append, sleep=lambda _: None) is None
    assert len(lines) == 1 and "no metrics yet, waiting" in lines[0]


def test_follow_on_the_command_line(tmp_path, capsys):
    run = write_run(tmp_path / "runs" / "live", metrics([0.5] * 6, 0.1), started="2026-11-22T05:00:00+0000")
    assert main(["report", str(tmp_path / "runs"), "--follow", "--interval", "0.05", "--max-checks", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"following {run} every 0.05 s; Ctrl-C to stop")
    assert out.count("redrew the report") == 1 and "step 6," in out  # the second look found nothing new
    assert "first eos_reached" in out and f"wrote {run / 'report.png'}" in out


def test_follow_refuses_a_non_positive_interval(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(tmp_path), "--follow", "--interval", "0"])
    assert exit_.value.code == 2 and "positive number of seconds" in capsys.readouterr().err


# --- a diverged run next to readable ones ---------------------------------------------------------


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory) -> list[Path]:
    """Two runs near r = 1 and one that diverges to r = 2e6 (λ = 8e6) and a loss of 1e26."""
    root, n = tmp_path_factory.mktemp("diverged"), 60
    near = [min(1.0, 0.2 + 0.03 * s) + 0.05 * math.sin(s) for s in range(1, n + 1)]
    slow = [0.1 + 0.015 * s for s in range(1, n + 1)]
    boom = [min(0.3 + 0.05 * s if s < 30 else 1.8 * 3.0 ** (s - 30), 2e6) for s in range(1, n + 1)]
    boom_loss = [2.3 if s < 35 else 2.3 * 10.0 ** (s - 34) for s in range(1, n + 1)]
    return [
        write_run(root / "near", metrics(near, 0.1), [event(28, "eos_reached"), event(40, "loss_spike", "warning")]),
        write_run(root / "slow", metrics(slow, 0.05)),
        write_run(root / "boom", metrics(boom, 0.5, boom_loss),
                  [event(24, "eos_reached", "warning"), event(36, "grad_spike", "critical"), event(50, "nonfinite", "critical")]),
    ]


def panel(figure, title: str):
    return next(ax for ax in figure.axes if ax.get_title(loc="left").startswith(title))


def markers(ax) -> list[tuple[float, float]]:
    """The (x, y) of every scatter point in the panel."""
    return [tuple(point) for collection in ax.collections if hasattr(collection, "get_offsets")
            for point in collection.get_offsets().tolist()]


def notes(ax) -> str:
    return " | ".join(text.get_text() for text in ax.texts)


def test_compare_keeps_the_runs_near_the_edge_readable_next_to_a_diverged_one(three_runs, tmp_path):
    runs = [load_run(path) for path in three_runs]
    figure = plots.compare_figure(runs, ["near", "slow", "boom"], tmp_path / "cmp.png")
    ratio, sharpness = panel(figure, "stability ratio"), panel(figure, "sharpness")
    low, high = ratio.get_ylim()
    assert 1.0 < high < 2.5 and low > -0.5  # the runs near r = 1 fill the panel, not a line at 0 under 2e6
    assert "cut at r = 10 (max 2e+06)" in notes(ratio) and "where a curve leaves the plot" in notes(ratio)
    assert sharpness.get_ylim()[1] < 100  # thresholds 20 and 40, λ up to 40; the diverged λ reaches 8e6
    assert "cut at 10× the threshold c/η = 400" in notes(sharpness)
    # the diverged curve leaves the r panel at step 32 (r = 16.2): a ▲ on the top edge there
    assert (32.0, pytest.approx(high)) in markers(ratio)
    # events on their curves: eos_reached at r(28) on the r panel, loss_spike at loss(40), grad_spike at ‖g‖(36)
    near, boom = runs[0], runs[2]
    r28 = float(near.series("curvature/stability_ratio").values[near.series("curvature/stability_ratio").steps == 28][0])
    assert (28.0, pytest.approx(r28)) in markers(ratio)
    assert (40.0, pytest.approx(2.3 / 40)) in markers(panel(figure, "loss"))
    assert (36.0, pytest.approx(1.0 + 3.6)) in markers(panel(figure, "gradient norm"))
    # the nonfinite event of the diverged run: its loss (1e17) is out of view, so on the top edge
    assert (50.0, pytest.approx(panel(figure, "loss").get_ylim()[1])) in markers(panel(figure, "loss"))
    assert boom.events[-1]["kind"] == "nonfinite"
    kinds = [text.get_text() for legend in figure.axes[-1].artists + [figure.axes[-1].get_legend()] if legend is not None
             for text in legend.get_texts()]
    assert {"eos_reached", "loss_spike", "grad_spike", "nonfinite"} <= set(kinds)


def test_readable_runs_alone_are_not_cut(three_runs, tmp_path):
    runs = [load_run(path) for path in three_runs[:2]]
    figure = plots.compare_figure(runs, ["near", "slow"], tmp_path / "two.png")
    assert "cut" not in notes(panel(figure, "stability ratio")) and "cut" not in notes(panel(figure, "sharpness"))


def test_report_of_the_diverged_run_cuts_r_and_lambda_and_marks_its_events(three_runs, tmp_path):
    run = load_run(three_runs[2])
    figure = plots.report_figure(run, tmp_path / "boom.png")
    ratio, sharpness = panel(figure, "stability ratio"), panel(figure, "sharpness")
    assert ratio.get_ylim()[1] < 2.5 and "cut at r = 10" in notes(ratio)
    assert sharpness.get_ylim()[1] < 10 and "cut at 10× the threshold c/η = 40" in notes(sharpness)
    assert (24.0, pytest.approx(1.5)) in markers(ratio)  # eos_reached on r at step 24
    assert (36.0, pytest.approx(4.6)) in markers(panel(figure, "gradient"))  # grad_spike on ‖g‖


# --- --version ------------------------------------------------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"edgewatch {edgewatch.__version__}\n"


def test_events_of_a_run_with_nothing_to_plot_do_not_break_the_figure(tmp_path, capsys):
    run = write_run(tmp_path / "odd", [{"step": 1, "odd": 1.0}], [event(1, "eos_reached")])
    assert main(["report", str(run)]) == 0 and (run / "report.png").read_bytes().startswith(PNG_MAGIC)
