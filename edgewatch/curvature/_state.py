"""The probe guard: evaluate a model for curvature without changing anything the training run sees.

Watching must not change what is watched. A curvature probe runs extra forward and backward passes
through the user's model; left unguarded these would flip train/eval modes, advance the global RNG
(dropout), update BatchNorm running statistics, write ``.grad`` and run under the user's autocast.
The operators avoid the BatchNorm and ``.grad`` effects by construction (they differentiate
detached copies with ``torch.autograd.grad`` and never hand the model's own buffers to a forward
pass; where that cannot work, under FSDP2 and activation checkpointing, they set ``.grad`` aside and
restore the buffers from a copy); this module handles the rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["probe_guard", "seed_probe"]


@contextlib.contextmanager
def probe_guard(
    model: nn.Module, device: torch.device, *, train: bool | None, math_attention: bool = True
) -> Iterator[None]:
    """Run a curvature probe on ``model`` and leave it exactly as it was.

    Inside the block: the model is in train mode (``train=True``, the loss being optimized), eval
    mode (``False``) or left as it is (``None``, for models that keep some modules in eval mode
    while training); autograd is enabled even under ``no_grad`` or ``inference_mode``; autocast is
    off (probes run in the operator's dtype); ``scaled_dot_product_attention`` uses the math
    backend, the only one with double backward and forward-mode AD (``math_attention=False``
    keeps the model's own choice of kernel, for probes that need gradients only: the fused
    kernels' memory grows linearly with the sequence, the math backend's with its square). On
    exit the mode of every submodule is restored one by one.

    The RNG of the CPU and of ``device`` is forked, so seeding inside the block (see
    :func:`seed_probe`) leaves the generators where the training run left them.
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        if train is not None:
            model.train(train)
        with contextlib.ExitStack() as stack:
            stack.enter_context(_fork_rng(device))
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(torch.autocast(device_type=device.type, enabled=False))
            if math_attention:
                stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def seed_probe(device: torch.device, seed: int) -> None:
    """Seed the generators a forward pass on ``device`` draws from (CPU, and that device only).

    ``torch.manual_seed`` would also reseed every other accelerator, and queue a seed for CUDA
    when it is not initialized yet; neither is forked by :func:`probe_guard`.
    """
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)
    elif device.type != "cpu":
        module = getattr(torch, device.type, None)
        if module is not None and hasattr(module, "manual_seed"):
            module.manual_seed(seed)


def _fork_rng(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    index = device.index if device.index is not None else 0
    return torch.random.fork_rng(devices=[index], device_type=device.type)
