r"""What an optimizer adapter says about one parameter group: η, c, coupled decay and D.

Every supported update is, on the local quadratic and with its preconditioner held fixed,
:math:`θ \leftarrow θ - η D m` with m a momentum average of the gradient of
:math:`L + \tfrac{w}{2}\|θ\|^2` (w the coupled weight decay, if any). It is stable along an
eigendirection of :math:`D^{1/2}(H + wI)D^{1/2}` with eigenvalue λ iff :math:`ηλ < c`, where the
stability constant c depends only on the momentum rule (:mod:`edgewatch.optimizers.stability`). An adapter reports
these four things from the live optimizer's hyperparameters and state; nothing else about the
optimizer is needed.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from torch import Tensor

__all__ = ["OptimizerAdapter", "OptimizerStateError", "UnsupportedOptimizerError", "exact"]


class OptimizerStateError(RuntimeError):
    """The optimizer has no state to read a preconditioner from yet (no step taken)."""


class UnsupportedOptimizerError(TypeError):
    """No adapter is registered for this optimizer (or for an option it uses)."""


def exact(value: float) -> Fraction:
    """A hyperparameter as the decimal the user wrote, so 2(1+β)/(1-β) at β = 0.9 is exactly 38.

    >>> float(2 * (1 + exact(0.9)) / (1 - exact(0.9)))
    38.0
    """
    return Fraction(repr(float(value)))


class OptimizerAdapter:
    """Base adapter: plain gradient descent. Subclasses override what their update changes.

    Each method receives ``group``, the optimizer's ``param_groups`` entry, and ``state``, the
    optimizer's per-parameter state dict (``optimizer.state[p]``, empty before the first step).
    """

    #: True when the preconditioner D is read from optimizer state (adaptive methods).
    needs_state: bool = False

    def check_group(self, group: dict[str, Any]) -> None:
        """Raise :class:`UnsupportedOptimizerError` for options the threshold does not cover."""
        if group.get("maximize", False):
            raise UnsupportedOptimizerError(
                "maximize=True ascends the loss; the stability threshold is derived for descent"
            )

    def learning_rate(self, group: dict[str, Any], state: dict[str, Any]) -> float:
        """η: the group's ``lr`` as it is now, with any decay the optimizer applies itself.

        Measured between ``optimizer.step()`` and ``scheduler.step()`` (as the Monitor does)
        that is the step just taken; after ``scheduler.step()`` it is the next one. ``state`` is
        the parameter's own (for decays that count its steps, like Adagrad's).
        """
        return float(group["lr"])

    def stability_constant(self, group: dict[str, Any], lr: float) -> float:
        """c: the step is stable along a direction with preconditioned curvature λ iff ηλ < c."""
        return 2.0

    def coupled_weight_decay(self, group: dict[str, Any]) -> float:
        """w added to the gradient (so to H) before preconditioning; 0 when decoupled."""
        return float(group.get("weight_decay", 0.0))

    def preconditioner(self, group: dict[str, Any], state: dict[str, Any]) -> Tensor | None:
        """The diagonal D for one parameter (same shape), or None for the identity."""
        return None

    def describe(self, group: dict[str, Any]) -> str:
        """A short formula for the threshold, for tables and logs."""
        return "2/η"
