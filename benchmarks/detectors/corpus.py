"""The labelled corpus: short CPU runs that the benchmark generates, each with the events it must raise.

Every run trains a small model with an ``edgewatch.Monitor`` attached (fixed curvature schedule,
cheap metrics every step, no run directory) and returns its events, a few recorded series and its
labels. A label is an event kind and the step it starts at, taken from the run's definition
(the step a bad batch is fed, η·λ_0 > 2 at step 0) or from a measurement stated in
:class:`Label` (e.g. the first probe where the measured η·λ_1 reaches 2), never from a detector.
``allowed`` are kinds the run's definition admits without requiring them (they count neither
way); any other event is a false positive, and on a healthy run so is every warning.

Data: scikit-learn's digits (standardized, as the science benchmarks use them) and byte-level text
from the Python standard library's source (``benchmarks/perf/workloads.py``). Nothing is downloaded.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import edgewatch as ew

sys.path.insert(0, str(Path(__file__).parents[1] / "perf"))
from workloads import CausalTransformer, _stdlib_tokens, _windows  # noqa: E402

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[nn.Module, Batch], Tensor]


@dataclass
class Label:
    """An event kind the run must raise, from ``onset`` on; ``source`` says where the onset comes from."""

    kind: str
    onset: int
    source: str


@dataclass
class Spec:
    """One run of the corpus: how to train it and what it is."""

    name: str
    description: str
    healthy: bool
    build: Callable[[bool], Trained]
    allowed: tuple[str, ...] = ()
    why_allowed: str = ""


@dataclass
class Trained:
    """What a run leaves behind: the Monitor's events and series, and the labels."""

    events: list[ew.Event]
    series: dict[str, tuple[list[int], list[float]]]
    labels: list[Label]
    steps: int
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


# -- data and models ----------------------------------------------------------------------------
_DIGITS: Batch | None = None


def digits() -> Batch:
    """All 1,797 digits in a fixed shuffled order, pixels standardized."""
    global _DIGITS
    if _DIGITS is None:
        from sklearn.datasets import load_digits

        data = load_digits()
        order = torch.randperm(len(data.target), generator=torch.Generator().manual_seed(1234))
        x = torch.tensor(data.data, dtype=torch.float32)[order]
        _DIGITS = ((x - x.mean(0)) / (x.std(0) + 1e-6), torch.tensor(data.target)[order])
    return _DIGITS


def minibatch(step: int, rows: int = 64, images: bool = False) -> Batch:
    """The training minibatch of ``step`` (seeded: every optimizer sees the same batches)."""
    x, y = digits()
    index = torch.randint(0, len(y), (rows,), generator=torch.Generator().manual_seed(10_000 + step))
    return (x[index].view(-1, 1, 8, 8) if images else x[index]), y[index]


def first(n: int, images: bool = False) -> Batch:
    x, y = digits()
    return (x[:n].view(-1, 1, 8, 8) if images else x[:n]), y[:n]


def mlp(widths: tuple[int, ...] = (64, 32, 32, 10), seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def cnn_bn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 16, 10),
    )


class TwoLayer(nn.Module):
    """f(x) = V relu(U x / √d) / √n, U, V ~ N(0, 1): Lewkowycz et al.'s NTK parametrization, where
    η·λ_0 in (2, 4) catapults (as in benchmarks/science/catapult.py)."""

    def __init__(self, width: int, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.hidden = nn.Parameter(torch.randn(width, 64, generator=generator))
        self.readout = nn.Parameter(torch.randn(10, width, generator=generator))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x @ self.hidden.T / 8.0) @ self.readout.T / math.sqrt(self.readout.shape[1])


def cross_entropy(model: nn.Module, batch: Batch) -> Tensor:
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def mse(model: nn.Module, batch: Batch) -> Tensor:
    """½‖f(x) − e_y‖², mean over examples (Cohen et al. 2021's square loss)."""
    x, y = batch
    out = model(x)
    return 0.5 * (out - F.one_hot(y, out.shape[-1]).to(out.dtype)).pow(2).sum(-1).mean()


def sharpness(model: nn.Module, loss_fn: LossFn, batch: Batch) -> float:
    """λ_1 at the current parameters, solved tightly (for setting η = c/λ_0 in a run's definition)."""
    from edgewatch.curvature import HessianOperator, lanczos

    return lanczos(HessianOperator(model, loss_fn, [batch]), k=1, tol=1e-5).eigenvalues[0].item()


