"""Events: what a run did that a person should hear about.

An event is a plain record ``{step, kind, severity, message, values}``. A detector
(:class:`~edgewatch.hooks.detectors.base.Detector`) reads the metrics of one step (a flat
``dict[str, float]`` with the names the README lists) and returns the events they signal. Detectors are framework-free (like Lightning
Fabric's ``SpikeDetection``) and carry their history in ``state_dict()`` so a resumed run
continues as if never stopped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["KINDS", "SEVERITIES", "Event"]

#: Event kinds edgewatch raises.
KINDS = (
    "eos_reached",
    "eos_sustained",
    "progressive_sharpening",
    "catapult",
    "loss_spike",
    "grad_spike",
    "attention_logit_growth",
    "output_logit_divergence",
    "attention_entropy_collapse",
    "adam_epsilon_dominates",
    "nonfinite",
)

#: Severities, mildest first.
SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True)
class Event:
    """One thing that happened at one optimizer step.

    Attributes:
        step: the optimizer step count.
        kind: one of :data:`KINDS` (or a user detector's own kind).
        severity: ``"info"``, ``"warning"`` or ``"critical"``.
        message: one sentence for a person, with the numbers.
        values: the numbers behind it, as plain floats.
    """

    step: int
    kind: str
    severity: str
    message: str
    values: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite values as strings, which JSON cannot hold)."""
        record = asdict(self)
        record["values"] = {k: v if math.isfinite(v) else str(v) for k, v in self.values.items()}
        return record
