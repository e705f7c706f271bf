"""The README demo's local judge, end to end: judge calls per second and peak memory.

    python bench/local_judge.py                                  # the demo as shipped
    python bench/local_judge.py --set judges.stage1.batch_size=1 --set judges.stage2.batch_size=1
    python bench/local_judge.py --batching static                # both stages: static batches, refilled between rounds

Runs ``python -m builders.cli recipes/sample.yaml`` as a subprocess (the user's path: bundled
SmolLM2-135M GGUF as both RLHN judges, regex-constrained verdicts) with a fresh judgment store
and output folder in a temporary directory, so every call is paid. From the build's
``build_report.json`` it reads each judge stage's calls and wall time (the ledger's stage rows);
it prints judge calls/s over the judging stages' wall time and over the whole process (start-up,
model load, reading and writing included), the ratio to the baseline before batching (60 calls
in 589 s, 0.102 calls/s, on 2 CPU cores), the process's peak RSS (the children's ``ru_maxrss``:
the build process is the largest), and the load average. Exits 1 when a goal is missed: >= 5x
the baseline over the judging stages, peak RSS < 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE_CALLS, BASELINE_S = 60, 589.0  # the demo before batching: one request at a time behind a lock
GOAL_RATIO = 5.0
GOAL_RSS_GIB = 2.0


def run_demo(recipe: str, overrides: list[str], workdir: Path) -> dict:
    sets = [f"output.folder={workdir / 'out'}", f"output.store={workdir / 'store' / 'judgments.sqlite'}", *overrides]
    cmd = [sys.executable, "-m", "builders.cli", recipe, "--no-progress"] + [a for s in sets for a in ("--set", s)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    load_before = os.getloadavg()
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode:
        raise SystemExit(f"the demo failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    report = json.loads((workdir / "store" / "build_report.json").read_text())
    stages = [r for r in report["ledger"]["stages"] if r.get("requests")]
    return {"process_wall_s": wall, "stages": stages, "peak_rss_gib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
            "load_before": load_before, "load_after": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/sample.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe override, passed to the CLI")
    parser.add_argument("--batching", choices=["continuous", "static"], help="both judge stages' batching")
    args = parser.parse_args()
    overrides = list(args.set)
    if args.batching:
        overrides += [f"judges.{stage}.batching={args.batching}" for stage in ("stage1", "stage2")]

    with tempfile.TemporaryDirectory(prefix="hardneg-local-judge-") as tmp:
        result = run_demo(args.recipe, overrides, Path(tmp))
    stages = result["stages"]
    calls = sum(s["requests"] for s in stages)
    judging_s = sum(s["wall_s"] for s in stages)
    baseline = BASELINE_CALLS / BASELINE_S
    per_s = calls / judging_s if judging_s else 0.0
    print(f"recipe {args.recipe} {' '.join(overrides)}")
    for s in stages:
        print(f"  {s['stage']:<14} {s['requests']:>4} calls  {s['wall_s']:7.1f} s  {s['requests'] / s['wall_s']:.3f} calls/s  "
              f"prompt {s.get('prompt_tokens', 0)} / completion {s.get('completion_tokens', 0)} tokens")
    print(f"judge calls/s over the judging stages: {per_s:.3f} ({calls} calls in {judging_s:.1f} s); "
          f"ratio to the baseline ({baseline:.3f}): {per_s / baseline:.2f}x (goal {GOAL_RATIO:.0f}x)")
    whole = calls / result["process_wall_s"]
    print(f"over the whole process: {whole:.3f} calls/s ({result['process_wall_s']:.1f} s, start-up and model load included), "
          f"{whole / baseline:.2f}x")
    print(f"peak RSS {result['peak_rss_gib']:.2f} GiB (goal < {GOAL_RSS_GIB:.0f} GiB); load average before "
          f"{'/'.join(f'{x:.2f}' for x in result['load_before'])}, after {'/'.join(f'{x:.2f}' for x in result['load_after'])} "
          f"on {os.cpu_count()} cores")
    missed = per_s / baseline < GOAL_RATIO or result["peak_rss_gib"] >= GOAL_RSS_GIB
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