# -- the watched loop ---------------------------------------------------------------------------
SERIES = ("loss", "grad/norm", "curvature/lambda_max", "curvature/stability_ratio", "curvature/probe_loss",
          "attn/max_logit", "attn/entropy_mean", "attn/entropy_min", "logits/log_z_max", "adam/epsilon_fraction")


def schedule(every: int) -> ew.Schedule:
    """Probes at steps 1, 2, 4 (where the budget schedule also probes early: Adam's first
    preconditioners are seen) and every ``every`` steps from 0."""
    return ew.Schedule(every=every, dense_until=6, per_decade=3)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn, probe: Batch,
          batch_at: Callable[[int], Batch], steps: int, curvature: int | ew.Schedule, *,
          lr_at: Callable[[int], float] | None = None, after_step: Callable[[int], None] | None = None) -> Trained:
    """``steps`` optimizer steps with the Monitor attached; θ_0 measured first; stops after a non-finite loss."""
    with warnings.catch_warnings():  # dense probes on tiny models cost many steps each: known, and wanted here
        warnings.filterwarnings("ignore", message="edgewatch: one curvature probe takes")
        if isinstance(curvature, int):
            curvature = schedule(curvature)
        monitor = ew.Monitor(model, optimizer, loss_fn, probe=[probe], run_dir=False, curvature=curvature, every=1)
        return _loop(monitor, model, optimizer, loss_fn, batch_at, steps, lr_at, after_step)


def _loop(monitor: ew.Monitor, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
          batch_at: Callable[[int], Batch], steps: int, lr_at: Callable[[int], float] | None,
          after_step: Callable[[int], None] | None) -> Trained:
    monitor.measure()  # θ_0: a fixed schedule does not measure it by itself
    monitor.attach()
    started = time.perf_counter()
    done = 0
    for step in range(1, steps + 1):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch_at(step))
        loss.backward()
        monitor.observe(loss)
        optimizer.step()
        done = step
        if after_step is not None:
            after_step(step)
        if not math.isfinite(loss.item()):
            break  # the nonfinite event is raised; a NaN model has nothing more to say
    monitor.close()
    series = {}
    for name in SERIES:
        try:
            recorded = monitor.history[name]
        except KeyError:
            continue
        series[name] = (list(recorded.steps), [float(v) for v in recorded.values])
    return Trained(list(monitor.events), series, [], done, time.perf_counter() - started)


def warmup(lr: float, steps: int) -> Callable[[int], float]:
    return lambda step: lr * min(1.0, step / steps)


def first_step(trained: Trained, name: str, predicate: Callable[[float], bool]) -> int | None:
    steps, values = trained.series.get(name, ([], []))
    return next((s for s, v in zip(steps, values) if predicate(v)), None)


