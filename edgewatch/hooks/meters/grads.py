r"""Cheap per-step metrics: gradient, parameter and update norms, Adam's ε share, non-finite gradients.

One module for the per-step norms: they share the grouped multi-tensor kernels and the host reduction.

Gradients are read at the end of the backward pass that wrote them, so the norm is the one
*before* any clipping the loop applies between ``backward()`` and ``optimizer.step()``; with
gradient accumulation the last backward wins, which has the full gradient. Under
DistributedDataParallel the end of the backward comes after DDP's gradient all-reduce, so every
rank reads the global gradient, with no collective of its own. Per-parameter norms stay on the
device until the Monitor moves them, with the step's other metrics, to the host in one transfer
(:class:`HostReduction`); the sums over parameters and modules are taken there.

Norms are taken with one multi-tensor kernel (``torch._foreach_norm``) over all parameters rather
than one reduction per parameter: on a 151k-parameter CNN the gradient metrics cost 0.02 ms
instead of 0.29 ms, most of which went to counting non-finite entries. So non-finite gradients
are counted per parameter tensor, from its norm (a NaN or inf entry makes it NaN or inf).

Every floating dtype is measured, and a model may mix them: the kernel runs once per (device,
dtype) group and accumulates in the wider of the group's dtype and float32. A float64 model keeps
float64 norms; bfloat16 and float16 tensors are summed in float32, as a half-precision result
would carry a relative error of up to 2⁻⁸ (bfloat16) or overflow past 65504 (float16).

A measurement that fails never breaks the user's backward pass, and never vanishes silently
either: the gradient recorder, which runs inside the backward pass, leaves ``grad/norm`` out and
warns once per kind of failure; the parameter and update norms raise, for the Monitor to report.

Everett et al. 2024 point out that when :math:`\sqrt{\hat v} < ε` for many coordinates, Adam's ε
dominates its denominator and the update is plain SGD with step η/ε there.

References:
    Everett et al. 2024, Scaling Exponents Across Parameterizations and Optimizers,
    https://arxiv.org/abs/2407.05872
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from itertools import chain
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

from edgewatch import names
from edgewatch.curvature.sharding import local
from edgewatch.hooks.meters.blocks import module_key

__all__ = [
    "GradientRecorder", "HostReduction", "adam_epsilon_fraction", "module_of", "over_shards", "parameter_and_update_norms",
]


def module_of(name: str) -> str:
    """The module path that owns parameter ``name`` ("" for parameters of the root)."""
    return name.rpartition(".")[0]


class HostReduction(NamedTuple):
    """Per-tensor values left on the device (a 1-D tensor) and the host function that turns them,
    once transferred with the step's other metrics, into metrics. Sums over a few hundred
    per-parameter norms cost less in Python than a dozen tiny tensor operations each."""

    values: Tensor
    finish: Callable[[Sequence[float]], dict[str, float]]


def _run_after_backward(callback) -> None:
    torch.autograd.Variable._execution_engine.queue_callback(callback)


class GradientRecorder:
    """Norms of each watched parameter's gradient, read at the end of the backward pass.

    Each parameter's post-accumulate-grad hook only notes that its gradient is new; the first one
    of a backward pass queues the measurement for the end of that pass, where one
    ``torch._foreach_norm`` per dtype reads every new gradient. Set :attr:`armed` to False to skip
    the measurement of the coming backward passes (steps without cheap metrics). A measurement that
    fails is left out, with one warning per kind of failure, and never reaches the backward pass.
    """

    def __init__(self, model: nn.Module, params: list[Tensor] | None = None, module_metrics: str = "blocks",
                 clock: Callable[[], float] = time.perf_counter) -> None:
        """Watch ``params`` (default: every trainable parameter of ``model``), named as in the model;
        ``grad/norm/<module>`` per block or per leaf module, as ``module_metrics`` says
        (:mod:`~edgewatch.hooks.meters.blocks`); ``clock`` times the measurements (the budget's)."""
        self._clock = clock
        watched = {id(p) for p in params} if params is not None else None
        named = [(name, p) for name, p in model.named_parameters()
                 if p.requires_grad and (watched is None or id(p) in watched)]
        self.armed = True
        key = module_key(model, module_metrics)
        modules = [key(module_of(name)) for name, _ in named]
        self._module_names = list(dict.fromkeys(modules))
        self._module_of = [self._module_names.index(module) for module in modules]
        self._fresh: dict[int, Tensor] = {}  # parameter index -> parameter, in this backward pass
        self._queued_in: int | None = None  # the backward pass (graph task) the measurement is queued in
        self._norms: dict[int, Tensor] = {}  # parameter index -> 0-dim norm, since the last metrics()
        self.seconds = 0.0  # time spent measuring at the end of backward passes, for the budget
        self._warned: set[tuple[str, type]] = set()  # (what failed, exception type) already reported
        self._handles = [p.register_post_accumulate_grad_hook(self._hook(index)) for index, (_, p) in enumerate(named)]

    def _hook(self, index: int):
        def noted(param: Tensor) -> None:
            if not self.armed:
                return
            task = torch._C._current_graph_task_id()
            if task != self._queued_in:  # the first new gradient of this backward pass
                # (a pass that raised never ran its callback: this one queues its own)
                self._queued_in = task
                try:
                    _run_after_backward(self._after_callbacks)
                except Exception as error:  # noqa: BLE001 - a metric must never break the user's backward()
                    self._queued_in = None
                    self._warn_once("could not be scheduled for the end of a backward pass", error)
            self._fresh[index] = param

        return noted

    def _after_callbacks(self) -> None:
        # DDP queues the end of its gradient all-reduce as an end-of-backward callback during the
        # pass too, possibly after this one; a callback queued now runs after all of them.
        try:
            _run_after_backward(self._measure)
        except Exception as error:  # noqa: BLE001 - an error here would surface from backward()
            self._warn_once("could not be scheduled for the end of a backward pass", error)

    def _measure(self) -> None:
        started = self._clock()
        try:
            self._read_norms()
        finally:
            # inside the user's backward(), yet the Monitor's own time: the budget counts it so
            self.seconds += self._clock() - started

    def _read_norms(self) -> None:
        fresh, self._fresh, self._queued_in = self._fresh, {}, None
        try:
            indices = [i for i, p in fresh.items() if p.grad is not None]
            grads = [_dense(local(fresh[i].grad.detach())) for i in indices]  # type: ignore[union-attr]  # not None, above
            if grads:
                self._norms.update(zip(indices, _grouped_norms([grads], _grouped([grads]))))
        except Exception as error:  # noqa: BLE001 - a metric must never break the user's backward()
            for index in fresh:  # no stale norm from an earlier pass stands in for this one
                self._norms.pop(index, None)
            self._warn_once("could not be measured", error)

    def _warn_once(self, what: str, error: Exception) -> None:
        """Warn about a failed measurement once per recorder, kind of failure and exception type.

        A warning per backward pass would flood the log of a long run; none at all would leave
        ``grad/norm`` missing from the metrics without a word.
        """
        key = (what, type(error))
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(f"edgewatch: gradient norms {what} ({type(error).__name__}: {error}); "
                      "grad/norm is missing from the metrics", stacklevel=2)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def reduction(self, scale: float = 1.0) -> HostReduction | None:
        """The gradient norms since the last call, as one device vector finished on the host into
        ``grad/norm``, ``grad/norm/<module>`` and ``grad/nonfinite_params`` (parameter tensors whose
        gradient has a NaN or inf entry); ``scale`` (a loss scale) is divided out. None: no new ones."""
        if not self._norms:
            return None
        indices = sorted(self._norms)  # one order on every rank, for over_shards
        values = torch.stack([self._norms[i] for i in indices])
        self._norms = {}
        modules = [self._module_of[i] for i in indices]

        def finish(norms: Sequence[float]) -> dict[str, float]:
            squares = [0.0] * len(self._module_names)
            for module, norm in zip(modules, norms):
                squares[module] += (norm / scale) ** 2
            metrics = {names.GRAD_NORM: math.sqrt(sum(squares)),
                       names.GRAD_NONFINITE: float(sum(not math.isfinite(norm) for norm in norms))}
            metrics.update({names.family(names.GRAD_NORM_MODULE, module=self._module_names[m]): math.sqrt(squares[m])
                            for m in sorted(set(modules))})
            return metrics

        return HostReduction(values, finish)

    def metrics(self) -> dict[str, float]:
        """:meth:`reduction`, finished here (one transfer)."""
        reduction = self.reduction()
        return reduction.finish(reduction.values.tolist()) if reduction is not None else {}


def _dense(grad: Tensor) -> Tensor:
    return grad.coalesce().values() if grad.is_sparse else grad


Group = tuple[list[list[Tensor]], list[int]]  # parallel tensor lists of one (device, dtype), their indices


def _grouped(tensor_lists: list[list[Tensor]]) -> list[Group] | None:
    """Parallel lists (tensor i of each list shares a device and dtype, as a parameter and its
    snapshot do) split by the device and dtype of their tensors, one foreach kernel per group; None
    when the first list has one dtype, the usual case, which needs no split.

    The check reads each tensor's dtype in Python (about 0.1 µs per tensor, half the cost of the
    grouping itself, which only a mixed model pays). Tensors of one dtype on several devices are
    not split: the kernel handles them, the caller's ``torch.stack`` does not.
    """
    if len({t.dtype for t in tensor_lists[0]}) <= 1:
        return None
    return list(_group_tensors_by_device_and_dtype(tensor_lists, with_indices=True).values())  # type: ignore[arg-type]


def _grouped_norms(tensor_lists: list[list[Tensor]], groups: list[Group] | None) -> list[Tensor]:
    r""":math:`\|t\|_2` of every tensor of the parallel ``tensor_lists``, list after list, as 0-dim
    tensors of one dtype on one device (that of the first tensor); ``groups`` is their
    :func:`_grouped` split.

    One ``torch._foreach_norm`` kernel per group, accumulated in ``promote_types(dtype, float32)``:
    float64 stays float64 (float32 would keep 7 of its 16 digits), bfloat16 and float16 are summed
    in float32 (in their own dtype the result would be rounded to 8 or 11 significant bits, and a
    float16 norm overflows past 65504). A complex group is reduced in its own precision, to a real
    norm.

    One dtype is one kernel over the lists as they are. Several groups are cast to the widest
    norm dtype and to one device, so that the caller can stack them into one vector for a single
    transfer to the host: a few tensor operations per group, none per tensor.
    """
    if groups is None:
        tensors = list(chain.from_iterable(tensor_lists))
        if not tensors:
            return []
        return list(torch._foreach_norm(tensors, 2, torch.promote_types(tensors[0].dtype, torch.float32)))
    count, device = len(tensor_lists[0]), tensor_lists[0][0].device
    measured = []
    for lists, indices in groups:
        tensors = list(chain.from_iterable(lists))
        norms = torch._foreach_norm(tensors, 2, torch.promote_types(tensors[0].dtype, torch.float32))
        measured.append(([j * count + i for j in range(len(lists)) for i in indices], norms))
    common = functools.reduce(torch.promote_types, (norms[0].dtype for _, norms in measured))
    ordered: list[Tensor | None] = [None] * (count * len(tensor_lists))
    for positions, norms in measured:
        for position, norm in zip(positions, torch.stack(norms).to(device, common).unbind()):
            ordered[position] = norm
    return ordered  # type: ignore[return-value]  # every position is in exactly one group


def over_shards(reduction: HostReduction | None, group: object) -> HostReduction | None:
    r"""Norms of this rank's shards of each tensor (FSDP2) turned into norms of the whole tensors,
    :math:`\|t\| = \sqrt{\sum_r \|t_r\|^2}`, with one all-reduce; as it is without a ``group``.

    Every rank must call it at the same steps with as many tensors (they hold a shard of each).
    """
    if reduction is None or group is None:
        return reduction
    squares = reduction.values.double().square()
    torch.distributed.all_reduce(squares, group=group)
    return HostReduction(squares.sqrt(), reduction.finish)


def parameter_and_update_norms(params: list[Tensor], previous: list[Tensor] | None) -> HostReduction:
    """``param/norm``, and with the parameters before the step ``update/norm`` and ``update/ratio``.

    ``previous`` is overwritten with the update :math:`θ_{t-1} - θ_t` (its norm is the update's):
    subtracting in place allocates nothing, where a fresh difference would allocate a model's worth
    every step. Take a new snapshot before the next call.
    """
    detached = [p.detach() for p in params]
    count = len(detached)
    tensor_lists = [detached] if previous is None else [detached, previous]
    groups = _grouped(tensor_lists)
    if previous is not None and groups is None:
        torch._foreach_sub_(previous, detached)
    elif previous is not None and groups is not None:
        for (group_params, group_previous), _ in groups:  # a foreach kernel takes one dtype and device
            torch._foreach_sub_(group_previous, group_params)
    norms = _grouped_norms(tensor_lists, groups)

    def finish(values: Sequence[float]) -> dict[str, float]:
        param_norm = math.sqrt(sum(v * v for v in values[:count]))
        metrics = {names.PARAM_NORM: param_norm}
        if previous is not None:
            update = math.sqrt(sum(v * v for v in values[count:]))
            metrics[names.UPDATE_NORM] = update
            metrics[names.UPDATE_RATIO] = update / param_norm if param_norm > 0 else (0.0 if update == 0 else math.inf)
        return metrics

    return HostReduction(torch.stack(norms), finish)


def adam_epsilon_fraction(optimizer: torch.optim.Optimizer, shards: object = None) -> Tensor | None:
    r"""Share of coordinates where :math:`\sqrt{\hat v_t} < ε` (Adam and AdamW; None for others);
    over the ranks of the process group ``shards`` when the state is sharded (FSDP2). Under AMSGrad
    the step divides by the running maximum of :math:`\hat v`, which is what is compared."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return None
    below, total = [], 0
    for group in optimizer.param_groups:
        beta2, eps = group["betas"][1], group["eps"]
        states = [optimizer.state.get(p, {}) for p in group["params"]]
        moment = "max_exp_avg_sq" if group.get("amsgrad", False) else "exp_avg_sq"
        states = [state for state in states if moment in state]
        if not states:
            continue
        # √(v/(1-β2^t)) < ε  ⇔  v < ε²(1-β2^t): no per-parameter copy; one step count per group.
        bound = eps**2 * (1 - beta2 ** float(states[0]["step"]))
        below += [(local(state[moment]) < bound).sum() for state in states]
        total += sum(local(state[moment]).numel() for state in states)
    if shards is None:
        return torch.stack(below).sum() / total if total else None
    device = next(p.device for group in optimizer.param_groups for p in group["params"])  # the collective's
    counts = torch.stack([torch.stack(below).sum().double().to(device) if below else torch.zeros((), dtype=torch.float64, device=device),
                          torch.tensor(float(total), dtype=torch.float64, device=device)])
    torch.distributed.all_reduce(counts, group=shards)
    return counts[0] / counts[1] if counts[1] > 0 else None
