"""Warmup and normalization at one large learning rate: early η·λ_1 decides whether training survives.

Paper: Gilmer, Ghorbani, Garg, Kudugunta, Neyshabur, Cardoze, Dahl, Nado, Firat 2022, A Loss
Curvature Perspective on Training Instability in Deep Learning, https://arxiv.org/abs/2110.04369.
Their claim, in their abstract's words: "successful model and hyperparameter choices allow the
early optimization trajectory to either avoid -- or navigate out of -- regions of high curvature
and into flatter regions that tolerate a higher learning rate". What they track is the early
trajectory of the stability ratio r = η_t·λ_1/c: c = 2 for gradient descent, λ_1 the top
eigenvalue of the training-loss Hessian; c = 38 for Adam with β1 = 0.9, λ_1 that of the
preconditioned Hessian P^-½HP^-½ (the threshold 38/η of Cohen et al. 2022, Adaptive Gradient
Methods at the Edge of Stability, https://arxiv.org/abs/2207.14484, derived holding the
preconditioner fixed). Learning-rate warmup avoids the region by letting λ_1 fall while η_t rises
(λ_1 tracks 2/η_t), normalization layers by starting flatter.

Setting: one ReLU MLP 64-128×4-10 (He-normal init, λ_1 ≈ 195 at init; PyTorch's default init
would give 1.7), full-batch training on 1000 scikit-learn digits with the square loss, 797 held
out; GD at η = 0.1 (2/η = 20) and Adam at lr = 0.03, 400 steps; with and without 200 steps of
linear warmup; no normalization, BatchNorm or LayerNorm before every ReLU (GD); no normalization
(Adam): 8 runs, each with an ``edgewatch.Monitor`` (curvature on the full training set at steps
1-17, log-spaced to 100, then every 20).

Measurement convention (the Monitor's; README, docs/math.md §5): the numbers of step t are
measured after update t, at θ_t, with the η_t of update t (``lr`` before ``scheduler.step()``) and,
for Adam, the preconditioner in the optimizer's state after update t, P_t = (1 − β1^t)·diag(√v̂_t + ε).
  - GD: r(t) = η_t·λ_1(H(θ_t))/2, the full-batch Hessian at the current iterate, as Cohen et al.
    2021 and Gilmer et al. plot it. During warmup the next update uses η_{t+1} = η_t·(t+1)/t, so
    the logged r is below the next update's by that factor (×2 at step 1, ×1.1 at step 10), where
    r is far below 1 anyway.
  - Adam: in Kingma & Ba's Algorithm 1 (Adam: A Method for Stochastic Optimization,
    https://arxiv.org/abs/1412.6980) update t takes g_t = ∇f(θ_{t−1}), v_t = β2·v_{t−1} + (1 − β2)·g_t²
    and θ_t = θ_{t−1} − α·m̂_t/(√v̂_t + ε). So P_t holds the gradients at θ_0 … θ_{t−1}: the Monitor
    pairs H(θ_t) with the preconditioner of the update that led to θ_t, while the update from θ_t
    will use P_{t+1}, which also holds g(θ_t)². Late in training P_{t+1} ≈ P_t and the pairings
    agree; in Adam's first steps v̂_t is the mean of t squared gradients (the newest weighs about 1/t)
    and they do not. A check outside this script (the same seed-0 runs, λ_1 by Lanczos under each
    pairing) found, without warmup: r(1) = 5.8e6 as logged (H(θ_1), after the loss jumped to 472,
    with P_1 = 0.1·(|g_1| + ε) from the gradient at θ_0, which is below 1e-6 on 1.3% of the
    coordinates); 220 for the update actually taken at step 1 (H(θ_0) with P_1); 6.4 for the update
    from θ_1 (P_2, η_2). r(2) = 1.9e4 as logged, 0.61 for the update from θ_2. With warmup the logged
    r jumps between 0.07 and 111 (step 10) and 1.7-2.8 (steps 15-18) while the update from θ_t has
    r = 0.06-0.15 throughout steps 1-20. From step ~35 on the pairings mostly agree within a few
    percent (0.80 and 0.80 at step 50 without warmup, 0.162 and 0.166 with), except at excursions of
    the logged r once the run without warmup has reached the adaptive edge: 1.63 against 1.07 (step
    59), 2.49 against 1.38 (step 74). Which pairing Gilmer et al. used is not said in the sources
    available here (their abstract); this script reads what the Monitor logged and keeps its pairing.

Criteria (computed from the Monitor's records):
  1. per run, the paper's claim both ways: a run that trains (final loss < 0.1 and test accuracy
     >= 90%) either avoided high curvature (max r over steps 1-100 <= 2; for GD r <= 2 is
     η·λ_1 <= 4, the catapult bound of Lewkowycz et al. 2020) or navigated out of it (every probe of
     steps 51-100 back at r <= 2); a run that fails went past r = 2 in steps 1-100 and raised
     ``loss_spike`` or ``nonfinite`` there. (This criterion first read "trains exactly when max r
     over steps 1-100 <= 2": the paper's "avoid" without its "or navigate out of". So read, it
     failed both Adam runs, which train: the run without warmup comes back from a first step far
     past the edge, and the warmup run's max r = 111 is the pairing effect above. As now read it
     passes the warmup run and still fails the run without warmup, by one probe: below.)
  2. warmup (no norm; LayerNorm): without it the run fails with max r > 2; with it it trains, and
     λ_1 falls from > 2·(2/η) at step 1 to <= 2·(2/η) by the end of warmup;
  3. BatchNorm without warmup trains where no normalization fails, with r(1) < 1/5 of the
     no-norm run's and r(10) < 1;
  4. Adam: without warmup r(1) > 2 and the loss rises > 10× in steps 1-20; with warmup it never
     rises above its initial value and ends lower. (r(1) > 2 without warmup and r(1) ≈ 1 with hold
     under each pairing above: 5.8e6, 220, 6.4 against 1.08, 1.1, 0.15.)

Measured (seed 0; seeds 1 and 2 agree unless said):
  - GD, no warmup, no norm: r(1) = 51.6, r(2) = 182; ``eos_reached`` (warning), ``loss_spike``,
    ``grad_spike``, ``output_logit_divergence``, ``nonfinite`` at step 4. Fails.
  - GD, warmup, no norm: r(1) = 0.048 (η_1 = η/200), r rises with η_t to the edge by step ~30 and
    stays there (max r = 1.40 over steps 1-100); λ_1 falls from 192 to 22.4 = 1.12·(2/η) by step
    200: the sharpness follows 2/η_t down (Gilmer et al. Fig. 1). Loss 0.046, test acc 92.7%.
  - GD, no warmup, BatchNorm: r(1) = 1.46 (λ_1 ≈ 32 at init against ≈ 192 without
    normalization, read off the warmup runs' first probe; 35× lower after one full step), then a
    small catapult: the loss rises 2.9 → 5.1 in steps 2-4 while r falls below 1 (0.80 at step
    10). Loss 0.030, acc 92.6%. With warmup: max r 0.78, loss 0.039.
  - GD, no warmup, LayerNorm: r(1) = 5.0, r(2) = 6.9, non-finite at step 6 (seed 1: a loss spike,
    then a collapsed network at loss 0.45, acc 9%, not a divergence). With warmup it trains (max
    r 1.46; λ_1 94 → 20.8 by step 200; loss 0.055, acc 94.4%). LayerNorm halves λ_1 at init
    (94 against 192), not enough at η = 0.1.
  - Adam, no warmup: r(1) = 5.8e6 as logged (220 for the update taken, above), the loss jumps
    4.4 → 473 at step 2 and is back to 2.1 at step 3 and 0.62 at step 4 (``loss_spike``); r is below
    1 at every probe of steps 5-50 (0.17-0.96), then reaches the adaptive edge 38/η (r = 1.04 at
    step 53) and hovers there: the 14 probes of steps 51-100 have median r 1.03, but three are
    above it, 1.63 and 1.49 at steps 59-60 and 2.49 at step 74. It trains (loss 0.012, acc 91.6%).
    Criterion 1 FAILS on that one probe: the run did not avoid (max r 5.8e6), and r(74) = 2.49 > 2
    means it has not navigated out by the letter of the criterion. For the update from θ_74 (P_75,
    the check above) r is 1.38, and at steps 59-60 1.07 and 1.06: the excursions are the pairing
    effect again.
  - Adam, warmup: no rise, max logged r 111 at step 10 (0.11 for the update from θ_10), max r over
    steps 51-100 0.46: navigated out by the logged r (avoided by the other pairing); loss 0.00036,
    acc 96.9%. PASS (it failed as the criterion first read).
  Criterion 1 as now stated passes for every GD run and for Adam with warmup on seeds 0, 1, 2 (max
  r over steps 51-100 of the warmup Adam run 0.46, 1.46, 0.48). Adam without warmup fails it on
  seeds 0 and 1 (max logged r over steps 51-100: 2.49, 270) and passes on seed 2 (1.58): whether
  one probe at the adaptive edge lands on an excursion of the logged r. Seed 0: 11 of 12 findings
  pass; seed 1: 11; seed 2: 12.

Did NOT reproduce (or not as stated):
  - Max early r as a predictor of success for Adam, as criterion 1 first read: Adam survives a
    first step far past the edge (r = 220 for the update taken). Its step is bounded per
    coordinate by about the step size (Kingma & Ba §2.1), so one update past the edge gives a loss
    spike, not a divergence. The paper's "or navigate out of" describes the seed-0 run (r below 1
    at every probe of steps 5-50), but criterion 1 reads the second half of the window, where the run
    has sharpened back to the adaptive edge and the Monitor's pairing puts one probe at 2.49: FAIL,
    kept (the threshold and the window were fixed before this run; moving them after it would fit
    the criterion to the number).
  - BatchNorm's catapult is mild (loss ×1.76 over 3 steps on seed 0); the Monitor's ``catapult``
    detector (the probe batch's loss up 1.5× and back while r ≥ 1, with λ_1 down 20%;
    ``docs/detectors.md``) reports it, and the one of the warmup run without normalization near
    the edge. Adam's jump at step 2 is a ``loss_spike``, not a catapult (Adam's r in its first 50
    steps is not judged by the Monitor's detectors: its second-moment estimate is still warming up).

Full run: 304 s wall with the 2 shared cores loaded (load ≈ 5; 81 s on one idle core); ``--smoke``
(6 steps, 200 training examples): ≈ 7 s.

    python benchmarks/science/warmup_normalization.py [--out DIR] [--seed 0] [--smoke]
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import (
    digits,
    finding,
    finish,
    mse,
    parse_args,
    require_matplotlib,
    rounded,
    save_figure,
    series,
    watched_run,
)
from torch import nn

import edgewatch as ew

NAME = "warmup_normalization"
PAPER = "Gilmer et al. 2022"
GD_LR = 0.1  # 2/η = 20, an order of magnitude below λ_1 of the He-initialized network without normalization
ADAM_LR = 0.03  # the largest of 0.003/0.01/0.03 tried: without warmup its second step spikes the loss ~100×
WARMUP = 200  # linear warmup to η over this many steps (100 steps let r overshoot to ~2 on some seeds)
STEPS, SMOKE_STEPS = 400, 6
N_TRAIN, SMOKE_TRAIN = 1000, 200  # of the 1797 digits; the last 797 are the test set
EARLY = 100  # "early in training": the steps over which max r is taken
SETTLED = EARLY // 2  # "navigated out": every probe in steps SETTLED+1..EARLY back at r <= R_OK (the window's second half)
REPORT_STEPS = (1, 2, 5, 10, 20, 50)
# "Avoided" high curvature: r <= 2 over the first EARLY steps. For GD that is η·λ_1 <= 4, the largest step from
# which gradient descent can still catapult back to stability (Lewkowycz et al. 2020: η < 4/λ_0).
R_OK = 2.0
LOSS_OK, ACC_OK = 0.1, 0.9  # "trains well": final training loss below, test accuracy at or above
SPIKE = 10.0  # an early loss spike: the loss rises above this many times its initial value
CURVATURE = ew.Schedule(every=20, dense_until=EARLY, per_decade=40)  # steps 1-17 all, then ~6% apart, then every 20


@dataclass(frozen=True)
class Setting:
    name: str  # run directory and key in the JSON
    label: str
    warmup: bool
    norm: str | None  # None, "batch" or "layer": before every ReLU
    optimizer: str = "gd"  # "gd" (full-batch SGD, no momentum) or "adam"

    @property
    def lr(self) -> float:
        return GD_LR if self.optimizer == "gd" else ADAM_LR


SETTINGS = (
    Setting("plain", "GD, no warmup, no norm", False, None),
    Setting("warmup", "GD, warmup, no norm", True, None),
    Setting("batchnorm", "GD, no warmup, BatchNorm", False, "batch"),
    Setting("batchnorm-warmup", "GD, warmup, BatchNorm", True, "batch"),
    Setting("layernorm", "GD, no warmup, LayerNorm", False, "layer"),
    Setting("layernorm-warmup", "GD, warmup, LayerNorm", True, "layer"),
    Setting("adam", "Adam, no warmup, no norm", False, None, "adam"),
    Setting("adam-warmup", "Adam, warmup, no norm", True, None, "adam"),
)


def he_mlp(norm: str | None, *, seed: int, width: int = 128, depth: int = 4) -> nn.Sequential:
    """ReLU MLP 64-128×4-10 with He-normal weights and zero biases.

    Not ``common.mlp``: PyTorch's default initialization puts this network at λ_1 ≈ 1.7 on the
    digits, He initialization at λ_1 ≈ 195 (seed 0), and only the latter makes η = 0.1 unstable.
    """
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    fan_in = 64
    for _ in range(depth):
        linear = nn.Linear(fan_in, width)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if norm == "batch":
            layers.append(nn.BatchNorm1d(width))
        elif norm == "layer":
            layers.append(nn.LayerNorm(width))
        layers.append(nn.ReLU())
        fan_in = width
    head = nn.Linear(fan_in, 10)
    nn.init.kaiming_normal_(head.weight, nonlinearity="linear")
    nn.init.zeros_(head.bias)
    return nn.Sequential(*layers, head)


def train(setting: Setting, train_set, test_set, steps: int, out: Path, seed: int) -> dict[str, Any]:
    """One full-batch run with the Monitor attached (curvature on the whole training set: the Hessian GD sees)."""
    model = he_mlp(setting.norm, seed=seed)
    if setting.optimizer == "gd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=setting.lr)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=setting.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / WARMUP) if setting.warmup else 1.0)
    run = watched_run(model, optimizer, mse, train_set, steps, out / "runs" / NAME / setting.name,
                      scheduler=scheduler, curvature=CURVATURE, label=setting.label)
    with torch.no_grad():
        correct = model.eval()(test_set[0]).argmax(-1) == test_set[1]
    run["accuracy"] = math.nan if run["stopped"] else correct.float().mean().item()
    return run


# -- what the Monitor wrote, summarized ---------------------------------------------------------
def early_peak(steps: Sequence[int], values: Sequence[float], until: int) -> tuple[float, int | None]:
    """The largest value at steps <= ``until`` and its step; a non-finite value (a diverged run) counts as +inf."""
    pairs = [(v if math.isfinite(v) else math.inf, s) for s, v in zip(steps, values) if s <= until]
    return max(pairs, default=(math.nan, None))


def at_step(steps: Sequence[int], values: Sequence[float], step: int) -> float | None:
    """The value at the last probe at or before ``step`` (``None`` if the run never got there)."""
    if not steps or steps[-1] < step:
        return None
    return next(v for s, v in zip(reversed(steps), reversed(values)) if s <= step)


def summarize(setting: Setting, run: dict[str, Any]) -> dict[str, Any]:
    """The numbers every criterion is computed from."""
    metrics = run["metrics"]
    probes = [m for m in metrics if "curvature/stability_ratio" in m]
    r_steps = [m["step"] for m in probes]
    ratio = [m["curvature/stability_ratio"] for m in probes]
    # λ_1(H) for GD; λ_1(P^-½HP^-½) for Adam, the sharpness its r is computed from
    sharpness = [m.get("curvature/precond/lambda_max", math.nan) for m in probes]
    threshold = [m.get("curvature/threshold", math.nan) for m in probes]
    loss_steps, loss = series(metrics, "loss")
    final_loss = loss[-1] if loss else math.nan
    trained = run["stopped"] is None and final_loss < LOSS_OK and run["accuracy"] >= ACC_OK
    loss_peak, loss_peak_step = early_peak(loss_steps, loss, 20)
    ratio_peak, ratio_peak_step = early_peak(r_steps, ratio, EARLY)
    # Gilmer et al.'s second way to train: r went past the edge early but came back. The second half of the early
    # window must have probes, all finite and at r <= R_OK; a run that stopped (non-finite) never comes back.
    settled = [v for s, v in zip(r_steps, ratio) if SETTLED < s <= EARLY]
    settled_peak = max((v if math.isfinite(v) else math.inf for v in settled), default=math.nan)
    navigated = run["stopped"] is None and bool(settled) and settled_peak <= R_OK
    early_events = sorted({(e["kind"], e["step"]) for e in run["events"] if e["step"] <= EARLY}, key=lambda ks: ks[1])
    return {
        "label": setting.label,
        "lr": setting.lr,
        "warmup": WARMUP if setting.warmup else 0,
        "steps": run["steps"],
        "stopped": run["stopped"],
        "final_loss": final_loss,
        "test_accuracy": run["accuracy"],
        "trained": trained,
        "initial_loss": loss[0] if loss else math.nan,
        "max_early_loss": loss_peak, "max_early_loss_step": loss_peak_step,
        "ratio_at": {s: at_step(r_steps, ratio, s) for s in REPORT_STEPS},
        "max_early_ratio": ratio_peak, "max_early_ratio_step": ratio_peak_step,
        "max_settled_ratio": settled_peak, "navigated_out": navigated,
        "sharpness_at_1": sharpness[0] if sharpness else math.nan,
        "threshold_at_1": threshold[0] if threshold else math.nan,
        "sharpness_end_of_warmup": at_step(r_steps, sharpness, WARMUP),
        "events": [{"kind": k, "step": s} for k, s in early_events],
        "eos_warning_at": next((e["step"] for e in run["events"] if e["kind"] == "eos_reached" and e["severity"] == "warning"), None),
        "series": {
            "loss_steps": loss_steps, "loss": rounded(loss, 4),
            "curvature_steps": r_steps, "ratio": rounded(ratio), "sharpness": rounded(sharpness), "threshold": rounded(threshold),
        },
    }


def outcome(summary: dict[str, Any]) -> str:
    """How the run ended: where it stopped, or its final loss and test accuracy."""
    if summary["stopped"]:
        return f"stopped at step {summary['steps']} ({summary['stopped']})"
    return f"final loss {summary['final_loss']:.3g}, test acc {summary['test_accuracy']:.1%}"


def describe(summary: dict[str, Any]) -> str:
    """r at the report steps, max early r, outcome and early events, in one line."""
    ratios = ", ".join(f"r({s})={v:.3g}" for s, v in summary["ratio_at"].items() if v is not None)
    kinds = sorted({e["kind"] for e in summary["events"]})
    return (f"{ratios}; max r(1-{EARLY})={summary['max_early_ratio']:.3g}, "
            f"max r({SETTLED + 1}-{EARLY})={_fmt(summary['max_settled_ratio'])}; {outcome(summary)}; "
            f"early events: {', '.join(kinds) or 'none'}")


# -- the criteria ------------------------------------------------------------------------------
def run_findings(summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run, Gilmer et al.'s claim in both directions, from the Monitor's r (module docstring, criterion 1).

    A run that trains either avoided the high-curvature region (max r <= R_OK over the first EARLY
    steps) or navigated out of it (every probe over steps SETTLED+1..EARLY back at r <= R_OK); a run
    that fails went past R_OK early and raised ``loss_spike`` or ``nonfinite`` in those steps. The
    Adam runs are held to the same rule, with r from the preconditioned sharpness against 38/η.
    """
    rows = []
    for name, s in summaries.items():
        avoided = s["max_early_ratio"] <= R_OK
        warned = s["stopped"] == "nonfinite" or any(e["kind"] in ("loss_spike", "nonfinite") for e in s["events"])
        if s["trained"]:
            consistent = avoided or s["navigated_out"]
        else:
            consistent = not avoided and warned
        rows.append(finding(
            "early stability ratio decides training", PAPER, f"ReLU MLP, MSE, {s['label']}, lr={s['lr']:g}",
            f"trains (loss<{LOSS_OK:g}, acc>={ACC_OK:.0%}) only if it avoids (max r over steps 1-{EARLY} <= {R_OK:g}) "
            f"or navigates out of (max r over steps {SETTLED + 1}-{EARLY} <= {R_OK:g}) high curvature; fails only "
            f"with max r over steps 1-{EARLY} > {R_OK:g} and an early loss_spike/nonfinite",
            describe(s), consistent, run=name, avoided=avoided, navigated_out=s["navigated_out"],
            trained=s["trained"], max_early_ratio=s["max_early_ratio"], max_settled_ratio=s["max_settled_ratio"],
            ratio_at=s["ratio_at"]))
    return rows


