"""The README demo's local judge, end to end: judge calls per second and peak memory.

    python bench/local_judge.py                                  # the demo as shipped
    python bench/local_judge.py --set judges.stage1.batch_size=1 --set judges.stage2.batch_size=1
    python bench/local_judge.py --batching static                # both stages: static batches, refilled between rounds
    python bench/local_judge.py --ab 6                           # and the decoder before batching, same load

Runs ``python -m builders.cli recipes/sample.yaml`` as a subprocess (the user's path: bundled
SmolLM2-135M GGUF as both RLHN judges, regex-constrained verdicts) with a fresh judgment store
and output folder in a temporary directory, so every call is paid. From the build's
``build_report.json`` it reads each judge stage's calls and wall time (the ledger's stage rows);
it prints judge calls/s over the judging stages' wall time and over the whole process (start-up,
model load, reading and writing included), the ratio to the baseline before batching (60 calls
in 589 s, 0.102 calls/s, on 2 CPU cores), the process's peak RSS (the children's ``ru_maxrss``:
the build process is the largest), and the load average. Exits 1 when a goal is missed: >= 5x
the baseline over the judging stages, peak RSS < 2 GiB.

The 589 s baseline was measured on another day, at another load. ``--ab N`` also measures both
decoders in this process on the demo's first N stage-1 prompts, now: the decoder before batching
(``constrained.generate_with_regex``, one request at a time, each prompt prefilled in full) against
the batched backend asked those N prompts and then the same N again (RLHN's stage 2 on the same
model), and prints the ratio at the same load; it checks that both give the same text.
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


def demo_requests(n: int, max_new_tokens: int = 120) -> list:
    """The demo's first ``n`` stage-1 requests (``recipes/sample.yaml``'s RLHN settings)."""
    from builders.judges.endpoints.base import Constraint, GenerateRequest
    from builders.methods.rlhn.stage import RlhnSettings, render_messages, windows_of
    from builders.methods.rlhn.verdict import verdict_regex
    from builders.rows import QueryRow

    s = RlhnSettings(negatives_per_prompt=3, max_prompts_per_query=1, max_passage_words=40, reason_max_chars=48)
    out = []
    for name, subset in (("retrieval-msmarco.jsonl", "msmarco_passage"), ("retrieval-nq.jsonl", "nq"),
                         ("retrieval-nli.jsonl", "nli")):
        for line in (ROOT / "builders/data/sample" / name).read_text().splitlines():
            for w in windows_of(QueryRow.from_bge(json.loads(line), subset), s):
                out.append(GenerateRequest(render_messages(w, s), max_new_tokens=max_new_tokens, temperature=0.0,
                                           constraint=Constraint("regex", verdict_regex(len(w.negatives), s.reason_max_chars))))
    return out[:n]


def ab(n: int) -> dict:
    """Both decoders on the demo's first ``n`` prompts in this process (see the module docstring)."""
    import asyncio

    from builders.judges.endpoints import make_backend
    from builders.judges.endpoints.constrained import generate_with_regex
    from builders.judges.endpoints.spec import EndpointSpec

    backend = make_backend(EndpointSpec(kind="local", threads=1))
    batch = demo_requests(n)
    backend.generate_alone(batch[0])  # loads the weights and the token texts: not timed
    started = time.perf_counter()
    before = []
    for r in batch:
        ids = backend.tokenizer(backend.render(r.messages), add_special_tokens=False, return_tensors="pt").input_ids
        before.append(generate_with_regex(backend.model, backend.tokenizer, ids, str(r.constraint.value),
                                          max_new_tokens=r.max_new_tokens, temperature=0, vocab=backend._vocab).text)
    before_s = time.perf_counter() - started

    async def ask():
        return await asyncio.gather(*(backend.generate(r) for r in batch))

    started = time.perf_counter()
    first = asyncio.run(ask())
    first_s = time.perf_counter() - started
    again = asyncio.run(ask())
    after_s = time.perf_counter() - started
    same = sum(b == f.text == a.text for b, f, a in zip(before, first, again))
    return {"n": n, "before_per_s": n / before_s, "first_per_s": n / first_s, "after_per_s": 2 * n / after_s, "same": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/sample.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe override, passed to the CLI")
    parser.add_argument("--batching", choices=["continuous", "static"], help="both judge stages' batching")
    parser.add_argument("--ab", type=int, default=0, metavar="N", help="also both decoders in-process on N demo prompts")
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
    if args.ab:
        r = ab(args.ab)
        print(f"same load, {r['n']} demo prompts in-process: before batching {r['before_per_s']:.3f} calls/s (any stage); "
              f"batched, first ask {r['first_per_s']:.3f} calls/s, with the same prompts asked again (stage 2) "
              f"{r['after_per_s']:.3f} calls/s: {r['after_per_s'] / r['before_per_s']:.2f}x; same text {r['same']} of {r['n']}; "
              f"load now {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    missed = per_s / baseline < GOAL_RATIO or result["peak_rss_gib"] >= GOAL_RSS_GIB
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
