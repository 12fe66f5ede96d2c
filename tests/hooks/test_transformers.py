"""Hugging Face models built from a small local config (no downloads): GPT-2 and BERT style.

Their default attention is SDPA, whose fused kernels never materialize the logits; the Monitor
still reads them. Needs the ``transformers`` extra, which ``make test`` installs.
"""

from __future__ import annotations

import math

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
                 "attn/max_logit/0", "attn/max_logit/1", "attn/entropy_min"):
        assert math.isfinite(latest[name]), name
    assert latest["curvature/lambda_max"] > 0
    if make is bert:  # near-uniform attention at init over 12 keys
        assert latest["attn/entropy_mean"] == pytest.approx(math.log(12), rel=1e-2)


def test_gpt2_attention_logits_match_its_weights():
    model = gpt2().eval()
    tokens = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(2))
    recorder = ew.hooks.probes.logits.LogitRecorder(model)
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
    torch.testing.assert_close(recorder.metrics()["attn/max_logit/0"], expected)
