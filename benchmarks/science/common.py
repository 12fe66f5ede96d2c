"""What the science benchmarks share: data, small models, a watched training loop, and the result record.

Every benchmark script under ``benchmarks/science/`` trains with an ``edgewatch.Monitor`` attached
(its JSONL run directory under ``<out>/runs/<benchmark>/``), reads back what the Monitor wrote,
checks the paper's criterion on it, and writes ``<out>/<benchmark>.json`` and ``<out>/<benchmark>.png``.
The JSON holds one *finding* per criterion (:func:`finding`); ``run_all.py`` gathers them into
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import edgewatch as ew
from edgewatch.loggers import read_jsonl
from edgewatch.loggers.jsonl import jsonable

RESULTS_DIR = Path(__file__).parents[1] / "results" / "science"
SMOKE_DIR = RESULTS_DIR.with_name("science-smoke")

Batch = tuple[torch.Tensor, torch.Tensor]


# -- command line and results ------------------------------------------------------------------
def parse_args(description: str, argv: Sequence[str] | None = None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """``--out``, ``--smoke`` (a few steps: the test suite's run), ``--seed``.

    ``--out`` defaults to ``benchmarks/results/science``, or with ``--smoke`` to
    ``benchmarks/results/science-smoke``, so that a smoke run never replaces a full run's results.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results directory (default {RESULTS_DIR}, {SMOKE_DIR.name} with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="a few steps of each run: checks the script works, not the science")
    parser.add_argument("--seed", type=int, default=0)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = SMOKE_DIR if args.smoke else RESULTS_DIR
    torch.set_num_threads(1)  # small models: one thread is fastest, and the timings in RESULTS.md are so
    return args


def finding(phenomenon: str, paper: str, setting: str, criterion: str, measured: str, passed: bool,
            **details: Any) -> dict[str, Any]:
    """One row of RESULTS.md: what was checked, on what, the number measured and whether it passed."""
    return {"phenomenon": phenomenon, "paper": paper, "setting": setting, "criterion": criterion,
            "measured": measured, "passed": bool(passed), **details}


def write_results(out: Path, name: str, findings: list[dict[str, Any]], runs: dict[str, Any],
                  seconds: float, smoke: bool, notes: str = "") -> Path:
    """``<out>/<name>.json``: the findings, the per-run series the figure was drawn from, and the machine."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "smoke": smoke,
        "seconds": round(seconds, 1),
        "machine": machine(),
        "findings": findings,
        "notes": notes,
        "figure": f"{name}.png",
        "runs": runs,
    }
    path = out / f"{name}.json"
    path.write_text(json.dumps(jsonable(payload), indent=1) + "\n", encoding="utf-8")
    return path


def machine() -> dict[str, Any]:
    """Versions, cores, and the commit the results come from (``+dirty`` with uncommitted changes)."""
    return {"python": platform.python_version(), "torch": torch.__version__, "edgewatch": ew.__version__,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform(),
            "commit": _commit(), "date": time.strftime("%Y-%m-%d")}


def _commit() -> str:
    root = Path(__file__).parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "edgewatch", "benchmarks/science"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def print_findings(findings: Iterable[dict[str, Any]]) -> None:
    for row in findings:
        mark = "PASS" if row["passed"] else "FAIL"
        print(f"  [{mark}] {row['setting']}: {row['measured']}  (criterion: {row['criterion']})", flush=True)


class Stopwatch:
    """Wall and process CPU time since it was made (on a shared machine the CPU time is the steadier)."""

    def __init__(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds)."""
        return time.perf_counter() - self._wall, time.process_time() - self._cpu


def finish(args: argparse.Namespace, name: str, findings: list[dict[str, Any]], runs: dict[str, Any],
           seconds: float, notes: str = "", cpu: float | None = None) -> int:
    """The end of every benchmark's ``main()``: its JSON written, its findings and timing printed; 0."""
    write_results(args.out, name, findings, runs=runs, seconds=seconds, smoke=args.smoke, notes=notes)
    print_findings(findings)
    used = f"{seconds:.0f} s wall" + ("" if cpu is None else f", {cpu:.0f} s CPU")
    print(f"{name}: {used}; figure {args.out / (name + '.png')}", flush=True)
    return 0


# -- data and models -------------------------------------------------------------------------
def digits(n: int = 1000, *, images: bool = False, seed: int = 1234) -> Batch:
    """``n`` scikit-learn digits (a fixed random subset), pixels standardized; images as 1×8×8 if asked."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = torch.randperm(len(data.target), generator=torch.Generator().manual_seed(seed))[:n]
    x = torch.tensor(data.data, dtype=torch.float32)[order]
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = torch.tensor(data.target)[order]
    return (x.view(-1, 1, 8, 8) if images else x), y


def random_labels(targets: torch.Tensor, share: float, seed: int = 7) -> torch.Tensor:
    """``share`` of the labels replaced by uniformly random classes, the same ones every run.

    Noisy labels keep the loss from collapsing early on digits, as CIFAR's difficulty does in the
    papers, so that sharpening has time to reach the threshold.
    """
    generator = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(targets), generator=generator) < share
    return torch.where(flip, torch.randint(0, 10, targets.shape, generator=generator), targets)


ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


def mlp(activation: str = "tanh", widths: Sequence[int] = (64, 200, 200, 10), *, seed: int = 0,
        norm: str | None = None) -> nn.Sequential:
    """A fully connected network (PyTorch's default initialization); ``norm``: ``"batch"`` or ``"layer"`` before each activation."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths[:-1]):
        layers.append(nn.Linear(fan_in, fan_out))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(fan_out))
        elif norm == "layer":
            layers.append(nn.LayerNorm(fan_out))
        layers.append(ACTIVATIONS[activation]())
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers)


