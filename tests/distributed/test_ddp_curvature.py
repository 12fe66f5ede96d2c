"""Under DDP on 2 ranks, each with its own probe shard, curvature is that of the union of the shards.

The reference is the same operator in this (single) process on the union of the shards. Both ranks
must also agree bit for bit: they run the same Lanczos iterations on the same all-reduced products.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import cases
from edgewatch.curvature import HessianOperator, lanczos
from edgewatch.curvature import hessian as hessian_module
from edgewatch.hooks.config import CurvatureConfig
from edgewatch.hooks.meters.curvature import CurvatureMeter
from shards import probe_shard, union
from spawning import run_ranks

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def model(dtype: torch.dtype) -> nn.Module:
    return cases.mlp(seed=0, hidden=16, dtype=dtype)


class Attending(nn.Module):
    """Tokens through one attention call: the probe's logit statistics include attention logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embed, self.qkv, self.head = nn.Linear(64, 4 * 8), nn.Linear(8, 24), nn.Linear(8 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).view(-1, 4, 8)  # (batch, 4 tokens, 8)
        q, k, v = self.qkv(tokens).view(-1, 4, 3, 1, 8).unbind(2)  # (batch, 4, heads=1, 8) each
        out = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.head(out.transpose(1, 2).reshape(-1, 32))


def measure(rank: int | None, dtype: torch.dtype, wrap) -> dict:
    """Everything compared, on a rank's shard (``rank``) or on the union (``None``, one process)."""
    net = model(dtype)
    probe = union(dtype) if rank is None else probe_shard(rank, dtype)
    # One method on both sides, so the differences are those of the reduction alone.
    op = HessianOperator(wrap(net), cases.cross_entropy, probe, method="double_backward")
    top1 = lanczos(op, k=1, tol=TOL[dtype], max_hvps=200)
    top3 = lanczos(op, k=3, tol=TOL[dtype], max_hvps=200)
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(5), dtype=dtype)
    loss, gradient = op.loss_and_gradient()
    results = {
        "lambda_1": top1.eigenvalues, "top3": top3.eigenvalues, "vector": top1.eigenvectors[:, 0],
        "converged": top1.converged and top3.converged, "hvps": (top1.num_hvps, top3.num_hvps),
        "hv": op(v), "loss": loss, "gradient": gradient,
    }
    # "auto" times each method on each rank; the ranks must still agree on one.
    auto = HessianOperator(wrap(net), cases.cross_entropy, probe)
    results["auto"] = (lanczos(auto, k=1, tol=TOL[dtype], max_hvps=200).eigenvalues, auto.method)
    if dtype == torch.float32:  # the whole probe, logits and attention logits included
        attending = Attending()
        optimizer = torch.optim.SGD(attending.parameters(), lr=0.05, momentum=0.9)
        probe_ = CurvatureMeter(wrap(attending), optimizer, cases.cross_entropy, probe, CurvatureConfig(k=2, tol=1e-6, max_hvps=120))
        results["probe"] = {name: float(value) for name, value in probe_.measure().items()}
    return results


def _worker(rank: int, world_size: int, out: str) -> None:
    hessian_module._AUTO_TIMES_CPU = True  # "auto" measures, as on other devices: the ranks must agree
    results = {
        str(dtype): measure(rank, dtype, DistributedDataParallel) for dtype in (torch.float64, torch.float32)
    }
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_curvature")
    seconds = run_ranks(_worker, str(out))
    ranks = [torch.load(out / f"rank{rank}.pt") for rank in range(2)]
    single = {str(dtype): measure(None, dtype, lambda m: m) for dtype in (torch.float64, torch.float32)}
    return ranks, single, seconds


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def test_both_ranks_agree_bit_for_bit(runs):
    (rank0, rank1), _, _ = runs
    for dtype in rank0:
        for name in ("lambda_1", "top3", "vector", "hv", "loss", "gradient"):
            assert torch.equal(rank0[dtype][name], rank1[dtype][name]), (dtype, name)
        assert rank0[dtype]["hvps"] == rank1[dtype]["hvps"]
        assert rank0[dtype]["auto"][1] == rank1[dtype]["auto"][1]  # the same method chosen
        assert torch.equal(rank0[dtype]["auto"][0], rank1[dtype]["auto"][0])
    assert rank0["torch.float32"]["probe"] == rank1["torch.float32"]["probe"]


@pytest.mark.parametrize("dtype, bound", [("torch.float64", 1e-12), ("torch.float32", 2e-5)])
def test_distributed_curvature_equals_one_process_on_the_union(runs, dtype, bound):
    (rank0, _), single, seconds = runs
    got, want = rank0[dtype], single[dtype]
    assert got["converged"] and want["converged"]
    differences = {
        "lambda_1": (float((got["lambda_1"] - want["lambda_1"]).abs().max()), _relative(got["lambda_1"], want["lambda_1"])),
        "top3": (float((got["top3"] - want["top3"]).abs().max()), _relative(got["top3"], want["top3"])),
        "hv": (float((got["hv"] - want["hv"]).abs().max()), _relative(got["hv"], want["hv"])),
        "loss": (float((got["loss"] - want["loss"]).abs()), _relative(got["loss"], want["loss"])),
        "gradient": (float((got["gradient"] - want["gradient"]).abs().max()), _relative(got["gradient"], want["gradient"])),
    }
    # The numbers for the record: pytest -s shows them.
    print(f"\n{dtype}: lambda_1 {want['lambda_1'].tolist()} (one process) vs {got['lambda_1'].tolist()} (2 ranks); "
          f"top3 {want['top3'].tolist()}; (max abs, max rel) differences: {json.dumps(differences)}; "
          f"2-rank spawn {seconds:.1f} s")
    for name, (_, relative) in differences.items():
        assert relative <= bound, (name, differences[name])
    # The Ritz vector is the same direction (up to sign) as on one process.
    assert abs(float(got["vector"].double() @ want["vector"].double())) > 1 - 10 * bound
    # With "auto" (maybe another method than the reference's): the same eigenvalue, to the solver's tolerance.
    assert _relative(got["auto"][0], want["lambda_1"]) <= 10 * TOL[getattr(torch, dtype.split(".")[1])]


def test_the_whole_probe_with_logits_equals_one_process_on_the_union(runs):
    (rank0, _), single, _ = runs
    got, want = rank0["torch.float32"]["probe"], single["torch.float32"]["probe"]
    assert set(got) == set(want)
    assert {"logits/max", "logits/log_z_mean", "attn/max_logit", "attn/entropy_min", "curvature/lambda_2"} <= set(got)
    assert got["curvature/converged"] == want["curvature/converged"] == 1.0
    for name in want:  # residuals and HVP counts depend on rounding (and on the method "auto" picks)
        if not name.endswith(("residual", "hvps")):
            assert got[name] == pytest.approx(want[name], rel=2e-4, abs=1e-6), name
