"""Run every science benchmark, then gather their findings into ``benchmarks/RESULTS.md``.

Each benchmark (``benchmarks/science/<name>.py``) reproduces one phenomenon from the literature
at a scale 2 CPU cores handle in a few minutes, and writes ``<out>/<name>.json`` (its findings:
phenomenon, paper, setting, criterion, measured value, pass/fail) and ``<out>/<name>.png``. This
script runs them one after the other, each in its own process (a failure in one leaves the
others' results), and writes the table. The figures are copied to ``benchmarks/figures/`` so
that RESULTS.md can show them.

    python benchmarks/science/run_all.py              # all of them: make bench-science
    python benchmarks/science/run_all.py --smoke      # a few steps each, into results/science-smoke; no RESULTS.md
    python benchmarks/science/run_all.py --only catapult eos_gd
    python benchmarks/science/run_all.py --table-only # RESULTS.md from the JSON already there
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RESULTS_MD = HERE.parent / "RESULTS.md"
FIGURES = HERE.parent / "figures"

#: One intra-op thread: the models are small, and the figures in RESULTS.md were measured so.
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}

#: In the order of the issue that asked for them; each one a script beside this one.
BENCHMARKS = ("eos_gd", "adaptive_eos", "momentum_eos", "warmup_normalization", "catapult", "attention_logits",
              "tiny_subspace", "spectral_density_bn", "adam_epsilon", "lr_sensitivity", "critical_sharpness")


def main(argv: list[str] | None = None) -> int:
    from common import RESULTS_DIR, SMOKE_DIR, machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results directory (default {RESULTS_DIR}, {SMOKE_DIR.name} with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="a few steps of each benchmark; RESULTS.md is not written")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME", help=f"a subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--table-only", action="store_true", help="write RESULTS.md from the JSON in --out, run nothing")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = SMOKE_DIR if args.smoke else RESULTS_DIR

    names = args.only or BENCHMARKS
    failed: list[str] = []
    if not args.table_only:
        for index, name in enumerate(names, start=1):
            print(f"[{index}/{len(names)}] {name}", flush=True)
            command = [sys.executable, str(HERE / f"{name}.py"), "--out", str(args.out)] + (["--smoke"] if args.smoke else [])
            start = time.perf_counter()
            if subprocess.run(command, env=ENV, check=False).returncode != 0:
                failed.append(name)
            print(f"[{index}/{len(names)}] {name}: {time.perf_counter() - start:.0f} s", flush=True)
    results = [load(args.out / f"{name}.json") for name in BENCHMARKS]
    present = [result for result in results if result is not None]
    print()
    print(findings_table(present, markdown=False))
    if not args.smoke:
        smoke = [result["benchmark"] for result in present if result["smoke"]]
        if failed or smoke:
            print(f"\nnot writing {RESULTS_MD}: {', '.join(failed) or ', '.join(smoke)} "
                  f"{'failed' if failed else 'ran with --smoke'}", file=sys.stderr)
        else:
            FIGURES.mkdir(exist_ok=True)
            for result in present:
                figure = args.out / result["figure"]
                if figure.exists():
                    shutil.copyfile(figure, FIGURES / result["figure"])
            RESULTS_MD.write_text(results_markdown(present, machine()), encoding="utf-8")
            print(f"\nwrote {RESULTS_MD}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def script_docstring(name: str) -> str:
    """The benchmark's module docstring, where each states its setting and what did and did not reproduce."""
    path = HERE / f"{name}.py"
    return (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "") if path.exists() else ""


def load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


COLUMNS = ("phenomenon", "paper", "setting", "criterion", "measured", "result")


def findings_table(results: list[dict[str, Any]], *, markdown: bool) -> str:
    rows = [[f["phenomenon"], f["paper"], f["setting"], f["criterion"], f["measured"], "pass" if f["passed"] else "FAIL"]
            for result in results for f in result["findings"]]
    if markdown:
        def escape(text: object) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        return "\n".join(lines + ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows])
    return "\n".join("  ".join([row[-1].ljust(4), row[0], "|", row[2], "|", row[4]]) for row in rows)


def results_markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    passed = sum(f["passed"] for result in results for f in result["findings"])
    total = sum(len(result["findings"]) for result in results)
    sections = []
    for result in results:
        name, run = result["benchmark"], result.get("machine", {})
        sections.append(f"### {name}\n\n"
                        f"`python benchmarks/science/{name}.py`: {result['seconds']:.0f} s, "
                        f"commit {run.get('commit', '?')}, {run.get('date', '?')}\n\n"
                        + (f"{result['notes']}\n\n" if result.get("notes") else "")
                        + f"![{name}](figures/{result['figure']})\n\n"
                        + "What the script says about its setting, what reproduced and what did not (its docstring):\n\n"
                        + "\n".join("    " + line if line else "" for line in script_docstring(name).splitlines()) + "\n")
    return (
        "# Scientific reproductions\n\n"
        "Each row is one criterion from the literature, checked on what the edgewatch Monitor logged "
        "while the run trained (its JSONL run directory), at a scale that runs on 2 CPU cores. "
        f"Generated by `make bench-science` (`python benchmarks/science/run_all.py`): {passed} of {total} criteria pass.\n\n"
        f"Machine: {machine['cpus']} CPUs, torch {machine['torch']}, Python {machine['python']}, {machine['platform']}; "
        f"edgewatch {machine['edgewatch']}.\n\n"
        + findings_table(results, markdown=True) + "\n\n## The benchmarks\n\n" + "\n".join(sections)
    )


if __name__ == "__main__":
    sys.exit(main())
