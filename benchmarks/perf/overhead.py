"""What the Monitor costs at its defaults, and what streaming buys.

The question. ``ew.Monitor(model, optimizer, loss_fn, probe=[batch])`` at its defaults keeps its own
wall time within an overhead budget (``budget=0.05``: 5% of the training loop's) and places the
curvature probes itself (``curvature="budget"``): a full Lanczos solve of λ_1 at attach time (step
0), points at steps 3, 10, 30 and 100 when they fit, then as the budget allows, with cheap "streamed"
λ_1 points (a few HVPs refreshing the kept eigenvector) between full solves. Does it keep the
budget on real training loops, how densely does it sample λ_1, and are the streamed points right?

The setting. Three workloads, minibatch training from the same initialization (seed 0), one torch
thread and one BLAS thread, float32, the minibatches built before the timed loop:

* ``transformer``: a 1-layer pre-LayerNorm causal transformer (``workloads.CausalTransformer``, d=32,
  2 heads, 30k parameters), byte-level LM on the Python standard library's source; 16 rows of 32
  tokens per step; AdamW (lr 3e-3, weight decay 0.01) after a 100-step linear warmup (LambdaLR).
* ``cnn_bn``: conv 1→8→16 (3x3, each followed by BatchNorm2d and ReLU, then a 2x2 max-pool), linear
  256→32→10 (10k parameters) on scikit-learn's 8x8 digits; 64 images per step; SGD lr 0.05, momentum 0.9.
* ``mlp``: 64-128-128-10 tanh MLP (26k parameters) on the digits; 64 per step; Adam lr 1e-3.

Sizes are chosen so that a training step takes a few ms on one thread (transformer ~4 ms, CNN ~2.5,
MLP ~0.7) and the whole script fits in ~3 minutes: 2,000 steps x 3 workloads x 3 rounds x 3
variants, plus one accuracy run and one full-solves-only run per workload.

The probe is ONE fixed batch drawn from the same data (a draw of its own, not one of the
training minibatches), a quarter of the training batch's rows by default (``--probe-fraction``):
a probe's cost is proportional to its size, and with a whole training batch one full solve costs
50-80 training steps here, more than the early look fits in a 5% budget (the Monitor then takes
only the step-0 solve early; see the summary). Three parts, each one table, JSON in ``<out>/overhead.json``:

1. **Overhead**: 2,000 steps per workload, bare (no Monitor) against watched at the defaults
   (``run_dir=False``) and watched with the JSONL run directory (``run_dir`` a new temporary
   directory, the default logger), in interleaved rounds (bare, watched, watched+JSONL, bare, ...);
   the ratio is the median over rounds of watched / bare of the same round (target <= 1.05), so
   drift on the shared machine cancels. A watched run's time includes everything the Monitor adds:
   its construction, ``attach()`` (the step-0 solve), ``observe(loss)`` every step, ``close()``.
   Beside it: the Monitor's own ``monitor.overhead``, the number of full λ_1 solves and of
   streamed points (``curvature/streamed``), the λ_1 points in steps 0..100 (target >= 4) and the
   largest gap in steps between consecutive λ_1 points after step 100, counting the run's end as
   a point (target <= ~200); the worst round for those two.
   The final training loss and parameters bare and watched must be identical (watching must not
   change training).
2. **Streaming accuracy**: one more watched run per workload at the defaults (not timed) in which,
   after every ``optimizer.step()`` whose λ_1 point is a streamed one, the benchmark computes a
   reference λ_1 at the same parameters by a tight cold solve (``lanczos(monitor.curvature.hessian,
   k=1, tol=1e-6, max_hvps=300)``), and for Adam/AdamW the preconditioned one
   (``preconditioned_operator``): relative error of the streamed value (target <= 2%), how often
   it lies within its reported residual, and how many streamed points the Monitor itself flagged
   as unconverged. The Monitor's budget clock is held still while the references are computed,
   so that it does not count them as training time.
3. **Points per budget**: how many λ_1 points the same budget buys streaming against full solves
   only (target >= 4x): a run with every point a full solve (``monitor.budget.full_every = 1``,
   the rest at the defaults), and the estimate from measured costs (the default run's curvature
   seconds spent on full solves at their mean cost, ``monitor/probe_seconds``).

    python benchmarks/perf/overhead.py [--smoke] [--out DIR] [--rounds 3] [--steps 2000] [--only mlp,cnn_bn]

``--smoke``: tiny models, 30 steps, one round (~10 s; ``make test``).

Latest run (``python benchmarks/perf/overhead.py`` alone, 233 s, 2026-12-07, commit 34884b9 plus
this summary, CPU share 1.00; the bare steps ran 20-30% slower than in the earlier run of the day,
at bfc9747: 5.2 / 2.9 / 1.0 ms against 4.1 / 2.2 / 0.8). The targets are not met:

* Overhead at the defaults, 2,000 steps: watched / bare 1.12 (transformer), 1.14 (CNN+BN), 1.22
  (MLP); the rounds range over 0.89-1.12, 1.00-1.23, 0.97-1.24 (bare runs alone differ by up to
  ~20% between rounds here; the earlier run gave 1.05, 1.06, 0.98). The Monitor's own account is
  the steadier figure: ``monitor.overhead`` 7.4%, 6.0%, 13.8% (earlier 7.0%, 5.6%, 11.9%).
  Watching changed nothing: final parameters bitwise equal in every round and variant.
* Where the time goes: the full solve at attach, which the budget always takes: 186, 70 and 54
  ms = 35, 24 and 55 training steps (31, 16.5 and 40 HVPs; ``method="auto"`` no longer times
  the two methods on the CPU, which cost ~12 products; two products measure the HVP noise for
  the error bound), against an allowance of 5% of 1,000 steps = 50 steps before step 1,000,
  half of which the cheap metrics take on steps this short. So the early points at 3, 10, 30, 100
  mostly do not fit (2-3 λ_1 points in steps 0..100, target 4), and the allowance of a
  2,000-step run is spent before any later point fits (max gap ~2,000 steps, target 200). On
  these small models an HVP on a quarter-batch probe still costs about one training step (fixed
  per-call costs dominate), so a smaller probe does not help, nor, on this CPU, a larger model (a
  64-512-512-10 MLP at 5 ms steps has 9 ms HVPs on a 32-row probe); with a whole batch (the run
  before this policy, when the early points were taken whatever they cost) the early look alone
  cost 7-13% of the run.
* Streamed points against tight full solves: every streamed λ_1 compared lies within 1.1% of the
  reference and within its reported residual (3 points; with points this few the ≥4x "points
  per budget" comparison has nothing to show: ratio 1-1.5).

What would meet the targets: a budget about 3x larger on runs this short and models this small
(``budget=0.15``), or runs long enough (≳10,000 steps) for the step-0 solve to be a small part of
them; the policy then paces points evenly (``tests/hooks/test_budget.py`` shows it on a fake
clock: 29 points in 3,000 steps at 4.7%, 3.6x what full solves alone buy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import edgewatch as ew
from edgewatch.curvature import hessian as hessian_module
from edgewatch.curvature import lanczos
from edgewatch.optimizers import OptimizerStateError, preconditioned_operator

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # workloads.py sits beside this file, whether run as a script or imported
    sys.path.insert(0, str(HERE))
from costs import _cpu_seconds, table  # noqa: E402 - the same table format as costs.py
from workloads import (  # noqa: E402
    CausalTransformer,
    _digits,
    _stdlib_tokens,
    _windows,
    cross_entropy,
    loadavg,
    machine,
    num_parameters,
    single_thread,
)

NAME = "overhead"
DEFAULT_OUT = Path(__file__).parents[1] / "results" / "perf"
WORKLOADS = ("transformer", "cnn_bn", "mlp")
VARIANTS = ("bare", "watched", "watched+jsonl")
TARGET_RATIO = 1.05  # watched / bare
TARGET_EARLY = 4  # λ_1 points in steps 0..100
EARLY = 100
TARGET_GAP = 200  # steps between λ_1 points after step 100
TARGET_ERROR = 0.02  # streamed vs a tight full solve, relative
TARGET_POINTS = 4.0  # points(streaming) / points(full solves only), same budget
REFERENCE_TOL, REFERENCE_HVPS = 1e-6, 300
LAMBDA, STREAMED = "curvature/lambda_max", "curvature/streamed"
#: The probe's rows as a share of the training batch's (a quarter by default; --probe-fraction 1 for a whole batch).
PROBE_FRACTION = 0.25
SECONDS = ("curvature/seconds", "monitor/probe_seconds")  # a probe's seconds, under either name
HVPS = "monitor/probe_hvps"
PRECOND, PRECOND_STREAMED = "curvature/precond/lambda_max", "curvature/precond/streamed"
RESIDUAL, PRECOND_RESIDUAL = "curvature/lambda_max_residual", "curvature/precond/lambda_max_residual"
CONVERGED, PRECOND_CONVERGED = "curvature/converged", "curvature/precond/converged"

Batch = tuple[Tensor, Tensor]


# -- workloads ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """One training loop: model size, optimizer and data per workload, full and smoke."""

    name: str
    optimizer: str
    lr: float
    note: str


SPECS = {
    "transformer": Spec("transformer", "adamw", 3e-3, "AdamW lr 3e-3 wd 0.01, {warmup}-step linear warmup"),
    "cnn_bn": Spec("cnn_bn", "sgd", 0.05, "SGD lr 0.05 momentum 0.9"),
    "mlp": Spec("mlp", "adam", 1e-3, "Adam lr 1e-3"),
}
# Sizes: (full, smoke).
SIZES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "transformer": ({"d": 32, "layers": 1, "heads": 2, "seq": 32, "rows": 16, "warmup": 100},
                    {"d": 16, "layers": 1, "heads": 2, "seq": 16, "rows": 4, "warmup": 5}),
    "cnn_bn": ({"channels": (8, 16), "hidden": 32, "rows": 64}, {"channels": (4, 8), "hidden": 16, "rows": 32}),
    "mlp": ({"widths": [64, 128, 128, 10], "rows": 64}, {"widths": [64, 16, 10], "rows": 32}),
}


def cnn_bn(c1: int, c2: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),  # (B, c2, 4, 4)
        nn.Flatten(), nn.Linear(c2 * 16, hidden), nn.ReLU(), nn.Linear(hidden, 10),
    )


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def data(name: str, steps: int, smoke: bool, probe_fraction: float = PROBE_FRACTION) -> tuple[list[Batch], Batch]:
    """The training minibatches of every step and the ONE probe batch (same data, a fraction of
    the training batch's rows: a probe's cost is proportional to its size)."""
    size = SIZES[name][1 if smoke else 0]
    rows = size["rows"]
    probe_rows = max(1, round(rows * probe_fraction))
    if name == "transformer":
        tokens = _stdlib_tokens()
        return ([_windows(tokens, rows, size["seq"], seed=1000 + step) for step in range(steps)],
                _windows(tokens, probe_rows, size["seq"], seed=1))
    x, y = _digits()
    if name == "cnn_bn":
        x = x.view(-1, 1, 8, 8)

    def draw(seed: int, count: int = rows) -> Batch:
        index = torch.randint(0, len(y), (count,), generator=torch.Generator().manual_seed(seed))
        return x[index], y[index]

    return [draw(1000 + step) for step in range(steps)], draw(1, probe_rows)


def fresh(name: str, smoke: bool) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """Model (seed 0), optimizer and LR scheduler (or None) at initialization."""
    size, spec = SIZES[name][1 if smoke else 0], SPECS[name]
    torch.manual_seed(0)
    if name == "transformer":
        model: nn.Module = CausalTransformer(d=size["d"], layers=size["layers"], heads=size["heads"], seq=size["seq"])
    elif name == "cnn_bn":
        model = cnn_bn(*size["channels"], size["hidden"])
    else:
        model = mlp(size["widths"])
    params = model.parameters()
    if spec.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=spec.lr, momentum=0.9)
    elif spec.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=spec.lr)
    else:
        optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.01)
    scheduler = None
    if "warmup" in size:
        warmup = size["warmup"]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    return model, optimizer, scheduler


# -- the Monitor's history -------------------------------------------------------------------------
def series(monitor: ew.Monitor, name: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of metric ``name`` in ``monitor.history`` (empty if never measured)."""
    if name not in monitor.history:
        return [], []
    entry = monitor.history[name]
    return list(entry.steps), list(entry.values)


