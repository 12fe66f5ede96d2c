"""Linear operators: the protocol solvers accept, and the plumbing every curvature operator shares.

A solver (Lanczos, power iteration, Hutchinson, SLQ) accepts any symmetric linear operator: a
callable ``op(v)`` on flat vectors with ``shape``, ``dtype`` and ``device``. :class:`CurvatureOperator`
owns everything a curvature matrix of a model needs besides its one per-matvec formula: choosing and
flattening the parameters θ, the fixed probe set and its size weights, moving batches to the model's
device, and running every forward pass under :func:`~edgewatch.curvature._state.probe_guard`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any, Protocol, Union, runtime_checkable

import numpy as np
import torch
import torch.utils.data
from torch import Tensor, nn
from torch.func import functional_call

from edgewatch.curvature._state import probe_guard, seed_probe
from edgewatch.curvature.sharding import fsdp_group, local, reshard
from edgewatch.distributed import DistributedProbeError, GroupSpec, probe_group, weighted_mean, world_size

__all__ = [
    "Batch",
    "CurvatureOperator",
    "LinearOperator",
    "LossFn",
    "MatrixOperator",
    "ParamSpec",
    "as_scipy_operator",
    "solver",
    "solving",
]

# What torch.utils.checkpoint says when it refuses a functional gradient (see _use_native_gradients).
_CHECKPOINTING = re.compile(r"torch\.utils\.checkpoint|use_reentrant")

Batch = Any
LossFn = Callable[[nn.Module, Batch], Tensor]
ParamSpec = Union[None, nn.Module, Iterable[Union[str, Tensor]]]


@runtime_checkable
class LinearOperator(Protocol):
    """A symmetric linear map on flat vectors, as the solvers see it."""

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def __call__(self, v: Tensor) -> Tensor: ...


class MatrixOperator:
    """A dense symmetric matrix as a :class:`LinearOperator` (quadratics, tests, small problems).

    >>> op = MatrixOperator(torch.diag(torch.tensor([3.0, 1.0])))
    >>> op(torch.tensor([1.0, 1.0]))
    tensor([3., 1.])
    """

    def __init__(self, matrix: Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix must be square, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.num_matvecs = 0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def __call__(self, v: Tensor) -> Tensor:
        self.num_matvecs += 1
        return self.matrix @ v


@contextlib.contextmanager
def solving(op: LinearOperator):
    """The span of one solve: operators that cache work between products (a gradient graph) keep
    it inside and free it after. Solvers wrap their loop in it; operators without a cache need
    nothing."""
    if hasattr(op, "__enter__"):
        with op:
            yield
    else:
        yield


def solver(function: Callable) -> Callable:
    """Decorate a solver ``f(op, ...)`` so that its whole run is one :func:`solving` span."""

    @functools.wraps(function)
    def run(op: LinearOperator, *args: Any, **kwargs: Any) -> Any:
        with solving(op):
            return function(op, *args, **kwargs)

    return run


def as_scipy_operator(op: LinearOperator) -> Any:
    """Wrap ``op`` as a float64 ``scipy.sparse.linalg.LinearOperator`` (for ``eigsh`` and peers).

    Enter the operator for the duration of the scipy solve (``with op: eigsh(...)``) so that a
    :class:`~edgewatch.curvature.hessian.HessianOperator` reuses its gradient graph.
    """
    from scipy.sparse.linalg import LinearOperator as ScipyLinearOperator

    def matvec(x: np.ndarray) -> np.ndarray:
        v = torch.as_tensor(np.ascontiguousarray(x).reshape(-1), dtype=op.dtype, device=op.device)
        return op(v).detach().to("cpu", torch.float64).numpy()

    return ScipyLinearOperator(op.shape, matvec=matvec, rmatvec=matvec, dtype=np.float64)


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
        model: the network being trained. It is never modified: probes differentiate detached
            copies of its parameters and pass copies of its buffers.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``, the training loss on one batch.
        probe: a list of batches, fixed for the life of the operator. Tensors in a batch (at any
            depth of tuples, lists and dicts) are moved to the model's device once, and floating
            tensors cast to ``dtype``.
        params: which parameters θ spans: ``None`` for all that require grad, a submodule of
            ``model`` (a per-module block), or names / parameter tensors of ``model``.
        dtype: the probe's floating dtype; default float64 for a float64 model, else float32
            (probes never run in reduced precision or under autocast).
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

    SELF_ADJOINT = True

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
        shard_group = fsdp_group(model)
        model = _unwrap(model)
        self.model = model
        self.loss_fn = loss_fn
        self.param_names = _select_parameters(model, params)
        named = dict(model.named_parameters())
        selected = [named[name] for name in self.param_names]
        # Vectors hold this rank's part of each parameter (all of it, unless FSDP2 shards it).
        self._shapes = tuple(local(p).shape for p in selected)
        self._numels = tuple(local(p).numel() for p in selected)
        self._size = sum(p.numel() for p in selected)
        if shard_group is not None:
            dtype = _sharded_dtype(selected, dtype, process_group)
        self._dtype = dtype if dtype is not None else _default_dtype(model)
        if not self._dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {self._dtype}")
        self._device = named[self.param_names[0]].device
        self.probe = _materialize_probe(probe, self._device, self._dtype)
        self.weights, self._local_total = _normalized_weights(self.probe, weights)
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
        if shard_group is not None:  # FSDP2 averages the ranks' gradients: weight each by its share
            total = torch.tensor([self._local_total], dtype=torch.float64, device=self._device)
            torch.distributed.all_reduce(total, group=shard_group)
            self._union_total = float(total)
            self._rank_weight = torch.distributed.get_world_size(shard_group) * self._local_total / self._union_total
            # Every rank runs as many sharded passes (each one collectives), however many batches it has.
            count = torch.tensor([len(self.probe)], dtype=torch.float64, device=self._device)
            torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX, group=shard_group)
            self._sharded_passes = int(count)
        self._failures: Tensor | None = None  # ranks that failed since the last check (on the device)
        self._local_error: Exception | None = None  # this rank's own failure since then

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
        else:  # already leaving by an exception: don't wait on the device for another one
            self._failures = self._local_error = None

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
            vectors = self.unflatten(self._check_flat(v)) if flat_input else self._check_tuple(v)
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
        if not _CHECKPOINTING.search(str(error)):
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
            for index, weight in self._sharded_batches():
                seed_probe(self._device, self.seed + index)
                batch_loss = self.loss_fn(self.model, self.probe[index])
                _check_scalar(batch_loss, index)
                (batch_loss * (weight * self._rank_weight)).backward()
                loss += weight * batch_loss.detach().double()
            named = dict(self.model.named_parameters())  # FSDP2's sharded ones again, after backward
            gradient = tuple(
                torch.zeros(shape, dtype=self._dtype, device=self._device) if named[name].grad is None
                else local(named[name].grad).to(self._dtype)
                for name, shape in zip(self.param_names, self._shapes)
            )
        finally:
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

    def _sharded_batches(self) -> list[tuple[int, float]]:
        """(batch, weight) for each pass of :meth:`_native_loss_and_gradient`: under FSDP2 every rank
        runs as many, a rank with fewer probe batches than another repeating its first with weight
        0, so that the collectives match up."""
        return [(i, self.weights[i]) if i < len(self.probe) else (0, 0.0) for i in range(self._sharded_passes)]

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
                _check_scalar(loss, index)
                return loss
            finally:
                reshard(self.model)
                for buffer, saved in buffers:
                    buffer.copy_(saved)

    # -- across ranks ----------------------------------------------------------------------------
    def _all_reduced(self, local: Callable[[], Tensor], length: int) -> Tensor:
        """``local()`` on this rank's shard, size-weighted and all-reduced over the process group.

        A rank whose ``local()`` raises still joins the all-reduce (with NaN and a failure flag),
        so no rank is left waiting; :meth:`_settle` raises the failure on every rank together.
        """
        try:
            values, failed = local(), False
        except Exception as error:  # noqa: BLE001 - re-raised by _settle, on every rank at once
            if self._local_error is None:
                self._local_error = error
            values, failed = torch.full((length,), float("nan"), dtype=self._dtype, device=self._device), True
        total, failures = weighted_mean(values, self._local_total, failed, self.process_group)
        self._failures = failures if self._failures is None else torch.maximum(self._failures, failures)
        return total

    def _settle(self) -> None:
        """Raise, on every rank at once, a failure any rank had since the last check.

        One host read of the all-reduced failure count: at the start and end of a solve, after a
        lone product and after :meth:`loss_and_gradient`, never per product inside a solve (a
        failed product is NaN, which stops a solve at its next step anyway).
        """
        if self._failures is None:
            return
        failures, error = self._failures, self._local_error
        self._failures = self._local_error = None
        count = int(failures.item())  # host sync, once per solve
        if count and error is not None:
            raise error
        if count:
            raise DistributedProbeError(
                f"edgewatch: the probe failed on {count} of {world_size(self.process_group)} ranks "
                "(the failing rank reports its error); every rank abandons it"
            )

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
            name: _cast(p.detach(), self._dtype)
            for name, p in self.model.named_parameters()
            if name not in selected
        }
        skipped = set()
        for prefix, module in self.model.named_modules():
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.training:
                for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                    skipped.add(f"{prefix}.{buffer}" if prefix else buffer)
        for name, buffer in self.model.named_buffers():
            frozen[name] = None if name in skipped else _cast(buffer.detach(), self._dtype).clone()
        return frozen

    def _batch_loss(
        self, index: int, params: tuple[Tensor, ...], frozen: Mapping[str, Tensor | None]
    ) -> Tensor:
        """ℓ(θ; B_index), with θ taken from ``params``; call inside :func:`probe_guard`."""
        tensors = {f"model.{name}": p for name, p in zip(self.param_names, params)}
        tensors.update({f"model.{name}": t for name, t in frozen.items()})
        seed_probe(self._device, self.seed + index)
        loss = functional_call(self._loss_module, tensors, (self.probe[index],))
        _check_scalar(loss, index)
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
        return _usable(v.to(device=self._device, dtype=self._dtype))

    def _check_tuple(self, v: Sequence[Tensor]) -> tuple[Tensor, ...]:
        if len(v) != len(self._shapes) or any(t.shape != s for t, s in zip(v, self._shapes)):
            got = [tuple(t.shape) for t in v]
            raise ValueError(
                f"expected tensors shaped like the parameters {[tuple(s) for s in self._shapes]}, "
                f"got {got}"
            )
        return tuple(_usable(t.to(device=self._device, dtype=self._dtype)) for t in v)


def _check_scalar(loss: Any, index: int) -> None:
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(
            f"loss_fn must return a scalar tensor, got {got} for probe batch {index}; reduce it, e.g. with .mean()"
        )


def _sharded_dtype(params: Sequence[Tensor], dtype: torch.dtype | None, process_group: GroupSpec) -> torch.dtype:
    """The probe dtype of an FSDP2 model: its parameters' own (a sharded model cannot be cast for a
    probe), over the ranks of its mesh."""
    own = params[0].dtype
    if dtype is not None and dtype != own:
        raise ValueError(f"an FSDP2 model is probed in its parameters' dtype ({own}), got dtype={dtype}")
    if process_group is False:  # its passes communicate over the mesh whatever the probe says
        raise ValueError("an FSDP2 model's probe spans its device mesh: process_group=False cannot keep a rank to itself")
    return own


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
    if isinstance(probe, (Tensor, Mapping)) or _is_tuple_batch(probe):
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


def _is_tuple_batch(probe: Any) -> bool:
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


def _select_parameters(model: nn.Module, params: ParamSpec) -> tuple[str, ...]:
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


def _unwrap(model: nn.Module) -> nn.Module:
    """The module that holds the parameters: through ``torch.compile`` (whose graphs have no
    double backward) and (Distributed)DataParallel wrappers, which share their parameters."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def _default_dtype(model: nn.Module) -> torch.dtype:
    dtypes = {p.dtype for p in model.parameters()}
    return torch.float64 if dtypes == {torch.float64} else torch.float32


def _cast(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def _to_device(batch: Batch, device: torch.device, dtype: torch.dtype) -> Batch:
    """A private copy of the batch on ``device``: the probe stays fixed whatever the caller does."""
    if isinstance(batch, Tensor):
        copy = _cast(batch.detach().to(device), dtype)
        return copy.clone() if copy.data_ptr() == batch.data_ptr() or copy.is_inference() else copy
    if isinstance(batch, Mapping):
        items = {k: _to_device(v, device, dtype) for k, v in batch.items()}
        try:
            return type(batch)(items)
        except TypeError:  # mappings whose constructor takes other arguments (defaultdict)
            return items
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_to_device(v, device, dtype) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device, dtype) for v in batch)
    return batch


def _usable(tensor: Tensor) -> Tensor:
    """Tensors made under ``torch.inference_mode`` cannot enter autograd; a copy made outside can."""
    return tensor.clone() if tensor.is_inference() else tensor


def _materialize_probe(probe: Iterable[Batch], device: torch.device, dtype: torch.dtype) -> list:
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


def _normalized_weights(probe: list, weights: Sequence[float] | None) -> tuple[tuple[float, ...], float]:
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
