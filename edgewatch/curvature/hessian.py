r"""The Hessian of the probe loss as a linear operator, :math:`v \mapsto Hv`.

One module for the three ways to apply it and the choice between them ("auto", its fallbacks and
their cache): they share the operator's state (the kept gradient graph, the measured error).

:math:`H = \nabla^2 L(θ) = \sum_b w_b \nabla^2 \ell(θ; B_b)` (:class:`~edgewatch.curvature.operator.CurvatureOperator`), applied by one of
the methods of :mod:`edgewatch.curvature.hvp`. ``method="auto"`` measures both once per model
and loss and keeps the faster one that agrees with double backward; under ``torch.distributed``
every rank keeps the same one (the slowest rank's timings decide). On the CPU with the gradient
graph reused it takes double backward without measuring: there a product reusing the graph is
one backward pass, and forward-over-reverse (a forward and a backward pass with dual numbers)
was 1.5-2.9x slower on every model ``benchmarks/perf/costs.py`` tried, while the measurement
itself costs about 12 products, as much as a whole solve on a small model.

``method="finite_difference"`` takes central differences of ordinary gradients, for models whose
backward has no double backward (``"auto"`` turns to it only when its first product fails so). Its first product also measures its
own error (:attr:`HessianOperator.fd_error`), which :func:`~edgewatch.curvature.noise.hvp_noise`
adds to the noise floor of every residual.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import re
import time
import warnings
import weakref
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from edgewatch.curvature._state import probe_guard
from edgewatch.curvature.hvp import (
    GradientFn,
    GradientGraph,
    finite_difference_step,
    hvp_double_backward,
    hvp_finite_difference,
    hvp_forward_over_reverse,
    require_graph,
)
from edgewatch.curvature.noise import finite_difference_floor, resolves
from edgewatch.curvature.operator import CHECKPOINTING, CurvatureOperator
from edgewatch.curvature.probe_set import Batch, LossFn, ParamSpec
from edgewatch.curvature.sharding import local, reshard, sum_over_shards
from edgewatch.distributed import GroupSpec, max_over_ranks

__all__ = ["HVP_METHODS", "HessianOperator"]

HVP_METHODS = ("double_backward", "forward_over_reverse", "finite_difference")


class _Choices:
    """The method "auto" chose per model, loss function and settings, so that new operators on the
    same model (one per probe, say) do not time again.

    The model is held weakly (an ``id`` is reused by a new object once the old one is gone, and the
    cache must neither hand a dead model's choice to a new one nor keep models alive), and so is
    the loss function, which must still be the same object when the choice is read back; one that
    cannot be referenced weakly is not remembered.
    """

    def __init__(self) -> None:
        self._by_model: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, model: nn.Module, loss_fn: LossFn, settings: tuple) -> str | None:
        entry = self._by_model.get(model, {}).get(settings)
        if entry is None:
            return None
        loss_ref, choice = entry
        return choice if loss_ref() == loss_fn else None  # == : bound methods are made anew on each access

    def remember(self, model: nn.Module, loss_fn: LossFn, settings: tuple, choice: str) -> None:
        try:
            loss_ref = weakref.WeakMethod(loss_fn) if inspect.ismethod(loss_fn) else weakref.ref(loss_fn)
            self._by_model.setdefault(model, {})[settings] = (loss_ref, choice)
        except TypeError:  # not weakly referenceable
            pass

    def clear(self) -> None:
        self._by_model.clear()

    def __len__(self) -> int:
        return sum(len(choices) for choices in self._by_model.values())


_AUTO_CHOICES = _Choices()

# Number of HVPs a solve is expected to reuse a gradient graph for; amortizes its build cost when
# "auto" compares methods.
_EXPECTED_HVPS_PER_SOLVE = 20
# "auto" leaves double backward only for a clearly faster method: one machine's timings of a few
# products are noisy (measured on a shared 2-core machine: 1 pick in 5 flipped to a method 1.65x
# slower per product), and double backward is the one every model supports.
_AUTO_MARGIN = 0.15
_AUTO_REPEATS = 3
# Whether "auto" measures on the CPU with the graph reused (a test switch: it never pays there).
_AUTO_TIMES_CPU = False
# What autograd says when a model's backward cannot itself be differentiated (a kernel without a
# double-backward formula). A custom Function marked once_differentiable says nothing in torch 2.13:
# its double-backward products are silently wrong (58% on a digits MLP), so nothing falls back.
_NO_DOUBLE_BACKWARD = re.compile(r"double backward|differentiate twice|derivative for .* is not implemented")


class HessianOperator(CurvatureOperator):
    r"""Hessian-vector products of the probe loss, :math:`v \mapsto Hv`, over the chosen parameters.

    .. math::
        Hv = \sum_b w_b\, \nabla^2_θ \ell(θ; B_b)\, v

    With ``method="double_backward"`` and ``reuse_graph=True`` (the default choice on CPU) the
    gradient graph at the current θ is built once per solve and every further product is one
    backward pass. A solve is the span of ``with op:`` (every solver in
    :mod:`edgewatch.curvature` enters it); outside one, each product builds and frees its own
    graph, so nothing is held between training steps and no graph outlives the θ it was built
    at. Inside a solve the graph is also rebuilt if a parameter or buffer is updated in place.

    Args:
        model, loss_fn, probe, params, dtype, train, seed, weights, process_group: see
            :class:`~edgewatch.curvature.operator.CurvatureOperator` (under ``torch.distributed``,
            each rank its own probe shard; products are all-reduced).
        method: ``"double_backward"``, ``"forward_over_reverse"`` or ``"auto"``: time both once
            for this model and loss (on a random vector, outside the HVP count), keep the faster
            one that matches double backward, and remember the choice (on the CPU with
            ``reuse_graph``: double backward, unmeasured). Under a process group
            every rank times (at its first product, never from a remembered choice) and the
            slowest rank's timings decide, so that all ranks use the same method. When the
            first product fails for want of a double backward, ``"auto"`` warns once and uses
            finite differences (remembered like a measured choice).
            ``"finite_difference"``: central differences of gradients,
            :math:`D_h = (\nabla L(θ + hv) - \nabla L(θ - hv)) / 2h`, extrapolated to
            :math:`(4 D_h - D_{2h})/3` with :math:`h = \tfrac12\mathrm{eps}^{1/3}(1 + \|θ\|/\sqrt{n})/\|v\|`
            (:func:`~edgewatch.curvature.hvp.hvp_finite_difference`): four gradients per product
            through the model's ordinary backward, one probe batch at a time, with its own
            attention kernels (no math-SDPA override). The parameters are shifted in place and
            restored bit for bit from a copy (also when the loss raises); the user's ``.grad`` is
            left as it was (under FSDP2 and activation checkpointing, whose gradients only reach
            ``.grad``, it is set aside and put back). Not exact: see :attr:`fd_error`.
        reuse_graph: keep the gradient graph between the products of one solve (double backward
            only). Costs the memory of one forward and backward pass over the whole probe set.

    Attributes:
        fd_error: with ``method="finite_difference"``, the relative error of the products,
            estimated at the first product as :math:`\|R_{2h}(u) - R_h(u)\| / \|R_h(u)\|` (an
            overestimate: see :meth:`_finite_difference_error`), the larger over u = v and
            u = Hv/‖Hv‖; that product costs sixteen gradients instead of four. ``None`` before it
            (and for the exact methods).

    Example:
        >>> model = nn.Linear(3, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
        >>> loss_fn = lambda m, batch: 0.5 * (m(batch) ** 2).mean()   # H = mean of x xᵀ
        >>> op = HessianOperator(model, loss_fn, [torch.eye(3)], method="double_backward")
        >>> op(torch.tensor([3.0, 0.0, 0.0]))
        tensor([1., 0., 0.])
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        probe: Iterable[Batch],
        params: ParamSpec = None,
        *,
        method: str = "auto",
        reuse_graph: bool = True,
        dtype: torch.dtype | None = None,
        train: bool | None = True,
        seed: int = 0,
        weights: Sequence[float] | None = None,
        process_group: GroupSpec = None,
    ) -> None:
        check_method(method)
        if not isinstance(reuse_graph, bool):
            raise ValueError(f"reuse_graph must be True or False, got {reuse_graph!r}")
        super().__init__(
            model, loss_fn, probe, params, dtype=dtype, train=train, seed=seed, weights=weights,
            process_group=process_group,
        )
        self.reuse_graph = reuse_graph
        if self.shard_group is not None:
            method = _sharded_method(method)
        # Across ranks a remembered choice could differ (one rank may have timed this model before,
        # alone), and the ranks would then disagree on whether to time: they always time together.
        remembered = _AUTO_CHOICES.get(self.model, self.loss_fn, self._settings()) if self.process_group is None else None
        self._method = remembered if method == "auto" else method
        self._graph: GradientGraph | None = None
        self._graph_key: tuple | None = None
        self.fd_error: float | None = None
        self._may_fall_back = method == "auto"

    @property
    def method(self) -> str | None:
        """The HVP method in use; ``None`` while ``"auto"`` has not measured yet."""
        return self._method

    def release(self) -> None:
        """Free the retained gradient graph (it is rebuilt on the next product)."""
        self._graph = None
        self._graph_key = None

    def _matvec(self, v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        if not self._may_fall_back:
            try:
                with self._buffers_kept_until_proven():
                    return self._product(v)
            except RuntimeError as error:
                if self._method == "finite_difference" or not CHECKPOINTING.search(str(error)):
                    raise
                raise RuntimeError(
                    f"method={self._method!r} cannot differentiate through this model's activation checkpointing "
                    f"({error}); use method='finite_difference' (or 'auto'), which needs gradients only"
                ) from error
        self._may_fall_back = False  # only "auto"'s first product: later failures are the model's
        try:
            with self._buffers_kept_until_proven():
                return self._product(v)
        except RuntimeError as error:
            if not (_NO_DOUBLE_BACKWARD.search(str(error)) or CHECKPOINTING.search(str(error))):
                raise
            self._fall_back(error)
        return self._product(v)

    def _fall_back(self, error: RuntimeError) -> None:
        """Switch "auto" to finite differences, which need gradients only, and say so once."""
        self.release()
        self._method = "finite_difference"
        if self.process_group is None:
            _AUTO_CHOICES.remember(self.model, self.loss_fn, self._settings(), self._method)
        warnings.warn(
            f"double backward is unavailable for {type(self.model).__name__} ({error}); "
            "method='auto' uses finite-difference HVPs, whose estimated error is op.fd_error",
            stacklevel=5,
        )

    def _product(self, v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        if self._method is None:
            self._choose_method()
        if self._method == "double_backward" and self.reuse_graph:
            try:
                return self._gradient_graph().hvp(v)
            finally:
                if not self._sessions:  # a lone product: hold nothing afterwards, even on error
                    self.release()
        if self._method == "finite_difference":
            return self._finite_difference(v)
        hvp = hvp_double_backward if self._method == "double_backward" else hvp_forward_over_reverse
        with self._probing():
            params, frozen = self._current_parameters(), self._frozen_tensors()
            total = tuple(torch.zeros_like(p) for p in params)
            for index, weight in enumerate(self.weights):
                hv = hvp(functools.partial(self._batch_loss, index, frozen=frozen), params, v)
                for accumulated, h in zip(total, hv):
                    accumulated.add_(h, alpha=weight)
        return total

    def _probing(self) -> contextlib.AbstractContextManager:
        """The probe guard; finite differences keep the model's own attention kernels (fused SDPA
        has no double backward, which they do not need)."""
        return probe_guard(self.model, self.device, train=self.train, math_attention=self._method != "finite_difference")

    def _finite_difference(self, v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The central-difference product; the first one also measures :attr:`fd_error`."""
        with self._probing():
            params = self._perturbable_parameters()
            step = finite_difference_step(params, v, all_sum=self._all_sum)
            gradient = lambda: self._probe_gradient(params)  # noqa: E731
            product = hvp_finite_difference(gradient, params, v, step)
            if self.fd_error is None and step > 0:
                self.fd_error = self._finite_difference_error(gradient, params, v, product, step)
                if not resolves(finite_difference_floor(self)):  # the solves on these products cannot converge
                    warnings.warn(
                        f"finite-difference products of {type(self.model).__name__} err by up to {self.fd_error:.2g} "
                        "(op.fd_error): the loss has kinks at the step's scale (ReLU, max-pool) or the dtype is too "
                        "coarse; eigenvalues from them are not converged. Probe in float64 (dtype=torch.float64) "
                        "or with double backward where the model allows it", stacklevel=5,
                    )
        return product

    def _finite_difference_error(
        self, gradient: GradientFn, params: tuple[Tensor, ...], v: tuple[Tensor, ...], product: tuple[Tensor, ...],
        step: float,
    ) -> float:
        r"""The larger of :math:`\|R_{2h}(u) - R_h(u)\| / \|R_h(u)\|` for u = v and u = Hv/‖Hv‖.

        The truncation error of :math:`R_h` is :math:`c\,h^4`, so :math:`R_{2h} - R_h ≈ 15\,c\,h^4`
        plus the rounding of both (that of :math:`R_{2h}` about half that of :math:`R_h`): the ratio
        overestimates the error of :math:`R_h(u)`, up to 15x where the truncation dominates, and
        by about 1.5x where the rounding does (measured in float32 on a small GPT-2, an MLP with
        BatchNorm and a tanh MLP: 1.1-1.5x on random directions, 1.1-15x at the top
        eigenvector). The truncation error depends on the direction (the derivatives are largest
        along the sharp directions), hence the second vector, one power step from v towards the
        top eigenvectors the solvers look for. Three more products (twelve gradients), once.
        """
        coarse = hvp_finite_difference(gradient, params, v, 2 * step)
        estimates = [_relative_difference(coarse, product, self._all_sum)]
        size = math.sqrt(_squares(product, self._all_sum))
        if size > 0 and math.isfinite(size):
            u = tuple(h / size for h in product)
            step = finite_difference_step(params, u, all_sum=self._all_sum)
            fine = hvp_finite_difference(gradient, params, u, step)
            estimates.append(_relative_difference(hvp_finite_difference(gradient, params, u, 2 * step), fine, self._all_sum))
        return max(estimates)

    def _all_sum(self, value: Tensor) -> Tensor:
        """Local sums summed over the ranks θ is sharded over (FSDP2); as they are otherwise."""
        return sum_over_shards(self, value)

    def _perturbable_parameters(self) -> tuple[Tensor, ...]:
        """θ as tensors the finite differences may shift in place: the parameters' own storage
        when the dtypes agree, else private copies in the operator's dtype.

        The storage is reached through ``.data``, whose version counter is its own: the shift is
        undone bit for bit before anyone else runs, and bumping the parameters' versions would make
        a graph the caller built over them (a forward pass awaiting its backward) refuse to run.
        """
        reshard(self.model)  # FSDP2's root left unsharded by a forward without backward: its shards, please
        named = dict(self.model.named_parameters())
        return tuple(
            local(named[n]).data if named[n].dtype == self._dtype else local(named[n].detach()).to(self._dtype)
            for n in self.param_names
        )

    def _probe_gradient(self, params: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        r""":math:`\nabla L(θ) = \sum_b w_b \nabla \ell(θ; B_b)` at the current contents of ``params``,
        one batch at a time, into new tensors (the user's ``.grad`` left as it was); call inside :meth:`_probing`.

        Buffers are copied anew for every gradient, so that a forward pass writing one cannot
        make the two gradients of a difference see different models. Under FSDP2 and activation
        checkpointing the gradient comes from the model's own passes, which read ``params`` (its
        parameters' own storage, or their shards).
        """
        if not self.native_gradients:
            try:
                with self._buffers_kept_until_proven():
                    return self._functional_gradient(params)
            except RuntimeError as error:  # activation checkpointing: through the model's own passes
                self._use_native_gradients(error)
        return self._native_loss_and_gradient()[1]

    def _functional_gradient(self, params: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """:meth:`_probe_gradient` by ``functional_call`` on detached leaves over ``params``."""
        frozen = self._frozen_tensors()
        total = tuple(torch.zeros_like(p) for p in params)
        for index, weight in enumerate(self.weights):
            leaves = tuple(p.detach().requires_grad_() for p in params)
            loss = self._batch_loss(index, leaves, frozen)
            require_graph(loss)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            for accumulated, g in zip(total, grads):
                if g is not None:
                    accumulated.add_(g, alpha=weight)
        return total

    def _gradient_graph(self) -> GradientGraph:
        key = self._state_key()
        if self._graph is None or key != self._graph_key:
            self._graph = None  # free the old graph before building the new one
            with self._probing():
                frozen = self._frozen_tensors()
                self._graph = GradientGraph(lambda p: self._probe_loss(p, frozen), self._current_parameters())
            self._graph_key = key
        return self._graph

    def _settings(self) -> tuple:
        """What besides the model and loss "auto" measured for (new operators alike reuse it)."""
        named = dict(self.model.named_parameters())
        shapes = tuple((name, tuple(named[name].shape)) for name in self.param_names)
        return shapes, self.device, self.dtype, self.train, self.reuse_graph

    def _choose_method(self) -> None:
        """Time each method on a random vector (best of a few products); keep double backward unless
        another method that agrees with it is at least ``_AUTO_MARGIN`` faster.

        Under a process group the per-method costs are MAX-all-reduced first, so every rank makes
        the same choice; a rank whose timing raises joins that all-reduce (its costs infinite),
        takes the common choice, and only then raises (its product is then agreed to have failed).
        """
        if self.device.type == "cpu" and self.reuse_graph and not _AUTO_TIMES_CPU:
            self._method = "double_backward"
            if self.process_group is None:
                _AUTO_CHOICES.remember(self.model, self.loss_fn, self._settings(), self._method)
            return
        error: Exception | None = None
        try:
            costs = self._time_methods()
        except Exception as failure:  # noqa: BLE001 - raised below, after the ranks agreed
            if self.process_group is None:
                raise
            costs, error = {}, failure
        if self.process_group is not None:
            local = torch.tensor([costs.get(m, math.inf) for m in HVP_METHODS], dtype=torch.float64, device=self.device)
            costs = {m: c for m, c in zip(HVP_METHODS, max_over_ranks(local, self.process_group).tolist()) if c < math.inf}
        if "double_backward" not in costs:  # it failed (on some rank): the products will say so
            choice = "double_backward"
        else:
            fastest = min(costs, key=costs.__getitem__)
            clearly = costs[fastest] < (1 - _AUTO_MARGIN) * costs["double_backward"]
            choice = fastest if clearly else "double_backward"
        if choice != "double_backward":
            self.release()  # the timing graph
        self._method = choice
        if self.process_group is None:
            _AUTO_CHOICES.remember(self.model, self.loss_fn, self._settings(), choice)
        if error is not None:
            raise error

    def _time_methods(self) -> dict[str, float]:
        """Seconds per product of each usable method on this process (the build of a reused graph
        amortized over a solve); a method that fails or disagrees with double backward is left out."""
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        v = tuple(
            torch.randn(s, generator=generator, device=self.device, dtype=self.dtype) for s in self._shapes
        )
        tolerance = 1e-3 if self.dtype == torch.float32 else 1e-8
        self._method = "double_backward"
        start = _now(self.device)
        reference = self._matvec(v)
        first = _now(self.device) - start
        costs = {"double_backward": min(first, _timed(self._matvec, v, self.device, _AUTO_REPEATS))}
        if self.reuse_graph:  # the first product built the graph; later ones only reuse it
            build = first - costs["double_backward"]
            costs["double_backward"] += max(build, 0.0) / _EXPECTED_HVPS_PER_SOLVE
        self._method = "forward_over_reverse"
        try:
            candidate = self._matvec(v)
            costs["forward_over_reverse"] = _timed(self._matvec, v, self.device, _AUTO_REPEATS)
        except Exception as error:  # noqa: BLE001 - any failure just rules the method out
            warnings.warn(
                f"forward-over-reverse HVP unavailable for {type(self.model).__name__} "
                f"({type(error).__name__}: {error}); using double backward",
                stacklevel=5,
            )
            candidate = None
        if candidate is not None and _relative_difference(candidate, reference) > tolerance:
            warnings.warn(
                "forward-over-reverse and double-backward HVPs disagree "
                f"(relative difference {_relative_difference(candidate, reference):.2e}; under "
                "forward-mode AD dropout can draw other masks); using double backward",
                stacklevel=5,
            )
            del costs["forward_over_reverse"]
        return costs


def check_method(method: object) -> None:
    """``method`` is one of :data:`HVP_METHODS` or ``"auto"``."""
    choices = (*HVP_METHODS, "auto")
    if not isinstance(method, str) or method not in choices:
        raise ValueError(f"method must be one of {', '.join(map(repr, choices))}, got {method!r}; \"auto\" picks the faster")


def _sharded_method(method: str) -> str:
    """The HVP method under FSDP2, which frees the unsharded parameters a double backward needs."""
    if method in ("double_backward", "forward_over_reverse"):
        raise ValueError(
            f"method={method!r} needs a differentiable gradient, which FSDP2 (fully_shard) does not build; "
            "use method='finite_difference' (or 'auto')"
        )
    if method == "auto":
        warnings.warn(
            "FSDP2 model: method='auto' uses finite-difference HVPs through the sharded forward and backward "
            "passes (no double backward there); their estimated error is op.fd_error", stacklevel=4,
        )
    return "finite_difference"


def _squares(tensors: Sequence[Tensor], all_sum=None) -> float:
    """Σ‖t‖² over ``tensors``, summed over the shards when ``all_sum`` is given."""
    if all_sum is None:
        return sum(float(t.pow(2).sum()) for t in tensors)
    local_sum = sum(t.double().pow(2).sum() for t in tensors)
    device = tensors[0].device  # the collective's backend (NCCL) reduces on the device only
    return float(all_sum(torch.as_tensor(local_sum, dtype=torch.float64, device=device).reshape(1)))


def _relative_difference(a: Sequence[Tensor], b: Sequence[Tensor], all_sum=None) -> float:
    diff = _squares([x - y for x, y in zip(a, b)], all_sum) ** 0.5
    norm = _squares(b, all_sum) ** 0.5
    return diff / max(norm, torch.finfo(b[0].dtype).tiny)


def _now(device: torch.device) -> float:
    if device.type == "cuda":  # one-off sync, only while "auto" measures
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _timed(fn, v, device: torch.device, repeats: int = 1) -> float:
    """The shortest of ``repeats`` timings of ``fn(v)``: the least disturbed by the rest of the machine."""
    best = float("inf")
    for _ in range(repeats):
        start = _now(device)
        fn(v)
        best = min(best, _now(device) - start)
    return best