def jumped(trained: Trained, name: str, step: int, factor: float = 3.0) -> bool:
    """Whether ``name`` at ``step`` is ≥ ``factor`` × its median over the 100 steps before (a measurement)."""
    steps, values = trained.series.get(name, ([], []))
    before = sorted(v for s, v in zip(steps, values) if step - 100 <= s < step)
    now = dict(zip(steps, values)).get(step)
    return bool(before) and now is not None and now >= factor * before[len(before) // 2]


def label(trained: Trained, kind: str, onset: int | None, source: str) -> None:
    """Adds the label; a measured onset that never happened is a broken run, not a detector miss."""
    if onset is None:
        trained.info.setdefault("broken_labels", []).append(f"{kind}: {source} never happened")
        return
    trained.labels.append(Label(kind, onset, source))


SHARPENED, SHARPENING, LASTING = 1.25, 1.1, 40


def sharpening_label(trained: Trained) -> str:
    """Progressive sharpening as the benchmark measures it, on the probes before the edge (before the
    first probe with r ≥ 0.95 at step 0 or from step 50 on, when Adam's preconditioner has settled).

    "labelled" (added) when λ_1 stays ≥ ``SHARPENING`` × its lowest value before for 3 or more
    probes in a row spanning ≥ ``LASTING`` steps and reaches ``SHARPENED`` × it among them; the onset is the probe of that lowest
    value, where the rise starts. "allowed" when λ_1 went above ``SHARPENING`` × its minimum without
    such a lasting rise (too little to require an event, too much to forbid one); "none" otherwise.
    """
    steps, values = trained.series.get("curvature/lambda_max", ([], []))
    ratio = dict(zip(*trained.series.get("curvature/stability_ratio", ([], []))))
    low, low_step, above, rose = math.inf, 0, [], False
    for step, value in zip(steps, values):
        if ratio.get(step, 0.0) >= 0.95 and (step == 0 or step >= 50):
            break
        if not math.isfinite(value) or value <= 0:
            continue
        if value >= SHARPENING * low:
            rose = True
            above.append((step, value))
            if (len(above) >= 3 and above[-1][0] - above[0][0] >= LASTING
                    and max(v for _, v in above) >= SHARPENED * low):
                label(trained, "progressive_sharpening", low_step,
                      f"the lowest measured λ_1 before ≥ 3 probes over ≥ {LASTING} steps at ≥ {SHARPENING}× it, reaching {SHARPENED}×")
                return "labelled"
            continue
        above = []
        if value < low:
            low, low_step = value, step
    return "allowed" if rose else "none"


# -- scale ---------------------------------------------------------------------------------------
def size(smoke: bool, full: int, small: int = 12) -> int:
    return small if smoke else full


def every(smoke: bool, full: int) -> int:
    return 4 if smoke else full


# -- healthy runs --------------------------------------------------------------------------------
def sgd_mlp(smoke: bool) -> Trained:
    model = mlp()
    return train(model, torch.optim.SGD(model.parameters(), lr=0.1), cross_entropy, first(256), minibatch,
                 size(smoke, 600), every(smoke, 10))


def momentum_mlp(smoke: bool) -> Trained:
    model = mlp()
    return train(model, torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9), cross_entropy, first(256),
                 minibatch, size(smoke, 400), every(smoke, 10))


def adam_mlp(smoke: bool) -> Trained:
    model = mlp()
    return train(model, torch.optim.Adam(model.parameters(), lr=1e-3), cross_entropy, first(256), minibatch,
                 size(smoke, 400), every(smoke, 10))


def adamw_mlp_warmup(smoke: bool) -> Trained:
    model = mlp((64, 64, 64, 10))
    return train(model, torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01), cross_entropy, first(256),
                 minibatch, size(smoke, 400), every(smoke, 10), lr_at=warmup(3e-3, 50))


def cnn_bn_momentum_warmup(smoke: bool) -> Trained:
    model = cnn_bn()
    return train(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), cross_entropy,
                 first(128, images=True), lambda s: minibatch(s, images=True), size(smoke, 200), every(smoke, 10),
                 lr_at=warmup(0.05, 30))


def adam_cnn_bn(smoke: bool) -> Trained:
    model = cnn_bn()
    return train(model, torch.optim.Adam(model.parameters(), lr=1e-3), cross_entropy, first(128, images=True),
                 lambda s: minibatch(s, images=True), size(smoke, 200), every(smoke, 10))


TOKENS: Tensor | None = None


def text_batch(step: int, rows: int = 8, seq: int = 32) -> Batch:
    global TOKENS
    if TOKENS is None:
        TOKENS = _stdlib_tokens(200_000)
    return _windows(TOKENS, rows, seq, seed=20_000 + step)


def transformer(seed: int = 0) -> CausalTransformer:
    torch.manual_seed(seed)
    return CausalTransformer(d=32, layers=1, heads=2, seq=32)


def transformer_adamw_warmup(smoke: bool) -> Trained:
    model = transformer()
    return train(model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01), cross_entropy,
                 text_batch(0), text_batch, size(smoke, 200), every(smoke, 10), lr_at=warmup(1e-3, 30))


FULL_BATCH = 512


def gd_below_edge(smoke: bool) -> Trained:
    model, batch = mlp(), first(FULL_BATCH)
    lr = 0.4 / sharpness(model, mse, batch)  # 2/η is 5 × λ_0
    trained = train(model, torch.optim.SGD(model.parameters(), lr=lr), mse, batch, lambda s: batch,
                    size(smoke, 400), every(smoke, 10))
    trained.info["eta"] = lr
    return trained


