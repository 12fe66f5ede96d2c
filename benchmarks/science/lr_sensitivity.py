"""Learning-rate sensitivity of small byte-level transformers vs width, qk-layernorm and z-loss (Wortsman et al. 2023).

Wortsman, Liu, Xiao, Everett, Alemi, Adlam, Co-Reyes, Gur, Kumar, Novak, Pennington, Sohl-dickstein,
Xu, Lee, Gilmer, Kornblith 2023, Small-scale proxies for large-scale Transformer training
instabilities, https://arxiv.org/abs/2309.14322. How much the final loss depends on the learning
rate is measured by the LR sensitivity, the mean over a log-spaced grid of peak learning rates η of

    LRS = mean_η [ min(ℓ(η), ℓ₀) − min_η' ℓ(η') ],

ℓ(η) the final loss, ℓ₀ the loss at initialization (a diverged run counts as ℓ₀). The paper finds:
without qk-layernorm the attention logits q·k/√d grow at large η, attention collapses onto single
keys and the loss degrades; LayerNorm on q and k prevents it and lowers LRS; without it LRS grows
with model size (their Fig. 1). Separately, without weight decay the output logits diverge late in
training, becoming very negative, log Z = logsumexp(z) drifting from 0; PaLM's z-loss 1e-4·(log Z)²
prevents it.

Setting: the model, corpus and optimizer of attention_logits.py (its corpus and loss are imported):
a causal pre-LayerNorm transformer, 2 layers, head dimension 32, context 64, byte vocabulary 256, no
biases, weights N(0, 1/fan_in), here at widths 32, 64 and 128 (1, 2, 4 heads; 43k, 136k, 468k
parameters). Data: the first 2 MB of the Python standard library's top-level .py files, the last 10%
held out. AdamW β = (0.9, 0.95), ε = 1e-8, weight decay 1e-4 independent of η, linear warm-up over
10% of the steps then cosine decay to 0, batch 16 sequences, 200 steps, float32, seed 0 (at one width
every run starts from the same weights and sees the same batches). Grid: η = 10^-2.5 ... 10^-0.5 in
half decades (3.16e-3, 1e-2, 3.16e-2, 0.1, 0.316), each with and without qk-layernorm and with and
without z-loss 1e-4: 60 runs. ℓ(η) is the Monitor's ``curvature/probe_loss`` at the last step on a
fixed probe of 16 held-out sequences (minus its ``logits/z_loss``, the z-loss term, in the z-loss
runs); ℓ₀ is the first step's logged training loss (before any update). The probe runs every 25
steps and at steps 1, 3, 5, 10, 17, 31 (k = 1, at most 2 HVPs per Lanczos solve: the Hessian is not
the point here) and logs ``attn/max_logit`` and ``logits/*``; each run's ``attention_logit_growth``
and ``output_logit_divergence`` events are kept. "Early" = the first 20% of the steps (probes at
steps ≤ 40). Scale: the paper's models are orders of magnitude larger and train far longer; 200
steps keep 60 runs within a quarter of an hour of CPU, at the price of undertraining at the smallest
η (below).

Criteria and what the full run measured (seed 0):

- qk-layernorm lowers LRS, at every width. Without z-loss, with vs without qk-layernorm: 0.126 vs
  0.218 (width 32), 0.087 vs 0.216 (64), 0.145 vs 0.287 (128); with z-loss 0.137 vs 0.273, 0.126 vs
  0.244, 0.158 vs 0.279. PASS (both).
- Without qk-layernorm the attention logits grow at large η and those runs degrade: at every width,
  the peak max attention logit at η = 0.316 ≥ 10× that at η = 3.16e-3, and the loss ≥ the sweep's
  best + 0.1 nats. Measured 9.9e4 vs 6.8, 4.6e5 vs 11, 2.9e6 vs 14 (widths 32/64/128), +0.52, +0.64,
  +0.75 nats (z-loss: +0.69, +0.73, +0.75). PASS. No run went non-finite: in float32 the softmax
  saturates to one-hot attention and the run degrades instead of diverging.
- qk-layernorm bounds the attention logits: peak < 100 (the Monitor's critical level) in every
  qk-layernorm run. Measured up to 169 (width 128, η = 0.316, z-loss; 76/82/119 without z-loss at
  widths 32/64/128), against 2.9e6 without qk-layernorm. FAIL as stated: the logits stay 4 orders of
  magnitude below the runs without it, but not below 100 at width 128. qk-layernorm's LayerNorms have
  learnable gains, and at the top η they grow (with unit gains and zero biases |q·k|/√d ≤ √d = 5.7);
  at η ≤ 0.1 the peak stays below 14 at every width.
- LRS grows with width without qk-layernorm, at each step 32 < 64 < 128, with and without z-loss.
  Measured 0.218, 0.216, 0.287 (z-loss 0.273, 0.244, 0.279). FAIL: flat from 32 to 64. Split LRS into
  the lrs below the best one and above it (each excess summed over the grid, divided by its size):
  the low part, 0.078, 0.024, 0.007, is undertraining (200 steps at η = 3.16e-3 leave the narrow
  model behind; a wider one learns faster at small η) and shrinks with width; the high part, the
  instability the paper is about, is 0.140, 0.193, 0.280 (z-loss 0.197, 0.218, 0.271). The adapted
  criterion "the high-η part increases with width" PASSES (with qk-layernorm it is 0.054, 0.063,
  0.138). The best η also falls from 3.16e-2 to 1e-2 at width 128, where η = 3.16e-2 already degrades
  by 0.11 with an early max attention logit of 105: the larger model goes unstable at a smaller η, as
  in the paper.
- The Monitor's early attention logits predict which runs degrade. On the 40 runs at or above their
  sweep's best η (below it a worse loss means too few steps, not instability): Spearman ρ between the
  max ``attn/max_logit`` over the early probes and the final loss above the sweep's best = 0.79
  (criterion ≥ 0.5). PASS. The rule "early max attention logit > 100 (the attention_logit_growth
  detector's critical level) ⇒ degraded by ≥ 0.1 nats" is right for 32/40 (criterion ≥ 80%, PASS at
  the limit): every one of the 14 runs it flags degraded (0.11-0.75 nats), and it misses 8, all with
  qk-layernorm: η = 0.316 at every width (+0.26 to +0.57 nats, early max logit 35-41) and η = 0.1 at
  width 128 (+0.15 and +0.16, early max logit 13). Those degrade without attention logit growth past
  100; among the qk-layernorm runs the early logit still orders them, the degraded ones having the
  largest. The Monitor's attention_logit_growth event itself (any severity) in the early window as
  the rule also scores 32/40, with the opposite errors: its warning (doubling once above 20) fires at
  the best η of every width without qk-layernorm (early max 28-40: 6 false alarms), and it catches
  the qk-layernorm runs at η = 0.316, missing only η = 0.1 at width 128.
- Events in the sweep: attention_logit_growth fired in every run without qk-layernorm at η ≥ 1e-2
  (width 64 and 128) or ≥ 3.16e-2 (width 32) and in the qk-layernorm runs at η = 0.316;
  output_logit_divergence in 3 of the 60 runs, all at η = 0.316 and at step 31, just after the
  warm-up (warnings: max log Z doubling to 11-19 while the loss rose), with log Z back to 5-6 by the
  end: a transient, not a divergence.

Part (b), output logit divergence: width 64, qk-layernorm (so that attention growth does not
confound, as the paper), no weight decay, constant η after the warm-up, with and without z-loss;
η = 0.316 for 600 steps and η = 1 for 150 steps.

- Divergence appears: the output_logit_divergence event or max |log Z| ≥ 20 in some run without
  z-loss. Measured at η = 1: max log Z 9 → 505 by step 120, the event at step 10, loss 280 nats.
  PASS, but it is not the paper's late drift: the whole network blows up as soon as the warm-up
  ends (log Z 80 at step 17), and the attention logits reach 1.6e3 by step 150 even with
  qk-layernorm.
- z-loss prevents it: FAIL. With z-loss the η = 1 run blows up the same way (max log Z 374, the event
  at step 10, loss 148).
- The logits drift very negative: at η = 0.316 the max |logit| rises 7.2 → 30 over 600 steps and their
  RMS 1.0 → 19, while the mean log Z stays between 5.6 and 8.8 (max over tokens ≤ 10.5): since
  max z ≤ log Z, the large logits are negative, the paper's "logits diverge and become very
  negative". PASS. The Monitor gives no output_logit_divergence event (it watches log Z, which does
  not move), and the loss does not suffer (2.583 at the end, 2.693 with z-loss). z-loss 1e-4 hardly
  changes it (max |logit| 7.2 → 21, RMS 13.5, log Z 5.4-8.8): cross-entropy cannot see a shift of all
  logits, and at log Z ≈ 6 the z-loss gradient on the logits, 2e-4·log Z·softmax(z) per token
  (norm ≈ 1e-3), is tiny beside the cross-entropy's softmax(z) − onehot(y) (norm O(1)). Why no late
  log Z divergence here: in 600 steps the drift is slow (max |logit| +0.04 per step on average) and
  stays in logits far below log Z, which set neither log Z nor the loss; the paper sees the
  divergence late in runs orders of magnitude longer, beyond a CPU budget of minutes.

Time: full run 768-823 s of CPU (one thread; 20-32 min wall on the 2-core machine shared with other
jobs, load 3-6), about half of it in the width-128 runs; --smoke (width 32, two η, 4 steps per run,
12 runs) 7-9 s of CPU (7-37 s wall, depending on the machine's load). The corpus is this machine's
stdlib, so numbers move a little between Python versions.

    python benchmarks/science/lr_sensitivity.py [--smoke] [--out DIR] [--seed N]
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from attention_logits import ByteTransformer, language_model_loss, stdlib_bytes, windows
from common import (
    finding,
    finish,
    parse_args,
    require_matplotlib,
    rounded,
    save_figure,
    series,
    watched_run,
)

import edgewatch as ew

NAME = "lr_sensitivity"
PAPER = "Wortsman et al. 2023"

# The model of attention_logits.py with the width a parameter: 2 layers, head dimension 32 (so 1, 2
# and 4 heads at widths 32, 64, 128), context 64, byte vocabulary 256. Its data and loss are imported.
VOCAB, CONTEXT, LAYERS, HEAD_DIM = 256, 64, 2, 32
WIDTHS, SMOKE_WIDTHS = (32, 64, 128), (32,)
BATCH = 16
HELD_OUT = 0.1
PROBE_SEQUENCES = 16  # held-out sequences of the probe batch: its loss is the eval loss
STEPS, SMOKE_STEPS = 200, 4
EVERY = 25  # probe (logits, eval loss, curvature) every this many steps, plus log-spaced ones early
EARLY_FRACTION = 0.2  # "early": the first 20% of the steps
MAX_HVPS = 2  # the Hessian is not the point here: short solves keep the probes cheap

# A log-spaced grid, half-decades from 10^-2.5 to 10^-0.5 (the paper: 3e-4 to 3e-1 at ~1e4 steps; a
# 300-step run trains too little below 3e-3 for the low end to tell anything but undertraining).
LEARNING_RATES = tuple(10 ** (-2.5 + 0.5 * i) for i in range(5))
SMOKE_LEARNING_RATES = (LEARNING_RATES[1], LEARNING_RATES[-1])
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 1e-4  # independent of the learning rate, as the paper (torch's weight_decay = 1e-4/eta)
WARMUP_FRACTION = 0.1
Z_LOSS = 1e-4  # PaLM's coefficient, the paper's

# Part (b), output logit divergence: qk-layernorm on (no attention logit growth to confound), width 64,
# no weight decay, constant learning rate after the warm-up (no decay to hide a late drift), longer.
DRIFT_WIDTH = 64
DRIFT_RUNS = ((10 ** -0.5, 600), (1.0, 150))  # (learning rate, steps): the top of the grid long, and a
# larger rate, whose blow-up comes within 100 steps
SMOKE_DRIFT_RUNS = ((10 ** -0.5, 4), (1.0, 4))
DRIFT_EVERY = 30

# Criteria thresholds.
DEGRADED = 0.1  # nats of held-out loss above the best learning rate's: a degraded run
GROWTH_FACTOR = 10.0  # the top learning rate's peak attention logit over the lowest's
BOUNDED = 100.0  # the Monitor's attention_logit_growth critical level (MuonClip's tau)
RANK_CORRELATION = 0.5  # Spearman rho between early attention logit and degradation
RULE_ACCURACY = 0.8  # share of runs the early-event threshold rule classifies right
FAR_LOG_Z = 20.0  # |log Z| this far from 0 (uniform logits over 256 bytes: 5.5) is a divergence
DRIFTED = 20.0  # max |output logit| this large, or larger than 4x its start, is a drift


@dataclass(frozen=True)
class Setting:
    width: int
    lr: float
    qk_norm: bool
    z_loss: float = 0.0
    weight_decay: float = WEIGHT_DECAY
    constant: bool = False  # constant lr after the warm-up instead of cosine decay to 0

    @property
    def group(self) -> str:
        """The learning-rate sweep this run belongs to."""
        return f"w{self.width}-{'qkln' if self.qk_norm else 'plain'}{'-zloss' if self.z_loss else ''}"

    @property
    def name(self) -> str:
        extra = ("-nowd" if not self.weight_decay else "") + ("-const" if self.constant else "")
        return f"{self.group}-lr{self.lr:.3g}{extra}"

    @property
    def label(self) -> str:
        parts = [f"width {self.width}", "qk-ln" if self.qk_norm else "no qk-ln", f"lr {self.lr:.3g}"]
        parts += [f"z-loss {self.z_loss:g}"] if self.z_loss else []
        parts += ["no wd"] if not self.weight_decay else []
        parts += ["constant lr"] if self.constant else []
        return " ".join(parts)


# -- one run ---------------------------------------------------------------------------------------
def train(setting: Setting, data: torch.Tensor, probe: list, steps: int, schedule: ew.Schedule, seed: int,
          run_dir: Path) -> dict[str, Any]:
    # the same init for every lr and z-loss; heads of HEAD_DIM, so wider means more heads
    model = ByteTransformer(setting.qk_norm, seed, width=setting.width, heads=setting.width // HEAD_DIM)
    optimizer = torch.optim.AdamW(model.parameters(), lr=setting.lr, betas=BETAS, eps=1e-8,
                                  weight_decay=setting.weight_decay / setting.lr)
    warmup = max(1, round(WARMUP_FRACTION * steps))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if setting.constant:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    sampler = torch.Generator().manual_seed(seed)  # the same batches for every run
    last_start = len(data) - CONTEXT - 1

    def next_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return windows(data, torch.randint(0, last_start, (BATCH,), generator=sampler))

    return watched_run(model, optimizer, language_model_loss(setting.z_loss), None, steps, run_dir, probe=probe,
                       curvature=schedule, next_batch=next_batch, scheduler=scheduler,
                       k=1, tol=0.1, max_hvps=MAX_HVPS, method="double_backward", label=setting.label,
                       norms_every=10)  # parameter norms are not used here: every 10th step, as the Monitor's default


def summary(setting: Setting, result: dict[str, Any], steps: int) -> dict[str, Any]:
    """The per-run numbers the findings and the figure use, all from what the Monitor wrote."""
    metrics = result["metrics"]
    # The z-loss runs' probe loss includes the z-loss term; the Monitor logs 1e-4 * mean (log Z)^2 from the
    # same forward (logits/z_loss, the same coefficient): take it out to compare cross-entropies.
    probes = [m for m in metrics if "curvature/probe_loss" in m and (not setting.z_loss or "logits/z_loss" in m)]
    probe_steps = [m["step"] for m in probes]
    eval_loss = [m["curvature/probe_loss"] - (m["logits/z_loss"] if setting.z_loss else 0.0) for m in probes]
    loss_steps, train_loss = series(metrics, "loss")
    attn_steps, attn = series(metrics, "attn/max_logit")
    events: dict[str, int] = {}
    critical: dict[str, int] = {}
    for event in result["events"]:
        events.setdefault(event["kind"], event["step"])
        if event["severity"] == "critical":
            critical.setdefault(event["kind"], event["step"])
    early_end = EARLY_FRACTION * steps
    early = [v for s, v in zip(attn_steps, attn) if s <= early_end and math.isfinite(v)]
    diverged = result["stopped"] == "nonfinite" or (bool(eval_loss) and not math.isfinite(eval_loss[-1]))
    if diverged:
        final = math.inf
    elif eval_loss and probe_steps[-1] == result["steps"]:
        final = eval_loss[-1]
    else:  # no probe at the last step: unknown
        final = math.nan
    run = {
        "label": setting.label, "group": setting.group, "width": setting.width, "lr": setting.lr,
        "qk_norm": setting.qk_norm, "z_loss": setting.z_loss, "weight_decay": setting.weight_decay,
        "constant_lr": setting.constant, "steps": result["steps"], "planned_steps": steps,
        "stopped": result["stopped"], "seconds": round(result["seconds"], 1),
        "initial_loss": train_loss[0] if train_loss else math.nan,  # the first step's loss, before any update
        "final_eval_loss": final, "diverged": diverged,
        "events": events, "critical_events": critical,
        "early_attn_logit": max(early, default=math.nan),
        "early_attn_growth": (max(early) / early[0]) if early and early[0] > 0 else math.nan,
        # The rule tested below: the early max attention logit above the Monitor's critical level (100). Its
        # attention_logit_growth event (any severity) in the early window is kept too; a warning (doubling
        # above 20) fires already at the best lr, and the detector does not report a later climb past the
        # critical level while its warning stands, so the logged logit is read instead of the event's severity.
        "early_attn_over": max(early, default=math.nan) > BOUNDED,
        "early_attn_event": events.get("attention_logit_growth", math.inf) <= early_end,
        "peak_attn_logit": max((v for v in attn if math.isfinite(v)), default=math.nan),
        "final_attn_logit": attn[-1] if attn else math.nan,
        "probe_steps": probe_steps, "eval_loss": rounded(eval_loss),
        "attn_steps": attn_steps, "attn/max_logit": rounded(attn),
        "train_steps": loss_steps[::5], "train_loss": rounded(train_loss[::5]),
    }
    for name in ("logits/log_z_mean", "logits/log_z_max", "logits/max", "logits/rms", "attn/entropy_mean"):
        run[name] = rounded(series(metrics, name)[1])
    return run


# -- learning-rate sensitivity ------------------------------------------------------------------
def sweeps(runs: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The runs of each (width, qk-layernorm, z-loss) learning-rate sweep, by increasing lr."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs.values():
        if run["weight_decay"] and not run["constant_lr"]:
            groups.setdefault(run["group"], []).append(run)
    return {g: sorted(rs, key=lambda r: r["lr"]) for g, rs in groups.items()}


def initial_loss(runs: dict[str, dict[str, Any]], width: int, qk_norm: bool) -> float:
    """ℓ₀: the cross-entropy at initialization, the first step's loss of the runs without z-loss of this
    model (every lr starts from the same weights and batch, so they agree; the z-loss runs add its term)."""
    values = [r["initial_loss"] for r in runs.values() if r["width"] == width and r["qk_norm"] == qk_norm
              and not r["z_loss"] and math.isfinite(r["initial_loss"])]
    return min(values, default=math.log(VOCAB))


def sensitivity(group: list[dict[str, Any]], l0: float) -> dict[str, Any]:
    """The paper's LRS = mean over the grid of [min(ℓ(η), ℓ₀) − min_η ℓ(η)], a diverged run counting as ℓ₀;
    and each run's degradation ℓ(η) − min_η ℓ(η) (capped the same way)."""
    capped = [l0 if not math.isfinite(r["final_eval_loss"]) else min(r["final_eval_loss"], l0) for r in group]
    best = min(capped)
    for run, value in zip(group, capped):
        run["capped_loss"], run["degradation"] = value, value - best
    best_run = group[capped.index(best)]
    for run in group:
        run["above_best_lr"] = run["lr"] >= best_run["lr"]
    # LRS = low + high: the excess of the lrs below the best one (too few steps to train) and above it
    # (instability), each summed and divided by the grid size.
    low = sum(r["degradation"] for r in group if r["lr"] < best_run["lr"]) / len(group)
    high = sum(r["degradation"] for r in group if r["lr"] > best_run["lr"]) / len(group)
    return {"lrs": sum(capped) / len(capped) - best, "low": low, "high": high, "best_lr": best_run["lr"],
            "best_loss": best, "l0": l0}


