"""The workloads, timing and machine description that the performance benchmarks share.

Four workloads, each one model, its loss ``loss_fn(model, batch)`` and ONE fixed batch (float32,
seeded, no downloads), as a :class:`Workload` ``(name, model, loss_fn, batch)``:

* ``mlp`` (26,122 parameters): 64-128-128-10 tanh MLP on 512 scikit-learn digits.
* ``cnn`` (151,306): conv 1→32→64 (3x3, ReLU, 2x2 max-pool), linear 1024→128→10, no BatchNorm
  (so that every peer handles it), on 128 digits as 1x8x8 images.
* ``transformer`` (470,784): 2-layer pre-LayerNorm causal transformer, d=128, 4 heads, SDPA under
  the math backend, on 8 x 64 byte tokens (vocab 256) of the Python standard library's source.
* ``large_mlp`` (4,349,962): 64-2048-2048-10 tanh MLP on all 1797 digits:
  ~1.2 s per HVP (double backward reusing the graph, one thread); ``rows=512``: ~0.26 s.

Every batch is ``(x, y)`` and every loss is the mean cross-entropy of ``model(x)`` against ``y``
(the transformer's logits ``(B, T, V)`` flattened to ``(B*T, V)``), so a peer that wants a module and
a criterion gets the same loss from :func:`as_supervised`. ``smoke=True`` builds tiny versions
(same code path, a few hundred to a few thousand parameters).

Timing: :func:`single_thread` (one torch thread, one BLAS thread via threadpoolctl) and
:func:`time_median` (warm-up calls, then the median wall time of several, with process CPU time
beside it to tell when the shared machine took the core away). :func:`machine` describes the machine.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import platform
import re
import statistics
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "NAMES",
    "Timing",
    "Workload",
    "as_supervised",
    "build",
    "build_all",
    "cross_entropy",
    "loadavg",
    "machine",
    "num_parameters",
    "single_thread",
    "time_median",
    "training_batch",
]

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[nn.Module, Batch], Tensor]
NAMES = ("mlp", "cnn", "transformer", "large_mlp")


class Workload(NamedTuple):
    """One benchmark problem: the same model, loss and batch for every tool."""

    name: str
    model: nn.Module
    loss_fn: LossFn
    batch: Batch


def cross_entropy(model: nn.Module, batch: Batch) -> Tensor:
    """Mean cross-entropy of ``model(x)`` against ``y``; sequence logits ``(B, T, V)`` are flattened."""
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- data ---------------------------------------------------------------------------------------
def _digits() -> tuple[Tensor, Tensor]:
    """All 1797 scikit-learn digits in a fixed shuffled order, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = torch.randperm(len(data.target), generator=torch.Generator().manual_seed(1234))
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)[order]
    return x, torch.tensor(data.target)[order]


def _stdlib_tokens(limit: int = 400_000) -> Tensor:
    """Bytes of the standard library's top-level ``*.py`` files, sorted by name: text that ships
    with every Python, so nothing is downloaded."""
    chunks, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        chunks.append(path.read_bytes())
        total += len(chunks[-1])
        if total >= limit:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)[:limit]), dtype=torch.uint8).long()


def _windows(tokens: Tensor, rows: int, seq: int, seed: int) -> Batch:
    starts = torch.randint(0, len(tokens) - seq - 1, (rows,), generator=torch.Generator().manual_seed(seed))
    windows = torch.stack([tokens[s : s + seq + 1] for s in starts.tolist()])  # (rows, seq + 1)
    return windows[:, :-1], windows[:, 1:]


# -- models -------------------------------------------------------------------------------------
def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def _cnn(c1: int, c2: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, c2, 4, 4)
        nn.Flatten(), nn.Linear(c2 * 16, hidden), nn.ReLU(), nn.Linear(hidden, 10),
    )


class Block(nn.Module):
    """Pre-LayerNorm causal self-attention and a GELU MLP; ``pin_math``: attention under the math
    kernel whatever the caller's context allows."""

    def __init__(self, d: int, heads: int, pin_math: bool = True) -> None:
        super().__init__()
        self.heads, self.pin_math = heads, pin_math
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(self.ln1(x)).chunk(3, -1))
        # The math kernel by default: the fused CPU kernels have neither double backward nor
        # forward-mode AD, and peers do not switch backends themselves.
        with sdpa_kernel([SDPBackend.MATH]) if self.pin_math else contextlib.nullcontext():
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, -1))
        return x + self.mlp(self.ln2(x))


class CausalTransformer(nn.Module):
    """Byte-level causal transformer: tokens ``(B, T)`` -> logits ``(B, T, vocab)``."""

    def __init__(self, vocab: int = 256, d: int = 128, layers: int = 2, heads: int = 4, seq: int = 64,
                 pin_math: bool = True) -> None:
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Parameter(0.02 * torch.randn(seq, d))
        self.blocks = nn.Sequential(*(Block(d, heads, pin_math) for _ in range(layers)))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.ln(self.blocks(self.embed(tokens) + self.pos[: tokens.shape[1]])))


