"""Curvature: linear operators over a model's parameters (H v) and the solvers that read them."""

# operators
# solvers
from edgewatch.curvature.density import SpectralDensity, spectral_density
from edgewatch.curvature.hessian import HVP_METHODS, HessianOperator
from edgewatch.curvature.hvp import GradientGraph, hvp_double_backward, hvp_forward_over_reverse
from edgewatch.curvature.lanczos import EigenResult, lanczos
from edgewatch.curvature.linear import LinearOperator, MatrixOperator, as_scipy_operator
from edgewatch.curvature.noise import hvp_noise
from edgewatch.curvature.operator import CurvatureOperator
from edgewatch.curvature.power import power_iteration
from edgewatch.curvature.preconditioned import PreconditionedOperator
from edgewatch.curvature.probe_set import LossFn, unwrap_model
from edgewatch.curvature.refine import refine
from edgewatch.curvature.trace import TraceResult, hutchinson_trace, hutchpp_trace

__all__ = [
    # operators
    "CurvatureOperator",
    "GradientGraph",
    "HVP_METHODS",
    "HessianOperator",
    "LinearOperator",
    "LossFn",
    "MatrixOperator",
    "PreconditionedOperator",
    "as_scipy_operator",
    "hvp_double_backward",
    "hvp_forward_over_reverse",
    "unwrap_model",
    # solvers
    "EigenResult",
    "SpectralDensity",
    "TraceResult",
    "hutchinson_trace",
    "hutchpp_trace",
    "hvp_noise",
    "lanczos",
    "power_iteration",
    "refine",
    "spectral_density",
]
