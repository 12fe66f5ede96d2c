"""How curvature is measured: one :class:`CurvatureConfig`, from the Monitor to its curvature meter
to the Hessian operator, with the checks of single values the Monitor's other settings share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgewatch.curvature.hessian import check_method
from edgewatch.curvature.probe_set import check_seed, check_train

__all__ = ["CurvatureConfig", "check_count", "check_curvature_settings", "check_relative"]


def check_count(name: str, value: Any, minimum: int = 1, fix: str = "") -> int:
    """``value`` as an int ≥ ``minimum`` (not a bool, not a float that happens to be whole)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        hint = fix or f"e.g. {name}={max(minimum, 1)}"
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}; {hint}")
    return value


def check_relative(name: str, value: Any, fix: str) -> float:
    """``value`` as a finite float in the open interval (0, 1): a relative tolerance or share."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}; {fix}")
    return float(value)


def check_curvature_settings(k: Any, tol: Any, max_hvps: Any) -> None:
    """Lanczos' settings: ``k ≥ 1`` eigenvalues, a relative residual ``tol`` in (0, 1), and a budget
    of at least ``k`` products (a Krylov space of dimension m holds at most m Ritz pairs)."""
    check_count("k", k, fix="the number of top eigenvalues to report, e.g. k=1")
    check_relative("tol", tol, "the relative residual ‖Hv − λv‖ ≤ tol·|λ| a solve stops at, e.g. tol=1e-3")
    check_count("max_hvps", max_hvps, fix="the Hessian-vector products one solve may spend, e.g. max_hvps=100")
    if max_hvps < k:
        raise ValueError(f"max_hvps={max_hvps} is below k={k}: Lanczos needs at least k products; raise max_hvps or lower k")


@dataclass(frozen=True)
class CurvatureConfig:
    """How curvature is measured: the one place its knobs are declared, with their defaults, and
    checked (at construction, so a bad value fails where it was written).

    Args:
        k: how many top eigenvalues of H to report (≥ 1).
        tol, max_hvps: Lanczos tolerance (a relative residual in (0, 1)) and HVP budget per
            solve (≥ k).
        method, seed, train: how the Hessian is applied: see
            :class:`~edgewatch.curvature.HessianOperator`.
        stream_hvps: the most HVPs per operator of a streamed point (≥ 1).
        stream_tol: the relative residual a streamed λ₁ must meet, else the point escalates to a
            full solve (in (0, 1)).
        stream_drop: the relative fall from the last reported λ₁ beyond which a streamed point
            escalates (a catapult, or a crossing of eigenvalues, deserves a full look; in (0, 1)).

    Raises:
        ValueError: a setting out of range (the message names it and the fix).
    """

    k: int = 1
    tol: float = 1e-3
    max_hvps: int = 100
    method: str = "auto"
    seed: int = 0
    train: bool | None = True
    stream_hvps: int = 4
    stream_tol: float = 0.05
    stream_drop: float = 0.3

    def __post_init__(self) -> None:
        check_curvature_settings(self.k, self.tol, self.max_hvps)
        check_method(self.method)
        check_seed(self.seed)
        check_train(self.train)
        check_count("stream_hvps", self.stream_hvps, fix="the most products of a streamed point, e.g. stream_hvps=4")
        check_relative("stream_tol", self.stream_tol, "the relative residual a streamed λ₁ must meet, e.g. stream_tol=0.05")
        check_relative("stream_drop", self.stream_drop, "the relative fall that calls for a full solve, e.g. stream_drop=0.3")
