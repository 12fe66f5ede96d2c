"""Hooks: event records, detectors and measurement schedules (the Monitor that drives them is next)."""

# events
from edgewatch.hooks.events import KINDS, SEVERITIES, Detector, Event

# detectors
from edgewatch.hooks.detectors import CatapultDetector, EdgeOfStabilityDetector, NonFiniteDetector, SpikeDetector

# schedules
from edgewatch.hooks.schedule import Schedule

__all__ = [
    # events
    "KINDS",
    "SEVERITIES",
    "Detector",
    "Event",
    # detectors
    "CatapultDetector",
    "EdgeOfStabilityDetector",
    "NonFiniteDetector",
    "SpikeDetector",
    # schedules
    "Schedule",
]
