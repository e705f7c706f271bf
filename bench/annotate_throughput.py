"""How close to endpoint capacity does annotation run, and what is lost on the way?

Starts loopback judge simulators of known capacity (``bench/simulator.py``, in a child
process so that only the client's CPU is measured) and runs, in one go, three clients on each
scenario:

- ``builder``: this project's client as a build runs it: ``Fleet`` (least-loaded routing, AIMD
  limits, moves failed calls to other endpoints) under the ``Annotator`` (jittered-backoff
  retries, the durable SQLite store with group commit, on disk), each request a TGI
  ``/generate`` or OpenAI-compatible chat call over the shared aiohttp transport;
- ``builder-hub``: the same with the TGI endpoints on ``transport="huggingface_hub"``
  (``AsyncInferenceClient``), to show what that client costs;
- ``sequential``: one request at a time, up to 3 attempts with exponential backoff, the style
  of the reference RLHN scripts (an OpenAI client in a loop), round-robin over the URLs;
- ``gather``: batches sent with ``asyncio.gather`` and no retries, failures lost (distilabel's
  style), each batch split round-robin over the URLs.

Scenarios (``--service-ms`` S, default 200):

- ``a``: one TGI endpoint, 64 slots x S, 10 % injected 503. Goal: >= 0.95 of capacity, 0 lost.
- ``b``: four endpoints of different capacities (two TGI offering /info, two OpenAI-compatible
  that do not): 32 x S, 16 x S, 24 x 1.5 S, 8 x 0.5 S, 2 % injected 503. Goal: >= 0.90 of the
  summed capacity, 0 lost.
- ``c``: three TGI endpoints of 32 x S; one is killed (port closed, connections dropped) at
  40 % of the expected run. Goal: the run completes on the rest, 0 lost.

"share of capacity" = answers / (wall time x capacity), capacity integrated over time (in ``c``
it drops when the endpoint dies); "span share" is the same between the servers' first request
and last answer (without the client's start-up and retry tail). The sequential client runs ``--sequential-requests`` (it
needs ~S per request), the others ``--requests``.

    python bench/annotate_throughput.py                       # full size (~3 min)
    python bench/annotate_throughput.py --requests 600 --service-ms 50 --sequential-requests 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx2  # noqa: E402

from bench.simulator import OCCUPANCY_BIN_S, SimulatorConfig  # noqa: E402
from bench.simulator_process import SimulatorProcess  # noqa: E402
from builders.judges.annotate import FLEET_RETRY, Annotator, RetryPolicy  # noqa: E402
from builders.judges.endpoints.base import GenerateRequest  # noqa: E402
from builders.judges.endpoints.spec import EndpointSpec  # noqa: E402
from builders.judges.fleet import Fleet, FleetConfig  # noqa: E402
from builders.judges.store import JudgmentStore  # noqa: E402


@dataclass
class Scenario:
    name: str
    title: str
    servers: list[SimulatorConfig]
    kinds: list[str]  # "tgi" | "openai" per server
    goal_share: float | None
    kill_at_share: float | None = None  # kill server 0 at this share of the expected run

    @property
    def capacity(self) -> float:
        return sum(server.capacity for server in self.servers)


@dataclass
class Result:
    scenario: str
    client: str
    requests: int
    answered: int
    lost: int
    wall_s: float
    cpu_ms_per_request: float
    capacity: float  # answers per second, averaged over the run
    extra: dict = field(default_factory=dict)

    @property
    def requests_per_s(self) -> float:
        return self.answered / self.wall_s if self.wall_s else 0.0

    @property
    def share(self) -> float:
        return self.requests_per_s / self.capacity if self.capacity else 0.0

    @property
    def span_share(self) -> float:
        """Share between the servers' first request and last answer (no client start-up or tail)."""
        span = self.extra.get("span_s")
        return self.answered / span / self.capacity if span and self.capacity else 0.0


