"""Shared test cases: small models, real data, and an independent dense-Hessian reference."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgewatch.hooks.detectors.base import Detector
from edgewatch.hooks.events import Event


@functools.lru_cache(maxsize=None)
def digits(n: int = 240) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n scikit-learn digits: 8x8 images scaled to [0, 1], labels 0-9."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data[:n] / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target[:n], dtype=torch.long)
    return x, y


def digits_probe(sizes=(140, 100), images: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive digits batches of the given (unequal, to exercise size weighting) sizes."""
    x, y = digits(sum(sizes))
    if images:
        x = x.view(-1, 1, 8, 8)
    batches, start = [], 0
    for size in sizes:
        batches.append((x[start : start + size], y[start : start + size]))
        start += size
    return batches


def cross_entropy(model: nn.Module, batch) -> torch.Tensor:
    inputs, targets = batch
    return F.cross_entropy(model(inputs), targets)


def mlp(seed: int = 0, hidden: int = 24, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10)).to(dtype)


def cnn_bn(seed: int = 0, dropout: float = 0.0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    layers = [
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Flatten(),
    ]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(6 * 4 * 4, 10))
    return nn.Sequential(*layers).to(dtype)


class Block(nn.Module):
    """A pre-LayerNorm causal transformer block over tokens, with a choice of attention kernel."""

    def __init__(self, vocab=17, d=16, heads=2, seq=10, sdpa=True, dropout=0.0):
        super().__init__()
        self.heads, self.sdpa, self.dropout = heads, sdpa, dropout
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(seq, d))
        self.ln1, self.ln2, self.ln_f = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, vocab)

    def attention(self, q, k, v):
        if self.sdpa:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        t = q.shape[-2]
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(-1) @ v

    def forward(self, tokens):
        b, t = tokens.shape
        x = self.embed(tokens) + self.pos[:t]
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        split = lambda z: z.view(b, t, self.heads, -1).transpose(1, 2)  # noqa: E731
        a = self.attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, t, -1)
        x = x + self.proj(a)
        x = x + self.mlp(self.ln2(x))
        return self.head(self.ln_f(x))


def block(seed: int = 0, dtype=torch.float32, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return Block(**kwargs).to(dtype)


def token_probe(batches=2, size=6, seq=10, vocab=17, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (size, seq + 1), generator=generator) for _ in range(batches)]


def next_token_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def dense_hessian(model: nn.Module, loss_fn, probe, train: bool = True, param_names=None) -> torch.Tensor:
    """The float64 Hessian of the size-weighted probe loss, by torch.autograd.functional.hessian.

    Independent of edgewatch's operators: its own flattening, its own weighting, and the model
    evaluated on a float64 deep copy (buffers copied, so BatchNorm may update them freely).
    """
    import copy

    model64 = copy.deepcopy(model).double().train(train)
    if train:  # batch statistics only: nothing to update, so the Hessian can be vectorized
        for module in model64.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.track_running_stats = False
                module.running_mean = module.running_var = module.num_batches_tracked = None
    named = dict(model64.named_parameters())
    names = list(param_names or [n for n, p in named.items() if p.requires_grad])
    shapes = [named[n].shape for n in names]
    flat = torch.cat([named[n].detach().reshape(-1) for n in names])
    sizes = np.array([len(b[0]) if isinstance(b, (tuple, list)) else len(b) for b in probe], dtype=float)
    weights = sizes / sizes.sum()

    def to64(batch):
        if isinstance(batch, (tuple, list)):
            return type(batch)(to64(t) for t in batch)
        return batch.double() if batch.is_floating_point() else batch

    def loss(theta):
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            count = int(np.prod(shape))
            params[name] = theta[start : start + count].view(shape)
            start += count
        total = 0.0
        for w, batch in zip(weights, probe):
            buffers = {n: b.clone() for n, b in model64.named_buffers()}
            total = total + w * loss_fn(_Call(model64, {**params, **buffers}), to64(batch))
        return total

    return torch.autograd.functional.hessian(loss, flat, vectorize=True)


class _Call(nn.Module):
    """Calls ``model`` with the given tensors in place of its own (functional_call per forward)."""

    def __init__(self, model, tensors):
        super().__init__()
        self._model, self._tensors = model, tensors

    def forward(self, *args):
        return torch.func.functional_call(self._model, self._tensors, args)


class ForcedAt(Detector):
    """A detector that emits one ``forced`` warning at a given step (for stop_on and resume tests)."""

    kinds = ("forced",)

    def __init__(self, step):
        self.step = step

    def update(self, metrics, step):
        return [Event(step, "forced", "warning", f"forced at step {step}")] if step == self.step else []


def tokens(count, seed):
    """``count`` rows of 12 random tokens below 64 (a tiny language-modelling batch), seeded."""
    return torch.randint(0, 64, (count, 12), generator=torch.Generator().manual_seed(seed))


def wandb_records(run_dir):
    """The records of an offline W&B run's ``run-<id>.wandb`` (LevelDB's log format: 32 KiB blocks
    of chunks behind 7-byte headers, after a 7-byte file header)."""
    import struct

    from wandb.proto.wandb_internal_pb2 import Record

    [path] = run_dir.glob("run-*.wandb")
    data, records, position, chunks = path.read_bytes(), [], 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunks += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            records.append(Record.FromString(chunks))
            chunks = b""
    return records