def cnn(activation: str = "relu", channels: int = 16, *, seed: int = 0) -> nn.Sequential:
    """Two 3×3 convolutions on 8×8 digits, then a linear head."""
    torch.manual_seed(seed)
    act = ACTIVATIONS[activation]
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), act(),
        nn.Conv2d(channels, channels, 3, padding=1), act(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(channels * 16, 10),
    )


def mse(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Square loss against one-hot targets, ½‖f(x) − e_y‖² averaged over examples (Cohen et al. 2021)."""
    inputs, targets = batch
    outputs = model(inputs)
    return 0.5 * (outputs - F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype)).pow(2).sum(-1).mean()


def cross_entropy(model: nn.Module, batch: Batch) -> torch.Tensor:
    inputs, targets = batch
    return F.cross_entropy(model(inputs), targets)


LOSSES = {"mse": mse, "ce": cross_entropy}


# -- a watched run -----------------------------------------------------------------------------
def watched_run(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, batch: Any, steps: int,
                run_dir: Path, *, probe: list | None = None, curvature: ew.Schedule | int = 10,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, next_batch: Callable[[int], Any] | None = None,
                label: str = "", **monitor_kwargs: Any) -> dict[str, Any]:
    """Train ``steps`` steps with the Monitor attached; return what it wrote, read back from the run directory.

    Full-batch gradient descent by default (``batch`` every step); ``next_batch(step)`` gives
    minibatches instead. ``probe`` defaults to ``[batch]``. A non-finite loss stops the run.

    Returns ``{"metrics": [...], "events": [...], "steps": n, "stopped": kind or None, "seconds": s}``.
    """
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a benchmark run starts afresh (the logger would resume it)
    # A reproduction reads every step's loss and norms, whatever they cost: every=1, norms_every=1;
    # and its dense curvature schedules cost more than training, which the Monitor would warn about.
    monitor_kwargs = {"every": 1, "norms_every": 1, **monitor_kwargs}
    warnings.filterwarnings("ignore", message="edgewatch: one curvature probe takes")
    monitor = ew.Monitor(model, optimizer, loss_fn, probe=probe if probe is not None else [batch], run_dir=run_dir,
                         curvature=curvature, stop_on=["nonfinite"], **monitor_kwargs)
    start, stopped = time.perf_counter(), None
    monitor.attach()
    try:
        for step in range(steps):
            data = next_batch(step) if next_batch is not None else batch
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, data)
            monitor.observe(loss)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
    except ew.StopTraining as stop:
        stopped = stop.event.kind
    finally:
        monitor.close()
    seconds = time.perf_counter() - start
    metrics = list(read_jsonl(run_dir / "metrics.jsonl"))
    events = list(read_jsonl(run_dir / "events.jsonl")) if (run_dir / "events.jsonl").exists() else []
    if label:
        end = f"stopped at step {monitor.step_count} ({stopped})" if stopped else f"{monitor.step_count} steps"
        print(f"  {label:<40} {end:<28} {seconds:6.1f} s", flush=True)
    return {"metrics": metrics, "events": events, "steps": monitor.step_count, "stopped": stopped, "seconds": seconds}


@dataclass(frozen=True)
class Sharpening:
    """The curvature probes of one run, and where λ_1 first reached ``reached``·c/η (Cohen et al. 2021).

    ``steps``, ``sharpness`` (λ_1), ``ratios`` (r = η·λ_1/c) come from the same probe records, so
    they stay aligned when a probe failed; ``threshold`` is the last logged c/η; ``reach`` is the
    index of the first probe with λ_1 ≥ reached·c/η (None if none), and ``sharpened`` says λ_1
    started below that and got there: progressive sharpening.
    """

    steps: list[int]
    sharpness: list[float]
    ratios: list[float]
    threshold: float
    reach: int | None
    sharpened: bool


def sharpening(metrics: Sequence[dict[str, Any]], reached: float = 0.9) -> Sharpening:
    """:class:`Sharpening` from the Monitor's records (``curvature/lambda_max``, ``/threshold``, ``/stability_ratio``)."""
    rows = [m for m in metrics if all(k in m for k in ("curvature/lambda_max", "curvature/threshold", "curvature/stability_ratio"))]
    sharpness = [m["curvature/lambda_max"] for m in rows]
    threshold = rows[-1]["curvature/threshold"] if rows else math.nan
    reach = next((i for i, value in enumerate(sharpness) if value >= reached * threshold), None)
    return Sharpening([m["step"] for m in rows], sharpness, [m["curvature/stability_ratio"] for m in rows], threshold,
                      reach, reach is not None and sharpness[0] < reached * threshold)


def sharpness_series(metrics: Sequence[dict[str, Any]]) -> dict[str, list]:
    """λ_1 and r at the curvature probes and the loss at every step: what a Cohen et al. figure draws."""
    probe_steps, sharpness = series(metrics, "curvature/lambda_max")
    loss_steps, losses = series(metrics, "loss")
    return {"probe_steps": probe_steps, "lambda": rounded(sharpness),
            "ratio": rounded(series(metrics, "curvature/stability_ratio")[1], 4),
            "loss_steps": loss_steps, "loss": losses}


def thin_loss(run: dict[str, Any], points: int = 300) -> None:
    """Keep about ``points`` of ``run``'s loss series (rounded): the JSON stays small, the figure had them all."""
    stride = max(1, len(run["loss_steps"]) // points)
    run["loss_steps"], run["loss"] = run["loss_steps"][::stride], rounded(run["loss"][::stride])


def series(metrics: Sequence[dict[str, Any]], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, where it was measured."""
    pairs = [(m["step"], m[name]) for m in metrics if name in m]
    return [s for s, _ in pairs], [v for _, v in pairs]


def rounded(values: Sequence[float], digits: int = 5) -> list[float]:
    """``values`` to ``digits`` significant digits (non-finite ones as they are): small JSON, same figures."""
    return [float(f"{v:.{digits}g}") if math.isfinite(v) else v for v in values]


def fraction_within(values: Sequence[float], target: float, rel: float) -> float:
    """The fraction of ``values`` within ±``rel`` of ``target`` (NaN counts as outside)."""
    if not values:
        return math.nan
    return sum(abs(v - target) <= rel * abs(target) for v in values if not math.isnan(v)) / len(values)


def save_figure(fig: Any, path: Path, rect: tuple[float, float, float, float] | None = None, dpi: int = 110) -> None:
    """Lay the figure out (within ``rect``), write it to ``path`` and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout(**({} if rect is None else {"rect": rect}))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def require_matplotlib():
    """pyplot with a file backend, or exit with the extra to install."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        sys.exit("the science benchmarks draw figures: pip install 'edgewatch[plot]'")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
