"""Activation checkpointing: double backward where it runs, finite differences through the model's own
passes where it does not, and the model left exactly as it was either way.

torch.utils.checkpoint recomputes a block's forward pass during the backward, with the module's own
parameters and buffers. Without reentrancy and without buffers written in the block, the functional
double backward runs through it exactly; with ``use_reentrant=True`` (Hugging Face's default)
``torch.autograd.grad`` is refused, and a BatchNorm in a non-reentrant block fails the recomputation
check, so the operator takes gradients by ``loss.backward()`` on the model itself.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import cases
import edgewatch as ew
from edgewatch.curvature import HessianOperator, lanczos


class Checkpointed(nn.Module):
    """A stem, two checkpointed blocks (a BatchNorm in the first, optionally) and a head."""

    def __init__(self, reentrant: bool | None, batchnorm: bool = False, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(64, 32)
        self.first = nn.Sequential(nn.Linear(32, 32), nn.BatchNorm1d(32) if batchnorm else nn.Identity(), nn.Tanh())
        self.second = nn.Sequential(nn.Linear(32, 32), nn.Tanh())
        self.head = nn.Linear(32, 10)
        self.reentrant = reentrant  # None: no checkpointing (the reference)
        self.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in (self.first, self.second):
            x = block(x) if self.reentrant is None else checkpoint(block, x, use_reentrant=self.reentrant)
        return self.head(x)


def probe(dtype=torch.float32):
    x, y = cases.digits(128)
    return [(x.to(dtype), y)]


def exact_lambda_1(batchnorm: bool) -> float:
    """λ_1 of the same network without checkpointing, in float64."""
    op = HessianOperator(Checkpointed(None, batchnorm, torch.float64), cases.cross_entropy, probe(torch.float64),
                         method="double_backward")
    return lanczos(op, k=1, tol=1e-10).eigenvalues[0].item()


def with_user_state(model: nn.Module) -> tuple[list, list, list]:
    """A gradient in .grad (between the user's backward and step), and copies to compare against."""
    cases.cross_entropy(model, probe(next(model.parameters()).dtype)[0]).backward()
    return ([p.grad for p in model.parameters()], [p.grad.clone() for p in model.parameters()],
            [t.clone() for t in (*model.parameters(), *model.buffers())])


def untouched(model: nn.Module, state: tuple[list, list, list]) -> bool:
    grads, copies, tensors = state
    return (all(p.grad is g and torch.equal(g, c) for p, g, c in zip(model.parameters(), grads, copies))
            and all(torch.equal(a, b) for a, b in zip((*model.parameters(), *model.buffers()), tensors)))


def test_non_reentrant_checkpointing_keeps_exact_double_backward():
    model = Checkpointed(reentrant=False, dtype=torch.float64)
    state = with_user_state(model)
    op = HessianOperator(model, cases.cross_entropy, probe(torch.float64), method="double_backward")
    value = lanczos(op, k=1, tol=1e-10).eigenvalues[0].item()
    assert value == pytest.approx(exact_lambda_1(False), rel=1e-10)
    assert not op.native_gradients and untouched(model, state)


@pytest.mark.parametrize("reentrant, batchnorm", [(True, False), (True, True), (False, True)],
                         ids=["reentrant", "reentrant-batchnorm", "non-reentrant-batchnorm"])
def test_auto_turns_to_finite_differences_through_the_models_own_passes(reentrant, batchnorm):
    model = Checkpointed(reentrant, batchnorm)
    state = with_user_state(model)
    op = HessianOperator(model, cases.cross_entropy, probe())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = lanczos(op, k=1, tol=1e-6)
    notices = [str(w.message) for w in caught if "double backward is unavailable" in str(w.message)]
    exact = exact_lambda_1(batchnorm)
    error = abs(result.eigenvalues[0].item() - exact)
    print(f"reentrant={reentrant} batchnorm={batchnorm}: λ_1 {result.eigenvalues[0].item():.6f} vs {exact:.6f} "
          f"(relative {error / exact:.1e}, bound {result.residuals[0].item() / exact:.1e}, fd_error {op.fd_error:.1e})")
    assert len(notices) == 1 and op.method == "finite_difference" and op.native_gradients
    assert error <= result.residuals[0].item() and error / exact <= 2e-3
    assert untouched(model, state)  # .grad, parameters and BatchNorm statistics, bit for bit
    loss, gradient = op.loss_and_gradient()
    reference = HessianOperator(Checkpointed(None, batchnorm), cases.cross_entropy, probe())
    assert gradient == pytest.approx(reference.loss_and_gradient()[1], abs=1e-6)


def test_double_backward_asked_for_on_reentrant_checkpointing_says_what_to_use():
    model = Checkpointed(reentrant=True)
    op = HessianOperator(model, cases.cross_entropy, probe(), method="double_backward")
    with pytest.raises(RuntimeError, match="use method='finite_difference'"):
        op(torch.ones(op.size))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.filterwarnings("ignore:double backward is unavailable")  # the fallback's notice, checked above
def test_a_watched_checkpointed_run_is_the_unwatched_run():
    def train(watched: bool):
        model = Checkpointed(reentrant=True, batchnorm=True)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        monitor = None
        if watched:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the notice that finite differences are used, the costly schedule
                monitor = ew.Monitor(model, optimizer, cases.cross_entropy, probe=probe(), curvature=2, every=1,
                                     norms_every=1, run_dir=False)
        x, y = cases.digits(400)
        latest, norms = [], []
        for step in range(6):
            optimizer.zero_grad()
            loss = cases.cross_entropy(model, (x[64 * step:64 * step + 64], y[64 * step:64 * step + 64]))
            loss.backward()
            norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))))
            optimizer.step()
            if monitor is not None:
                latest.append(monitor.step(loss))
        tensors = [t.clone() for t in (*model.parameters(), *model.buffers())]
        tensors += [state["momentum_buffer"].clone() for state in optimizer.state.values()]
        return tensors, latest, norms

    plain, _, _ = train(False)
    watched, latest, norms = train(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    assert all("curvature/lambda_max" in latest[step] for step in (1, 3, 5))
    # the probe's own backward passes never stand in for the step's gradient
    assert [m["grad/norm"] for m in latest] == pytest.approx(norms, rel=1e-6)


@pytest.mark.parametrize("reentrant", [False, True], ids=["default", "reentrant"])
def test_hugging_face_activation_checkpointing(reentrant):
    """Transformers' own checkpointing (``activation_checkpointing_enable``, formerly
    ``gradient_checkpointing_enable``): non-reentrant by default in transformers 5, where double
    backward runs exactly; with ``use_reentrant=True`` (the default before) finite differences."""
    transformers = pytest.importorskip("transformers", reason="the [transformers] extra")

    def tiny(checkpointing: bool):
        torch.manual_seed(0)
        config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                         bos_token_id=0, eos_token_id=0, use_cache=False)
        model = transformers.GPT2LMHeadModel(config)
        if checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None)
            kwargs = {"use_reentrant": True} if reentrant else None
            if enable is not None:
                enable(activation_checkpointing_kwargs=kwargs)
            else:  # transformers < 5
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or {"use_reentrant": False})
        return model.train()

    def lm_loss(model, tokens):
        return model(input_ids=tokens, labels=tokens).loss

    tokens = [cases.tokens(8, seed=3) % 50]
    # The same products on the model without checkpointing: the plumbing, not the method, is compared.
    method = "finite_difference" if reentrant else "double_backward"
    reference = lanczos(HessianOperator(tiny(False), lm_loss, tokens, method=method), k=1, tol=1e-5)
    model = tiny(True)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        op = HessianOperator(model, lm_loss, tokens)
        result = lanczos(op, k=1, tol=1e-5)
    error = abs(result.eigenvalues[0].item() - reference.eigenvalues[0].item()) / reference.eigenvalues[0].item()
    print(f"GPT-2, checkpointing (reentrant={reentrant}): λ_1 {result.eigenvalues[0].item():.6f} by {op.method}, "
          f"relative difference {error:.1e} from the same method without checkpointing (fd_error {op.fd_error})")
    assert op.method == method and error <= 1e-6
    assert all(p.grad is None for p in model.parameters())


def test_a_loss_that_raises_mid_product_leaves_the_checkpointed_model_as_it_was():
    """Through the model's own passes the parameters are shifted in place and .grad is set aside:
    both are back, bit for bit, when the loss raises between the gradients of a product."""
    model = Checkpointed(reentrant=True, batchnorm=True)
    state = with_user_state(model)
    calls = [0]

    def failing(m, batch):
        calls[0] += 1
        if calls[0] == 6:  # inside the first product, after the plain gradient found native passes were needed
            raise RuntimeError("loss failed")
        return cases.cross_entropy(m, batch)

    op = HessianOperator(model, failing, probe(), method="finite_difference")
    with pytest.raises(RuntimeError, match="loss failed"):
        op(torch.ones(op.size))
    assert op.native_gradients and untouched(model, state)
