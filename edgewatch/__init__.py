"""edgewatch: watch a PyTorch training run from the inside and say whether it is stable."""

__version__ = "0.1.0.dev0"

from edgewatch import curvature, distributed, hooks, loggers, names, optimizers
from edgewatch._optional import MissingExtraError
from edgewatch.hooks import Event, Monitor, Schedule, StopTraining
from edgewatch.probing import probe_from
from edgewatch.run import load_run

__all__ = [
    "Event",
    "MissingExtraError",
    "Monitor",
    "Schedule",
    "StopTraining",
    "__version__",
    "curvature",
    "distributed",
    "hooks",
    "load_run",
    "loggers",
    "names",
    "optimizers",
    "probe_from",
]
