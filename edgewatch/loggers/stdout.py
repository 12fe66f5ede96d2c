"""A compact line per logged step (and one per event) on standard output."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, TextIO

from edgewatch import names
from edgewatch.loggers._base import Logger

__all__ = ["StdoutLogger"]

#: What a line shows, when the step has it: (metric, label).
COLUMNS = (
    (names.LOSS, "loss"),
    (names.LR, "lr"),
    (names.GRAD_NORM, "|g|"),
    (names.UPDATE_RATIO, "|Δθ|/|θ|"),
    (names.LAMBDA_MAX, "λ1"),
    (names.PRECOND_LAMBDA_MAX, "λ1(P)"),
    (names.THRESHOLD, "thr"),
    (names.STABILITY_RATIO, "r"),
    (names.LOGITS_MAX, "max|z|"),
    (names.ATTN_MAX_LOGIT, "attn"),
)


class StdoutLogger(Logger):
    """Prints ``step 16  loss 0.4121  lr 0.1  |g| 0.8312  λ1 12.31  ...`` every ``every`` logged steps.

    Events are always printed, one line each. The spec ``"stdout:50"`` prints every 50th step.

    >>> logger = StdoutLogger()
    >>> logger.log({"loss": 0.5, names.LAMBDA_MAX: 12.3456, "grad/norm/fc": 1.0}, step=16)
    [edgewatch] step 16  loss 0.5  λ1 12.35
    >>> logger.log_event({"step": 16, "kind": "eos_reached", "severity": "info", "message": "r = 0.96"})
    [edgewatch] step 16  eos_reached [info] r = 0.96
    """

    name = "stdout"

    def __init__(self, every: int | str = 1, stream: TextIO | None = None) -> None:
        self.every = int(every)
        if self.every < 1:
            raise ValueError(f"every must be a positive number of steps, got {every!r}")
        self.stream = stream
        self._count = 0

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self._count += 1
        if (self._count - 1) % self.every:
            return
        shown = [f"{label} {metrics[name]:.4g}" for name, label in COLUMNS if name in metrics]
        self._print(f"step {step}  " + "  ".join(shown))

    def log_event(self, event: Mapping[str, Any]) -> None:
        self._print(f"step {event['step']}  {event['kind']} [{event['severity']}] {event['message']}")

    def _print(self, line: str) -> None:
        stream = self.stream or sys.stdout  # looked up late, so redirection (and doctest) sees it
        print(f"[edgewatch] {line}", file=stream, flush=True)
