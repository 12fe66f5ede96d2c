"""FSDP2 (fully_shard) on 2 gloo ranks: sharded Lanczos vectors, finite-difference HVPs through the
sharded passes, and a watched run that stays bit for bit the run it watches.

Each rank passes its own probe shard (unequal sizes and batch counts); the reference is one process
with the union of the shards and exact (double-backward) products on the unsharded model.
"""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
from torch import nn

import cases
from edgewatch.curvature import HessianOperator, lanczos
from edgewatch.curvature._krylov import LanczosProcess
from edgewatch.hooks.monitor import Monitor
from edgewatch.loggers import read_jsonl
from shards import batch, probe_shard, union
from spawning import run_ranks

STEPS = 6
REL = 1e-4  # the bound for finite-difference λ_1 in float32


def model() -> nn.Module:
    """64 → 16 → BatchNorm → 10: every parameter splits in half over 2 ranks, and a buffer a
    train-mode forward pass writes."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 10))


def sharded() -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    net = model()
    for layer in net:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(net)
    return net


def local_parts(net: nn.Module) -> list[torch.Tensor]:
    return [p.to_local().detach().clone() for p in net.parameters()]


def measure_operator(rank: int) -> dict:
    net = sharded()
    # The user's own gradient, sitting in .grad between backward and step: a probe must not touch it.
    cases.cross_entropy(net, batch(1, rank)).backward()
    user_grads = [p.grad for p in net.parameters()]
    grad_copies = [g.to_local().clone() for g in user_grads]
    params_before, buffers_before = local_parts(net), [b.clone() for b in net.buffers()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        op = HessianOperator(net, cases.cross_entropy, probe_shard(rank))
    notices = [str(w.message) for w in caught if "FSDP2" in str(w.message)]
    top1 = lanczos(op, k=1, tol=1e-6, max_hvps=200)
    top3 = lanczos(op, k=3, tol=1e-5, max_hvps=200)
    generator = torch.Generator().manual_seed(5 + rank)  # each rank its own part of one random vector
    v = torch.randn(op.local_size, generator=generator)
    loss, gradient = op.loss_and_gradient()
    process = LanczosProcess(op, v, generator=torch.Generator().manual_seed(0))
    process.step()
    results = {
        "lambda_1": top1.eigenvalues, "top3": top3.eigenvalues, "converged": (top1.converged, top3.converged),
        "residual": top1.residuals[0].item(), "fd_error": op.fd_error, "method": op.method, "notices": notices,
        "v": op.unflatten(v), "hv": op.unflatten(op(v)), "loss": loss, "gradient": op.unflatten(gradient),
        "size": op.size, "local_size": op.local_size, "basis_width": process.basis.shape[1],
        "grads_untouched": all(p.grad is g for p, g in zip(net.parameters(), user_grads))
        and all(torch.equal(g.to_local(), c) for g, c in zip(user_grads, grad_copies)),
        "params_untouched": all(torch.equal(a, b) for a, b in zip(local_parts(net), params_before)),
        "buffers_untouched": all(torch.equal(a, b) for a, b in zip(net.buffers(), buffers_before)),
    }
    try:
        HessianOperator(net, cases.cross_entropy, probe_shard(rank), method="double_backward")
    except ValueError as error:
        results["refused"] = str(error)
    return results


def train(rank: int, watched: bool) -> dict:
    net = sharded()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    monitor = None
    if watched:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the FSDP2 notice and the costly fixed schedule
            monitor = Monitor(net, optimizer, cases.cross_entropy, probe_shard(rank), curvature=2, every=1,
                              norms_every=1, k=2, run_dir=False)
    latest, grad_norms, full = [], [], {}
    for step in range(1, STEPS + 1):
        optimizer.zero_grad()
        loss = cases.cross_entropy(net, batch(step, rank))
        loss.backward()
        grad_norms.append(math.sqrt(sum(float(p.grad.full_tensor().double().pow(2).sum()) for p in net.parameters())))
        optimizer.step()
        if monitor is not None:
            latest.append(monitor.step(loss))
        full[step] = {name: p.full_tensor().detach().clone() for name, p in net.named_parameters()}
        full[step].update({name: b.clone() for name, b in net.named_buffers()})
    state = [t.to_local().clone() if hasattr(t, "to_local") else t.clone()
             for p in net.parameters() for t in optimizer.state[p].values()]
    return {"params": local_parts(net), "buffers": [b.clone() for b in net.buffers()], "state": state,
            "latest": latest, "grad_norm": grad_norms, "full": full}


def train_on_budget(rank: int, runs_root: str) -> dict:
    """The Monitor at its defaults (the budget schedule, θ_0 measured at attach), hooked into the
    optimizer: both ranks take the same curvature points, and only rank 0 writes a run directory."""
    os.environ["EDGEWATCH_DIR"] = runs_root
    net = sharded()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monitor = Monitor(net, optimizer, cases.cross_entropy, probe_shard(rank)).attach()
    for step in range(1, 9):
        optimizer.zero_grad()
        loss = cases.cross_entropy(net, batch(step, rank))
        loss.backward()
        monitor.observe(loss)
        optimizer.step()
    monitor.close()
    log_z = monitor.history["logits/log_z_mean"]
    return {"curvature_steps": list(monitor.history["curvature/lambda_max"].steps),
            "events": [(e.kind, e.step) for e in monitor.events], "logits": "logits/max" in monitor.latest,
            "log_z_mean_0": float(log_z.values[0]) if log_z.steps[0] == 0 else None}


def _worker(rank: int, world_size: int, out: str) -> None:
    results = {"operator": measure_operator(rank), "plain": train(rank, False), "watched": train(rank, True),
               "budget": train_on_budget(rank, os.path.join(out, "runs"))}
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    run_ranks(_worker, str(out))
    results = [torch.load(out / f"rank{rank}.pt") for rank in range(2)]
    results[0]["runs"] = sorted((out / "runs").iterdir())
    return results


def test_at_its_defaults_the_monitor_agrees_across_ranks_and_rank_0_logs(ranks):
    rank0, rank1 = ranks[0]["budget"], ranks[1]["budget"]
    print(f"curvature points at steps {rank0['curvature_steps']}")
    assert rank0["curvature_steps"][0] == 0 and rank0["curvature_steps"] == rank1["curvature_steps"]
    assert rank0["events"] == rank1["events"] and rank0["logits"]
    assert len(ranks[0]["runs"]) == 1  # one run directory, rank 0's
    steps = [record["step"] for record in read_jsonl(ranks[0]["runs"][0] / "metrics.jsonl")]
    assert steps[0] == 0


def test_logit_statistics_are_those_of_the_union_batches(ranks):
    """Rank 1 holds one probe batch to rank 0's two, and runs a padding pass to keep FSDP2's
    collectives in step: that pass is not a batch of the probe, and the mean log Z leaves it out."""
    from edgewatch.hooks.meters.logits import LogitRecorder

    net = model()
    recorder = LogitRecorder(net)
    with torch.no_grad(), recorder.recording():
        for batch in union():
            net(batch[0])
    expected = float(recorder.metrics()["logits/log_z_mean"])
    for result in ranks:
        assert result["budget"]["log_z_mean_0"] == pytest.approx(expected, rel=1e-5)


def whole(parts_by_rank: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """The flat vector of the unsharded model from each rank's parameter-shaped parts (Shard(0): rank
    r holds the r-th block of rows of every parameter)."""
    return torch.cat([torch.cat(pieces).reshape(-1) for pieces in zip(*parts_by_rank)])


@pytest.fixture(scope="module")
def reference():
    """One process on the union: exact products, and finite differences like the sharded ranks'."""
    exact = HessianOperator(model(), cases.cross_entropy, union(), method="double_backward")
    differences = HessianOperator(model(), cases.cross_entropy, union(), method="finite_difference")
    return {"op": exact, "exact": lanczos(exact, k=1, tol=1e-10, max_hvps=300),
            "top3": lanczos(exact, k=3, tol=1e-10, max_hvps=300),
            "fd": lanczos(differences, k=1, tol=1e-6, max_hvps=200), "fd_top3": lanczos(differences, k=3, tol=1e-5, max_hvps=200)}


