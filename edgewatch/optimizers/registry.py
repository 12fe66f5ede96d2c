"""Which adapter reads which optimizer: torch.optim classes built in, yours by one call.

Lookup follows the optimizer's class hierarchy, so a subclass of ``torch.optim.Adam`` that keeps
Adam's update uses the Adam adapter; register the subclass itself when its update differs.
"""

from __future__ import annotations

import torch

from edgewatch.optimizers._base import OptimizerAdapter, UnsupportedOptimizerError
from edgewatch.optimizers.adagrad import AdagradAdapter
from edgewatch.optimizers.adam import AdamAdapter, AdamWAdapter
from edgewatch.optimizers.adam_atan2 import AdamAtan2, AdamAtan2Adapter
from edgewatch.optimizers.rmsprop import RMSpropAdapter
from edgewatch.optimizers.sgd import SGDAdapter

__all__ = ["adapter_for", "register_adapter", "registered_optimizers"]

_ADAPTERS: dict[type, OptimizerAdapter] = {
    torch.optim.SGD: SGDAdapter(),
    torch.optim.Adam: AdamAdapter(),
    # AdamW by class as well as by flag: torch < 2.7 writes no decoupled_weight_decay entry.
    torch.optim.AdamW: AdamWAdapter(),
    AdamAtan2: AdamAtan2Adapter(),
    torch.optim.RMSprop: RMSpropAdapter(),
    torch.optim.Adagrad: AdagradAdapter(),
}

_HOW_TO_REGISTER = """\
To add one, subclass edgewatch.optimizers.OptimizerAdapter (override stability_constant, and
preconditioner if the update is preconditioned) and register it:
    edgewatch.optimizers.register_adapter({name}, MyAdapter())"""


def register_adapter(optimizer_class: type, adapter: OptimizerAdapter) -> None:
    """Use ``adapter`` for ``optimizer_class`` and its subclasses (replacing any earlier one).

    Example, for an optimizer that steps θ ← θ − η D g with its own diagonal ``state["scale"]``:

    >>> from edgewatch.optimizers import OptimizerAdapter
    >>> class ScaledGD(torch.optim.SGD): ...
    >>> class ScaledGDAdapter(OptimizerAdapter):
    ...     needs_state = True
    ...     def preconditioner(self, group, state):
    ...         return state["scale"]
    >>> register_adapter(ScaledGD, ScaledGDAdapter())
    """
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
        raise TypeError(f"optimizer_class must be a torch.optim.Optimizer subclass, got {optimizer_class!r}")
    if not isinstance(adapter, OptimizerAdapter):
        raise TypeError(f"adapter must be an OptimizerAdapter instance, got {type(adapter).__name__}")
    _ADAPTERS[optimizer_class] = adapter


def adapter_for(optimizer: torch.optim.Optimizer) -> OptimizerAdapter:
    """The adapter for this optimizer's class (or its nearest registered base class)."""
    for cls in type(optimizer).__mro__:
        if cls in _ADAPTERS:
            return _ADAPTERS[cls]
    name = type(optimizer).__name__
    raise UnsupportedOptimizerError(
        f"edgewatch has no stability adapter for {name}; supported: "
        f"{', '.join(registered_optimizers())}.\n" + _HOW_TO_REGISTER.format(name=name)
    )


def registered_optimizers() -> list[str]:
    """Names of the optimizer classes with an adapter."""
    return sorted(cls.__name__ for cls in _ADAPTERS)
