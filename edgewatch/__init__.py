"""edgewatch: watch a PyTorch training run from the inside and say whether it is stable."""

from edgewatch import curvature, distributed, hooks, loggers, names, optimizers
from edgewatch.extras import MissingExtraError
from edgewatch.hooks import Event, Monitor, Schedule, StopTraining
from edgewatch.probing import probe_from
from edgewatch.run import load_run
from edgewatch.version import __version__

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
