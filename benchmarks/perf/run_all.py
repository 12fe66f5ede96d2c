"""Run the performance benchmarks one after the other and write ``benchmarks/PERFORMANCE.md`` from what they printed.

``peers.py`` (time to accuracy against PyHessian, hessian-eigenthings, curvlinops and scipy's
eigsh), ``costs.py`` (HVP cost and memory per method, warm starts, the Monitor's overhead on a
training loop), ``overhead.py`` (the Monitor at its defaults on three 2,000-step training loops:
overhead against its 5% budget, where its λ_1 points fall, streamed points against full solves)
and ``finite_difference.py`` (finite-difference HVPs: their eigenvalue accuracy against exact
double backward in float32 and bfloat16, their time and memory against double backward on a
transformer with fused attention) each print their tables and write JSON to ``benchmarks/results/perf/``. This script
shows their output as it comes and copies it, verbatim, into PERFORMANCE.md, so the numbers there
are the ones the scripts printed, beside the machine they ran on.

    python benchmarks/perf/run_all.py            # make bench-perf
    python benchmarks/perf/run_all.py --smoke    # a few seconds each, nothing written to PERFORMANCE.md
    python benchmarks/perf/run_all.py --markdown # PERFORMANCE.md again from the last full run's output
    python benchmarks/perf/run_all.py --only finite_difference  # rerun one; PERFORMANCE.md keeps the others' output

A full run also keeps what the scripts printed, with the machine and commit, in
``benchmarks/results/perf/run_all.json``; ``--markdown`` rebuilds PERFORMANCE.md from it with the
scripts' docstrings as they are now (their summaries are written after reading a run's tables).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
PERFORMANCE_MD = HERE.parent / "PERFORMANCE.md"
BENCHMARKS = ("peers", "costs", "overhead", "finite_difference")
RUN_RECORD = HERE.parent / "results" / "perf" / "run_all.json"
#: One intra-op thread and one BLAS thread for every tool: on 2 cores, more only makes them fight.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; PERFORMANCE.md is not written")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results/perf)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME")
    parser.add_argument("--markdown", action="store_true", help=f"only rebuild {PERFORMANCE_MD.name} from {RUN_RECORD.name}")
    args = parser.parse_args(argv)
    if args.markdown:
        if not RUN_RECORD.exists():
            print(f"no {RUN_RECORD}: run `make bench-perf` first", file=sys.stderr)
            return 1
        record = json.loads(RUN_RECORD.read_text(encoding="utf-8"))
        PERFORMANCE_MD.write_text(performance_markdown(record["outputs"], record["machine"], record.get("reruns", {})),
                                  encoding="utf-8")
        print(f"wrote {PERFORMANCE_MD} from the run of {record['machine'].rsplit('commit ', 1)[-1]}")
        return 0

    outputs: dict[str, str] = {}
    failed: list[str] = []
    for name in args.only or BENCHMARKS:
        command = [sys.executable, "-u", str(HERE / f"{name}.py")] + (["--smoke"] if args.smoke else [])
        if args.out is not None:
            command += ["--out", str(args.out)]
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, text=True)
        lines = []
        for line in process.stdout:  # shown as it comes: a long benchmark shows its progress
            print(line, end="", flush=True)
            lines.append(line)
        if process.wait() != 0:
            failed.append(name)
        outputs[name] = "".join(lines)
        print(f"== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}; {PERFORMANCE_MD.name} not written", file=sys.stderr)
        return 1
    if args.smoke:
        return 0
    if not args.only:
        record = {"machine": machine(), "outputs": outputs}
    elif RUN_RECORD.exists():  # a rerun of some: the others' output kept, each section saying when it ran
        record = json.loads(RUN_RECORD.read_text(encoding="utf-8"))
        record["outputs"].update(outputs)
        record.setdefault("reruns", {}).update(dict.fromkeys(outputs, machine()))
    else:
        print(f"no {RUN_RECORD} to add to: run all of them first; {PERFORMANCE_MD.name} not written", file=sys.stderr)
        return 0
    record["outputs"] = {name: record["outputs"][name] for name in BENCHMARKS if name in record["outputs"]}
    RUN_RECORD.parent.mkdir(parents=True, exist_ok=True)
    RUN_RECORD.write_text(json.dumps(record, indent=1), encoding="utf-8")
    PERFORMANCE_MD.write_text(performance_markdown(record["outputs"], record["machine"], record.get("reruns", {})),
                              encoding="utf-8")
    print(f"wrote {PERFORMANCE_MD}")
    return 0


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    import torch

    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, torch {torch.__version__}; "
            f"one torch thread and one BLAS thread for every tool; commit {commit or '?'}, {time.strftime('%Y-%m-%d')}")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def performance_markdown(outputs: dict[str, str], machine_line: str, reruns: dict[str, str] | None = None) -> str:
    sections = []
    for name, output in outputs.items():
        doc = ast.get_docstring(ast.parse((HERE / f"{name}.py").read_text(encoding="utf-8"))) or ""
        rerun = f" Run on its own later: {reruns[name]}." if reruns and name in reruns else ""
        sections.append(f"## {name}\n\n`python benchmarks/perf/{name}.py`{rerun}\n\n{doc}\n\n"
                        f"What it printed:\n\n```\n{output.rstrip()}\n```\n")
    return ("# Performance\n\n"
            "Generated by `make bench-perf` (`python benchmarks/perf/run_all.py`): every table below is what the "
            "script printed in that run, copied verbatim; JSON beside it in `benchmarks/results/perf/`.\n\n"
            f"Machine: {machine_line}.\n\n" + "\n".join(sections))


if __name__ == "__main__":
    sys.exit(main())