# -- eventful runs -------------------------------------------------------------------------------
def gd_eos(probe_every: int) -> Callable[[bool], Trained]:
    """Full-batch GD at η = 1.5/λ_0: λ_1 rises (progressive sharpening) to 2/η, then hovers (Cohen
    et al. 2021); the same run probed at several densities, whose verdicts must agree."""

    def run(smoke: bool) -> Trained:
        model, batch = mlp(), first(FULL_BATCH)
        lam0 = sharpness(model, mse, batch)
        lr = 1.5 / lam0
        trained = train(model, torch.optim.SGD(model.parameters(), lr=lr), mse, batch, lambda s: batch,
                        size(smoke, 600), every(smoke, probe_every))
        trained.info.update(eta=lr, lambda0=lam0)
        label(trained, "eos_reached", first_step(trained, "curvature/lambda_max", lambda v: lr * v >= 2.0),
              "first probe with measured η·λ_1 ≥ 2")
        return trained

    return run


def adam_eos(smoke: bool) -> Trained:
    """Full-batch Adam (MSE, η = 4e-3): the preconditioned sharpness rises to 38/η (Cohen et al. 2022)."""
    model, batch = mlp((64, 64, 64, 10)), first(FULL_BATCH)
    trained = train(model, torch.optim.Adam(model.parameters(), lr=4e-3), mse, batch, lambda s: batch,
                    size(smoke, 600), every(smoke, 10))
    onset = _adam_edge_onset(trained)
    label(trained, "eos_reached", onset, "first probe at step ≥ 50 with measured ratio r ≥ 1")
    return trained


def _adam_edge_onset(trained: Trained, settled: int = 50) -> int | None:
    """The edge Adam reaches, not its first steps: r (measured) ≥ 1 at a probe at step ≥ ``settled``,
    when the bias-corrected second moment averages at least 50 gradients (β2 = 0.999)."""
    steps, values = trained.series.get("curvature/stability_ratio", ([], []))
    return next((s for s, v in zip(steps, values) if s >= settled and v >= 1.0), None)


CATAPULT_WIDTH = 1024


def catapult(scale: float) -> Callable[[bool], Trained]:
    def run(smoke: bool) -> Trained:
        model, batch = TwoLayer(256 if smoke else CATAPULT_WIDTH), first(64 if smoke else 256)
        lam0 = sharpness(model, mse, batch)
        lr = scale / lam0
        trained = train(model, torch.optim.SGD(model.parameters(), lr=lr), mse, batch, lambda s: batch,
                        size(smoke, 100), every(smoke, 5) if not smoke else 2)
        trained.info.update(eta=lr, lambda0=lam0)
        initial = trained.series["loss"][1][0]
        label(trained, "catapult", first_step(trained, "loss", lambda v: v >= 1.5 * initial),
              "first step whose full-batch loss is ≥ 1.5× the first")
        label(trained, "eos_reached", 0, "definition: η·λ_0 > 2 at step 0")
        return trained

    return run


def diverging(smoke: bool) -> Trained:
    model, batch = TwoLayer(256 if smoke else CATAPULT_WIDTH), first(64 if smoke else 256)
    lr = 6.0 / sharpness(model, mse, batch)
    trained = train(model, torch.optim.SGD(model.parameters(), lr=lr), mse, batch, lambda s: batch,
                    size(smoke, 100), every(smoke, 5) if not smoke else 2)
    label(trained, "eos_reached", 0, "definition: η·λ_0 = 6 > 2 at step 0")
    label(trained, "nonfinite", first_step(trained, "loss", lambda v: not math.isfinite(v)),
          "first step with a non-finite loss")
    return trained


BAD_STEP = 300


def bad_batch(optimizer_name: str) -> Callable[[bool], Trained]:
    """One minibatch with shuffled labels at ``BAD_STEP``: its loss spikes, the run is not unstable."""

    def run(smoke: bool) -> Trained:
        model = mlp()
        bad = size(smoke, BAD_STEP, 30)

        def batch_at(step: int) -> Batch:
            x, y = minibatch(step)
            return (x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(5))]) if step == bad else (x, y)

        optimizer = (torch.optim.SGD(model.parameters(), lr=0.1) if optimizer_name == "sgd"
                     else torch.optim.Adam(model.parameters(), lr=1e-3))
        trained = train(model, optimizer, cross_entropy, first(256), batch_at, size(smoke, 450, 40), every(smoke, 10))
        label(trained, "loss_spike", bad, "definition: the shuffled-label batch is fed at this step")
        label(trained, "grad_spike", bad if jumped(trained, "grad/norm", bad) else None,
              "the bad step's measured gradient norm is ≥ 3× the median of the 100 steps before")
        return trained

    return run


