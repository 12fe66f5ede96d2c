"""Warmup and normalization at one large learning rate: three runs watched by edgewatch, then compared.

Gilmer et al. 2022 (A Loss Curvature Perspective on Training Instability in Deep Learning,
https://arxiv.org/abs/2110.04369) find that runs which train well at a large learning rate let
the early trajectory either avoid the sharp regions of the loss or navigate out of them into
flatter regions that tolerate the step, and that learning-rate warmup and normalization layers
are two ways of getting there. What decides is the stability ratio r = η·λ_1/c, for gradient
descent c = 2: r = η·λ_1/2, where λ_1 is the top Hessian eigenvalue. At r = 1 (the edge of
stability) a step along the top eigendirection lands as far on the other side as it started;
beyond it the step overshoots, and at r ≫ 1 the loss grows geometrically unless the network
escapes to a flatter region quickly.

Here one ReLU MLP (64-128-128-128-128-10, He-normal initialization) learns scikit-learn's digits
by full-batch gradient descent on the square loss (as in Cohen et al. 2021) at one learning rate
η = 0.1 (2/η = 20), three ways, each with an ``edgewatch.Monitor`` attached (curvature on a fixed
probe of 256 training examples, every 16 steps and densely in the first 100; a JSONL run
directory per run). What the Monitor reports (seeds 0, 1, 2):

- ``no-warmup``, no normalization. He initialization puts the network where λ_1 ≈ 220-270, so
  r ≈ 11-13 before the first step. The first step makes things worse: at step 1 λ_1 ≈ 1100-1600
  and r ≈ 55-80 (``eos_reached``, severity warning: already past the edge). The loss multiplies
  at each step (``loss_spike``, ``grad_spike``, ``output_logit_divergence``) and is non-finite at
  step 5 (``nonfinite``), which stops the run (``stop_on=["nonfinite"]``).
- ``warmup``: the same network, η raised linearly over the first 200 steps. It avoids the sharp
  region: r ≈ 0.05-0.07 at step 1 and rises with η_t until ``eos_reached`` at step 25-40. From
  there it stays near the edge (between ≈ 0.6 and 1.5 on the probe) while η keeps rising: λ_1
  is pushed down from ≈ 230 to about 2/η = 20 through small catapults (a brief jump of the loss,
  then a lower λ_1), the edge of stability of Cohen et al. 2021 rather than a divergence. Final
  loss ≈ 0.043 after 500 steps.
- ``batchnorm``: BatchNorm before every ReLU, no warmup. λ_1 at initialization is 4-6× lower, so r
  starts just above the edge (1.6-2.2 at step 1, ``eos_reached`` as a warning). The network
  navigates out: for 2-3 steps the loss rises (≈ 3 → 5-8) while r falls below 1, a catapult
  (Lewkowycz et al. 2020); then r stays at 0.7-0.85 and the run reaches the lowest loss of the
  three (≈ 0.034).

Then ``edgewatch.cli.compare`` overlays the runs in one figure (loss; λ_1 against 2/η; r; gradient
norm) with an HTML page beside it, and the script prints the comparison table (steps, first
``eos_reached``, max r, final loss, events) and, last, where the figure is. About 20 s on 2 CPU
cores (most of it the curvature probes: 47 per run, ~15 Hessian-vector products each).

r is measured on the 256-example probe, whose λ_1 runs ~10-20% above the full batch's: hence r a
little above 1 at the edge. ``--probe-size 1500`` measures the full-batch Hessian, the one gradient
descent sees (r then settles at 1.0 in the warmup run), at about 2.5× the time.

    python examples/warmup_normalization.py [--out runs/demo] [--steps 500] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import edgewatch as ew
from edgewatch.loggers import read_jsonl


@dataclass(frozen=True)
class Setting:
    name: str  # the run directory's name under --out
    label: str  # the label in the table and the figure ({warmup}: the warmup steps)
    warmup: bool  # η raised linearly over --warmup steps (else the full η from the first step)
    batchnorm: bool  # BatchNorm1d after every hidden linear layer


SETTINGS = (
    Setting("no-warmup", "no warmup, no norm", warmup=False, batchnorm=False),
    Setting("warmup", "warmup {warmup} steps", warmup=True, batchnorm=False),
    Setting("batchnorm", "BatchNorm, no warmup", warmup=False, batchnorm=True),
)
EARLY = 100  # "early in training": the steps over which the progress line reports max r


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"),
                        help="directory for the three run directories and the figure (default runs/demo)")
    parser.add_argument("--steps", type=int, default=500, help="gradient descent steps per run (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="initialization seed (default 0)")
    parser.add_argument("--lr", type=float, default=0.1, help="the learning rate η of all three runs (default 0.1)")
    parser.add_argument("--warmup", type=int, default=200, help="warmup steps of the warmup run (default 200)")
    parser.add_argument("--probe-size", type=int, default=256, help="training examples curvature is measured on")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.probe_size < 1 or not args.lr > 0:
        parser.error("--steps, --warmup, --probe-size and --lr must be positive")
    return args


def load_data(n_train: int = 1500) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Digits (8×8 images, 10 classes): a fixed train/test split, pixels standardized on the train part."""
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise SystemExit("the demo needs scikit-learn: pip install 'edgewatch[dev]'") from None
    digits = load_digits()
    inputs = torch.tensor(digits.data, dtype=torch.float32)
    targets = torch.tensor(digits.target)
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(1234))
    inputs, targets = inputs[order], targets[order]
    mean, std = inputs[:n_train].mean(0), inputs[:n_train].std(0) + 1e-6
    inputs = (inputs - mean) / std
    return (inputs[:n_train], targets[:n_train]), (inputs[n_train:], targets[n_train:])


