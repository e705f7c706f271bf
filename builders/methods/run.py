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
from builders.methods import percpos
from builders.methods.arhn import stages as arhn
from builders.methods.base import MethodResult
from builders.methods.clear import stages as clear
from builders.methods.rlhn.cascade import Stage, run_rlhn
from builders.recipe import Recipe, judge_specs, rlhn_settings
from builders.rows import QueryRow


class BuildError(RuntimeError):
    """A method cannot run as configured; the message says what to change."""


@dataclass
class MethodsRun:
    results: list[MethodResult] = field(default_factory=list)
    ledger: CostLedger = field(default_factory=CostLedger)
    judge_runs: dict[str, dict] = field(default_factory=dict)  # stage -> annotator ledgers (RLHN: by prompt group)
    fleets: dict[str, list[dict]] = field(default_factory=dict)  # judge -> per-endpoint stats at the end


def judge_plan(recipe: Recipe) -> dict[str, list[EndpointSpec]]:
    """Judge name -> its endpoints, for the judges the recipe's methods use."""
    j = recipe.judges
    out: dict[str, list[EndpointSpec]] = {}
    if rlhn_settings(recipe) is not None or recipe.clear is not None:
        out["stage1"] = judge_specs(j.stage1)
    if rlhn_settings(recipe) is not None and j.stage2 is not None:
        out["stage2"] = judge_specs(j.stage2)
    if recipe.arhn is not None or recipe.prhn is not None:
        extract = j.arhn_extract if j.arhn_extract is not None else j.stage1
        out["arhn_extract"] = judge_specs(extract)
        out["arhn_rank"] = judge_specs(j.arhn_rank if j.arhn_rank is not None else extract)
    for name, specs in out.items():
        if not specs:
            raise BuildError(f"recipe judges.{name} is an empty list: name at least one endpoint")
    return out


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


def ledger_of(groups: list[dict]) -> Ledger:
    """Sum annotator ledgers given as ``Ledger.as_dict()`` (RLHN keeps one per prompt group)."""
    total = Ledger()
    for g in groups:
        for name in ("items", "cached", "calls", "ok", "unparseable", "failed", "parse_retries", "prompt_tokens", "completion_tokens"):
            setattr(total, name, getattr(total, name) + g[name])
        total.retries.update(g["retries"])
        total.failures.update(g["failures"])
        total.wall_s = max(total.wall_s, g["wall_s"])
    return total


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
        s = rlhn_settings(recipe)
        if s is not None:
            stages = [Stage(name, judges[name]) for name in ("stage1", "stage2") if name in judges]
            before = _snapshot(unique)
            result, ledgers = await run_rlhn(rows, stages, s, store, progress=progress)
            out.results.append(result)
            out.judge_runs.update(ledgers)  # "stage1", "stage2": by prompt group
            _account(out.ledger, {f"rlhn/{st.name}": (st.backend, ledger_of(list(ledgers.get(st.name, {}).values())))
                                  for st in stages}, before)
        for settings in (recipe.arhn, dataclasses.replace(recipe.prhn, rank_on="passages") if recipe.prhn else None):
            if settings is None:
                continue
            before = _snapshot(unique)
            result = await arhn.arun(rows, settings, backend=judges["arhn_extract"], rank_backend=judges["arhn_rank"],
                                     store=store, progress=progress)
            out.results.append(result)
            judge_of = {"arhn/extract": judges["arhn_extract"], f"{settings.prefix}/rank": judges["arhn_rank"]}
            _account(out.ledger, {stage: (judge_of[stage], led) for stage, led in result.ledgers.items()}, before)
            out.judge_runs.update({stage: led.as_dict() for stage, led in result.ledgers.items()})
        if recipe.clear is not None:
            before = _snapshot(unique)
            try:
                result = await clear.run_async(rows, recipe.clear, backend=judges["stage1"], store=store, progress=progress)
            except clear.ClearError as error:
                raise BuildError(f"CLEAR cannot score with judges.stage1 ({judges['stage1'].model_id}): {error}\n"
                                 "A TGI judge must be started with --enable-prefill-logprobs (its /generate then returns "
                                 "prompt log-probabilities); an OpenAI-compatible judge must return prompt logprobs "
                                 "(vLLM /v1/completions with echo); or use {kind: local}.") from error
            out.results.append(result)
            _account(out.ledger, {stage: (judges["stage1"], led) for stage, led in result.ledgers.items()}, before)
            out.judge_runs.update({stage: led.as_dict() for stage, led in result.ledgers.items()})
        if recipe.percpos is not None:
            out.results.append(percpos.run(rows, recipe.percpos))
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
