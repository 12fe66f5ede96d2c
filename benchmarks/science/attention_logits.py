"""Attention logit growth and output logit divergence in a small byte-level transformer (Wortsman et al. 2023).

Wortsman, Liu, Xiao, Everett, Alemi, Adlam, Co-Reyes, Gur, Kumar, Novak, Pennington, Sohl-dickstein,
Xu, Lee, Gilmer, Kornblith 2023, Small-scale proxies for large-scale Transformer training
instabilities, https://arxiv.org/abs/2309.14322. Two instabilities seen in large transformers appear
in small ones at high learning rates: (1) the attention logits q·k/√d grow without bound, attention
collapses onto single keys and the loss degrades; LayerNorm on q and k (qk-layernorm) prevents it
and flattens the loss-vs-learning-rate curve (their Fig. 1). (2) Without weight decay the output
logits drift, log Z = logsumexp(z) moving far from 0, late in training; PaLM's z-loss
1e-4·(log Z)² keeps log Z near 0.

Setting: a causal pre-LayerNorm transformer, 2 layers, width 64, 2 heads, context 64, byte vocabulary
256, no biases, weights N(0, 1/fan_in), SDPA with is_causal=True (136k parameters; qk-layernorm adds a
LayerNorm per head on q and k, 256 more). Data: the Python standard library's top-level .py files in sorted
order, the first 2 MB concatenated; the last 10% is held out. AdamW β = (0.9, 0.95), ε = 1e-8,
linear warmup over 10% of the steps then cosine decay to 0, independent weight decay 1e-4 (torch's
weight_decay = 1e-4/η, as the paper's decoupled-from-η decay); batch 16 sequences, 250 steps, float32,
seed 0. (a) η ∈ {1e-3, 1e-2, 3e-2, 1e-1, 3e-1} with and without qk-layernorm; (b) qk-layernorm (so
that attention growth does not confound, as the paper), η = 0.3, no weight decay, with and without
z-loss 1e-4. Every run is watched by an ``edgewatch.Monitor`` whose probe is one fixed batch of 8
held-out sequences, measured every 25 steps and at steps 1 and 10 (k = 1, tol 0.1, at most 4 HVPs per
Lanczos solve, to keep the Hessian cheap): its logit probe wraps SDPA to log ``attn/max_logit``,
``attn/entropy_min``, ``logits/log_z_mean``; ``curvature/probe_loss`` at the last step is the
held-out loss used here (minus the Monitor's ``logits/z_loss`` for the z-loss run, the same term).

Measurement convention. The probe's numbers of step t (logits, attention, probe loss, curvature) are
measured after update t, at θ_t (README, docs/math.md §5), on the fixed held-out probe batch:
``logits/log_z_mean`` is the mean over its 8·64 positions of log Z = logsumexp_j y_j of the output
logits y, the quantity z-loss penalizes; ``attn/max_logit`` is the largest |q·k/√d| over every
attention call, head and position (both layers: the paper's Figure 2 reports layer 0, "which we
typically observe to have the largest logit values"). What the paper says of (2), §3.1.2: "This instability occurs when the logits diverge and
become very negative, as illustrated in Figure 4 for a 2.4M parameter model at learning rate 0.1. In
contrast to the attention logit growth instability, this divergence occurs towards the end of
training"; and it occurs "in models with no weight decay regardless of scale, and z-loss resolves
this instability". "The end of training" there is of runs whose "default number of total steps is
1e5" after a "default warmup [of] 5e3 steps" (§2.1), with gradient clipping at global norm 1 (not
used here). Logits that all become very negative make log Z very negative; the criterion below
(|log Z| ≥ 20, or the Monitor's ``output_logit_divergence`` event) was set before the runs and is
kept: nothing here moves log Z away from log 256 = 5.5 at all (see below), so another threshold for
"far" would not change the verdict.

Criteria and what the full run measured (seed 0; seed 1 in brackets):

- attention logit growth, no qk-layernorm: final max attention logit at η = 0.3 ≥ 10× that at
  η = 1e-3. Measured 4.7e5 vs 9.1 (5e4×) [7.7e5 vs 5.6]; by η: 9.1, 15, 54, 6.3e3, 4.7e5. PASS.
- degradation, no qk-layernorm: held-out loss at η = 0.3 ≥ best η's + 0.1 nats. Measured 3.083 vs
  2.419 at η = 0.03 [2.958 vs 2.420]. PASS. (No NaN: in float32 the softmax just saturates, one-hot
  attention; the run degrades instead of diverging.)
- qk-layernorm bounds the attention logits: peak max attention logit at η = 0.3 < 100. Measured 35
  (by η: 4.9, 6.1, 9.1, 11, 35) [43]. PASS.
- qk-layernorm helps at high η: held-out loss at η = 0.3 with ≤ without − 0.05. Measured 2.655 vs
  3.083 [2.686 vs 2.958]; the paper's LR sensitivity (mean excess loss over the best η) 0.11 with vs
  0.26 without [0.13 vs 0.24]. PASS.
- output logit divergence (b): without z-loss, log Z far from 0 (the Monitor's
  output_logit_divergence event or |log Z| ≥ 20) and held-out loss ≥ the z-loss run's + 0.02.
  Measured final mean log Z 5.45, no output_logit_divergence event, loss 2.644 vs 2.613 with z-loss.
  FAIL: did not reproduce.
- z-loss keeps log Z near 0: |log Z| < 1 and loss no worse. Measured log Z 5.48 with z-loss vs 5.45
  without. FAIL: did not reproduce.

What did not reproduce, and why: output logit divergence. The mean log Z stays between 4.2 and 8.6
at every probe of every run, around log 256 = 5.5 (near-uniform logits), and never drifts away;
z-loss 1e-4 does not move it toward 0 within 250 steps (cross-entropy is blind to a uniform shift of
the logits, so only the z-loss term pushes that direction, and its gradient 1e-4·2·log Z ≈ 1e-3 per
token is small beside the noise Adam normalizes by). A check outside this script (same setting, no
Monitor, 1500 steps) gave log Z 6.4 without and 5.5 with z-loss, held-out loss 2.154 vs 2.135: still
no divergence. The paper sees it late in runs of ~1e5 steps of larger models; that is beyond a
few-minute CPU budget. For the same reason weight decay 1e-4 barely matters here (θ shrinks by 2.5%
over 250 steps): with and without it the η = 0.3 qk-layernorm run ends at 2.655 and 2.644. Also,
``attn/entropy_min`` (the minimum over all queries) reaches ~0 already at the best η without
qk-layernorm and at η = 0.3 with it, so entropy collapse of *some* query does not separate good runs
from bad ones at this scale; the max logit does.

Time: full run 127-324 s wall on a 2-core machine shared with other jobs (324 s at load ≈ 5; 78-86 s of
CPU, one thread);
--smoke (6 steps per run, one probe) ~6 s of CPU. The corpus is this machine's stdlib, so numbers move a
little between Python versions.

    python benchmarks/science/attention_logits.py [--smoke] [--out DIR] [--seed N]
"""

