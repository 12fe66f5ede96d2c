"""Hessian spectral density with and without BatchNorm: outliers above the bulk, and the gradient in their span.

Paper: Ghorbani, Krishnan, Xiao 2019, "An Investigation into Neural Net Optimization via Hessian
Eigenvalue Density", https://arxiv.org/abs/1901.10159. Stochastic Lanczos quadrature (SLQ) estimates
the whole eigenvalue density of the loss Hessian H: for unit random vectors v, m Lanczos steps give
T_m = S diag(θ) Sᵀ, and the Gauss rule Σ_j τ_j f(θ_j), τ_j = S_1j², approximates vᵀ f(H) v; with f a
Gaussian of width σ, averaged over the v's,

    φ_σ(t) = (1/n) Σ_i N(t; λ_i, σ²) ≈ (1/n_v) Σ_l Σ_j τ_j^(l) N(t; θ_j^(l), σ²).

The paper finds that in networks without BatchNorm a few large isolated eigenvalues (outliers,
about as many as classes) separate from the bulk early in training and the gradient concentrates
in their eigenspace; with BatchNorm (in train mode, batch statistics) these outliers are almost
absent, and the gradient is not concentrated there.

Setting: all 1,797 scikit-learn digits (10 classes), cross-entropy, SGD (η = 0.1, minibatches of
64, reshuffled every epoch, no momentum), PyTorch's default initialization, seed 0, 600 steps
(≈ 21 epochs); two architectures, each without and with BatchNorm:
- CNN ReLU: two 3×3 convolutions with 8 channels, average pool, linear head (``common.cnn``'s
  shape), with a BatchNorm2d after each convolution in the BN variant (n = 1,954 / 1,986);
- MLP ReLU 64-200-200-10 (``common.mlp``), with a BatchNorm1d before each ReLU in the BN variant
  (n = 55,210 / 56,010).
Each network trains with the Monitor attached (k = 10: λ_1…λ_10 and ``curvature/gradient_overlap``
= ‖V_10ᵀg‖²/‖g‖² on a fixed probe batch of 512 training examples, every 25 steps). At 0%, 25% and
100% of training the script computes on the same probe batch, at that θ (BatchNorm in train mode
with the batch's statistics: the function SGD optimizes): the SLQ density with
``edgewatch.curvature.spectral_density`` (3 Rademacher probes × 80 Lanczos steps, σ = 1% of the
span of the Ritz values), and the top 11 eigenpairs by ``lanczos``, which give the outliers'
separation λ_1/λ_11 (λ_11, the first eigenvalue past the ten class outliers, stands for the bulk
edge: with n = 2,000-56,000 parameters the bulk's top has too little mass to locate on a
smoothed density) and the probe gradient's share in the outlier subspace, ‖P_10 g‖²/‖g‖².

Criteria (per architecture, comparing the network without BN to the one with BN):
  1. separation: λ_1/λ_11 at the end of training larger without BN than with BN;
  2. gradient concentration: the median of the Monitor's ``curvature/gradient_overlap`` (k = 10)
     over the second half of training larger without BN than with BN;
  3. outliers grow: without BN, λ_1/λ_11 rises from initialization to the end of training.

Criteria 1 and 2 are the paper's comparisons made on one fixed probe batch and at CPU scale (the
paper: ResNet-32 on CIFAR-10 and Inception on ImageNet, densities over the full training set);
it gives no threshold, so "larger" is the criterion. A BatchNorm network's Hessian is measured in
train mode (batch statistics of the probe batch): the loss SGD actually descends.

Measured (full run, seed 0; λ by Lanczos on the probe batch at steps 0, 150, 600; the gradient
share is the Monitor's, median over the 13 probes at steps 300-600):

| network | λ_1: step 0 → 150 → 600 | λ_1/λ_11: step 0 → 150 → 600 | gradient share in top 10 |
|---|---|---|---|
| CNN without BN | 1.02 → 12.1 → 9.66 | 2.10 → 10.4 → 8.36 | 0.93 |
| CNN with BN | 3.35 → 8.35 → 4.37 | 1.57 → 4.91 → 5.75 | 0.77 |
| MLP without BN | 0.75 → 3.06 → 1.44 | 1.54 → 4.91 → 5.34 | 0.45 |
| MLP with BN | 7.80 → 1.60 → 0.50 | 2.93 → 2.80 → 2.46 | 0.50 |

Seed 1 passes and fails the same criteria: λ_1/λ_11 at the end 12.0 vs 3.54 (CNN without / with
BN; 1.96 → 12.0 without BN) and 6.19 vs 2.64 (MLP; 1.67 → 6.19); gradient share 0.94 vs 0.73
(CNN) and 0.37 vs 0.45 (MLP).

What reproduced: without BatchNorm a handful of eigenvalues leave the bulk early in training
and stay far from it (the CNN's λ_1/λ_11 goes from 2.1 to 10.4 by step 150, 8.4 at the end;
the MLP's from 1.5 to 4.9 and 5.3): on the log density they are isolated bumps far to the right
of a bulk piled up near 0, as in the paper's densities. With BatchNorm they are smaller: at the
end λ_1/λ_11 is 5.75 vs 8.36 (CNN) and 2.46 vs 5.34 (MLP), and the BN MLP's top eigenvalues
shrink steadily (λ_1 7.8 → 0.50) into a continuum with no outliers (λ_1 … λ_11 from 0.50 to
0.20). In the CNN the gradient concentrates in the outlier subspace without BN (median share
0.93 over the second half, from 0.75 to 0.97) more than with BN (0.77), as the paper finds.

What did not, or only in part: for the MLP the gradient's share in the top-10 eigenspace is not
larger without BN (0.45 vs 0.50): the two MLPs reach similar shares although only the one
without BN has outliers; the BN MLP trains faster (probe loss 0.004 vs 0.023 at step 600) and
its gradient, small by then, lies half in its top 10 directions even without a gap. With BN the
CNN still grows outliers (λ_1/λ_11 1.6 → 5.8), weaker than without BN but not "almost absent"
as for the paper's ResNet-32: this CNN has BatchNorm only after its two convolutions, none on
the linear head. The density at initialization of both BN networks is wide and has a negative
part (Ritz values down to −2.9 for the CNN, −2.6 for the MLP) that training removes; without BN
the initial spectrum is narrower (−0.9 to 1.0 and −0.5 to 0.7). The SLQ densities use 3 × 80
Lanczos steps on networks of 2,000-56,000 parameters: the paper's fine structure (σ² = 1e-5 on a rescaled spectrum, m ≈ 90,
many more probes) is not resolved, but the outliers, which Lanczos finds first, are.

Full run: 151-159 s of CPU (one thread), 241-358 s wall on the shared 2-core machine (load
5-6); with ``common.cnn``'s 16 channels (and 4 SLQ probes) it took 271 s of CPU, over the
budget, hence 8 channels.
``--smoke`` (a 64-16-10 MLP and a 2-channel CNN, 4 steps, probe of 32, SLQ 1 × 12 steps): 7-8 s CPU,
16-17 s wall under the same load.

    cd benchmarks/science && OMP_NUM_THREADS=1 python spectral_density_bn.py [--smoke] [--out DIR] [--seed 0]
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    cross_entropy,
    digits,
    finding,
    finish,
    mlp,
    parse_args,
    require_matplotlib,
    rounded,
    save_figure,
    series,
    watched_run,
)
from torch import nn

import edgewatch as ew
from edgewatch import names
from edgewatch.curvature import HessianOperator, lanczos, spectral_density

NAME = "spectral_density_bn"
PAPER = "Ghorbani et al. 2019"
CLASSES = 10
LR, BATCH = 0.1, 64
PROBE = 512
STEPS = 600
EVERY = 25  # the Monitor's curvature probes
POINTS = (0.0, 0.25, 1.0)  # where the densities are taken, as fractions of training
SLQ_PROBES, SLQ_STEPS = 3, 80
MLP_WIDTHS = (64, 200, 200, 10)
CNN_CHANNELS = 8  # with common.cnn's 16 the whole run took 271 s of CPU, over the 4-minute budget

MAX_HVPS = 400  # per Lanczos solve (the Monitor's and the spectra's top 11)

SMOKE = {"steps": 4, "every": 2, "probe": 32, "slq_probes": 1, "slq_steps": 12, "widths": (64, 16, 10), "channels": 2,
         "max_hvps": 40}


@dataclass(frozen=True)
class Setting:
    arch: str  # "cnn" or "mlp"
    batchnorm: bool

    @property
    def name(self) -> str:
        return f"{self.arch}-{'bn' if self.batchnorm else 'plain'}"

    @property
    def label(self) -> str:
        return f"{self.arch.upper()} {'with' if self.batchnorm else 'without'} BN"

    def description(self, smoke: bool) -> str:
        if self.arch == "mlp":
            net = f"MLP ReLU {'-'.join(map(str, SMOKE['widths'] if smoke else MLP_WIDTHS))}"
        else:
            net = f"CNN ReLU {SMOKE['channels'] if smoke else CNN_CHANNELS} ch"
        return f"{net}{' + BatchNorm' if self.batchnorm else ''}, cross-entropy, SGD η={LR:g}, digits"


SETTINGS = (Setting("cnn", False), Setting("cnn", True), Setting("mlp", False), Setting("mlp", True))


def cnn_bn(channels: int, *, seed: int, batchnorm: bool) -> nn.Sequential:
    """``common.cnn`` (two 3×3 convolutions, ReLU, average pool, linear head), with a BatchNorm2d
    after each convolution if asked."""
    torch.manual_seed(seed)
    norm = (lambda: nn.BatchNorm2d(channels)) if batchnorm else nn.Identity
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), norm(), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1), norm(), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(channels * 16, 10),
    )


def build(setting: Setting, seed: int, smoke: bool) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    if setting.arch == "mlp":
        widths = SMOKE["widths"] if smoke else MLP_WIDTHS
        return mlp("relu", widths, seed=seed, norm="batch" if setting.batchnorm else None), digits(1797)
    channels = SMOKE["channels"] if smoke else CNN_CHANNELS
    return cnn_bn(channels, seed=seed, batchnorm=setting.batchnorm), digits(1797, images=True)


def spectrum(model: nn.Module, probe: tuple[torch.Tensor, torch.Tensor], smoke: bool, seed: int) -> dict[str, Any]:
    """At the current θ, on the probe batch (train mode): the SLQ density, the top 11 eigenpairs,
    λ_1/λ_11 and the probe gradient's share in the top-10 eigenspace."""
    operator = HessianOperator(model, cross_entropy, [probe], seed=seed)
    probes, steps = (SMOKE["slq_probes"], SMOKE["slq_steps"]) if smoke else (SLQ_PROBES, SLQ_STEPS)
    density = spectral_density(operator, num_probes=probes, num_steps=steps, seed=seed)
    top = lanczos(operator, k=CLASSES + 1, tol=1e-3, max_hvps=SMOKE["max_hvps"] if smoke else MAX_HVPS, seed=seed)
    with operator:  # the probe loss and gradient as the operator sees them (BatchNorm's running statistics untouched)
        loss, gradient = operator.loss_and_gradient()
    gradient = gradient.double()
    vectors = top.eigenvectors[:, :CLASSES].double()
    share = float((vectors.T @ gradient).pow(2).sum() / gradient.dot(gradient))
    eigenvalues = top.eigenvalues.tolist()
    return {
        "grid": density.grid.numpy(), "density": density.density.numpy(), "sigma": density.sigma,
        "density_hvps": density.num_hvps, "eigenvalues": eigenvalues, "converged": bool(top.converged),
        "separation": eigenvalues[0] / eigenvalues[CLASSES], "share": share, "loss": float(loss),
    }


