"""What a user gets: ``python -m builders.cli recipe.yaml`` end to end against endpoint simulators.

``bench/annotate_throughput.py`` drives the judge client directly, with settings chosen for it;
this bench measures the path a user runs. For each scenario it writes BGE-shaped rows
(``bench/memory_rows.py``'s generator: 1 positive and 25 negatives of 80 words) and a recipe
with nothing tuned (``judges.stage1: {kind: tgi, url: ..., model: m}``, or a list of such
endpoints), starts the simulators (``bench/simulator_process.py``, another process, answering
an RLHN verdict) and runs the CLI as a subprocess. From the build's report
(``build_report.json``: the run's cost ledger) it reads the RLHN stage-1 row: its wall time, requests,
retries and lost questions, and prints

- share of capacity = answered questions / (stage wall time x capacity), capacity integrated
  over the stage (in ``c`` it drops when the endpoint dies);
- requests lost (questions left without an answer), retries (ledger: moved inside the fleet +
  the annotator's backoffs), 429s the simulators answered;
- client CPU-ms per request: the CLI process's user + system CPU over the whole run (start-up,
  reading, writing included) divided by the requests it sent.

Scenarios (``--service-ms`` S, default 200), the same servers as ``bench/annotate_throughput.py``:

- ``a``: one TGI endpoint, 64 slots x S, 10 % injected 503, 429 when full. Goal >= 0.95, 0 lost.
- ``b``: four mixed endpoints (two TGI with /info, two OpenAI-compatible without), 2 % 503. Goal >= 0.90.
- ``c``: three TGI endpoints of 32 x S; one is killed at 40 % of the expected stage. Goal >= 0.90.

Each scenario runs with every ``--chunk-rows`` value (by default: the recipe's default, 5,000-row
chunks, i.e. 2 chunks of the 6,000 rows; one chunk; and 1000-row chunks);
``--direct`` also runs ``bench/annotate_throughput.py``'s builder client on the same servers, so
the gap between the two paths is visible; each chunked run's share is printed beside the one-chunk
run's (goal: within ``GAP_GOAL``). The share goals above are the default settings' (``default``);
every run must lose nothing, and every other chunking answers to the gap goal. Exits 1 when a goal
is missed.

    python bench/cli_throughput.py                        # 6,000 rows, a/b/c, default, null and 1000 (~6 min)
    python bench/cli_throughput.py --repeat 3             # median of 3 runs each (~18 min; a run varies ~0.02 here)
    python bench/cli_throughput.py --rows 1200 --service-ms 50 --scenarios a --chunk-rows null
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench.annotate_throughput import scenarios  # noqa: E402
from bench.memory_rows import write_rows  # noqa: E402
from bench.simulator_process import SimulatorProcess  # noqa: E402

GOALS = {"a": 0.95, "b": 0.90, "c": 0.90}
GAP_GOAL = 0.03  # chunked runs within this share of the one-chunk run
DEFAULT = "default"  # --chunk-rows value: the recipe leaves output.chunk_rows out (what a new user runs)
STAGE = "rlhn/stage1"
VERDICT = "<thinking>none of the candidates answers the query</thinking><verdict><better> [] </better>, <worse> [] </worse></verdict>"


def recipe_for(scenario, urls: list[str], source: Path, out: Path, chunk_rows: int | None) -> dict:
    """The recipe a new user writes: one judge (an endpoint or a list), nothing tuned."""
    endpoints = [{"kind": kind, "url": url, "model": "m"} for kind, url in zip(scenario.kinds, urls)]
    return {
        "name": f"cli-bench-{scenario.name}",
        "sources": [{"path": str(source), "subset": "synthetic"}],
        "judges": {"stage1": endpoints[0] if len(endpoints) == 1 else endpoints},
        "output": {"folder": str(out / "dataset"), "store": str(out / "judgments.sqlite"),
                   **({} if chunk_rows == DEFAULT else {"chunk_rows": chunk_rows})},
    }


def _kill_when_started(simulator: SimulatorProcess, delay_s: float, mark: dict, stop: threading.Event) -> None:
    """Kill server 0 ``delay_s`` after the first request reaches any server."""
    while not stop.is_set():
        firsts = [s.first_at for s in simulator.stats() if s.first_at is not None]
        if firsts:
            wait = min(firsts) + delay_s - time.monotonic()
            if stop.wait(max(0.0, wait)):
                return
            simulator.kill(0)
            mark["killed_at"] = time.monotonic()
            return
        stop.wait(0.05)


def run_cli(scenario, rows: int, chunk_rows: int | None, workdir: Path, source: Path, args) -> dict:
    servers = [_with_answer(s) for s in scenario.servers]
    out = workdir / f"{scenario.name}-{chunk_rows}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh store each run: a repeat must not read the last one's answers
    with SimulatorProcess(*servers, lifetime_s=args.lifetime_s) as simulator:
        recipe = recipe_for(scenario, simulator.urls, source, out, chunk_rows)
        path = out / "recipe.yaml"
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        mark: dict = {}
        stop = threading.Event()
        killer = None
        if scenario.kill_at_share:
            delay = scenario.kill_at_share * rows / scenario.capacity
            killer = threading.Thread(target=_kill_when_started, args=(simulator, delay, mark, stop), daemon=True)
            killer.start()
        env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        wrap = os.environ.get("HARDNEG_BENCH_WRAP", "").split()  # e.g. a sampling profiler: "py-spy record -o cli.svg --"
        done = subprocess.run([*wrap, sys.executable, "-m", "builders.cli", str(path), "--no-progress"], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        elapsed = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        stop.set()
        if killer is not None:
            killer.join(5)
        stats = simulator.stats()
    if done.returncode:
        raise SystemExit(f"the CLI failed on scenario {scenario.name}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    report = json.loads((out / "build_report.json").read_text())
    ledger = report["ledger"]
    stage = next(r for r in ledger["stages"] if r["stage"] == STAGE)
    wall = stage["wall_s"]
    answered = rows - stage["lost"]
    capacity = scenario.capacity
    if "killed_at" in mark:
        first = min(s.first_at for s in stats if s.first_at is not None)
        alive = max(0.0, mark["killed_at"] - first)
        if alive < wall:
            capacity = (scenario.capacity * wall - scenario.servers[0].capacity * (wall - alive)) / wall
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    firsts = [s.first_at for s in stats if s.first_at is not None]
    lasts = [s.last_at for s in stats if s.last_at is not None]
    return {
        "scenario": scenario.name, "path": "cli", "chunk_rows": chunk_rows, "rows": rows,
        "stage_wall_s": wall, "process_wall_s": elapsed, "capacity": capacity,
        "share": answered / (wall * capacity) if wall else 0.0,
        "requests": stage["requests"], "retries": stage["retries"], "lost": stage["lost"],
        "prompt_tokens": stage["prompt_tokens"],
        "server_span_s": max(lasts) - min(firsts) if firsts and lasts else None,  # first request to last answer
        "server_429": sum(s.overloaded for s in stats), "server_503": sum(s.injected for s in stats),
        "cpu_ms_per_request": cpu_s * 1000 / max(1, stage["requests"]),
        "ledger_rows": [r for r in ledger["rows"] if r["stage"] == STAGE],
        "fleet": [{k: e[k] for k in ("name", "info_limit", "limit", "max_in_flight", "succeeded", "overloaded", "failed", "moved", "deaths", "busy_s")}
                  for e in report.get("fleets", {}).get("stage1", [])],
    }


def _with_answer(config):
    from dataclasses import replace

    return replace(config, answer=VERDICT)


def run_direct(scenario, rows: int, args) -> dict:
    """``bench/annotate_throughput.py``'s builder client (Fleet + Annotator driven directly)."""
    from bench import annotate_throughput

    direct_args = argparse.Namespace(store_dir=None, retry_base_s=0.1, max_attempts=6, lifetime_s=args.lifetime_s,
                                     service_ms=args.service_ms, batch_size=50)
    r = annotate_throughput.run_one(scenario, "builder", rows, direct_args)
    return {"scenario": scenario.name, "path": "direct", "chunk_rows": None, "rows": rows, "stage_wall_s": r.wall_s,
            "capacity": r.capacity, "share": r.share, "requests": r.extra["calls"],
            "retries": sum(r.extra["retries"].values()), "lost": r.lost,
            "server_429": sum(s["429"] for s in r.extra["servers"]), "server_503": sum(s["503"] for s in r.extra["servers"]),
            "cpu_ms_per_request": r.cpu_ms_per_request}


