"""A probe that raises on one rank fails on every rank together: no rank is left waiting in a
collective, every rank warns, training goes on unchanged and the next probe works again."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

import cases
from edgewatch import Monitor, Schedule
from edgewatch.curvature import hessian as hessian_module
from shards import batch, probe_shard
from spawning import run_ranks

STEPS, EVERY = 12, 4


class Flaky:
    """``cases.cross_entropy`` that raises on the n-th call after :meth:`arm` (on the rank that armed it)."""

    def __init__(self, rank: int) -> None:
        self.rank, self.countdown = rank, None

    def arm(self, calls: int) -> None:
        self.countdown = calls

    def __call__(self, model, batch):
        if self.countdown is not None:
            self.countdown -= 1
            if self.countdown == 0:
                self.countdown = None
                raise RuntimeError(f"boom on rank {self.rank}")
        return cases.cross_entropy(model, batch)


def train(rank: int, method: str | None, failures: dict[int, tuple[int, int]], cheap_failure: tuple[int, int] | None = None) -> dict:
    """A DDP run; ``failures[step] = (rank, n)``: on that step's probe, ``rank`` raises at its n-th loss call;
    ``cheap_failure = (rank, step)``: the cheap metrics raise on that rank at that step."""
    model = cases.mlp(seed=0, hidden=16)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.3)
    loss_fn = Flaky(rank)
    monitor = None
    if method is not None:
        monitor = Monitor(ddp, optimizer, loss_fn, probe_shard(rank), every=1, curvature=Schedule(every=EVERY), method=method,
                          k=1, tol=1e-9, max_hvps=12, run_dir=False).attach()
        if cheap_failure is not None and cheap_failure[0] == rank:
            measure = monitor._cheap_metrics

            def flaky_cheap_metrics(*args):
                if monitor.step_count == cheap_failure[1]:
                    raise RuntimeError(f"cheap metrics fail on rank {rank}")
                return measure(*args)

            monitor._cheap_metrics = flaky_cheap_metrics
    record = {"latest": [], "hvps": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, STEPS + 1):
            optimizer.zero_grad()
            cases.cross_entropy(ddp, batch(step, rank)).backward()
            if step in failures and failures[step][0] == rank:
                loss_fn.arm(failures[step][1])
            hvps = monitor.curvature.hessian.num_hvps if monitor else 0
            optimizer.step()  # the probe runs (and fails) in here
            if monitor:
                record["latest"].append(monitor.latest)
                record["hvps"].append(monitor.curvature.hessian.num_hvps - hvps)
                monitor.latest = {}
    record["warnings"] = [str(w.message) for w in caught if "edgewatch" in str(w.message)]
    record["params"] = [p.detach().clone() for p in model.parameters()]
    record["method"] = monitor.curvature.hessian.method if monitor else None
    return record


def _worker(rank: int, world_size: int, out: str) -> None:
    hessian_module._AUTO_TIMES_CPU = True  # "auto" measures, as on other devices (a failure in it must be agreed)
    # rank 1 has one probe batch, rank 0 two: forward-over-reverse calls loss_fn once per batch and product.
    results = {
        "plain": train(rank, None, {}),
        # step 4: rank 1 raises in the 3rd product of the Lanczos solve (call 1 is the loss and gradient);
        # step 8: rank 0 raises in the loss and gradient; step 12: nobody.
        # step 6 (no probe): the cheap metrics raise on rank 1 only.
        "lanczos": train(rank, "forward_over_reverse", {4: (1, 4), 8: (0, 1)}, cheap_failure=(1, 6)),
        # step 4: rank 1 raises while "auto" times the methods, at the first product of all.
        "auto": train(rank, "auto", {4: (1, 2)}),
    }
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_failures")
    run_ranks(_worker, str(out))  # fails the test instead of hanging if any rank is left waiting
    return [torch.load(out / f"rank{rank}.pt") for rank in range(2)]


# The tiny every-4-steps schedule of these runs costs more than half the training time: warned once.
COSTLY = "fixed schedule would slow training"


def untimed(latest: list[dict]) -> list[dict]:
    """The per-step metrics without each rank's own probe timings (its own clock)."""
    return [{k: v for k, v in metrics.items() if not k.startswith("monitor/probe_")} for metrics in latest]


def test_a_failure_on_one_rank_fails_the_probe_on_every_rank_and_training_goes_on(ranks):
    for result in ranks:
        run = result["lanczos"]
        failed = [step for step, latest in enumerate(run["latest"], start=1) if latest.get("curvature/failed")]
        assert failed == [4, 8]
        assert "curvature/lambda_max" in run["latest"][11]  # step 12: measured again
        assert run["hvps"][3] == 3  # every rank stopped at the product that failed (the 3rd)
        assert run["hvps"][7] == 0  # the loss and gradient failed: no product at all
        # Training is exactly the run without the Monitor.
        assert all(torch.equal(a, b) for a, b in zip(run["params"], result["plain"]["params"]))
    rank0, rank1 = ranks[0]["lanczos"], ranks[1]["lanczos"]
    assert untimed(rank0["latest"]) == untimed(rank1["latest"]) and rank0["hvps"] == rank1["hvps"]
    # Every rank warns once per probe that failed: the failing rank with its own error.
    rank1_probe_warnings = [w for w in rank1["warnings"] if "cheap metrics fail" not in w and COSTLY not in w]
    assert len(rank1_probe_warnings) == 2 and "RuntimeError: boom on rank 1" in rank1_probe_warnings[0]
    assert "DistributedProbeError" in rank1_probe_warnings[1]
    rank0_probe_warnings = [w for w in rank0["warnings"] if COSTLY not in w]
    assert len(rank0_probe_warnings) == 2 and "DistributedProbeError" in rank0_probe_warnings[0]
    assert "RuntimeError: boom on rank 0" in rank0_probe_warnings[1]
    assert "failed on 1 of 2 ranks" in rank0_probe_warnings[0]


def test_a_failure_while_auto_times_the_methods_is_agreed_too(ranks):
    for result in ranks:
        run = result["auto"]
        assert run["latest"][3].get("curvature/failed") == 1.0
        assert "curvature/lambda_max" in run["latest"][7] and "curvature/lambda_max" in run["latest"][11]
        assert run["method"] == "double_backward"  # the same choice on both ranks (one rank could not time)
        assert all(torch.equal(a, b) for a, b in zip(run["params"], result["plain"]["params"]))
    assert untimed(ranks[0]["auto"]["latest"]) == untimed(ranks[1]["auto"]["latest"])
    assert any("boom on rank 1" in w for w in ranks[1]["auto"]["warnings"])
    assert any("DistributedProbeError" in w for w in ranks[0]["auto"]["warnings"])


def test_cheap_metrics_failing_on_one_rank_are_dropped_on_every_rank(ranks):
    for result in ranks:
        run = result["lanczos"]
        assert run["latest"][5] == {"metrics/failed": 1.0}  # step 6: nothing one rank alone measured
        assert "grad/norm" in run["latest"][4] and "grad/norm" in run["latest"][6]
    assert ranks[0]["lanczos"]["latest"][5] == ranks[1]["lanczos"]["latest"][5]
    assert any("cheap metrics fail on rank 1" in w for w in ranks[1]["lanczos"]["warnings"])
