"""The Monitor on a 2-rank DDP run: training unchanged, one writer, the same metrics on every rank,
collectives only on measured steps; and one clear error for parameters sharded other than by FSDP2."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import cases
from edgewatch import Monitor, Schedule
from edgewatch.curvature import HessianOperator
from edgewatch.loggers import read_jsonl
from shards import batch, probe_shard
from spawning import run_ranks

STEPS = 20
CHEAP, CURVATURE = 3, 5  # cheap metrics every 3 steps, curvature every 5: some steps have neither
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_single", "broadcast", "reduce",
               "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "barrier", "gather", "scatter",
               "all_gather_object", "broadcast_object_list")


def _count_collectives(counter: list[int]) -> None:
    """Count every torch.distributed collective called from Python (edgewatch's; DDP's own run in C++)."""
    for name in COLLECTIVES:
        original = getattr(dist, name, None)
        if original is None:
            continue

        def counted(*args, _original=original, **kwargs):
            counter[0] += 1
            return _original(*args, **kwargs)

        setattr(dist, name, counted)


def train(rank: int, watch: bool, counter: list[int]) -> dict:
    model = cases.mlp(seed=0, hidden=16)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.3, momentum=0.9)
    monitor = None
    if watch:
        monitor = Monitor(ddp, optimizer, cases.cross_entropy, probe_shard(rank), every=CHEAP,
                          curvature=Schedule(every=CURVATURE), k=2, tol=1e-4, max_hvps=30).attach()
    record = {"collectives": [], "latest": [], "local_loss": [], "grad_norm": [], "events": []}
    for step in range(1, STEPS + 1):
        before = counter[0]
        optimizer.zero_grad()
        loss = cases.cross_entropy(ddp, batch(step, rank))
        if monitor is not None:
            monitor.observe(loss)
        loss.backward()
        # DDP has all-reduced .grad: the gradient of the global batch, on every rank.
        record["grad_norm"].append(math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters())))
        optimizer.step()  # the attached Monitor measures here
        record["collectives"].append(counter[0] - before)
        record["local_loss"].append(float(loss))
        if monitor is not None:
            record["latest"].append(monitor.latest)
            monitor.latest = {}  # so that a step which measures nothing shows as empty
    if monitor is not None:
        record["events"] = [(e.step, e.kind) for e in monitor.events]
        record["run_dir"] = None if monitor.run_dir is None else str(monitor.run_dir)
        record["loggers"] = [lg.name for lg in monitor.logger.loggers]
        monitor.close()
    record["params"] = [p.detach().clone() for p in model.parameters()]
    record["buffers_and_state"] = [s["momentum_buffer"].clone() for s in optimizer.state.values()]
    return record


def train_on_budget(rank: int, steps: int = 160) -> dict:
    """The defaults (curvature placed by the budget) and every=None (cheap metrics thinned by it),
    with rank 1 slower between steps: each rank's clock differs, their decisions must not."""
    import time

    model = cases.mlp(seed=0, hidden=16)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.3, momentum=0.9)
    # a generous budget, so that the early points and later ones are placed by each rank's timings, even on a loaded machine
    monitor = Monitor(ddp, optimizer, cases.cross_entropy, probe_shard(rank), every=None, budget=0.9, run_dir=False).attach()
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        loss = cases.cross_entropy(ddp, batch(step, rank))
        monitor.observe(loss)
        loss.backward()
        if rank == 1:
            time.sleep(0.002)
        optimizer.step()
    monitor.close()
    return {"curvature_steps": list(monitor.history["curvature/lambda_max"].steps),
            "streamed": list(monitor.history["curvature/streamed"].values),
            "cheap_steps": list(monitor.history["lr"].steps),
            "params": [p.detach().clone() for p in model.parameters()]}