# -- the workloads ------------------------------------------------------------------------------
# Sizes per workload: (full, smoke).
_SIZES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "mlp": ({"widths": [64, 128, 128, 10], "rows": 512}, {"widths": [64, 16, 10], "rows": 64}),
    "cnn": ({"channels": (32, 64), "hidden": 128, "rows": 128}, {"channels": (4, 8), "hidden": 16, "rows": 32}),
    "transformer": ({"d": 128, "layers": 2, "heads": 4, "seq": 64, "rows": 8},
                    {"d": 16, "layers": 1, "heads": 2, "seq": 16, "rows": 4}),
    "large_mlp": ({"widths": [64, 2048, 2048, 10], "rows": 1797}, {"widths": [64, 64, 64, 10], "rows": 256}),
}


def build(name: str, *, smoke: bool = False, seed: int = 0, rows: int | None = None) -> Workload:
    """A fresh workload ``name`` (one of :data:`NAMES`), at initialization with ``seed``.

    ``rows`` overrides the batch size (e.g. a cheaper ``large_mlp`` where a benchmark needs many HVPs).
    """
    if name not in _SIZES:
        raise ValueError(f"unknown workload {name!r}; choose one of {NAMES}")
    size = dict(_SIZES[name][1 if smoke else 0])
    if rows is not None:
        size["rows"] = rows
    torch.manual_seed(seed)
    if name == "transformer":
        model: nn.Module = CausalTransformer(d=size["d"], layers=size["layers"], heads=size["heads"], seq=size["seq"])
        batch = _windows(_stdlib_tokens(), size["rows"], size["seq"], seed=seed + 1)
    else:
        x, y = _digits()
        if name == "cnn":
            model = _cnn(*size["channels"], size["hidden"])
            x = x.view(-1, 1, 8, 8)
        else:
            model = _mlp(size["widths"])
        batch = (x[: size["rows"]], y[: size["rows"]])
    return Workload(name, model, cross_entropy, batch)


def build_all(*, smoke: bool = False, names: tuple[str, ...] = NAMES) -> Iterator[Workload]:
    """The workloads one at a time (the large one holds a few hundred MB of graph when probed)."""
    for name in names:
        yield build(name, smoke=smoke)


def training_batch(name: str, step: int, *, smoke: bool = False, rows: int = 64) -> Batch:
    """A deterministic training minibatch for workload ``name`` at ``step`` (same data source)."""
    size = _SIZES[name][1 if smoke else 0]
    if name == "transformer":
        return _windows(_stdlib_tokens(), min(rows, size["rows"]), size["seq"], seed=1000 + step)
    x, y = _digits()
    index = torch.randint(0, len(y), (rows,), generator=torch.Generator().manual_seed(1000 + step))
    return (x[index].view(-1, 1, 8, 8) if name == "cnn" else x[index]), y[index]


class _FlatLogits(nn.Module):
    """``model(x)`` with sequence logits ``(B, T, V)`` flattened to ``(B*T, V)``, sharing the
    model's parameters, so that ``criterion(module(x), y.reshape(-1))`` is our loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        return logits.reshape(-1, logits.shape[-1])


def as_supervised(workload: Workload) -> tuple[nn.Module, nn.Module, Batch]:
    """``(module, criterion, (x, y))`` for peers that take a model, a criterion and a batch, with
    ``criterion(module(x), y) == workload.loss_fn(workload.model, workload.batch)`` and the same
    parameters (the module wraps the model only when logits need flattening)."""
    x, y = workload.batch
    module = _FlatLogits(workload.model) if y.ndim > 1 else workload.model
    return module, nn.CrossEntropyLoss(), (x, y.reshape(-1))


# -- threads, timing, machine -------------------------------------------------------------------
@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One torch intra-op thread and one BLAS thread (threadpoolctl), for every tool alike.

    The machine has 2 cores shared with other work; scipy's BLAS threads also fight torch's
    (measured on a 26k-parameter MLP: 17 ms instead of 2 ms per HVP inside ``eigsh``).
    """
    os.environ["OMP_NUM_THREADS"] = "1"  # for anything started later; torch reads its own setting
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class Timing:
    """Wall seconds of each timed call, and process CPU seconds beside them."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_share(self) -> float:
        """CPU over wall time of the calls: well below 1 means the core was taken away (we run
        one thread, so 1 is all we can get)."""
        return sum(self.cpu) / max(sum(self.wall), 1e-12)

    def as_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "wall_s": self.wall, "cpu_s": self.cpu, "cpu_share": self.cpu_share}


def time_median(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> tuple[Timing, Any]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; the timing and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    timing = Timing()
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        timing.cpu.append(time.process_time() - cpu)
        timing.wall.append(time.perf_counter() - wall)
    return timing, result


def loadavg() -> float:
    """The 1-minute load average (NaN where /proc is missing)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return float(Path("/proc/loadavg").read_text().split()[0])
    return float("nan")


def machine() -> dict[str, Any]:
    """CPU model, cores, versions and thread settings, for the JSON of every benchmark."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        found = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu = found.group(1).strip() if found else cpu
    blas: list[dict[str, Any]] = []
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_info

        blas = [{"api": i.get("internal_api"), "threads": i.get("num_threads")} for i in threadpool_info()]
    import numpy
    import scipy

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "blas": blas,
        "loadavg": loadavg(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
