"""edgewatch: watch a PyTorch training run from the inside and say whether it is stable."""

__version__ = "0.1.0.dev0"

from edgewatch import curvature, optimizers

__all__ = ["__version__", "curvature", "optimizers"]
