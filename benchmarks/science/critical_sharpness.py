"""Critical sharpness: 2/η_c from a line search along the update, beside the Lanczos λ_1, through the edge of stability.

Paper: Kalra et al. 2026, "A Scalable Measure of Loss Landscape Curvature for Analyzing the
Training Dynamics of LLMs", https://arxiv.org/abs/2601.16979. The critical sharpness is
λ_c = 2/η_c, where η_c is the critical learning rate: the smallest learning rate at which the
next step along the optimizer's update direction would increase the loss. It needs no
Hessian-vector product, only a line search of a few forward passes given the update direction,
and the paper finds that it shows the Hessian-sharpness phenomena (progressive sharpening, the
edge of stability) at scales where Lanczos is out of reach.

Definition implemented (the paper's). At θ_t (after update t, where the Monitor measures λ_1),
with the full-batch gradient g = ∇L(θ_t) and the optimizer's next update direction u (the next
step is θ_t − η·u: for GD u = g; for Adam u = m̂'/(√v̂' + ε) with the moments updated by g, from a
copy of the state), φ(s) = L(θ_t − s·u) − L(θ_t) and

    η_c = min{s > 0 : φ(s) > 0},     λ_c = 2/η_c.

For a quadratic along u, φ(s) = −s·gᵀu + s²·uᵀHu/2, so η_c = 2·gᵀu/(uᵀHu) and λ_c = uᵀHu/(gᵀu):
for GD, λ_c = gᵀHg/‖g‖², the directional sharpness, which is <= λ_1, with equality when g lies
along the top eigenvector. The line search is what the paper proposes (it reads the real loss and
needs no second derivative); gᵀHg/‖g‖² and uᵀHu/gᵀu are computed beside it with one HVP each to
show how far the loss along u is from its quadratic model. Search (``critical_lr``): start at the
previous probe's η_c (at the first probe at s = η), double or halve until φ changes sign, then
regula falsi (Illinois rule) on h(s) = φ(s)/s, which is linear in s for a quadratic, so one or two
interpolations land on the root; stop when the bracket is within 1% or after 9 forward passes.
L(θ_t) comes with the gradient's forward pass, which training needs anyway, and is not counted.
Were gᵀu <= 0 (Adam's momentum can point uphill), η_c = 0 and λ_c = ∞; it did not happen here.

A check without any Hessian: the next step raises the training loss exactly when η > η_c, i.e.
when λ_c > 2/η. So at every probe the sign of η·λ_c/2 − 1 must match whether the logged loss rose
at the next step.

Setting: the MLP of ``eos_gd.py`` (Cohen et al. 2021's Figure 1 at CPU scale): tanh
64-200-200-10, 500 scikit-learn digits, square loss, PyTorch default initialization (seed 0),
full batch; GD (torch.optim.SGD) at η = 0.4 (600 steps) and η = 0.2 (900 steps), and Adam
(β = (0.9, 0.999), ε = 1e-8) at η = 2e-3 (600 steps), which reaches the adaptive edge of
``adaptive_eos.py`` (λ_1(P⁻¹H) = 38/η) at step ~100. The Monitor measures λ_1(H), and for Adam
λ_1(P⁻¹H) and r = η·λ_1(P⁻¹H)/38, by a full Lanczos solve on the training batch every 10 steps
(Adam: 20); at the same θ the script computes g, u, λ_c and the two quadratic-model quantities.
The edge starts at t*, the first probe with r >= 0.9 (GD: r = η·λ_1/2, so λ_1 >= 0.9·2/η, as in
``eos_gd.py``).

Criteria (the paper's claims, which it shows as curves for LLMs; here put in numbers). For GD
"λ_c against λ_1" is λ_c/λ_1; for Adam, whose λ_c is measured against the step actually taken
(edge 2/η) and whose λ_1(P⁻¹H) against 38/η, it is (η·λ_c/2)/r, each in units of its own edge.
  1. Progressive sharpening: before t*, λ_c rises with λ_1 (Adam: with r): Spearman >= 0.8.
  2. Edge of stability: after t*, the median of λ_c/λ_1 (Adam: (η·λ_c/2)/r) is within 1 ± 0.15.
  3. Tracking over the whole run: Pearson correlation of λ_c with λ_1 (Adam: r) >= 0.9.
  4. Cheap: every estimate takes fewer than ten forward passes.
  5. The search sees what the step does: after t*, at >= 95% of the probes λ_c > 2/η exactly when
     the next step raised the logged loss.

Measured (full run, seed 0). Criteria 2, 4 and 5 pass in all three runs; 1 and 3 fail in all three.

| run | t* | λ_c first >= 0.9·2/η | before t*: λ_c/λ_1, Spearman | after t*: λ_c/λ_1 median (IQR) | η·λ_c/2 after t* | Pearson | passes mean (max) | sign agreement |
|---|---|---|---|---|---|---|---|---|
| GD η=0.4 | 50 | 130 | 0.027, −0.90 | 0.905 (0.884-0.920) | 1.001 | 0.36 | 4.8 (9) | 55/55 |
| GD η=0.2 | 260 | 360 | 0.0063, −0.58 | 0.952 (0.081-0.960) | 0.988 | 0.63 | 5.0 (9) | 64/64 |
| Adam η=2e-3 | 100 | 100 | 0.20, −1.0 (4 probes) | 1.019 (0.886-1.070) | 1.017 (r 1.003) | 0.72 | 5.2 (9) | 25/25 |

(Adam's columns 4-5 are (η·λ_c/2)/r.) A λ_c costs about 20 ms (5 forward passes of the
500-example batch) against 0.25-0.6 s for the Monitor's full Lanczos solve (13-30 HVPs); one HVP
costs 9-14 ms. 11 of the 182 searches took 8 or 9 passes, mostly where λ_c jumped ×3 or more since
the previous probe (the warm start was far off). The line search finds the root of the quadratic
model: median λ_c/(uᵀHu/gᵀu) = 0.995, 1.002, 1.000.

What reproduced: at the edge of stability, critical sharpness sits at 2/η (median η·λ_c/2 = 1.00,
0.99, 1.02), within 5-10% of the Lanczos λ_1 for GD (whose λ_1 itself sits 4-11% above 2/η), and
its sign predicts every time whether the next step raises the loss (GD: 51% and 34% of the edge
probes did, Adam 56%). For Adam it sits at 2/η although the adaptive edge is λ_1(P⁻¹H) = 38/η:
λ_c measures the step actually taken, momentum and preconditioner included, so its edge is 2/η
for any optimizer, and no adapter or threshold constant is needed. It costs 5 forward passes.

What did not: progressive sharpening, and so the whole-run correlation. Below the edge the
full-batch gradient has almost no component along the top eigenvector: GD shrinks that component by
|1 − ηλ_1| < 1 every step, and the Monitor's ``curvature/gradient_overlap`` (the gradient's share
in the top eigenvector) has a median of 4e-10 (η=0.4) and 2e-10 (η=0.2) before t*. So λ_c
(gᵀHg/‖g‖² to 0.5% in the median) measures the flat directions the gradient lives in: 0.006-0.03 ×
λ_1, and falling while λ_1 rises (at θ_0, λ_c = 1.93 = 0.50·λ_1: the initial gradient has a sharp
component, gone within 10 steps). It reaches the edge only when the oscillation along the top
eigenvector has grown back from rounding level, 80 and 100 steps after λ_1 crossed 0.9·2/η, and it
drops out again when that oscillation dies (GD η=0.2: λ_1 fell to 9.0 < 2/η after the loss spike at
step ~370, and λ_c was below 0.5·2/η at 28% of the probes after t*, hence the wide IQR). Adam is
the same before its edge: λ_c falls from 273 to 40 while r rises from 0.16 to 0.85. The paper's
runs are LLM training on minibatches, whose gradient noise likely keeps some weight along the
sharp directions (not tested here); a full-batch run has none, the hardest case for λ_c below the
edge.

What it could replace. Not λ_1: it says nothing reliable below the edge, nor about progressive
sharpening or the ratio r < 1, and it lags λ_1 into the edge. It can replace λ_1 for one question,
"is this step at the edge now?": η·λ_c/2 >= 1 exactly when the next step raises the loss, for GD
and Adam alike, in 5 forward passes and no HVP (so also where double backward is unavailable), a
cheap test to run between the Monitor's Lanczos points; and for GD it is the directional sharpness
gᵀHg/‖g‖² that the Monitor already logs on full solves, without the HVP.

Full run: 46-48 s CPU (one thread), 120-130 s wall on the shared 2-core machine (load ~5);
``--smoke`` (MLP 64-32-10, 100 digits, 8 steps, a probe every 4): 6.2 s CPU, ≈ 7 s wall on a quiet
machine (17 s with both cores loaded ~5).

    cd benchmarks/science && OMP_NUM_THREADS=1 python critical_sharpness.py [--smoke] [--out DIR] [--seed 0]
"""

