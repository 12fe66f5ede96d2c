r"""Hessian-vector products of a scalar function of a tuple of tensors, three ways.

The first two compute :math:`Hv = \nabla^2 f(θ)\, v` exactly (up to rounding) without forming H:

* double backward (Pearlmutter 1994): :math:`g = \nabla f(θ)` with ``create_graph=True``, then
  :math:`Hv = \nabla_θ (g^\top v)`; :class:`GradientGraph` keeps the graph of g so that every further
  HVP at the same θ is a single backward pass (measured here: ~1.5 gradients per HVP instead of
  ~2.4-2.6, ``benchmarks/perf/costs.py``);
* forward-over-reverse: ``torch.func.jvp(torch.func.grad(f), (θ,), (v,))``, no retained graph.

The third needs gradients only, for models without double backward or forward-mode AD (fused
attention kernels, sharded or checkpointed models): central differences of the gradient,

.. math::
    D_h v = \frac{\nabla f(θ + hv) - \nabla f(θ - hv)}{2h}
    = Hv + \frac{h^2}{6} \nabla^4 f(θ)[v, v, v, \cdot] + O(h^4) + O\!\left(\frac{\mathrm{eps}\, G}{h}\right),

with G the scale of the roundings in one gradient, combined by Richardson extrapolation into

.. math::
    R_h v = \frac{4 D_h v - D_{2h} v}{3} = Hv + O(h^4) + O\!\left(\frac{\mathrm{eps}\, G}{h}\right),

four gradients per product. Along the sharp directions the solvers converge to, the h² term of a
plain central difference dominates in float32 at any step that keeps the rounding small: at the
top eigenvector, :math:`D_h` erred by 1.4e-2 (a small GPT-2) and 3.3e-3 (an MLP with BatchNorm)
relative, :math:`R_{h/2}` by 3.8e-5 and 1.7e-5. :func:`finite_difference_step` chooses h;
:func:`hvp_finite_difference` perturbs the parameters in place and restores them from a copy.

The inner derivative is never built with ``jacrev``: in torch 2.13 ``jvp(jacrev(f))`` returns wrong
HVPs when a LayerNorm's input depends on a differentiated parameter (≈25% relative error in the
LayerNorm rows, float64 too; tested in ``tests/curvature/test_hessian.py``).

References:
    Pearlmutter 1994, Fast Exact Multiplication by the Hessian, https://doi.org/10.1162/neco.1994.6.1.147
    Nocedal & Wright, Numerical Optimization (2nd ed., 2006), section 8.1 (finite differences)
    Knoll & Keyes 2004, Jacobian-free Newton-Krylov methods, https://doi.org/10.1016/j.jcp.2003.08.010
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "GradientGraph",
    "finite_difference_step",
    "hvp_double_backward",
    "hvp_finite_difference",
    "hvp_forward_over_reverse",
]

ScalarFn = Callable[[tuple[Tensor, ...]], Tensor]
GradientFn = Callable[[], Sequence[Tensor]]


class GradientGraph:
    r"""The graph of :math:`g = \nabla f(θ)` at one θ, reused for any number of HVPs.

    Holds the activations of the forward pass and of the first backward pass until released, so
    it trades memory for ~40% fewer FLOPs per HVP. ``.grad`` is never written: derivatives are
    taken with :func:`torch.autograd.grad` with respect to detached leaves.

    >>> f = lambda p: (p[0] ** 3).sum()           # H = diag(6 θ)
    >>> graph = GradientGraph(f, (torch.tensor([1.0, 2.0]),))
    >>> graph.hvp((torch.tensor([1.0, 1.0]),))
    (tensor([ 6., 12.]),)
    """

    def __init__(self, fn: ScalarFn, params: Sequence[Tensor]) -> None:
        self._leaves = tuple(p.detach().requires_grad_() for p in params)
        value = fn(self._leaves)
        require_graph(value)
        grads = torch.autograd.grad(value, self._leaves, create_graph=True, allow_unused=True)
        # A gradient entry without a graph (f linear in everything, or an unused parameter) has a
        # zero Hessian row block; autograd refuses such outputs, so they are skipped.
        self._outputs = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self._grads = tuple(grads[i] for i in self._outputs)

    def hvp(self, v: Sequence[Tensor], *, retain_graph: bool = True) -> tuple[Tensor, ...]:
        """Hv for parameter-shaped ``v``; the graph survives unless ``retain_graph=False``."""
        if not self._grads:
            return tuple(torch.zeros_like(p) for p in self._leaves)
        result = torch.autograd.grad(
            self._grads,
            self._leaves,
            grad_outputs=[v[i] for i in self._outputs],
            retain_graph=retain_graph,
            allow_unused=True,
        )
        return tuple(
            torch.zeros_like(p) if r is None else r.detach() for r, p in zip(result, self._leaves)
        )


def hvp_double_backward(fn: ScalarFn, params: Sequence[Tensor], v: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """One HVP by double backward, freeing the graph afterwards.

    >>> hvp_double_backward(lambda p: (p[0] ** 3).sum(), (torch.tensor([1.0]),), (torch.tensor([2.0]),))
    (tensor([12.]),)
    """
    return GradientGraph(fn, params).hvp(v, retain_graph=False)


def hvp_forward_over_reverse(
    fn: ScalarFn, params: Sequence[Tensor], v: Sequence[Tensor]
) -> tuple[Tensor, ...]:
    """One HVP as the forward-mode derivative of the reverse-mode gradient (``jvp`` of ``grad``).

    >>> hvp_forward_over_reverse(lambda p: (p[0] ** 3).sum(), (torch.tensor([1.0]),), (torch.tensor([2.0]),))
    (tensor([12.]),)
    """
    primals = tuple(p.detach() for p in params)
    tangents = tuple(t.detach() for t in v)
    hv = torch.func.jvp(torch.func.grad(fn), (primals,), (tangents,))[1]
    return tuple(hv)



def require_graph(value: Tensor) -> None:
    """Refuse a loss that autograd cannot differentiate, naming the usual causes."""
    if not value.requires_grad:
        raise ValueError(
            "the loss does not depend on the probed parameters (it has no grad_fn); "
            "does loss_fn detach it, call .item(), or run under torch.no_grad()?"
        )


def finite_difference_step(
    params: Sequence[Tensor], v: Sequence[Tensor], *, all_sum: Callable[[Tensor], Tensor] | None = None
) -> float:
    r"""The step :math:`h = \tfrac12 \mathrm{eps}^{1/3}\,(1 + \|θ\|_{\mathrm{rms}}) / \|v\|` of
    :func:`hvp_finite_difference` (whose differences reach out to 2h).

    :math:`\mathrm{eps}^{1/3}` balances the truncation error :math:`O(h^2)` against the rounding
    error :math:`O(\mathrm{eps}/h)` of a central difference (Nocedal & Wright 2006, section 8.1):
    6.1e-6 in float64, 4.9e-3 in float32. Extrapolated, the truncation falls as h⁴, so half that
    step was measured best in float32 (relative errors at the top eigenvector: 1e-5 to 4e-5 at a
    quarter and half, 6e-4 at the whole, on a small GPT-2; 1.7e-5 at half, 2.5e-5 at the whole on
    an MLP with BatchNorm), and random directions, where rounding dominates, keep 1.4e-4 to
    1.7e-4. Dividing by :math:`\|v\|` makes the product homogeneous in
    v (:math:`D(cv) = c\,D(v)` up to rounding) and the step :math:`\|hv\| = \tfrac12\mathrm{eps}^{1/3}(1 +
    \|θ\|_{\mathrm{rms}})` the same for every direction; the factor :math:`1 +
    \|θ\|_{\mathrm{rms}}` (:math:`\|θ\|/\sqrt{n}`, a typical coordinate) is the vector form of the
    scalar rule :math:`h = c \max(1, |x|)`, so that the step stays above the roundings of θ when
    the weights are large. Scaling by :math:`1 + \|θ\|` instead (as Jacobian-free Newton-Krylov
    methods do, Knoll & Keyes 2004) made the step 4x larger on a digits MLP and the float32 error
    at its top eigenvector 20x larger (4.5e-4 against 2.3e-5 relative): the third derivatives of
    the gradient are largest along the sharp directions. Returns 0 for v = 0. ``all_sum`` sums local sums over
    the ranks when ``params`` and ``v`` are shards of the whole vectors (FSDP2).

    >>> f"{finite_difference_step((torch.zeros(2, dtype=torch.float64),), (torch.ones(1, dtype=torch.float64),)):.2e}"
    '3.03e-06'
    """
    eps = torch.finfo(params[0].dtype).eps
    count = sum(p.numel() for p in params)
    if all_sum is None:
        rms, size = _norm(params) / math.sqrt(max(count, 1)), _norm(v)
    else:  # θ and v sharded over ranks: the norms and the count of the whole vectors
        local_sums = [sum(t.double().pow(2).sum() for t in tensors) for tensors in (params, v)]
        device = params[0].device  # the collective's backend (NCCL) reduces on the device only
        totals = all_sum(torch.stack([torch.as_tensor(x, dtype=torch.float64, device=device) for x in (*local_sums, count)]))
        squares, squares_v, count = totals.tolist()
        rms, size = math.sqrt(squares / max(count, 1)), math.sqrt(squares_v)
    return 0.0 if size == 0 else 0.5 * eps ** (1 / 3) * (1 + rms) / size


def hvp_finite_difference(
    gradient: GradientFn, params: Sequence[Tensor], v: Sequence[Tensor], step: float
) -> tuple[Tensor, ...]:
    r""":math:`R_h v = (4 D_h v - D_{2h} v) / 3` with :math:`D_h v = (\nabla f(θ + hv) - \nabla f(θ - hv)) / 2h`,
    perturbing ``params`` in place: four gradients, at θ ± hv and θ ± 2hv.

    ``gradient()`` returns :math:`\nabla f` at the current contents of ``params``. The parameters
    are restored bit for bit from a copy taken before, also when ``gradient()`` raises: subtracting
    hv again would round differently (:math:`(θ + hv) - hv \ne θ` in floating point).

    >>> theta = torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> hv = hvp_finite_difference(lambda: (theta ** 3,), (theta,), (torch.ones(2, dtype=torch.float64),), 1e-4)
    >>> [round(float(x), 6) for x in hv[0]], theta.tolist()    # ∇(θ⁴/4) = θ³, H = diag(3θ²)
    ([3.0, 12.0], [1.0, 2.0])
    """
    if step == 0:
        return tuple(torch.zeros_like(p) for p in params)
    snapshot = tuple(p.detach().clone() for p in params)
    differences = []
    try:
        for h in (step, 2 * step):
            _shift(params, v, h)
            plus = tuple(gradient())
            _restore(params, snapshot)
            _shift(params, v, -h)
            minus = tuple(gradient())
            _restore(params, snapshot)
            differences.append(tuple((a - b).div_(2 * h) for a, b in zip(plus, minus)))
    finally:
        _restore(params, snapshot)
    fine, coarse = differences
    return tuple(f.mul_(4).sub_(c).div_(3) for f, c in zip(fine, coarse))


def _shift(params: Sequence[Tensor], v: Sequence[Tensor], step: float) -> None:
    with torch.no_grad():
        for p, direction in zip(params, v):
            p.add_(direction, alpha=step)


def _restore(params: Sequence[Tensor], snapshot: Sequence[Tensor]) -> None:
    with torch.no_grad():
        for p, saved in zip(params, snapshot):
            p.copy_(saved)


def _norm(tensors: Sequence[Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors])))
