r"""A diagonally preconditioned operator, :math:`v \mapsto S^{1/2} (H + W) S^{1/2} v`.

For an update :math:`θ \leftarrow θ - η D m` with a fixed diagonal preconditioner D, stability along
an eigendirection of :math:`D^{1/2} H D^{1/2}` depends on its eigenvalue alone (:mod:`edgewatch.optimizers.stability`;
Cohen et al. 2022), so Lanczos on this operator gives the preconditioned sharpness directly. The
optional diagonal shift W is coupled weight decay (a term :math:`\tfrac{w}{2}\|θ\|^2` in the loss the
optimizer actually descends). The operator knows nothing of optimizers: the scale S and the shift W
come from :mod:`edgewatch.optimizers`.

References:
    Cohen, Ghorbani, Krishnan, Agarwal, Medapati, Badura, Suo, Cardoze, Nado, Dahl, Gilmer 2022,
    Adaptive Gradient Methods at the Edge of Stability, https://arxiv.org/abs/2207.14484
"""

from __future__ import annotations

import torch
from torch import Tensor

from edgewatch.curvature.linear import LinearOperator
from edgewatch.curvature.sharding import local_length

__all__ = ["PreconditionedOperator"]


class PreconditionedOperator:
    r""":math:`S^{1/2} (H + \mathrm{diag}(w)) S^{1/2}` around any symmetric operator H.

    Args:
        op: the symmetric operator H (flat vectors).
        scale: (n,) the diagonal S, nonnegative (zero for coordinates that never move); when
            ``op``'s parameters are sharded (FSDP2), this rank's part of it, like its vectors.
        shift: (n,) optional diagonal W added to H before scaling (sharded the same way).

    Example:
        >>> from edgewatch.curvature import MatrixOperator
        >>> H = MatrixOperator(torch.tensor([[2.0, 0.0], [0.0, 8.0]]))
        >>> P = PreconditionedOperator(H, scale=torch.tensor([4.0, 0.25]))
        >>> P(torch.tensor([1.0, 1.0]))      # diag(2·4, 8·0.25)
        tensor([8., 2.])
    """

    def __init__(self, op: LinearOperator, scale: Tensor, shift: Tensor | None = None) -> None:
        n = local_length(op)
        if scale.shape != (n,):
            raise ValueError(f"scale must have shape ({n},), got {tuple(scale.shape)}")
        if shift is not None and shift.shape != (n,):
            raise ValueError(f"shift must have shape ({n},), got {tuple(shift.shape)}")
        if not bool((scale >= 0).all()):  # one check at construction, not per product
            raise ValueError("scale must be nonnegative (it is a diagonal preconditioner)")
        self.op = op
        self.scale = scale.to(device=op.device, dtype=op.dtype)
        self.shift = None if shift is None else shift.to(device=op.device, dtype=op.dtype)
        self._root = self.scale.sqrt()

    @property
    def shape(self) -> tuple[int, int]:
        return self.op.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.op.dtype

    @property
    def local_size(self) -> int:
        """The length of the vectors held here (the inner operator's)."""
        return local_length(self.op)

    @property
    def shard_group(self) -> object:
        """The process group the inner operator's vectors are sharded over, if any."""
        return getattr(self.op, "shard_group", None)

    @property
    def device(self) -> torch.device:
        return self.op.device

    def __enter__(self) -> PreconditionedOperator:
        """A solve on this operator is a solve on the inner one (which may cache work)."""
        if hasattr(self.op, "__enter__"):
            self.op.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if hasattr(self.op, "__exit__"):
            self.op.__exit__(*exc_info)

    def __call__(self, v: Tensor) -> Tensor:
        u = self._root * v
        hu = self.op(u)
        if self.shift is not None:
            hu = hu + self.shift * u
        return self._root * hu
