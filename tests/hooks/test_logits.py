"""Output and attention logits recorded on the probe, against direct computations."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.functional import scaled_dot_product_attention as attention_imported_by_name

import cases
from edgewatch.hooks.meters.logits import LogitRecorder, output_logit_metrics


def test_output_logit_metrics_are_the_formulas():
    z = torch.randn(4, 7, 11, generator=torch.Generator().manual_seed(0)) * 5
    metrics = output_logit_metrics(z)
    log_z = torch.logsumexp(z, -1)
    assert metrics["logits/max"] == z.abs().max()
    assert metrics["logits/log_z_max"] == log_z.max()
    torch.testing.assert_close(metrics["logits/log_z_mean"], log_z.mean())
    torch.testing.assert_close(metrics["logits/z_loss"], 1e-4 * (log_z**2).mean())


def explicit_scores(block: cases.Block, tokens: torch.Tensor) -> torch.Tensor:
    """q·k/√d of the block's attention, computed by hand (causal positions only)."""
    b, t = tokens.shape
    x = block.embed(tokens) + block.pos[:t]
    q, k, _ = block.qkv(block.ln1(x)).chunk(3, dim=-1)
    split = lambda z: z.view(b, t, block.heads, -1).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(q.shape[-1] // block.heads)
    return scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), 0.0)


def test_sdpa_attention_logits_match_an_explicit_computation():
    model = cases.block()
    tokens = cases.token_probe(batches=1)[0][:, :-1]
    recorder = LogitRecorder(model)
    original = F.scaled_dot_product_attention
    with torch.no_grad(), recorder.recording():
        model(tokens)
    assert F.scaled_dot_product_attention is original  # the patch is gone
    metrics = recorder.metrics()
    with torch.no_grad():
        expected = explicit_scores(model, tokens).abs().max()
    torch.testing.assert_close(metrics["attn/max_logit"], expected)
    assert metrics["attn/max_logit/root"] == metrics["attn/max_logit"]  # called from the model's own forward
    assert 0 < metrics["attn/entropy_min"] <= metrics["attn/entropy_mean"] <= math.log(tokens.shape[1])
    torch.testing.assert_close(metrics["logits/max"], model(tokens).abs().max())


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_logits_match_an_explicit_computation(batch_first):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=batch_first)
    x = torch.randn(3, 6, 16) if batch_first else torch.randn(6, 3, 16)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)  # MultiheadAttention: True = masked out
    recorder = LogitRecorder(attention)
    with torch.no_grad(), recorder.recording():
        attention(x, x, x, attn_mask=causal, need_weights=False)
    xb = x if batch_first else x.transpose(0, 1)
    q, k, _ = F.linear(xb, attention.in_proj_weight, attention.in_proj_bias).chunk(3, -1)
    split = lambda z: z.view(3, 6, 4, 4).transpose(1, 2)  # noqa: E731
    scores = (split(q) @ split(k).transpose(-2, -1) / 2.0).masked_fill(causal, 0.0)
    metrics = recorder.metrics()
    torch.testing.assert_close(metrics["attn/max_logit"], scores.detach().abs().max())
    assert [name for name in metrics if name.startswith("attn/max_logit/")] == ["attn/max_logit/root"]  # counted once


def test_logit_metrics_come_with_every_curvature_probe():
    import edgewatch as ew

    model, probe = cases.block(), cases.token_probe()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = ew.Monitor(model, optimizer, cases.next_token_loss, probe, curvature=2).attach()
    for _ in range(2):
        optimizer.zero_grad()
        cases.next_token_loss(model, probe[0]).backward()
        optimizer.step()
    for name in ("logits/max", "logits/log_z_mean", "logits/log_z_max", "logits/z_loss", "attn/max_logit",
                 "attn/max_logit/root", "attn/entropy_mean", "attn/entropy_min"):
        assert name in monitor.latest and math.isfinite(monitor.latest[name]), name