def build_model(batchnorm: bool, width: int = 128, depth: int = 4) -> nn.Sequential:
    """ReLU MLP with He-normal weights and zero biases; optionally BatchNorm before each ReLU."""
    layers: list[nn.Module] = []
    fan_in = 64
    for _ in range(depth):
        linear = nn.Linear(fan_in, width)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.BatchNorm1d(width)] if batchnorm else [linear]
        layers.append(nn.ReLU())
        fan_in = width
    head = nn.Linear(fan_in, 10)
    nn.init.kaiming_normal_(head.weight, nonlinearity="linear")
    nn.init.zeros_(head.bias)
    return nn.Sequential(*layers, head)


def mse_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Square loss against one-hot targets, halved and summed over classes, averaged over examples."""
    inputs, targets = batch
    return 0.5 * (model(inputs) - F.one_hot(targets, 10).float()).pow(2).sum(-1).mean()


def fresh_run_dir(path: Path) -> Path:
    """``path`` emptied of a previous demo run (the JSONL logger would otherwise resume it)."""
    if path.exists():
        own = {"meta.json", "metrics.jsonl", "events.jsonl", ".meta.json.tmp"}
        strangers = [p.name for p in path.iterdir() if p.name not in own]
        if strangers:
            raise SystemExit(f"{path} exists and holds files that are not a run's ({', '.join(strangers[:3])}); "
                             "pass another --out")
        shutil.rmtree(path)
    return path


def train(setting: Setting, args: argparse.Namespace, data, run_dir: Path) -> dict:
    """One run with the Monitor attached; returns what the progress line prints."""
    (x_train, y_train), (x_test, y_test) = data
    torch.manual_seed(args.seed)
    model = build_model(setting.batchnorm)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    warmup = args.warmup if setting.warmup else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
    probe = [(x_train[: args.probe_size], y_train[: args.probe_size])]  # fixed for the whole run
    # A dense fixed schedule, to draw the early curvature of a short run: it costs about as much
    # as the training itself here, which the Monitor would warn about; this demo wants it so.
    warnings.filterwarnings("ignore", message="edgewatch: one curvature probe takes")
    monitor = ew.Monitor(model, optimizer, mse_loss, probe=probe, run_dir=run_dir,
                         curvature=ew.Schedule(every=16, dense_until=EARLY, per_decade=10),
                         every=1, stop_on=["nonfinite"])  # every step's loss, for the figure
    batch = (x_train, y_train)  # full batch: gradient descent
    start, stopped = time.perf_counter(), None
    monitor.attach()
    try:
        for _ in range(args.steps):
            optimizer.zero_grad()
            loss = mse_loss(model, batch)
            monitor.observe(loss)
            loss.backward()
            optimizer.step()  # the Monitor measures here
            scheduler.step()
    except ew.StopTraining as stop:
        stopped = stop.event
    finally:
        monitor.close()
    seconds = time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(-1) == y_test).float().mean().item()
    metrics = list(read_jsonl(run_dir / "metrics.jsonl"))
    early = [m["curvature/stability_ratio"] for m in metrics
             if m["step"] <= EARLY and "curvature/stability_ratio" in m]
    return {
        "steps": monitor.step_count,
        "stopped": stopped,
        "final_loss": next((m["loss"] for m in reversed(metrics) if "loss" in m), math.nan),
        "max_early_ratio": max((r for r in early if not math.isnan(r)), default=math.nan),
        "early": min(EARLY, args.steps),
        "first_eos": next((e.step for e in monitor.events if e.kind == "eos_reached"), None),
        "accuracy": accuracy,
        "seconds": seconds,
    }


def progress_line(index: int, label: str, result: dict) -> str:
    """One line per run: how it ended, the largest early r, the first eos_reached, loss, accuracy, time."""
    stopped = result["stopped"]
    end = f"stopped at step {stopped.step} ({stopped.kind})" if stopped else f"trained {result['steps']} steps"
    accuracy = "-" if stopped else f"{result['accuracy']:.1%}"
    eos = "-" if result["first_eos"] is None else result["first_eos"]
    return (f"[{index}/{len(SETTINGS)}] {label:<21} {end:<30} "
            f"max r over steps 1-{result['early']}: {result['max_early_ratio']:<9.3g} first eos_reached: {eos!s:<4} "
            f"loss {result['final_loss']:<8.3g} test acc {accuracy:<6} {result['seconds']:5.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = load_data()
    print(f"digits: {len(data[0][0])} training / {len(data[1][0])} test examples; ReLU MLP 64-128-128-128-128-10, "
          f"full-batch gradient descent on the square loss, η = {args.lr:g} (2/η = {2 / args.lr:g}), "
          f"{args.steps} steps; curvature on {min(args.probe_size, len(data[0][0]))} training examples")
    labels = [setting.label.format(warmup=args.warmup) for setting in SETTINGS]
    run_dirs = []
    for index, (setting, label) in enumerate(zip(SETTINGS, labels), start=1):
        run_dir = fresh_run_dir(args.out / setting.name)
        if sys.stdout.isatty():  # overwritten by the progress line
            print(f"[{index}/{len(SETTINGS)}] {label} ...", end="\r", flush=True)
        result = train(setting, args, data, run_dir)
        print(progress_line(index, label, result), flush=True)
        run_dirs.append(run_dir)

    from edgewatch.extras import MissingExtraError
    from edgewatch.cli.compare import compare, compare_text
    from edgewatch.cli.report import summarize
    from edgewatch.cli.rundir import load_run

    figure = args.out / "compare.png"
    try:
        rows = compare(run_dirs, out=figure, labels=labels)
    except MissingExtraError as error:  # no matplotlib: the table without the figure
        rows = [{**summarize(load_run(run_dir)), "label": label} for run_dir, label in zip(run_dirs, labels)]
        figure = None
        print(f"\nno figure: {error}")
    print()
    print(compare_text(rows))
    print(f"\nrun directories: {', '.join(str(run_dir) for run_dir in run_dirs)}")
    if figure is not None:
        print(f"HTML page: {figure.with_suffix('.html')}")
        print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
