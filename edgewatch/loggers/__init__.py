"""Loggers: where a run's metrics and events go.

The JSONL run directory is always on (:class:`JsonlLogger`); W&B, TensorBoard, MLflow and stdout
are added by spec (``loggers=["wandb", "tensorboard:tb/exp1"]``), each needing only its own
optional package, installed with its extra (``pip install 'edgewatch[wandb]'``).
"""

from edgewatch.loggers._base import LOGGERS, Logger, MultiLogger, make_logger
from edgewatch.loggers.jsonl import JsonlLogger, default_run_dir, read_jsonl
from edgewatch.loggers.stdout import StdoutLogger

__all__ = ["LOGGERS", "JsonlLogger", "Logger", "MultiLogger", "StdoutLogger", "default_run_dir", "make_logger", "read_jsonl"]