from __future__ import annotations

import math
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from common import (
    digits,
    finding,
    finish,
    mlp,
    mse,
    parse_args,
    require_matplotlib,
    rounded,
    save_figure,
    series,
)
from torch import nn

import edgewatch as ew
from edgewatch import names
from edgewatch.loggers import read_jsonl

NAME = "critical_sharpness"
PAPER = "Kalra et al. 2026"
WIDTHS, SMOKE_WIDTHS = (64, 200, 200, 10), (64, 32, 10)
N_DATA, SMOKE_DATA = 500, 100
# GD as in eos_gd.py (λ_1 reaches 2/η with room to hover); Adam as in adaptive_eos.py (η = 2e-3
# reaches 38/η by step ~100). A probe every `every` steps: the Monitor's Lanczos and the line search alike.
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
SMOKE_STEPS, SMOKE_EVERY = 8, 4
REACHED = 0.9  # r = η·λ_1(P⁻¹H)/c >= 0.9 (GD: λ_1 >= 0.9·2/η): the edge of stability (eos_gd.py)

MAX_PASSES = 9  # forward passes per line search: "fewer than ten"
REL_TOL = 0.01  # the bracket's relative width at which the search stops

SPEARMAN_MIN = 0.8  # criterion 1
RATIO_BAND = 0.15  # criterion 2
PEARSON_MIN = 0.9  # criterion 3
SIGN_AGREEMENT = 0.95  # criterion 5


