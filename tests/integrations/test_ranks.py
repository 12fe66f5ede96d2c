"""Under distributed training the trainer callbacks log from the main process only, and stop every rank together."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from edgewatch.integrations._adapter import Adapter, any_rank


def test_only_the_main_process_logs(tmp_path):
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = (torch.randn(8, 4), torch.randint(0, 2, (8,)))

    def loss_fn(model, batch):
        return F.cross_entropy(model(batch[0]), batch[1])

    for main_process in (False, True):
        adapter = Adapter((), {"loggers": ["stdout"]})
        monitor = adapter._start(model, optimizer, loss_fn, [batch], step=0, run_dir=tmp_path / f"main-{main_process}",
                                 main_process=main_process)
        loss = loss_fn(model, batch)
        monitor.observe(loss)
        loss.backward()
        optimizer.step()  # the attached Monitor measures here
        adapter._close()
        assert (monitor.run_dir is not None) == main_process
        assert (tmp_path / f"main-{main_process}" / "metrics.jsonl").exists() == main_process
        assert [lg.name for lg in monitor.logger.loggers] == (["jsonl", "stdout"] if main_process else [])


def test_any_rank_without_a_process_group_is_the_flag_itself():
    assert any_rank(True, "cpu") is True and any_rank(False, "cpu") is False


def _decide(rank: int, world_size: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results[rank] = (any_rank(rank == 1, "cpu"), any_rank(False, "cpu"))  # an event on rank 1 only, then none
    finally:
        dist.destroy_process_group()


def test_an_event_on_one_rank_stops_every_rank():
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_decide, args=(2, port, results), nprocs=2, join=True)
    assert dict(results) == {0: (True, False), 1: (True, False)}