def chunk_gaps(results: list[dict]) -> list[tuple[str, int, float]]:
    """(scenario, chunk_rows, share - the one-chunk share) for every chunked CLI run with a one-chunk run beside it."""
    one = {r["scenario"]: r["share"] for r in results if r["path"] == "cli" and r["chunk_rows"] is None}
    return [(r["scenario"], r["chunk_rows"], r["share"] - one[r["scenario"]]) for r in results
            if r["path"] == "cli" and r["chunk_rows"] is not None and r["scenario"] in one]


def render(results: list[dict]) -> str:
    lines = [f"{'scenario':<9}{'path':<7}{'chunk_rows':>11}{'stage s':>9}{'ideal s':>9}{'share':>7}{'requests':>9}"
             f"{'retries':>8}{'lost':>6}{'429s':>6}{'CPU ms/req':>11}  goal"]
    for r in results:
        goal = GOALS.get(r["scenario"])
        verdict = ""
        if r["path"] == "cli" and goal is not None:
            met = r["lost"] == 0 and r["share"] >= goal
            verdict = f">= {goal:.2f}, 0 lost: {'MET' if met else 'NOT MET'}"
            if r["chunk_rows"] != DEFAULT:  # the share goal is the default settings'; these answer to the gap goal
                role = "the gaps' reference" if r["chunk_rows"] is None else "its gap below"
                verdict = f"0 lost: {'MET' if r['lost'] == 0 else 'NOT MET'}; share: {role}"
        lines.append(f"{r['scenario']:<9}{r['path']:<7}{str(r['chunk_rows']):>11}{r['stage_wall_s']:>9.2f}"
                     f"{r['rows'] / r['capacity']:>9.2f}{r['share']:>7.3f}{r['requests']:>9}{r['retries']:>8}{r['lost']:>6}"
                     f"{r['server_429']:>6}{r['cpu_ms_per_request']:>11.2f}  {verdict}"
                     + (f" (median of {len(r['shares'])}: {min(r['shares']):.3f}-{max(r['shares']):.3f})" if len(r.get("shares", [])) > 1 else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--service-ms", type=float, default=200.0)
    parser.add_argument("--scenarios", default="a,b,c")
    parser.add_argument("--chunk-rows", default="default,null,1000",
                        help="comma-separated output.chunk_rows values (null: one chunk; default: not in the recipe, 5,000)")
    parser.add_argument("--direct", action="store_true", help="also run the direct-client figure of bench/annotate_throughput.py")
    parser.add_argument("--repeat", type=int, default=1, help="runs per (scenario, chunk_rows); the table shows the median share")
    parser.add_argument("--lifetime-s", type=float, default=900.0)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    all_scenarios = scenarios(args.service_ms / 1000)
    sizes = [None if c.strip() in ("null", "none", "") else DEFAULT if c.strip() == DEFAULT else int(c)
             for c in args.chunk_rows.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="hardneg-cli-bench-") as tmp:
        source = Path(tmp) / "rows.jsonl"
        write_rows(source, args.rows)
        for name in args.scenarios.split(","):
            scenario = all_scenarios[name]
            print(f"scenario {name}: {scenario.title}; capacity {scenario.capacity:.0f} answers/s; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
            for size in sizes:
                runs = []
                for _ in range(args.repeat):
                    r = run_cli(scenario, args.rows, size, Path(tmp), source, args)
                    runs.append(r)
                    print(f"  cli    chunk_rows={size}: stage {r['stage_wall_s']:.2f} s, share {r['share']:.3f}, lost {r['lost']}, "
                          f"{r['requests']} requests, {r['retries']} retries, {r['server_429']} 429s, "
                          f"{r['cpu_ms_per_request']:.2f} CPU ms/request (process {r['process_wall_s']:.1f} s, servers busy "
                          f"{r['server_span_s']:.2f} s from first request to last answer); "
                          f"load {os.getloadavg()[0]:.2f}", flush=True)
                    for e in r["fleet"]:
                        print(f"         {e}", flush=True)
                median = sorted(runs, key=lambda x: x["share"])[len(runs) // 2]  # the run with the median share
                median["shares"] = [x["share"] for x in runs]
                median["lost"] = max(x["lost"] for x in runs)  # a run that lost anything is a miss
                results.append(median)
            if args.direct:
                r = run_direct(scenario, args.rows, args)
                results.append(r)
                print(f"  direct: {r['stage_wall_s']:.2f} s, share {r['share']:.3f}, lost {r['lost']}, "
                      f"{r['cpu_ms_per_request']:.2f} CPU ms/request; load {os.getloadavg()[0]:.2f}", flush=True)
    print()
    print(render(results))
    gaps = chunk_gaps(results)
    for name, size, gap in gaps:
        print(f"scenario {name}: share with chunk_rows={size} is {gap:+.3f} from one chunk (goal: within {GAP_GOAL})")
    load = os.getloadavg()
    print(f"\nmachine: {os.cpu_count()} cores, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))
    cli = [r for r in results if r["path"] == "cli"]
    ok = all(r["lost"] == 0 for r in cli) and all(r["share"] >= GOALS.get(r["scenario"], 0.0) for r in cli if r["chunk_rows"] == DEFAULT)
    ok = ok and all(gap >= -GAP_GOAL for _, _, gap in gaps)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