def ranks(values: list[float]) -> list[float]:
    """Average ranks (1-based), ties sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return result


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation: Pearson's on the average ranks."""
    if len(x) < 3:
        return math.nan
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    norm = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / norm if norm > 0 else math.nan


# -- findings ------------------------------------------------------------------------------------
def _fmt(value: float, digits: int = 3) -> str:
    return "diverged" if value == math.inf else f"{value:.{digits}g}"


def sweep_findings(runs: dict[str, dict[str, Any]], widths: tuple[int, ...]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    groups = sweeps(runs)
    lrs = {g: sensitivity(rs, initial_loss(runs, rs[0]["width"], rs[0]["qk_norm"])) for g, rs in groups.items()}
    model = f"byte transformer {LAYERS} layers, AdamW, {len(next(iter(groups.values())))} lrs " \
            f"{min(LEARNING_RATES):.3g}-{max(LEARNING_RATES):.3g}"

    def key(width: int, qk: bool, z: bool) -> str:
        return f"w{width}-{'qkln' if qk else 'plain'}{'-zloss' if z else ''}"

    rows = []
    # 1. qk-layernorm lowers the LR sensitivity, at every width (without and with z-loss).
    for z in (False, True):
        pairs = [(w, lrs[key(w, False, z)]["lrs"], lrs[key(w, True, z)]["lrs"]) for w in widths]
        rows.append(finding(
            "qk-layernorm lowers LR sensitivity", PAPER, f"{model}, widths {'/'.join(map(str, widths))}"
            + (f", z-loss {Z_LOSS:g}" if z else ", no z-loss"),
            "LRS with qk-layernorm < without, at every width (LRS = mean over lrs of min(l, l0) - min l)",
            "; ".join(f"width {w}: {b:.3f} with vs {a:.3f} without" for w, a, b in pairs),
            all(b < a for _, a, b in pairs), values={w: {"without": a, "with": b} for w, a, b in pairs}))
    # 2. Without qk-layernorm the attention logits grow at the top lr and those runs degrade.
    parts, ok = [], True
    for w in widths:
        for z in (False, True):
            group = groups[key(w, False, z)]
            low, top = group[0], group[-1]
            growth = top["peak_attn_logit"] / low["peak_attn_logit"]
            good = growth >= GROWTH_FACTOR and top["degradation"] >= DEGRADED
            ok &= good
            parts.append(f"w{w}{' z' if z else ''}: peak {top['peak_attn_logit']:.2g} vs {low['peak_attn_logit']:.2g} "
                         f"({growth:.2g}x), +{top['degradation']:.2f} nats")
    rows.append(finding(
        "attention logit growth degrades high-lr runs", PAPER, f"{model}, no qk-layernorm, with and without z-loss",
        f"at every width, peak max attention logit at the top lr >= {GROWTH_FACTOR:g}x the lowest lr's, and its "
        f"held-out loss >= the sweep's best + {DEGRADED:g} nats", "; ".join(parts), ok))
    # 3. qk-layernorm keeps the attention logits bounded.
    qk_runs = [r for g, rs in groups.items() if "qkln" in g for r in rs]
    plain_runs = [r for g, rs in groups.items() if "plain" in g for r in rs]
    worst = max(qk_runs, key=lambda r: r["peak_attn_logit"])
    worst_plain = max(plain_runs, key=lambda r: r["peak_attn_logit"])
    rows.append(finding(
        "qk-layernorm bounds attention logits", PAPER, f"{model}, qk-layernorm, all widths and lrs",
        f"peak max attention logit < {BOUNDED:g} in every qk-layernorm run",
        f"largest {worst['peak_attn_logit']:.3g} ({worst['label']}); without qk-layernorm up to "
        f"{worst_plain['peak_attn_logit']:.3g} ({worst_plain['label']})",
        worst["peak_attn_logit"] < BOUNDED))
    # 4. LRS grows with width without qk-layernorm: the paper's LRS, and its high-lr part alone.
    for part, what in (("lrs", "LRS"), ("high", "the high-lr part of LRS (lrs above the best)")):
        measured, ok, values = [], True, {}
        for z in (False, True):
            plain = [lrs[key(w, False, z)][part] for w in widths]
            qk = [lrs[key(w, True, z)][part] for w in widths]
            ok &= all(b > a for a, b in zip(plain, plain[1:]))
            values["z-loss" if z else "no z-loss"] = {w: {"without": a, "with": b} for w, a, b in zip(widths, plain, qk)}
            measured.append(("z-loss: " if z else "no z-loss: ") + "without qk-ln " + ", ".join(f"{v:.3f}" for v in plain)
                            + "; with " + ", ".join(f"{v:.3f}" for v in qk))
        if part == "lrs":
            low = [lrs[key(w, False, False)]["low"] for w in widths]
            measured.append("low-lr part without qk-ln " + ", ".join(f"{v:.3f}" for v in low))
        rows.append(finding(
            "LR sensitivity grows with width", PAPER, f"{model}, widths {'/'.join(map(str, widths))}, no qk-layernorm",
            f"{what} without qk-layernorm increases with width at each step, with and without z-loss",
            " | ".join(measured), ok, values=values))
    # 5. The Monitor's early attention logits predict which runs degrade.
    rows += prediction_findings(groups)
    return rows, lrs


def prediction_findings(groups: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """On the high-lr side of each sweep's optimum (where a worse loss means instability, not too few steps):
    the rank correlation of the early max attention logit with the degradation, and the rule
    "the Monitor's attention_logit_growth event fired in the first 20% of steps => degraded"."""
    side = [r for rs in groups.values() for r in rs if r["above_best_lr"] and math.isfinite(r["early_attn_logit"])]
    early = [r["early_attn_logit"] for r in side]
    degradation = [r["degradation"] for r in side]
    rho = spearman(early, degradation)
    predicted = [r["early_attn_over"] for r in side]
    actual = [r["degradation"] >= DEGRADED for r in side]
    event_hits = sum(r["early_attn_event"] == a for r, a in zip(side, actual))
    missed = [r["label"] for r, p, a in zip(side, predicted, actual) if a and not p]
    false = [r["label"] for r, p, a in zip(side, predicted, actual) if p and not a]
    hits = sum(p == a for p, a in zip(predicted, actual))
    tp = sum(p and a for p, a in zip(predicted, actual))
    fp = sum(p and not a for p, a in zip(predicted, actual))
    fn = sum(a and not p for p, a in zip(predicted, actual))
    accuracy = hits / len(side) if side else math.nan
    setting = f"every sweep, the {len(side)} runs at or above their sweep's best lr"
    return [
        finding("early attention logits predict degradation", PAPER, setting,
                f"Spearman rho(max attention logit in the first {EARLY_FRACTION:.0%} of steps, final loss - best) "
                f">= {RANK_CORRELATION:g}",
                f"rho = {rho:.2f} over {len(side)} runs", rho >= RANK_CORRELATION,
                rho=rho, points=[[r["label"], r["early_attn_logit"], r["degradation"]] for r in side]),
        finding("early Monitor event predicts degradation", PAPER, setting,
                f"rule 'max attention logit in the first {EARLY_FRACTION:.0%} of steps above {BOUNDED:g} (the "
                f"attention_logit_growth detector's critical level) => degraded by >= {DEGRADED:g} nats' right for "
                f">= {RULE_ACCURACY:.0%} of runs",
                f"{hits}/{len(side)} right ({accuracy:.0%}): {tp} flagged and degraded, {fp} flagged but not "
                f"({', '.join(false) or 'none'}), {fn} degraded unflagged ({', '.join(missed) or 'none'}); "
                f"the event of any severity in the window as the rule: {event_hits}/{len(side)}",
                accuracy >= RULE_ACCURACY),
    ]


def drift_findings(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Part (b): output logits without weight decay, with and without z-loss."""
    drift = sorted((r for r in runs.values() if r["constant_lr"]), key=lambda r: (r["lr"], r["z_loss"]))
    pairs = [(a, b) for a, b in zip(drift[::2], drift[1::2])]  # (no z-loss, z-loss) at each lr

    def log_z(run: dict[str, Any]) -> float:
        values = [abs(v) for v in run["logits/log_z_max"] if math.isfinite(v)]
        return max(values, default=math.nan)

    def diverged(run: dict[str, Any]) -> bool:
        return "output_logit_divergence" in run["events"] or log_z(run) >= FAR_LOG_Z

    def describe(run: dict[str, Any]) -> str:
        event = run["events"].get("output_logit_divergence")
        return (f"lr {run['lr']:.3g} ({run['steps']} steps): max |log Z| {log_z(run):.3g}, event "
                + (f"at step {event}" if event is not None else "none") + f", loss {_fmt(run['final_eval_loss'], 4)}")

    setting = f"width {drift[0]['width']}, qk-layernorm, no weight decay, constant lr after warm-up"
    rows = [
        finding("output logit divergence", PAPER, setting + ", no z-loss",
                f"log Z diverges in some run (the Monitor's output_logit_divergence event or max |log Z| >= {FAR_LOG_Z:g})",
                "; ".join(describe(a) for a, _ in pairs), any(diverged(a) for a, _ in pairs)),
        finding("z-loss prevents output logit divergence", PAPER, setting + f", z-loss {Z_LOSS:g}",
                "every run that diverged without z-loss keeps max |log Z| < "
                f"{FAR_LOG_Z:g}, no event, and a lower loss with it",
                "; ".join(describe(b) for a, b in pairs if diverged(a)) or "no run diverged without z-loss",
                any(diverged(a) for a, _ in pairs) and all(not diverged(b) and b["final_eval_loss"] < a["final_eval_loss"]
                                                         for a, b in pairs if diverged(a))),
    ]
    low, low_z = pairs[0]

    def max_logit(run: dict[str, Any]) -> tuple[float, float]:
        values = [v for v in run["logits/max"] if math.isfinite(v)]
        return (values[0], values[-1]) if values else (math.nan, math.nan)

    (start, end), (start_z, end_z) = max_logit(low), max_logit(low_z)
    lz = [v for v in low["logits/log_z_mean"] if math.isfinite(v)]
    rows.append(finding(
        "output logits drift very negative", PAPER, setting + f", lr {low['lr']:.3g}, {low['steps']} steps",
        f"max |logit| ends >= {DRIFTED:g} and >= 4x its first probe while mean log Z stays < {FAR_LOG_Z:g} "
        "(so the large logits are negative: max z <= log Z)",
        f"max |logit| {start:.3g} -> {end:.3g} (z-loss run {start_z:.3g} -> {end_z:.3g}); mean log Z "
        f"{min(lz, default=math.nan):.3g} to {max(lz, default=math.nan):.3g}",
        end >= DRIFTED and end >= 4 * start and max(map(abs, lz), default=math.inf) < FAR_LOG_Z))
    return rows


# -- the figure ------------------------------------------------------------------------------------
def draw(runs: dict[str, dict[str, Any]], lrs: dict[str, Any], widths: tuple[int, ...], path: Path) -> None:
    """Wortsman et al. Fig. 1: final loss against lr per width, without and with qk-layernorm (z-loss
    dashed), and LRS against width; then the early attention logit against the degradation, the max
    attention logit over training at the top lr, and part (b)'s output logits."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    groups = sweeps(runs)
    colours = dict(zip(widths, plt.cm.viridis([0.1 + 0.8 * i / max(1, len(widths) - 1) for i in range(len(widths))])))
    for ax, qk in ((axes[0, 0], False), (axes[0, 1], True)):
        for w in widths:
            for z, style in ((False, "o-"), (True, "s--")):
                group = groups.get(f"w{w}-{'qkln' if qk else 'plain'}{'-zloss' if z else ''}", [])
                ax.plot([r["lr"] for r in group], [r["capped_loss"] for r in group], style, color=colours[w], ms=4,
                        label=f"width {w}" + (" z-loss" if z else ""))
        ax.set(xscale="log", xlabel="peak learning rate", ylabel="final held-out loss, min(l, l0) (nats/byte)",
               title=("qk-layernorm" if qk else "no qk-layernorm") + " (dashed: z-loss 1e-4)")
        ax.legend(fontsize=7)
    top = max(r["capped_loss"] for rs in groups.values() for r in rs)
    axes[0, 1].set_ylim(axes[0, 0].get_ylim()[0], top + 0.1)
    axes[0, 0].set_ylim(axes[0, 0].get_ylim()[0], top + 0.1)
    ax = axes[0, 2]
    for qk, colour in ((False, "tab:red"), (True, "tab:blue")):
        for z, style in ((False, "o-"), (True, "s--")):
            values = [lrs[f"w{w}-{'qkln' if qk else 'plain'}{'-zloss' if z else ''}"]["lrs"] for w in widths]
            ax.plot(widths, values, style, color=colour,
                    label=("qk-layernorm" if qk else "no qk-layernorm") + (", z-loss" if z else ""))
    for qk, colour in ((False, "tab:red"), (True, "tab:blue")):
        values = [lrs[f"w{w}-{'qkln' if qk else 'plain'}"]["high"] for w in widths]
        ax.plot(widths, values, "^:", color=colour, ms=4, lw=1,
                label=("qk-layernorm" if qk else "no qk-layernorm") + ": lrs above the best only")
    ax.set(xscale="log", xlabel="width", ylabel="LR sensitivity (nats)", title="LR sensitivity vs width")
    ax.minorticks_off()
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    for rs in groups.values():
        for r in rs:
            if not math.isfinite(r["early_attn_logit"]):
                continue
            ax.scatter(max(r["early_attn_logit"], 1e-2), r["degradation"], marker="o" if r["above_best_lr"] else "s",
                       color="tab:blue" if r["qk_norm"] else "tab:red", s=20 + r["width"] / 2,
                       alpha=1.0 if r["above_best_lr"] else 0.35, edgecolors="black" if r["early_attn_event"] else "none")
    ax.axvline(BOUNDED, color="grey", lw=0.8, ls=":")
    ax.axhline(DEGRADED, color="grey", lw=0.8, ls=":")
    ax.set(xscale="log", xlabel=f"max attention logit in the first {EARLY_FRACTION:.0%} of steps",
           ylabel="final loss - sweep's best (nats)",
           title="red: no qk-ln, blue: qk-ln; faint squares: below best lr;\n"
                 "black edge: attention_logit_growth event in the window")
    ax = axes[1, 1]
    for w in widths:
        for qk, style in ((False, "-"), (True, "--")):
            group = groups.get(f"w{w}-{'qkln' if qk else 'plain'}", [])
            if group:
                r = group[-1]
                ax.plot(r["attn_steps"], [max(v, 1e-2) for v in r["attn/max_logit"]], style, color=colours[w],
                        label=f"width {w}" if not qk else None)
    ax.axhline(BOUNDED, color="grey", lw=0.8, ls=":")
    ax.set(yscale="log", xlabel="step", ylabel="max attention logit (probe)",
           title=f"top lr {max(LEARNING_RATES):.3g}: solid no qk-ln, dashed qk-ln")
    ax.legend(fontsize=8)
    ax = axes[1, 2]
    drift = sorted((r for r in runs.values() if r["constant_lr"]), key=lambda r: (r["lr"], r["z_loss"]))
    for r, colour in zip(drift, ("tab:orange", "tab:green", "tab:red", "tab:purple")):
        label = f"lr {r['lr']:.3g}" + (" z-loss" if r["z_loss"] else "")
        steps = r["probe_steps"][: len(r["logits/log_z_mean"])]
        ax.plot(steps, r["logits/log_z_mean"], "o-", ms=3, color=colour, label=label + ": mean log Z")
        ax.plot(r["probe_steps"][: len(r["logits/max"])], r["logits/max"], ":", color=colour, label=label + ": max |logit|")
    ax.set(yscale="symlog", ylim=(0, None), xlabel="step", ylabel="output logits (probe)",
           title=f"(b) width {drift[0]['width'] if drift else DRIFT_WIDTH}, qk-ln, no weight decay, constant lr")
    ax.legend(fontsize=6)
    fig.suptitle("Wortsman et al. 2023 at small scale: LR sensitivity of byte-level transformers on stdlib source")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    start = time.perf_counter()
    steps = SMOKE_STEPS if args.smoke else STEPS
    widths = SMOKE_WIDTHS if args.smoke else WIDTHS
    learning_rates = SMOKE_LEARNING_RATES if args.smoke else LEARNING_RATES
    drift_runs = SMOKE_DRIFT_RUNS if args.smoke else DRIFT_RUNS
    data = stdlib_bytes()
    split = int(len(data) * (1 - HELD_OUT))
    train_data, held_out = data[:split], data[split:]
    probe = [windows(held_out, torch.linspace(0, len(held_out) - CONTEXT - 2, PROBE_SEQUENCES).long())]
    print(f"{NAME}: {len(train_data)} training / {len(held_out)} held-out bytes; widths {widths}, lrs "
          f"{', '.join(f'{lr:.3g}' for lr in learning_rates)}; {steps} AdamW steps per run", flush=True)

    def schedule(n: int, every: int) -> ew.Schedule:
        # Every `every` steps, and log-spaced over the early window (the early attention logits).
        return ew.Schedule(every=n) if args.smoke else ew.Schedule(every=every, dense_until=int(EARLY_FRACTION * n) + 1,
                                                                    per_decade=4)

    settings = [(Setting(w, lr, qk, z), steps) for w in widths for qk in (False, True) for z in (0.0, Z_LOSS)
                for lr in learning_rates]
    settings += [(Setting(DRIFT_WIDTH if not args.smoke else widths[0], lr, True, z, weight_decay=0.0, constant=True), n)
                 for lr, n in drift_runs for z in (0.0, Z_LOSS)]
    runs: dict[str, dict[str, Any]] = {}
    for setting, n in settings:
        result = train(setting, train_data, probe, n, schedule(n, EVERY if not setting.constant else DRIFT_EVERY),
                       args.seed, args.out / "runs" / NAME / setting.name)
        runs[setting.name] = summary(setting, result, n)

    findings, lrs = sweep_findings(runs, widths)
    findings += drift_findings(runs)
    draw(runs, lrs, widths, args.out / f"{NAME}.png")
    seconds = time.perf_counter() - start
    return finish(args, NAME, findings, {"sensitivity": lrs, **runs}, seconds,
                  notes="eval loss = the Monitor's curvature/probe_loss on 16 held-out sequences at the last step (z-loss "
                        "term removed); l0 = the first step's training loss (the same init for every lr); one seed")


if __name__ == "__main__":
    sys.exit(main())
