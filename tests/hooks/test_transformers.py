"""Hugging Face models built from a small local config (no downloads): GPT-2, BERT and Llama style.

Their default attention is SDPA, whose fused kernels never materialize the logits; the Monitor
still reads them, and reads eager attention (``attn_implementation="eager"``) too. Needs the
``transformers`` extra, which ``make test`` installs.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

import edgewatch as ew


def gpt2():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def bert():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16)
    return BertForMaskedLM(config)


def attention_keys(model) -> list[str]:
    """``attn/max_logit/<module>`` of each layer, in layer order: named by the attention module that made the call."""
    path = {"GPT2LMHeadModel": "transformer.h.{}.attn", "BertForMaskedLM": "bert.encoder.layer.{}.attention.self",
            "LlamaForCausalLM": "model.layers.{}.self_attn"}[type(model).__name__]
    return [f"attn/max_logit/{path.format(i)}" for i in range(model.config.num_hidden_layers)]


def language_model_loss(model, tokens):
    return model(input_ids=tokens, labels=tokens).loss


@pytest.mark.parametrize("make", [gpt2, bert], ids=["gpt2", "bert"])
def test_monitor_reads_a_hugging_face_model(make):
    model = make()
    assert model.config._attn_implementation == "sdpa"
    tokens = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = ew.Monitor(model, optimizer, language_model_loss, [tokens], curvature=2).attach()
    for _ in range(2):
        optimizer.zero_grad()
        language_model_loss(model, tokens).backward()
        optimizer.step()
    latest = monitor.latest
    for name in ("curvature/lambda_max", "curvature/stability_ratio", "logits/log_z_max", "attn/max_logit",
                 *attention_keys(model), "attn/entropy_min"):
        assert math.isfinite(latest[name]), name
    assert latest["curvature/lambda_max"] > 0
    if make is bert:  # near-uniform attention at init over 12 keys
        assert latest["attn/entropy_mean"] == pytest.approx(math.log(12), rel=1e-2)


def test_gpt2_attention_logits_match_its_weights():
    model = gpt2().eval()
    tokens = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(2))
    recorder = ew.hooks.meters.logits.LogitRecorder(model)
    with torch.no_grad(), recorder.recording():
        model(input_ids=tokens)
    with torch.no_grad():
        hidden = model.transformer.wte(tokens) + model.transformer.wpe(torch.arange(10))
        block = model.transformer.h[0]
        q, k, _ = block.attn.c_attn(block.ln_1(hidden)).split(32, dim=-1)
        split = lambda z: z.view(2, 10, 2, 16).transpose(1, 2)  # noqa: E731
        scores = split(q) @ split(k).transpose(-2, -1) / 4.0
        causal = torch.ones(10, 10, dtype=torch.bool).tril()
        expected = scores.masked_fill(~causal, 0.0).abs().max()
    torch.testing.assert_close(recorder.metrics()["attn/max_logit/transformer.h.0.attn"], expected)


# -- eager attention (attn_implementation="eager", which output_attentions needs) ------------------------


def eager_gpt2(**overrides):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                        eos_token_id=0, attn_implementation="eager", **overrides)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # larger query and key weights than at init, so the logits are far from 0
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, :64].mul_(8)
    return model


def eager_llama():
    """Llama-style: RMSNorm, rotary positions and grouped-query attention (4 query heads, 2 key heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation="eager")
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    return model


def gpt2_scores(model, hidden_states, length):
    """q·k/√d of every GPT-2 layer from its weights, one (batch, heads, T, T) tensor per layer."""
    scores = []
    for block, hidden in zip(model.transformer.h, hidden_states):
        q, k, _ = block.attn.c_attn(block.ln_1(hidden)).split(32, dim=-1)
        split = lambda z: z.view(-1, length, 2, 16).transpose(1, 2)  # noqa: E731
        scores.append(split(q) @ split(k).transpose(-2, -1) / 4.0)
    return scores