def warmup_findings(summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Warmup rescues a learning rate that fails without it, by letting λ_1 fall to 2/η while η_t rises."""
    rows = []
    for norm, plain, warm in (("no norm", "plain", "warmup"), ("LayerNorm", "layernorm", "layernorm-warmup")):
        a, b = summaries[plain], summaries[warm]
        eta = b["lr"]
        start_ratio = b["sharpness_at_1"] * eta / 2  # r the network's initial λ_1 would have at the full η
        end = b["sharpness_end_of_warmup"]
        end_ratio = end * eta / 2 if end is not None else math.nan
        passed = (not a["trained"] and b["trained"] and a["max_early_ratio"] > R_OK
                  and start_ratio > R_OK and end_ratio <= R_OK)
        rows.append(finding(
            "warmup lets GD navigate to a flatter region", PAPER, f"ReLU MLP, MSE, {norm}, eta={eta:g}, warmup {WARMUP}",
            f"without warmup fails with max r>{R_OK:g}; with warmup trains, lambda_1 falling from above "
            f"{R_OK:g}x2/eta (step 1) to <= {R_OK:g}x2/eta by step {WARMUP}",
            f"no warmup: r(1)={_fmt(a['ratio_at'][1])}, {'trained' if a['trained'] else 'failed'} ({outcome(a)}); "
            f"warmup: lambda_1(1)={b['sharpness_at_1']:.4g} (= {start_ratio:.3g}x2/eta), lambda_1({WARMUP})={_fmt(end)} "
            f"(= {_fmt(end_ratio)}x2/eta), {'trained' if b['trained'] else 'failed'} ({outcome(b)})",
            passed, start_ratio=start_ratio, end_ratio=end_ratio))
    return rows


def normalization_findings(summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """BatchNorm lowers the initial sharpness and the run navigates out of r > 1 without warmup (a catapult)."""
    plain, bn, ln = summaries["plain"], summaries["batchnorm"], summaries["layernorm"]
    r1 = {k: s["ratio_at"][1] for k, s in (("plain", plain), ("batch", bn), ("layer", ln))}
    r10 = bn["ratio_at"][10]
    rise = bn["max_early_loss"] / bn["initial_loss"]
    passed = (bn["trained"] and not plain["trained"] and r1["batch"] is not None and r1["plain"] is not None
              and r1["batch"] < r1["plain"] / 5 and r10 is not None and r10 < 1)
    return [finding(
        "normalization lowers early sharpness", PAPER, f"ReLU MLP, MSE, eta={GD_LR:g}, no warmup",
        "BatchNorm trains where no-norm fails: r(1) < 1/5 of no-norm's and r(10) < 1",
        f"r(1): no norm {_fmt(r1['plain'])}, LayerNorm {_fmt(r1['layer'])}, BatchNorm {_fmt(r1['batch'])}; "
        f"BatchNorm r(10)={_fmt(r10)}, loss x{rise:.2f} in steps 1-20, {'trained' if bn['trained'] else 'failed'} "
        f"({outcome(bn)}); LayerNorm {'trained' if ln['trained'] else 'failed'} ({outcome(ln)})",
        passed, ratio_at_1=r1, batchnorm_loss_rise=rise)]


def adam_findings(summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Adam: without warmup the first step is far past 38/η and the loss spikes; warmup avoids the spike.

    The warmup run's r is not part of the criterion: in Adam's first steps a few coordinates have
    √v̂ near 0, and P^-½HP^-½ then has isolated huge eigenvalues for a step or two (real ones: a
    cold-started Lanczos finds them too) that leave no mark on the loss. Its r (and max r) are
    reported, and :func:`run_findings` holds it to the GD rule.
    """
    a, b = summaries["adam"], summaries["adam-warmup"]
    spike_a, spike_b = a["max_early_loss"] / a["initial_loss"], b["max_early_loss"] / b["initial_loss"]
    r1_a, r1_b = a["ratio_at"][1], b["ratio_at"][1]
    passed = (r1_a is not None and r1_a > R_OK and spike_a > SPIKE and spike_b <= 1.0
              and b["final_loss"] < a["final_loss"])
    return [finding(
        "warmup avoids Adam's early loss spike", PAPER, f"ReLU MLP, MSE, Adam lr={ADAM_LR:g}, warmup {WARMUP} or none",
        f"no warmup: r(1) > {R_OK:g} (preconditioned, 38/eta) and loss >{SPIKE:g}x initial in steps 1-20; "
        f"warmup: loss never above initial, lower final loss",
        f"no warmup: r(1)={_fmt(r1_a)}, loss x{spike_a:.3g} at step {a['max_early_loss_step']}, {outcome(a)}; "
        f"warmup: r(1)={_fmt(r1_b)}, max r(1-{EARLY})={b['max_early_ratio']:.3g} at step {b['max_early_ratio_step']}, "
        f"loss x{spike_b:.3g}, {outcome(b)}",
        passed, loss_rise={"adam": spike_a, "adam-warmup": spike_b}, ratio_at_1={"adam": r1_a, "adam-warmup": r1_b})]


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3g}"