def test_sharded_lambda_1_and_top_3_match_one_process_on_the_union(ranks, reference):
    """Sharding changes nothing but the order of sums: λ_1 within 1e-4 of one process's finite
    differences on the union, and within 1e-4 (and its reported bound) of the exact value."""
    exact, alone = reference["exact"].eigenvalues[0].item(), reference["fd"].eigenvalues[0].item()
    for result in (r["operator"] for r in ranks):
        sharded = result["lambda_1"][0].item()
        top3 = ((result["top3"] - reference["fd_top3"].eigenvalues).abs() / reference["fd_top3"].eigenvalues).tolist()
        print(f"λ_1 sharded {sharded:.6f}, one process {alone:.6f} (relative {abs(sharded - alone) / alone:.1e}), "
              f"exact {exact:.6f} (relative {abs(sharded - exact) / exact:.1e}, bound {result['residual']:.1e}); "
              f"top-3 vs one process {[f'{e:.1e}' for e in top3]}; fd_error {result['fd_error']:.1e}")
        assert result["converged"] == (True, True) and result["method"] == "finite_difference"
        assert abs(sharded - alone) <= REL * alone and max(top3) <= 1e-3
        assert abs(sharded - exact) <= min(result["residual"], REL * exact)
        top3_exact = (result["top3"] - reference["top3"].eigenvalues).abs() / reference["top3"].eigenvalues
        assert float(top3_exact.max()) <= 2 * result["fd_error"]
    rank0, rank1 = ranks[0]["operator"], ranks[1]["operator"]  # the same iterations on all-reduced numbers
    assert torch.equal(rank0["lambda_1"], rank1["lambda_1"]) and torch.equal(rank0["top3"], rank1["top3"])


