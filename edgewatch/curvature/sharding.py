r"""Vectors over parameters that FSDP2 shards: each rank holds its own slice, inner products are all-reduced.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) every parameter is a DTensor split along its
first dimension over the ranks of a 1-D device mesh: rank r stores the rows :math:`I_r` of each
parameter and nothing else. A vector over θ is held the same way: rank r keeps the coordinates of
its own rows, flattened in parameter order (its *local part* :math:`v_r`), so a solver's vectors
cost :math:`n/W` elements per rank instead of n. Everything elementwise (axpy, scaling by a
diagonal preconditioner read from the optimizer's equally sharded state) is local; an inner
product is a local sum and one all-reduce,

.. math::
    \langle u, v \rangle = \sum_r u_r^\top v_r,

and so is every norm and every Gram matrix the Lanczos process forms (``basis @ w`` for all basis
vectors at once: one all-reduce of m numbers). The reduced values are the same on every rank, so
every rank takes the same decisions and runs the same number of products: the collectives inside
the model's sharded forward and backward passes always match up.

Operators that hold sharded vectors say so with two attributes: ``shard_group`` (the process
group of the mesh) and ``local_size`` (the length of their local parts); every other operator
holds whole vectors, and the functions here then do exactly what a plain tensor expression would.

References:
    Zhao et al. 2023, PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel,
    https://arxiv.org/abs/2304.11277
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = [
    "all_finite", "column_norms", "fsdp_group", "inner", "is_sharded", "local", "local_length", "norm",
    "reshard", "sum_over_shards",
]

UNSUPPORTED_SHARDING = (
    "edgewatch measures FSDP2 models (torch.distributed.fsdp.fully_shard) whose trainable parameters are "
    "all sharded along dim 0 over one 1-D device mesh; {what}. FSDP1 (FullyShardedDataParallel), HSDP "
    "(2-D meshes) and tensor parallelism are not supported: monitor the run under fully_shard on a 1-D mesh, "
    "DistributedDataParallel, or a single process"
)


def fsdp_group(model: nn.Module) -> ProcessGroup | None:
    """The process group FSDP2 shards ``model``'s parameters over, or ``None`` for an unsharded model.

    Costs nothing when torch's FSDP and DTensor modules were never imported.

    Raises:
        NotImplementedError: a sharding edgewatch cannot measure (FSDP1, a 2-D mesh, a placement
            other than ``Shard(0)``, trainable parameters left unsharded or on several meshes, or
            DTensor parameters without FSDP2).
    """
    fsdp2 = False
    if "torch.distributed.fsdp" in sys.modules:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

        if any(isinstance(module, FullyShardedDataParallel) for module in model.modules()):
            raise NotImplementedError(UNSUPPORTED_SHARDING.format(what="this model is wrapped by FSDP1"))
        fsdp2 = any(isinstance(module, FSDPModule) for module in model.modules())
    if "torch.distributed.tensor" not in sys.modules:
        return None
    from torch.distributed.tensor import DTensor, Shard

    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    sharded = [(name, p) for name, p in trainable if isinstance(p, DTensor)]
    if not sharded and not fsdp2:
        return None
    if not fsdp2:
        raise NotImplementedError(UNSUPPORTED_SHARDING.format(what=f"{sharded[0][0]} is a DTensor outside FSDP2"))
    if len(sharded) != len(trainable):
        plain = next(name for name, p in trainable if not isinstance(p, DTensor))
        raise NotImplementedError(UNSUPPORTED_SHARDING.format(
            what=f"{plain} is not sharded (call fully_shard on the root module too)"))
    meshes = {p.device_mesh for _, p in sharded}  # equal meshes compare equal (one per fully_shard call)
    for name, p in sharded:
        if p.device_mesh.ndim != 1 or tuple(p.placements) != (Shard(0),):
            raise NotImplementedError(UNSUPPORTED_SHARDING.format(
                what=f"{name} is placed {tuple(p.placements)} on a {p.device_mesh.ndim}-D mesh"))
    if len(meshes) != 1:
        raise NotImplementedError(UNSUPPORTED_SHARDING.format(what="the parameters sit on several meshes"))
    return next(iter(meshes)).get_group()


def reshard(model: nn.Module) -> None:
    """Free the unsharded parameters FSDP2 still holds after a forward pass without backward.

    FSDP2 keeps the root module's parameters unsharded after its forward pass (the backward would
    need them at once); while they are, ``model.parameters()`` yields the unsharded tensors, not
    the sharded ones the optimizer holds. A probe calls this around its passes so that everyone
    sees the sharded parameters again.
    """
    if "torch.distributed.fsdp" not in sys.modules:
        return
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a DTensor (without importing torch.distributed.tensor when unused)."""
    if "torch.distributed.tensor" not in sys.modules:
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local(tensor: Tensor) -> Tensor:
    """This rank's slice of a DTensor (sharing its storage: in-place changes reach the DTensor);
    any other tensor as it is."""
    if not is_sharded(tensor):
        return tensor
    with torch.no_grad():
        return cast(Any, tensor).to_local()


def local_length(op: Any) -> int:
    """How many elements of a vector over the operator's parameters this rank holds."""
    return getattr(op, "local_size", op.shape[0])


def sum_over_shards(op: Any, value: Tensor) -> Tensor:
    """``value`` (local sums) summed over the ranks ``op`` is sharded over, in place; as it is otherwise."""
    group = getattr(op, "shard_group", None)
    if group is not None:
        torch.distributed.all_reduce(value, group=group)
    return value


def inner(op: Any, a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` over the whole vectors: (n,)·(n,) gives a scalar, (m, n)@(n,) the m inner products,
    (m, n)@(n, p) a Gram block; one all-reduce when ``op`` is sharded."""
    return sum_over_shards(op, a @ b)


def norm(op: Any, v: Tensor) -> Tensor:
    """The Euclidean norm of the whole vector ``v``."""
    if getattr(op, "shard_group", None) is None:
        return torch.linalg.vector_norm(v)
    return inner(op, v, v).sqrt()


def column_norms(op: Any, vectors: Tensor) -> Tensor:
    """The norm of each whole column of ``vectors`` (n, j)."""
    if getattr(op, "shard_group", None) is None:
        return torch.linalg.vector_norm(vectors, dim=0)
    return sum_over_shards(op, vectors.pow(2).sum(dim=0)).sqrt()


def all_finite(op: Any, tensor: Tensor) -> bool:
    """Whether every entry of ``tensor`` is finite on every rank ``op`` is sharded over (one host
    read; the same answer everywhere, so that every rank takes the same branch)."""
    finite = torch.isfinite(tensor).all()
    if getattr(op, "shard_group", None) is None:
        return bool(finite)
    return not bool(sum_over_shards(op, (~finite).to(torch.float32).reshape(1)))
