"""TensorBoard: scalars at the optimizer step, events and the run's meta as text.

Every metric is a scalar whose ``global_step`` is the optimizer step, named with the prefix
``edgewatch/`` (``edgewatch/curvature/lambda_max``; :func:`edgewatch.names.prefixed`), as in every
logger outside the run directory: a log directory the training script also writes to (or runs
compared side by side) keeps the script's own ``loss`` apart from edgewatch's, and TensorBoard
shows all of edgewatch's in one ``edgewatch`` section. NaN and infinity are written as they are,
TensorBoard shows them as gaps. An event is a text summary tagged ``edgewatch/events/<kind>`` at
its step: ``**warning** <message>`` followed by its values, so the Text tab lists every
``loss_spike`` in order. The run's meta is one text summary, ``edgewatch/meta``, at its first step
(TensorBoard's hparams plugin is not used: it wants flat scalar hyperparameters and a separate
run directory). Scalars are flushed by the writer every ``flush_secs``; events flush at
once, since they are rare and are what a person looks for after a crash.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgewatch import names
from edgewatch.extras import require
from edgewatch.loggers._base import Logger
from edgewatch.loggers.jsonl import runs_root

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger(Logger):
    """Writes a TensorBoard event file with ``torch.utils.tensorboard.SummaryWriter``.

    Args:
        log_dir: the directory of the event file; default ``$EDGEWATCH_DIR/tensorboard/<time>``
            (``./runs/tensorboard/<time>``), so ``tensorboard --logdir runs/tensorboard`` shows
            every run side by side.
        flush_secs: how often the writer flushes scalars to disk.

    Raises:
        edgewatch.MissingExtraError: the ``tensorboard`` package is not installed.
    """

    name = "tensorboard"

    def __init__(self, log_dir: str | os.PathLike | None = None, flush_secs: int = 30) -> None:
        require("tensorboard", "tensorboard", what="the TensorBoard logger")  # torch's writer needs it
        if log_dir is None:
            log_dir = runs_root() / "tensorboard" / time.strftime("%Y%m%d-%H%M%S")
        self.log_dir = Path(log_dir)
        self.flush_secs = flush_secs
        self.writer: Any = None

    def start(self, meta: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir), flush_secs=self.flush_secs)
        text = json.dumps(meta, indent=2, default=str)
        # Indented four spaces: a Markdown code block, shown as written rather than reflowed.
        self.writer.add_text(names.prefixed("meta"), "\n".join("    " + line for line in text.splitlines()), int(meta.get("step", 0)))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(names.prefixed(name), value, global_step=step)

    def log_event(self, event: Mapping[str, Any]) -> None:
        values = ", ".join(f"{name} = {value}" for name, value in event.get("values", {}).items())
        text = f"**{event['severity']}** {event['message']}" + (f"  \n{values}" if values else "")
        self.writer.add_text(names.prefixed(f"events/{event['kind']}"), text, global_step=int(event["step"]))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
