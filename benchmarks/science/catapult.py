"""The catapult phase: a wide two-layer network trained by GD at η·λ_0 between 2 and 4 first blows up, then flattens.

Paper: Lewkowycz, Bahri, Dyer, Sohl-Dickstein, Gur-Ari 2020, The large learning rate phase of deep
learning: the catapult mechanism, https://arxiv.org/abs/2003.02218. For wide networks trained by
gradient descent on the square loss, λ_0 (the top Hessian eigenvalue at initialization) splits the
learning rates into three phases: η < 2/λ_0, lazy (the loss falls, the curvature stays put);
2/λ_0 < η < η_max ≈ 4/λ_0, catapult (the loss first grows exponentially, the curvature drops until
η·λ < 2, then the loss falls, in a flatter region); η > η_max, divergence.

Setting: f(x) = V·relu(U x/√64)/√2048, U, V ~ N(0, 1) (their NTK parametrization, width 2048,
no biases), 256 scikit-learn digits, square loss ½‖f(x) − e_y‖² (10 outputs), full-batch GD for
300 steps. λ_0 by Lanczos on the full batch at initialization (edgewatch.curvature), then one run
per η·λ_0 ∈ {1, 1.9, 2.5, 3, 3.5, 4, 4.5} from the same initialization, each with an
``edgewatch.Monitor`` (curvature on the full batch every step to 50, then every 10).

Criteria (from the Monitor's records):
  - lazy (η·λ_0 < 2): the loss never exceeds its initial value, ends < 0.1× it, and λ_1 ends
    within 10% of λ_0;
  - catapult (2 < η·λ_0 < 4): the loss rises >= 5× its initial value within 50 steps, then ends
    < 0.1× it; at the end η·λ_1 < 2 and λ_1 <= 0.8·λ_0;
  - divergent (η·λ_0 >= 4: 4/λ_0 is η_max of the paper's solvable model, only approximate for real
    networks, where it depends on the architecture): non-finite, or loss > 1e6× initial;
  - the Monitor's ``catapult`` detector fires in the catapult runs and in no other.

Measured (seed 0, λ_0 = 0.160; seeds 1 and 2 agree, λ_0 = 0.163, 0.159):
  - η·λ_0 = 1 and 1.9: no rise; loss 3.03 → 0.022 and 0.0068; λ_end/λ_0 = 0.995, 0.99. Lazy.
  - 2.5: the loss climbs ×19 (to 57.5 at step 8), then falls to 0.0033; η·λ_end = 1.51,
    λ_end/λ_0 = 0.60. 3.0: ×70 (step 6), η·λ_end = 0.95, λ_end/λ_0 = 0.32. 3.5: ×145 (step 5),
    η·λ_end = 1.70, λ_end/λ_0 = 0.49. Catapults, all ending far below the initial loss after 300
    steps (0.0017-0.0033). Seeds 1, 2: ×17-23, ×62-88, ×136-165;
    λ_end/λ_0 0.30-0.61.
  - 4.0 and 4.5: non-finite at step 7 (``nonfinite`` stops the run). A finer sweep without the
    Monitor (not in this script) puts η_max between 3.6/λ_0 and 3.7/λ_0 here, a little below 4/λ_0.
  - In the catapult runs η·λ_1 first rises for a few steps (3.5 → 4.2 at step 4) before it
    collapses below 2: unlike the paper's two-layer linear model, where it only falls.

The Monitor's ``catapult`` detector fires in the three catapult runs and in no other: the fixed
probe batch's loss rises to 1.5× its lowest recent value while r ≥ 1, comes back below that
level, and λ_1 is by then at least 20% lower (``docs/detectors.md``); a diverging run never comes
back down. A catapult from initialization grows ×1.7-3.2 per step from step 1, never the 10× jump
or the 6σ over a filled window that a ``loss_spike`` needs.
(A tanh network of the same shape catapults too, but trains at η·λ_0 = 4 and ends at η·λ ≈ 2,
the edge of stability rather than below it: ReLU is used here.)

Full run: ≈ 49 s on one idle core (≈ 100 s wall when the 2 shared cores are busy); ``--smoke`` (width 256,
64 examples, 6 steps): ≈ 5 s.

    python benchmarks/science/catapult.py [--out DIR] [--seed 0] [--smoke]
"""

from __future__ import annotations

import math
import sys
import time
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
from edgewatch.curvature import HessianOperator, lanczos

