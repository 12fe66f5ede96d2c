"""Hooks: the Monitor, its probes, event detectors and measurement schedules."""

# events
# detectors
from edgewatch.hooks.config import CurvatureConfig
from edgewatch.hooks.detectors import (
    CatapultDetector,
    EdgeOfStabilityDetector,
    NonFiniteDetector,
    SpikeDetector,
    ThresholdDetector,
)
from edgewatch.hooks.detectors.base import Detector
from edgewatch.hooks.events import KINDS, SEVERITIES, Event

# the monitor
from edgewatch.hooks.monitor import Monitor, StopTraining, default_detectors

# schedules
from edgewatch.hooks.schedule import Schedule

__all__ = [
    "CurvatureConfig",
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
    "ThresholdDetector",
    # the monitor
    "Monitor",
    "StopTraining",
    "default_detectors",
    # schedules
    "Schedule",
]
