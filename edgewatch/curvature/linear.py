"""Linear operators as the solvers see them: the protocol, a dense one, and the span of a solve.

A solver (Lanczos, power iteration, Hutchinson, SLQ) accepts any symmetric linear operator: a
callable ``op(v)`` on flat vectors with ``shape``, ``dtype`` and ``device``. Operators that cache
work between products (a gradient graph) keep it for the span of one solve (:func:`solving`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
import torch
from torch import Tensor

__all__ = ["LinearOperator", "MatrixOperator", "as_scipy_operator", "solver", "solving"]


@runtime_checkable
class LinearOperator(Protocol):
    """A symmetric linear map on flat vectors, as the solvers see it."""

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def __call__(self, v: Tensor) -> Tensor: ...


class MatrixOperator:
    """A dense symmetric matrix as a :class:`LinearOperator` (quadratics, tests, small problems).

    >>> op = MatrixOperator(torch.diag(torch.tensor([3.0, 1.0])))
    >>> op(torch.tensor([1.0, 1.0]))
    tensor([3., 1.])
    """

    def __init__(self, matrix: Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix must be square, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.num_matvecs = 0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def __call__(self, v: Tensor) -> Tensor:
        self.num_matvecs += 1
        return self.matrix @ v


@contextlib.contextmanager
def solving(op: LinearOperator):
    """The span of one solve: operators that cache work between products (a gradient graph) keep
    it inside and free it after. Solvers wrap their loop in it; operators without a cache need
    nothing."""
    if hasattr(op, "__enter__"):
        with cast(Any, op):
            yield
    else:
        yield


def solver(function: Callable) -> Callable:
    """Decorate a solver ``f(op, ...)`` so that its whole run is one :func:`solving` span."""

    @functools.wraps(function)
    def run(op: LinearOperator, *args: Any, **kwargs: Any) -> Any:
        with solving(op):
            return function(op, *args, **kwargs)

    return run


def as_scipy_operator(op: LinearOperator) -> Any:
    """Wrap ``op`` as a float64 ``scipy.sparse.linalg.LinearOperator`` (for ``eigsh`` and peers).

    Enter the operator for the duration of the scipy solve (``with op: eigsh(...)``) so that a
    :class:`~edgewatch.curvature.hessian.HessianOperator` reuses its gradient graph.
    """
    from scipy.sparse.linalg import LinearOperator as ScipyLinearOperator

    def matvec(x: np.ndarray) -> np.ndarray:
        v = torch.as_tensor(np.ascontiguousarray(x).reshape(-1), dtype=op.dtype, device=op.device)
        return op(v).detach().to("cpu", torch.float64).numpy()

    return ScipyLinearOperator(op.shape, matvec=matvec, rmatvec=matvec, dtype=np.float64)