# -- the line search ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LineSearch:
    eta_c: float  # the critical learning rate (nan if no bracket was found)
    passes: int  # forward passes spent
    bracket: tuple[float, float]


def critical_lr(phi: Callable[[float], float], start: float, max_passes: int = MAX_PASSES,
                rel_tol: float = REL_TOL) -> LineSearch:
    """The first s > 0 with φ(s) > 0, where φ(s) = L(θ − s·u) − L(θ) (φ(0) = 0, φ'(0) = −gᵀu < 0).

    Bracket from ``start`` by doubling or halving, then regula falsi with the Illinois rule on
    h(s) = φ(s)/s (linear in s for a quadratic: the root in one interpolation), within
    ``max_passes`` evaluations of φ.
    """
    passes = 0

    def h(s: float) -> float:
        nonlocal passes
        passes += 1
        return phi(s) / s

    s, value = start, h(start)
    lo = hi = None
    if value > 0:
        hi, h_hi = s, value
        while passes < max_passes:
            s /= 2
            value = h(s)
            if value <= 0:
                lo, h_lo = s, value
                break
            hi, h_hi = s, value
    else:
        lo, h_lo = s, value
        while passes < max_passes:
            s *= 2
            value = h(s)
            if value > 0:
                hi, h_hi = s, value
                break
            lo, h_lo = s, value
    if lo is None or hi is None:
        return LineSearch(math.nan, passes, (lo or math.nan, hi or math.nan))
    side = 0
    while passes < max_passes and (hi - lo) > rel_tol * lo:
        s = lo - h_lo * (hi - lo) / (h_hi - h_lo)
        if not lo < s < hi:
            s = 0.5 * (lo + hi)
        value = h(s)
        if value > 0:
            hi, h_hi = s, value
            if side == 1:
                h_lo /= 2  # Illinois: the end that stayed put loses half its weight
            side = 1
        else:
            lo, h_lo = s, value
            if side == -1:
                h_hi /= 2
            side = -1
    # the best estimate of the root inside the final bracket: one more interpolation, no pass
    root = lo - h_lo * (hi - lo) / (h_hi - h_lo)
    return LineSearch(root if lo <= root <= hi else 0.5 * (lo + hi), passes, (lo, hi))


@dataclass(frozen=True)
class Setting:
    optimizer: str  # "gd" (torch.optim.SGD, no momentum) or "adam" (torch.optim.Adam)
    lr: float
    steps: int
    every: int  # probe every this many steps

    @property
    def key(self) -> str:
        return f"{self.optimizer}-lr{self.lr:g}"

    @property
    def label(self) -> str:
        return f"{'GD' if self.optimizer == 'gd' else 'Adam'} η={self.lr:g}"


