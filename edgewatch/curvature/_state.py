"""The probe guard: evaluate a model for curvature without changing anything the training run sees.

Watching must not change what is watched. A curvature probe runs extra forward and backward passes
through the user's model; left unguarded these would flip train/eval modes, advance the global RNG
(dropout), update BatchNorm running statistics, write ``.grad`` and run under the user's autocast.
The operators avoid the last three by construction (they differentiate detached copies with
``torch.autograd.grad`` and never hand the model's own buffers to a forward pass); this module
handles the rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["probe_guard"]


@contextlib.contextmanager
def probe_guard(model: nn.Module, *, train: bool) -> Iterator[None]:
    """Run a curvature probe on ``model`` and leave it exactly as it was.

    Inside the block: every submodule is in train mode (``train=True``, the loss being optimized)
    or eval mode, autograd is enabled, autocast is off (probes run in the operator's dtype), and
    ``scaled_dot_product_attention`` uses the math backend, the only one with double backward and
    forward-mode AD. On exit the mode of every submodule is restored one by one (a model may mix
    modes, e.g. a frozen BatchNorm in eval mode inside a training model).

    The global RNG is forked, so seeding inside the block (for fixed dropout masks) leaves the CPU and
    CUDA generators where the training run left them.
    """
    modes = [(module, module.training) for module in model.modules()]
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    device_type = _device_type(model)
    try:
        model.train(train)
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=devices))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def _device_type(model: nn.Module) -> str:
    for tensor in model.parameters():
        return tensor.device.type
    return "cpu"
