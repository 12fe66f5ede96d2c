"""The JSONL run directory and the logger fan-out: every record written, read back, never lost."""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgewatch as ew
from edgewatch.hooks.detectors.base import Detector
from edgewatch.hooks.events import Event
from edgewatch.loggers import (
    JsonlLogger,
    Logger,
    MultiLogger,
    StdoutLogger,
    make_logger,
    read_jsonl,
)


def tiny(seed=0, lr=0.1):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9), (x, y)


def loss_fn(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


class EveryFifth(Detector):
    """An event every 5 steps, with a message a reader must not lose."""

    kinds = ("every_fifth",)

    def update(self, metrics, step):
        return [Event(step, "every_fifth", "info", f"step {step} \"quoted\" ünïcode", {"loss": metrics["loss"]})] if step % 5 == 0 else []


def train(monitor, model, optimizer, batch, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model, batch)
        monitor.observe(loss)
        loss.backward()
        optimizer.step()


def test_a_monitored_run_writes_meta_metrics_and_events(tmp_path):
    model, optimizer, batch = tiny()
    with ew.Monitor(model, optimizer, loss_fn, [batch], every=1, curvature=5, run_dir=tmp_path / "run",
                    detectors=[*ew.hooks.default_detectors(), EveryFifth()]) as monitor:
        train(monitor, model, optimizer, batch, 20)
        last = dict(monitor.latest)
    assert monitor.run_dir == tmp_path / "run"
    metrics = list(read_jsonl(tmp_path / "run" / "metrics.jsonl"))
    assert [m["step"] for m in metrics] == list(range(1, 21))
    assert all("loss" in m and "grad/norm" in m for m in metrics)
    assert {m["step"] for m in metrics if "curvature/lambda_max" in m} == {5, 10, 15, 20}
    # the last line holds step 20's metrics; latest holds those and older ones (norms from step 11)
    assert {k: v for k, v in metrics[-1].items() if k not in ("step", "time")}.items() <= last.items()
    assert {m["step"] for m in metrics if "update/norm" in m} == {1, 11}  # norms_every=10
    events = list(read_jsonl(tmp_path / "run" / "events.jsonl"))
    assert [{k: v for k, v in e.items() if k != "time"} for e in events] == [e.to_dict() for e in monitor.events]
    assert [e["step"] for e in events if e["kind"] == "every_fifth"] == [5, 10, 15, 20]
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["edgewatch"] == ew.__version__ and meta["torch"] == torch.__version__
    assert meta["model"]["parameters"] == sum(p.numel() for p in model.parameters()) == 195
    assert meta["optimizer"]["class"] == "SGD"
    assert meta["optimizer"]["groups"][0]["lr"] == 0.1 and meta["optimizer"]["groups"][0]["momentum"] == 0.9
    assert meta["optimizer"]["stability"][0]["constant"] == pytest.approx(3.8)
    assert meta["probe"] == {"batches": 1, "examples": 32, "curvature_parameters": 195}
    assert meta["schedules"]["curvature"]["every"] == 5 and meta["curvature"]["method"] == "auto"
    assert "eos_reached" in meta["detectors"] and "every_fifth" in meta["detectors"]


def test_resuming_appends_without_duplicating_steps(tmp_path):
    model, optimizer, batch = tiny()
    first = ew.Monitor(model, optimizer, loss_fn, [batch], every=1, curvature=5, run_dir=tmp_path, detectors=[EveryFifth()]).attach()
    train(first, model, optimizer, batch, 10)
    checkpoint = (first.state_dict(), model.state_dict(), optimizer.state_dict())
    train(first, model, optimizer, batch, 7)  # steps 11-17 are written, then the process "dies"
    first.close()

    model, optimizer, batch = tiny()
    model.load_state_dict(checkpoint[1])
    optimizer.load_state_dict(checkpoint[2])
    second = ew.Monitor(model, optimizer, loss_fn, [batch], every=1, curvature=5, run_dir=tmp_path, detectors=[EveryFifth()])
    second.load_state_dict(checkpoint[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a resume is expected: no warning
        warnings.filterwarnings("ignore", message=".*fixed schedule would slow training")  # the tiny test schedule's cost
        second.attach()
        train(second, model, optimizer, batch, 15)  # steps 11-25
        second.close()
    steps = [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")]
    assert steps == list(range(1, 26))
    assert [e["step"] for e in read_jsonl(tmp_path / "events.jsonl")] == [5, 10, 15, 20, 25]
    assert json.loads((tmp_path / "meta.json").read_text())["resumes"][0]["step"] == 10


def test_a_new_run_never_mixes_with_an_old_runs_records(tmp_path):
    run_dirs = []
    for attempt in range(2):
        model, optimizer, batch = tiny(seed=attempt)
        monitor = ew.Monitor(model, optimizer, loss_fn, [batch], every=1, curvature=5, run_dir=tmp_path / "run").attach()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(monitor, model, optimizer, batch, 3)
        monitor.close()
        run_dirs.append(monitor.run_dir)
    assert run_dirs == [tmp_path / "run", tmp_path / "run-2"]
    assert any(f"writing it to {tmp_path / 'run-2'}" in str(w.message) for w in caught)
    for run_dir in run_dirs:
        assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]
        assert json.loads((run_dir / "meta.json").read_text())["step"] == 0


def test_default_run_directories_are_reserved_not_shared(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEWATCH_DIR", str(tmp_path))
    loggers = [JsonlLogger() for _ in range(3)]  # same second, same time stamp
    for logger in loggers:
        logger.start({})
    assert len({logger.run_dir for logger in loggers}) == 3
    assert all(logger.run_dir.parent == tmp_path and logger.run_dir.is_dir() for logger in loggers)
    for logger in loggers:
        logger.close()


def test_rewinding_to_a_checkpoint_in_the_same_process_logs_no_step_twice(tmp_path):
    model, optimizer, batch = tiny()
    monitor = ew.Monitor(model, optimizer, loss_fn, [batch], every=1, curvature=5, run_dir=tmp_path, detectors=[EveryFifth()]).attach()
    train(monitor, model, optimizer, batch, 5)
    checkpoint = copy.deepcopy([monitor.state_dict(), model.state_dict(), optimizer.state_dict()])
    train(monitor, model, optimizer, batch, 7)  # to step 12, then back to step 5 (a loss spike rollback, say)
    monitor.load_state_dict(checkpoint[0])
    model.load_state_dict(checkpoint[1])
    optimizer.load_state_dict(checkpoint[2])
    train(monitor, model, optimizer, batch, 10)  # steps 6-15
    monitor.close()
    assert monitor.step_count == 15
    assert [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")] == list(range(1, 16))
    assert [e["step"] for e in read_jsonl(tmp_path / "events.jsonl")] == [5, 10, 15]


def test_an_unreadable_meta_or_line_is_set_aside_and_the_run_resumes(tmp_path):
    logger = JsonlLogger(tmp_path)
    logger.start({"step": 0, "note": "first"})
    for step in (1, 2, 3):
        logger.log({"loss": 1.0 / step}, step)
    logger.close()
    (tmp_path / "meta.json").write_text('{"edgewatch": "0.1", "mo')  # a disk that filled up mid-write
    with open(tmp_path / "metrics.jsonl", "a") as file:
        file.write('{"step": 4, "lo\n')  # ... and a line cut short, then a newline
    logger = JsonlLogger(tmp_path)
    with pytest.warns(UserWarning, match="moved to meta.json.unreadable"):
        logger.start({"step": 3, "note": "resumed"})
    logger.log({"loss": 0.1}, 3)  # already written: dropped
    logger.log({"loss": 0.2}, 4)
    logger.close()
    assert (tmp_path / "meta.json.unreadable").read_text().startswith('{"edgewatch"')
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["resumes"][0]["note"] == "resumed" and meta["resumes"][0]["step"] == 3
    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        records = list(read_jsonl(tmp_path / "metrics.jsonl"))
    assert [(m["step"], m["loss"]) for m in records] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.2)]


def test_the_meta_never_stops_a_run(tmp_path, monkeypatch):
    def broken_stability(optimizer):
        raise RuntimeError("an optimizer with a surprising state")

    monkeypatch.setattr("edgewatch.hooks.meta.stability", broken_stability)
    model, optimizer, batch = tiny()
    with ew.Monitor(model, optimizer, loss_fn, [batch], every=1, curvature=5, run_dir=tmp_path) as monitor:
        train(monitor, model, optimizer, batch, 2)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["optimizer"]["stability"] == {"error": "RuntimeError: an optimizer with a surprising state"}
    assert [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_a_torn_last_line_is_cut_and_the_run_goes_on(tmp_path):
    logger = JsonlLogger(tmp_path)
    logger.start({})
    logger.log({"loss": 1.0}, step=1)
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as file:
        file.write('{"step": 2, "loss": 0.')  # the process died mid-line
    assert [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")] == [1]
    logger = JsonlLogger(tmp_path)
    logger.start({"step": 1})
    logger.log({"loss": 0.5}, step=2)
    logger.close()
    assert [(m["step"], m["loss"]) for m in read_jsonl(tmp_path / "metrics.jsonl")] == [(1, 1.0), (2, 0.5)]


def test_non_finite_values_round_trip(tmp_path):
    logger = JsonlLogger(tmp_path)
    logger.start({"note": math.inf})
    logger.log({"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5}, step=1)
    logger.log_event(Event(1, "nonfinite", "critical", "boom", {"loss": math.nan}).to_dict())
    logger.close()
    (record,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert math.isnan(record["a"]) and record["b"] == math.inf and record["c"] == -math.inf and record["d"] == 1.5
    (event,) = read_jsonl(tmp_path / "events.jsonl")
    assert math.isnan(event["values"]["loss"]) and event["message"] == "boom"
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))


def test_a_killed_process_loses_at_most_the_line_being_written(tmp_path):
    script = textwrap.dedent(f"""
        from edgewatch.loggers import JsonlLogger
        logger = JsonlLogger({str(tmp_path)!r})
        logger.start({{}})
        step = 0
        while True:
            step += 1
            logger.log({{"loss": 1.0 / step, "padding": "x" * 2000}}, step)
    """)
    process = subprocess.Popen([sys.executable, "-c", script])
    path = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while (not path.exists() or path.stat().st_size < 200_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    steps = [m["step"] for m in read_jsonl(path)]
    assert len(steps) > 50 and steps == list(range(1, len(steps) + 1))
    lines = path.read_bytes().split(b"\n")
    assert len(lines[-1]) <= len(lines[-2])  # what follows the last full line is at most one partial line


class Broken(Logger):
    """A backend that fails like a full disk on its third record."""

    name = "broken"

    def __init__(self):
        self.records = 0

    def log(self, metrics, step):
        self.records += 1
        if self.records == 3:
            raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failing_logger_is_disabled_with_one_warning_and_nothing_is_lost(tmp_path):
    model, optimizer, batch = tiny()
    broken = Broken()
    monitor = ew.Monitor(model, optimizer, loss_fn, [batch], every=1, curvature=5, run_dir=tmp_path, loggers=[broken]).attach()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(monitor, model, optimizer, batch, 12)
    monitor.close()
    messages = [str(w.message) for w in caught if "logger" in str(w.message)]
    assert len(messages) == 1 and "broken logger failed in log()" in messages[0] and "No space left" in messages[0]
    assert broken.records == 3 and list(monitor.logger.failed) == ["broken"]
    assert [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")] == list(range(1, 13))


def test_multilogger_disables_only_the_failing_one():
    class Recording(Logger):
        name = "recording"

        def __init__(self):
            self.calls = []

        def log(self, metrics, step):
            self.calls.append(step)

    class Raising(Logger):
        name = "raising"

        def log_event(self, event):
            raise RuntimeError("the service is down")

    good, bad = Recording(), Raising()
    fan_out = MultiLogger([bad, good])
    with pytest.warns(UserWarning, match="raising logger failed in log_event"):
        fan_out.log_event({"step": 1})
    fan_out.log({"loss": 1.0}, 1)
    fan_out.log_event({"step": 2})
    assert good.calls == [1] and fan_out.loggers == [good]


def test_logger_specs(tmp_path):
    assert isinstance(make_logger(f"jsonl:{tmp_path}"), JsonlLogger) and make_logger(f"jsonl:{tmp_path}").run_dir == tmp_path
    assert make_logger("stdout:10").every == 10
    logger = StdoutLogger()
    assert make_logger(logger) is logger
    with pytest.raises(ValueError, match="unknown logger 'wandbb'.*known: jsonl, stdout, wandb"):
        make_logger("wandbb")
    with pytest.raises(TypeError, match="spec string"):
        make_logger(3)
    with pytest.raises(ValueError, match="positive"):
        make_logger("stdout:0")


def test_run_dir_choices(tmp_path, monkeypatch, capsys):
    model, optimizer, batch = tiny()
    monkeypatch.setenv("EDGEWATCH_DIR", str(tmp_path / "root"))
    monitor = ew.Monitor(model, optimizer, loss_fn, [batch], every=1, curvature=5)
    assert monitor.run_dir.parent == tmp_path / "root" and not monitor.run_dir.exists()  # made on the first record
    monitor.step(loss_fn(model, batch))
    assert (monitor.run_dir / "metrics.jsonl").exists()
    monitor.close()

    off = ew.Monitor(model, optimizer, loss_fn, [batch], every=1, curvature=5, run_dir=False, loggers="stdout")
    off.step(torch.tensor(0.25))
    assert off.run_dir is None and "[edgewatch] step 1  loss 0.25" in capsys.readouterr().out

    spec = ew.Monitor(model, optimizer, loss_fn, [batch], loggers=[f"jsonl:{tmp_path / 'named'}"])
    assert spec.run_dir == tmp_path / "named"
    with pytest.raises(ValueError, match="run directory is given twice"):
        ew.Monitor(model, optimizer, loss_fn, [batch], run_dir=tmp_path / "a", loggers=[f"jsonl:{tmp_path / 'b'}"])


def test_closing_records_the_end_of_the_run_and_a_resume_clears_it(tmp_path):
    """``edgewatch report --follow`` stops at ``ended``: written at close, gone while a resumed run writes."""
    logger = JsonlLogger(tmp_path / "run")
    logger.start({"step": 0})
    logger.log({"loss": 1.0}, 1)
    assert "ended" not in json.loads((tmp_path / "run" / "meta.json").read_text())
    before = time.time()
    logger.close()
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["ended"] >= before
    again = JsonlLogger(tmp_path / "run")
    again.start({"step": 1})
    assert "ended" not in json.loads((tmp_path / "run" / "meta.json").read_text())
    again.close()
    assert "ended" in json.loads((tmp_path / "run" / "meta.json").read_text())


def test_step_0_measured_at_attach_reaches_the_run_directory(tmp_path):
    """The default budget schedule measures θ_0 when the Monitor attaches: that record is step 0 of
    metrics.jsonl (a fresh file once counted as already holding step 0, and dropped it)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = (torch.randn(8, 4), torch.randint(0, 2, (8,)))
    loss_fn = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    monitor = ew.Monitor(model, optimizer, loss_fn, [batch], run_dir=tmp_path).attach()
    for _ in range(3):
        optimizer.zero_grad()
        loss = loss_fn(model, batch)
        loss.backward()
        monitor.observe(loss)
        optimizer.step()
    monitor.close()
    records = list(read_jsonl(tmp_path / "metrics.jsonl"))
    assert records[0]["step"] == 0 and "curvature/lambda_max" in records[0]
    assert [r["step"] for r in records] == sorted({r["step"] for r in records})