def latest_point(monitor: ew.Monitor, name: str, step: int) -> float | None:
    """The value of ``name`` measured at ``step``, if its newest point is at ``step``."""
    if name not in monitor.history:
        return None
    entry = monitor.history[name]
    return float(entry.values[-1]) if len(entry.steps) and entry.steps[-1] == step else None


def make_monitor(model: nn.Module, optimizer: torch.optim.Optimizer, probe: Batch, run_dir: Path | bool) -> ew.Monitor:
    """The Monitor at its defaults, not yet attached."""
    return ew.Monitor(model, optimizer, cross_entropy, probe=[probe], run_dir=run_dir)


def full_only(monitor: ew.Monitor) -> None:
    """Every curvature point a full solve, the budget as it is (``monitor.budget.full_every = 1``)."""
    monitor.budget.full_every = 1


# -- one training run ----------------------------------------------------------------------------------
def train(name: str, variant: str, batches: Sequence[Batch], probe: Batch, smoke: bool, run_root: Path,
          after_step: Callable[[int, ew.Monitor, torch.optim.Optimizer], None] | None = None,
          configure: Callable[[ew.Monitor], Any] | None = None) -> dict[str, Any]:
    """One run from initialization over ``batches``. Timed: the training loop and, when watched,
    everything the Monitor adds around it: its construction, ``attach()`` (which takes the step-0
    solve) and ``close()`` (building model, optimizer and minibatches is not timed).
    ``configure(monitor)`` runs before ``attach()``; ``after_step(step, monitor, optimizer)`` right
    after ``optimizer.step()`` (before the LR scheduler's step), inside the timed loop: untimed runs only."""
    model, optimizer, scheduler = fresh(name, smoke)
    run_dir: Path | bool = False
    if variant == "watched+jsonl":  # a new directory each run: the logger would resume an old one
        run_dir = Path(tempfile.mkdtemp(dir=run_root)) / "run"
    hessian_module._AUTO_CHOICES.clear()  # every watched run pays "auto"'s one-off measurement alike
    losses: list[Tensor] = []
    clock = time.perf_counter
    cpu = time.process_time()
    start = clock()
    monitor = None
    if variant != "bare":
        monitor = make_monitor(model, optimizer, probe, run_dir)
        if configure is not None:
            configure(monitor)
        monitor.attach()
    attached = clock()
    for step, batch in enumerate(batches, start=1):
        optimizer.zero_grad(set_to_none=True)
        loss = cross_entropy(model, batch)
        loss.backward()
        if monitor is not None:
            monitor.observe(loss)
        optimizer.step()
        if after_step is not None:
            after_step(step, monitor, optimizer)
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.detach())
    looped = clock()
    if monitor is not None:
        monitor.close()
    elapsed = clock() - start
    cpu = time.process_time() - cpu
    curve = torch.stack(losses)
    tail = loss_window(len(losses))
    result: dict[str, Any] = {
        "seconds": elapsed, "cpu_share": cpu / max(elapsed, 1e-12), "steps": len(batches),
        "attach_seconds": attached - start, "loop_seconds": looped - attached,
        "first_loss": float(curve[:tail].mean()), "final_loss": float(curve[-tail:].mean()),
        "state": torch.cat([t.detach().reshape(-1).double() for t in model.state_dict().values()]),
    }
    if monitor is not None:
        result.update(points(monitor, len(batches)))
        result["monitor"] = monitor
    return result