def lr_jump(smoke: bool) -> Trained:
    """Minibatch SGD whose η jumps 30× at ``BAD_STEP``: a genuine instability, every batch after it."""
    model = mlp()
    jump = size(smoke, BAD_STEP, 30)
    trained = train(model, torch.optim.SGD(model.parameters(), lr=0.1), cross_entropy, first(256), minibatch,
                    size(smoke, 450, 40), every(smoke, 10), lr_at=lambda s: 0.1 if s < jump else 3.0)
    label(trained, "loss_spike", jump, "definition: η jumps from 0.1 to 3 at this step")
    label(trained, "eos_reached", jump, "definition: η jumps from 0.1 to 3 at this step")
    return trained


def attention_logits(smoke: bool) -> Trained:
    """A transformer without qk-layernorm at a large Adam η (Wortsman et al. 2023): attention logits grow."""
    model = transformer()
    trained = train(model, torch.optim.Adam(model.parameters(), lr=3e-2), cross_entropy, text_batch(0), text_batch,
                    size(smoke, 200), every(smoke, 10))
    steps, values = trained.series.get("attn/max_logit", ([], []))
    start = values[0] if values else math.nan
    label(trained, "attention_logit_growth", first_step(trained, "attn/max_logit", lambda v: v >= 10 * start),
          "first probe with measured max attention logit ≥ 10× its value at step 0")
    trained.info["attn_max_logit_0"] = start
    return trained


DRIFT_STEP = 300


def output_logit_drift(smoke: bool) -> Trained:
    """Minibatch SGD whose output bias is pushed up by 0.5 per step from ``DRIFT_STEP`` on: every logit
    shifts alike, which the softmax loss cannot see, so log Z drifts (the output-logit divergence that
    z-loss prevents, Wortsman et al. 2023)."""
    model = mlp()
    start = size(smoke, DRIFT_STEP, 20)

    def drift(step: int) -> None:
        if step >= start:
            with torch.no_grad():
                model[-1].bias += 0.5

    trained = train(model, torch.optim.SGD(model.parameters(), lr=0.1), cross_entropy, first(256), minibatch,
                    size(smoke, 450, 40), every(smoke, 10), after_step=drift)
    label(trained, "output_logit_divergence", start, "definition: the drift starts at this step")
    return trained


def adam_epsilon(smoke: bool) -> Trained:
    """Adam with ε = 1 where gradient coordinates are ~1e-2: ε dominates √v̂ from the first step."""
    model = mlp()
    trained = train(model, torch.optim.Adam(model.parameters(), lr=1e-2, eps=1.0), cross_entropy, first(256),
                    minibatch, size(smoke, 200), every(smoke, 10))
    label(trained, "adam_epsilon_dominates", 1, "definition: ε = 1 from step 1 (measured ε share at step 1 in info)")
    steps, values = trained.series.get("adam/epsilon_fraction", ([], []))
    trained.info["epsilon_fraction_1"] = values[0] if values else math.nan
    return trained


NAN_STEP = 150


def nan_batch(smoke: bool) -> Trained:
    model = mlp()
    at = size(smoke, NAN_STEP, 20)

    def batch_at(step: int) -> Batch:
        x, y = minibatch(step)
        if step == at:
            x = x.clone()
            x[0, 0] = math.nan
        return x, y

    trained = train(model, torch.optim.SGD(model.parameters(), lr=0.1), cross_entropy, first(256), batch_at,
                    size(smoke, 200, 30), every(smoke, 10))
    label(trained, "nonfinite", at, "definition: a NaN input is fed at this step")
    return trained


GD_NOTE = "full-batch GD sharpens progressively below the edge (Cohen et al. 2021)"

