"""The Hugging Face callback's metrics reach every ``report_to`` integration, read back from what
TensorBoard and W&B (offline) wrote; its run directory sits under ``output_dir``."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cases
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from edgewatch.integrations.transformers import EdgewatchCallback
from edgewatch.loggers import read_jsonl

STEPS = 10




def train(output_dir, watcher, report_to, logging_steps=1):
    """A seeded one-layer GPT-2 run of STEPS steps; returns the trainer and what it printed."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32,
                                       bos_token_id=0, eos_token_id=0))
    args = TrainingArguments(output_dir=str(output_dir), max_steps=STEPS, per_device_train_batch_size=8,
                             learning_rate=3e-3, report_to=report_to, use_cpu=True, logging_steps=logging_steps,
                             disable_tqdm=True, seed=0, save_strategy="no")
    data = [{"input_ids": t, "labels": t} for t in cases.tokens(96, seed=1)]
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[watcher])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        trainer.train()
    return trainer, printed.getvalue()


def callback(**kwargs):
    probe = cases.tokens(8, seed=2)
    return EdgewatchCallback([{"input_ids": probe, "labels": probe}], every=1, curvature=5, max_hvps=20, **kwargs)


def records_of(watcher) -> dict[int, dict]:
    return {r["step"]: r for r in read_jsonl(watcher.monitor.run_dir / "metrics.jsonl")}


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("hf-tensorboard")
    watcher = callback()
    trainer, printed = train(output_dir, watcher, ["tensorboard"])
    return output_dir, watcher, trainer, printed


def test_report_to_tensorboard_receives_the_metrics_at_the_global_step(tensorboard_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir, watcher, _, _ = tensorboard_run
    [log_dir] = {path.parent for path in (output_dir / "runs").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0}).Reload()
    written = {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}
    records = records_of(watcher)
    names = {name for record in records.values() for name in record} - {"step", "time"}
    assert {tag for tag in written if tag.startswith("train/edgewatch/")} == {f"train/edgewatch/{name}" for name in names}
    for step, record in records.items():
        for name in names & record.keys():
            assert written[f"train/edgewatch/{name}"][step] == pytest.approx(record[name], rel=1e-6), (name, step)
    assert sorted(written["train/edgewatch/curvature/lambda_max"]) == [5, 10]
    # the Trainer's own loss at the same steps, under its own name
    assert written["train/loss"].keys() == written["train/edgewatch/loss"].keys() == set(range(1, STEPS + 1))


def test_the_log_history_holds_the_metrics_and_the_console_does_not(tensorboard_run):
    _, watcher, trainer, printed = tensorboard_run
    records = records_of(watcher)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == list(range(1, STEPS + 1))
    assert [entry["edgewatch/loss"] for entry in logged] == pytest.approx([records[s]["loss"] for s in range(1, STEPS + 1)])
    assert [entry["loss"] for entry in logged] == pytest.approx([entry["edgewatch/loss"] for entry in logged], rel=1e-5)
    assert "'loss'" in printed and "edgewatch/" not in printed
    assert not any(type(cb).__name__ == "_Relay" for cb in trainer.callback_handler.callbacks)  # removed at train end


def test_the_run_directory_is_under_output_dir(tensorboard_run):
    output_dir, watcher, _, _ = tensorboard_run
    assert watcher.monitor.run_dir.parent == output_dir / "edgewatch_runs"



def test_report_to_wandb_receives_the_metrics_once_and_the_events_table(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(name, value)
    # loggers=["wandb"] beside report_to=["wandb"]: the run gets the events, but the metrics only once
    watcher = callback(detectors=[cases.ForcedAt(3)], loggers=["wandb"])
    try:
        train(tmp_path / "out", watcher, ["wandb"], logging_steps=2)
        run_dir = Path(wandb.run.dir).parent
    finally:
        if wandb.run is not None:
            wandb.run.finish()
        wandb.teardown()  # waits for the service to write the log; the next run needs a new one anyway
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for record in cases.wandb_records(run_dir) if record.WhichOneof("record_type") == "history"]
    records = records_of(watcher)
    ours = [row for row in rows if "train/edgewatch/loss" in row]
    # every second step, each edgewatch metric's latest value: the loss of that step, the curvature of step 5 at 6
    assert [row["train/global_step"] for row in ours] == [2, 4, 6, 8, 10]
    assert [row["train/edgewatch/loss"] for row in ours] == pytest.approx([records[s]["loss"] for s in (2, 4, 6, 8, 10)])
    curvature = [row["train/global_step"] for row in ours if "train/edgewatch/curvature/lambda_max" in row]
    assert curvature == [6, 10]
    assert [row["train/edgewatch/curvature/lambda_max"] for row in ours if row["train/global_step"] == 6] == \
        pytest.approx([records[5]["curvature/lambda_max"]])
    own = {name for row in rows for name in row if name.startswith("edgewatch/")}
    assert "edgewatch/loss" not in own and any(name.startswith("edgewatch/events") for name in own), own
