"""`edgewatch compare`: the table against the JSONL read independently, labels, escaping, progress, errors."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import cases
import pytest
import torch

import edgewatch
from edgewatch.cli.__main__ import main
from edgewatch.cli.compare import Progress, compare

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert(1)</script>"


def monitored_run(path: Path, optimizer: str) -> Path:
    """40 full-batch steps of the digits MLP, curvature every 5: SGD lr 0.8 reaches r ≈ 1, Adam does not."""
    model, batch = cases.mlp(hidden=16), cases.digits(120)
    opt = torch.optim.SGD(model.parameters(), lr=0.8) if optimizer == "sgd" else torch.optim.Adam(model.parameters(), lr=1e-2)
    monitor = edgewatch.Monitor(model, opt, cases.cross_entropy, probe=[batch], curvature=5, run_dir=path).attach()
    for _ in range(40):
        opt.zero_grad()
        loss = cases.cross_entropy(model, batch)
        monitor.observe(loss)
        loss.backward()
        opt.step()
    monitor.close()
    return path


def diverged_run(path: Path) -> Path:
    """Hand-written: loss blows up to inf at step 4, a nonfinite event with a hostile message, no curvature."""
    path.mkdir(parents=True)
    losses = [2.3, 40.0, 3e8, "inf"]
    (path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": v, "grad/norm": 1.0}) + "\n" for s, v in enumerate(losses, 1)))
    (path / "events.jsonl").write_text(json.dumps({"step": 4, "kind": "nonfinite", "severity": "critical", "message": HOSTILE, "values": {}}) + "\n")
    return path


def independent_row(run: Path) -> dict:
    """The compare numbers straight from the files, without edgewatch."""
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()] if (run / "events.jsonl").exists() else []
    ratios = [r["curvature/stability_ratio"] for r in metrics if "curvature/stability_ratio" in r]
    return {"steps": metrics[-1]["step"], "final_loss": float(metrics[-1]["loss"]), "max_ratio": max(ratios, default=None),
            "first_eos_step": next((e["step"] for e in events if e["kind"] == "eos_reached"), None), "events": len(events)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("compare")
    return [monitored_run(root / "sgd", "sgd"), monitored_run(root / "adam", "adam"), diverged_run(root / "diverged")]


def test_compare_table_matches_the_jsonl(runs, tmp_path, capsys):
    out = tmp_path / "cmp.png"
    assert main(["compare", *map(str, runs), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = {cells[0]: cells for cells in (re.split(r"\s{2,}", line.strip()) for line in printed[2:5])}
    assert printed[0].split()[:3] == ["run", "optimizer", "steps"] and set(rows) == {"sgd", "adam", "diverged"}
    for run in runs:
        want, cells = independent_row(run), rows[run.name]
        steps, eos, max_r, final_loss, events = cells[2:7]
        assert int(steps) == want["steps"] and int(events) == want["events"]
        assert eos == (str(want["first_eos_step"]) if want["first_eos_step"] is not None else "-")
        assert (max_r == "-") if want["max_ratio"] is None else float(max_r) == pytest.approx(want["max_ratio"], rel=1e-3)
        assert final_loss == "inf" if run.name == "diverged" else float(final_loss) == pytest.approx(want["final_loss"], rel=1e-3)
    assert rows["sgd"][3] == "10" and rows["adam"][3] == "-"  # SGD lr 0.8 reaches the edge, Adam does not
    assert f"wrote {out}" in printed[-2] and f"wrote {out.with_suffix('.html')}" in printed[-1]
    png = out.read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000


def test_compare_api_rows_labels_and_escaping(runs, tmp_path):
    labels = ["GD <η=0.8>", "Adam $x$", "boom"]
    rows = compare(runs, out=tmp_path, labels=labels)
    assert [row["label"] for row in rows] == labels
    for run, row in zip(runs, rows):
        want = independent_row(run)
        assert row["steps"] == want["steps"] and row["max_ratio"] == want["max_ratio"] and row["first_eos_step"] == want["first_eos_step"]
    assert rows[0]["event_kinds"]["eos_reached"] == 1 and rows[2]["event_kinds"] == {"nonfinite": 1}
    assert rows[1]["max_precond_lambda"] > 10 * rows[1]["max_lambda"]  # Adam: preconditioned sharpness is far larger
    page = (tmp_path / "compare.html").read_text()
    assert (tmp_path / "compare.png").read_bytes().startswith(PNG_MAGIC)
    assert "GD &lt;η=0.8&gt;" in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page and "<η" not in page


def test_default_labels_are_directory_names_with_parents_when_repeated(runs, tmp_path):
    twin = diverged_run(tmp_path / "other" / "diverged")
    rows = compare([runs[0], runs[2], twin], out=tmp_path / "x.png")
    assert [row["label"] for row in rows] == ["sgd", f"{runs[2].parent.name}/diverged", "other/diverged"]


def test_progress_bar_ticks_per_run_and_per_panel(runs, tmp_path, capsys):
    compare(runs[:2], out=tmp_path / "p.png", progress=True)
    err = capsys.readouterr().err
    assert "loaded sgd" in err and "loaded adam" in err and "stability ratio" in err
    assert re.findall(r"\] (\d+)/(\d+)", err)[-1] == ("6", "6")  # 2 runs + loss, λ, r, ‖g‖
    stream = io.StringIO()
    bar = Progress(2, "work", stream=stream)
    bar.tick("a")
    assert "work [" + "#" * 12 + "-" * 12 + "] 1/2 a" in stream.getvalue()


def test_compare_errors_exit_2(runs, tmp_path, capsys):
    assert main(["compare", str(runs[0]), str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["compare", str(runs[0]), str(runs[1]), "--labels", "only-one", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgewatch compare: error: got 1 labels for 2 runs") and err.count("\n") == 1


def test_a_glob_over_the_runs_root_skips_what_other_loggers_keep_there(runs, tmp_path, capsys):
    tensorboard = tmp_path / "tensorboard"  # `edgewatch compare runs/*` matches runs/tensorboard too
    (tensorboard / "20261122-041500").mkdir(parents=True)
    assert main(["compare", str(runs[0]), str(tensorboard), str(runs[1]), "--out", str(tmp_path / "g.png")]) == 0
    captured = capsys.readouterr()
    assert f"note: skipped {tensorboard}: not a run directory" in captured.err
    assert [line.split()[0] for line in captured.out.splitlines()[2:4]] == ["sgd", "adam"]
    # named explicitly with a label each, a stranger is still an error
    assert main(["compare", str(runs[0]), str(tensorboard), "--labels", "a", "b", "--out", str(tmp_path)]) == 2
    assert "is not an edgewatch run directory" in capsys.readouterr().err