def train(setting: Setting, args: Any) -> dict[str, Any]:
    model, (x, y) = build(setting, args.seed, args.smoke)
    steps = SMOKE["steps"] if args.smoke else STEPS
    every = SMOKE["every"] if args.smoke else EVERY
    probe = (x[:SMOKE["probe"] if args.smoke else PROBE], y[:SMOKE["probe"] if args.smoke else PROBE])
    points = sorted({int(round(f * steps)) for f in POINTS})
    spectra: dict[int, dict[str, Any]] = {}
    generator = torch.Generator().manual_seed(args.seed)
    per_epoch = len(y) // BATCH  # minibatches of 64, reshuffled every epoch (the last partial one dropped)
    orders: dict[int, torch.Tensor] = {}

    def next_batch(step: int):
        if step in points:  # θ_step, before this step's update: the density at this point of training
            spectra[step] = spectrum(model, probe, args.smoke, args.seed)
        epoch, position = divmod(step, per_epoch)
        if epoch not in orders:
            orders[epoch] = torch.randperm(len(y), generator=generator)
        index = orders[epoch][position * BATCH:(position + 1) * BATCH]
        return x[index], y[index]

    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    run = watched_run(model, optimizer, cross_entropy, None, steps, args.out / "runs" / NAME / setting.name,
                      probe=[probe], curvature=ew.Schedule(every=every), next_batch=next_batch, label=setting.label,
                      k=CLASSES, max_hvps=SMOKE["max_hvps"] if args.smoke else MAX_HVPS)
    if steps in points and run["steps"] == steps:
        spectra[steps] = spectrum(model, probe, args.smoke, args.seed)
    run["spectra"] = spectra
    run["n"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return run


def analyse(run: dict[str, Any]) -> dict[str, Any]:
    steps = run["steps"]
    overlap_steps, overlap = series(run["metrics"], names.GRADIENT_OVERLAP)
    late = [v for s, v in zip(overlap_steps, overlap) if s >= steps / 2]
    lam_steps, lam = series(run["metrics"], names.LAMBDA_MAX)
    lam10_steps, lam10 = series(run["metrics"], names.family(names.LAMBDA_I, i=CLASSES))
    loss_steps, loss = series(run["metrics"], "loss")
    spectra = run["spectra"]
    first, last = min(spectra), max(spectra)
    return {
        "n": run["n"], "steps": steps, "stopped": run["stopped"], "seconds": round(run["seconds"], 1),
        "median_late_overlap": statistics.median(late) if late else math.nan,
        "overlap_steps": overlap_steps, "overlap": rounded(overlap, 4),
        "lambda_steps": lam_steps, "lambda_max": rounded(lam), "lambda_10_steps": lam10_steps, "lambda_10": rounded(lam10),
        "loss_steps": loss_steps[::4], "loss": rounded(loss[::4]),
        "separation_start": spectra[first]["separation"], "separation_end": spectra[last]["separation"],
        "spectra": {str(step): {
            "eigenvalues": rounded(s["eigenvalues"]), "converged": s["converged"], "separation": s["separation"],
            "share": s["share"], "probe_loss": s["loss"], "sigma": s["sigma"], "density_hvps": s["density_hvps"],
            # the density on every 4th grid point: enough to redraw the figure
            "grid": rounded(s["grid"][::4].tolist(), 4), "density": rounded(s["density"][::4].tolist(), 4),
        } for step, s in spectra.items()},
        "_spectra": spectra,
    }


def findings_for(arch: str, plain: dict[str, Any], bn: dict[str, Any], smoke: bool) -> list[dict[str, Any]]:
    setting = Setting(arch, False).description(smoke).replace(", cross-entropy", " vs + BatchNorm, cross-entropy")
    sep_plain, sep_bn = plain["separation_end"], bn["separation_end"]
    lam_text = (lambda r: f"λ_1 {r['_spectra'][max(r['_spectra'])]['eigenvalues'][0]:.3g}, "
                          f"λ_11 {r['_spectra'][max(r['_spectra'])]['eigenvalues'][CLASSES]:.3g}")
    return [
        finding("outliers separate from the bulk without BatchNorm", PAPER, setting,
                "λ_1/λ_11 at the end of training: without BN > with BN",
                f"without BN {sep_plain:.3g} ({lam_text(plain)}); with BN {sep_bn:.3g} ({lam_text(bn)})",
                sep_plain > sep_bn, separation_plain=sep_plain, separation_bn=sep_bn),
        finding("gradient concentrates in the outlier subspace without BatchNorm", PAPER, setting,
                "median ‖P_10 g‖²/‖g‖² (the Monitor's gradient_overlap, k=10) over the second half: without BN > with BN",
                f"without BN {plain['median_late_overlap']:.3f}, with BN {bn['median_late_overlap']:.3f} "
                f"(random 10/n: {CLASSES / plain['n']:.2g}, {CLASSES / bn['n']:.2g})",
                plain["median_late_overlap"] > bn["median_late_overlap"],
                overlap_plain=plain["median_late_overlap"], overlap_bn=bn["median_late_overlap"]),
        finding("outliers grow during training without BatchNorm", PAPER, Setting(arch, False).description(smoke),
                "λ_1/λ_11 at the end > at initialization",
                f"{plain['separation_start']:.3g} at step 0 → {sep_plain:.3g} at step {plain['steps']} "
                f"(with BN: {bn['separation_start']:.3g} → {sep_bn:.3g})",
                sep_plain > plain["separation_start"]),
    ]


# -- the figure --------------------------------------------------------------------------------
def figure(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Like the paper's Figures 2-4: the log density against the eigenvalue, one panel per network,
    one curve per point of training; below, the gradient's share in the top-10 eigenspace."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(2, len(SETTINGS), figsize=(4.6 * len(SETTINGS), 8), squeeze=False)
    for column, setting in enumerate(SETTINGS):
        r = results[setting.name]
        ax_density, ax_overlap = axes[:, column]
        for index, (step, s) in enumerate(sorted(r["_spectra"].items())):
            floor = 1e-6 * s["density"].max()  # the Gaussians' far tails, to the plot's bottom
            ax_density.plot(s["grid"], np.maximum(s["density"], floor), color=f"C{index}", lw=1.2,
                            label=f"step {step} (λ_1/λ_11 = {s['separation']:.2g})")
            for value in s["eigenvalues"][:CLASSES]:
                ax_density.plot(value, floor * 10, "|", color=f"C{index}", ms=8)
        ax_density.set(yscale="log", ylim=(floor / 3, None), xlabel="eigenvalue", ylabel="density φ_σ (log)", title=setting.label)
        ax_density.legend(fontsize=7)
        ax_overlap.plot(r["overlap_steps"], r["overlap"], ".-", color="C3", label="‖P_10 g‖²/‖g‖² (Monitor)")
        ax_overlap.axhline(CLASSES / r["n"], color="black", ls=":", lw=0.8, label="random 10/n")
        ax_overlap.set(ylim=(-0.02, 1.02), xlabel="step", ylabel="gradient share in top-10 eigenspace")
        twin = ax_overlap.twinx()
        twin.plot(r["lambda_steps"], r["lambda_max"], color="C0", lw=1, label="λ_1")
        if r["lambda_10"]:
            twin.plot(r["lambda_10_steps"], r["lambda_10"], color="C0", lw=1, ls="--", label="λ_10")
        twin.set(yscale="log", ylabel="λ_1, λ_10 (Monitor)")
        lines = ax_overlap.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax_overlap.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="center right")
    fig.suptitle("Hessian eigenvalue density by SLQ, with and without BatchNorm (after Ghorbani et al. 2019): "
                 "digits, cross-entropy, SGD; ticks: λ_1…λ_10 by Lanczos")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    start, cpu_start = time.perf_counter(), time.process_time()
    print(f"{NAME}: SGD on 1,797 digits, cross-entropy; SLQ densities at {', '.join(f'{p:.0%}' for p in POINTS)} of "
          f"training{' (smoke)' if args.smoke else ''}", flush=True)
    results = {}
    for setting in SETTINGS:
        run = train(setting, args)
        results[setting.name] = {"arch": setting.arch, "batchnorm": setting.batchnorm, **analyse(run)}
    findings = []
    for arch in ("cnn", "mlp"):
        findings += findings_for(arch, results[f"{arch}-plain"], results[f"{arch}-bn"], args.smoke)
    figure(results, args.out / f"{NAME}.png")
    for r in results.values():
        del r["_spectra"]
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    notes = (f"SLQ {SMOKE['slq_probes'] if args.smoke else SLQ_PROBES} probes × {SMOKE['slq_steps'] if args.smoke else SLQ_STEPS} "
             f"Lanczos steps on the probe batch (train mode); process CPU time {cpu:.0f} s (wall {seconds:.0f} s)")
    return finish(args, NAME, findings, results, seconds, notes=notes, cpu=cpu)


if __name__ == "__main__":
    sys.exit(main())
