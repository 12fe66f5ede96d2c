"""Which part of the model a per-module metric is keyed by: a block (default) or a leaf module.

Per-module metrics (``grad/norm/<module>``, ``curvature/top_energy/<module>``) keyed by every
module that owns parameters give hundreds of keys on a large model, one chart each. By default
they are summed over *blocks* instead:

- a parameter's block is the first module on its path that is an item of a container
  (``nn.ModuleList``, ``nn.Sequential``, ``nn.ModuleDict``): ``blocks.3`` for
  ``blocks.3.attn.qkv.weight``, ``transformer.h.0`` for ``transformer.h.0.mlp.c_fc.weight``,
  ``0`` for ``0.weight`` of a model that is itself an ``nn.Sequential``;
- with no container item on its path, the model's direct child that holds it (``embed``,
  ``lm_head``; ``transformer`` for ``transformer.wte.weight``);
- a parameter of the model itself: ``root``.

So a transformer gives one key per layer plus its embeddings and head, whatever each layer holds.
``"leaf"`` keys each module that owns parameters directly (``blocks.3.attn.qkv``), as the path
names it. A norm over a block is √(Σ of its parameters' squared norms); an energy share, the sum
of theirs.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["MODULE_METRICS", "ROOT", "check_module_metrics", "module_key"]

#: The values of ``module_metrics=``.
MODULE_METRICS = ("blocks", "leaf")

#: The key of parameters that belong to the model itself.
ROOT = "root"

_CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)


def check_module_metrics(value: object) -> str:
    """``value`` if it is one of :data:`MODULE_METRICS`, else a ValueError that lists them."""
    if value not in MODULE_METRICS:
        raise ValueError(f"module_metrics must be \"blocks\" (per-module metrics summed over each block: "
                         f"a layer of a ModuleList, a direct child) or \"leaf\" (one key per module), got {value!r}")
    return str(value)


def module_key(model: nn.Module, module_metrics: str = "blocks") -> Callable[[str], str]:
    """A function from a module's path in ``model`` (``"blocks.3.attn"``, ``""`` for the model
    itself) to the key its metrics go under, for ``module_metrics`` ``"blocks"`` or ``"leaf"``."""
    check_module_metrics(module_metrics)
    if module_metrics == "leaf":
        return lambda path: path or ROOT
    cache: dict[str, str] = {}

    def block(path: str) -> str:
        if path not in cache:
            cache[path] = _block_of(model, path)
        return cache[path]

    return block


def _block_of(model: nn.Module, path: str) -> str:
    if not path:
        return ROOT
    parts = path.split(".")
    parent = model
    for depth, part in enumerate(parts):
        if isinstance(parent, _CONTAINERS):
            return ".".join(parts[: depth + 1])
        child = parent._modules.get(part)
        if child is None:  # a path the module tree does not hold (should not happen): keep it whole
            return path
        parent = child
    return parts[0]