def scenarios(service_s: float) -> dict[str, Scenario]:
    tgi = "tgi"
    return {
        "a": Scenario("a", "one endpoint, 64 slots, 10 % injected 503", [
            SimulatorConfig(slots=64, service_s=service_s, fail_rate=0.10, seed=1)], [tgi], 0.95),
        "b": Scenario("b", "four endpoints of different capacities (2 TGI + 2 OpenAI-compatible)", [
            SimulatorConfig(slots=32, service_s=service_s, fail_rate=0.02, seed=2),
            SimulatorConfig(slots=16, service_s=service_s, fail_rate=0.02, seed=3),
            SimulatorConfig(slots=24, service_s=1.5 * service_s, fail_rate=0.02, seed=4, advertise_info=False),
            SimulatorConfig(slots=8, service_s=0.5 * service_s, fail_rate=0.02, seed=5, advertise_info=False),
        ], [tgi, tgi, "openai", "openai"], 0.90),
        "c": Scenario("c", "three endpoints, one killed mid-run", [
            SimulatorConfig(slots=32, service_s=service_s, seed=6),
            SimulatorConfig(slots=32, service_s=service_s, seed=7),
            SimulatorConfig(slots=32, service_s=service_s, seed=8),
        ], [tgi, tgi, tgi], None, kill_at_share=0.4),
    }


def request_for(index: int) -> GenerateRequest:
    question = f"Is passage {index} relevant to query {index % 97}? Answer with the indices of the relevant passages."
    return GenerateRequest(messages=({"role": "user", "content": question},), max_new_tokens=16, seed=index)


def capacity_over_run(scenario: Scenario, wall_s: float, killed_at: float | None) -> float:
    """Average capacity over the run (the killed server counts only while it was alive)."""
    if killed_at is None or wall_s <= killed_at:
        return scenario.capacity
    lost = scenario.servers[0].capacity * (wall_s - killed_at)
    return (scenario.capacity * wall_s - lost) / wall_s


async def kill_later(simulator: SimulatorProcess, delay_s: float, started: float, mark: dict) -> None:
    await asyncio.sleep(delay_s)
    await asyncio.get_running_loop().run_in_executor(None, simulator.kill, 0)
    mark["killed_at"] = time.monotonic() - started


# --- the three clients ------------------------------------------------------------------------
async def run_builder(scenario: Scenario, urls: list[str], n: int, simulator, kill_delay, args, hub: bool = False) -> Result:
    """Fleet + Annotator + durable store. ``hub``: TGI endpoints through ``huggingface_hub``."""
    specs = [EndpointSpec(kind=kind, url=url, model="simulated-judge", timeout_s=10.0,
                          transport="huggingface_hub" if hub and kind == "tgi" else "aiohttp")
             for kind, url in zip(scenario.kinds, urls)]
    fleet = Fleet.from_specs(specs, FleetConfig())
    store_dir = args.store_dir
    with tempfile.TemporaryDirectory(dir=store_dir) as folder, JudgmentStore(Path(folder) / "judgments.sqlite") as store:
        annotator = Annotator(fleet, store, stage="bench", prompt_version="bench-v1", progress=False, seed=0,
                              retry=RetryPolicy(base_delay_s=args.retry_base_s, max_delay_s=FLEET_RETRY.max_delay_s,
                                                max_attempts=args.max_attempts))
        items = [(f"q{i}", request_for(i)) for i in range(n)]
        started, cpu, mark = time.monotonic(), time.process_time(), {}
        killer = asyncio.ensure_future(kill_later(simulator, kill_delay, started, mark)) if kill_delay else None
        result = await annotator.run(items)
        mark["client_started"] = started
        wall = time.monotonic() - started
        cpu_ms = (time.process_time() - cpu) * 1000 / n
        if killer is not None:
            await killer
        await fleet.aclose()
    answered = sum(outcome.status == "ok" for outcome in result.outcomes.values())
    extra = {"client_started": started, "calls": result.ledger.calls, "retries": dict(result.ledger.retries),
             "endpoints": [{"name": s.name, "limit": round(s.limit, 1), "info_limit": s.info_limit,
                            "succeeded": s.succeeded, "overloaded": s.overloaded, "failed": s.failed,
                            "moved": s.moved, "deaths": s.deaths, "max_in_flight": s.max_in_flight}
                           for s in fleet.stats()]}
    return Result(scenario.name, "builder-hub" if hub else "builder", n, answered, n - answered, wall, cpu_ms,
                  capacity_over_run(scenario, wall, mark.get("killed_at")), extra)


def _chat_body(index: int) -> dict:
    request = request_for(index)
    return {"model": "simulated-judge", "messages": list(request.messages), "max_tokens": request.max_new_tokens}


