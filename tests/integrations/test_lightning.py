"""The Lightning callback in real ``lightning.Trainer`` runs: a digits MLP with dropout, on CPU."""

from __future__ import annotations

import importlib
import sys

import cases
import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgewatch import MissingExtraError
from edgewatch.integrations.lightning import EdgewatchCallback
from edgewatch.loggers import read_jsonl

CLIP = 0.05  # below every gradient norm of this run: clipping always acts


class Digits(L.LightningModule):
    """Records, independently of edgewatch, each step's mean micro-batch loss and pre-clip gradient norm."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(cases.mlp(), nn.Dropout(0.2))
        self.pending, self.step_losses, self.grad_norms = [], [], []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.pending.append(loss.item())
        return loss

    def on_before_optimizer_step(self, optimizer):  # Lightning clips after this hook
        self.step_losses.append(sum(self.pending) / len(self.pending))
        self.pending = []
        self.grad_norms.append(torch.cat([p.grad.double().flatten() for p in self.parameters()]).norm().item())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.3, momentum=0.9)



def fit(root, callbacks=(), max_steps=30, ckpt_path=None, **kwargs):
    """A seeded run: 15 shuffled batches of 16 per epoch, two micro-batches per step, clipped."""
    torch.manual_seed(0)
    module = Digits()
    x, y = cases.digits()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    kwargs = {"accumulate_grad_batches": 2, "gradient_clip_val": CLIP, "enable_checkpointing": False, **kwargs}
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root, callbacks=list(callbacks), **kwargs)
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer, module


def callback(**kwargs):
    kwargs = {"curvature": 10, "max_hvps": 20, **kwargs}
    return EdgewatchCallback(cases.digits_probe(sizes=(64,)), cases.cross_entropy, **{"every": 1, **kwargs})


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    root = tmp_path_factory.mktemp("watched")
    watcher = callback()
    trainer, module = fit(root, [watcher])
    return root, watcher, trainer, module


def test_metrics_follow_the_global_step_with_the_trainers_loss_and_pre_clip_norm(watched):
    root, watcher, trainer, module = watched
    assert watcher.monitor.run_dir.parent == root / "edgewatch_runs"
    records = list(read_jsonl(watcher.monitor.run_dir / "metrics.jsonl"))
    assert [r["step"] for r in records] == list(range(1, 31))
    assert trainer.global_step == watcher.monitor.step_count == 30
    # the epoch's last step has one micro-batch (15 batches, 2 per step): the loss is still their mean
    assert [r["loss"] for r in records] == pytest.approx(module.step_losses, rel=1e-6)
    assert min(module.grad_norms) > CLIP
    assert [r["grad/norm"] for r in records] == pytest.approx(module.grad_norms, rel=1e-5)
    for r in records:
        assert ("curvature/lambda_max" in r) == (r["step"] % 10 == 0), r["step"]
    assert all(r["curvature/lambda_max"] > 0 for r in records if r["step"] % 10 == 0)


def test_watching_leaves_the_trajectory_bit_identical(watched, tmp_path):
    _, _, _, module = watched
    _, alone = fit(tmp_path)
    for (name, watched_param), param in zip(module.named_parameters(), alone.parameters()):
        assert torch.equal(watched_param, param), name


def test_a_stop_on_event_stops_through_should_stop(tmp_path):
    watcher = callback(detectors=[cases.ForcedAt(10)], stop_on=["forced"])
    trainer, _ = fit(tmp_path, [watcher])
    assert trainer.global_step == 10 and trainer.should_stop
    assert watcher.stopped_by.step == 10 and watcher.stopped_by.kind == "forced"
    assert [r["step"] for r in read_jsonl(watcher.monitor.run_dir / "metrics.jsonl")][-1] == 10


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`, callbacks used to create the checkpoint")
def test_resuming_from_a_checkpoint_restores_the_monitor(tmp_path):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=10, save_top_k=-1)
    first = callback(detectors=[cases.ForcedAt(10)])
    fit(tmp_path, [first, checkpoints], max_steps=20, enable_checkpointing=True)
    assert first.monitor.step_count == 20
    # resume from step 10: steps 11..20 come again and must not be written twice
    second = callback(detectors=[cases.ForcedAt(10)])
    trainer, _ = fit(tmp_path, [second], ckpt_path=tmp_path / "ckpt" / "step=10.ckpt")
    assert trainer.global_step == second.monitor.step_count == 30
    assert [(e.step, e.kind) for e in second.monitor.events] == [(10, "forced")]  # from the checkpoint
    assert second.monitor.run_dir == first.monitor.run_dir  # the checkpoint names the run directory
    assert [r["step"] for r in read_jsonl(second.monitor.run_dir / "metrics.jsonl")] == list(range(1, 31))
    assert [r["step"] for r in read_jsonl(second.monitor.run_dir / "events.jsonl")] == [10]


class Failing(Digits):
    def training_step(self, batch, batch_idx):
        if batch_idx == 6:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_an_exception_detaches_the_monitor(tmp_path):
    watcher = callback()
    trainer = L.Trainer(max_steps=30, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[watcher])
    x, y = cases.digits()
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Failing(), DataLoader(TensorDataset(x, y), batch_size=16))
    assert watcher.monitor.step_count == trainer.global_step == 6
    trainer.optimizers[0].step()  # the Monitor no longer counts steps
    assert watcher.monitor.step_count == 6


def test_unknown_stop_on_kinds_fail_at_construction():
    with pytest.raises(ValueError, match="unknown event kinds"):
        callback(stop_on=["forced"])


def test_without_lightning_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)  # what an absent package looks like to import
    monkeypatch.delitem(sys.modules, "edgewatch.integrations.lightning")
    with pytest.raises(MissingExtraError, match=r"pip install 'edgewatch\[lightning\]'"):
        importlib.import_module("edgewatch.integrations.lightning")


@pytest.mark.parametrize(("kwargs", "match"), [({"k": 0}, r"k must be an integer >= 1"), ({"tol": 0}, r"tol must be"),
                                               ({"curvature": "often"}, r"curvature must be")])
def test_bad_settings_are_refused_when_the_callback_is_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EdgewatchCallback(cases.digits_probe(sizes=(8,)), cases.cross_entropy, **kwargs)


def test_a_misspelled_setting_is_refused_when_the_callback_is_built():
    with pytest.raises(TypeError, match=r"evry"):
        EdgewatchCallback(cases.digits_probe(sizes=(8,)), cases.cross_entropy, evry=1)


def test_a_nan_probe_is_refused_when_the_callback_is_built():
    x, y = cases.digits_probe(sizes=(8,))[0]
    x = x.clone()
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"probe batch 0 contains NaN"):
        EdgewatchCallback([(x, y)], cases.cross_entropy)
