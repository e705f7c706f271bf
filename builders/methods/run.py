"""Run every method a recipe names (RLHN, ARHN, PRHN, CLEAR, TopK-PercPos) on the same rows,
in one event loop, against one judgment store, and account for what the judges cost.

Judges: each recipe judge (``judges.stage1``, ``stage2``, ``arhn_extract``, ``arhn_rank``) is one
endpoint or a list of endpoints; every remote judge becomes one ``Fleet`` (a single endpoint
too: its limit from the server, AIMD, 503s re-sent inside the fleet; the endpoint's
``concurrency`` is a cap); a local model is used as it is. Judges with equal specs share one
backend (one local model in memory, one fleet).

The cost ledger: every judge stage hands back the run ledger of what it asked in THIS run
(``builders.judges.annotate.Ledger``: calls made, answers read from the store, tokens; RLHN by prompt
group, ARHN/PRHN and CLEAR in ``MethodResult.ledgers``), so a resumed run counts only the calls
it made. A fleet-backed stage gets the annotator's row from it (its backoff retries, lost
questions) and, once per run of the methods (``add_fleet_rows``; a streamed build once at its
end), one row per endpoint from the fleet's per-stage counts: every attempt is counted under
the stage that made it (``CALL_STAGE``), so stages sharing one fleet, and chunks whose calls
overlap, are accounted apart and exactly. A local backend is one row per stage.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

from builders.judges.annotate import Ledger
from builders.judges.endpoints import make_backend
from builders.judges.endpoints.base import Backend
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.fleet import Fleet, FleetConfig
from builders.judges.ledger import CostLedger, load_prices
from builders.methods.base import MethodResult
from builders.recipe import Recipe, judge_plan, selected
from builders.rows import QueryRow


@dataclass
class MethodsRun:
    results: list[MethodResult] = field(default_factory=list)
    ledger: CostLedger = field(default_factory=CostLedger)
    judge_runs: dict[str, dict] = field(default_factory=dict)  # stage -> annotator ledgers (RLHN: by prompt group)
    fleets: dict[str, list[dict]] = field(default_factory=dict)  # judge -> per-endpoint stats at the end


def make_judges(plan: dict[str, list[EndpointSpec]], fleet: FleetConfig | None) -> dict[str, Backend]:
    """Judge name -> backend; equal endpoint lists share one backend. Every remote judge - one
    endpoint or a list - is a ``Fleet`` (limits from the server, AIMD, 503s re-sent inside it);
    a single local model is its backend itself."""
    built: list[tuple[list[EndpointSpec], Backend]] = []
    out = {}
    for name, specs in plan.items():
        backend = next((b for s, b in built if s == specs), None)
        if backend is None:
            local_only = len(specs) == 1 and specs[0].kind == "local"
            backend = make_backend(specs[0]) if local_only else Fleet.from_specs(specs, fleet or FleetConfig())
            built.append((specs, backend))
        out[name] = backend
    return out


def fleet_counts(judges: dict[str, Backend]) -> dict[int, dict]:
    """id(fleet) -> its per-stage counts now (``Fleet.stage_stats``), to subtract at the end."""
    return {id(b): b.stage_stats() for b in judges.values() if isinstance(b, Fleet)}


def add_fleet_rows(ledger: CostLedger, judges: dict[str, Backend], before: dict[int, dict], walls: dict[str, float]) -> None:
    """One ledger row per (stage, endpoint) of every fleet: what it did since ``before``
    (``fleet_counts``); ``walls``: stage -> its wall time."""
    for backend in {id(b): b for b in judges.values() if isinstance(b, Fleet)}.values():
        was = before.get(id(backend), {})
        for stage, by_endpoint in backend.stage_stats().items():
            earlier = was.get(stage, {})
            delta = {endpoint: {k: v - earlier.get(endpoint, {}).get(k, 0) for k, v in counts.items()}
                     for endpoint, counts in by_endpoint.items()}
            name = stage or "(no stage)"
            ledger.add_fleet_stage(name, backend.model_id, delta, walls.get(name, 0.0))


def ledger_from_judgments(rows: list[dict], wall_s: float) -> Ledger:
    """A stage's ledger read back from its judgment rows: calls = attempts recorded in the store
    (whichever run paid them), tokens as the responses reported them, failed = questions left
    unanswered. The card's ledger (``stored_ledger``), not the run's."""
    led = Ledger(items=len(rows), wall_s=wall_s)
    for r in rows:
        led.calls += r.get("attempts") or 0
        led.prompt_tokens += r.get("prompt_tokens") or 0
        led.completion_tokens += r.get("completion_tokens") or 0
        status = r.get("store_status") or r.get("status")
        if status == "failed":
            led.failed += 1
            led.retries["retried"] += max(0, (r.get("attempts") or 0) - 1)
        elif status == "unparseable":
            led.unparseable += 1
        else:
            led.ok += 1
    return led


def _account(ledger: CostLedger, stages: dict[str, tuple[Backend, Ledger]]) -> None:
    """Ledger rows for one method step: stage -> (backend, annotator ledger). A fleet's
    per-endpoint rows come from ``add_fleet_rows``."""
    for stage, (backend, run) in stages.items():
        if isinstance(backend, Fleet):
            ledger.add_annotator_row(stage, backend.model_id, run)
        else:
            ledger.add_annotation(stage, backend.model_id, run)


async def run_methods(recipe: Recipe, rows: list[QueryRow], store, progress: bool = True,
                      judges: dict[str, Backend] | None = None) -> MethodsRun:
    """``judges``: judge name -> backend, built and closed by the caller (a streamed build
    reuses them chunk after chunk, and adds the fleets' rows once with ``add_fleet_rows``);
    None: built from the recipe here, accounted and closed at the end."""
    out = MethodsRun(ledger=CostLedger(prices=load_prices(recipe.prices)))
    owned = judges is None
    judges = make_judges(judge_plan(recipe), recipe.fleet) if owned else judges
    unique = list({id(b): b for b in judges.values()}.values())
    before = fleet_counts(judges)
    try:
        for method, settings in selected(recipe):
            result = await method.run(rows, settings, judges, store, progress)
            out.results.append(result)
            _account(out.ledger, {stage: (judges[result.stage_judges[stage]], led) for stage, led in result.ledgers.items()})
            out.judge_runs.update(result.judge_runs if result.judge_runs is not None
                                  else {stage: led.as_dict() for stage, led in result.ledgers.items()})
        if owned:
            add_fleet_rows(out.ledger, judges, before, {r.stage: r.wall_s for r in out.ledger.stage_totals()})
        for name, backend in judges.items():
            if isinstance(backend, Fleet):
                out.fleets[name] = [dataclasses.asdict(x) for x in backend.stats()]
    finally:
        if owned:
            for b in unique:
                await b.aclose()
    return out


def stored_ledger(results: list[MethodResult], prices: dict | None) -> CostLedger:
    """The cost of the answers the dataset rests on, read from the judgment rows (attempts and
    tokens the store recorded, whether paid in this run or an earlier one): the same for a
    resumed build as for an uninterrupted one, so the card stays byte-identical. Wall time and
    per-endpoint rows are the run's own: they are in the build report's ``ledger``."""
    ledger = CostLedger(prices=load_prices(prices))
    for r in results:
        by_stage: dict[tuple[str, str], list[dict]] = {}
        for j in r.judgments:
            if "attempts" not in j:
                continue  # no judge call (PercPos: teacher scores)
            stage = j["stage"] if "/" in j["stage"] else f"{r.name}/{j['stage']}"
            by_stage.setdefault((stage, j.get("judge_model") or "?"), []).append(j)
        for (stage, judge), rows in by_stage.items():
            ledger.add_annotation(stage, judge, ledger_from_judgments(rows, 0.0), endpoint="(stored answers)")
    return ledger


def failures_of(judge_runs: dict[str, dict]) -> Counter:
    """failed:/retried: kinds, unparseable answers and parse retries over every stage."""
    failures: Counter = Counter()
    for run in judge_runs.values():
        for led in (run.values() if "calls" not in run else [run]):
            failures.update({f"failed:{k}": v for k, v in led["failures"].items()})
            failures.update({f"retried:{k}": v for k, v in led["retries"].items()})
            failures["unparseable"] += led["unparseable"]
            failures["parse_retries"] += led["parse_retries"]
    return failures