NAME = "catapult"
PAPER = "Lewkowycz et al. 2020"
WIDTH, SMOKE_WIDTH = 2048, 256
N_DATA, SMOKE_DATA = 256, 64  # digits examples: the whole training set, so the probe's Hessian is the one GD sees
SCALES = (1.0, 1.9, 2.5, 3.0, 3.5, 4.0, 4.5)  # η·λ_0 of the runs: lazy (< 2), catapult (2 to 4), divergent (>= 4)
STEPS, SMOKE_STEPS = 300, 6
EARLY = 50  # curvature every step up to here (the catapult happens within it), then every 10 steps
CURVATURE = ew.Schedule(every=10, dense_until=EARLY + 1, per_decade=200)  # per_decade=200 hits every step below ~80
RISE = 5.0  # a catapult: the loss climbs above this many times its initial value within EARLY steps
FALL = 0.1  # ... and ends below this fraction of its initial value
FLATTER = 0.8  # ... and λ_1 ends below this fraction of λ_0 (and below 2/η)
LAZY_DRIFT = 0.1  # a lazy run: λ_1 ends within this relative distance of λ_0
DIVERGED = 1e6  # a divergent run: non-finite, or the loss above this many times its initial value


class TwoLayer(nn.Module):
    """f(x) = V relu(U x / √d) / √n with U, V ~ N(0, 1): the NTK parametrization Lewkowycz et al. use.

    With it λ_0 stays O(1) as the width n grows while the network moves less and less: the regime
    where the lazy/catapult/divergent phases are sharp (η_crit = 2/λ_0, η_max ≈ 4/λ_0).
    """

    def __init__(self, d_in: int, width: int, d_out: int, *, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.hidden = nn.Parameter(torch.randn(width, d_in, generator=generator))
        self.readout = nn.Parameter(torch.randn(d_out, width, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(x @ self.hidden.T / math.sqrt(self.hidden.shape[1]))
        return features @ self.readout.T / math.sqrt(self.readout.shape[1])


def initial_sharpness(model: nn.Module, batch) -> float:
    """λ_0 = λ_1(H) at initialization, before any step (the Monitor's first probe comes after step 1)."""
    result = lanczos(HessianOperator(model, mse, [batch]), k=1, tol=1e-5)
    if not result.converged:
        raise RuntimeError(f"λ_0 did not converge (residual {result.residuals[0].item():.3g}); raise max_hvps")
    return result.eigenvalues[0].item()


def train(scale: float, lam0: float, batch, width: int, steps: int, out: Path, seed: int) -> dict[str, Any]:
    model = TwoLayer(64, width, 10, seed=seed)  # the same initialization for every η
    eta = scale / lam0
    optimizer = torch.optim.SGD(model.parameters(), lr=eta)
    return watched_run(model, optimizer, mse, batch, steps, out / "runs" / NAME / f"eta{scale:g}",
                       curvature=CURVATURE, label=f"eta*lambda_0 = {scale:g} (eta = {eta:.4g})")


def summarize(scale: float, lam0: float, run: dict[str, Any], width: int, n_data: int) -> dict[str, Any]:
    """What the criteria and the figure need, from the Monitor's records."""
    metrics = run["metrics"]
    eta = scale / lam0
    loss_steps, loss = series(metrics, "loss")
    curvature_steps, sharpness = series(metrics, "curvature/lambda_max")
    initial = loss[0]
    early = [v if math.isfinite(v) else math.inf for s, v in zip(loss_steps, loss) if s <= EARLY]
    peak = max(early)
    final_loss = loss[-1]
    diverged = run["stopped"] == "nonfinite" or not math.isfinite(final_loss) or peak > DIVERGED * initial
    final_sharpness = sharpness[-1] if sharpness and not diverged else math.nan
    catapults = [e for e in run["events"] if e["kind"] == "catapult"]
    return {
        "eta": eta, "eta_lambda0": scale, "lambda0": lam0, "width": width, "n_data": n_data,
        "steps": run["steps"], "stopped": run["stopped"],
        "initial_loss": initial, "peak_loss": peak, "peak_step": loss_steps[early.index(peak)],
        "rise": peak / initial, "final_loss": final_loss, "final_sharpness": final_sharpness,
        "final_eta_lambda": eta * final_sharpness, "sharpness_ratio": final_sharpness / lam0,
        "diverged": diverged,
        "catapult_events": [{"step": e["step"], **e["values"]} for e in catapults],
        "events": sorted({e["kind"] for e in run["events"]}),
        "series": {"loss_steps": loss_steps, "loss": rounded(loss, 4),
                   "curvature_steps": curvature_steps, "sharpness": rounded(sharpness)},
    }


def phase_findings(summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One finding per η: the phase its η·λ_0 predicts, checked on the loss and the sharpness."""
    rows = []
    for key, s in summaries.items():
        c = s["eta_lambda0"]
        setting = f"2-layer ReLU, width {s['width']}, NTK param., GD, eta*lambda_0={c:g}"
        outcome = (f"loss x{s['rise']:.3g} max (step {s['peak_step']}), final {s['final_loss']:.3g} "
                   f"(initial {s['initial_loss']:.3g})")
        if c < 2:
            passed = (s["rise"] <= 1.0 and not s["diverged"] and s["final_loss"] < FALL * s["initial_loss"]
                      and abs(s["sharpness_ratio"] - 1) <= LAZY_DRIFT)
            rows.append(finding(
                "lazy phase", PAPER, setting,
                f"eta < 2/lambda_0: loss never above initial, ends < {FALL:g}x initial, |lambda_end/lambda_0 - 1| <= {LAZY_DRIFT:g}",
                f"{outcome}; lambda_end/lambda_0={s['sharpness_ratio']:.3g}", passed, run=key))
        elif c < 4:
            passed = (s["rise"] >= RISE and not s["diverged"] and s["final_loss"] < FALL * s["initial_loss"]
                      and s["final_eta_lambda"] < 2 and s["sharpness_ratio"] <= FLATTER)
            rows.append(finding(
                "catapult phase", PAPER, setting,
                f"2/lambda_0 < eta < 4/lambda_0: loss rises >= {RISE:g}x within {EARLY} steps, ends < {FALL:g}x initial; "
                f"eta*lambda_end < 2 and lambda_end <= {FLATTER:g} lambda_0",
                f"{outcome}; eta*lambda_end={s['final_eta_lambda']:.3g}, lambda_end/lambda_0={s['sharpness_ratio']:.3g}",
                passed, run=key))
        else:
            end = f"stopped at step {s['steps']} ({s['stopped']})" if s["stopped"] else f"final loss {s['final_loss']:.3g}"
            rows.append(finding(
                "divergent phase", PAPER, setting,
                f"eta >= 4/lambda_0: diverges (non-finite or loss > {DIVERGED:g}x initial)",
                f"{end}; peak loss x{s['rise']:.3g}", s["diverged"], run=key))
    return rows


def detector_finding(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The Monitor's ``catapult`` detector (a loss spike or climb, then λ_1 down 20%) fires in the catapult runs only."""
    fired = {s["eta_lambda0"]: bool(s["catapult_events"]) for s in summaries.values()}
    width = next(iter(summaries.values()))["width"]
    expected = {c: 2 < c < 4 for c in fired}
    first = {s["eta_lambda0"]: s["catapult_events"][0]["step"] for s in summaries.values() if s["catapult_events"]}
    measured = ", ".join(f"{c:g}: {'fired at step ' + str(first[c]) if fired[c] else 'silent'}" for c in fired)
    return finding(
        "Monitor catapult event", PAPER, f"2-layer ReLU, width {width}, eta*lambda_0 in {', '.join(f'{c:g}' for c in fired)}",
        "the catapult detector fires for 2 < eta*lambda_0 < 4 and for no other run", measured,
        fired == expected, fired={f"{c:g}": f for c, f in fired.items()})


# -- the figure --------------------------------------------------------------------------------
def figure(summaries: dict[str, dict[str, Any]], path: Path) -> None:
    """Lewkowycz et al. Fig. 1/2: loss and η·λ_1 against the step for each η, and λ_end/λ_0 against η·λ_0."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (ax_loss, ax_eta_lambda), (ax_sharpness, ax_phase) = axes
    cmap = plt.get_cmap("viridis")
    for i, s in enumerate(summaries.values()):
        color = cmap(i / max(1, len(summaries) - 1))
        label = f"ηλ_0 = {s['eta_lambda0']:g}"
        ser = s["series"]
        ax_loss.plot(ser["loss_steps"], ser["loss"], color=color, lw=1.3, label=label)
        loss_at = dict(zip(ser["loss_steps"], ser["loss"]))
        for event in s["catapult_events"]:
            if event["step"] in loss_at:
                ax_loss.plot(event["step"], loss_at[event["step"]], "v", color=color, ms=10, mec="black")
        ax_eta_lambda.plot(ser["curvature_steps"], [s["eta"] * v for v in ser["sharpness"]], ".-", color=color, ms=3, lw=1.2,
                           label=label)
        ax_sharpness.plot(ser["curvature_steps"], ser["sharpness"], ".-", color=color, ms=3, lw=1.2, label=label)
        ax_sharpness.axhline(2 / s["eta"], color=color, ls="--", lw=0.9)
    ax_loss.set(xscale="log", yscale="log", ylim=(None, 1e4), xlabel="step", ylabel="training loss (square)",
                title="loss (▼: the Monitor's catapult event)")
    ax_loss.legend(fontsize=8)
    ax_eta_lambda.axhline(2, color="black", ls="--", lw=1)
    ax_eta_lambda.axhline(4, color="black", ls=":", lw=1)
    ax_eta_lambda.set(xscale="log", ylim=(0, 6), xlabel="step", ylabel="η λ_1",
                      title="η·λ_1 (dashed: 2, the edge of stability; dotted: 4)")
    ax_sharpness.set(xscale="log", yscale="log", ylim=(0.02, 0.6), xlabel="step", ylabel="λ_1(H)",
                     title="sharpness λ_1, with 2/η dashed in each run's colour")
    trained = [s for s in summaries.values() if not s["diverged"]]
    ax_phase.plot([s["eta_lambda0"] for s in trained], [s["sharpness_ratio"] for s in trained], "o-", color="tab:blue",
                  label="λ_end / λ_0 (trained runs)")
    grid = [x / 10 for x in range(10, 47)]
    ax_phase.plot(grid, [min(1.0, 2 / x) for x in grid], "--", color="gray", lw=1, label="min(1, 2/(ηλ_0)): λ_end ≤ 2/η")
    for s in summaries.values():
        if s["diverged"]:
            ax_phase.plot(s["eta_lambda0"], 0.05, "x", color="tab:red", ms=10, mew=2)
    ax_phase.axvspan(2, 4, color="tab:orange", alpha=0.15, label="catapult phase 2 < ηλ_0 < 4")
    ax_phase.axvspan(4, 4.8, color="tab:red", alpha=0.1, label="divergent (×: diverged)")
    ax_phase.set(xlim=(0.8, 4.8), ylim=(0, 1.15), xlabel="η λ_0", ylabel="λ_1 at the end / λ_0",
                 title=f"phase diagram after {max(s['steps'] for s in trained) if trained else 0} steps")
    ax_phase.legend(fontsize=8, loc="lower left")
    first = next(iter(summaries.values()))
    fig.suptitle(f"Catapult: 2-layer ReLU net (width {first['width']}, NTK parametrization), GD on {first['n_data']} digits, square loss "
                 "(after Lewkowycz et al. 2020)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    start = time.perf_counter()
    steps, width, n_data = (SMOKE_STEPS, SMOKE_WIDTH, SMOKE_DATA) if args.smoke else (STEPS, WIDTH, N_DATA)
    batch = digits(n_data)
    lam0 = initial_sharpness(TwoLayer(64, width, 10, seed=args.seed), batch)
    print(f"{NAME}: 2-layer ReLU width {width} (NTK parametrization), {n_data} digits, full-batch GD, square loss; "
          f"lambda_0 = {lam0:.4g} (2/lambda_0 = {2 / lam0:.4g}), {steps} steps", flush=True)
    summaries = {}
    for scale in SCALES:
        run = train(scale, lam0, batch, width, steps, args.out, args.seed)
        summaries[f"eta{scale:g}"] = summarize(scale, lam0, run, width, n_data)
    findings = phase_findings(summaries) + [detector_finding(summaries)]
    seconds = time.perf_counter() - start
    figure(summaries, args.out / f"{NAME}.png")
    return finish(args, NAME, findings, summaries, seconds,
                  notes=f"lambda_0 = {lam0:.6g} by Lanczos on the full batch at initialization (the same init for "
                        f"every eta, seed {args.seed}); curvature every step to {EARLY}, then every 10.")


if __name__ == "__main__":
    sys.exit(main())
