"""The peers' eigensolvers as peers.py drives them: one adapter per tool, counting products and
checking a time cap, and the settings each tool is swept over."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch starts its thread pool

import importlib
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

HERE = Path(__file__).resolve().parent
TRUTH_DIR = HERE / "truth"  # ground truth computed once per model, batch and torch version (committed)
if str(HERE) not in sys.path:  # run as a script or imported by the tests
    sys.path.insert(0, str(HERE))

from workloads import (
    Workload,
    as_supervised,
)

from edgewatch.curvature import HessianOperator, as_scipy_operator, lanczos


class TimedOut(Exception):
    """A setting ran past its time cap."""


class Meter:
    """Counts the HVPs of one solve and the seconds spent inside them; aborts past the deadline."""

    def __init__(self, cap: float) -> None:
        self.count = 0
        self.hvp_seconds = 0.0
        self.deadline = time.perf_counter() + cap

    def wrap(self, fn: Callable) -> Callable:
        def counted(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            if start > self.deadline:
                raise TimedOut
            try:
                return fn(*args, **kwargs)
            finally:
                self.count += 1
                self.hvp_seconds += time.perf_counter() - start

        return counted


class CountedOperator:
    """An edgewatch operator whose products go through a :class:`Meter`; entering it enters the
    operator, so the gradient graph is still reused within one solve."""

    def __init__(self, op: HessianOperator, meter: Meter) -> None:
        self.op = op
        self._call = meter.wrap(op.__call__)

    shape = property(lambda self: self.op.shape)
    dtype = property(lambda self: self.op.dtype)
    device = property(lambda self: self.op.device)

    def __call__(self, v: Tensor) -> Tensor:
        return self._call(v)

    def __enter__(self) -> CountedOperator:
        self.op.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.op.__exit__(*exc_info)


def descending(values: Any) -> np.ndarray:
    return np.sort(np.asarray(values, dtype=np.float64).reshape(-1))[::-1]


def start_vector(n: int) -> np.ndarray:
    """The same ARPACK start vector for every scipy-based tool (ARPACK's own is process-dependent)."""
    return np.random.default_rng(0).standard_normal(n)


def eigsh_top(operator: Any, k: int, setting: dict[str, Any]) -> np.ndarray:
    from scipy.sparse.linalg import eigsh

    values = eigsh(operator, k=k, which="LA", tol=setting.get("tol", 0.0), ncv=setting.get("ncv"),
                   v0=start_vector(operator.shape[0]), return_eigenvectors=False)
    return descending(values)


# -- the tools ------------------------------------------------------------------------------------
# Each runner solves once, from scratch (operator construction included), and returns the k
# eigenvalues in descending order; ``meter`` counts its HVPs.
def run_edgewatch(w: Workload, k: int, setting: dict[str, Any], meter: Meter) -> np.ndarray:
    method = setting.get("method", "auto")  # "auto" always, except in the profile of a miss
    op = CountedOperator(HessianOperator(w.model, w.loss_fn, [w.batch], method=method), meter)
    result = lanczos(op, k=k, tol=setting["tol"], max_hvps=setting.get("max_hvps"))
    return descending(result.eigenvalues)


def run_eigsh(w: Workload, k: int, setting: dict[str, Any], meter: Meter) -> np.ndarray:
    op = CountedOperator(HessianOperator(w.model, w.loss_fn, [w.batch], method="auto"), meter)
    with op:  # reuse the gradient graph for the whole ARPACK run
        return eigsh_top(as_scipy_operator(op), k, setting)


def run_pyhessian(w: Workload, k: int, setting: dict[str, Any], meter: Meter) -> np.ndarray:
    module = importlib.import_module("pyhessian.hessian")  # the package re-exports the class under that name
    model, criterion, data = as_supervised(w)
    original = module.hessian_vector_product
    module.hessian_vector_product = meter.wrap(original)  # the name its eigenvalues() calls
    torch.manual_seed(0)  # its start vectors come from the global RNG
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # backward(create_graph=True) reference-cycle warning
            h = module.hessian(model, criterion, data=data, cuda=False)
            values, _ = h.eigenvalues(maxIter=setting["maxIter"], tol=setting["tol"], top_n=k)
    finally:
        module.hessian_vector_product = original
        model.zero_grad(set_to_none=True)  # it leaves .grad holding the double-backward graph
        model.train()  # it switched the model to eval mode
    return descending(values)


def run_eigenthings(w: Workload, k: int, setting: dict[str, Any], meter: Meter) -> np.ndarray:
    from hessian_eigenthings import HessianOperator as ETHessian
    from hessian_eigenthings import lanczos as et_lanczos
    from hessian_eigenthings import supervised_loss

    model, criterion, data = as_supervised(w)
    op = ETHessian(model, [data], supervised_loss(criterion))
    op.matvec = meter.wrap(op.matvec)  # lanczos calls operator.matvec
    result = et_lanczos(op, k=k, seed=0, **setting)
    return descending(result.eigenvalues.detach().cpu())


def run_curvlinops(w: Workload, k: int, setting: dict[str, Any], meter: Meter) -> np.ndarray:
    from curvlinops import HessianLinearOperator
    from scipy.sparse.linalg import LinearOperator

    model, criterion, (x, y) = as_supervised(w)
    params = [p for p in model.parameters() if p.requires_grad]
    hessian = HessianLinearOperator(model, criterion, params, [(x, y)], check_deterministic=False,
                                    num_data=x.shape[0]).to_scipy(dtype=np.float64)
    matvec = meter.wrap(hessian.matvec)
    counted = LinearOperator(hessian.shape, matvec=matvec, rmatvec=matvec, dtype=np.float64)
    return eigsh_top(counted, k, setting)


RUNNERS: dict[str, Callable[[Workload, int, dict[str, Any], Meter], np.ndarray]] = {
    "edgewatch": run_edgewatch, "eigsh": run_eigsh, "pyhessian": run_pyhessian,
    "eigenthings": run_eigenthings, "curvlinops": run_curvlinops,
}
MODULES = {"pyhessian": "pyhessian", "eigenthings": "hessian_eigenthings", "curvlinops": "curvlinops"}


def sweeps(tool: str, k: int, n: int, large: bool, ncv: int | None = None) -> list[list[dict[str, Any]]]:
    """Families of settings, each ordered from cheapest to dearest: a family stops at its first
    setting that reaches the target (the dearer ones would too, at more cost) or times out.
    ``ncv``: curvlinops runs the same ARPACK as eigsh, so it sweeps tol at the ncv that was
    cheapest for eigsh only (halves its sweep)."""
    # Half decades, so that the step of the sweep decides little: (1e-1,) 3e-2, 1e-2, ..., 1e-8.
    tols = [float(f"{m}e{e}") for e in range(-2, -9, -1) for m in (3, 1)]
    if tool == "edgewatch":
        return [[{"tol": t} for t in (tols[1:6] if large else tols)]]
    if tool in ("eigsh", "curvlinops"):
        if large:
            return [[{"tol": t} for t in (1e-2, 1e-3)]]
        small = min(n - 1, max(2 * k + 1, 8))
        families = [[{"tol": t, "ncv": small} for t in [1e-1, *tols]], [{"tol": t} for t in [1e-1, *tols]]]
        if tool == "curvlinops" and ncv != -1:
            families = [families[0] if ncv == small else families[1]]
        return families
    if tool == "pyhessian":
        if large:
            return [[{"maxIter": 1000, "tol": t} for t in (3e-4, 1e-4, 3e-5, 1e-5)]]
        # maxIter high enough never to cut a run short (a loose tol stops early, as at maxIter=100).
        return [[{"maxIter": 1000, "tol": t} for t in tols[2:]]]
    if tool == "eigenthings":
        steps = [2, 5, 10, 15, 20, 30, 40, 50, 70, 100] if k == 1 else [10, 15, 20, 25, 30, 40, 50, 70, 100]
        if large:
            steps = [10, 15, 20, 30, 40] if k == 1 else [30, 50]
        return [[{"max_iter": m, "which": "LA", **({"reorthogonalize": True} if m > 50 else {})}
                 for m in steps if m < n]]
    raise ValueError(f"unknown tool {tool!r}")


# Each tool called with its own defaults, for the record: eigenthings' (max_iter=2k, which="LM"),
# and, on top-1, PyHessian's (maxIter=100, tol=1e-3) and edgewatch's (tol=1e-4). (eigsh's and
# curvlinops' default is tol=0, machine precision: costly and beside the point.)
DEFAULTS = {"edgewatch": {"tol": 1e-4}, "pyhessian": {"maxIter": 100, "tol": 1e-3}, "eigenthings": {}}
