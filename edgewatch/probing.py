"""Probe sets from data loaders: take a few batches once and keep private copies of them.

    probe = ew.probe_from(train_loader, batches=4)          # 4 batches, copied, loader untouched after
    monitor = ew.Monitor(model, optimizer, loss_fn, probe=probe)

The probe is fixed for the whole run and every curvature measurement runs the model over all of
it, so its size is the probe's cost: a few batches are enough for λ₁ (the default is
:data:`DEFAULT_BATCHES`). ``probe=`` itself takes only a list of batches; a DataLoader or any
iterable without a length passed there is refused with this function as the fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from edgewatch.curvature.probe_set import is_single_batch

__all__ = ["DEFAULT_BATCHES", "probe_from"]

#: Batches :func:`probe_from` takes unless told otherwise: enough for a stable λ₁ on a typical
#: batch size, cheap enough that a curvature solve costs a few dozen training steps.
DEFAULT_BATCHES = 4


def probe_from(loader: Iterable[Any], batches: int = DEFAULT_BATCHES, *,
               device: torch.device | str | None = None) -> list[Any]:
    """The first ``batches`` batches of ``loader``, as a list of private copies: a probe set.

    The loader is iterated once, for exactly ``batches`` batches, and never again (a loader with
    worker processes loads ``prefetch_factor × num_workers`` batches ahead, which are dropped when
    its iterator is shut down). An infinite iterable is fine. A shuffling loader gives a random
    draw, fixed from then on. Each batch keeps its structure (tensors at any depth of tuples,
    lists, dicts and namedtuples); every tensor is detached and copied, so later in-place changes
    to the loader's tensors (a reused buffer, a dataset transformed in place) never reach the
    probe, and a batch sliced out of a larger tensor does not keep that tensor alive. Numpy
    arrays are copied too; other values (numbers, strings) are kept as they are.

    Memory: the probe holds ``batches × batch size`` examples for as long as it lives, e.g. 4
    batches of 64 CIFAR images (3×32×32 float32, 12 KiB each) are 3 MiB. The Monitor (or a
    curvature operator) makes its own copy on the model's device in the probe's dtype, so the
    default ``device=None`` (the batches stay where the loader put them, usually CPU memory) keeps
    a single copy on the accelerator; pass ``device`` to use the probe elsewhere on that device.

    Args:
        loader: a ``torch.utils.data.DataLoader`` or any iterable of batches (a generator too).
        batches: how many batches to take, default :data:`DEFAULT_BATCHES` (4).
        device: where to put the copies; ``None`` keeps each tensor on its own device.

    Returns:
        A list of ``batches`` batches (fewer, with a warning, when the loader ends first).

    Raises:
        ValueError: ``batches`` is not a positive integer, or the loader yields no batch.
        TypeError: ``loader`` is a single batch (a tensor, dict or tuple of tensors) or not iterable.
    """
    _check_batches(batches)
    _check_loader(loader)
    target = torch.device(device) if device is not None else None
    taken = []
    iterator = iter(loader)
    # next() exactly `batches` times: never ask an infinite or expensive loader for one more.
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        taken.append(_private_copy(batch, target))
    del iterator  # a multi-process DataLoader iterator shuts its workers down when released
    if not taken:
        raise ValueError(f"the {type(loader).__name__} yielded no batch; give probe_from a loader with data in it")
    if len(taken) < batches:
        warnings.warn(f"edgewatch: the {type(loader).__name__} ended after {len(taken)} of the {batches} batches "
                      f"asked for; the probe has {len(taken)}", stacklevel=2)
    return taken


def _check_batches(batches: Any) -> None:
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"batches must be a positive integer (how many batches the probe takes), got {batches!r}; "
                         f"e.g. batches={DEFAULT_BATCHES}")


def _check_loader(loader: Any) -> None:
    # Iterating one batch would split it into rows or fields and make each a "batch".
    if isinstance(loader, (Tensor, Mapping)) or is_single_batch(loader):
        raise TypeError(f"probe_from takes batches from a DataLoader or another iterable of batches, got a single "
                        f"{type(loader).__name__} batch; for one batch you hold, pass probe=[batch]")
    if isinstance(loader, (str, bytes)) or not isinstance(loader, Iterable):
        raise TypeError(f"probe_from takes a DataLoader or another iterable of batches, got {type(loader).__name__}; "
                        "for a Dataset, batch it first: probe_from(DataLoader(dataset, batch_size=64))")


def _private_copy(value: Any, device: torch.device | None) -> Any:
    """``value`` with every tensor detached and copied (onto ``device`` when given)."""
    if isinstance(value, Tensor):
        return _copy_tensor(value, device)
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, Mapping):
        items = {key: _private_copy(item, device) for key, item in value.items()}
        try:
            return cast(Any, type(value))(items)
        except TypeError:  # mappings whose constructor takes other arguments (defaultdict)
            return items
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(_private_copy(item, device) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_private_copy(item, device) for item in value)
    return value


def _copy_tensor(tensor: Tensor, device: torch.device | None) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():
        moved = tensor.detach() if device is None else tensor.detach().to(device)
        # .to() copies when it moves; otherwise the result still shares the loader's storage.
        # clone() on the same device also sheds an inference-mode flag and any larger base tensor.
        if moved.device != tensor.device and not moved.is_inference():
            return moved
        return moved.clone()
