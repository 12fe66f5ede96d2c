"""Ground truth for peers.py: the top eigenvalues of each workload by a dense float64 Hessian (or a
tight float64 Lanczos where the Hessian is too large), cached per model, batch and torch version."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch starts its thread pool

import copy
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

HERE = Path(__file__).resolve().parent
TRUTH_DIR = HERE / "truth"  # ground truth computed once per model, batch and torch version (committed)
if str(HERE) not in sys.path:  # run as a script or imported by the tests
    sys.path.insert(0, str(HERE))

from peer_tools import descending, eigsh_top, start_vector
from workloads import (
    Workload,
    num_parameters,
)

from edgewatch.curvature import HessianOperator, as_scipy_operator, lanczos

TRUTH_DIR = HERE / "truth"  # ground truth computed once per model, batch and torch version (committed)


def float64_copy(w: Workload) -> Workload:
    x, y = w.batch
    return Workload(w.name, copy.deepcopy(w.model).double(), w.loss_fn,
                    (x.double() if x.is_floating_point() else x, y))


def dense_hessian(w: Workload, chunk: int = 32) -> Tensor:
    """The dense float64 Hessian of a float64 copy, ``chunk`` rows per batched double backward
    through one gradient graph (``is_grads_batched``). About 6 ms a row for the 26k MLP: minutes."""
    w64 = float64_copy(w)
    params = [p for p in w64.model.parameters() if p.requires_grad]
    gradient = torch.autograd.grad(w64.loss_fn(w64.model, w64.batch), params, create_graph=True)
    sizes = [p.numel() for p in params]
    n = sum(sizes)
    hessian = torch.empty(n, n, dtype=torch.float64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        units = torch.zeros(stop - start, n, dtype=torch.float64)
        units[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        directions = [u.reshape(stop - start, *p.shape) for u, p in zip(units.split(sizes, dim=1), params)]
        rows = torch.autograd.grad(gradient, params, grad_outputs=directions, retain_graph=True, is_grads_batched=True)
        hessian[start:stop] = torch.cat([r.reshape(stop - start, -1) for r in rows], dim=1)
    return hessian


def _cache_key(w: Workload) -> str:
    """Hash of everything the truth depends on: parameters, batch, torch version."""
    digest = hashlib.sha256(torch.__version__.encode())  # the file name carries the workload
    for tensor in [*w.model.state_dict().values(), *w.batch]:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _lanczos64(w: Workload, k: int = 5) -> tuple[np.ndarray, Any]:
    """edgewatch's Lanczos on a float64 copy at tol 1e-10."""
    w64 = float64_copy(w)
    op = HessianOperator(w64.model, w64.loss_fn, [w64.batch], method="double_backward")
    result = lanczos(op, k=k, tol=1e-10, max_hvps=min(num_parameters(w.model), 800))
    return descending(result.eigenvalues), (op, result)


def ground_truth(w: Workload, large: bool, cache: Path | None) -> dict[str, Any]:
    """Top-5 eigenvalues (descending) to far better than the targets, how, and a cross-check.

    The truth takes minutes (the MLP's dense Hessian: ~3 min; float64 Lanczos on the CNN and the
    transformer: ~1 min each), so full runs keep it in ``cache``, keyed by a hash of the
    parameters, the batch and the torch version; the MLP's cheap float64 Lanczos cross-check runs
    every time."""
    start = time.perf_counter()
    path = cache / f"{w.name}-{_cache_key(w)}.json" if cache is not None else None
    if path is not None and path.exists():
        truth = json.loads(path.read_text())
        truth["method"] += f" [cached: computed {truth['computed']} in {truth['seconds']:.0f} s]"
    else:
        truth = _compute_truth(w, large)
        truth.update(seconds=time.perf_counter() - start, computed=time.strftime("%Y-%m-%d %H:%M"))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(jsonable(truth)))
    if w.name == "mlp":
        check, _ = _lanczos64(w)
        values = np.asarray(truth["eigenvalues"])
        truth["cross_check"] = check.tolist()
        truth["cross_check_how"] = "edgewatch lanczos on a float64 copy, tol 1e-10"
        truth["cross_check_relative_difference"] = float(np.max(np.abs(values - check) / np.abs(values)))
    truth["seconds_this_run"] = time.perf_counter() - start
    return truth


def _compute_truth(w: Workload, large: bool) -> dict[str, Any]:
    n = num_parameters(w.model)
    if w.name == "mlp":
        from scipy.sparse.linalg import eigsh

        hessian = dense_hessian(w)
        asymmetry = float((hessian - hessian.T).abs().max() / hessian.abs().max())
        if n <= 4000:
            values = descending(torch.linalg.eigvalsh(hessian).numpy())[:5]
            how = "dense float64 Hessian (rows by double backward on a float64 copy), eigvalsh"
        else:
            values = descending(eigsh(hessian.numpy(), k=5, which="LA", tol=1e-14, v0=start_vector(n),
                                       return_eigenvectors=False))
            how = "dense float64 Hessian (rows by double backward on a float64 copy), top 5 by ARPACK at tol 1e-14"
        return {"eigenvalues": values.tolist(), "method": how, "asymmetry": asymmetry}
    if not large:
        values, (op, result) = _lanczos64(w)
        with op:
            check = eigsh_top(as_scipy_operator(op), 5, {"tol": 1e-12})
        how = ("edgewatch lanczos on a float64 copy, tol 1e-10 "
               f"({result.num_hvps} HVPs, converged={result.converged})")
        check_how, top = "scipy eigsh on the same float64 operator, tol 1e-12", 5
    else:
        op = HessianOperator(w.model, w.loss_fn, [w.batch], method="double_backward")
        result = lanczos(op, k=5, tol=1e-7, max_hvps=min(n, 300))
        with op:
            check = eigsh_top(as_scipy_operator(op), 1, {"tol": 1e-7})
        values = descending(result.eigenvalues)
        how = ("edgewatch lanczos in float32 (float64 too slow here), tol 1e-7 "
               f"({result.num_hvps} HVPs, converged={result.converged})")
        check_how, top = "scipy eigsh (top 1) on the same float32 operator, tol 1e-7", 1
    disagreement = float(np.max(np.abs(values[:top] - check[:top]) / np.abs(values[:top])))
    return {"eigenvalues": values.tolist(), "method": how, "cross_check": check.tolist(), "cross_check_how": check_how,
            "cross_check_relative_difference": disagreement, "residuals": result.residuals.numpy().tolist()}


def jsonable(value: Any) -> Any:
    """Plain JSON: numpy scalars as numbers, inf and NaN as strings."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
