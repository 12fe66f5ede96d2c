"""Loggers: where a run's metrics and events go.

The JSONL run directory is always on (:class:`JsonlLogger`); W&B, TensorBoard, MLflow and stdout
are added by spec (``loggers=["wandb", "tensorboard:tb/exp1"]``), each needing only its own
optional package, installed with its extra (``pip install 'edgewatch[wandb]'``), and imported
only when such a logger is created.
"""

from edgewatch.loggers._base import LOGGERS, Logger, MultiLogger, make_logger
from edgewatch.loggers.jsonl import JsonlLogger, default_run_dir, read_jsonl
from edgewatch.loggers.mlflow import MlflowLogger
from edgewatch.loggers.stdout import StdoutLogger
from edgewatch.loggers.tensorboard import TensorBoardLogger
from edgewatch.loggers.wandb import WandbLogger

__all__ = [
    "LOGGERS",
    "JsonlLogger",
    "Logger",
    "MlflowLogger",
    "MultiLogger",
    "StdoutLogger",
    "TensorBoardLogger",
    "WandbLogger",
    "default_run_dir",
    "make_logger",
    "read_jsonl",
]
