r"""Finite-difference HVPs: how accurate they are, and what they cost against double backward.

``HessianOperator(model, loss_fn, probe, method="finite_difference")`` needs gradients only: it
works where double backward does not (fused attention kernels, FSDP2, activation checkpointing).
The scheme, as ``edgewatch/curvature/hvp.py`` implements it at the time of the run below: central
differences of the probe gradient g = ∇L along v,

.. math::
    D_h v = \frac{g(θ + hv) - g(θ - hv)}{2h} = Hv + \frac{h^2}{6}\nabla^4 L(θ)[v, v, v, \cdot]
            + O(h^4) + O\!\left(\frac{\mathrm{eps}\,G}{h}\right),

(G the scale of one gradient's roundings) combined by Richardson extrapolation into
:math:`R_h v = (4 D_h v - D_{2h} v)/3 = Hv + O(h^4) + O(\mathrm{eps}\,G/h)`: four gradients per
product, at θ ± hv and θ ± 2hv, with :math:`h = \tfrac12 \mathrm{eps}^{1/3}(1 + \|θ\|/\sqrt{n})/\|v\|`
(so :math:`\|hv\|` = 2.6e-3 to 3.3e-3 in float32 on these models). An operator's first product also estimates
the products' relative error, ``op.fd_error`` = the larger over u = v and u = Hv/‖Hv‖ of
:math:`\|R_{2h}u - R_h u\| / \|R_h u\|` (sixteen gradients), and ``lanczos`` adds at
least :math:`2\,` ``fd_error`` :math:`\max|θ|` to every residual it reports. The script does not
hard-code any of this: it counts the ``loss_fn`` calls per product (the ``losses/HVP`` and ``1st
product`` columns) and reads the step from ``finite_difference_step`` at run time.

Where finite differences cannot work: a ReLU (or a max-pool) makes the gradient jump across a kink.
A difference whose two points straddle kinks sees those jumps divided by 2h; the share of units whose
kink lies within the step grows with h, so their sum is O(1) whatever h and whatever the precision
(float64 does not cure it), while double backward returns the Hessian of the smooth piece θ lies on.

Two parts, one table each, JSON in ``<out>/finite_difference.json``:

1. **Accuracy** on four float32 models at initialization (seed 0), one probe batch each:
   ``mlp``, workloads.py's 64-128-128-10 tanh MLP on 512 scikit-learn digits (26,122 parameters);
   ``cnn_bn_relu``, conv 1→8→16 (3x3, each followed by BatchNorm2d and ReLU, then a 2x2 max-pool),
   linear 256→32→10 on 128 digits (9,850; the kinks above); ``cnn_bn_gelu``, the same with GELU
   and average pooling (smooth); ``transformer``, a 2-layer pre-LayerNorm causal transformer
   (d=64, 4 heads, 137,216 parameters) calling ``F.scaled_dot_product_attention`` with no kernel
   pinned (workloads.py's transformer with ``pin_math=False``; the other benchmarks pin the math
   kernel), on 8 x 64 bytes of the standard
   library's source. Truth: ``lanczos(k=5, tol=1e-10)`` by double backward on a float64 copy.
   Under test: ``lanczos(k=5, tol=1e-6, max_hvps=300)`` by finite differences in float32 (the
   model itself), in bfloat16 (a bfloat16 copy and ``dtype=torch.bfloat16``), in float64 (to tell
   truncation from rounding), and float32 double backward (float32's own floor). Per row: relative
   error of λ_1 and the largest over the top 5, ``op.fd_error``, the reported residual of λ_1
   relative to it and whether the true error lies within it, ``converged``, HVPs. The issue's
   target, λ_1 relative error <= 1e-4 in float32, is judged per model: "met" or "MISSED".
2. **Cost** on the transformer (8 rows) at T = 64 and 256: each method in its own forked process
   (a fresh address space, without importing torch again), ``HessianOperator(method=...)`` with
   the operator's defaults (double backward reuses its gradient graph within a solve and forces
   the math SDPA kernel; finite differences keep the model's kernel). Time per HVP: a ``lanczos``
   solve of 20 products (after a warm-up solve that spent the one-off products: ``hvp_noise``'s two
   and the error-estimating first product), divided by the products it made, the graph build
   included; in units of one gradient (forward + ``loss.backward()`` on the same probe, timed
   interleaved with the solves) under the same kernel as the method's products, and under the
   model's own (fused) kernel. Peak memory: the kernel's resident high-water mark (VmHWM, the
   counter ``ru_maxrss`` reports) reset to the current RSS through ``/proc/self/clear_refs``
   just before the measured call, minus that RSS, after the model, batch and a warm-up have been
   set up and freed heap returned (``malloc_trim``); without the reset the ``ru_maxrss`` delta.
   Why not ``ru_maxrss`` alone: it cannot be reset, so the warm-up's own peak would hide the
   call's; why not ``torch.profiler(profile_memory=True)``: it sees tensor allocations only, not
   what the process holds. The SDPA kernel each product used: the aten op names recorded by
   ``torch.autograd.profiler.profile`` (the legacy interface of torch.profiler: the same op
   events, without importing the compiler stack, ~4 s per process) around one product.

Fairness: one torch thread and one BLAS thread; the same model, batch and float32 for both
methods; medians of 5 repeats, each a gradient under each kernel and a solve, interleaved; times
in process CPU seconds beside wall seconds, and the CPU share of each timed child printed (this
2-core machine is shared: below 1, another process had the core and wall times are inflated; one
thread's CPU time is not).

    python benchmarks/perf/finite_difference.py [--smoke] [--out DIR] [--parts 1,2]

``--smoke``: tiny models, at most 12 HVPs per solve, T = 16 and 32 (about 11 s of CPU; ``make test``).

Final run (``python benchmarks/perf/run_all.py --only finite_difference``, 119 s, 2026-12-07, commit
5994511, alone on the machine: CPU share of the timed children 1.0; smoke 8-11 s):

* **Accuracy in float32, target λ_1 error <= 1e-4**: met on the tanh MLP (4.7e-7), the BatchNorm
  CNN with GELU and average pooling (7.7e-7) and the transformer (4.2e-7); **MISSED on the BatchNorm
  CNN with ReLU and max-pool: 3.0** (λ_1 = 44.2 against 10.985). Largest top-5 error on the smooth
  models 3.4e-6 / 2.7e-4 / 1.2e-3 (the transformer's 5th eigenvalue, 3.2293 against 3.2332, within
  its residual). There ``op.fd_error`` (4.4e-4 to 1.2e-3) overestimates the λ_1 error 500-2,500x,
  and the reported residual (twice it, times λ_1) bounds every error: conservative, never
  optimistic. On the ReLU CNN ``fd_error`` is 1.1 and the residual 2.3 λ_1: the failure is flagged,
  not hidden. Float64 finite differences do not cure it (λ_1 error 7.2e-2, ``fd_error`` 540; 1e-10
  to 1e-12 on the smooth models): the kinks, not the rounding. Float32 double backward: λ_1 within 3e-9 to 5e-8
  everywhere. Cost of a float32 solve: 35-61 HVPs on the smooth models, 10 on the ReLU CNN (it stops
  at its noise floor).
* **bfloat16** (a bfloat16 copy, ``dtype=torch.bfloat16``): a rough λ_1 and nothing else. λ_1 off
  by 2.9e-2 (MLP), 4.2e-2 (GELU CNN), 1.7e-1 (transformer), 3.9e-2 (ReLU CNN, by chance); λ_2..λ_5
  are not found at all (top-5 error ~1: every solve stops after 10 HVPs at its noise floor with
  values near 0). It says so: ``fd_error`` 0.26-0.91, residual 0.6-2.1 λ_1, within which the true
  error lay in every row. Why: bfloat16's eps 7.8e-3 makes each gradient round at ~0.4% and the
  Krylov vectors live in bfloat16 too; the copy's weights also differ from the float32 model's
  by up to 0.2%.
* **converged**: False on every bfloat16 row and on the ReLU CNN, whose products cannot resolve
  λ_1 to 10% (``lanczos`` stops at their noise floor, 5ρ > 0.1, without calling it converged; an
  earlier run of this benchmark found them all marked converged, which is how that rule came to
  be); True on the smooth float32 and float64 rows.
* **Cost on the transformer** (137k parameters, 8 rows): finite differences take 4 gradients per
  product (counted; the operator's first 16), 4.74 / 4.51 gradients of CPU time at T = 64 / 256
  (the rest is the solver's and the operator's overhead); double backward reusing its graph 2.31 /
  3.0 gradients under its math kernel (2.63 / 3.71 of the model's own fused-kernel gradient).
  Finite differences per HVP: **1.71x** double backward's CPU time at T = 64, **1.11x** at T = 256.
  Memory of a 20-product solve: finite differences 26.6 → 54.8 MiB (2.1x for 4x T), double
  backward 47.7 → 269.2 MiB (5.6x): **0.56x and 0.20x** of double backward's. One gradient alone:
  fused kernel 7.9 → 29.5 MiB (3.7x, linear in T), math kernel 9.9 → 74.4 MiB (7.5x, on its way
  to T²). Kernels seen by the profiler: finite differences ran
  ``aten::_scaled_dot_product_flash_attention_for_cpu`` and its backward, double backward
  ``aten::_scaled_dot_product_attention_math``.

References:
    Nocedal & Wright, Numerical Optimization (2nd ed., 2006), section 8.1 (finite differences).
    Richardson 1911, The approximate arithmetical solution by finite differences of physical
    problems, https://doi.org/10.1098/rsta.1911.0009 (the extrapolation).
    Pearlmutter 1994, Fast Exact Multiplication by the Hessian, https://doi.org/10.1162/neco.1994.6.1.147
    Dao et al. 2022, FlashAttention, https://arxiv.org/abs/2205.14135 (attention memory linear in T).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from edgewatch.curvature import HessianOperator, lanczos
from edgewatch.curvature.hvp import finite_difference_step

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # workloads.py and costs.py sit beside this file
    sys.path.insert(0, str(HERE))
from costs import _reset_peak, _status_kib, forked, table  # noqa: E402
from workloads import (  # noqa: E402
    CausalTransformer, _digits, _stdlib_tokens, _windows, build, cross_entropy, loadavg, machine, num_parameters,
    single_thread,
)

NAME = "finite_difference"
DEFAULT_OUT = Path(__file__).parents[1] / "results" / "perf"
TARGET = 1e-4  # the target: relative error of λ_1 in float32
K = 5
TRUTH_TOL = 1e-10  # the float64 double-backward reference solve
FD_TOL = 1e-6  # the solves under test (a tol below their products' noise is met at that noise)
MAX_HVPS = (300, 12)  # per solve (full, smoke)
MODELS = ("mlp", "cnn_bn_relu", "cnn_bn_gelu", "transformer")
# Sizes: (full, smoke).
SIZES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "cnn": ({"channels": (8, 16), "hidden": 32, "rows": 128}, {"channels": (4, 8), "hidden": 16, "rows": 32}),
    "transformer": ({"d": 64, "layers": 2, "heads": 4, "rows": 8, "seq": 64},
                    {"d": 16, "layers": 1, "heads": 2, "rows": 4, "seq": 16}),
}
COST_SEQS = ((64, 256), (16, 32))  # (full, smoke) sequence lengths of the cost part
COST_HVPS = (20, 6)  # products per timed solve (full, smoke)
COST_REPEATS = (5, 1)
COST_METHODS = ("finite_difference", "double_backward")
SHORT = {"finite_difference": "fd", "double_backward": "db"}
Batch = tuple[Tensor, Tensor]


# -- models ---------------------------------------------------------------------------------------
def cnn_bn(c1: int, c2: int, hidden: int, smooth: bool) -> nn.Sequential:
    """conv 1→c1→c2 (3x3, each followed by BatchNorm2d and the activation), a 2x2 pool, linear
    c2·16→hidden→10. ReLU with max-pool (piecewise linear: kinks), or GELU with average pool (smooth)."""
    act: Callable[[], nn.Module] = nn.GELU if smooth else nn.ReLU
    pool = nn.AvgPool2d(2) if smooth else nn.MaxPool2d(2)
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), act(),
        nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), act(), pool,  # (B, c2, 4, 4)
        nn.Flatten(), nn.Linear(c2 * 16, hidden), act(), nn.Linear(hidden, 10),
    )


def transformer(smoke: bool, seq: int | None = None) -> tuple[nn.Module, Batch]:
    size = dict(SIZES["transformer"][1 if smoke else 0])
    seq = seq or size["seq"]
    torch.manual_seed(0)
    # workloads' transformer with attention left to the caller's kernel (not pinned to math)
    model = CausalTransformer(d=size["d"], layers=size["layers"], heads=size["heads"], seq=seq, pin_math=False)
    return model, _windows(_stdlib_tokens(), size["rows"], seq, seed=1)


def problem(name: str, smoke: bool) -> tuple[nn.Module, Batch]:
    """Model (seed 0, float32, at initialization) and its one probe batch."""
    if name == "mlp":
        w = build("mlp", smoke=smoke)
        return w.model, w.batch
    if name == "transformer":
        return transformer(smoke)
    size = SIZES["cnn"][1 if smoke else 0]
    torch.manual_seed(0)
    model = cnn_bn(*size["channels"], size["hidden"], smooth=name.endswith("gelu"))
    x, y = _digits()
    return model, (x[: size["rows"]].view(-1, 1, 8, 8), y[: size["rows"]])


# -- part 1: accuracy -------------------------------------------------------------------------------
def _relative_errors(values: Tensor, truth: Tensor) -> list[float]:
    return [abs(float(a) - float(b)) / abs(float(b)) for a, b in zip(values, truth)]


def solve(model: nn.Module, batch: Batch, method: str, dtype: torch.dtype, tol: float, smoke: bool) -> dict[str, Any]:
    op = HessianOperator(model, cross_entropy, [batch], method=method, dtype=dtype)
    start = time.perf_counter()
    result = lanczos(op, k=K, tol=tol, max_hvps=MAX_HVPS[smoke])
    return {"eigenvalues": result.eigenvalues.tolist(), "residuals": result.residuals.tolist(),
            "converged": bool(result.converged), "solve_hvps": result.num_hvps, "op_hvps": op.num_hvps,
            "fd_error": op.fd_error, "seconds": time.perf_counter() - start}


def accuracy(name: str, smoke: bool) -> dict[str, Any]:
    """λ_1..λ_5 by finite differences (float32 and bfloat16) and by float32 double backward,
    against a float64 double-backward solve at tol 1e-10."""
    model, batch = problem(name, smoke)
    truth = solve(copy.deepcopy(model).double(), batch, "double_backward", torch.float64, TRUTH_TOL, smoke)
    exact = torch.tensor(truth["eigenvalues"], dtype=torch.float64)
    record: dict[str, Any] = {"part": "accuracy", "model": name, "parameters": num_parameters(model), "truth": truth}
    runs = {
        "fd_float32": (model, "finite_difference", torch.float32),
        "db_float32": (model, "double_backward", torch.float32),
        "fd_bfloat16": (copy.deepcopy(model).to(torch.bfloat16), "finite_difference", torch.bfloat16),
        "fd_float64": (copy.deepcopy(model).double(), "finite_difference", torch.float64),
    }
    for label, (m, method, dtype) in runs.items():
        try:
            run = solve(m, batch, method, dtype, FD_TOL, smoke)
        except Exception as error:  # noqa: BLE001 - a failure is a result here, reported in the table
            record[label] = {"error": f"{type(error).__name__}: {error}"[:200]}
            continue
        errors = _relative_errors(torch.tensor(run["eigenvalues"], dtype=torch.float64), exact)
        theta1 = run["eigenvalues"][0]
        run.update({
            "lambda1_error": errors[0], "top5_max_error": max(errors), "errors": errors,
            "residual1_relative": run["residuals"][0] / abs(theta1) if theta1 else math.inf,
            # a converged pair's residual bounds |θ_1 - λ_1|: does it here?
            "error_within_residual": abs(theta1 - float(exact[0])) <= run["residuals"][0],
        })
        if method == "finite_difference" and dtype == torch.float32:
            run["met"] = errors[0] <= TARGET
        record[label] = run
    # the step the first product took (for the account): ε‖v‖ for a unit v in float32
    params = tuple(p.detach() for p in model.parameters())
    unit = tuple(torch.ones_like(p) for p in params)
    scale = math.sqrt(sum(p.numel() for p in params))
    record["step_norm_float32"] = finite_difference_step(params, unit) * scale
    return record


def part_accuracy(smoke: bool) -> list[dict[str, Any]]:
    results = [accuracy(name, smoke) for name in MODELS]
    rows = []
    for r in results:
        for label, dtype in (("fd_float32", "float32"), ("fd_bfloat16", "bfloat16"), ("fd_float64", "float64"),
                             ("db_float32", "float32 db")):
            run = r[label]
            if "error" in run:
                rows.append([r["model"], dtype, run["error"][:60], "", "", "", "", "", "", ""])
                continue
            met = ("met" if run["met"] else "MISSED") if "met" in run else "-"
            rows.append([r["model"] if label == "fd_float32" else "", dtype, f"{run['lambda1_error']:.1e}",
                         f"{run['top5_max_error']:.1e}", "-" if run["fd_error"] is None else f"{run['fd_error']:.1e}",
                         f"{run['residual1_relative']:.1e}", run["error_within_residual"], run["converged"],
                         f"{run['solve_hvps']}/{run['op_hvps']}", met])
    truth_note = ", ".join(f"{r['model']} {r['truth']['eigenvalues'][0]:.5g} ({r['parameters']} params, "
                           f"{'converged' if r['truth']['converged'] else 'NOT converged'})" for r in results)
    table(f"Finite-difference accuracy: λ1 and top-{K} against float64 double backward (tol {TRUTH_TOL:g}); "
          f"lanczos(k={K}, tol={FD_TOL:g}); target λ1 error <= {TARGET:g} in float32",
          ["model", "dtype", "λ1 rel err", f"top-{K} max err", "op.fd_error", "res1/θ1", "err<=res1", "converged",
           "HVPs solve/op", f"λ1 <= {TARGET:g}"],
          rows,
          f"truth λ1: {truth_note}.\n"
          f"float32 step h‖v‖ (finite_difference_step): "
          + ", ".join(f"{r['model']} {r['step_norm_float32']:.1e}" for r in results) + ".\n"
          "cnn_bn_relu: BatchNorm, ReLU and max-pool (kinks); cnn_bn_gelu: BatchNorm, GELU and average pool (smooth).\n"
          "float32/bfloat16/float64: method=\"finite_difference\" with the model (else a copy of it) in that dtype;\n"
          "float32 db: exact double backward in float32, the floor float32 itself sets. res1/θ1: the residual bound "
          "lanczos reported for λ1, relative;\nerr<=res1: the true λ1 error lies within it. converged: lanczos's flag, which a residual at the products'\n"
          "noise floor (2 op.fd_error max|θ| for finite differences) also sets, even when that floor exceeds |θ|. HVPs: the solve's / the "
          "operator's (with hvp_noise's 2 products; finite differences' first product costs more gradients).")
    return results


# -- part 2: cost on the transformer ----------------------------------------------------------------
def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap goes back: new peaks need new pages


def _peak_mib(fn: Callable[[], Any]) -> tuple[float, bool]:
    """Resident memory ``fn()`` adds at its peak: VmHWM reset to VmRSS through clear_refs, minus
    that RSS; without the reset the ru_maxrss delta (which may then hide the peak)."""
    _trim()
    reset = _reset_peak()
    base = _status_kib("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak - base) / 1024, reset


def _attention_ops(fn: Callable[[], Any]) -> list[str]:
    """The attention kernels (aten op names) the profiler saw during ``fn()``: torch's legacy
    ``torch.autograd.profiler.profile`` (the same op events as ``torch.profiler.profile``, without
    importing the compiler stack, ~4 s in every fresh process)."""
    with torch.autograd.profiler.profile() as prof:
        fn()
    names = {e.key for e in prof.key_averages()}
    return sorted(n for n in names if ("attention" in n or "flash" in n) and n != "aten::scaled_dot_product_attention")


def cost_child(method: str, seq: int, smoke: bool) -> dict[str, Any]:
    """In a fresh (forked) process: one method on the transformer at sequence length ``seq``."""
    torch.set_num_threads(1)
    model, batch = transformer(smoke, seq)
    calls = [0]

    def loss_fn(m: nn.Module, b: Batch) -> Tensor:
        calls[0] += 1
        return cross_entropy(m, b)

    kernels = {"fused": contextlib.nullcontext, "math": lambda: sdpa_kernel([SDPBackend.MATH])}

    def gradient(kernel: str) -> Callable[[], None]:
        def run() -> None:
            with kernels[kernel]():
                model.zero_grad(set_to_none=True)
                cross_entropy(model, batch).backward()
            model.zero_grad(set_to_none=True)

        return run

    op = HessianOperator(model, loss_fn, [batch], method=method)
    hvps = COST_HVPS[smoke]

    def run_solve() -> int:
        before = op.num_hvps
        lanczos(op, k=1, tol=1e-12, max_hvps=hvps, seed=1)
        return op.num_hvps - before

    # warm-up: lazy initialization, hvp_noise's two products and (fd) the first, error-measuring product
    first_calls = calls[0]
    with op:
        op(torch.randn(op.size, generator=torch.Generator().manual_seed(2)))
    first_product_losses = calls[0] - first_calls
    for kernel in kernels:
        gradient(kernel)()
    run_solve()
    memory = {f"gradient_{k}": _peak_mib(gradient(k))[0] for k in kernels}
    memory["solve"], reset = _peak_mib(run_solve)
    # wall and process CPU seconds (one thread: CPU time is what the work took when the shared
    # machine lends the core to someone else, wall time counts that too)
    times: dict[str, list[float]] = {"gradient_fused": [], "gradient_math": [], "hvp": []}
    cpu_times: dict[str, list[float]] = {name: [] for name in times}
    losses_per_hvp = []
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(COST_REPEATS[smoke]):  # interleaved: drift hits each alike
        for kernel in kernels:
            start, start_cpu = time.perf_counter(), time.process_time()
            gradient(kernel)()
            times[f"gradient_{kernel}"].append(time.perf_counter() - start)
            cpu_times[f"gradient_{kernel}"].append(time.process_time() - start_cpu)
        start, start_cpu, before = time.perf_counter(), time.process_time(), calls[0]
        count = run_solve()
        times["hvp"].append((time.perf_counter() - start) / count)
        cpu_times["hvp"].append((time.process_time() - start_cpu) / count)
        losses_per_hvp.append((calls[0] - before) / count)
    cpu_share = (time.process_time() - cpu) / (time.perf_counter() - wall)
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(3))
    return {
        "part": "cost", "method": method, "seq": seq, "parameters": num_parameters(model), "hvps_per_solve": hvps,
        "cpu_share": cpu_share,
        "seconds": {k: statistics.median(t) for k, t in times.items()}, "times_s": times,
        "cpu_seconds": {k: statistics.median(t) for k, t in cpu_times.items()}, "cpu_times_s": cpu_times,
        "peak_mib": memory, "hwm_reset": reset,
        "loss_evaluations_per_hvp": statistics.median(losses_per_hvp),
        "first_product_loss_evaluations": first_product_losses,
        "kernels_hvp": _attention_ops(lambda: op(v)),
        "kernels_gradient": {k: _attention_ops(gradient(k)) for k in kernels},
    }


def part_cost(smoke: bool) -> list[dict[str, Any]]:
    results = [forked(cost_child, method, seq, smoke) for seq in COST_SEQS[smoke] for method in COST_METHODS]
    rows = []
    for r in results:
        own = "fused" if r["method"] == "finite_difference" else "math"
        s, c, mem = r["seconds"], r["cpu_seconds"], r["peak_mib"]
        r["hvp_per_gradient_same_kernel"] = c["hvp"] / c[f"gradient_{own}"]
        r["hvp_per_gradient_fused"] = c["hvp"] / c["gradient_fused"]
        r["memory_per_gradient_same_kernel"] = mem["solve"] / max(mem[f"gradient_{own}"], 1e-3)
        kernel = ", ".join(n.removeprefix("aten::") for n in r["kernels_hvp"] if not n.endswith("backward")) or "none seen"
        rows.append([r["method"], r["seq"], 1e3 * s["hvp"], 1e3 * c["hvp"], 1e3 * c[f"gradient_{own}"],
                     r["hvp_per_gradient_same_kernel"],
                     r["hvp_per_gradient_fused"], r["loss_evaluations_per_hvp"], r["first_product_loss_evaluations"],
                     mem[f"gradient_{own}"], mem["solve"], r["memory_per_gradient_same_kernel"], r["cpu_share"], kernel])
    first = results[0]
    table(f"Finite-difference cost on the transformer ({first['parameters']} params at T={first['seq']}, "
          f"{SIZES['transformer'][smoke]['rows']} rows): per HVP inside one lanczos solve of {COST_HVPS[smoke]} products",
          ["method", "T", "ms/HVP", "CPU ms/HVP", "grad CPU ms", "HVP/grad", "HVP/fused grad", "losses/HVP", "1st product",
           "grad MiB", "solve MiB", "solve/grad", "CPU share", "SDPA kernel of one product (torch.profiler)"],
          rows,
          "ms/HVP: wall time; CPU ms: process CPU time (one thread), from which the ratios in gradients are taken.\n"
          "grad: one loss + backward on the same probe with the kernel the method's products use (fd: the model's own,\n"
          "fused; db: math, which the probe forces); fused grad: with the model's own kernel. losses/HVP: loss_fn calls "
          "per product in the\ntimed solve (fd: gradients per product; db reusing the graph: one per solve); 1st product: "
          "loss_fn calls of an operator's first product.\nMiB: resident-memory high-water mark "
          f"({'VmHWM reset through /proc/self/clear_refs' if first['hwm_reset'] else 'ru_maxrss delta, no reset'}) "
          "minus the RSS after setup and warm-up, each method in a fresh forked process;\nsolve = a whole solve "
          "(db: holding the gradient graph). Medians of interleaved repeats; CPU share: process CPU / wall time while timing\n"
          "(one thread: below 1 means the shared machine took the core away and the times are inflated).")
    for seq in COST_SEQS[smoke]:
        fd, db = (next(r for r in results if r["method"] == m and r["seq"] == seq) for m in COST_METHODS)
        print(f"T={seq}: finite differences take {fd['cpu_seconds']['hvp'] / db['cpu_seconds']['hvp']:.2f}x the CPU time of a "
              f"double-backward product and {fd['peak_mib']['solve'] / max(db['peak_mib']['solve'], 1e-3):.2f}x its "
              f"peak memory over a solve; math-kernel gradient / fused-kernel gradient memory "
              f"{db['peak_mib']['gradient_math'] / max(db['peak_mib']['gradient_fused'], 1e-3):.2f}x")
    sys.stdout.flush()
    return results


# -- the run ------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, same code path (make test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results directory (default {DEFAULT_OUT})")
    parser.add_argument("--parts", default="1,2", help="which parts to run: 1 accuracy, 2 cost")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    parts = {int(p) for p in args.parts.split(",")}
    results: list[dict[str, Any]] = []
    with single_thread():
        info = machine()
        print(f"{NAME}: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, python {info['python']}; "
              f"{info['threads']} torch thread and 1 BLAS thread; load average {loadavg():.2f}"
              + ("; SMOKE run (tiny sizes)" if args.smoke else ""))
        for part, run in ((1, part_accuracy), (2, part_cost)):
            if part in parts:
                wall = time.perf_counter()
                results += run(args.smoke)
                wall = time.perf_counter() - wall
                print(f"(part {part}: {wall:.0f} s, load average {loadavg():.2f})")
        info["load_average_end"] = loadavg()
    total = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{NAME}.json"
    payload = {"benchmark": NAME, "smoke": args.smoke, "machine": info, "results": results, "seconds": round(total, 1)}
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"\nwrote {path} ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