from __future__ import annotations

import math
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
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
from torch import nn

import edgewatch as ew
from edgewatch.hooks.meters.logits import Z_LOSS_WEIGHT

NAME = "attention_logits"
PAPER = "Wortsman et al. 2023"

# The model and data: small enough that one run of a few hundred steps takes seconds on one core.
WIDTH, LAYERS, HEADS, CONTEXT, VOCAB = 64, 2, 2, 64, 256
BATCH = 16  # sequences per training step
CORPUS_BYTES = 2_000_000  # the first sorted stdlib .py files up to this size
HELD_OUT = 0.1  # the tail of the corpus, never trained on
PROBE_SEQUENCES = 8  # held-out sequences of the probe batch: its loss is the eval loss the Monitor logs
STEPS, SMOKE_STEPS = 250, 6
EVERY = 25  # the probe (logits, eval loss, curvature) every this many steps, and at the last
MAX_HVPS = 4

# AdamW as in the paper: beta2 0.95, linear warmup then cosine decay, independent weight decay 1e-4
# (the decay per step is 1e-4 times the schedule's multiplier, not times the learning rate).
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 1e-4
WARMUP_FRACTION = 0.1
Z_LOSS = 1e-4  # PaLM's coefficient, the paper's

LEARNING_RATES = (1e-3, 1e-2, 3e-2, 1e-1, 3e-1)
Z_LOSS_LR = 3e-1  # part (b): the top learning rate, no weight decay, qk-layernorm on (as the paper, so
# that attention logit growth does not confound the output logits)

