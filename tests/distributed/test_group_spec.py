"""Which process group a probe reduces over, decided without any collective (one process, no group)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgewatch import Monitor
from edgewatch.curvature import HessianOperator
from edgewatch.distributed import is_main_process, probe_group, world_size


def test_one_process_without_a_group_communicates_with_nobody_and_logs():
    assert probe_group() is None and probe_group(False) is None and world_size(None) == 1
    assert is_main_process()
    model = nn.Linear(3, 2)
    batch = (torch.randn(4, 3), torch.randn(4, 2))
    loss_fn = lambda m, b: (m(b[0]) - b[1]).pow(2).mean()
    assert HessianOperator(model, loss_fn, [batch]).process_group is None
    monitor = Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, [batch], run_dir=False)
    assert monitor.process_group is None and monitor.main_process


@pytest.mark.parametrize("spec", [True, "gloo", 0])
def test_anything_but_none_false_or_a_group_is_refused(spec):
    with pytest.raises(TypeError, match="process_group must be None"):
        probe_group(spec)


def test_main_process_false_builds_no_logger_and_no_run_directory(tmp_path):
    model = nn.Linear(3, 2)
    batch = (torch.randn(4, 3), torch.randn(4, 2))
    loss_fn = lambda m, b: (m(b[0]) - b[1]).pow(2).mean()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, optimizer, loss_fn, [batch], run_dir=tmp_path / "run", loggers=["stdout"],
                      main_process=False, curvature=1).attach()
    loss_fn(model, batch).backward()
    optimizer.step()
    monitor.close()
    assert monitor.logger.loggers == [] and monitor.run_dir is None and not (tmp_path / "run").exists()
    assert "curvature/lambda_max" in monitor.latest  # it still measures