def points(monitor: Any, total_steps: int) -> dict[str, Any]:
    """Where the λ_1 points fell: full solves, streamed points, steps 0..100, gaps after 100."""
    steps, _ = series(monitor, LAMBDA)
    flag_steps, flags = series(monitor, STREAMED)
    streamed_at = {s for s, f in zip(flag_steps, flags) if f == 1.0}
    seconds_at: dict[int, float] = {}
    for name in SECONDS:
        seconds_at = dict(zip(*series(monitor, name)))
        if seconds_at:
            break
    hvps_at = dict(zip(*series(monitor, HVPS)))
    full_s = [seconds_at[s] for s in steps if s in seconds_at and s not in streamed_at]
    streamed_s = [seconds_at[s] for s in steps if s in seconds_at and s in streamed_at]
    full_h = [hvps_at[s] for s in steps if s in hvps_at and s not in streamed_at]
    streamed_h = [hvps_at[s] for s in steps if s in hvps_at and s in streamed_at]
    # gaps after step 100: consecutive points whose later one is past step 100, and the run's end
    marks = sorted(set(steps)) + [total_steps]
    gaps = [b - a for a, b in zip(marks, marks[1:]) if b > EARLY]
    overhead = getattr(monitor, "overhead", None)
    return {
        "lambda_steps": steps, "streamed_steps": sorted(streamed_at),
        "full_solves": sum(s not in streamed_at for s in steps), "streamed_points": sum(s in streamed_at for s in steps),
        "early_points": sum(s <= EARLY for s in steps), "late_points": sum(s > EARLY for s in steps),
        "max_gap_after_100": max(gaps) if gaps else None,
        "full_seconds_mean": statistics.mean(full_s) if full_s else None,
        "streamed_seconds_mean": statistics.mean(streamed_s) if streamed_s else None,
        "full_hvps_mean": statistics.mean(full_h) if full_h else None,
        "streamed_hvps_mean": statistics.mean(streamed_h) if streamed_h else None,
        "curvature_seconds": sum(seconds_at.get(s, 0.0) for s in steps),
        "monitor_overhead": float(overhead) if overhead is not None else None,
    }


