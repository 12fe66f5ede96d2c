"""The data of the 2-rank tests: each rank's probe shard (unequal sizes and batch counts) and training batches."""

from __future__ import annotations

import torch

import cases

# rank -> batch sizes of its probe shard: the size weighting across ranks has to be right.
SHARD_SIZES = {0: (40, 24), 1: (56,)}
BATCH = 16  # training examples per rank and step


def probe_shard(rank: int, dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rank ``rank``'s probe batches: digits 1000-1119, split between the ranks."""
    x, y = cases.digits(1200)
    start = 1000 + sum(sum(SHARD_SIZES[r]) for r in range(rank))
    batches = []
    for size in SHARD_SIZES[rank]:
        batches.append((x[start : start + size].to(dtype), y[start : start + size]))
        start += size
    return batches


def union(dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every rank's probe batches in one list: what one process would be given."""
    return [batch for rank in sorted(SHARD_SIZES) for batch in probe_shard(rank, dtype)]


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s training batch at ``step`` (1-based); the ranks' batches together are the global batch."""
    x, y = cases.digits(1200)
    start = ((step - 1) * 2 + rank) * BATCH
    return x[start : start + BATCH], y[start : start + BATCH]
