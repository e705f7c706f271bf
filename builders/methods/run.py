"""Run every method a recipe names (RLHN, ARHN, PRHN, CLEAR, TopK-PercPos) on the same rows,
in one event loop, against one judgment store, and account for what the judges cost.

Judges: each recipe judge (``judges.stage1``, ``stage2``, ``arhn_extract``, ``arhn_rank``) is one
endpoint or a list of endpoints; a list becomes one ``Fleet`` (least-loaded routing). Judges
with equal specs share one backend (one local model in memory, one fleet).

The cost ledger: every judge stage hands back the run ledger of what it asked in THIS run
(``builders.judges.annotate.Ledger``: calls made, answers read from the store, tokens; RLHN by prompt
group, ARHN/PRHN and CLEAR in ``MethodResult.ledgers``), so a resumed run counts only the calls
it made. For every method step, the fleets' per-endpoint stats are snapshotted before and
after, and ``CostLedger.add_annotation`` turns the deltas into one row per endpoint (plus the
annotator's row); a single endpoint is one row per stage. When one fleet serves several
stages of one step (ARHN's extract and rank on the same judge), its rows carry the joined
stage name (``arhn/extract+arhn/rank``): the fleet cannot tell the stages apart.
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
from builders.methods.base import MethodResult, ledger_of
from builders.recipe import Recipe, judge_plan, selected
from builders.rows import QueryRow


@dataclass
class MethodsRun:
    results: list[MethodResult] = field(default_factory=list)
    ledger: CostLedger = field(default_factory=CostLedger)
    judge_runs: dict[str, dict] = field(default_factory=dict)  # stage -> annotator ledgers (RLHN: by prompt group)
    fleets: dict[str, list[dict]] = field(default_factory=dict)  # judge -> per-endpoint stats at the end


def make_judges(plan: dict[str, list[EndpointSpec]], fleet: FleetConfig | None) -> dict[str, Backend]:
    """Judge name -> backend; equal endpoint lists share one backend (a list of 2+ is a Fleet)."""
    built: list[tuple[list[EndpointSpec], Backend]] = []
    out = {}
    for name, specs in plan.items():
        backend = next((b for s, b in built if s == specs), None)
        if backend is None:
            backend = make_backend(specs[0]) if len(specs) == 1 else Fleet.from_specs(specs, fleet or FleetConfig())
            built.append((specs, backend))
        out[name] = backend
    return out


def _snapshot(backends: list[Backend]) -> dict[int, list]:
    return {id(b): b.stats() for b in backends if isinstance(b, Fleet)}


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


def _account(ledger: CostLedger, stages: dict[str, tuple[Backend, Ledger]], before: dict[int, list]) -> None:
    """Ledger rows for one method step: stage -> (backend, annotator ledger)."""
    by_backend: dict[int, list[str]] = {}
    for stage, (backend, _) in stages.items():
        by_backend.setdefault(id(backend), []).append(stage)
    for names in by_backend.values():
        backend = stages[names[0]][0]
        if isinstance(backend, Fleet) and id(backend) in before:
            run = ledger_of([stages[n][1].as_dict() for n in names])
            ledger.add_annotation("+".join(names), backend.model_id, run, before[id(backend)], backend.stats())
        else:
            for n in names:
                ledger.add_annotation(n, backend.model_id, stages[n][1])


async def run_methods(recipe: Recipe, rows: list[QueryRow], store, progress: bool = True,
                      judges: dict[str, Backend] | None = None) -> MethodsRun:
    """``judges``: judge name -> backend, built and closed by the caller (a streamed build
    reuses them chunk after chunk); None: built from the recipe here and closed at the end."""
    out = MethodsRun(ledger=CostLedger(prices=load_prices(recipe.prices)))
    owned = judges is None
    judges = make_judges(judge_plan(recipe), recipe.fleet) if owned else judges
    unique = list({id(b): b for b in judges.values()}.values())
    try:
        for method, settings in selected(recipe):
            before = _snapshot(unique)
            result = await method.run(rows, settings, judges, store, progress)
            out.results.append(result)
            _account(out.ledger, {stage: (judges[result.stage_judges[stage]], led) for stage, led in result.ledgers.items()}, before)
            out.judge_runs.update(result.judge_runs if result.judge_runs is not None
                                  else {stage: led.as_dict() for stage, led in result.ledgers.items()})
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