# Criteria (a): growth = final max attention logit at the top lr over that at the lowest; degradation
# and the qk-layernorm gain in nats of held-out loss; "bounded" = below the level at which the
# Monitor's attention_logit_growth detector calls it critical (MuonClip's τ = 100).
GROWTH_FACTOR = 10.0
DEGRADATION = 0.1
BOUNDED = 100.0
QK_GAIN = 0.05
# Criteria (b): "far from 0" = the Monitor's output_logit_divergence event or |log Z| above 20
# (uniform logits over 256 bytes give log Z = 5.5); "near 0" = |log Z| below 1.
FAR_LOG_Z = 20.0
NEAR_LOG_Z = 1.0
Z_GAIN = 0.02


@dataclass(frozen=True)
class Setting:
    lr: float
    qk_norm: bool
    weight_decay: float = WEIGHT_DECAY
    z_loss: float = 0.0

    @property
    def name(self) -> str:
        parts = ["qkln" if self.qk_norm else "plain", f"lr{self.lr:g}"]
        parts += ["nowd"] if self.weight_decay == 0 else []
        parts += ["zloss"] if self.z_loss else []
        return "-".join(parts)

    @property
    def label(self) -> str:
        parts = ["qk-ln" if self.qk_norm else "no qk-ln", f"lr {self.lr:g}"]
        parts += ["no wd"] if self.weight_decay == 0 else []
        parts += [f"z-loss {self.z_loss:g}"] if self.z_loss else []
        return " ".join(parts)


# -- data ----------------------------------------------------------------------------------------
def stdlib_bytes(limit: int = CORPUS_BYTES) -> torch.Tensor:
    """The Python standard library's top-level ``.py`` files in sorted order, concatenated, as byte ids."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(root.glob("*.py")):
        chunks.append(path.read_bytes())
        size += len(chunks[-1])
        if size >= limit:
            break
    data = b"".join(chunks)[:limit]
    if len(data) < 100 * CONTEXT:
        sys.exit(f"found only {len(data)} bytes of .py files under {root}; the benchmark needs the stdlib sources")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def windows(data: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-byte prediction: inputs ``data[s : s+T]``, targets one byte later."""
    rows = torch.stack([data[s : s + CONTEXT + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


# -- the model -------------------------------------------------------------------------------------
class Block(nn.Module):
    """Pre-LayerNorm block, no biases; ``qk_norm``: LayerNorm on each head's q and k before the dot product."""

    def __init__(self, qk_norm: bool, width: int = WIDTH, heads: int = HEADS) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.up = nn.Linear(width, 4 * width, bias=False)
        self.down = nn.Linear(4 * width, width, bias=False)
        head_dim = width // heads
        self.q_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        # Looked up on F at call time: the Monitor's logit probe wraps it to read q and k.
        attended = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class ByteTransformer(nn.Module):
    """A causal byte-level language model; weights N(0, 1/fan_in) as in the paper, embeddings N(0, 1)."""

    def __init__(self, qk_norm: bool, seed: int, width: int = WIDTH, heads: int = HEADS) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, width)
        self.position = nn.Parameter(torch.randn(CONTEXT, width))
        self.blocks = nn.ModuleList(Block(qk_norm, width, heads) for _ in range(LAYERS))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=module.in_features ** -0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))  # (batch, T, VOCAB)


def language_model_loss(z_loss: float):
    """Next-byte cross-entropy, plus ``z_loss · mean (log Z)²`` when asked (PaLM's z-loss)."""

    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch
        logits = model(inputs)
        value = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        if z_loss:
            value = value + z_loss * torch.logsumexp(logits, dim=-1).pow(2).mean()
        return value

    return loss


# -- one run ---------------------------------------------------------------------------------------
def train(setting: Setting, data: torch.Tensor, probe: list, steps: int, schedule: ew.Schedule, seed: int,
          run_dir: Path) -> dict[str, Any]:
    model = ByteTransformer(setting.qk_norm, seed)
    # torch's AdamW decays by lr_t · weight_decay: divide by the peak lr so the decay is independent of it.
    optimizer = torch.optim.AdamW(model.parameters(), lr=setting.lr, betas=BETAS, eps=1e-8,
                                  weight_decay=setting.weight_decay / setting.lr)
    warmup = max(1, round(WARMUP_FRACTION * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))))
    sampler = torch.Generator().manual_seed(seed)
    last_start = len(data) - CONTEXT - 1

    def next_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return windows(data, torch.randint(0, last_start, (BATCH,), generator=sampler))

    # Logits are read on curvature steps only; the Hessian is not what this benchmark is about, so its
    # solves stay short (k=1, at most MAX_HVPS products each) and take about a third of the run's time.
    return watched_run(model, optimizer, language_model_loss(setting.z_loss), None, steps, run_dir, probe=probe,
                       curvature=schedule, next_batch=next_batch, scheduler=scheduler,
                       k=1, tol=0.1, max_hvps=MAX_HVPS, method="double_backward", label=setting.label)


