r"""Attention logits of Hugging Face ``transformers`` models that use eager attention.

A model loaded with ``attn_implementation="eager"`` (which ``output_attentions`` needs) computes
:math:`\operatorname{softmax}(q k^\top \cdot \text{scaling} + \text{mask})` with its own matmul in
the modeling file's ``eager_attention_forward``; no ``scaled_dot_product_attention`` call is made,
so wrapping that function sees nothing. In the refactored modeling files of recent transformers
(read against 5.25), each attention module picks its attention function per call,
``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)``,
reading ``eager_attention_forward`` as a global of the module that defines its ``forward``. While
recording, that global is replaced, in exactly those namespaces, by a wrapper that first hands
query, key, mask, scaling and (T5's) position bias to the recorder and then calls the original
with the same arguments: outputs and gradients are those of the unwrapped model, bit for bit. The
wrapper records only calls made by the recorded model's own modules, so another model running
meanwhile is not counted.

Attention computed anywhere else (older modeling code with its own ``_attn``, GPT-2's
``reorder_and_upcast_attn``, flash or flex kernels, a user-registered attention function) is not
seen; :func:`attention_modules` lists the modules to watch so the recorder can say so.

transformers itself is never imported here: a model's classes carry the modules they come from.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor, nn

__all__ = ["attention_modules", "attn_implementation", "eager_recorded", "is_transformers_module"]

EAGER = "eager_attention_forward"  # the name every refactored modeling file gives its eager kernel
_PACKAGES = ("transformers", "transformers_modules")  # the library, and trust_remote_code models

# Called with (attention module, query, key, additive or boolean mask or None, scaling or None,
# additive position bias or None).
Record = Callable[[nn.Module, Tensor, Tensor, "Tensor | None", "float | None", "Tensor | None"], None]


def is_transformers_module(module: nn.Module) -> bool:
    """Whether ``module``'s class comes from transformers (or a ``trust_remote_code`` model)."""
    return type(module).__module__.split(".")[0] in _PACKAGES


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The transformers modules of ``model`` whose class name ends in ``Attention`` (the naming
    rule of every transformers modeling file: ``GPT2Attention``, ``LlamaAttention``,
    ``BertSelfAttention``...). Empty for any model without transformers classes."""
    return [m for m in model.modules() if is_transformers_module(m) and type(m).__name__.endswith("Attention")]


def attn_implementation(module: nn.Module, model: nn.Module) -> str | None:
    """The ``_attn_implementation`` of ``module``'s config, else of ``model``'s, else ``None``."""
    for owner in (module, model):
        value = getattr(getattr(owner, "config", None), "_attn_implementation", None)
        if isinstance(value, str):
            return value
    return None


@contextlib.contextmanager
def eager_recorded(model: nn.Module, record: Record) -> Iterator[None]:
    """Within the block, every ``eager_attention_forward`` call made by a module of ``model``
    first passes its query, key, mask, scaling and ``position_bias`` (T5-style relative position
    bias, added to the logits like the mask) to ``record``; the global is restored after."""
    namespaces = _eager_namespaces(model)
    if not namespaces:
        yield
        return
    ours = {id(m) for m in model.modules()}
    originals = [(namespace, namespace[EAGER]) for namespace in namespaces]
    for namespace, original in originals:
        namespace[EAGER] = _recording(original, record, ours)
    try:
        yield
    finally:
        for namespace, original in reversed(originals):
            namespace[EAGER] = original


def _eager_namespaces(model: nn.Module) -> list[dict[str, Any]]:
    """The global namespaces in which ``model``'s transformers modules look ``eager_attention_forward``
    up: those of the functions their ``forward`` runs (unwrapped from decorators such as
    ``deprecate_kwarg``, whose own globals belong to another file)."""
    namespaces: dict[int, dict[str, Any]] = {}
    for module in model.modules():
        if not is_transformers_module(module):
            continue
        forward = inspect.unwrap(type(module).forward)
        namespace = getattr(forward, "__globals__", None)
        if isinstance(namespace, dict) and callable(namespace.get(EAGER)):
            namespaces[id(namespace)] = namespace
    return list(namespaces.values())


def _recording(original: Callable[..., Any], record: Record, ours: set[int]) -> Callable[..., Any]:
    """``original`` with ``record`` called first on the calls of the modules in ``ours``."""
    try:
        signature: inspect.Signature | None = inspect.signature(original)
    except (TypeError, ValueError):
        signature = None

    @functools.wraps(original)
    def eager_attention_forward(module, query, key, value, attention_mask, *args, **kwargs):
        if id(module) in ours:
            named = _named(signature, (module, query, key, value, attention_mask, *args), kwargs)
            scaling, bias = named.get("scaling"), named.get("position_bias")
            record(module, query, key, attention_mask, scaling if isinstance(scaling, (int, float)) else None,
                   bias if isinstance(bias, Tensor) else None)
        return original(module, query, key, value, attention_mask, *args, **kwargs)

    return eager_attention_forward


def _named(signature: inspect.Signature | None, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of one call by parameter name, positional ones included (``scaling`` is sixth
    in Llama's signature but comes after ``dropout`` in Gemma-2's); keywords alone if unbindable."""
    if signature is None:
        return kwargs
    try:
        bound = signature.bind_partial(*args, **kwargs).arguments
    except TypeError:
        return kwargs
    return {**kwargs, **bound}
