"""The Monitor: attach to a training loop, measure on schedule, detect events, change nothing.

One class, longer than most modules here: its hooks share one state (the step, the budget's clock,
the snapshot for update norms, what was logged), and its parts (probes, detectors, loggers,
schedules) live in modules of their own.

    monitor = Monitor(model, optimizer, loss_fn, probe=probe_batches)
    monitor.attach()          # an optimizer step hook: the loop stays as it is
    ...                       # train; monitor.latest holds the last metrics, monitor.events what happened

After every ``optimizer.step()`` the Monitor takes the cheap metrics (gradient norms before
clipping, learning rates, parameter and update norms, Adam's ε share, non-finite counts) and, on
its curvature schedule, the curvature probe (:class:`~edgewatch.hooks.meters.curvature.CurvatureMeter`)
on the fixed probe set; the detectors turn those numbers into events. By default both schedules
follow an overhead budget (:mod:`~edgewatch.hooks.budget`): the Monitor's own time stays within
5% of the training loop's, curvature is measured at θ_0 (at :meth:`Monitor.attach`), at steps 3,
10, 30 and 100, then as the budget allows, mostly as streamed points between full solves.

Nothing it does reaches the training run: it never writes ``.grad``, parameters, buffers or
optimizer state, restores every module's mode and leaves the global RNG streams where they were.

Under ``torch.distributed`` (DistributedDataParallel) every rank builds its Monitor the same way,
each with its own probe shard. Curvature is measured on the union of the shards (products
all-reduced), gradient norms are those of the all-reduced gradient, the loss is the mean over the
ranks, so every rank holds the same metrics and its detectors raise the same events (``stop_on``
stops every rank at the same step); only global rank 0 logs. Collectives happen only on measured
steps: one scalar all-reduce (the loss) on a step with cheap metrics, the probe's own on a
curvature step (one per product, one for the loss and gradient, one all-gather for the logits).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from edgewatch import names
from edgewatch.curvature.probe_set import LossFn, unwrap_model
from edgewatch.curvature.sharding import local
from edgewatch.distributed import GroupSpec, is_main_process, mean_over_ranks, probe_group
from edgewatch.hooks.budget import PENDING_FIELDS, Budget, Kind
from edgewatch.hooks.config import CurvatureConfig
from edgewatch.hooks.detectors import (
    CatapultDetector,
    EdgeOfStabilityDetector,
    NonFiniteDetector,
    SpikeDetector,
    adam_epsilon_dominates,
    attention_entropy_collapse,
    attention_logit_growth,
    output_logit_divergence,
)
from edgewatch.hooks.detectors.base import Detector
from edgewatch.hooks.events import Event
from edgewatch.hooks.history import History
from edgewatch.hooks.meta import run_meta
from edgewatch.hooks.meters.curvature import CurvatureMeter
from edgewatch.hooks.meters.grads import (
    GradientRecorder,
    HostReduction,
    adam_epsilon_fraction,
    over_shards,
    parameter_and_update_norms,
)
from edgewatch.hooks.schedule import Schedule
from edgewatch.hooks.validation import check_every, check_monitor_settings, check_stop_on, check_trainable, curvature_schedule
from edgewatch.loggers import JsonlLogger, Logger, MultiLogger, make_logger

__all__ = ["Monitor", "StopTraining", "default_detectors"]

CurvatureSchedule = Literal["budget"] | Schedule | int | Callable[[int], bool] | None

# The Monitor's arguments that are not settings (checked on their own).
_POSITIONAL = frozenset({"self", "model", "optimizer", "loss_fn", "probe"})

# Above this projected share of training time, a fixed curvature schedule gets a warning.
_COSTLY_SCHEDULE = 0.5


class StopTraining(RuntimeError):
    """Raised from ``optimizer.step()`` when an event of a kind in ``stop_on`` occurs."""

    def __init__(self, event: Event) -> None:
        super().__init__(f"edgewatch stopped training at step {event.step}: {event.kind}: {event.message}")
        self.event = event


def default_detectors() -> list[Detector]:
    """Every built-in detector with its documented defaults (see each detector's docstring)."""
    return [
        EdgeOfStabilityDetector(),
        SpikeDetector(names.LOSS, "loss_spike"),
        SpikeDetector(names.GRAD_NORM, "grad_spike"),
        CatapultDetector(),
        NonFiniteDetector(),
        adam_epsilon_dominates(),
        attention_logit_growth(),
        output_logit_divergence(),
        attention_entropy_collapse(),
    ]


class Monitor:
    """Watches one model and optimizer; see the module docstring.

    Args:
        model, optimizer: what is trained; the optimizer must update parameters of the model.
        loss_fn: ``loss_fn(model, batch) -> scalar``, the training loss on one batch.
        probe: the fixed list of batches curvature is measured on.
        every: cheap metrics every this many steps; default (None): as the budget allows, every
            step while they cost at most half of it (a training step of a few ms or more), else
            every N-th step, the smallest N that fits, decided on measured times (so which steps
            have them can differ from run to run). An int N fixes it: ``every=1`` for every step.
        norms_every: the parameter and update norms and Adam's ε share, which read the whole
            model (a θ snapshot and three passes over it), on every this-many-th step with cheap
            metrics: default 10 (steps 1, 11, 21, … with ``every=1``), which cuts their cost
            tenfold; 1 takes them with every step's. ``update/norm`` is always one step's update.
        curvature: when to probe curvature. ``"budget"`` (default): as the overhead budget
            allows (:mod:`~edgewatch.hooks.budget`): a full solve at step 0 (at :meth:`attach`),
            points at steps 3, 10, 30 and 100, then as often as ``budget`` pays for, every 8th a
            full solve and the others streamed, and one more when a detector asks for it (the
            catapult detector, when a catapult's loss has come back down). A fixed schedule is
            followed exactly as given, with full solves: an int N (every N steps), a
            :class:`Schedule`, or a callable ``step -> bool``. ``None``: no curvature.
        budget: the share of the training loop's wall time the Monitor may spend on itself
            (cheap metrics, probes, detectors, logging), default 5%. With a fixed schedule it is
            only measured: ``monitor.overhead`` and ``monitor/overhead`` report it either way.
        history: points kept per metric in :attr:`history` (evenly thinned beyond that).
        k, tol, max_hvps, method, seed, train: how curvature is measured, one
            :class:`~edgewatch.hooks.config.CurvatureConfig` (its defaults and checks).
        detectors: the event detectors; default :func:`default_detectors`.
        callbacks: called with every :class:`Event` as it happens.
        stop_on: event kinds that stop training by raising :class:`StopTraining`.
        module_metrics: how per-module metrics (``grad/norm/<module>``,
            ``curvature/top_energy/<module>``) are keyed: ``"blocks"`` (default) sums them over
            each block, a layer of a ``ModuleList`` or ``Sequential`` (``blocks.3``) or else a
            direct child of the model (``embed``, ``head``), so a large model gives a few dozen
            keys; ``"leaf"`` keys every module that owns parameters (``blocks.3.attn.qkv``).
            See :mod:`~edgewatch.hooks.meters.blocks`.
        track_updates: keep a copy of the parameters to measure ``update/norm`` (memory: one
            model's worth).
        grad_scaler: the AMP ``GradScaler`` of the loop, if any: gradient norms are reported
            unscaled (the scale of the step's backward divided out).
        loggers: where metrics and events go besides the run directory: specs such as
            ``"wandb"``, ``"tensorboard:tb/exp1"``, ``"mlflow"``, ``"stdout"``, or
            :class:`~edgewatch.loggers.Logger` objects (see :func:`~edgewatch.loggers.make_logger`);
            one spec alone is fine too. A step is logged once, even if training rewinds to a
            checkpoint and passes it again.
        run_dir: the JSONL run directory (``meta.json``, ``metrics.jsonl``, ``events.jsonl``),
            always written: default a new directory under ``$EDGEWATCH_DIR`` (``./runs``) named
            by the time; a ``"jsonl:DIR"`` spec in ``loggers`` names it too. ``False`` turns it off.
            It is created when the first record is written. A run resumed from a checkpoint
            (``load_state_dict``) appends to it; a new run never mixes with an old one's records
            (it moves to ``DIR-2``, with a warning).
        process_group: under ``torch.distributed``, the ranks whose probe shards make up the probe
            and over which the loss is averaged: ``None`` (default) for the default process group
            when one is initialized, ``False`` for none (each rank measures alone), or a group.
            Every rank of the group must build a Monitor with the same schedules and step it
            alike.
        main_process: whether this process logs. Default: global rank 0 under an initialized
            process group, else True. Where it is False, ``loggers`` and ``run_dir`` are ignored:
            no run directory, no logger; the Monitor still measures and detects (``latest``,
            ``events``, callbacks and ``stop_on`` work on every rank).

    ``state_dict()`` holds tensors (warm-start vectors): save it with ``torch.save``.

    What a step's numbers mean: the metrics logged at step t are measured after the t-th
    ``optimizer.step()``, at θ_t, with the optimizer state of that moment (Adam's preconditioner
    P_t, bias-corrected with the optimizer's own step count): curvature, its probe loss and the
    preconditioner all at θ_t. The gradient norms and the training loss at step t are those of
    the backward pass that produced update t (at θ_{t-1}), as a training loop reports them.
    Step 0 is θ_0 before any update, measured at :meth:`attach`; an adaptive optimizer has no
    preconditioner yet, so step 0 has no preconditioned sharpness, threshold or ratio (they
    appear from step 1 on).

    Every argument is checked here, at construction (:mod:`~edgewatch.hooks.validation`), so a
    setting the probe cannot use never reaches the first probe.

    An optimizer without a stability adapter (``torch.optim.LBFGS``, a Lion implementation, your
    own ``Optimizer`` subclass) is watched all the same: curvature without a preconditioner
    (λ_1…λ_k, the directional sharpness, the gradient overlap, the top direction's modules) is
    measured; the preconditioned sharpness, the threshold and the stability ratio are skipped,
    with one warning that says how to add them (``edgewatch.optimizers.register_adapter``).

    Raises:
        ValueError: a setting out of range (``k=0``, ``tol=0``, ``max_hvps`` below ``k``, NaN,
            ...: the message names the argument, the value and the fix), an optimizer that
            updates parameters outside the model (or none of it), an optimizer whose
            parameters are all frozen, a probe batch that holds NaN or inf or does not fit the
            model (the message names it), unknown ``stop_on``.
        TypeError: a model, optimizer, loss function, detector, callback or logger of the
            wrong kind.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        probe: Iterable[Any],
        *,
        every: int | None = None,
        curvature: CurvatureSchedule = "budget",
        norms_every: int = 10,
        budget: float = 0.05,
        history: int = 2048,
        k: int = CurvatureConfig.k,
        tol: float = CurvatureConfig.tol,
        max_hvps: int = CurvatureConfig.max_hvps,
        method: str = CurvatureConfig.method,
        seed: int = CurvatureConfig.seed,
        train: bool | None = CurvatureConfig.train,
        detectors: Sequence[Detector] | None = None,
        callbacks: Sequence[Callable[[Event], None]] = (),
        stop_on: Iterable[str] = (),
        track_updates: bool = True,
        module_metrics: Literal["blocks", "leaf"] = "blocks",
        grad_scaler: torch.amp.GradScaler | None = None,
        loggers: str | Logger | Sequence[str | Logger] = (),
        run_dir: str | os.PathLike | None | Literal[False] = None,
        process_group: GroupSpec = None,
        main_process: bool | None = None,
    ) -> None:
        # Every keyword argument (the names of locals() at entry are exactly the parameters).
        check_monitor_settings({name: value for name, value in locals().items() if name not in _POSITIONAL})
        check_trainable(model, optimizer)
        self.model, self.optimizer = model, optimizer
        self.budget = Budget(budget)
        self._every = check_every(every)
        self._norms_every = check_every(norms_every, "norms_every")
        self.curvature_schedule = curvature_schedule(curvature)
        self._next_cheap = 1  # with every=None: the next step whose cheap metrics are due
        self.process_group = probe_group(process_group)
        if main_process is None:  # a rank measuring alone (process_group=False) logs its own run
            main_process = process_group is False or is_main_process()
        self.main_process = bool(main_process)
        config = CurvatureConfig(k=k, tol=tol, max_hvps=max_hvps, method=method, seed=seed, train=train)
        self.curvature = CurvatureMeter(
            model, optimizer, loss_fn, probe, config, module_metrics=module_metrics,
            process_group=False if self.process_group is None else self.process_group,
        )
        _check_probe_fits(self.curvature)
        self.detectors = list(default_detectors() if detectors is None else detectors)
        self.callbacks = list(callbacks)
        self.stop_on = set(check_stop_on(stop_on, self.detectors))
        self._step_count = 0
        self.events: list[Event] = []
        #: The last value of every metric ever measured (``latest_step``: its step).
        self.latest: dict[str, float] = {}
        self.latest_step: dict[str, int] = {}
        #: Every metric's series, ``history[name].steps`` and ``.values`` (bounded, evenly thinned).
        self.history = History(history)
        self.grad_scaler = grad_scaler
        self.track_updates = track_updates
        self._params = _optimized(optimizer)
        #: FSDP2's process group when the parameters are sharded: norms are then summed over it.
        self._shards = self.curvature.hessian.shard_group
        self._previous = [local(p).detach().clone() for p in self._params] if track_updates else None
        self._loss: Tensor | None = None
        self._named = unwrap_model(model)  # names as in the module itself, not "module.…" of a DDP wrapper
        self.module_metrics = module_metrics
        self._recorder: GradientRecorder | None = GradientRecorder(self._named, self._params, module_metrics, clock=self._clock)
        self._arm()
        self._snapshot_fresh = True  # _previous holds θ before the coming step (not yet consumed)
        self._hooks: list = []
        self._warned: set[str] = set()
        if isinstance(loggers, (str, Logger)):
            loggers = [loggers]
        if self.main_process:
            self.logger = MultiLogger(_with_run_dir([make_logger(spec) for spec in loggers], run_dir))
        else:  # one writer per run: the other ranks build no logger (no W&B run, no directory)
            self.logger = MultiLogger([])
        self._jsonl = next((lg for lg in self.logger.loggers if isinstance(lg, JsonlLogger)), None)
        self._logging = False
        self._logged_until = -1  # the last step whose records went to the loggers
        self._cheap_taken = 0  # steps with cheap metrics so far (every norms_every-th takes the norms)
        self._step_own = 0.0  # this step's own time outside curvature probes
        self._warned_schedule = False
        self._device_sync = _synchronizer(self.curvature.hessian.device)

    @property
    def every(self) -> int | None:
        """Cheap metrics every this many steps, or None when the budget paces them."""
        return self._every

    @property
    def step_count(self) -> int:
        """Optimizer steps taken; trainer integrations set it to the trainer's global step."""
        return self._step_count

    @step_count.setter
    def step_count(self, value: int) -> None:
        self._step_count = value
        self._next_cheap = min(self._next_cheap, value + 1)
        self._arm()

    def _clock(self) -> float:
        """The budget's clock (read through the budget, so that a test's fake clock set later counts too)."""
        return self.budget.clock()

    @property
    def overhead(self) -> float:
        """The Monitor's own wall time over the training loop's so far (0.05: 5% slower)."""
        return self.budget.overhead

    def _cheap_due(self, step: int) -> bool:
        if self._every is not None:
            return step % self._every == 0
        return step >= self._next_cheap

    def _norms_turn(self) -> bool:
        """Whether the coming step with cheap metrics is a ``norms_every``-th one."""
        return self._cheap_taken % (self._norms_every or 1) == 0

    def _slow_due(self, step: int) -> bool:
        """Parameter and update norms, Adam's ε share: on every ``norms_every``-th step with cheap metrics."""
        return self._cheap_due(step) and self._norms_turn()

    def _arm(self) -> None:
        """Gradients are read only in backward passes before a step with cheap metrics."""
        if self._recorder is not None:
            self._recorder.armed = self._cheap_due(self._step_count + 1)

    @property
    def run_dir(self) -> Path | None:
        """The JSONL run directory (``None`` with ``run_dir=False``); final once the first step is logged."""
        return self._jsonl.run_dir if self._jsonl is not None else None

    # -- attaching ------------------------------------------------------------------------------
    def attach(self) -> Monitor:
        """Measure after every ``optimizer.step()`` (step pre- and post-hooks); returns self.

        Under the default ``curvature="budget"``, attached before the first step (step count 0),
        it first measures θ_0 in full: curvature, the probe's loss and logits. With a fixed
        schedule, call :meth:`measure` before training for θ_0.
        """
        if not self._hooks:
            if self._recorder is None:
                self._recorder = GradientRecorder(self._named, self._params, self.module_metrics, clock=self._clock)
                self._arm()
            self._hooks = [
                self.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: self._before_step()),
                self.optimizer.register_step_post_hook(lambda optimizer, args, kwargs: void(self._after_step())),
            ]
            if self._step_count == 0 and self.curvature_schedule == "budget" and names.PROBE_LOSS not in self.latest_step:
                self._measure_now()
        return self

    def detach(self) -> None:
        """Stop measuring and remove every hook the Monitor placed."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._recorder is not None:
            self._recorder.remove()
            self._recorder = None

    def close(self) -> None:
        """Detach and close the loggers (files flushed, a W&B run the Monitor started finished)."""
        self.detach()
        if self._logging:
            self.logger.close()
            self._logging = False

    def __enter__(self) -> Monitor:
        return self.attach()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def observe(self, loss: Tensor | float) -> None:
        """The training loss of the coming step (kept on the device until it is logged)."""
        if isinstance(loss, Tensor) and loss.numel() != 1:
            raise ValueError(f"observe() takes the scalar training loss, got a tensor of shape {tuple(loss.shape)}; reduce it first")
        self._loss = loss.detach().reshape(()) if isinstance(loss, Tensor) else torch.tensor(float(loss))

    def step(self, loss: Tensor | float | None = None) -> dict[str, float]:
        """The explicit path: call after ``optimizer.step()`` instead of :meth:`attach`; returns the
        metrics measured at this step."""
        if self._hooks:
            raise RuntimeError("the Monitor is attached and measures after optimizer.step() by itself; don't call step() too")
        if loss is not None:
            self.observe(loss)
        return self._after_step()

    def measure(self) -> dict[str, float]:
        """A full curvature probe now, at the current parameters and step; logged, detected on and
        kept like any other, its time counted in the overhead. Returns its metrics.

        Under ``torch.distributed`` every rank must call it at the same step.
        """
        return self._measure_now()

    # -- measuring ------------------------------------------------------------------------------
    def _measure_now(self) -> dict[str, float]:
        self.budget.enter()
        try:
            self._start_logging()
            metrics = self._probe("full")
            return self._publish(metrics, self._step_count) if metrics else {}
        finally:
            self.budget.leave()

    def _start_logging(self) -> None:
        if not self._logging:  # meta records the step the run starts (or resumes) from
            if self.logger.loggers:
                self.logger.start(run_meta(self))
            self._logging = True

    def _before_step(self) -> None:
        """θ just before the step, for ``update/norm`` (also right after a checkpoint load)."""
        self.budget.enter()
        try:
            params = _optimized(self.optimizer)
            if len(params) != len(self._params) or any(p is not q for p, q in zip(params, self._params)):
                # parameters added or unfrozen since: watch them from the next backward on
                self._params = params
                self._previous = [local(p).detach().clone() for p in params] if self.track_updates else None
                self._snapshot_fresh = True
                if self._recorder is not None:
                    self._recorder.remove()
                    self._recorder = GradientRecorder(self._named, params, self.module_metrics, clock=self._clock)
                    self._arm()
            elif self._previous is not None and self._slow_due(self.step_count + 1):
                self._snapshot()
        finally:
            self._step_own += self.budget.leave()

    def _snapshot(self) -> None:
        """Copy θ into the buffers ``update/norm`` is measured from."""
        assert self._previous is not None  # taken only while updates are tracked
        torch._foreach_copy_(self._previous, [local(p).detach() for p in self._params])
        self._snapshot_fresh = True

    def _after_step(self) -> dict[str, float]:
        if self._device_sync is not None and self._cheap_due(self._step_count + 1):
            self._device_sync()  # one sync per measured step: the training's queued kernels are training time
        self.budget.enter()
        probe_seconds, cheap_due = 0.0, False
        try:
            self._start_logging()
            self._step_count += 1
            step = self._step_count
            metrics: dict[str, Any] = {}
            cheap_due = self._cheap_due(step)
            if cheap_due:
                slow = self._norms_turn()
                self._cheap_taken += 1
                cheap = self._guarded("metrics", lambda: self._cheap_metrics(slow))
                if self.process_group is not None:  # outside the guard above: every rank must take part
                    cheap = self._guarded("metrics", lambda: self._agreed_over_ranks(cheap))
                else:
                    self.budget.settle()
                metrics.update(cheap)
            kind = self._curvature_kind(step, cheap_due)
            if kind is not None:
                started = self.budget.clock()
                metrics.update(self._probe(kind))
                probe_seconds = self.budget.clock() - started
                if names.LOSS not in metrics and names.PROBE_LOSS in metrics:
                    metrics[names.LOSS] = metrics[names.PROBE_LOSS]
            if cheap_due and names.failed("metrics") not in metrics:
                metrics[names.MONITOR_OVERHEAD] = self.budget.overhead
            self._loss = None
            if cheap_due and self._every is None:
                self._next_cheap = step + self.budget.update_cheap_every()
            self._arm()
            if self._previous is not None and not self._hooks and self._slow_due(step + 1):
                self._snapshot()  # explicit path: no pre-step hook
            return self._publish(metrics, step) if metrics else {}
        finally:
            own = self.budget.leave() - probe_seconds + self._step_own
            self._step_own = 0.0
            if self._recorder is not None and self._recorder.seconds:
                own += self._recorder.seconds
                self.budget.reclaim(self._recorder.seconds)
                self._recorder.seconds = 0.0
            self.budget.count_step(own if cheap_due else None)

    def _curvature_kind(self, step: int, settled: bool) -> Kind | None:
        """What curvature point, if any, the schedule asks for at ``step``."""
        schedule = self.curvature_schedule
        if schedule is None:
            return None
        if isinstance(schedule, str):
            kind = self.budget.curvature_due(step, decide=settled)
            if kind is None and any(getattr(detector, "wants_curvature", False) for detector in self.detectors):
                # A detector needs λ_1 now (a catapult's loss came back down): rare by design,
                # taken whatever the pacing (its cost is counted all the same).
                kind = self.budget.next_kind()
            return kind
        return "full" if schedule(step) else None

    def _probe(self, kind: Kind) -> dict[str, Any]:
        """One curvature point, timed and counted against the budget."""
        started, hvps = self.budget.clock(), self.curvature.hessian.num_hvps
        # The probe's own backward passes (FSDP2's, through the model) are not the step's gradient.
        armed = self._recorder is not None and self._recorder.armed
        if self._recorder is not None:
            self._recorder.armed = False
        # A streamed point that turns out untrustworthy escalates to a full solve only when the
        # budget can pay for one (decided on settled times, so alike on every rank).
        escalate = kind == "full" or not isinstance(self.curvature_schedule, str) or self.budget.affords("full")
        try:
            metrics = self._guarded("curvature", lambda: self.curvature.measure(streamed=kind == "stream", escalate=escalate))
        finally:
            if self._recorder is not None:
                self._recorder.armed = armed
        seconds = self.budget.clock() - started
        done: Kind = "stream" if metrics.get(names.STREAMED) == 1.0 else "full"
        self.budget.spent(done, seconds)
        metrics[names.PROBE_SECONDS] = seconds
        metrics[names.PROBE_HVPS] = float(self.curvature.hessian.num_hvps - hvps)
        self._check_schedule_cost(seconds)
        return metrics

    def _check_schedule_cost(self, seconds: float) -> None:
        """Warn once when a fixed curvature schedule would cost more than half the training time."""
        schedule, step_seconds = self.curvature_schedule, self.budget.step_seconds
        if self._warned_schedule or isinstance(schedule, str) or schedule is None or step_seconds <= 0:
            return
        self._warned_schedule = True  # checked once, with the first known step time
        upcoming = range(self._step_count + 1, self._step_count + 1001)
        share = seconds * sum(bool(schedule(s)) for s in upcoming) / (step_seconds * len(upcoming))
        if share > _COSTLY_SCHEDULE:
            warnings.warn(
                f"edgewatch: one curvature probe takes {seconds * 1e3:.0f} ms = {seconds / step_seconds:.0f} training steps; "
                f"this fixed schedule would slow training by ~{100 * share:.0f}%. The default, curvature=\"budget\", "
                f"keeps the Monitor within budget={self.budget.fraction:g} of training time", stacklevel=4,
            )

    def _publish(self, metrics: dict[str, Any], step: int) -> dict[str, float]:
        """The step's metrics on the host: kept, logged (once per step), shown to the detectors."""
        host = _to_host(metrics)
        self.latest.update(host)
        self.latest_step.update(dict.fromkeys(host, step))
        self.history.record(host, step)
        # A step already logged (training rewound to a checkpoint in this process) is not logged twice.
        log = step > self._logged_until
        if log:
            self._logged_until = step
            self.logger.log(host, step)
        self._detect(host, step, log)
        return host

    def _cheap_metrics(self, slow: bool = True) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        if self._recorder is not None:
            scale = 1.0
            if self.grad_scaler is not None and self.grad_scaler.is_enabled():
                scale = float(self.grad_scaler.get_scale())  # the scale of this step's backward
            gradients = over_shards(self._recorder.reduction(scale), self._shards)
            if gradients is not None:
                metrics["grad/*"] = gradients
        if self._loss is not None:
            metrics[names.LOSS] = self._loss
        for index, group in enumerate(self.optimizer.param_groups):
            metrics[names.LR if index == 0 else names.family(names.LR_GROUP, index=index)] = float(group["lr"])
        if not slow:
            return metrics
        # The norms consume the snapshot; after a detach() or a failed step none is fresh.
        previous = self._previous if self._snapshot_fresh else None
        self._snapshot_fresh = False
        # A failing whole-model metric costs only itself (one warning), not grad/norm, loss and lr.
        params = [local(p) for p in self._params]  # this rank's shards under FSDP2 (their storage may move)
        metrics.update(self._guarded("param", lambda: {
            "param/*": over_shards(parameter_and_update_norms(params, previous), self._shards)}))
        fraction = self._guarded("adam", lambda: {
            names.ADAM_EPSILON_FRACTION: adam_epsilon_fraction(self.optimizer, self._shards)})
        metrics.update({name: value for name, value in fraction.items() if value is not None})
        return metrics

    def _agreed_over_ranks(self, cheap: dict[str, Any]) -> dict[str, Any]:
        """The cheap metrics with the loss averaged over the ranks, or, when they failed on any
        rank, on none; and the budget's times averaged over the ranks, so that every rank places
        its curvature points alike (one small all-reduce on every rank, one host read).

        The mean of the ranks' mean losses, as DDP's gradient is the mean of theirs; with it every
        rank's detectors see the same numbers and ``stop_on`` stops every rank at the same step.
        """
        assert self.process_group is not None  # agreed only across ranks
        loss, failures, budget = mean_over_ranks(self._loss, self.process_group, self.curvature.hessian.device,
                                                 failed=names.failed("metrics") in cheap, extra=self.budget.pending())
        host = budget.tolist()
        self.budget.settle(host[:PENDING_FIELDS])
        if failures.item():
            return {names.failed("metrics"): 1.0}
        return cheap if loss is None else {**cheap, names.LOSS: loss}

    def _guarded(self, what: str, measure: Callable[[], dict]) -> dict:
        """A probe that fails must not stop training: warn once per kind of failure, go on."""
        try:
            return measure()
        except Exception as error:  # noqa: BLE001 - the training run matters more than a metric
            if what == "curvature":  # a failed solve leaves no warm start worth keeping
                self.curvature.vectors = self.curvature.preconditioned_vectors = None
            key = f"{what}:{type(error).__name__}"
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn(f"edgewatch: the {what} probe failed at step {self.step_count} "
                              f"({type(error).__name__}: {error}); training continues", stacklevel=3)
            return {names.failed(what): 1.0}

    def _detect(self, metrics: dict[str, float], step: int, log: bool) -> None:
        for detector in self.detectors:
            for event in detector.update(metrics, step):
                self.events.append(event)
                if log:
                    self.logger.log_event(event.to_dict())
                for callback in self.callbacks:
                    callback(event)
                if event.kind in self.stop_on:
                    raise StopTraining(event)

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Step count, detector histories, warm-start vectors and the budget's accounts: a resumed
        run continues as if never stopped (:attr:`history` is not saved; the run directory has it)."""
        return {
            "step_count": self.step_count,
            "budget": self.budget.state_dict(),
            "cheap_taken": self._cheap_taken,
            "detectors": [d.state_dict() for d in self.detectors],
            "curvature": self.curvature.state_dict(),
            "events": [e.to_dict() for e in self.events],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.budget.load_state_dict(state.get("budget", {}))
        self._cheap_taken = int(state.get("cheap_taken", 0))
        self._next_cheap = 0  # cheap metrics right after the resume, then the budget's cadence
        self.step_count = int(state.get("step_count", 0))
        for detector, detector_state in zip(self.detectors, state.get("detectors", [])):
            detector.load_state_dict(detector_state)
        self.curvature.load_state_dict(state.get("curvature", {}))
        if self._previous is not None:  # the next update is measured from the loaded parameters
            self._snapshot()
        self.events = [Event(**{**e, "values": {k: float(v) for k, v in e["values"].items()}}) for e in state.get("events", [])]


def _to_host(metrics: dict[str, Any]) -> dict[str, float]:
    """Every metric as a Python float, with one device-to-host transfer for all tensors; a
    :class:`~edgewatch.hooks.meters.grads.HostReduction` is finished into its metrics on the host."""
    host: dict[str, float] = {}
    names, reductions = [], []
    for name, value in metrics.items():
        if isinstance(value, HostReduction):
            reductions.append(value)
        elif isinstance(value, Tensor):
            names.append(name)
        else:
            host[name] = float(value)
    if names or reductions:
        device = (metrics[names[0]] if names else reductions[0].values).device
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        pieces = [metrics[name].detach().reshape(1) for name in names] + [r.values.detach().reshape(-1) for r in reductions]
        values = torch.cat([piece.to(device, dtype) for piece in pieces]).cpu().tolist()
        host.update(zip(names, values))
        offset = len(names)
        for reduction in reductions:
            size = reduction.values.numel()
            host.update(reduction.finish(values[offset:offset + size]))
            offset += size
    return host


def _with_run_dir(loggers: list[Logger], run_dir: str | os.PathLike | None | Literal[False]) -> list[Logger]:
    """The loggers with the JSONL run directory first, unless ``run_dir=False``."""
    named = [logger for logger in loggers if isinstance(logger, JsonlLogger)]
    if run_dir is False:
        return loggers
    if named and run_dir is not None:
        raise ValueError(f"the run directory is given twice: run_dir={str(run_dir)!r} and a jsonl logger for {str(named[0].run_dir)!r}")
    return loggers if named else [JsonlLogger(run_dir), *loggers]


def _optimized(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The parameters the optimizer updates, in its order."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def _synchronizer(device: torch.device) -> Callable[[], None] | None:
    """A device sync for accelerators whose kernels run asynchronously (None on the CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


def _check_probe_fits(probe: CurvatureMeter) -> None:
    hessian = probe.hessian
    # Under FSDP2 each check is a sharded pass: every rank runs as many (repeating its last batch).
    passes = getattr(hessian, "_sharded_passes", len(hessian.probe))
    for index in (min(i, len(hessian.probe) - 1) for i in range(passes)):
        try:
            hessian.batch_loss(index)
        except ValueError:  # already one of edgewatch's own clear messages
            raise
        except Exception as error:  # noqa: BLE001 - any failure here is the probe not fitting
            raise ValueError(
                f"probe batch {index} does not fit the model: loss_fn(model, probe[{index}]) raised "
                f"{type(error).__name__}: {error}"
            ) from error


def void(_: object) -> None:
    """Drop a value: optimizer hooks must return None."""
