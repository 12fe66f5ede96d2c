"""What one Hessian-vector product costs, in gradients, for each HVP method, side by side.

For each workload: the median time of one gradient (``loss.backward()``), then of one HVP by
double backward reusing the gradient graph (inside one solve), double backward building a fresh
graph, and forward-over-reverse; and the method ``method="auto"`` picks. Ratios are printed in one
table and written to ``benchmarks/results/hvp_cost.json``.

    python benchmarks/hvp_cost.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgewatch.curvature import HessianOperator
from edgewatch.curvature import hessian as hessian_module

RESULTS = Path(__file__).parent / "results" / "hvp_cost.json"


def digits_batch(n: int, images: bool = False):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data[:n] / 16.0, dtype=torch.float32)
    return (x.view(-1, 1, 8, 8) if images else x), torch.tensor(digits.target[:n])


def cross_entropy(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


class CausalBlock(nn.Module):
    """Embedding, one pre-LayerNorm attention block (SDPA) with MLP, and an output head."""

    def __init__(self, vocab=64, d=64, heads=4, seq=32):
        super().__init__()
        self.heads = heads
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Parameter(0.02 * torch.randn(seq, d))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        b, t = tokens.shape
        x = self.embed(tokens) + self.pos[:t]
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(self.ln1(x)).chunk(3, -1))
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1))
        return self.head(x + self.mlp(self.ln2(x)))


def next_token_loss(model, tokens):
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def workloads():
    torch.manual_seed(0)
    yield "mlp_digits", nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)), cross_entropy, digits_batch(512)
    cnn = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 64, 10),
    )
    yield "cnn_bn_digits", cnn, cross_entropy, digits_batch(256, images=True)
    tokens = torch.randint(0, 64, (16, 33), generator=torch.Generator().manual_seed(0))
    yield "causal_transformer", CausalBlock(), next_token_loss, tokens


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name, model, loss_fn, batch, repeats):
    n = sum(p.numel() for p in model.parameters())

    def gradient():
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()

    gradient_time = median_seconds(gradient, repeats)
    model.zero_grad(set_to_none=True)
    v = torch.randn(n, generator=torch.Generator().manual_seed(1))
    reused = HessianOperator(model, loss_fn, [batch], method="double_backward")
    with reused:  # one solve: the graph is built once, then reused
        reused_time = median_seconds(lambda: reused(v), repeats)
    fresh = HessianOperator(model, loss_fn, [batch], method="double_backward", reuse_graph=False)
    forward = HessianOperator(model, loss_fn, [batch], method="forward_over_reverse")
    hessian_module._AUTO_CHOICES.clear()
    auto = HessianOperator(model, loss_fn, [batch], method="auto")
    auto(v)
    return {
        "workload": name,
        "parameters": n,
        "gradient_ms": 1e3 * gradient_time,
        "hvp_per_gradient": {
            "double_backward_reused_graph": reused_time / gradient_time,
            "double_backward_fresh_graph": median_seconds(lambda: fresh(v), repeats) / gradient_time,
            "forward_over_reverse": median_seconds(lambda: forward(v), repeats) / gradient_time,
        },
        "auto_choice": auto.method,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"HVP cost in gradients (median of {args.repeats}); {machine}")
    header = f"{'workload':20} {'params':>8} {'grad ms':>8} {'db reused':>10} {'db fresh':>9} {'fwd∘rev':>8}  auto"
    print(header)
    rows = []
    for name, model, loss_fn, batch in workloads():
        row = measure(name, model, loss_fn, batch, args.repeats)
        ratios = row["hvp_per_gradient"]
        print(f"{name:20} {row['parameters']:>8} {row['gradient_ms']:>8.2f} "
              f"{ratios['double_backward_reused_graph']:>10.2f} {ratios['double_backward_fresh_graph']:>9.2f} "
              f"{ratios['forward_over_reverse']:>8.2f}  {row['auto_choice']}")
        rows.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine, "repeats": args.repeats, "results": rows}, indent=2))
    print(f"wrote {RESULTS}")
    assert all(math.isfinite(v) for row in rows for v in row["hvp_per_gradient"].values())


if __name__ == "__main__":
    main()