def test_a_sharded_product_and_gradient_are_the_unsharded_ones(ranks, reference):
    op = reference["op"]
    ranks = [r["operator"] for r in ranks]
    v = whole([result["v"] for result in ranks])
    hv = whole([result["hv"] for result in ranks])
    exact = op(v)
    relative = float((hv - exact).norm() / exact.norm())
    print(f"sharded finite-difference Hv vs exact: relative {relative:.1e}")
    assert relative <= 10 * ranks[0]["fd_error"] + 1e-6
    loss, gradient = op.loss_and_gradient()
    assert whole([result["gradient"] for result in ranks]) == pytest.approx(gradient, abs=1e-6)
    assert all(result["loss"].item() == pytest.approx(loss.item(), rel=1e-6) for result in ranks)


def test_each_rank_holds_half_of_every_vector(ranks):
    for rank, result in enumerate(r["operator"] for r in ranks):
        per_rank, whole_bytes = 4 * result["basis_width"], 4 * result["size"]
        print(f"rank {rank}: a Lanczos vector takes {per_rank} bytes here, {whole_bytes} in one process")
        assert result["basis_width"] == result["local_size"] and 2 * result["local_size"] == result["size"]


def test_a_sharded_probe_leaves_grads_parameters_and_buffers_alone(ranks):
    for result in (r["operator"] for r in ranks):
        assert result["grads_untouched"] and result["params_untouched"] and result["buffers_untouched"]
        assert len(result["notices"]) == 1  # "auto" says once that it takes finite differences
        assert "finite_difference" in result["refused"]  # double backward cannot run on FSDP2


def test_watching_an_fsdp2_run_changes_nothing(ranks):
    for result in ranks:
        plain, watched = result["plain"], result["watched"]
        for key in ("params", "buffers", "state"):
            assert all(torch.equal(a, b) for a, b in zip(plain[key], watched[key])), key


def test_the_monitor_on_fsdp2_reports_whole_model_metrics(ranks):
    rank0, rank1 = ranks[0]["watched"], ranks[1]["watched"]
    for step, (mine, theirs) in enumerate(zip(rank0["latest"], rank1["latest"]), start=1):
        # the norms are of the whole (unsharded) gradient: FSDP2's mean over the ranks
        assert mine["grad/norm"] == pytest.approx(rank0["grad_norm"][step - 1], rel=1e-5), step
        assert mine["grad/norm"] == pytest.approx(theirs["grad/norm"], rel=1e-6)
        assert mine["param/norm"] == pytest.approx(theirs["param/norm"], rel=1e-6)
        if step % 2 == 0:
            for key in ("curvature/lambda_max", "curvature/lambda_2", "curvature/precond/lambda_max",
                        "curvature/stability_ratio", "curvature/gradient_overlap"):
                assert key in mine and mine[key] == theirs[key], (step, key)
    # λ_1 of the whole model at those parameters, by one process on the union with exact products
    for step in (2, 4, 6):
        net = model()
        net.load_state_dict(rank0["full"][step])
        exact = lanczos(HessianOperator(net, cases.cross_entropy, union(), method="double_backward"), k=1, tol=1e-10)
        measured = rank0["latest"][step - 1]["curvature/lambda_max"]
        print(f"step {step}: Monitor λ_1 {measured:.6f}, one process {exact.eigenvalues[0].item():.6f}")
        assert measured == pytest.approx(exact.eigenvalues[0].item(), rel=2e-3)  # the Monitor's tol=1e-3
