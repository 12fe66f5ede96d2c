"""Event detectors: edge of stability, spikes and catapults, logits, non-finite values."""

from edgewatch.hooks.detectors.base import Detector
from edgewatch.hooks.detectors.eos import EdgeOfStabilityDetector
from edgewatch.hooks.detectors.logits import (
    EntropyCollapseDetector,
    GrowthDetector,
    attention_entropy_collapse,
    attention_logit_growth,
    output_logit_divergence,
)
from edgewatch.hooks.detectors.nonfinite import NonFiniteDetector
from edgewatch.hooks.detectors.spikes import CatapultDetector, SpikeDetector
from edgewatch.hooks.detectors.thresholds import ThresholdDetector, adam_epsilon_dominates

__all__ = [
    "CatapultDetector",
    "Detector",
    "EdgeOfStabilityDetector",
    "EntropyCollapseDetector",
    "GrowthDetector",
    "NonFiniteDetector",
    "SpikeDetector",
    "ThresholdDetector",
    "adam_epsilon_dominates",
    "attention_entropy_collapse",
    "attention_logit_growth",
    "output_logit_divergence",
]