def run_sequential(scenario: Scenario, urls: list[str], n: int, simulator, kill_delay, args) -> Result:
    """One request at a time; up to 3 attempts with backoff 0.5 s, 1 s (the OpenAI client's default)."""
    rng = random.Random(0)
    answered = 0
    killed_at = None
    with httpx2.Client(timeout=10.0) as client:
        started, cpu = time.monotonic(), time.process_time()
        for index in range(n):
            if kill_delay and killed_at is None and time.monotonic() - started >= kill_delay:
                simulator.kill(0)
                killed_at = time.monotonic() - started
            url = urls[index % len(urls)]
            for attempt in range(3):
                try:
                    response = client.post(f"{url}/v1/chat/completions", json=_chat_body(index))
                    if response.status_code == 200:
                        answered += 1
                        break
                except httpx2.TransportError:
                    pass
                if attempt < 2:
                    time.sleep(0.5 * 2 ** attempt * rng.uniform(0.75, 1.0))
        wall = time.monotonic() - started
        cpu_ms = (time.process_time() - cpu) * 1000 / n
    return Result(scenario.name, "sequential", n, answered, n - answered, wall, cpu_ms,
                  capacity_over_run(scenario, wall, killed_at))


async def run_gather(scenario: Scenario, urls: list[str], n: int, simulator, kill_delay, args) -> Result:
    """Batches of ``--batch-size`` through ``asyncio.gather``; a failed request is lost."""
    limits = httpx2.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx2.AsyncClient(timeout=10.0, limits=limits) as client:
        async def one(index: int) -> bool:
            url = urls[index % len(urls)]
            try:
                response = await client.post(f"{url}/v1/chat/completions", json=_chat_body(index))
            except httpx2.TransportError:
                return False
            return response.status_code == 200

        started, cpu, mark = time.monotonic(), time.process_time(), {}
        killer = asyncio.ensure_future(kill_later(simulator, kill_delay, started, mark)) if kill_delay else None
        answered = 0
        for first in range(0, n, args.batch_size):
            answers = await asyncio.gather(*(one(i) for i in range(first, min(n, first + args.batch_size))))
            answered += sum(answers)
        wall = time.monotonic() - started
        cpu_ms = (time.process_time() - cpu) * 1000 / n
        if killer is not None:
            await killer
    return Result(scenario.name, "gather", n, answered, n - answered, wall, cpu_ms,
                  capacity_over_run(scenario, wall, mark.get("killed_at")))


def run_one(scenario: Scenario, client: str, n: int, args) -> Result:
    with SimulatorProcess(*scenario.servers, lifetime_s=args.lifetime_s) as simulator:
        expected_s = n / scenario.capacity if client != "sequential" else n * args.service_ms / 1000
        kill_delay = scenario.kill_at_share * expected_s if scenario.kill_at_share else None
        if client in ("builder", "builder-hub"):
            result = asyncio.run(run_builder(scenario, simulator.urls, n, simulator, kill_delay, args,
                                             hub=client == "builder-hub"))
        elif client == "gather":
            result = asyncio.run(run_gather(scenario, simulator.urls, n, simulator, kill_delay, args))
        else:
            result = run_sequential(scenario, simulator.urls, n, simulator, kill_delay, args)
        servers = simulator.stats()
        result.extra["servers"] = [{"served": s.served, "429": s.overloaded, "503": s.injected, "dropped": s.dropped,
                                    "max_in_flight": s.max_in_flight, "first_at": s.first_at, "last_at": s.last_at,
                                    "occupancy": [round(x, 4) for x in s.occupancy]} for s in servers]
        firsts = [s.first_at for s in servers if s.first_at is not None]
        lasts = [s.last_at for s in servers if s.last_at is not None]
        if firsts and lasts:  # monotonic clocks are shared by the processes of one machine
            result.extra["span_s"] = max(lasts) - min(firsts)
    return result


def loop_lag_ms(samples: int = 40, sleep_s: float = 0.01) -> float:
    """Mean oversleep of ``asyncio.sleep`` here and now: how late this busy machine wakes us."""
    async def measure():
        late = 0.0
        for _ in range(samples):
            started = time.monotonic()
            await asyncio.sleep(sleep_s)
            late += time.monotonic() - started - sleep_s
        return late / samples * 1000
    return asyncio.run(measure())