def summary(setting: Setting, result: dict[str, Any]) -> dict[str, Any]:
    """The per-run series the figure and the findings use, from what the Monitor wrote."""
    metrics = result["metrics"]
    # The probe is held-out data and its loss the training loss: take the z-loss term out (the Monitor
    # logs Z_LOSS_WEIGHT·mean (log Z)² from the same forward) to compare cross-entropies.
    probes = [m for m in metrics if "curvature/probe_loss" in m and (not setting.z_loss or "logits/z_loss" in m)]
    steps = [m["step"] for m in probes]
    eval_loss = [m["curvature/probe_loss"] - (setting.z_loss / Z_LOSS_WEIGHT) * m["logits/z_loss"] if setting.z_loss
                 else m["curvature/probe_loss"] for m in probes]
    run: dict[str, Any] = {"label": setting.label, "lr": setting.lr, "qk_norm": setting.qk_norm,
                           "weight_decay": setting.weight_decay, "z_loss": setting.z_loss,
                           "stopped": result["stopped"], "events": sorted({e["kind"] for e in result["events"]}),
                           "probe_steps": steps, "eval_loss": rounded(eval_loss)}
    for name in ("attn/max_logit", "attn/entropy_min", "logits/log_z_mean", "logits/max"):
        run[name] = rounded(series(metrics, name)[1])
    train_steps, train_loss = series(metrics, "loss")
    run["train_steps"], run["train_loss"] = train_steps[::5], rounded(train_loss[::5])
    if result["stopped"] == "nonfinite" or (eval_loss and not math.isfinite(eval_loss[-1])):
        run["final_eval_loss"] = math.inf  # diverged
    elif eval_loss and steps[-1] == result["steps"]:
        run["final_eval_loss"] = eval_loss[-1]
    else:  # no probe at the last step (a failed solve, say): unknown, which no criterion passes on
        run["final_eval_loss"] = math.nan
    run["final_attn_logit"] = _last(run["attn/max_logit"])
    run["peak_attn_logit"] = max((v for v in run["attn/max_logit"] if math.isfinite(v)), default=math.nan)
    run["final_log_z"] = _last(run["logits/log_z_mean"])
    return run


def _last(values: list[float]) -> float:
    return values[-1] if values else math.nan