def llama_scores(model, hidden_states, length):
    """q·k/√d of every Llama layer from its weights and its rotary embedding, key heads repeated."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cos, sin = model.model.rotary_emb(hidden_states[0], torch.arange(length)[None])
    scores = []
    for layer, hidden in zip(model.model.layers, hidden_states):
        x = layer.input_layernorm(hidden)
        q = layer.self_attn.q_proj(x).view(-1, length, 4, 8).transpose(1, 2)
        k = layer.self_attn.k_proj(x).view(-1, length, 2, 8).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        scores.append(q @ k.repeat_interleave(2, dim=1).transpose(-2, -1) / math.sqrt(8))
    return scores


@pytest.mark.parametrize("make,scores_of", [(eager_gpt2, gpt2_scores), (eager_llama, llama_scores)],
                         ids=["gpt2", "llama"])
def test_eager_attention_logits_match_the_query_key_products(make, scores_of):
    model = make().eval()
    assert model.config._attn_implementation == "eager"
    tokens = torch.randint(1, 50, (2, 10), generator=torch.Generator().manual_seed(2))
    padding = torch.ones(2, 10, dtype=torch.long)
    padding[1, :3] = 0  # left padding: the second sequence's first three keys are masked out
    recorder = ew.hooks.meters.logits.LogitRecorder(model)
    with torch.no_grad(), recorder.recording():
        model(input_ids=tokens, attention_mask=padding)
    metrics = recorder.metrics()
    with torch.no_grad():
        out = model(input_ids=tokens, attention_mask=padding, output_attentions=True, output_hidden_states=True)
        all_scores = scores_of(model, out.hidden_states, 10)
    allowed = torch.ones(10, 10, dtype=torch.bool).tril() & padding.bool()[:, None, None, :]  # (2, 1, T, T)
    rows = allowed.any(-1).expand(-1, all_scores[0].shape[1], -1)  # queries with a key to look at
    means, minima = [], []
    for i, (scores, attention) in enumerate(zip(all_scores, out.attentions)):
        # the hand-made products are the model's own: output_attentions is their masked softmax
        torch.testing.assert_close(scores.masked_fill(~allowed, float("-inf")).softmax(-1)[rows], attention[rows])
        torch.testing.assert_close(metrics[attention_keys(model)[i]], scores.masked_fill(~allowed, 0.0).abs().max())
        entropy = -(attention * attention.clamp_min(1e-30).log()).sum(-1)
        several = allowed.sum(-1).expand_as(entropy) >= 2  # one key to look at: entropy 0 by force
        means.append(entropy[several].mean())
        minima.append(entropy[several].min())
    assert [name for name in metrics if name.startswith("attn/max_logit/")] == attention_keys(model)
    assert metrics["attn/max_logit"] > 1.0  # a real logit, far from the near-zero ones at init
    torch.testing.assert_close(metrics["attn/entropy_mean"], torch.stack(means).mean())
    torch.testing.assert_close(metrics["attn/entropy_min"], torch.stack(minima).min())


@pytest.mark.parametrize("make", [eager_gpt2, eager_llama], ids=["gpt2", "llama"])
def test_recording_eager_attention_changes_no_output_or_gradient(make):
    tokens = torch.randint(1, 50, (2, 10), generator=torch.Generator().manual_seed(3))
    runs = []
    for record in (False, True):
        model = make()  # train mode; its dropout probabilities are 0 only where the config says so
        recorder = ew.hooks.meters.logits.LogitRecorder(model)
        torch.manual_seed(4)  # the same dropout masks in both runs
        with recorder.recording() if record else contextlib.nullcontext():
            out = model(input_ids=tokens, labels=tokens)
        out.loss.backward()
        runs.append((out.logits, [p.grad for p in model.parameters()]))
        assert (attention_keys(model)[1] in recorder.metrics()) == record
    (logits, grads), (logits_recorded, grads_recorded) = runs
    assert torch.equal(logits, logits_recorded)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_recorded))


@pytest.mark.parametrize("make", [eager_gpt2, eager_llama], ids=["gpt2", "llama"])
def test_monitor_reads_eager_attention(make):
    from transformers.models.gpt2 import modeling_gpt2
    from transformers.models.llama import modeling_llama

    originals = modeling_gpt2.eager_attention_forward, modeling_llama.eager_attention_forward
    model = make()
    tokens = torch.randint(1, 50, (4, 12), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*attention logits")  # seen, so no "not seen" warning
        monitor = ew.Monitor(model, optimizer, language_model_loss, [tokens], curvature=2).attach()
        for _ in range(2):
            optimizer.zero_grad()
            language_model_loss(model, tokens).backward()
            optimizer.step()
    for name in ("curvature/lambda_max", "attn/max_logit", *attention_keys(model), "attn/entropy_mean", "attn/entropy_min"):
        assert math.isfinite(monitor.latest[name]), name
    assert [name for name in monitor.latest if name.startswith("attn/max_logit/")] == attention_keys(model)  # each once
    assert (modeling_gpt2.eager_attention_forward, modeling_llama.eager_attention_forward) == originals


def test_attention_of_another_model_is_not_counted():
    model, other = eager_gpt2().eval(), eager_llama().eval()
    tokens = torch.randint(1, 50, (2, 10), generator=torch.Generator().manual_seed(5))
    recorder = ew.hooks.meters.logits.LogitRecorder(model)
    with torch.no_grad(), recorder.recording():
        other(input_ids=tokens)  # a different model running meanwhile, e.g. a reference model
        model(input_ids=tokens)
        GPT2LMHeadModel(model.config).eval()(input_ids=tokens)  # and another of the same class
    assert [name for name in recorder.metrics() if name.startswith("attn/max_logit/")] == attention_keys(model)


def test_attention_not_seen_is_reported_once():
    # GPT-2's reorder_and_upcast_attn computes eager attention in a method of its own, not seen
    model = eager_gpt2(reorder_and_upcast_attn=True).eval()
    tokens = torch.randint(1, 50, (2, 10), generator=torch.Generator().manual_seed(6))
    recorder = ew.hooks.meters.logits.LogitRecorder(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with torch.no_grad(), recorder.recording():
                model(input_ids=tokens)
    messages = [str(w.message) for w in caught if "edgewatch" in str(w.message)]
    assert len(messages) == 1, messages
    assert "GPT2Attention" in messages[0] and "'eager'" in messages[0] and 'attn_implementation="sdpa"' in messages[0]
    assert not any(name.startswith("attn/") for name in recorder.metrics())
    assert "logits/max" in recorder.metrics()  # the output logits are still recorded


def test_eager_t5_position_bias_counts_as_in_sdpa():
    """T5 adds a learned relative position bias to q·k (scaling 1); its eager kernel takes it as
    ``position_bias``, its SDPA path folds it into the mask. Both must give the same numbers."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokens = torch.randint(1, 50, (2, 10), generator=torch.Generator().manual_seed(7))
    metrics = {}
    for implementation in ("sdpa", "eager"):
        torch.manual_seed(0)
        config = T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                          decoder_start_token_id=0, attn_implementation=implementation)
        model = T5ForConditionalGeneration(config).eval()
        recorder = ew.hooks.meters.logits.LogitRecorder(model)
        with torch.no_grad(), recorder.recording():
            model(input_ids=tokens, decoder_input_ids=tokens)
        metrics[implementation] = recorder.metrics()
    assert len([name for name in metrics["eager"] if name.startswith("attn/max_logit/")]) == 3  # self, self, cross
    assert metrics["eager"].keys() == metrics["sdpa"].keys()
    for name in metrics["sdpa"]:
        torch.testing.assert_close(metrics["eager"][name], metrics["sdpa"][name], msg=name)