def sharding_errors() -> dict[str, str]:
    """Parameters made DTensors without FSDP2 (here replicated by distribute_module, as tensor
    parallelism would shard them): the Monitor and the operator refuse them, clearly."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_module

    model = distribute_module(cases.mlp(seed=0, hidden=16), init_device_mesh("cpu", (2,)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    errors = {}
    for name, build in {"monitor": lambda: Monitor(model, optimizer, cases.cross_entropy, probe_shard(0)),
                        "operator": lambda: HessianOperator(model, cases.cross_entropy, probe_shard(0))}.items():
        try:
            build()
            errors[name] = "no error"
        except NotImplementedError as error:
            errors[name] = str(error)
    return errors


def _worker(rank: int, world_size: int, out: str, runs_root: str) -> None:
    os.environ["EDGEWATCH_DIR"] = runs_root  # the same default root on both ranks, as in a real job
    counter = [0]
    _count_collectives(counter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = {"plain": train(rank, False, counter), "watched": train(rank, True, counter),
                   "budget": train_on_budget(rank)}
    results["warnings"] = [str(w.message) for w in caught if "edgewatch" in str(w.message)]
    results["sharded"] = sharding_errors()
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_monitor")
    runs_root = out / "runs"
    run_ranks(_worker, str(out), str(runs_root))
    return [torch.load(out / f"rank{rank}.pt") for rank in range(2)], runs_root


def test_watching_a_ddp_run_changes_nothing(ranks):
    results, _ = ranks
    for rank, result in enumerate(results):
        plain, watched = result["plain"], result["watched"]
        difference = max(float((a - b).abs().max()) for a, b in zip(plain["params"], watched["params"]))
        print(f"rank {rank}: max |parameter difference| with and without the Monitor after {STEPS} DDP steps: {difference}")
        assert difference == 0.0
        assert all(torch.equal(a, b) for a, b in zip(plain["buffers_and_state"], watched["buffers_and_state"]))
        assert plain["local_loss"] == watched["local_loss"]
    # the one warning allowed: this test's every-5-steps schedule costs more than half the training time
    costly = "fixed schedule would slow training"
    assert not [w for result in results for w in result["warnings"] if costly not in w]
    assert all(torch.equal(a, b) for a, b in zip(results[0]["watched"]["params"], results[1]["watched"]["params"]))


def test_ranks_with_different_clocks_take_the_budgets_decisions_together(ranks):
    results, _ = ranks
    rank0, rank1 = results[0]["budget"], results[1]["budget"]
    print(f"curvature at {rank0['curvature_steps']}, cheap metrics on {len(rank0['cheap_steps'])} of 160 steps")
    assert rank0["curvature_steps"][:5] == [0, 3, 10, 30, 100] and len(rank0["curvature_steps"]) > 5
    for key in ("curvature_steps", "streamed", "cheap_steps"):
        assert rank0[key] == rank1[key], key
    assert all(torch.equal(a, b) for a, b in zip(rank0["params"], rank1["params"]))


def test_only_rank_0_writes_the_run_directory(ranks):
    results, runs_root = ranks
    written = sorted(path.name for path in runs_root.iterdir())
    assert len(written) == 1, written  # rank 0's run directory and nothing else
    run_dir = runs_root / written[0]
    assert results[0]["watched"]["run_dir"] == str(run_dir) and results[0]["watched"]["loggers"] == ["jsonl"]
    assert results[1]["watched"]["run_dir"] is None and results[1]["watched"]["loggers"] == []
    steps = [record["step"] for record in read_jsonl(run_dir / "metrics.jsonl")]
    assert steps == [s for s in range(1, STEPS + 1) if s % CHEAP == 0 or s % CURVATURE == 0]
    meta = (run_dir / "meta.json").read_text()
    assert '"world_size": 2' in meta and '"class": "Sequential"' in meta


def test_every_rank_holds_the_same_metrics_and_events(ranks):
    results, _ = ranks
    rank0, rank1 = results[0]["watched"], results[1]["watched"]
    for step, (mine, theirs) in enumerate(zip(rank0["latest"], rank1["latest"]), start=1):
        measured = step % CHEAP == 0 or step % CURVATURE == 0
        assert bool(mine) == measured, step
        timings = {key for key in mine if key.startswith("monitor/probe_")}  # each rank's own clock
        assert {k: v for k, v in mine.items() if k not in timings} == {k: v for k, v in theirs.items() if k not in timings}, step
        if step % CHEAP == 0:  # the loss is the mean of the ranks' losses
            local = (rank0["local_loss"][step - 1] + rank1["local_loss"][step - 1]) / 2
            assert mine["loss"] == pytest.approx(local, rel=1e-6)
        if step % CURVATURE == 0:
            assert mine["curvature/converged"] == 1.0 and "logits/max" in mine and "curvature/lambda_2" in mine
    assert rank0["events"] == rank1["events"]


def test_collectives_only_on_measured_steps(ranks):
    results, _ = ranks
    for result in results:
        assert result["plain"]["collectives"] == [0] * STEPS  # DDP's own all-reduces run in C++, uncounted
        counts = result["watched"]["collectives"]
        for step, count in enumerate(counts, start=1):
            if step % CURVATURE == 0:
                assert count >= 4, (step, count)  # loss and gradient, logits, one per product
            elif step % CHEAP == 0:
                assert count == 1, (step, count)  # the loss, averaged over the ranks
            else:
                assert count == 0, (step, count)
    assert results[0]["watched"]["collectives"] == results[1]["watched"]["collectives"]


def test_gradient_norm_is_the_global_one(ranks):
    """grad/norm on every rank is the norm of DDP's all-reduced gradient (read after DDP's end of backward)."""
    results, _ = ranks
    checked = 0
    for result in results:
        watched = result["watched"]
        for step, latest in enumerate(watched["latest"], start=1):
            if "grad/norm" in latest:
                assert latest["grad/norm"] == pytest.approx(watched["grad_norm"][step - 1], rel=1e-5), step
                checked += 1
    assert checked == 2 * (STEPS // CHEAP)


def test_the_union_gradient_is_what_ddp_holds(ranks):
    """The reference the gradient-norm test uses: DDP's .grad at step 1 is the gradient of the union batch."""
    results, _ = ranks
    model = cases.mlp(seed=0, hidden=16)
    x = torch.cat([batch(1, 0)[0], batch(1, 1)[0]])
    y = torch.cat([batch(1, 0)[1], batch(1, 1)[1]])
    cases.cross_entropy(model, (x, y)).backward()
    union = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()))
    for result in results:
        assert result["watched"]["grad_norm"][0] == pytest.approx(union, rel=1e-6)


def test_dtensor_parameters_outside_fsdp2_are_refused_with_one_clear_error(ranks):
    results, _ = ranks
    for result in results:
        errors = result["sharded"]
        assert errors["monitor"] == errors["operator"]
        assert "0.weight is a DTensor outside FSDP2" in errors["operator"] and "fully_shard" in errors["operator"]
