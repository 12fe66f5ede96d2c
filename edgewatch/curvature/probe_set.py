"""The probe set: the batches a curvature operator evaluates, the parameters θ it spans, and checks.

A curvature operator evaluates a fixed list of probe batches, size-weighted, over a chosen set of
the model's parameters. This module turns what a user passes into those: the batches checked
(no loader, no generator, no NaN) and moved to the model's device once, their weights, the
parameter names, the model inside its wrappers, and the probe dtype. The Monitor and the trainer
callbacks use the same checks at construction.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any, Union, cast

import torch
import torch.utils.data
from torch import Tensor, nn

__all__ = [
    "Batch", "LossFn", "ParamSpec", "check_loss_fn", "check_probe_batches", "check_scalar_loss", "check_seed",
    "check_train", "default_dtype", "is_single_batch", "materialize_probe", "normalized_weights",
    "select_parameters", "unwrap_model",
]

#: One probe batch: whatever ``loss_fn(model, batch)`` takes (tensors, tuples, dicts of them).
Batch = Any
#: ``loss_fn(model, batch) -> scalar tensor``, the training loss on one batch.
LossFn = Callable[[nn.Module, Batch], Tensor]
#: Which parameters θ spans: None (all that require grad), a submodule, or names / tensors.
ParamSpec = Union[None, nn.Module, Iterable[Union[str, Tensor]]]


def check_scalar_loss(loss: Any, index: int) -> None:
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(
            f"loss_fn must return a scalar tensor, got {got} for probe batch {index}; reduce it, e.g. with .mean()"
        )


# -- checks of the constructor's arguments (the Monitor and the trainer callbacks use them too) ---
def check_loss_fn(loss_fn: Any) -> None:
    """``loss_fn`` can be called as ``loss_fn(model, batch)``."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}")
    try:
        signature = inspect.signature(loss_fn)
    except (TypeError, ValueError):  # builtins and some C callables have none
        return
    try:
        signature.bind(None, None)
    except TypeError as error:
        raise ValueError(
            f"loss_fn must accept two positional arguments (model, batch), but its signature is "
            f"{signature}: {error}"
        ) from None


def check_train(train: Any) -> None:
    """``train`` is True (train mode), False (eval mode) or None (each module's mode as it is)."""
    if train is not None and not isinstance(train, bool):
        raise ValueError(f"train must be True (train mode), False (eval mode) or None (modes as they are), got {train!r}")