# -- the figure --------------------------------------------------------------------------------
COLORS = {None: "tab:red", "batch": "tab:blue", "layer": "tab:green"}


def figure(settings: Sequence[Setting], summaries: dict[str, dict[str, Any]], path: Path) -> None:
    """Gilmer et al.'s view: loss, r (r = 1 dashed) and λ_1 against the moving threshold 2/η_t, on a log step axis.

    Colour: normalization (Adam purple); solid: warmup, dashed: none. Diverging runs leave the top
    of the axes (the y ranges are clipped so the runs that train stay readable).
    """
    plt = require_matplotlib()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharex=True)
    (ax_loss, ax_ratio), (ax_gd, ax_adam) = axes
    for setting in settings:
        s = summaries[setting.name]["series"]
        color = "tab:purple" if setting.optimizer == "adam" else COLORS[setting.norm]
        style = "-" if setting.warmup else "--"
        ax_loss.plot(s["loss_steps"], s["loss"], style, color=color, label=setting.label, lw=1.2)
        ax_ratio.plot(s["curvature_steps"], s["ratio"], style, color=color, marker=".", ms=3, lw=1.2)
        ax = ax_adam if setting.optimizer == "adam" else ax_gd
        ax.plot(s["curvature_steps"], s["sharpness"], style, color=color, marker=".", ms=3, lw=1.2)
    for ax, optimizer, c, lr in ((ax_gd, "gd", 2, GD_LR), (ax_adam, "adam", 38, ADAM_LR)):
        # Every run of one optimizer and schedule has the same threshold: one black line per schedule
        # (the constant one drawn across, since the run without warmup may stop early).
        ax.axhline(c / lr, color="black", ls=":", lw=1.3, label=f"{c}/η, constant η")
        warm = next(st for st in settings if st.optimizer == optimizer and st.warmup)
        s = summaries[warm.name]["series"]
        ax.plot(s["curvature_steps"], s["threshold"], "-.", color="black", lw=1.3, label=f"{c}/η_t, warmup")
        ax.legend(fontsize=8, loc="upper right")
    ax_loss.set(yscale="log", ylim=(None, 1e3), ylabel="training loss (square)", title="loss")
    ax_ratio.axhline(1.0, color="black", ls="--", lw=1)
    ax_ratio.axhline(R_OK, color="gray", ls=":", lw=1)
    ax_ratio.set(yscale="log", ylim=(1e-3, 1e3), ylabel="r = η_t λ_1 / c",
                 title=f"stability ratio (dashed: r = 1, edge of stability; dotted: r = {R_OK:g})")
    ax_gd.set(yscale="log", ylim=(5, 1e4), ylabel="λ_1(H)", title="GD: sharpness λ_1 against 2/η_t (black)")
    ax_adam.set(yscale="log", ylim=(1e2, 1e7), ylabel="λ_1(P^-½ H P^-½)",
                title="Adam: preconditioned sharpness against 38/η_t (black)")
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.axvline(WARMUP, color="gray", lw=0.6, alpha=0.5)
    for ax in axes[1]:
        ax.set_xlabel("step (log scale; gray line: end of warmup)")
    handles, labels = ax_loss.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("Warmup and normalization at a large learning rate: ReLU MLP on digits, full batch (after Gilmer et al. 2022)")
    save_figure(fig, path, rect=(0, 0.06, 1, 1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    start = time.perf_counter()
    x, y = digits(1797)
    steps, n_train = (SMOKE_STEPS, SMOKE_TRAIN) if args.smoke else (STEPS, N_TRAIN)
    train_set, test_set = (x[:n_train], y[:n_train]), (x[N_TRAIN:], y[N_TRAIN:])
    print(f"{NAME}: ReLU MLP 64-128x4-10 (He init), digits {n_train} train / {len(test_set[1])} test, full batch, "
          f"GD eta={GD_LR:g}, Adam lr={ADAM_LR:g}, warmup {WARMUP} steps, {steps} steps", flush=True)
    summaries = {}
    for setting in SETTINGS:
        run = train(setting, train_set, test_set, steps, args.out, args.seed)
        summaries[setting.name] = summarize(setting, run)
    findings = run_findings(summaries) + warmup_findings(summaries) + normalization_findings(summaries) + adam_findings(summaries)
    seconds = time.perf_counter() - start
    figure(SETTINGS, summaries, args.out / f"{NAME}.png")
    return finish(args, NAME, findings, summaries, seconds,
                  notes=f"r = eta_t*lambda_1/c on the full training set; c = 2 (GD), 38 (Adam, preconditioned). "
                        f"Curvature at steps 1-17, log-spaced to {EARLY}, then every 20. Seed {args.seed}.")


if __name__ == "__main__":
    sys.exit(main())