SETTINGS = (Setting("gd", 0.4, 600, 10), Setting("gd", 0.2, 900, 10), Setting("adam", 2e-3, 600, 20))


def next_update(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """u with the next step θ ← θ − η·u, from the gradient at θ and the optimizer's state (not changed).

    SGD without momentum: u = g. Adam: m' = β1·m + (1−β1)·g, v' = β2·v + (1−β2)·g², then
    u = (m'/(1−β1^{t+1})) / (√(v'/(1−β2^{t+1})) + ε), torch.optim.Adam's step divided by η.
    """
    if not isinstance(optimizer, torch.optim.Adam):
        return grads
    group = optimizer.param_groups[0]
    (beta1, beta2), eps = group["betas"], group["eps"]
    out = []
    for p, g in zip(params, grads):
        state = optimizer.state.get(p, {})
        if "step" in state:
            t = float(state["step"]) + 1
            m = state["exp_avg"] * beta1 + g * (1 - beta1)
            v = state["exp_avg_sq"] * beta2 + g * g * (1 - beta2)
        else:  # before the first step: zero moments
            t, m, v = 1.0, g * (1 - beta1), g * g * (1 - beta2)
        out.append((m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + eps))
    return out


class Probe:
    """At the current θ: g; the next update direction u; λ_c by :func:`critical_lr` along u; the
    quadratic model's uᵀHu/gᵀu and the directional sharpness gᵀHg/‖g‖² (one HVP each, one in all
    for GD, where u = g)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, batch, lr: float) -> None:
        self.model, self.optimizer, self.loss_fn, self.batch, self.lr = model, optimizer, loss_fn, batch, lr
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.records: list[dict[str, float]] = []
        self.start = lr  # the first search starts at η (at the edge, η_c ≈ η)

    def __call__(self, step: int) -> None:
        loss = self.loss_fn(self.model, self.batch)
        grads = torch.autograd.grad(loss, self.params, create_graph=True)
        g = [d.detach() for d in grads]
        base = loss.item()
        u = next_update(self.optimizer, self.params, g)

        def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
            return sum((x * y).sum() for x, y in zip(a, b)).item()

        # the HVPs first: the line search moves θ in place under the gradient's graph
        start = time.perf_counter()
        hg = torch.autograd.grad(grads, self.params, grad_outputs=g, retain_graph=u is not g)
        hvp_seconds = time.perf_counter() - start
        gg, gu = dot(g, g), dot(g, u)
        directional = dot(g, hg) / gg
        quadratic = directional if u is g else dot(u, torch.autograd.grad(grads, self.params, grad_outputs=u)) / gu
        del grads, hg
        originals = [p.detach().clone() for p in self.params]

        def phi(s: float) -> float:
            with torch.no_grad():
                for p, p0, d in zip(self.params, originals, u):
                    p.copy_(p0).sub_(d, alpha=s)
                value = self.loss_fn(self.model, self.batch).item()
                for p, p0 in zip(self.params, originals):
                    p.copy_(p0)  # θ back bit for bit
            return value - base

        start = time.perf_counter()
        if gu > 0:
            search = critical_lr(phi, self.start)
        else:  # u points uphill (Adam's momentum can): the loss rises at every small step, η_c = 0
            search = LineSearch(0.0, 0, (0.0, 0.0))
        search_seconds = time.perf_counter() - start
        if math.isfinite(search.eta_c) and search.eta_c > 0:
            self.start = search.eta_c  # warm start: the next probe's search begins at this η_c
        self.records.append({
            "step": step, "loss": base, "eta_c": search.eta_c,
            "lambda_c": 2 / search.eta_c if search.eta_c > 0 else (math.inf if search.eta_c == 0 else math.nan),
            "passes": search.passes, "directional": directional, "quadratic": quadratic, "g_dot_u": gu,
            "search_seconds": search_seconds, "hvp_seconds": hvp_seconds,
        })


# -- a watched run with the line search beside the Monitor's probes ------------------------------
def train(setting: Setting, args: Any) -> dict[str, Any]:
    widths, n_data = (SMOKE_WIDTHS, SMOKE_DATA) if args.smoke else (WIDTHS, N_DATA)
    steps, every = (SMOKE_STEPS, SMOKE_EVERY) if args.smoke else (setting.steps, setting.every)
    batch = digits(n_data)
    model = mlp("tanh", widths, seed=args.seed)
    if setting.optimizer == "gd":
        optimizer = torch.optim.SGD(model.parameters(), lr=setting.lr)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=setting.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    run_dir = args.out / "runs" / NAME / setting.key
    if run_dir.exists():
        shutil.rmtree(run_dir)
    warnings.filterwarnings("ignore", message="edgewatch: one curvature probe takes")
    monitor = ew.Monitor(model, optimizer, mse, probe=[batch], run_dir=run_dir, curvature=ew.Schedule(every=every),
                         every=1, norms_every=1, stop_on=["nonfinite"])
    probe = Probe(model, optimizer, mse, batch, setting.lr)
    start, stopped = time.perf_counter(), None
    monitor.attach()
    initial = monitor.measure()  # θ_0 (a fixed schedule does not measure it at attach())
    probe(0)
    try:
        for step in range(1, steps + 1):
            optimizer.zero_grad(set_to_none=True)
            loss = mse(model, batch)
            monitor.observe(loss)
            loss.backward()
            optimizer.step()  # the Monitor measures θ_step here, its curvature on the schedule
            if step % every == 0:
                probe(step)  # the same θ_step
    except ew.StopTraining as stop:
        stopped = stop.event.kind
    finally:
        monitor.close()
    seconds = time.perf_counter() - start
    print(f"  {setting.label}: {monitor.step_count} steps{' (' + stopped + ')' if stopped else ''}, {seconds:.1f} s",
          flush=True)
    metrics = list(read_jsonl(run_dir / "metrics.jsonl"))
    if initial and not any(m["step"] == 0 for m in metrics):
        # The JSONL logger does not write step 0's records (it counts step 0 as already written):
        # θ_0's probe is taken from what measure() returned, the same numbers.
        metrics.insert(0, {"step": 0, **initial})
    events = list(read_jsonl(run_dir / "events.jsonl")) if (run_dir / "events.jsonl").exists() else []
    return {"metrics": metrics, "events": events, "records": probe.records, "steps": monitor.step_count,
            "stopped": stopped, "seconds": seconds, "net": "MLP tanh " + "-".join(map(str, widths)) + f", {n_data} digits"}


# -- analysis ------------------------------------------------------------------------------------
def pearson(x: list[float], y: list[float]) -> float:
    if len(x) < 3:
        return math.nan
    try:
        return statistics.correlation(x, y)
    except statistics.StatisticsError:
        return math.nan


def spearman(x: list[float], y: list[float]) -> float:
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        for rank, index in enumerate(order):
            out[index] = float(rank)
        return out

    return pearson(ranks(x), ranks(y)) if len(x) >= 3 else math.nan


def median(values: list[float]) -> float:
    values = [v for v in values if math.isfinite(v)]
    return statistics.median(values) if values else math.nan


def finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def analyse(setting: Setting, run: dict[str, Any]) -> dict[str, Any]:
    """λ_c against the Monitor's λ_1 (H) and preconditioned λ_1 at the same θ, in units of each one's threshold."""
    lr, metrics = setting.lr, run["metrics"]
    lanczos = {m["step"]: m for m in metrics if names.STABILITY_RATIO in m}  # Adam: none at θ_0 (no P yet)
    loss = dict(zip(*series(metrics, names.LOSS)))  # loss at step t: L(θ_{t-1}), the backward of update t
    rows = []
    for r in run["records"]:
        m = lanczos.get(r["step"])
        if m is None or math.isnan(r["lambda_c"]):
            continue
        t = r["step"]
        # L(θ_t) is logged at step t+1, L(θ_{t+1}) at step t+2: did the next step raise the loss?
        rose = loss[t + 2] > loss[t + 1] if (t + 1) in loss and (t + 2) in loss else None
        rows.append({**r, "lambda_1": m[names.LAMBDA_MAX], "precond": m.get(names.PRECOND_LAMBDA_MAX, math.nan),
                     "ratio": m[names.STABILITY_RATIO], "threshold": m[names.THRESHOLD],
                     "hvps": m.get(names.PROBE_HVPS, math.nan), "probe_seconds": m.get(names.PROBE_SECONDS, math.nan),
                     "overlap": m.get(names.GRADIENT_OVERLAP, math.nan),
                     "monitor_directional": m.get(names.DIRECTIONAL_SHARPNESS, math.nan), "rose": rose,
                     "edge_c": lr * r["lambda_c"] / 2})  # λ_c in units of the one-step threshold 2/η
    t_star = next((r["step"] for r in rows if r["ratio"] >= REACHED), None)
    pre = [r for r in rows if t_star is None or r["step"] < t_star]
    post = [r for r in rows if t_star is not None and r["step"] >= t_star]
    fin = [r for r in rows if math.isfinite(r["lambda_c"])]
    judged = [r for r in post if r["rose"] is not None]
    agree = [(r["edge_c"] > 1) == r["rose"] for r in judged]
    fin_pre, fin_post = [r for r in pre if r in fin], [r for r in post if r in fin]
    # when λ_c itself first reaches the edge (η·λ_c/2 >= 0.9), at or after t*
    t_c = next((r["step"] for r in post if r["edge_c"] >= REACHED), None)
    return {
        "optimizer": setting.optimizer, "lr": lr, "one_step_threshold": 2 / lr,
        "threshold": rows[-1]["threshold"] if rows else math.nan, "t_star": t_star,
        "probes": len(rows), "probes_pre": len(pre), "probes_post": len(post), "uphill": len(rows) - len(fin),
        "steps": run["steps"], "stopped": run["stopped"], "seconds": round(run["seconds"], 1),
        "spearman_pre": spearman([r["lambda_c"] for r in fin_pre], [r["ratio"] for r in fin_pre]),
        "pearson_all": pearson([r["edge_c"] for r in fin], [r["ratio"] for r in fin]),
        "pearson_directional": pearson([r["directional"] for r in fin], [r["ratio"] for r in fin]),
        "ratio_pre": median([r["edge_c"] / r["ratio"] for r in fin_pre]),
        "ratio_post": median([r["edge_c"] / r["ratio"] for r in fin_post]),
        "ratio_post_iqr": quartiles([r["edge_c"] / r["ratio"] for r in fin_post]),
        "edge_c_post": median([r["edge_c"] for r in fin_post]),
        "t_c": t_c, "lag": t_c - t_star if t_c is not None else None,
        "low_post": sum(r["edge_c"] < 0.5 for r in post) / len(post) if post else math.nan,
        "ratio_r_post": median([r["ratio"] for r in post]),
        "c_over_quadratic": median([r["lambda_c"] / r["quadratic"] for r in fin if r["quadratic"] > 0]),
        "directional_over_lambda1_pre": median([r["directional"] / r["lambda_1"] for r in pre]),
        "directional_over_lambda1_post": median([r["directional"] / r["lambda_1"] for r in post]),
        "overlap_pre": median([r["overlap"] for r in pre]), "overlap_post": median([r["overlap"] for r in post]),
        "above_post": sum(r["edge_c"] > 1 for r in post) / len(post) if post else math.nan,
        "rose_post": sum(bool(r["rose"]) for r in judged) / len(judged) if judged else math.nan,
        "sign_agreement": sum(agree) / len(agree) if agree else math.nan, "sign_judged": len(agree),
        "passes_max": max((r["passes"] for r in rows), default=0),
        "passes_mean": statistics.fmean(r["passes"] for r in fin) if fin else math.nan,
        "hvps_median": median([r["hvps"] for r in rows]),
        "search_ms": 1e3 * median([r["search_seconds"] for r in fin]),
        "hvp_ms": 1e3 * median([r["hvp_seconds"] for r in rows]),
        "lanczos_ms": 1e3 * median([r["probe_seconds"] for r in rows]),
        "monitor_directional_check": median([abs(r["monitor_directional"] / r["directional"] - 1) for r in rows
                                             if math.isfinite(r["monitor_directional"])]),
        "series": {"step": [r["step"] for r in rows], "lambda_1": rounded([r["lambda_1"] for r in rows]),
                   "precond": rounded([r["precond"] for r in rows]), "ratio": rounded([r["ratio"] for r in rows]),
                   "lambda_c": rounded([r["lambda_c"] for r in rows]),
                   "directional": rounded([r["directional"] for r in rows]),
                   "quadratic": rounded([r["quadratic"] for r in rows]), "passes": [r["passes"] for r in rows]},
        "loss_steps": series(metrics, names.LOSS)[0], "loss": rounded(series(metrics, names.LOSS)[1]),
        "net": run["net"],
    }


def quartiles(values: list[float]) -> tuple[float, float]:
    values = sorted(v for v in values if math.isfinite(v))
    if len(values) < 4:
        return (min(values, default=math.nan), max(values, default=math.nan))
    q = statistics.quantiles(values, n=4)
    return (q[0], q[2])


def findings_for(a: dict[str, Any]) -> list[dict[str, Any]]:
    gd = a["optimizer"] == "gd"
    name = "GD" if gd else "Adam"
    setting = (f"{a['net']}, MSE, full-batch {name} eta={a['lr']:g} (2/eta={a['one_step_threshold']:.4g}"
               + (")" if gd else f", 38/eta={a['threshold']:.4g})"))
    # GD: r = η·λ_1/2, so (η·λ_c/2)/r = λ_c/λ_1. Adam: r = η·λ_1(P⁻¹H)/38, each against its own threshold.
    reference = "lambda_1" if gd else "r = eta*lambda_1(P^-1 H)/38"
    versus = "lambda_c/lambda_1" if gd else "(eta*lambda_c/2)/r"
    t_star = a["t_star"]
    where = f"t*={t_star}" if t_star is not None else f"r never reached {REACHED:g}"
    low, high = a["ratio_post_iqr"]
    uphill = f"; {a['uphill']} probes with g.u <= 0 (lambda_c infinite) left out" if a["uphill"] else ""
    return [
        finding("critical sharpness: progressive sharpening", PAPER, setting,
                f"before t* (r >= {REACHED:g}), Spearman(lambda_c, {reference}) >= {SPEARMAN_MIN:g}",
                f"{where}; Spearman {a['spearman_pre']:.3f} over {a['probes_pre']} probes; median {versus} "
                f"{a['ratio_pre']:.3g} there; gradient's share in the top eigenvector (Monitor) median "
                f"{a['overlap_pre']:.2g} before t*, {a['overlap_post']:.2g} after{uphill}",
                a["probes_pre"] >= 3 and a["spearman_pre"] >= SPEARMAN_MIN, spearman_pre=a["spearman_pre"]),
        finding("critical sharpness: edge of stability", PAPER, setting,
                f"after t*, median {versus} within 1 +- {RATIO_BAND:g}",
                f"{where}; median {versus} {a['ratio_post']:.3f} (IQR {low:.3f}-{high:.3f}) over "
                f"{a['probes_post']} probes; median eta*lambda_c/2 {a['edge_c_post']:.3f}, r {a['ratio_r_post']:.3f}; "
                f"lambda_c > 2/eta at {a['above_post']:.0%}, < 0.5*2/eta at {a['low_post']:.0%}; "
                f"lambda_c first >= {REACHED:g}*2/eta at step {a['t_c']} ({a['lag']} steps after t*)",
                a["probes_post"] >= 3 and abs(a["ratio_post"] - 1) <= RATIO_BAND, ratio_post=a["ratio_post"]),
        finding("critical sharpness: tracks the sharpness over the run", PAPER, setting,
                f"Pearson(lambda_c, {reference}) over all probes >= {PEARSON_MIN:g}",
                f"Pearson {a['pearson_all']:.3f} over {a['probes'] - a['uphill']} probes (g'Hg/|g|^2: "
                f"{a['pearson_directional']:.3f}); median lambda_c/(u'Hu/g'u) {a['c_over_quadratic']:.3f}; "
                f"median (g'Hg/|g|^2)/lambda_1(H) {a['directional_over_lambda1_pre']:.2g} before t*, "
                f"{a['directional_over_lambda1_post']:.2g} after",
                a["pearson_all"] >= PEARSON_MIN, pearson=a["pearson_all"]),
        finding("critical sharpness: cost", PAPER, setting,
                "every estimate in fewer than ten forward passes (L(theta) comes with the gradient)",
                f"max {a['passes_max']}, mean {a['passes_mean']:.2f} forward passes ({a['search_ms']:.1f} ms); "
                f"Monitor's Lanczos: median {a['hvps_median']:.0f} HVPs, {a['lanczos_ms']:.0f} ms per probe",
                0 < a["passes_max"] < 10, passes_max=a["passes_max"], passes_mean=a["passes_mean"]),
        finding("critical sharpness: predicts the next step's loss change", PAPER, setting,
                f"after t*, lambda_c > 2/eta exactly when the next step raised the loss, at >= {SIGN_AGREEMENT:.0%} of probes",
                f"agreement {a['sign_agreement']:.1%} of {a['sign_judged']} probes (loss rose after "
                f"{a['rose_post']:.0%} of them)",
                a["sign_judged"] >= 3 and a["sign_agreement"] >= SIGN_AGREEMENT, sign_agreement=a["sign_agreement"]),
    ]


def figure(results: dict[str, dict[str, Any]], path) -> None:
    """Per run: λ_1 (Lanczos), λ_c (line search), gᵀHg/‖g‖² and 2/η against the step; the loss below."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(2, len(results), figsize=(6.2 * len(results), 8.5), squeeze=False,
                             gridspec_kw={"height_ratios": [2.2, 1]})
    for column, a in enumerate(results.values()):
        top, bottom = axes[0, column], axes[1, column]
        s = a["series"]
        gd = a["optimizer"] == "gd"
        lam_c = [v if math.isfinite(v) else math.nan for v in s["lambda_c"]]
        top.plot(s["step"], s["lambda_1"], "-", color="black", lw=2, label="λ_1(H) (Monitor, Lanczos)")
        if not gd:
            top.plot(s["step"], s["precond"], "-", color="tab:purple", lw=2, label="λ_1(P⁻¹H) (Monitor)")
            top.axhline(a["threshold"], color="tab:purple", ls="--", lw=1.2, label="38/η")
            top.plot(s["step"], s["quadratic"], "+", color="tab:orange", ms=6, label="uᵀHu/gᵀu (quadratic model)")
        top.plot(s["step"], lam_c, ".-", color="tab:red", lw=1, ms=4, label="λ_c = 2/η_c (line search)")
        top.plot(s["step"], s["directional"], "x", color="tab:blue", ms=4, label="gᵀHg/‖g‖² (one HVP)")
        top.axhline(a["one_step_threshold"], color="gray", ls="--", lw=1.2, label="2/η")
        if a["t_star"] is not None:
            top.axvline(a["t_star"], color="gray", ls=":", lw=1)
            bottom.axvline(a["t_star"], color="gray", ls=":", lw=1)
        title = (f"GD η={a['lr']:g}: median λ_c/λ_1 after t* = {a['ratio_post']:.2f}" if gd else
                 f"Adam η={a['lr']:g}: median ηλ_c/2 after t* = {a['edge_c_post']:.2f}")
        top.set(ylabel="sharpness" if gd else "sharpness (log)", title=f"{title}, {a['passes_mean']:.1f} passes per λ_c")
        if gd:
            top.set_ylim(0, 1.6 * a["one_step_threshold"])
        else:
            top.set_yscale("log")
        top.legend(fontsize=7.5, loc="lower right")
        bottom.plot(a["loss_steps"], a["loss"], color="tab:green", lw=1)
        bottom.set(yscale="log", xlabel="step", ylabel="training loss (MSE)")
    first = next(iter(results.values()))
    fig.suptitle(f"Critical sharpness vs the Monitor's λ_1 through the edge of stability: {first['net']}, full batch "
                 f"(after Kalra et al. 2026; dotted: t*, r ≥ {REACHED:g})")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    start, cpu_start = time.perf_counter(), time.process_time()
    print(f"{NAME}: full-batch GD and Adam, lambda_1 by the Monitor's Lanczos vs lambda_c by line search"
          f"{' (smoke)' if args.smoke else ''}", flush=True)
    results, findings = {}, []
    for setting in SETTINGS:
        analysis = analyse(setting, train(setting, args))
        results[setting.key] = analysis
        findings += findings_for(analysis)
    figure(results, args.out / f"{NAME}.png")
    for a in results.values():
        stride = max(1, len(a["loss_steps"]) // 300)
        a["loss_steps"], a["loss"] = a["loss_steps"][::stride], a["loss"][::stride]
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    every = ", ".join(f"{x.key}: {SMOKE_EVERY if args.smoke else x.every}" for x in SETTINGS)
    notes = (f"probes every N steps ({every}): the Monitor's full Lanczos solve and, at the "
             f"same theta, the line search (<= {MAX_PASSES} forward passes, bracket tolerance {REL_TOL:g}) and one HVP; "
             f"process CPU {cpu:.0f} s (wall {seconds:.0f} s)")
    return finish(args, NAME, findings, results, seconds, notes=notes, cpu=cpu)


if __name__ == "__main__":
    sys.exit(main())
