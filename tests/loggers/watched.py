"""The tiny watched run every backend logger test reads back, and the check that a failing backend is contained."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgewatch import Monitor
from edgewatch.loggers import read_jsonl

STEPS = 20
NAN_AT = (7, 13)  # steps whose observed loss is NaN: a non-finite metric and a `nonfinite` event each


def watched_run(run_dir: Path, loggers: list) -> Monitor:
    """A tiny MLP trained 20 SGD steps under a Monitor (curvature every 5 steps), closed after."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    loss_fn = lambda m, b: F.cross_entropy(m(b[0]), b[1])
    monitor = Monitor(model, optimizer, loss_fn, probe=[(x, y)], every=1, curvature=5, run_dir=run_dir, loggers=loggers).attach()
    for step in range(1, STEPS + 1):
        optimizer.zero_grad()
        loss = loss_fn(model, (x, y))
        loss.backward()
        monitor.observe(math.nan if step in NAN_AT else loss)
        optimizer.step()
    monitor.close()
    return monitor


def assert_failure_is_contained(run_dir: Path, spec: str, name: str) -> None:
    """A run whose ``spec`` logger fails: one warning, that logger dropped, the JSONL complete."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = watched_run(run_dir, [spec])
    assert len([w for w in caught if f"the {name} logger failed" in str(w.message)]) == 1
    assert list(monitor.logger.failed) == [name]
    assert [record["step"] for record in read_jsonl(monitor.run_dir / "metrics.jsonl")] == list(range(1, STEPS + 1))
    assert [record["step"] for record in read_jsonl(monitor.run_dir / "events.jsonl")] == list(NAN_AT)