CORPUS: tuple[Spec, ...] = (
    Spec("sgd_mlp", "MLP 64-32-32-10 tanh, CE, minibatch 64, SGD η=0.1, 600 steps", True, sgd_mlp),
    Spec("momentum_mlp", "MLP, CE, minibatch, SGD η=0.02 β=0.9, 400 steps", True, momentum_mlp),
    Spec("adam_mlp", "MLP, CE, minibatch, Adam η=1e-3, 400 steps", True, adam_mlp),
    Spec("adamw_mlp_warmup", "MLP 64-64-64-10, CE, minibatch, AdamW η=3e-3 (50 warm-up steps), 400 steps", True,
         adamw_mlp_warmup),
    Spec("cnn_bn_momentum_warmup", "CNN with BatchNorm, CE, minibatch, SGD η=0.05 β=0.9 (30 warm-up), 200 steps",
         True, cnn_bn_momentum_warmup),
    Spec("adam_cnn_bn", "CNN with BatchNorm, CE, minibatch, Adam η=1e-3, 200 steps", True, adam_cnn_bn),
    Spec("transformer_adamw_warmup", "causal transformer d=32, 1 layer, bytes, AdamW η=1e-3 (30 warm-up), 200 steps",
         True, transformer_adamw_warmup),
    Spec("gd_below_edge", "MLP, MSE, full-batch GD at η = 0.4/λ_0, 400 steps", True, gd_below_edge),
    *(Spec(f"gd_eos_every{k}", f"MLP, MSE, full-batch GD at η = 1.5/λ_0, 600 steps, curvature every {k} steps", False,
           gd_eos(k), ("eos_sustained", "grad_spike", "loss_spike", "catapult"),
           "GD at the edge stays there; crossing it, the gradient grows 30× along the top direction and the loss "
           "2× until GD self-stabilizes (a real spike, and catapult-like)") for k in (5, 10, 20)),
    Spec("adam_eos", "MLP 64-64-64-10, MSE, full-batch Adam η=4e-3, 600 steps", False, adam_eos,
         ("eos_sustained",), "Adam at the edge stays there"),
    *(Spec(f"catapult_{s:g}", f"two-layer ReLU width {CATAPULT_WIDTH} (NTK), MSE, full-batch GD at η·λ_0 = {s:g}, 100 steps",
           False, catapult(s), ("progressive_sharpening", "eos_sustained", "output_logit_divergence"),
           "the rise is the outputs blowing up along the top direction; after it GD may sharpen again")
      for s in (2.5, 3.0, 3.5)),
    Spec("diverging", f"two-layer ReLU width {CATAPULT_WIDTH}, MSE, full-batch GD at η·λ_0 = 6", False, diverging,
         ("loss_spike", "grad_spike", "output_logit_divergence"),
         "a diverging run's loss, gradient and logits blow up before they overflow"),
    Spec("bad_batch_sgd", f"MLP, CE, minibatch SGD η=0.1; batch {BAD_STEP} has shuffled labels", False,
         bad_batch("sgd")),
    Spec("bad_batch_adam", f"MLP, CE, minibatch Adam η=1e-3, the same batches; batch {BAD_STEP} shuffled", False,
         bad_batch("adam")),
    Spec("lr_jump", f"MLP, CE, minibatch SGD, η 0.1 → 3 at step {BAD_STEP}", False, lr_jump,
         ("grad_spike", "output_logit_divergence", "eos_sustained", "catapult"),
         "an unstable run's gradient and logits grow; it may catapult to a flatter region"),
    Spec("attention_logits", "causal transformer without qk-layernorm, Adam η=3e-2, 200 steps", False,
         attention_logits,
         ("eos_reached", "eos_sustained", "loss_spike", "grad_spike", "attention_entropy_collapse",
          "output_logit_divergence", "progressive_sharpening"),
         "a large-η transformer is at the edge, spiky, its attention collapses, and Adam's first steps raise λ_1 5×"),
    Spec("output_logit_drift", f"MLP, CE, minibatch SGD; output bias +0.5 per step from step {DRIFT_STEP}", False,
         output_logit_drift),
    Spec("adam_epsilon", "MLP, CE, minibatch Adam η=1e-2, ε=1", False, adam_epsilon),
    Spec("nan_batch", f"MLP, CE, minibatch SGD; a NaN input at step {NAN_STEP}", False, nan_batch),
)
