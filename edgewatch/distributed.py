r"""Distributed runs: which ranks a probe spans, and the few collectives it needs (torch.distributed).

Under DistributedDataParallel each rank passes its *own* shard of the probe set (its dataloader's
batches). Rank r computes, on the unwrapped module, the size-weighted product over its shard, and
one all-reduce per product combines the shards into the product over their union:

.. math::
    Hv = \frac{\sum_r S_r\, h_r}{\sum_r S_r}, \qquad
    h_r = \sum_{b \in r} \frac{|B_b|}{S_r}\, \nabla^2 \ell(θ; B_b)\, v, \qquad
    S_r = \sum_{b \in r} |B_b|,

which is exactly :math:`\sum_b w_b \nabla^2 \ell(θ; B_b) v` with :math:`w_b = |B_b| / \sum_{b'} |B_{b'}|`
over all batches of all ranks (:class:`~edgewatch.curvature.operator.CurvatureOperator`). The all-reduced vector carries two more
entries, :math:`S_r` (so no rank needs to know the others' shard sizes in advance) and a failure
flag. The sum is the same on every rank, so every rank runs the same Lanczos iterations from the
same seed and gets the same eigenpairs, bit for bit; only rank 0 logs.

Failures in the model are agreed, never left hanging: a rank whose forward or backward pass (the
model, ``loss_fn``, autograd: where probes fail in practice) raises still takes part in the
all-reduce, contributing NaN and a flag. Every rank then sees NaN (a solve stops at its
next step) and the flag count, and at the end of the solve every rank raises together: the failing
rank its own error, the others :class:`DistributedProbeError`. The process group's timeout
(``init_process_group(timeout=...)``) stays the backstop for a rank that dies, or that fails
outside the model's passes (say, out of memory for the solver's own vectors) and so leaves the
others waiting in their next collective.

References:
    Li et al. 2020, PyTorch Distributed: Experiences on Accelerating Data Parallel Training,
    https://arxiv.org/abs/2006.15704
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, Union

import torch
from torch import Tensor

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = [
    "AgreedReduction",
    "DistributedProbeError",
    "GroupSpec",
    "gather",
    "is_main_process",
    "max_over_ranks",
    "mean_over_ranks",
    "probe_group",
    "weighted_mean",
    "world_size",
]

#: ``None``: the default process group when one is initialized (and has more than one rank);
#: ``False``: never communicate (each rank measures its own shard alone); or a process group.
GroupSpec = Union[None, Literal[False], "ProcessGroup"]

class DistributedProbeError(RuntimeError):
    """A probe failed on another rank; every rank abandons it together (training goes on)."""


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def probe_group(process_group: GroupSpec = None) -> ProcessGroup | None:
    """The process group probes reduce over, or ``None`` for a single process.

    Args:
        process_group: ``None`` for the default group when ``torch.distributed`` is initialized,
            ``False`` to never communicate, or a process group. A group of one rank is ``None``.

    Raises:
        TypeError: anything else.

    >>> probe_group() is None            # no process group initialized here
    True
    """
    if process_group is False:
        return None
    if process_group is None:
        if not _initialized():
            return None
        process_group = torch.distributed.group.WORLD
    elif not (_initialized() and isinstance(process_group, torch.distributed.ProcessGroup)):
        raise TypeError(
            "process_group must be None (the default group, if torch.distributed is initialized), False "
            f"(no communication) or a torch.distributed ProcessGroup, got {process_group!r}"
            + ("" if _initialized() else " (torch.distributed is not initialized)")
        )
    return process_group if torch.distributed.get_world_size(process_group) > 1 else None


def world_size(group: ProcessGroup | None) -> int:
    """Ranks in ``group`` (1 for a single process)."""
    return 1 if group is None else torch.distributed.get_world_size(group)


def is_main_process() -> bool:
    """Global rank 0, or a process outside any process group: the one that logs."""
    return not _initialized() or torch.distributed.get_rank() == 0


class AgreedReduction:
    """Size-weighted all-reduces over a process group whose failures every rank raises together.

    A rank whose local computation raises still joins the all-reduce (with NaN and a failure flag),
    so no rank is left waiting; :meth:`settle` then raises, on every rank at once, the failing
    rank's own error there and :class:`DistributedProbeError` elsewhere.

    Args:
        group: the process group.
        weight: this rank's weight :math:`S_r` (its number of probe examples).
    """

    def __init__(self, group: ProcessGroup, weight: float) -> None:
        self.group, self.weight = group, weight
        self._failures: Tensor | None = None  # ranks that failed since the last settle (on the device)
        self._error: Exception | None = None  # this rank's own failure since then

    def all_reduced(self, local: Callable[[], Tensor], length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """:func:`weighted_mean` of ``local()`` ((length,) on this rank); NaN where any rank failed."""
        try:
            values, failed = local(), False
        except Exception as error:  # noqa: BLE001 - re-raised by settle(), on every rank at once
            if self._error is None:
                self._error = error
            values, failed = torch.full((length,), float("nan"), dtype=dtype, device=device), True
        total, failures = weighted_mean(values, self.weight, failed, self.group)
        self._failures = failures if self._failures is None else torch.maximum(self._failures, failures)
        return total

    def settle(self) -> None:
        """Raise, on every rank at once, a failure any rank had since the last call.

        One host read of the all-reduced failure count: at the start and end of a solve, after a
        lone product and after a gradient, never per product inside a solve (a failed product is
        NaN, which stops a solve at its next step anyway).
        """
        if self._failures is None:
            return
        failures, error = self._failures, self._error
        self.forget()
        count = int(failures.item())  # host sync, once per solve
        if count and error is not None:
            raise error
        if count:
            raise DistributedProbeError(
                f"edgewatch: the probe failed on {count} of {world_size(self.group)} ranks "
                "(the failing rank reports its error); every rank abandons it"
            )

    def forget(self) -> None:
        """Drop what is pending (when leaving by an exception already)."""
        self._failures = self._error = None


def weighted_mean(local: Tensor, weight: float, failed: bool, group: ProcessGroup) -> tuple[Tensor, Tensor]:
    r"""The size-weighted mean :math:`\sum_r S_r x_r / \sum_r S_r` over ranks, and the failure count.

    One all-reduce (sum) of ``[S_r x_r, S_r, failed_r]``. A failed rank passes NaN in ``local``,
    which every rank then sees (NaN + anything is NaN).

    Args:
        local: (m,) this rank's weighted mean :math:`x_r` over its shard.
        weight: :math:`S_r`, this rank's total weight (its number of probe examples).
        failed: this rank's local computation raised.
        group: the process group.

    Returns:
        (m,) the mean over all ranks, and a 0-dim tensor: how many ranks failed. Both stay on the
        device (no host sync).
    """
    m = local.numel()
    buffer = torch.empty(m + 2, dtype=local.dtype, device=local.device)
    torch.mul(local.reshape(-1), weight, out=buffer[:m])
    buffer[m] = weight
    buffer[m + 1] = float(failed)
    torch.distributed.all_reduce(buffer, group=group)
    return buffer[:m].div_(buffer[m]), buffer[m + 1]


def mean_over_ranks(
    value: Tensor | None, group: ProcessGroup, device: torch.device, failed: bool = False,
    extra: Sequence[float] = (),
) -> tuple[Tensor | None, Tensor, Tensor]:
    """The mean of a scalar over the ranks that have one (``None`` where this rank has none), how
    many ranks report ``failed``, and the mean of ``extra`` over the ranks, with one all-reduce
    (all stay on the device).

    Every rank must call it, with or without a value and with as many ``extra``, so the collective
    always matches up.
    """
    buffer = torch.zeros(3 + len(extra), dtype=torch.float64, device=device)
    if value is not None:
        buffer[0] = value.detach().reshape(()).to(device)
        buffer[1] = 1.0
    buffer[2] = float(failed)
    if extra:
        buffer[3:] = torch.tensor(list(extra), dtype=torch.float64)
    torch.distributed.all_reduce(buffer, group=group)
    world = torch.distributed.get_world_size(group)
    return (None if value is None else buffer[0] / buffer[1]), buffer[2], buffer[3:] / world


def max_over_ranks(values: Tensor, group: ProcessGroup) -> Tensor:
    """The elementwise maximum over ranks (one all-reduce, in place): the same on every rank."""
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX, group=group)
    return values


def gather(local: Tensor, group: ProcessGroup) -> Tensor:
    """Every rank's ``local`` (same shape everywhere), stacked: ``(world_size, *local.shape)``."""
    parts = [torch.empty_like(local) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(parts, local.contiguous(), group=group)
    return torch.stack(parts)