class HandAttention(nn.Module):
    """A user's own attention (matmul + softmax): its class name ends in Attention, like transformers'."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        return (q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(-1) @ v


def test_a_users_own_attention_is_not_reported_as_unseen_transformers_attention():
    model = HandAttention()
    recorder = LogitRecorder(model)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*attention logits")
        with torch.no_grad(), recorder.recording():
            model(torch.randn(2, 5, 8))
    assert "logits/max" in recorder.metrics() and "attn/max_logit" not in recorder.metrics()


def test_recording_needs_no_transformers():
    """Optional integrations stay optional: with transformers unimportable, edgewatch imports and
    records, and never tries to import it."""
    script = (
        "import sys; sys.modules['transformers'] = None\n"  # makes `import transformers` raise
        "sys.path.insert(0, 'tests')\n"
        "import torch, cases, edgewatch\n"
        "from edgewatch.hooks.meters.logits import LogitRecorder\n"
        "model = cases.block(); recorder = LogitRecorder(model)\n"
        "with torch.no_grad(), recorder.recording():\n"
        "    model(cases.token_probe(batches=1)[0][:, :-1])\n"
        "assert 'attn/max_logit/root' in recorder.metrics()\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", script], cwd=root, check=True, timeout=120)


class _SelfAttention(nn.Module):
    def __init__(self, d: int = 8, twice: bool = False) -> None:
        super().__init__()
        self.qkv, self.twice = nn.Linear(d, 3 * d), twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, 2, -1)).permute(2, 0, 3, 1, 4)  # 2 heads
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if self.twice:  # e.g. a second pass over the same keys, with queries scaled up
            out = out + F.scaled_dot_product_attention(4 * q, k, v, is_causal=True)
        return x + out.transpose(1, 2).flatten(-2)


class _Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.ModuleDict({"attn": _SelfAttention()}), nn.ModuleDict({"attn": _SelfAttention(twice=True)})])
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer["attn"](x)
        return self.mha(x, x, x, need_weights=False)[0]


def test_attention_is_named_by_the_module_that_made_the_call():
    torch.manual_seed(0)
    model, other = _Stack(), _SelfAttention()
    x = torch.randn(3, 5, 8)
    recorder = LogitRecorder(model)
    with torch.no_grad(), recorder.recording():
        other(x)  # another module's attention, outside the model: not counted
        model(x)
        model(x)  # a second batch: the same names
    metrics = recorder.metrics()
    per_module = [name for name in metrics if name.startswith("attn/max_logit/")]
    assert per_module == ["attn/max_logit/layers.0.attn", "attn/max_logit/layers.1.attn", "attn/max_logit/layers.1.attn-2",
                          "attn/max_logit/mha"]
    assert metrics["attn/max_logit/layers.1.attn-2"] > metrics["attn/max_logit/layers.1.attn"]  # queries scaled by 4
    assert metrics["attn/max_logit"] == max(metrics[name] for name in per_module)
    with torch.no_grad():
        attention = model.layers[0]["attn"]
        q, k, _ = attention.qkv(x).unflatten(-1, (3, 2, -1)).permute(2, 0, 3, 1, 4)
        causal = torch.ones(5, 5, dtype=torch.bool).tril()
        expected = (q @ k.transpose(-2, -1) / 2.0).masked_fill(~causal, 0.0).abs().max()
    torch.testing.assert_close(metrics["attn/max_logit/layers.0.attn"], expected)


class ImportsAttentionByName(nn.Module):
    """Calls scaled_dot_product_attention through a name of this module's own (imported above), as
    code that did ``from torch.nn.functional import scaled_dot_product_attention`` does."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.qkv = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return attention_imported_by_name(q, k, v)


def test_attention_imported_by_name_is_recorded_too():
    model = ImportsAttentionByName()
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
    recorder = LogitRecorder(model)
    with torch.no_grad(), recorder.recording():
        model(x)
    assert attention_imported_by_name is F.scaled_dot_product_attention  # put back, here and there
    q, k, _ = model.qkv(x).chunk(3, dim=-1)
    expected = (q @ k.transpose(-2, -1) / math.sqrt(8)).abs().max()
    torch.testing.assert_close(recorder.metrics()["attn/max_logit"], expected.detach())
