r"""Output logits and attention logits on the probe batch.

One module for both: one recording of the probe's forward passes reads them together.

Output logits :math:`z \in \mathbb R^V` per token or example: :math:`\max |z|`, the mean and max of
:math:`\log Z = \operatorname{logsumexp}(z)` (output-logit divergence, Wortsman et al. 2023), PaLM's
z-loss :math:`10^{-4}\,(\log Z)^2` and the RMS of z.

Attention logits :math:`s = q \cdot k / \sqrt{d}` before the softmax (and before masking's −∞):
:math:`\max |s|` per attention call and over all, and the attention entropy
:math:`H = -\sum p \log p` per query (mean and min, over queries that see at least two keys). Fused SDPA kernels never materialize s, so for
the probe forward ``torch.nn.functional.scaled_dot_product_attention`` is wrapped to compute it
from q and k (respecting the causal mask and boolean or additive masks): in ``torch.nn.functional``
and under every name it has in the modules that define the model's layers (a module that did
``from torch.nn.functional import scaled_dot_product_attention as sdpa`` calls its own reference),
and
``nn.MultiheadAttention`` layers are read from their inputs and in-projection. Hugging Face
models with ``attn_implementation="eager"`` compute attention by their own matmul in
``eager_attention_forward``, which is wrapped the same way (:mod:`.hf_attention`); a transformers
attention module that runs without either being called (another kernel, or attention code of its
own) is reported once with a warning naming ``attn_implementation="sdpa"``, the fix.

References:
    Wortsman et al. 2023, Small-scale proxies for large-scale Transformer training instabilities,
    https://arxiv.org/abs/2309.14322
    Chowdhery et al. 2022, PaLM, https://arxiv.org/abs/2204.02311 (z-loss)
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgewatch import names
from edgewatch.distributed import gather
from edgewatch.hooks.meters import hf_attention
from edgewatch.hooks.meters.blocks import ROOT

__all__ = ["LogitRecorder", "output_logit_metrics"]

Z_LOSS_WEIGHT = 1e-4  # PaLM's z-loss coefficient


def output_logit_metrics(logits: Tensor) -> dict[str, Tensor]:
    """``logits/max``, ``logits/rms``, ``logits/log_z_mean``, ``logits/log_z_max``, ``logits/z_loss``."""
    z = logits.detach().float()
    log_z = torch.logsumexp(z, dim=-1)
    return {
        names.LOGITS_MAX: z.abs().max(),
        names.LOGITS_RMS: z.pow(2).mean().sqrt(),
        names.LOGITS_LOG_Z_MEAN: log_z.mean(),
        names.LOGITS_LOG_Z_MAX: log_z.max(),
        names.LOGITS_Z_LOSS: Z_LOSS_WEIGHT * log_z.pow(2).mean(),
    }


class LogitRecorder:
    """Records output and attention logits during the forward passes of one probe.

    Use :meth:`recording` around the forward passes (one per probe batch); :meth:`metrics` then
    gives 0-dim tensors: maxima over batches, means averaged over batches. An attention call is
    named by the module that made it, the innermost of the model's modules running at the call
    (``attn/max_logit/blocks.0.attn``; ``root`` for the model's own forward), a module's second
    call in one forward pass ``<module>-2``, and so on; a call made while none of the model's
    modules runs (another model, run meanwhile) is not the model's and is left out. Under a process
    group the batches of every rank count (maxima: MAX over ranks, minima: MIN, means over all
    batches), with one all-gather.
    """

    def __init__(self, model: nn.Module, skip: Callable[[], bool] = lambda: False) -> None:
        """Record ``model``'s forward passes, except those run while ``skip()`` is true (the padding
        passes an FSDP2 rank with fewer probe batches runs to match the others' collectives)."""
        self.model = model
        self._skip = skip
        self._skipping = False
        self._outputs: list[dict[str, Tensor]] = []
        self._attention: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {}  # calling module -> per batch
        self._running: list[str] = []  # the model's modules whose forward is running, innermost last
        self._calls: dict[str, int] = {}  # module -> attention calls it made in this forward pass
        self._inside_mha = 0
        self._seen = 0  # attention calls recorded so far, to tell which modules were not seen
        self._entered: list[int] = []  # ``_seen`` when each running transformers attention module began
        self._unseen: dict[str, str | None] = {}  # class name -> its attn_implementation
        self._warned_unseen = False

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Records the forward passes run inside the block (the previous recording is dropped)."""
        self._outputs, self._attention, self._entered = [], {}, []
        handles = [
            self.model.register_forward_pre_hook(self._new_forward),
            self.model.register_forward_hook(self._record_output),
        ]
        # Before the attention hooks below, so that a MultiheadAttention is running when it is read.
        for path, module in self.model.named_modules():
            handles.append(module.register_forward_pre_hook(self._enter(path or ROOT)))
            handles.append(module.register_forward_hook(self._leave, always_call=True))
        for module in self.model.modules():
            if isinstance(module, nn.MultiheadAttention):
                handles.append(module.register_forward_pre_hook(self._record_mha, with_kwargs=True))
                handles.append(module.register_forward_hook(self._leave_mha))
        for module in hf_attention.attention_modules(self.model):
            handles.append(module.register_forward_pre_hook(self._enter_hf_attention))
            handles.append(module.register_forward_hook(self._leave_hf_attention))
        try:
            with _replaced_in_namespaces(self.model, F.scaled_dot_product_attention, self._sdpa), \
                    hf_attention.eager_recorded(self.model, self._record_eager):
                yield
        finally:
            for handle in handles:
                handle.remove()
            self._inside_mha = 0
            self._running = []
        self._warn_unseen()

    def metrics(self, process_group: Any = None) -> dict[str, Tensor]:
        """The metrics of the batches recorded since :meth:`recording` began (of every rank of
        ``process_group``, a ``torch.distributed`` group, when one is given)."""
        per_batch: list[tuple[str, str, Tensor]] = []  # (name, reduction over batches, values per batch)
        if self._outputs:
            for name in self._outputs[0]:
                how = "max" if name.endswith("max") else "mean"
                per_batch.append((name, how, torch.stack([batch[name] for batch in self._outputs])))
        for module, calls in self._attention.items():  # in call order: alike on every rank
            per_batch += [
                (names.family(names.ATTN_MAX_LOGIT_MODULE, module=module), "max", torch.stack([c[0] for c in calls])),
                (f"entropy_mean/{module}", "mean", torch.stack([c[1] for c in calls])),
                (f"entropy_min/{module}", "min", torch.stack([c[2] for c in calls])),
            ]
        if not per_batch:
            return {}
        values = _over_batches(per_batch, process_group)
        metrics = {name: values[name] for name in (self._outputs[0] if self._outputs else ())}
        if self._attention:
            modules = list(self._attention)
            for module in modules:
                key = names.family(names.ATTN_MAX_LOGIT_MODULE, module=module)
                metrics[key] = values[key]
            largest = [values[names.family(names.ATTN_MAX_LOGIT_MODULE, module=module)] for module in modules]
            metrics[names.ATTN_MAX_LOGIT] = torch.stack(largest).max()
            metrics[names.ATTN_ENTROPY_MEAN] = torch.stack([values[f"entropy_mean/{i}"] for i in modules]).mean()
            metrics[names.ATTN_ENTROPY_MIN] = torch.stack([values[f"entropy_min/{i}"] for i in modules]).min()
        return metrics

    # -- what is recorded ---------------------------------------------------------------------
    def _new_forward(self, module: nn.Module, args: Any) -> None:
        self._running, self._calls = [], {}  # (a forward that raised left its modules behind)
        self._skipping = self._skip()

    def _enter(self, path: str):
        def entered(module: nn.Module, args: Any) -> None:
            self._running.append(path)

        return entered

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._running:
            self._running.pop()

    def _record_output(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._skipping:
            return
        logits = _find_logits(output)
        if logits is not None and logits.is_floating_point() and logits.ndim >= 2:
            self._outputs.append(output_logit_metrics(logits))

    def _sdpa(self, original):
        def wrapped(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
            if not self._inside_mha:  # MultiheadAttention is read from its own inputs
                self._record_scores(query, key, attn_mask, is_causal, scale)
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kwargs)

        return wrapped

    def _record_eager(self, module: nn.Module, query: Tensor, key: Tensor, mask: Tensor | None,
                      scaling: float | None, bias: Tensor | None) -> None:
        """One transformers ``eager_attention_forward`` call: ``softmax(q·kᵀ·scaling + bias + mask)``,
        the mask additive and already causal (so no ``is_causal``); some modeling files pass a
        mask longer than the keys and slice it themselves, as done here. A position bias is part
        of the mask, as transformers' own SDPA path passes it, so the max logit stays q·kᵀ·scaling
        and the entropy is that of the weights the model uses. (Gemma-2's soft-capping and
        gpt-oss's sink logits are not applied: the entropy is that of the uncapped, sinkless logits.)"""
        if mask is not None and mask.ndim == 4:
            mask = mask[..., : key.shape[-2]]
        if bias is not None and bias.is_floating_point():
            if mask is None:
                mask = bias
            else:
                mask = bias.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else bias + mask
        self._record_scores(query, key, mask, False, scaling)

    def _enter_hf_attention(self, module: nn.Module, args: Any) -> None:
        self._entered.append(self._seen)

    def _leave_hf_attention(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._entered and self._entered.pop() == self._seen:
            self._unseen.setdefault(type(module).__name__, hf_attention.attn_implementation(module, self.model))

    def _warn_unseen(self) -> None:
        """Once per recorder: transformers attention modules ran but no attention call was seen."""
        if not self._unseen or self._warned_unseen:
            return
        self._warned_unseen = True
        names = ", ".join(sorted(self._unseen))
        implementations = ", ".join(sorted({repr(i) for i in self._unseen.values()}))
        warnings.warn(
            f"edgewatch: the attention logits of {names} (attn_implementation={implementations}) are not "
            "seen, so attn/max_logit and the attention entropy leave them out; load the model with "
            'attn_implementation="sdpa" to measure them.',
            stacklevel=4,  # past the context manager, to the caller's with statement
        )

    def _leave_mha(self, module: nn.Module, args: Any, output: Any) -> None:
        self._inside_mha -= 1

    def _record_mha(self, module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> None:
        self._inside_mha += 1
        if not module._qkv_same_embed_dim or module.in_proj_weight is None:
            return  # separate q/k/v projections: not read (yet)
        query, key = (args + (None, None))[:2]
        query = kwargs.get("query", query)
        key = kwargs.get("key", key)
        if query is None or key is None:
            return
        if module.batch_first:
            query, key = query.transpose(0, 1), key.transpose(0, 1)
        weight, bias = module.in_proj_weight.detach(), module.in_proj_bias
        d = module.embed_dim
        q = F.linear(query.detach(), weight[:d], None if bias is None else bias[:d].detach())
        k = F.linear(key.detach(), weight[d : 2 * d], None if bias is None else bias[d : 2 * d].detach())
        heads, head_dim = module.num_heads, d // module.num_heads
        q = q.reshape(q.shape[0], -1, heads, head_dim).permute(1, 2, 0, 3)  # (batch, heads, T, d_head)
        k = k.reshape(k.shape[0], -1, heads, head_dim).permute(1, 2, 0, 3)
        mask = kwargs.get("attn_mask", args[5] if len(args) > 5 else None)
        padding = kwargs.get("key_padding_mask", args[3] if len(args) > 3 else None)
        batch, length, source = q.shape[0], q.shape[2], k.shape[2]
        if mask is not None:
            mask = mask.view(batch, heads, length, source) if mask.ndim == 3 else mask
            mask = ~mask if mask.dtype == torch.bool else mask  # MultiheadAttention: True = masked out
        if padding is not None:
            keep = ~padding.bool()[:, None, None, :] if padding.dtype == torch.bool else padding[:, None, None, :] == 0
            mask = keep if mask is None else (keep & mask if mask.dtype == torch.bool else mask.masked_fill(~keep, float("-inf")))
        self._record_scores(q, k, mask, bool(kwargs.get("is_causal", False)) and mask is None, None)

    def _record_scores(self, query: Tensor, key: Tensor, mask: Tensor | None, is_causal: bool, scale: float | None) -> None:
        if not self._running:
            return  # no module of the model is running: another model's attention
        if self._skipping:
            self._seen += 1  # seen, so not reported as attention edgewatch cannot read
            return
        module = self._running[-1]
        count = self._calls[module] = self._calls.get(module, 0) + 1
        caller = module if count == 1 else f"{module}-{count}"
        with torch.no_grad():
            q, k = query.detach().float(), key.detach().float()
            if q.shape[-3] != k.shape[-3] and k.ndim >= 3:  # grouped-query attention: repeat k heads
                k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
            scores = q @ k.transpose(-2, -1) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
            allowed = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device)
            if is_causal:
                allowed = allowed.tril(diagonal=scores.shape[-1] - scores.shape[-2])
            allowed = allowed.expand_as(scores)
            additive = None
            if mask is not None:
                if mask.dtype == torch.bool:
                    allowed = allowed & mask.expand_as(scores)
                else:
                    additive = mask.float().expand_as(scores)
                    allowed = allowed & torch.isfinite(additive) & (additive > -1e4)
            largest = scores.abs().masked_fill(~allowed, 0.0).amax()
            logits = scores if additive is None else scores + additive
            logits = logits.masked_fill(~allowed, float("-inf"))
            log_p = torch.log_softmax(logits, dim=-1)
            entropy = -(log_p.exp() * log_p.masked_fill(~allowed, 0.0)).sum(-1)  # (…, T)
            rows = allowed.sum(-1) >= 2  # a query with one key to look at has entropy 0 by force
            self._attention.setdefault(caller, []).append((largest, entropy[rows].mean(), entropy[rows].min()))
            self._seen += 1


def _over_batches(per_batch: list[tuple[str, str, Tensor]], process_group: Any) -> dict[str, Tensor]:
    """Each entry's per-batch values reduced over the batches: ``max``, ``min`` or ``mean``.

    Under a process group, over the batches of every rank: each rank's partial reduction (a max,
    a min, or a sum and a count) is all-gathered in one (entries, 2) tensor, so maxima are the MAX
    over ranks and means are over all batches, as on one process holding every rank's batches.
    """
    if process_group is None:
        return {name: getattr(values, how)() for name, how, values in per_batch}
    partial = torch.stack([
        torch.stack([values.sum(), values.new_tensor(float(len(values)))]) if how == "mean"
        else torch.stack([getattr(values, how)(), values.new_zeros(())])
        for _, how, values in per_batch
    ])  # (entries, 2)
    ranks = gather(partial, process_group)  # (world, entries, 2)
    combined = {}
    for i, (name, how, _) in enumerate(per_batch):
        column = ranks[:, i]
        combined[name] = column[:, 0].sum() / column[:, 1].sum() if how == "mean" else getattr(column[:, 0], how)()
    return combined


def _find_logits(output: Any) -> Tensor | None:
    """The logits in a model's output: the tensor itself, ``.logits``, ``["logits"]`` or the first item."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, dict) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


@contextlib.contextmanager
def _replaced_in_namespaces(model: nn.Module, original: Any, wrap: Any) -> Iterator[None]:
    """``original`` replaced by ``wrap(original)`` in ``torch.nn.functional`` and wherever the modules
    defining ``model``'s layers hold it under a name of their own, for the duration of the block.

    Replacing the attribute of ``torch.nn.functional`` alone misses code that imported the function
    by name, which then keeps calling the original.
    """
    wrapper = wrap(original)
    namespaces = {id(vars(F)): vars(F)}
    for module in model.modules():
        defining = sys.modules.get(type(module).__module__)
        if defining is not None:
            namespaces.setdefault(id(vars(defining)), vars(defining))
    replaced = [(namespace, name) for namespace in namespaces.values()
                for name, value in list(namespace.items()) if value is original]
    for namespace, name in replaced:
        namespace[name] = wrapper
    try:
        yield
    finally:
        for namespace, name in replaced:
            namespace[name] = original
