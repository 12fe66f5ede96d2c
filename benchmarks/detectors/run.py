"""The detector benchmark: the labelled corpus (corpus.py) run with the Monitor, scored per detector.

For every event kind: true positives (a labelled event raised at or after its onset, or at most
``EARLY`` steps before it), false positives (an event of a kind the run neither labels nor allows,
or an event of a labelled kind more than ``EARLY`` steps before its onset; on a healthy run also
every event of severity warning or worse), misses (a label without its event) and the lag from
the labelled onset to the first matching event, in steps.

    python benchmarks/detectors/run.py [--smoke] [--out DIR] [--only NAME ...]

Writes ``<out>/detectors.json`` (default ``benchmarks/results/detectors``, ``detectors-smoke`` with
``--smoke``) and, for a full run of the whole corpus, ``benchmarks/DETECTORS.md``.
Full run: about 70 s on one core (23 runs); ``--smoke`` (a dozen steps per run): about 15-30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import corpus  # noqa: E402

import edgewatch as ew  # noqa: E402
from edgewatch.hooks.events import KINDS, SEVERITIES  # noqa: E402

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "results" / "detectors"
MARKDOWN = ROOT / "DETECTORS.md"
EARLY = 10  # steps before a labelled onset that still count as finding it (a probe interval)


def score(healthy: bool, allowed: tuple[str, ...], trained: corpus.Trained) -> dict[str, Any]:
    """This run's matches, false positives and misses."""
    labelled = {label.kind: label for label in trained.labels}
    found, false = [], []
    matched: set[str] = set()
    for event in trained.events:
        label = labelled.get(event.kind)
        if label is not None and event.step >= label.onset - EARLY:
            if event.kind not in matched:
                matched.add(event.kind)
                found.append({"kind": event.kind, "onset": label.onset, "step": event.step,
                              "lag": event.step - label.onset, "severity": event.severity})
            continue
        serious = SEVERITIES.index(event.severity) >= SEVERITIES.index("warning")
        if (healthy and serious) or (label is None and event.kind not in allowed) or label is not None:
            false.append({"kind": event.kind, "step": event.step, "severity": event.severity, "message": event.message})
    missed = [{"kind": k, "onset": label.onset, "source": label.source} for k, label in labelled.items() if k not in matched]
    return {"found": found, "false": false, "missed": missed}


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per event kind: TP, FP, misses and lags over all runs."""
    table: dict[str, dict[str, Any]] = {kind: {"tp": 0, "fp": 0, "missed": 0, "lags": [], "fp_runs": [], "missed_runs": []}
                                        for kind in KINDS}
    for result in results:
        for hit in result["score"]["found"]:
            table[hit["kind"]]["tp"] += 1
            table[hit["kind"]]["lags"].append(hit["lag"])
        for event in result["score"]["false"]:
            table[event["kind"]]["fp"] += 1
            table[event["kind"]]["fp_runs"].append(f"{result['name']}@{event['step']}")
        for miss in result["score"]["missed"]:
            table[miss["kind"]]["missed"] += 1
            table[miss["kind"]]["missed_runs"].append(result["name"])
    return table


def lags_text(lags: list[int]) -> str:
    return ", ".join(str(lag) for lag in lags) if lags else "–"


def print_table(table: dict[str, dict[str, Any]], results: list[dict[str, Any]]) -> None:
    print(f"\n{'detector (event kind)':<28} {'TP':>3} {'FP':>3} {'miss':>4}  lags (steps)   false positives / misses")
    for kind, row in table.items():
        where = "; ".join(row["fp_runs"] + [f"missed {r}" for r in row["missed_runs"]])
        print(f"{kind:<28} {row['tp']:>3} {row['fp']:>3} {row['missed']:>4}  {lags_text(row['lags']):<14} {where}")
    healthy = [r for r in results if r["healthy"]]
    warnings = sum(1 for r in healthy for e in r["score"]["false"] if e["severity"] != "info")
    print(f"\nhealthy runs: {len(healthy)}, warning-or-worse events on them: {warnings}; "
          f"eventful runs: {len(results) - len(healthy)}; "
          f"labels: {sum(len(r['labels']) for r in results)}, found: {sum(len(r['score']['found']) for r in results)}")


def print_runs(results: list[dict[str, Any]]) -> None:
    for result in results:
        kinds = ", ".join(f"{e['kind']}@{e['step']}({e['severity'][0]})" for e in result["events"]) or "none"
        labels = ", ".join(f"{l['kind']}@{l['onset']}" for l in result["labels"]) or "healthy"
        broken = f"  BROKEN LABELS: {result['info']['broken_labels']}" if result["info"].get("broken_labels") else ""
        print(f"{result['name']:<26} {result['seconds']:5.1f}s  steps {result['steps']:>4}  labels: {labels}  events: {kinds}{broken}")


def markdown(table: dict[str, dict[str, Any]], results: list[dict[str, Any]], seconds: float) -> str:
    rows = ["| detector (event kind) | TP | FP | misses | lag from onset (steps) |", "|---|---|---|---|---|"]
    for kind, row in table.items():
        rows.append(f"| `{kind}` | {row['tp']} | {row['fp']} | {row['missed']} | {lags_text(row['lags'])} |")
    runs = ["| run | setting | labels (kind @ onset step: source) | events raised |", "|---|---|---|---|"]
    for result in results:
        labels = "; ".join(f"`{l['kind']}` @ {l['onset']}: {l['source']}" for l in result["labels"]) or "healthy"
        events = ", ".join(f"`{e['kind']}` @ {e['step']} ({e['severity']})" for e in result["events"]) or "none"
        allowed = f" Allowed: {', '.join(result['allowed'])} ({result['why_allowed']})." if result["allowed"] else ""
        runs.append(f"| {result['name']} | {result['description']}.{allowed} | {labels} | {events} |")
    healthy = sum(r["healthy"] for r in results)
    serious = sum(1 for r in results if r["healthy"] for e in r["score"]["false"] if e["severity"] != "info")
    labels = sum(len(r["labels"]) for r in results)
    found = sum(len(r["score"]["found"]) for r in results)
    return "\n".join([
        "# Detector benchmark",
        "",
        "Generated by `make bench-detectors` (`benchmarks/detectors/run.py`); do not edit by hand.",
        f"{len(results)} labelled CPU runs ({healthy} healthy), {seconds:.0f} s on one thread "
        f"(torch {torch.__version__}, Python {platform.python_version()}, edgewatch {ew.__version__}).",
        "",
        "A label is an event kind and its onset step, from the run's definition or from a measurement the",
        "run states (never from a detector). True positive: the first event of a labelled kind at or after",
        f"its onset (or up to {EARLY} steps before it); lag = event step − onset. False positive: an event",
        "of a kind the run neither labels nor allows, an event of a labelled kind long before its onset, and",
        "on a healthy run every event of severity warning or worse. Each Monitor probes curvature on a fixed",
        "batch at steps 0, 1, 2, 4 and every 10 steps (every 5 in the catapult and divergence runs, every 5, 10",
        "and 20 in the three `gd_eos` runs, whose verdicts must agree) and takes cheap metrics every step.",
        "The rules themselves: docs/detectors.md.",
        "",
        f"**Healthy runs: {healthy}, events of severity warning or worse on them: {serious}. Labels: {labels}, "
        f"found: {found}.**",
        "",
        *rows,
        "",
        "## Runs",
        "",
        *runs,
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a dozen steps per run: the code path, not the scores")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="run only these corpus entries")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = args.out or (RESULTS.with_name("detectors-smoke") if args.smoke else RESULTS)
    specs = [s for s in corpus.CORPUS if args.only is None or s.name in args.only]
    started = time.perf_counter()
    results = []
    for spec in specs:
        begun = time.perf_counter()
        trained = spec.build(args.smoke)
        sharpened = corpus.sharpening_label(trained) if "progressive_sharpening" not in spec.allowed else "allowed"
        allowed = spec.allowed + (("progressive_sharpening",) if sharpened == "allowed" else ())
        results.append({
            "name": spec.name, "description": spec.description, "healthy": spec.healthy,
            "allowed": list(allowed), "why_allowed": spec.why_allowed, "sharpening": sharpened,
            "labels": [vars(label) for label in trained.labels], "steps": trained.steps,
            "seconds": round(time.perf_counter() - begun, 2), "info": trained.info,
            "events": [event.to_dict() for event in trained.events],
            "score": score(spec.healthy, allowed, trained),
            "series": {name: [steps, [float(f"{v:.4g}") for v in values]] for name, (steps, values) in trained.series.items()
                       if name != "loss" and name != "grad/norm"},
        })
        print_runs(results[-1:])
    seconds = time.perf_counter() - started
    table = summarize(results)
    print_table(table, results)
    print(f"\ntotal {seconds:.1f} s")
    out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "detectors", "smoke": args.smoke, "seconds": round(seconds, 1), "early": EARLY,
               "table": table, "runs": results}
    (out / "detectors.json").write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    text = markdown(table, results, seconds)
    if args.smoke or args.only is not None:
        (out / "DETECTORS.md").write_text(text, encoding="utf-8")
    else:
        MARKDOWN.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
