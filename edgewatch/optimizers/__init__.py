"""Optimizer adapters: preconditioner D, step size η and stability constant c from a live optimizer."""

# the adapter interface and its errors
from edgewatch.optimizers._base import (
    OptimizerAdapter,
    OptimizerStateError,
    UnsupportedOptimizerError,
)

# built-in adapters
from edgewatch.optimizers.adagrad import AdagradAdapter
from edgewatch.optimizers.adam import AdamAdapter, AdamWAdapter
from edgewatch.optimizers.adam_atan2 import AdamAtan2, AdamAtan2Adapter

# registry
from edgewatch.optimizers.registry import adapter_for, register_adapter, registered_optimizers
from edgewatch.optimizers.rmsprop import RMSpropAdapter
from edgewatch.optimizers.sgd import SGDAdapter

# thresholds and the preconditioned operator
from edgewatch.optimizers.stability import GroupStability, Stability, preconditioned_operator, stability

__all__ = [
    # the adapter interface and its errors
    "OptimizerAdapter",
    "OptimizerStateError",
    "UnsupportedOptimizerError",
    # built-in adapters
    "AdagradAdapter",
    "AdamAdapter",
    "AdamAtan2Adapter",
    "AdamWAdapter",
    "RMSpropAdapter",
    "SGDAdapter",
    # optimizers edgewatch ships (torch.optim has no equivalent)
    "AdamAtan2",
    # registry
    "adapter_for",
    "register_adapter",
    "registered_optimizers",
    # thresholds and the preconditioned operator
    "GroupStability",
    "Stability",
    "preconditioned_operator",
    "stability",
]
