"""The Lightning callback logs through ``trainer.loggers``, read back from Lightning's own TensorBoard file;
its run directory sits under ``default_root_dir``; its loss defaults to the one ``training_step`` returns."""

from __future__ import annotations

import inspect

import cases
import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from edgewatch.integrations import lightning as ew_lightning
from edgewatch.integrations.lightning import EdgewatchCallback, training_step_loss
from edgewatch.loggers import read_jsonl

STEPS = 10
PROBE = cases.digits_probe(sizes=(64,))


class Logged(L.LightningModule):
    """Logs its own ``loss`` (the name edgewatch's must not collide with) and returns a dict."""

    def __init__(self, manual=False):
        super().__init__()
        self.net = cases.mlp()
        self.automatic_optimization = not manual

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("loss", loss)
        return {"loss": loss}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.3)


def fit(watcher, max_steps=STEPS, module=None, **kwargs):
    torch.manual_seed(0)
    module = module or Logged()
    x, y = cases.digits()
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1, callbacks=[watcher], **kwargs)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=16))
    return trainer, module


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    """A fit with Lightning's TensorBoardLogger and the callback's default loss (no loss_fn)."""
    root = tmp_path_factory.mktemp("lightning")
    watcher = EdgewatchCallback(PROBE, every=1, curvature=5, max_hvps=20)
    trainer, module = fit(watcher, default_root_dir=root, logger=TensorBoardLogger(root, name="tb"))
    return root, watcher, trainer, module


def scalars(log_dir) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0}).Reload()
    return {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}


def test_metrics_reach_the_trainers_tensorboard_file_at_the_global_step(tensorboard_run):
    root, watcher, trainer, _ = tensorboard_run
    written = scalars(trainer.logger.log_dir)
    records = list(read_jsonl(watcher.monitor.run_dir / "metrics.jsonl"))
    names = {name for record in records for name in record} - {"step", "time"}
    assert {tag for tag in written if tag.startswith("edgewatch/")} == {f"edgewatch/{name}" for name in names}
    assert sorted(written["edgewatch/loss"]) == list(range(1, STEPS + 1)) == [r["step"] for r in records]
    for record in records:
        for name in names & record.keys():
            assert written[f"edgewatch/{name}"][record["step"]] == pytest.approx(record[name], rel=1e-6), name
    assert sorted(written["edgewatch/curvature/lambda_max"]) == [5, 10]
    # the module's own "loss" keeps its name and its points, one per training step, none from the probes;
    # Lightning logs training_step's values at the step count before their update, edgewatch after it
    assert sorted(written["loss"]) == list(range(STEPS))
    assert [written["loss"][step - 1] for step in range(1, STEPS + 1)] == [written["edgewatch/loss"][step] for step in range(1, STEPS + 1)]


def test_the_run_directory_is_under_default_root_dir(tensorboard_run):
    root, watcher, _, _ = tensorboard_run
    assert watcher.monitor.run_dir.parent == root / "edgewatch_runs"
    assert (watcher.monitor.run_dir / "metrics.jsonl").is_file()


def test_the_default_loss_is_the_one_training_step_returns(tensorboard_run):
    _, watcher, _, module = tensorboard_run
    assert watcher.loss_fn is training_step_loss
    records = {r["step"]: r for r in read_jsonl(watcher.monitor.run_dir / "metrics.jsonl")}
    x, y = PROBE[0]
    with torch.no_grad():  # the last probe (step 10) was measured at the final parameters
        by_hand = F.cross_entropy(module(x), y).item()
    assert records[STEPS]["curvature/probe_loss"] == pytest.approx(by_hand, rel=1e-6)


def test_without_a_logger_the_run_directory_is_not_named_like_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default_root_dir defaults to the working directory
    watcher = EdgewatchCallback(PROBE, every=1, curvature=None)
    fit(watcher, max_steps=2, logger=False)
    assert watcher.monitor.run_dir.parent == tmp_path / "edgewatch_runs"
    assert not (tmp_path / "edgewatch").exists()


def test_manual_optimization_needs_a_loss_fn(tmp_path):
    with pytest.raises(ValueError, match="manual optimization.*pass loss_fn"):
        fit(EdgewatchCallback(PROBE, curvature=None), module=Logged(manual=True), default_root_dir=tmp_path, logger=False)


def test_both_callbacks_have_one_signature():
    transformers = pytest.importorskip("edgewatch.integrations.transformers")
    lightning_params = list(inspect.signature(EdgewatchCallback).parameters)
    assert lightning_params == list(inspect.signature(transformers.EdgewatchCallback).parameters)
    assert lightning_params[:2] == ["probe", "loss_fn"]


@pytest.mark.parametrize("old", [lambda: EdgewatchCallback(cases.cross_entropy, PROBE, curvature=3),
                                 lambda: EdgewatchCallback(cases.cross_entropy, probe=PROBE, curvature=3)],
                         ids=["positional", "probe_by_name"])
def test_the_old_order_still_works_with_a_deprecation_warning(old):
    with pytest.warns(DeprecationWarning, match=r"EdgewatchCallback\(probe, loss_fn\)"):
        watcher = old()
    assert watcher.loss_fn is cases.cross_entropy and len(watcher.probe) == 1
    assert watcher.monitor_kwargs == {"curvature": 3}


def test_the_new_order_gives_no_warning(recwarn):
    EdgewatchCallback(PROBE, cases.cross_entropy)
    EdgewatchCallback(PROBE, loss_fn=cases.cross_entropy)
    EdgewatchCallback(probe=PROBE)
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


def test_training_step_loss_silences_self_log_and_reads_a_dict():
    module = Logged()
    x, y = PROBE[0]
    assert training_step_loss(module, PROBE[0]).item() == pytest.approx(F.cross_entropy(module(x), y).item())
    assert "log" not in vars(module) and module.log.__func__ is L.LightningModule.log  # restored


def test_a_training_step_without_a_loss_is_refused_with_the_fix():
    class NoLoss(Logged):
        def training_step(self, batch, batch_idx):
            return None

    with pytest.raises(TypeError, match="pass loss_fn"):
        ew_lightning.training_step_loss(NoLoss(), PROBE[0])