def where_capacity_went(result: Result, scenario: Scenario) -> str:
    """From the simulators' occupancy bins: the client's start-up, how full the slots were
    mid-run (the middle 80 % of the span), and the drain at the end."""
    servers = result.extra.get("servers") or []
    firsts = [s["first_at"] for s in servers if s.get("first_at") is not None]
    if not firsts or "client_started" not in result.extra:
        return ""
    busy, slot_s = 0.0, 0.0
    for server, config in zip(servers, scenario.servers):
        bins = server["occupancy"]
        middle = bins[len(bins) // 10: len(bins) - len(bins) // 10] if len(bins) >= 10 else bins
        busy += sum(middle)
        slot_s += len(middle) * OCCUPANCY_BIN_S * config.slots
    end = max(s["last_at"] for s in servers if s.get("last_at") is not None)
    return (f"start-up {min(firsts) - result.extra['client_started']:.2f} s, slots busy {busy / slot_s:.1%} mid-run, "
            f"last answer {end - min(firsts):.2f} s after the first request")


def render(results: list[Result], all_scenarios: dict[str, Scenario]) -> str:
    lines = [f"{'scenario':<9}{'client':<14}{'requests':>9}{'answered':>9}{'lost':>6}{'wall s':>8}"
             f"{'req/s':>9}{'capacity':>10}{'share':>7}{'span sh.':>9}{'CPU ms/req':>11}  goal"]
    for r in results:
        goal = all_scenarios[r.scenario].goal_share
        verdict = ""
        if r.client == "builder":
            met = r.lost == 0 and (goal is None or r.share >= goal)
            verdict = f"{'>= ' + format(goal, '.2f') + ' share, ' if goal else ''}0 lost: {'MET' if met else 'NOT MET'}"
        elif r.client == "builder-hub":
            verdict = "(the optional huggingface_hub transport, for comparison)"
        lines.append(f"{r.scenario:<9}{r.client:<14}{r.requests:>9}{r.answered:>9}{r.lost:>6}{r.wall_s:>8.2f}"
                     f"{r.requests_per_s:>9.1f}{r.capacity:>10.1f}{r.share:>7.3f}{r.span_share:>9.3f}{r.cpu_ms_per_request:>11.2f}  {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000, help="requests per run of the builder and gather clients")
    parser.add_argument("--sequential-requests", type=int, default=100, help="requests of the sequential client")
    parser.add_argument("--service-ms", type=float, default=200.0, help="service time S of one request")
    parser.add_argument("--scenarios", default="a,b,c")
    parser.add_argument("--clients", default="builder,builder-hub,sequential,gather")
    parser.add_argument("--store-dir", default=None, help="folder of the builder's judgment store (default: the temp dir)")
    parser.add_argument("--batch-size", type=int, default=50, help="gather client's batch (distilabel's default 50)")
    parser.add_argument("--retry-base-s", type=float, default=FLEET_RETRY.base_delay_s,
                        help="Annotator backoff base (its default over a fleet unless given)")
    parser.add_argument("--max-attempts", type=int, default=FLEET_RETRY.max_attempts)
    parser.add_argument("--lifetime-s", type=float, default=900.0, help="simulators stop themselves after this")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    all_scenarios = scenarios(args.service_ms / 1000)
    results = []
    for name in args.scenarios.split(","):
        scenario = all_scenarios[name]
        print(f"scenario {name}: {scenario.title}; capacity {scenario.capacity:.0f} answers/s; "
              f"event-loop wake-up lag now {loop_lag_ms():.1f} ms, load average {os.getloadavg()[0]:.1f}", flush=True)
        for client in args.clients.split(","):
            n = args.sequential_requests if client == "sequential" else args.requests
            result = run_one(scenario, client, n, args)
            results.append(result)
            print(f"  {client:<13} {result.answered}/{n} answered in {result.wall_s:.2f} s, share {result.share:.3f}, "
                  f"lost {result.lost}, {result.cpu_ms_per_request:.2f} CPU ms/request", flush=True)
            if client.startswith("builder"):
                print(f"  {'':<13} {where_capacity_went(result, scenario)}", flush=True)
    print()
    print(render(results, all_scenarios))
    load = os.getloadavg()
    print(f"\nmachine: {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    if args.json_out:
        args.json_out.write_text(json.dumps([{**vars(r), "requests_per_s": r.requests_per_s, "share": r.share,
                                              "span_share": r.span_share}
                                             for r in results], indent=1))
    builder_ok = all(r.lost == 0 and (all_scenarios[r.scenario].goal_share is None or r.share >= all_scenarios[r.scenario].goal_share)
                     for r in results if r.client == "builder")
    return 0 if builder_ok else 1


if __name__ == "__main__":
    sys.exit(main())