# -- findings ------------------------------------------------------------------------------------
def sweep_findings(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    plain = sorted((r for r in runs.values() if r["weight_decay"] and not r["qk_norm"]), key=lambda r: r["lr"])
    qkln = sorted((r for r in runs.values() if r["weight_decay"] and r["qk_norm"]), key=lambda r: r["lr"])
    low, top, top_qk = plain[0], plain[-1], qkln[-1]
    model = f"byte transformer {LAYERS}x{WIDTH}, AdamW"
    setting = f"{model}, lr {low['lr']:g}-{top['lr']:g}"
    best = min(plain, key=lambda r: math.inf if math.isnan(r["final_eval_loss"]) else r["final_eval_loss"])
    growth = top["final_attn_logit"] / low["final_attn_logit"]
    return [
        finding("attention logit growth", PAPER, setting + ", no qk-layernorm",
                f"final max attention logit at lr {top['lr']:g} >= {GROWTH_FACTOR:g}x that at lr {low['lr']:g}",
                f"{top['final_attn_logit']:.4g} vs {low['final_attn_logit']:.3g} ({growth:.3g}x); by lr: "
                + ", ".join(f"{r['lr']:g}: {r['final_attn_logit']:.3g}" for r in plain),
                growth >= GROWTH_FACTOR, values={r["lr"]: r["final_attn_logit"] for r in plain}),
        finding("high-lr degradation", PAPER, setting + ", no qk-layernorm",
                f"held-out loss at lr {top['lr']:g} >= best lr's + {DEGRADATION:g} nats (or diverged)",
                f"{top['final_eval_loss']:.3f} at lr {top['lr']:g} vs {best['final_eval_loss']:.3f} at lr {best['lr']:g}",
                top["final_eval_loss"] >= best["final_eval_loss"] + DEGRADATION,
                values={r["lr"]: r["final_eval_loss"] for r in plain}),
        finding("qk-layernorm bounds attention logits", PAPER, setting + ", qk-layernorm",
                f"peak max attention logit at lr {top_qk['lr']:g} < {BOUNDED:g}",
                f"{top_qk['peak_attn_logit']:.3g} (without qk-layernorm {top['peak_attn_logit']:.4g}); by lr: "
                + ", ".join(f"{r['lr']:g}: {r['peak_attn_logit']:.3g}" for r in qkln),
                top_qk["peak_attn_logit"] < BOUNDED, values={r["lr"]: r["peak_attn_logit"] for r in qkln}),
        finding("qk-layernorm helps at high lr", PAPER, f"{model}, lr {top['lr']:g}",
                f"held-out loss with qk-layernorm <= without - {QK_GAIN:g} nats",
                f"{top_qk['final_eval_loss']:.3f} with vs {top['final_eval_loss']:.3f} without; "
                f"lr sensitivity (mean excess over the best lr) {sensitivity(qkln):.3f} with "
                f"vs {sensitivity(plain):.3f} without",
                top_qk["final_eval_loss"] <= top["final_eval_loss"] - QK_GAIN,
                values={r["lr"]: r["final_eval_loss"] for r in qkln}),
    ]


def sensitivity(runs: list[dict[str, Any]]) -> float:
    """The paper's LR sensitivity: the mean over learning rates of the loss above the best one's (diverged: capped)."""
    losses = [min(r["final_eval_loss"], math.log(VOCAB)) for r in runs]
    return sum(losses) / len(losses) - min(losses)


def z_loss_findings(plain: dict[str, Any], z: dict[str, Any]) -> list[dict[str, Any]]:
    setting = f"byte transformer, qk-layernorm, lr {plain['lr']:g}, no weight decay"
    diverged = "output_logit_divergence" in plain["events"] or abs(plain["final_log_z"]) >= FAR_LOG_Z
    log_z = [v for v in plain["logits/log_z_mean"] if math.isfinite(v)]
    seen = f"{min(log_z):.2f} to {max(log_z):.2f}" if log_z else "none"
    return [
        finding("output logit divergence", PAPER, setting + ", no z-loss",
                f"log Z drifts far from 0 (output_logit_divergence event or |log Z| >= {FAR_LOG_Z:g}) "
                f"and held-out loss >= z-loss run's + {Z_GAIN:g}",
                f"final mean log Z {plain['final_log_z']:.2f} ({seen} over the probes), "
                f"events: {', '.join(plain['events']) or 'none'}; "
                f"loss {plain['final_eval_loss']:.3f} vs {z['final_eval_loss']:.3f} with z-loss",
                diverged and plain["final_eval_loss"] >= z["final_eval_loss"] + Z_GAIN),
        finding("z-loss keeps log Z near 0", PAPER, setting + f", z-loss {z['z_loss']:g}",
                f"|final mean log Z| < {NEAR_LOG_Z:g} and held-out loss <= no-z-loss run's",
                f"log Z {z['final_log_z']:.2f} with vs {plain['final_log_z']:.2f} without; "
                f"loss {z['final_eval_loss']:.3f} vs {plain['final_eval_loss']:.3f}",
                abs(z["final_log_z"]) < NEAR_LOG_Z and z["final_eval_loss"] <= plain["final_eval_loss"]),
    ]


# -- the figure ------------------------------------------------------------------------------------
def draw(runs: dict[str, dict[str, Any]], path: Path) -> None:
    """Wortsman et al. Fig. 1 (loss against lr with and without qk-layernorm), the max attention logit
    against step, and for (b) log Z and the held-out loss against step."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    sweep = [r for r in runs.values() if r["weight_decay"]]
    colours = dict(zip(LEARNING_RATES, plt.cm.viridis(torch.linspace(0, 1, len(LEARNING_RATES)).tolist())))
    ax = axes[0, 0]
    ceiling = max((r["final_eval_loss"] for r in sweep if math.isfinite(r["final_eval_loss"])), default=math.log(VOCAB))
    for qk, colour in ((False, "tab:red"), (True, "tab:blue")):
        group = sorted((r for r in sweep if r["qk_norm"] == qk), key=lambda r: r["lr"])
        losses = [r["final_eval_loss"] if math.isfinite(r["final_eval_loss"]) else ceiling * 1.05 for r in group]
        ax.plot([r["lr"] for r in group], losses, "o-", color=colour, label="qk-layernorm" if qk else "no qk-layernorm")
        for r, loss in zip(group, losses):
            if not math.isfinite(r["final_eval_loss"]):
                ax.annotate("diverged", (r["lr"], loss), color=colour, fontsize=8)
    ax.set(xscale="log", xlabel="learning rate", ylabel="final held-out loss (nats/byte)", title="(a) loss vs learning rate")
    ax.legend()
    ax = axes[0, 1]
    for r in sweep:
        values = [max(v, 1e-3) for v in r["attn/max_logit"]]
        ax.plot(r["probe_steps"][: len(values)], values, "-" if not r["qk_norm"] else "--", color=colours.get(r["lr"], "k"),
                label=f"lr {r['lr']:g}" if not r["qk_norm"] else None)
    ax.axhline(BOUNDED, color="grey", lw=0.8, ls=":")
    ax.set(yscale="log", xlabel="step", ylabel="max attention logit (probe)",
           title="(a) max attention logit: solid none, dashed qk-layernorm")
    ax.legend(fontsize=8)
    z_runs = [r for r in runs.values() if not r["weight_decay"]]
    for ax, name, ylabel in ((axes[1, 0], "logits/log_z_mean", "mean log Z (probe)"),
                             (axes[1, 1], "eval_loss", "held-out loss (probe)")):
        for r, colour in zip(z_runs, ("tab:orange", "tab:green")):
            ax.plot(r["probe_steps"][: len(r[name])], r[name], "o-", ms=3, color=colour,
                    label=f"z-loss {r['z_loss']:g}" if r["z_loss"] else "no z-loss")
        ax.set(xlabel="step", ylabel=ylabel, title=f"(b) lr {Z_LOSS_LR:g}, qk-layernorm, no weight decay")
        ax.legend()
    axes[1, 0].axhline(0, color="grey", lw=0.8, ls=":")
    fig.suptitle("Wortsman et al. 2023 at small scale: byte-level transformer on stdlib source")
    save_figure(fig, path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    start = time.perf_counter()
    steps = SMOKE_STEPS if args.smoke else STEPS
    # Every EVERY steps and at steps 1 and 10 (the start of the logit curves); smoke: the last step only.
    schedule = ew.Schedule(every=steps) if args.smoke else ew.Schedule(every=EVERY, dense_until=EVERY, per_decade=1)
    data = stdlib_bytes()
    split = int(len(data) * (1 - HELD_OUT))
    train_data, held_out = data[:split], data[split:]
    probe = [windows(held_out, torch.linspace(0, len(held_out) - CONTEXT - 2, PROBE_SEQUENCES).long())]
    print(f"{NAME}: {len(train_data)} training / {len(held_out)} held-out bytes of stdlib source; {LAYERS} layers, "
          f"width {WIDTH}, {HEADS} heads, context {CONTEXT}, batch {BATCH}; {steps} AdamW steps per run", flush=True)

    settings = [Setting(lr, qk) for qk in (False, True) for lr in LEARNING_RATES]
    settings += [Setting(Z_LOSS_LR, True, weight_decay=0.0), Setting(Z_LOSS_LR, True, weight_decay=0.0, z_loss=Z_LOSS)]
    runs: dict[str, dict[str, Any]] = {}
    for setting in settings:
        result = train(setting, train_data, probe, steps, schedule, args.seed, args.out / "runs" / NAME / setting.name)
        runs[setting.name] = summary(setting, result)

    findings = sweep_findings(runs) + z_loss_findings(runs[settings[-2].name], runs[settings[-1].name])
    draw(runs, args.out / f"{NAME}.png")
    seconds = time.perf_counter() - start
    return finish(args, NAME, findings, runs, seconds,
                  notes="eval loss = the Monitor's curvature/probe_loss on 8 held-out sequences (z-loss term removed); "
                        "one seed; the corpus is this machine's stdlib, so numbers differ slightly between Pythons")


if __name__ == "__main__":
    sys.exit(main())
