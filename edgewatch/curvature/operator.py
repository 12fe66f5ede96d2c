"""The curvature operator: a matrix over a model's parameters for the probe loss, applied to vectors.

:class:`CurvatureOperator` owns everything a curvature matrix of a model needs besides its one
per-product formula: flattening θ, the probe set and its weights (:mod:`.probe_set`), running every
forward pass under :func:`~edgewatch.curvature._state.probe_guard`, gradients through the model's
own passes where functional ones cannot run (FSDP2, activation checkpointing), and agreement across
ranks. It is one class because all of that is one object's state (the probe, θ's layout, the
process group); the parts that stand alone live beside it: the probe set, the reduction across
ranks (:class:`edgewatch.distributed.AgreedReduction`) and sharded vectors (:mod:`.sharding`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import functional_call

from edgewatch.curvature._state import probe_guard, seed_probe
from edgewatch.curvature.probe_set import (
    Batch,
    LossFn,
    ParamSpec,
    cast_floating,
    check_loss_fn,
    check_scalar_loss,
    check_seed,
    check_train,
    default_dtype,
    materialize_probe,
    normalized_weights,
    outside_inference_mode,
    select_parameters,
    unwrap_model,
)
from edgewatch.curvature.sharding import fsdp_group, local, reshard
from edgewatch.distributed import AgreedReduction, GroupSpec, probe_group

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["CHECKPOINTING", "CurvatureOperator"]

#: What torch.utils.checkpoint says when it refuses a functional gradient (see
#: :meth:`CurvatureOperator._use_native_gradients`).
CHECKPOINTING = re.compile(r"torch\.utils\.checkpoint|use_reentrant")


class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module, so ``functional_call`` can swap the model's tensors."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Batch) -> Tensor:
        return self.loss_fn(self.model, batch)


class CurvatureOperator:
    r"""Base of the curvature operators: a matrix over θ for the probe loss, applied to vectors.

    The probe loss is the size-weighted mean over a fixed list of probe batches,

    .. math::
        L(θ) = \sum_b w_b\, \ell(θ; B_b), \qquad w_b = |B_b| / \sum_{b'} |B_{b'}|,

    so a curvature matrix of :math:`L` is the same weighted sum of per-batch matrices. Subclasses
    implement :meth:`_matvec` on parameter-shaped tuples; this base flattens, validates, counts and
    guards.

    Under ``torch.distributed`` (DistributedDataParallel) each rank passes its own shard of the
    probe set and the batches of all ranks together are the probe: every product and
    :meth:`loss_and_gradient` is all-reduced, size-weighted, so that it is the one over the union
    of the shards on every rank (:mod:`edgewatch.distributed`). Every rank of the group must then
    construct the operator and call it the same number of times, as every solver here does when
    run with the same arguments; ``process_group=False`` keeps a rank to itself.

    Under FSDP2 (``fully_shard``) each rank also passes its own probe shard, but θ is sharded too:
    vectors are this rank's part of θ's coordinates (:mod:`edgewatch.curvature.sharding`;
    :attr:`local_size` elements, :attr:`shard_group` set), and gradients come from the model's own
    sharded forward and backward passes, whose reduce-scatter combines the ranks' shards (each
    rank's loss is weighted by its share of the probe examples). Only gradient-based products work
    there (``HessianOperator(method="finite_difference")``); the probe runs in the parameters' own
    dtype, and under the model's FSDP mixed-precision policy if it has one.

    Args:
        model: the network being trained. It is left as it was: probes differentiate detached
            copies of its parameters and pass copies of its buffers, or, where they shift the
            parameters or run the model's own backward (finite differences, FSDP2, activation
            checkpointing), restore parameters, ``.grad`` and buffers bit for bit afterwards.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``, the training loss on one batch.
        probe: a list of batches, fixed for the life of the operator. Tensors in a batch (at any
            depth of tuples, lists and dicts) are moved to the model's device once, and floating
            tensors cast to ``dtype``.
        params: which parameters θ spans: ``None`` for all that require grad, a submodule of
            ``model`` (a per-module block), or names / parameter tensors of ``model``.
        dtype: the probe's floating dtype; default float64 for a float64 model, else float32
            (by default probes never run in reduced precision, and never under autocast; an explicit
            ``dtype=torch.bfloat16`` is taken as asked).
        train: evaluate in train mode (the loss being optimized; BatchNorm uses batch statistics),
            in eval mode (``False``), or with every module's mode as it is (``None``: for models
            that keep some modules, e.g. a frozen BatchNorm, in eval mode while training). The
            model's own modes are restored after every call.
        seed: dropout seed. Batch ``b`` is always evaluated with seed ``seed + b``, so every matvec
            of one solve sees the same masks; the global RNG is left untouched.
        weights: per-batch weights :math:`w_b` (normalized to sum 1); by default the batch sizes,
            read from the leading dimension of the first tensor found in each batch. Under a
            process group they are normalized over the batches of all ranks.
        process_group: ``None`` (default) for the default process group when
            ``torch.distributed`` is initialized with more than one rank, ``False`` to never
            communicate, or a ``ProcessGroup``.

    Raises:
        ValueError: empty probe, a probe batch holding NaN or inf, unknown or frozen parameters,
            a ``loss_fn`` that cannot take ``(model, batch)``, ``train`` not True/False/None, a
            non-integer ``seed``, ``weights`` that are negative, non-finite, all zero or not one
            per batch.
        TypeError: ``params`` of an unsupported kind, a batch whose size cannot be inferred, a
            ``dtype`` that is not a torch dtype.
        NotImplementedError: parameters sharded other than by FSDP2 on a 1-D mesh (FSDP1, HSDP,
            tensor parallelism).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        probe: Iterable[Batch],
        params: ParamSpec = None,
        *,
        dtype: torch.dtype | None = None,
        train: bool | None = True,
        seed: int = 0,
        weights: Sequence[float] | None = None,
        process_group: GroupSpec = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_loss_fn(loss_fn)
        check_train(train)
        check_seed(seed)
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch floating dtype such as torch.float64, or None, got {dtype!r}")
        reshard(model)  # a forward without backward leaves FSDP2's root unsharded: read the sharded parameters
        shard_group = fsdp_group(model)
        model = unwrap_model(model)
        self.model = model
        self.loss_fn = loss_fn
        self.param_names = select_parameters(model, params)
        named = dict(model.named_parameters())
        selected = [named[name] for name in self.param_names]
        # Vectors hold this rank's part of each parameter (all of it, unless FSDP2 shards it).
        self._shapes = tuple(local(p).shape for p in selected)
        self._numels = tuple(local(p).numel() for p in selected)
        self._size = sum(p.numel() for p in selected)
        if shard_group is not None:
            dtype = _sharded_dtype(selected, dtype, process_group, shard_group)
        self._dtype = dtype if dtype is not None else default_dtype(model)
        if not self._dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {self._dtype}")
        self._device = named[self.param_names[0]].device
        self.probe = materialize_probe(probe, self._device, self._dtype)
        self.weights, self._local_total = normalized_weights(self.probe, weights)
        self.train = train
        self.seed = seed
        self.num_hvps = 0
        self._loss_module = _LossModule(model, loss_fn)
        self._sessions = 0
        #: The process group products are all-reduced over (``None``: this process alone, or FSDP2,
        #: whose backward pass combines the ranks itself).
        self.process_group = None if shard_group is not None else probe_group(process_group)
        #: The process group FSDP2 shards θ over (vectors are this rank's part), or ``None``.
        self.shard_group = shard_group
        #: Gradients come from the model's own forward and backward passes (FSDP2, and activation
        #: checkpointing once it refused the functional ones), not from ``functional_call``.
        self.native_gradients = shard_group is not None
        self._functional_proven = False  # a functional pass has run through (see _buffers_kept_until_proven)
        self._rank_weight, self._sharded_passes = 1.0, len(self.probe)
        #: True during a pass that only keeps FSDP2's collectives in step (a repeated batch, weight 0).
        self.padding_pass = False
        if shard_group is not None:  # FSDP2 averages the ranks' gradients: weight each by its share
            total = torch.tensor([self._local_total], dtype=torch.float64, device=self._device)
            torch.distributed.all_reduce(total, group=shard_group)
            self._union_total = float(total)
            self._rank_weight = torch.distributed.get_world_size(shard_group) * self._local_total / self._union_total
            # Every rank runs as many sharded passes (each one collectives), however many batches it has.
            count = torch.tensor([len(self.probe)], dtype=torch.float64, device=self._device)
            torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX, group=shard_group)
            self._sharded_passes = int(count)
        self._agreement = None if self.process_group is None else AgreedReduction(self.process_group, self._local_total)

    # -- the span of a solve ----------------------------------------------------------------------
    def __enter__(self) -> CurvatureOperator:
        """Start a solve: caches (such as a gradient graph) may live until :meth:`__exit__`."""
        self._settle()
        self._sessions += 1
        return self

    def __exit__(self, exc_type: type | None, *exc_info: object) -> None:
        self._sessions -= 1
        if self._sessions == 0:
            self.release()
        if exc_type is None:
            self._settle()
        elif self._agreement is not None:  # already leaving by an exception: don't wait for another one
            self._agreement.forget()

    def release(self) -> None:
        """Free whatever the operator caches between products (nothing, in the base)."""

    # -- the LinearOperator protocol ---------------------------------------------------------
    @property
    def size(self) -> int:
        """n, the number of parameters θ spans."""
        return self._size

    @property
    def local_size(self) -> int:
        """The length of the vectors this rank holds: n, or under FSDP2 its part of θ."""
        return sum(self._numels)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def __call__(self, v: Tensor | Sequence[Tensor]) -> Tensor | tuple[Tensor, ...]:
        """Apply the matrix to a flat vector ``(n,)`` or a parameter-shaped sequence.

        Returns the same form it was given, in the operator's dtype and on its device.
        """
        if isinstance(v, Mapping):
            raise TypeError(
                "pass a flat vector or a sequence of tensors in parameter order (op.param_names), "
                "not a mapping"
            )
        flat_input = isinstance(v, Tensor)
        # Backward passes through a retained graph still see autocast: keep it off here too.
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(self._device.type, enabled=False):
            vectors = self.unflatten(self._check_flat(v)) if isinstance(v, Tensor) else self._check_tuple(v)
            if self.process_group is None:
                result = self._matvec(vectors)
            else:
                product = self._all_reduced(lambda: self.flatten(self._matvec(vectors)), self.size)
        self.num_hvps += 1
        if self.process_group is None:
            return self.flatten(result) if flat_input else result
        if not self._sessions:  # a lone product: agree on failure now, not at the end of a solve
            self._settle()
        return product if flat_input else self.unflatten(product)

    def _matvec(self, v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The product on parameter-shaped tensors; run every forward pass inside :meth:`_probing`."""
        raise NotImplementedError

    def _probing(self) -> contextlib.AbstractContextManager:
        """The guard for forward passes through the model (modes, RNG, autocast, attention).

        A backward pass through a graph built earlier runs no module code and draws no random
        numbers (dropout masks are saved), so it needs only what :meth:`__call__` sets (grad
        enabled, autocast off): skipping the rest saves ~0.5 ms per product.
        """
        return probe_guard(self.model, self._device, train=self.train)

    def loss_and_gradient(self) -> tuple[Tensor, Tensor]:
        """L(θ) and g = ∇L(θ) on the probe set, as a 0-dim tensor and a flat vector (no ``.grad``).

        Under a process group: over the union of the ranks' shards, with one all-reduce. Under
        FSDP2: the loss over the union, and this rank's part of the gradient.
        """
        if self.process_group is None:  # (also FSDP2, where the backward combines the ranks)
            return self._local_loss_and_gradient()
        both = self._all_reduced(lambda: torch.cat([v.reshape(-1).to(self._dtype) for v in self._local_loss_and_gradient()]), self.size + 1)
        self._settle()
        return both[0], both[1:]

    def _local_loss_and_gradient(self) -> tuple[Tensor, Tensor]:
        with torch.inference_mode(False), torch.enable_grad(), self._probing():
            if not self.native_gradients:
                try:
                    with self._buffers_kept_until_proven():
                        frozen = self._frozen_tensors()
                        leaves = tuple(p.requires_grad_() for p in self._current_parameters())
                        loss = self._probe_loss(leaves, frozen)
                        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
                    gradient = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves)]
                    return loss.detach(), self.flatten(gradient)
                except RuntimeError as error:
                    self._use_native_gradients(error)
            loss, native = self._native_loss_and_gradient()
            return loss, self.flatten(native)

    @contextlib.contextmanager
    def _buffers_kept_until_proven(self) -> Iterator[None]:
        """Until a functional pass has once run through, restore the model's buffers if it raises.

        A checkpointed block recomputes its forward pass with the module's own buffers: a BatchNorm
        there updates the model's running statistics before the pass fails on a mismatch. A model
        whose functional passes ran through once never does (and its buffers are not copied again).
        """
        if self._functional_proven:
            yield
            return
        saved = [(buffer, buffer.detach().clone()) for buffer in self.model.buffers()]
        try:
            yield
        except BaseException:
            with torch.no_grad():
                for buffer, copy in saved:
                    buffer.copy_(copy)
            raise
        self._functional_proven = True

    def _use_native_gradients(self, error: RuntimeError) -> None:
        """Take gradients through the model's own passes from now on, when activation checkpointing
        (``error`` says so) refuses the functional ones; re-raise anything else.

        Checkpointing recomputes a forward pass during the backward with the module's own
        parameters and buffers, not the tensors ``functional_call`` swapped in: with
        ``use_reentrant=True`` it refuses ``torch.autograd.grad`` outright, and without reentrancy a
        BatchNorm's recomputation does not match its probe forward (running statistics are not
        passed there). The model's own passes see one model throughout.
        """
        if not CHECKPOINTING.search(str(error)):
            raise error
        self.native_gradients = True

    def _native_loss_and_gradient(self) -> tuple[Tensor, tuple[Tensor, ...]]:
        r"""L(θ) and ∇L(θ) through the model's own forward and backward passes (FSDP2, activation
        checkpointing), as parameter-shaped tensors; call inside :meth:`_probing`.

        ``loss.backward()`` writes ``.grad`` (the only place FSDP2 and reentrant checkpointing put
        gradients), so the user's ``.grad`` tensors are set aside for the duration and put back
        untouched, and the buffers a forward pass writes (BatchNorm statistics, twice when
        checkpointing recomputes) are restored from a copy, also when a pass raises.

        Under FSDP2: the loss over every rank's probe shard and this rank's part of the gradient.
        FSDP2's backward reduce-scatters the *mean* of the ranks' gradients, so rank r
        backpropagates :math:`W S_r / S` times its shard's loss (:math:`S_r` its probe examples, S
        all of them): the mean is then the size-weighted gradient over the union.
        """
        named = dict(self.model.named_parameters())
        if any(named[name].dtype != self._dtype for name in self.param_names):
            raise TypeError(
                f"gradients through the model's own passes run in its dtype: build the operator with "
                f"dtype={next(self.model.parameters()).dtype} for this model"
            )
        reshard(self.model)  # the sharded parameters, not those a forward pass left unsharded
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        set_aside = [p.grad for p in trainable]
        buffers = [(buffer, buffer.detach().clone()) for buffer in self.model.buffers()]
        try:
            for p in trainable:
                p.grad = None
            loss = torch.zeros((), dtype=torch.float64, device=self._device)
            for index, weight, padding in self._sharded_batches():
                self.padding_pass = padding
                seed_probe(self._device, self.seed + index)
                batch_loss = self.loss_fn(self.model, self.probe[index])
                check_scalar_loss(batch_loss, index)
                (batch_loss * (weight * self._rank_weight)).backward()
                loss += weight * batch_loss.detach().double()
            named = dict(self.model.named_parameters())  # FSDP2's sharded ones again, after backward
            grads = [named[name].grad for name in self.param_names]
            gradient = tuple(
                torch.zeros(shape, dtype=self._dtype, device=self._device) if grad is None else local(grad).to(self._dtype)
                for grad, shape in zip(grads, self._shapes)
            )
        finally:
            self.padding_pass = False
            reshard(self.model)
            for p, grad in zip(trainable, set_aside):
                p.grad = grad
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
        if self.shard_group is None:
            return loss.to(self._dtype), gradient
        loss *= self._local_total
        torch.distributed.all_reduce(loss, group=self.shard_group)
        return (loss / self._union_total).to(self._dtype), gradient

    def _sharded_batches(self) -> list[tuple[int, float, bool]]:
        """(batch, weight, padding) for each pass of :meth:`_native_loss_and_gradient`: under FSDP2
        every rank runs as many, a rank with fewer probe batches than another repeating its first
        with weight 0 (a padding pass), so that the collectives match up."""
        return [(i, self.weights[i], False) if i < len(self.probe) else (0, 0.0, True) for i in range(self._sharded_passes)]

    def batch_loss(self, index: int) -> Tensor:
        """ℓ(θ; B_index) at the current θ, without gradients: whether a probe batch fits the model.

        Runs under the probe guard and leaves the model as it was. Under FSDP2 it is a sharded
        forward pass, which every rank must run together, as many times.
        """
        with torch.no_grad(), self._probing():
            if not self.native_gradients:
                return self._batch_loss(index, self._current_parameters(), self._frozen_tensors())
            buffers = [(buffer, buffer.detach().clone()) for buffer in self.model.buffers()]
            try:
                seed_probe(self._device, self.seed + index)
                loss = self.loss_fn(self.model, self.probe[index])
                check_scalar_loss(loss, index)
                return loss
            finally:
                reshard(self.model)
                for buffer, saved in buffers:
                    buffer.copy_(saved)

    # -- across ranks ----------------------------------------------------------------------------
    def _all_reduced(self, local: Callable[[], Tensor], length: int) -> Tensor:
        """``local()`` on this rank's shard, size-weighted and all-reduced over the process group
        (failures agreed: :class:`~edgewatch.distributed.AgreedReduction`)."""
        assert self._agreement is not None  # only called under a process group
        return self._agreement.all_reduced(local, length, self._dtype, self._device)

    def _settle(self) -> None:
        """Raise, on every rank at once, a failure any rank had since the last check."""
        if self._agreement is not None:
            self._agreement.settle()

    # -- parameter layout ----------------------------------------------------------------------
    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """Concatenate parameter-shaped tensors into one flat vector (parameter order)."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, vector: Tensor) -> tuple[Tensor, ...]:
        """Split a flat vector into parameter-shaped views (parameter order)."""
        return tuple(
            chunk.view(shape) for chunk, shape in zip(vector.split(self._numels), self._shapes)
        )

    def parameter_slices(self) -> dict[str, slice]:
        """Where each parameter's coordinates sit in a flat vector."""
        slices, start = {}, 0
        for name, numel in zip(self.param_names, self._numels):
            slices[name] = slice(start, start + numel)
            start += numel
        return slices

    # -- evaluation, for subclasses -------------------------------------------------------------
    def _current_parameters(self) -> tuple[Tensor, ...]:
        """θ now (this rank's part under FSDP2): detached (shared storage when no cast is needed),
        in the operator's dtype."""
        named = dict(self.model.named_parameters())
        return tuple(local(named[name].detach()).to(self._dtype) for name in self.param_names)

    def _frozen_tensors(self) -> dict[str, Tensor | None]:
        """Everything ``functional_call`` needs besides θ, so the model's own tensors stay unused.

        Parameters outside θ are detached; buffers are copied, so nothing a forward pass writes
        reaches the model. The running statistics of a BatchNorm in train mode are passed as
        ``None``: they do not enter its train-mode output, and without them it updates nothing
        (which also lets forward-mode AD run, as it refuses to mutate captured tensors). Call
        inside :func:`probe_guard`, where the modes are those of the probe.
        """
        selected = set(self.param_names)
        frozen: dict[str, Tensor | None] = {
            name: cast_floating(p.detach(), self._dtype)
            for name, p in self.model.named_parameters()
            if name not in selected
        }
        skipped = set()
        for prefix, module in self.model.named_modules():
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.training:
                for field in ("running_mean", "running_var", "num_batches_tracked"):
                    skipped.add(f"{prefix}.{field}" if prefix else field)
        for name, buffer in self.model.named_buffers():
            frozen[name] = None if name in skipped else cast_floating(buffer.detach(), self._dtype).clone()
        return frozen

    def _batch_loss(
        self, index: int, params: tuple[Tensor, ...], frozen: Mapping[str, Tensor | None]
    ) -> Tensor:
        """ℓ(θ; B_index), with θ taken from ``params``; call inside :func:`probe_guard`."""
        tensors: dict[str, Tensor | None] = {f"model.{name}": p for name, p in zip(self.param_names, params)}
        tensors.update({f"model.{name}": t for name, t in frozen.items()})
        seed_probe(self._device, self.seed + index)
        loss = functional_call(self._loss_module, tensors, (self.probe[index],))  # type: ignore[arg-type]  # None: a BatchNorm statistic not passed
        check_scalar_loss(loss, index)
        return loss

    def _probe_loss(self, params: tuple[Tensor, ...], frozen: Mapping[str, Tensor | None]) -> Tensor:
        """L(θ) = Σ_b w_b ℓ(θ; B_b) over the whole probe set."""
        total = self.weights[0] * self._batch_loss(0, params, frozen)
        for index in range(1, len(self.probe)):
            total = total + self.weights[index] * self._batch_loss(index, params, frozen)
        return total

    def _state_key(self) -> tuple:
        """Changes whenever anything the probe loss depends on may have changed.

        Optimizer steps and forward passes update parameters and buffers in place, which bumps
        their version counters; the key also covers the options that change the loss.
        """
        versions = tuple(t._version for t in self.model.parameters())
        versions += tuple(t._version for t in self.model.buffers())
        return versions, self.seed, self.train, self._dtype

    # -- validation of inputs -----------------------------------------------------------------------
    def _check_flat(self, v: Tensor) -> Tensor:
        n = self.local_size
        if v.shape != (n,):
            part = "" if self.shard_group is None else " (this rank's part of the sharded parameters)"
            raise ValueError(
                f"expected a flat vector of shape ({n},){part}, got {tuple(v.shape)}; "
                "use op.flatten(tensors) for parameter-shaped input"
            )
        return outside_inference_mode(v.to(device=self._device, dtype=self._dtype))

    def _check_tuple(self, v: Sequence[Tensor]) -> tuple[Tensor, ...]:
        if len(v) != len(self._shapes) or any(t.shape != s for t, s in zip(v, self._shapes)):
            got = [tuple(t.shape) for t in v]
            raise ValueError(
                f"expected tensors shaped like the parameters {[tuple(s) for s in self._shapes]}, "
                f"got {got}"
            )
        return tuple(outside_inference_mode(t.to(device=self._device, dtype=self._dtype)) for t in v)


def _sharded_dtype(
    params: Sequence[Tensor], dtype: torch.dtype | None, process_group: GroupSpec, shard_group: ProcessGroup
) -> torch.dtype:
    """The probe dtype of an FSDP2 model: its parameters' own (a sharded model cannot be cast for a
    probe), over the ranks of its mesh."""
    own = params[0].dtype
    if dtype is not None and dtype != own:
        raise ValueError(f"an FSDP2 model is probed in its parameters' dtype ({own}), got dtype={dtype}")
    # Its passes communicate over the mesh whatever the probe says (a mesh of one rank is alone anyway).
    if process_group is False and torch.distributed.get_world_size(shard_group) > 1:
        raise ValueError("an FSDP2 model's probe spans its device mesh: process_group=False cannot keep a rank to itself")
    return own
