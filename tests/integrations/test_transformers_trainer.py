"""The Hugging Face callback in real ``transformers.Trainer`` runs of a one-layer GPT-2 (local config, CPU)."""

from __future__ import annotations

import importlib
import sys

import cases
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from edgewatch import MissingExtraError
from edgewatch.integrations.transformers import STATE_FILE, EdgewatchCallback
from edgewatch.loggers import read_jsonl

CLIP = 0.05  # below every gradient norm of this run: clipping always acts




def train(output_dir, callbacks=(), max_steps=30, resume=None, loss_kwargs=True, **kwargs):
    """A seeded run: GPT-2 with dropout, two micro-batches of 8 per step, clipped, logged every step."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32,
                                                bos_token_id=0, eos_token_id=0))
    args = TrainingArguments(output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=8,
                             gradient_accumulation_steps=2, learning_rate=3e-3, max_grad_norm=CLIP, report_to=[],
                             use_cpu=True, logging_steps=1, disable_tqdm=True, seed=0,
                             **{"save_strategy": "no", **kwargs})
    data = [{"input_ids": t, "labels": t} for t in cases.tokens(96, seed=1)]
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=list(callbacks))
    trainer.model_accepts_loss_kwargs = loss_kwargs  # False: the Trainer averages micro-batch losses itself
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def callback(**kwargs):
    probe = cases.tokens(8, seed=2)
    return EdgewatchCallback([{"input_ids": probe, "labels": probe}], **{"every": 1, "curvature": 10, "max_hvps": 20, **kwargs})


@pytest.mark.parametrize("loss_kwargs", [True, False], ids=["num_items_in_batch", "mean_of_micro_batches"])
def test_metrics_follow_the_global_step_with_the_trainers_loss_and_pre_clip_norm(tmp_path, loss_kwargs):
    watcher = callback()
    trainer = train(tmp_path, [watcher], loss_kwargs=loss_kwargs)
    assert watcher.monitor.run_dir.parent == tmp_path / "edgewatch_runs"
    records = list(read_jsonl(watcher.monitor.run_dir / "metrics.jsonl"))
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [r["step"] for r in records] == [entry["step"] for entry in logged] == list(range(1, 31))
    assert trainer.state.global_step == watcher.monitor.step_count == 30
    assert [r["loss"] for r in records] == pytest.approx([entry["loss"] for entry in logged], rel=1e-6)
    # the Trainer logs clip_grad_norm_'s return value: the norm before clipping
    assert min(entry["grad_norm"] for entry in logged) > CLIP
    assert [r["grad/norm"] for r in records] == pytest.approx([entry["grad_norm"] for entry in logged], rel=1e-5)
    for r in records:
        assert ("curvature/lambda_max" in r) == (r["step"] % 10 == 0), r["step"]


def test_watching_leaves_the_trajectory_bit_identical(tmp_path):
    watched = train(tmp_path / "watched", [callback()]).model
    alone = train(tmp_path / "alone").model
    for (name, watched_param), param in zip(watched.named_parameters(), alone.parameters()):
        assert torch.equal(watched_param, param), name


def test_a_stop_on_event_stops_through_the_control_flag(tmp_path):
    watcher = callback(detectors=[cases.ForcedAt(10)], stop_on=["forced"])
    trainer = train(tmp_path, [watcher])
    assert trainer.state.global_step == 10
    assert watcher.stopped_by.step == 10 and watcher.stopped_by.kind == "forced"
    assert [r["step"] for r in read_jsonl(watcher.monitor.run_dir / "metrics.jsonl")][-1] == 10


def test_resuming_from_a_checkpoint_restores_the_monitor(tmp_path):
    first = callback(detectors=[cases.ForcedAt(10)])
    train(tmp_path, [first], max_steps=20, save_strategy="steps", save_steps=10)
    assert (tmp_path / "checkpoint-10" / STATE_FILE).is_file()
    # resume from step 10: steps 11..20 come again and must not be written twice
    second = callback(detectors=[cases.ForcedAt(10)])
    trainer = train(tmp_path, [second], resume=str(tmp_path / "checkpoint-10"))
    assert trainer.state.global_step == second.monitor.step_count == 30
    assert [(e.step, e.kind) for e in second.monitor.events] == [(10, "forced")]  # from the checkpoint
    assert second.monitor.run_dir == first.monitor.run_dir  # the checkpoint names the run directory
    assert [r["step"] for r in read_jsonl(second.monitor.run_dir / "metrics.jsonl")] == list(range(1, 31))
    assert [r["step"] for r in read_jsonl(second.monitor.run_dir / "events.jsonl")] == [10]


def test_without_transformers_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # what an absent package looks like to import
    monkeypatch.delitem(sys.modules, "edgewatch.integrations.transformers")
    with pytest.raises(MissingExtraError, match=r"pip install 'edgewatch\[transformers\]'"):
        importlib.import_module("edgewatch.integrations.transformers")
