"""The base of the event detectors: one step's metrics in, events out, and a history to save."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgewatch.hooks.events import Event

__all__ = ["Detector"]


class Detector:
    """Base detector: reads one step's metrics, returns events, and can save its history.

    Subclasses implement :meth:`update`; those with history override :meth:`state_dict` and
    :meth:`load_state_dict` (read with defaults, so older checkpoints still load).
    """

    kinds: tuple[str, ...] = ()
    #: A detector that needs a curvature point now sets this; under the budget schedule the
    #: Monitor then takes one at the next step (counted against the budget), and the detector
    #: clears it when the point arrives. Fixed schedules are followed exactly as given.
    wants_curvature: bool = False

    def update(self, metrics: Mapping[str, float], step: int) -> list[Event]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the base has nothing to restore."""