def check_seed(seed: Any) -> None:
    """``seed`` is an int: batch b is evaluated with dropout seed ``seed + b``."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer (the probe's dropout seed), got {seed!r}; e.g. seed=0")


def check_probe_batches(probe: Any) -> list:
    """The probe as a list of batches, refused when it is one batch, a DataLoader, an iterator or
    another iterable without a length (see :func:`edgewatch.probe_from` for those), empty, or
    holds NaN or inf. A list or tuple of batches is taken as it is.

    A probe batch is fixed for the whole run: one non-finite input value makes every curvature
    value NaN, which the ``nonfinite`` detector would report (and ``stop_on`` stop on) as if the
    training run had diverged.
    """
    _check_probe_kind(probe)
    batches = list(probe)
    if not batches:
        raise ValueError("the probe is empty; pass a list with at least one batch")
    for index, batch in enumerate(batches):
        _check_finite(index, batch)
    return batches


# The fix for probes that would be copied whole, consumed or never end.
_TAKE_A_FEW = "take a few batches once: probe=ew.probe_from(loader, batches=4)"


def _check_probe_kind(probe: Any) -> None:
    """Refuse what is not a list of batches, naming the fix.

    A single batch (a tensor, a dict, or a tuple holding tensors such as ``(x, y)``) would be
    iterated row by row or field by field and fail later inside the loss; a DataLoader would be
    copied whole onto the device; an iterator, generator or other iterable without a length
    would be consumed, or never end. A tuple of tensors is ambiguous (one ``(x, y)`` batch or
    several one-tensor batches) and is read as one batch: a list of tensors is several.
    """
    if isinstance(probe, (Tensor, Mapping)) or is_single_batch(probe):
        raise TypeError(
            f"probe must be a list of batches, got a single {_kind(probe)}; wrap it: [batch], "
            f"as in probe={_wrapped_example(probe)}"
        )
    if isinstance(probe, torch.utils.data.DataLoader):
        raise TypeError(
            f"probe must be a list of batches, got a DataLoader{_length_note(probe)}, which would be copied whole "
            f"onto the device; {_TAKE_A_FEW}"
        )
    if isinstance(probe, torch.utils.data.Dataset) and not isinstance(probe, Iterable):
        raise TypeError(
            f"probe must be a list of batches, got a {type(probe).__name__} of examples; batch it and take a few: "
            "probe=ew.probe_from(DataLoader(dataset, batch_size=64), batches=4)"
        )
    if isinstance(probe, (str, bytes)) or not isinstance(probe, Iterable):
        raise TypeError(f"probe must be a list of batches, got {type(probe).__name__}")
    if isinstance(probe, Iterator) or not isinstance(probe, Sized):
        raise TypeError(
            f"probe must be a list of batches, got a {type(probe).__name__} (an iterable without a length, which "
            f"would be consumed or never end); {_TAKE_A_FEW}"
        )


def is_single_batch(probe: Any) -> bool:
    """A tuple with a tensor directly in it is one batch such as ``(x, y)``, not a tuple of batches."""
    return isinstance(probe, tuple) and any(isinstance(item, Tensor) for item in probe)


def _kind(batch: Any) -> str:
    if isinstance(batch, tuple):
        return f"{type(batch).__name__} batch of {len(batch)}"
    return type(batch).__name__


def _wrapped_example(batch: Any) -> str:
    if isinstance(batch, Tensor):
        return "[x]"
    if isinstance(batch, tuple):  # also the fix for a tuple meant as several one-tensor batches
        return "[(x, y)] (several one-tensor batches go in a list: [x1, x2])"
    return "[batch]"


def _length_note(loader: Any) -> str:
    try:
        return f" of {len(loader)} batches"
    except TypeError:  # an IterableDataset without a length
        return ""


def _check_finite(index: int, batch: Batch) -> None:
    for where, tensor in _floating_tensors(batch, f"probe[{index}]"):
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(tensor).sum())
        what, count = ("NaN", nan) if nan else ("inf", int((~finite).sum()))
        raise ValueError(
            f"probe batch {index} contains {what} ({count} of {tensor.numel()} values of {where}); "
            "replace or clean that batch: the probe is fixed, so every curvature value would be NaN"
        )


def _floating_tensors(batch: Batch, where: str) -> Iterable[tuple[str, Tensor]]:
    """The floating (and complex) tensors of a batch, at any depth, with where each sits."""
    if isinstance(batch, Tensor):
        if batch.is_floating_point() or batch.is_complex():
            yield where, batch
    elif isinstance(batch, Mapping):
        for key, value in batch.items():
            yield from _floating_tensors(value, f"{where}[{key!r}]")
    elif isinstance(batch, (list, tuple)):
        for position, value in enumerate(batch):
            yield from _floating_tensors(value, f"{where}[{position}]")


def select_parameters(model: nn.Module, params: ParamSpec) -> tuple[str, ...]:
    named = dict(model.named_parameters())
    if params is None:
        names = [name for name, p in named.items() if p.requires_grad]
        if not names:
            raise ValueError("no parameter of the model requires grad; there is nothing to probe")
        return tuple(names)
    if isinstance(params, Tensor):
        raise TypeError("params must be a module or an iterable of names/tensors, got a Tensor; wrap it in a list")
    if isinstance(params, nn.Module):
        ids = {id(p) for p in params.parameters()}
        names = [name for name, p in named.items() if id(p) in ids]
        if not names:
            raise ValueError(f"the module {type(params).__name__} has no parameters of the model")
    else:
        by_id = {id(p): name for name, p in named.items()}
        wanted = set()
        for item in params:
            if isinstance(item, str):
                if item not in named:
                    raise ValueError(f"the model has no parameter named {item!r}")
                wanted.add(item)
            elif isinstance(item, Tensor):
                if id(item) not in by_id:
                    raise ValueError(f"a tensor of shape {tuple(item.shape)} in params is not a parameter of the model")
                wanted.add(by_id[id(item)])
            else:
                raise TypeError(f"params entries must be names or parameter tensors, got {type(item).__name__}")
        names = [name for name in named if name in wanted]
        if not names:
            raise ValueError("params is empty; pass None to probe all parameters")
    frozen = [name for name in names if not named[name].requires_grad]
    if frozen:
        raise ValueError(
            f"parameters {frozen} do not require grad; the Hessian is taken over trainable "
            "parameters only: drop them from params or set requires_grad=True"
        )
    return tuple(names)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that holds the parameters: through ``torch.compile`` (whose graphs have no
    double backward) and (Distributed)DataParallel wrappers, which share their parameters."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def default_dtype(model: nn.Module) -> torch.dtype:
    dtypes = {p.dtype for p in model.parameters()}
    return torch.float64 if dtypes == {torch.float64} else torch.float32


def cast_floating(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def _to_device(batch: Batch, device: torch.device, dtype: torch.dtype) -> Batch:
    """A private copy of the batch on ``device``: the probe stays fixed whatever the caller does."""
    if isinstance(batch, Tensor):
        copy = cast_floating(batch.detach().to(device), dtype)
        return copy.clone() if copy.data_ptr() == batch.data_ptr() or copy.is_inference() else copy
    if isinstance(batch, Mapping):
        items = {k: _to_device(v, device, dtype) for k, v in batch.items()}
        try:
            return cast(Any, type(batch))(items)
        except TypeError:  # mappings whose constructor takes other arguments (defaultdict)
            return items
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_to_device(v, device, dtype) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device, dtype) for v in batch)
    return batch


def outside_inference_mode(tensor: Tensor) -> Tensor:
    """Tensors made under ``torch.inference_mode`` cannot enter autograd; a copy made outside can."""
    return tensor.clone() if tensor.is_inference() else tensor


def materialize_probe(probe: Iterable[Batch], device: torch.device, dtype: torch.dtype) -> list:
    _check_probe_kind(probe)
    with torch.inference_mode(False):  # the copies must be usable by autograd later
        batches = [_to_device(batch, device, dtype) for batch in probe]
    # Checked after the cast: float64 data beyond float32's range becomes inf there.
    return check_probe_batches(batches)


def _batch_size(batch: Batch) -> int | None:
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.ndim > 0 else None
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        size = _batch_size(value)
        if size is not None:
            return size
    return None


def normalized_weights(probe: list, weights: Sequence[float] | None) -> tuple[tuple[float, ...], float]:
    """The weights normalized to sum 1, and their sum before (the shard's size, across ranks)."""
    if weights is None:
        sizes = [_batch_size(batch) for batch in probe]
        if any(size is None for size in sizes):
            raise TypeError(
                "cannot infer the batch size of a probe batch (no tensor with a leading dimension "
                "in it); pass weights=[...] with one weight per batch"
            )
        weights = sizes  # type: ignore[assignment]
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Iterable):
        raise TypeError(f"weights must be a list with one number per probe batch, got {type(weights).__name__}")
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise TypeError(f"weights must be numbers, one per probe batch, got {list(weights)!r}") from None
    if len(values) != len(probe):
        raise ValueError(f"weights has {len(values)} entries for {len(probe)} probe batches; give one per batch")
    total = sum(values)
    if not all(math.isfinite(w) and w >= 0 for w in values) or total <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {values}; e.g. the batch sizes")
    return tuple(w / total for w in values), total
