"""The metric names: one table in edgewatch.names, every logged key in it, the docs generated from it."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch

import cases
import edgewatch as ew
from edgewatch import names
from edgewatch.hooks import Monitor

ROOT = Path(__file__).resolve().parent.parent


def watched_transformer(tmp_path: Path, steps: int = 6, **kwargs) -> Monitor:
    """Every feature on: a causal SDPA transformer under AdamW with two parameter groups, a fixed
    curvature schedule with k=2, cheap metrics and norms on every step."""
    model = cases.block(seed=3)
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for name, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=3e-3)
    probe = cases.token_probe(batches=2, size=8)
    monitor = Monitor(model, optimizer, cases.next_token_loss, probe, every=1, norms_every=1, curvature=2, k=2,
                      max_hvps=20, run_dir=tmp_path / "run", **kwargs).attach()
    for step in range(steps):
        optimizer.zero_grad()
        loss = cases.next_token_loss(model, probe[step % 2])
        monitor.observe(loss)
        loss.backward()
        optimizer.step()
    monitor.close()
    return monitor


def logged_keys(run_dir: Path) -> set[str]:
    keys: set[str] = set()
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        keys.update(json.loads(line))
    return keys - {"step", "time"}


def test_every_logged_key_is_in_the_table(tmp_path):
    monitor = watched_transformer(tmp_path)
    keys = logged_keys(monitor.run_dir)
    missing = sorted(key for key in keys if names.entry_for(key) is None)
    assert not missing, f"logged but not in edgewatch.names.METRICS: {missing}"
    # the run had every feature on: each family of the table shows up
    for name in (names.LOSS, names.LR, "lr/group_1", names.GRAD_NORM, names.PARAM_NORM, names.UPDATE_RATIO,
                 names.ADAM_EPSILON_FRACTION, names.LAMBDA_MAX, "curvature/lambda_2", names.PRECOND_LAMBDA_MAX,
                 names.PRECOND_HVPS, names.STABILITY_RATIO, names.DIRECTIONAL_SHARPNESS, names.LOGITS_LOG_Z_MAX,
                 names.ATTN_MAX_LOGIT, "attn/max_logit/root", names.ATTN_ENTROPY_MIN, names.MONITOR_OVERHEAD,
                 names.PROBE_HVPS, names.GRAD_PROBE_NORM):
        assert name in keys, name
    assert any(key.startswith(names.stem(names.GRAD_NORM_MODULE)) for key in keys)
    assert any(key.startswith(names.stem(names.TOP_ENERGY)) for key in keys)
    assert set(monitor.latest) <= keys  # what the Monitor holds is what it logged


def test_table_entries_are_unique_and_well_formed():
    listed = [m.name for m in names.METRICS]
    assert len(listed) == len(set(listed))
    for m in names.METRICS:
        assert re.fullmatch(r"[A-Za-z0-9_./{}-]+", m.name), m.name
        assert m.meaning and m.unit and m.when and m.section, m.name
        assert len(re.findall(r"\{\w+\}", m.name)) <= 1, m.name
    assert names.entry_for("grad/norm/blocks.0").name == names.GRAD_NORM_MODULE
    assert names.entry_for(names.GRAD_NORM).name == names.GRAD_NORM  # exact names before families
    assert names.entry_for("curvature/lambda_max_residual").name == names.LAMBDA_MAX_RESIDUAL
    assert names.entry_for("no/such/metric") is None
    for old, new in names.ALIASES.items():
        assert names.entry_for(old) is None and names.entry_for(new) is not None


def test_the_docs_tables_are_the_table():
    doc = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    # to regenerate: path.write_text(names.with_tables(path.read_text())) for path = docs/metrics.md
    assert names.with_tables(doc) == doc, "docs/metrics.md's tables differ from edgewatch.names.METRICS"
    stale = doc.replace("| `curvature/precond/lambda_max` |", "| `curvature/precond_lambda_max` |")
    assert stale != doc and names.with_tables(stale) == doc  # a stale row is noticed, and rewritten
    documented = {m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", doc, re.M)}
    assert documented == {names.documented(m.name) for m in names.METRICS}


def _metric_literals(path: Path) -> list[tuple[int, str]]:
    """String constants in ``path`` that spell a metric name (or a family's start) with a ``/``."""
    exact = {m.name for m in names.METRICS if "{" not in m.name} | set(names.ALIASES)
    stems = {names.stem(m.name) for m in names.METRICS if "{" in m.name}
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            text = node.values[0].value
            if any(text.startswith(stem) for stem in stems if "/" in stem):
                found.append((node.lineno, text))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "/" in node.value:
            if node.value in exact or node.value in stems:
                found.append((node.lineno, node.value))
    return found


@pytest.mark.parametrize("folder", ["hooks", "cli", "loggers", "integrations", "curvature", "optimizers"])
def test_code_uses_the_constants(folder):
    found = {f"{path.relative_to(ROOT)}:{line}": text for path in sorted((ROOT / "edgewatch" / folder).rglob("*.py"))
             for line, text in _metric_literals(path)}
    found.update({f"edgewatch/run.py:{line}": text for line, text in _metric_literals(ROOT / "edgewatch" / "run.py")})
    assert not found, f"metric names spelled out instead of edgewatch.names constants: {found}"


def test_an_old_run_directory_reads_under_the_new_names(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    records = [{"step": 1, "time": 0.0, "loss": 1.0, "curvature/lambda_max": 40.0, "curvature/precond_lambda_max": 300.0},
               {"step": 2, "time": 0.1, "loss": 0.9, "curvature/precond_lambda_max": 310.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    event = {"step": 2, "kind": "nonfinite", "severity": "critical", "message": "...",
             "values": {"curvature/precond_lambda_max": "nan"}}
    (run / "events.jsonl").write_text(json.dumps(event) + "\n")
    loaded = ew.load_run(run)
    assert "curvature/precond_lambda_max" not in loaded.metrics
    steps, values = loaded.series(names.PRECOND_LAMBDA_MAX)
    assert steps.tolist() == [1, 2] and values.tolist() == [300.0, 310.0]
    assert list(loaded.events[0]["values"]) == [names.PRECOND_LAMBDA_MAX]
    from edgewatch.cli.report import summarize

    assert summarize(loaded._record)["max_precond_lambda"] == 310.0