# -- part 1: overhead -----------------------------------------------------------------------------
def overhead(name: str, batches: list[Batch], probe: Batch, rounds: int, smoke: bool, run_root: Path,
             variants: Sequence[str]) -> dict[str, Any]:
    """Interleaved rounds of bare and watched runs; ratio = median over rounds of watched / bare."""
    warm = batches[: min(20 if smoke else 50, len(batches))]
    for variant in variants:  # warm-up: lazy initialization (kernels, double backward, allocator)
        train(name, variant, warm, probe, smoke, run_root)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            run = train(name, variant, batches, probe, smoke, run_root)
            run.pop("monitor", None)
            runs[variant].append(run)
    reference = runs["bare"][0]["state"]
    identical = {v: all(bool(torch.equal(r["state"], reference)) for r in rs) for v, rs in runs.items()}
    max_difference = {v: max(float((r["state"] - reference).abs().max()) for r in rs) for v, rs in runs.items()}
    for rs in runs.values():
        for r in rs:
            del r["state"]
    bare = [r["seconds"] for r in runs["bare"]]
    ratios = {v: [r["seconds"] / b for r, b in zip(runs[v], bare)] for v in variants if v != "bare"}
    ratio = {v: statistics.median(rs) for v, rs in ratios.items()}
    watched = runs["watched"]
    # the round whose ratio is the median (the lower middle one for an even count)
    middle = sorted(range(rounds), key=lambda i: ratios["watched"][i])[(rounds - 1) // 2]
    early = min(r["early_points"] for r in watched)
    gaps = [r["max_gap_after_100"] for r in watched if r["max_gap_after_100"] is not None]
    gap = max(gaps) if gaps else None
    reported = [r["monitor_overhead"] for r in watched if r["monitor_overhead"] is not None]
    return {
        "part": "overhead", "workload": name, "rounds": rounds, "steps": len(batches),
        "step_ms_bare": 1e3 * statistics.median(bare) / len(batches),
        "attach_ms": 1e3 * statistics.median(r["attach_seconds"] for r in runs["watched"]),
        "ratio": ratio, "ratios": ratios, "met": ratio["watched"] <= TARGET_RATIO,
        "monitor_overhead": statistics.median(reported) if reported else None,
        "monitor_overhead_rounds": reported,
        "full_solves": statistics.median(r["full_solves"] for r in watched),
        "streamed_points": statistics.median(r["streamed_points"] for r in watched),
        "early_points_worst": early, "early_met": early >= TARGET_EARLY,
        "max_gap_worst": gap, "gap_met": gap is not None and gap <= TARGET_GAP,
        "median_round": {k: v for k, v in watched[middle].items()},
        "final_loss": {v: rs[0]["final_loss"] for v, rs in runs.items()},
        "first_loss": runs["bare"][0]["first_loss"],
        "identical": identical, "max_parameter_difference": max_difference,
        "cpu_share": statistics.mean(r["cpu_share"] for rs in runs.values() for r in rs),
        "runs": {v: [{k: x for k, x in r.items() if k != "lambda_steps"} for r in rs] for v, rs in runs.items()},
    }


# -- part 2: streamed points against tight full solves ----------------------------------------------
class References:
    """After each optimizer.step(): if the Monitor just logged a streamed λ_1 (or preconditioned)
    point, a tight cold solve at the same parameters to compare it with."""

    def __init__(self, adaptive: bool) -> None:
        self.adaptive = adaptive
        self.rows: list[dict[str, Any]] = []
        self.seconds = 0.0
        self.hidden = False

    def hide_from_budget(self, monitor: Any) -> None:
        """The Monitor's budget clock stands still while the references are computed, so that it
        does not count them as training time (and place its points as in an undisturbed run)."""
        budget = getattr(monitor, "budget", None)
        if budget is not None and hasattr(budget, "clock"):
            clock = budget.clock
            budget.clock = lambda: clock() - self.seconds
            self.hidden = True

    def __call__(self, step: int, monitor: Any, optimizer: torch.optim.Optimizer) -> None:
        start = time.perf_counter()
        for kind, value_name, flag_name, residual_name, converged_name in (
                ("lambda", LAMBDA, STREAMED, RESIDUAL, CONVERGED),
                ("precond", PRECOND, PRECOND_STREAMED, PRECOND_RESIDUAL, PRECOND_CONVERGED)):
            if kind == "precond" and not self.adaptive:
                continue
            value = latest_point(monitor, value_name, step)
            if value is None or latest_point(monitor, flag_name, step) != 1.0:
                continue
            residual = latest_point(monitor, residual_name, step)
            converged = latest_point(monitor, converged_name, step)
            op = monitor.curvature.hessian
            if kind == "precond":
                try:
                    op, _ = preconditioned_operator(monitor.curvature.hessian, optimizer)
                except OptimizerStateError:
                    continue
            result = lanczos(op, k=1, tol=REFERENCE_TOL, max_hvps=REFERENCE_HVPS, seed=step)
            full = float(result.eigenvalues[0])
            self.rows.append({
                "kind": kind, "step": step, "streamed": value, "reference": full, "residual": residual,
                "converged": converged != 0.0,  # the Monitor's own verdict (0: reported although untrusted)
                "relative_error": abs(value - full) / max(abs(full), 1e-30),
                "within_residual": residual is not None and abs(value - full) <= residual,
                "reference_hvps": result.num_hvps, "reference_converged": bool(result.converged),
            })
        self.seconds += time.perf_counter() - start


def accuracy(name: str, batches: list[Batch], probe: Batch, smoke: bool, run_root: Path,
             bare_final_loss: float | None) -> dict[str, Any]:
    adaptive = SPECS[name].optimizer in ("adam", "adamw")
    references = References(adaptive)
    wall = time.perf_counter()
    run = train(name, "watched", batches, probe, smoke, run_root, after_step=references,
                configure=references.hide_from_budget)
    wall = time.perf_counter() - wall
    run.pop("monitor", None)
    run.pop("state", None)
    summary: dict[str, Any] = {}
    for kind in ("lambda", "precond") if adaptive else ("lambda",):
        rows = [r for r in references.rows if r["kind"] == kind]
        errors = [r["relative_error"] for r in rows]
        trusted = [r["relative_error"] for r in rows if r["converged"]]
        summary[kind] = {
            "compared": len(rows),
            "median_error": statistics.median(errors) if errors else None,
            "max_error": max(errors) if errors else None,
            "unconverged": len(rows) - len(trusted),
            "max_error_converged": max(trusted) if trusted else None,
            "within_residual": sum(r["within_residual"] for r in rows),
            "met": bool(errors) and max(errors) <= TARGET_ERROR,
            "reference_hvps_mean": statistics.mean(r["reference_hvps"] for r in rows) if rows else None,
            "references_converged": all(r["reference_converged"] for r in rows),
        }
    return {"part": "streaming_accuracy", "workload": name, "summary": summary, "points": references.rows,
            "reference_seconds": references.seconds, "seconds": wall, "hidden_from_budget": references.hidden,
            "final_loss": run["final_loss"], "same_as_bare": bare_final_loss is None or run["final_loss"] == bare_final_loss,
            "run": {k: v for k, v in run.items() if k != "lambda_steps"}}


# -- part 3: points per budget, streaming against full solves only ------------------------------------
def points_per_budget(name: str, batches: list[Batch], probe: Batch, smoke: bool, run_root: Path,
                      streaming_run: dict[str, Any]) -> dict[str, Any]:
    """λ_1 points of the default (streaming) run against full solves only at the same budget: a run
    with every point a full solve, and the estimate from measured costs (the same curvature seconds
    spent on full solves at their mean cost)."""
    s = streaming_run
    record: dict[str, Any] = {"part": "points_per_budget", "workload": name,
                              "streaming_points": s["full_solves"] + s["streamed_points"],
                              "streaming_full": s["full_solves"], "streaming_late": s["late_points"],
                              "streaming_overhead": s["monitor_overhead"],
                              **{k: s[k] for k in ("full_seconds_mean", "streamed_seconds_mean", "full_hvps_mean",
                                                   "streamed_hvps_mean")}}
    if s["full_seconds_mean"]:
        estimate = s["curvature_seconds"] / s["full_seconds_mean"]
        record["full_only_points_estimate"] = estimate
        record["ratio_estimate"] = record["streaming_points"] / max(estimate, 1e-12)
    run = train(name, "watched", batches, probe, smoke, run_root, configure=full_only)
    record.update(full_only_points=run["full_solves"] + run["streamed_points"],
                  full_only_streamed=run["streamed_points"], full_only_overhead=run["monitor_overhead"],
                  full_only_early=run["early_points"], full_only_late=run["late_points"],
                  full_only_max_gap=run["max_gap_after_100"])
    record["ratio"] = record["streaming_points"] / max(record["full_only_points"], 1)
    record["met"] = record["ratio"] >= TARGET_POINTS
    return record


# -- the run -------------------------------------------------------------------------------------------
def pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 30 steps, one round (make test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results directory (default {DEFAULT_OUT})")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; smoke 1)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 2000; smoke 30)")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    parser.add_argument("--no-jsonl", action="store_true", help="leave out the watched + JSONL run directory variant")
    parser.add_argument("--parts", default="1,2,3", help="1 overhead, 2 streaming accuracy, 3 points per budget")
    parser.add_argument("--probe-fraction", type=float, default=PROBE_FRACTION,
                        help=f"probe rows / training batch rows (default {PROBE_FRACTION})")
    args = parser.parse_args(argv)
    steps = args.steps or (30 if args.smoke else 2000)
    rounds = args.rounds or (1 if args.smoke else 3)
    names = [n for n in args.only.split(",") if n]
    parts = {int(p) for p in args.parts.split(",")}
    variants = [v for v in VARIANTS if not (args.no_jsonl and v == "watched+jsonl")]
    start = time.perf_counter()
    with single_thread(), tempfile.TemporaryDirectory() as scratch:
        info = machine()
        print(f"{NAME}: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, python {info['python']}; "
              f"{info['threads']} torch thread and 1 BLAS thread (threadpoolctl); load average {loadavg():.2f}"
              + ("; SMOKE run (tiny sizes)" if args.smoke else ""), flush=True)
        results: list[dict[str, Any]] = []
        sizes: dict[str, int] = {}
        timing: list[dict[str, Any]] = []
        accuracy_results: list[dict[str, Any]] = []
        budget_results: list[dict[str, Any]] = []
        for name in names:
            wall, cpu = time.perf_counter(), _cpu_seconds()
            batches, probe = data(name, steps, args.smoke, args.probe_fraction)
            sizes[name] = num_parameters(fresh(name, args.smoke)[0])
            record = None
            if 1 in parts:
                record = overhead(name, batches, probe, rounds, args.smoke, Path(scratch), variants)
                record["parameters"] = sizes[name]
                timing.append(record)
            if 2 in parts or 3 in parts:
                bare_loss = record["final_loss"]["bare"] if record else None
                acc = accuracy(name, batches, probe, args.smoke, Path(scratch), bare_loss)
                accuracy_results.append(acc)
                if 3 in parts:
                    streaming = record["median_round"] if record else acc["run"]  # a timed run when there is one
                    budget_results.append(points_per_budget(name, batches, probe, args.smoke, Path(scratch), streaming))
            wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
            print(f"({name}: {wall:.0f} s, CPU share {cpu / wall:.2f}, load average {loadavg():.2f})", flush=True)
            results.append({"part": f"timing of {name}", "seconds": wall, "cpu_share": cpu / wall})
        report(timing, accuracy_results, budget_results, sizes, steps, rounds, args.smoke, args.probe_fraction)
        results = timing + accuracy_results + budget_results + results
        info["load_average_end"] = loadavg()
    total = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{NAME}.json"
    payload = {"benchmark": NAME, "smoke": args.smoke, "machine": info, "steps": steps, "rounds": rounds,
               "probe_fraction": args.probe_fraction,
               "parameters": sizes, "results": results, "seconds": round(total, 1)}
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    print(f"\nwrote {path} ({total:.0f} s)")
    return 0


def report(timing: list[dict[str, Any]], accuracy_results: list[dict[str, Any]], budget_results: list[dict[str, Any]],
           sizes: dict[str, int], steps: int, rounds: int, smoke: bool, probe_fraction: float) -> None:
    if timing:
        jsonl = "watched+jsonl" in timing[0]["ratio"]
        table(f"Monitor at its defaults: overhead on {steps}-step training loops, watched / bare "
              f"(median of {rounds} interleaved round{'s' * (rounds > 1)})",
              ["workload", "params", "optimizer", "step ms", "watched/bare", "range", "≤1.05", "+JSONL/bare", "own overhead %",
               "attach ms", "full λ1", "streamed", "pts ≤100", "≥4", "max gap", "≤200", "loss first", "final bare",
               "final watched", "identical", "CPU share"],
              [[r["workload"], r["parameters"], SPECS[r["workload"]].optimizer, r["step_ms_bare"], r["ratio"]["watched"],
                f"{min(r['ratios']['watched']):.2f}..{max(r['ratios']['watched']):.2f}", r["met"],
                r["ratio"].get("watched+jsonl") if jsonl else "-", pct(r["monitor_overhead"]),
                r["attach_ms"], r["full_solves"], r["streamed_points"], r["early_points_worst"], r["early_met"],
                r["max_gap_worst"], r["gap_met"], r["first_loss"], r["final_loss"]["bare"], r["final_loss"]["watched"],
                all(r["identical"].values()), r["cpu_share"]] for r in timing],
              "\n".join([
                  "watched: ew.Monitor(model, optimizer, loss_fn, probe=[batch], run_dir=False) at its defaults, attached, "
                  "observe(loss) every step; its time includes",
                  "constructing, attaching (the step-0 solve: attach ms) and closing the Monitor. +JSONL: the same with the "
                  "JSONL run directory (a new temporary one per run).",
                  f"Probe: ONE fixed batch, {probe_fraction:g} of the training batch ({batch_sizes(smoke)}), drawn from the same "
                  "data, a draw of its own.",
                  "step ms: the bare loop, median over rounds. range: watched/bare over the rounds. own overhead: "
                  "monitor.overhead (the Monitor's own time / training",
                  "time, as it measures them) at the end of the run, median over rounds.",
                  "full λ1 / streamed: λ1 points by kind (curvature/streamed), median over rounds. pts ≤100: λ1 points in "
                  "steps 0..100; max gap: the largest gap in steps",
                  "between consecutive λ1 points after step 100, the run's end counting as one; both the worst round.",
                  f"loss: mean training loss of the first / last {loss_window(steps)} steps. identical: final parameters "
                  "and buffers bitwise equal to the bare run's, every round and variant.",
                  "CPU share: process CPU time / wall time of the timed runs (1.0 = the core was ours).",
                  "; ".join(f"{r['workload']}: {SPECS[r['workload']].note.format(**SIZES[r['workload']][int(smoke)])}"
                            for r in timing)]))
    if accuracy_results:
        rows = []
        for a in accuracy_results:
            for kind, s in a["summary"].items():
                rows.append([a["workload"], "λ1" if kind == "lambda" else "precond λ1", s["compared"],
                             s["unconverged"], pct(s["median_error"]), pct(s["max_error"]),
                             pct(s["max_error_converged"]), s["met"] if s["compared"] else "-",
                             f"{s['within_residual']}/{s['compared']}", s["reference_hvps_mean"],
                             s["references_converged"], a["run"]["full_solves"], a["same_as_bare"]])
        hidden = all(a["hidden_from_budget"] for a in accuracy_results)
        table("Streamed λ1 points against a tight full solve at the same parameters (one untimed watched run per workload)",
              ["workload", "quantity", "compared", "unconverged", "median err %", "max err %", "max err % conv.", "≤2%",
               "within residual", "ref HVPs", "ref converged", "full solves", "loss = bare"], rows,
              "\n".join([
                  f"reference: lanczos(monitor.curvature.hessian, k=1, tol={REFERENCE_TOL:g}, max_hvps={REFERENCE_HVPS}) "
                  "from a cold start, right after the optimizer.step() whose point",
                  "was streamed; precond: the same on preconditioned_operator(hessian, optimizer) (Adam/AdamW only). "
                  "err: |streamed − reference| / |reference|.",
                  "unconverged: streamed points the Monitor itself reported with converged 0 (residual above its "
                  "tolerance and no budget to escalate); max err % conv.: the others.",
                  "within residual: |streamed − reference| <= the residual the Monitor logged for the point.",
                  "The Monitor's budget clock is held still during the reference solves, so its schedule is an undisturbed "
                  "run's (not the timed runs' exactly: it follows measured times)." if hidden else
                  "The reference solves run between steps and the Monitor's clock counts them as training time."]))
    if budget_results:
        table("λ1 points the same budget buys: streaming (the default) against full solves only",
              ["workload", "points", "of which full", "after 100", "full ms", "streamed ms", "cost full/streamed",
               "full HVPs", "streamed HVPs", "full-only (est.)", "ratio (est.)", "full-only (run)", "after 100",
               "its overhead %", "ratio (run)", "≥4x"],
              [[b["workload"], b["streaming_points"], b["streaming_full"], b["streaming_late"], _ms(b["full_seconds_mean"]),
                _ms(b["streamed_seconds_mean"]), cost_ratio(b), b["full_hvps_mean"], b["streamed_hvps_mean"],
                b.get("full_only_points_estimate"), b.get("ratio_estimate"), b["full_only_points"], b["full_only_late"],
                pct(b["full_only_overhead"]), b["ratio"], b["met"]] for b in budget_results],
              "\n".join([
                  "points: λ1 points of a default run (the median round of the overhead table). full / streamed ms and "
                  "HVPs: mean seconds (monitor/probe_seconds)",
                  "and HVPs (monitor/probe_hvps) of a full solve and of a streamed point in that run, everything the "
                  "probe does included. after 100: λ1 points",
                  "after step 100 (placed by the budget, as are the early ones at 3, 10, 30, 100 when they fit). full-only (est.): "
                  "that run's curvature seconds spent on full solves",
                  "at their mean cost. full-only (run): a run with every point a full solve (monitor.budget.full_every = 1), "
                  "the same budget; ratio = points / its points."]))


def batch_sizes(smoke: bool) -> str:
    t, d = SIZES["transformer"][int(smoke)], SIZES["mlp"][int(smoke)]
    return f"transformer {t['rows']} rows x {t['seq']} tokens, digits {d['rows']} examples"


def loss_window(steps: int) -> int:
    """Steps averaged for the first and the final training loss."""
    return max(1, min(50, steps // 5))


def cost_ratio(b: dict[str, Any]) -> float | None:
    """Mean cost of a full solve over that of a streamed point."""
    full, streamed = b["full_seconds_mean"], b["streamed_seconds_mean"]
    return full / streamed if full and streamed else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Tensor):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
