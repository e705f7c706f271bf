"""One build, start to end: sources -> validation -> the recipe's methods (judges, decisions)
-> dataset repo folder (parquet per config + generated card) -> report JSON.

The judgment store makes a build resumable: rerun the same command after a crash or a kill
and only the calls that never finished are made; the output is identical to an
uninterrupted run (the card and the data hold no timestamps and count stored calls, not
calls made by this process).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter, deque
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa

from builders.judges.endpoints.base import Backend
from builders.judges.fleet import Fleet
from builders.judges.ledger import CostLedger, StagePlan, load_prices
from builders.methods.base import never_edits
from builders.methods.run import MethodsRun, add_fleet_rows, failures_of, fleet_counts, make_judges, run_methods, stored_ledger
from builders.output.dataset_info import describe_configs
from builders.output.writers import configs_yaml_entries
from builders.recipe import Recipe, judge_plan, recipe_to_dict, selected
from builders.rows import QueryRow
from builders.sources.reader_process import ChunkReader
from builders.sources.shard_rows import Shard
from builders.sources.validate import ValidationReport
from builders.streaming import ConfigSpool, ResultAccumulator, add_judge_runs, add_ledger, arrow_system_pool, limit_malloc_arenas, trim_malloc
from cards.dataset_card import DatasetCardInfo, write_dataset_card


def store_path(recipe: Recipe) -> Path:
    return Path(recipe.output.store or Path(".hardneg-cache") / recipe.name / "judgments.sqlite")


def report_path(recipe: Recipe) -> Path:
    return store_path(recipe).parent / "build_report.json"


def row_chunks(recipe: Recipe, report: ValidationReport, progress: bool = True, shard: Shard | None = None) -> ChunkReader:
    """The build's validated rows in chunks of ``chunk_rows(recipe)``; past the first chunk they are
    read and validated in a reader process (``builders.sources.reader_process``)."""
    return ChunkReader(recipe.sources, recipe.validation.policy, report, chunk_rows(recipe), shard, progress)


def load_rows(recipe: Recipe, progress: bool = True, shard: Shard | None = None) -> tuple[list[QueryRow], ValidationReport]:
    """All rows that pass validation, in a list (the dry run); the build streams ``row_chunks``."""
    report = ValidationReport()
    rows = next(ChunkReader(recipe.sources, recipe.validation.policy, report, None, shard, progress))  # one chunk: no reader process
    return rows, report


def load_line(folder: Path, config: str = "rlhn") -> str:
    return f'datasets.load_dataset("{folder}", "{config}", split="train")'


def subset_counts(rows: list[QueryRow]) -> dict[str, dict[str, int]]:
    c: dict[str, Counter] = {}
    for r in rows:
        x = c.setdefault(r.subset, Counter())
        x["rows"] += 1
        x["positives"] += len(r.positive_passages)
        x["negatives"] += len(r.negative_passages)
    return {k: dict(v) for k, v in sorted(c.items())}


def dry_run(recipe: Recipe, progress: bool = True, out=None) -> dict:
    """Counts, one rendered prompt, and the estimated cost per stage (``CostLedger.estimate``
    over tokenizer counts of the real prompts; each method's ``dry_run`` states what it
    assumes where a prompt holds what an earlier call will write); no judge is called."""
    out = out or sys.stdout
    rows, report = load_rows(recipe, progress)
    print(f"rows: {report.rows_read} read, {report.rows_kept} kept, {report.rows_skipped} skipped, {report.rows_repaired} repaired (policy {report.policy})", file=out)
    for kind, n in sorted(report.counts.items()):
        print(f"  {kind}: {n}", file=out)
    methods = selected(recipe)
    for subset, c in subset_counts(rows).items():
        kept = [m.NAME for m, s in methods if never_edits(subset, s.never_edit_subsets)]
        note = f" (not edited by {', '.join(kept)})" if kept else ""
        print(f"  {subset}: {c['rows']} rows, {c['positives']} positives, {c['negatives']} negatives{note}", file=out)
    result = {"validation": report.to_dict(), "subsets": subset_counts(rows), "stages": {}}
    plan = judge_plan(recipe)
    plans: list[StagePlan] = []
    for method, settings in methods:
        specs = {name: plan[name] for name in method.judges(settings, recipe.judges)}
        plans += method.dry_run(rows, settings, specs, recipe.dry_run, result, out)
    estimate = CostLedger.estimate(plans, load_prices(recipe.prices))
    print("\n" + estimate.render(), file=out)
    result["estimate"] = estimate.as_dict()
    return result


LOOKAHEAD_CHUNKS = 1  # chunks judged ahead of the one being finished and written


async def _judge_chunks(recipe: Recipe, source, spool: ConfigSpool, progress: bool, backends: dict[str, Backend] | None = None):
    """Every method the recipe names over the row stream, a chunk at a time (``chunk_rows``),
    with the judges built once: configs and judgments go to the spool, counts and ledgers are
    summed chunk by chunk.

    Look-ahead: while chunk n is judged, refined and written, chunk n+1 is read (on a worker
    thread) and its calls already go out, ``LOOKAHEAD_CHUNKS`` ahead at most (memory: two
    chunks instead of one). Each chunk's calls carry its number as their ``CALL_PRIORITY``: a
    fleet hands its slots to chunk n first, so chunk n+1 fills only what chunk n's tail leaves
    free and the endpoints never idle between chunks. Chunks are written in source order (a
    worker thread writes chunk n while chunk n+1's answers come in); every answer is committed
    to the store as it arrives, so a killed build resumes from the store as before: no call is
    paid twice."""
    from builders.judges.clocks import STAGE_CLOCKS, StageClocks
    from builders.judges.fleet import CALL_PRIORITY
    from builders.judges.store import JudgmentStore

    limit_malloc_arenas()  # before the look-ahead's threads allocate: flat memory
    judges = backends or make_judges(judge_plan(recipe), recipe.fleet)
    clocks = StageClocks()
    STAGE_CLOCKS.set(clocks)  # this task's context: the stages' wall times, overlapping runs counted once
    before = fleet_counts(judges)
    method_of = {m.NAME: m for m, _ in selected(recipe)}
    accumulators: dict[str, ResultAccumulator] = {}
    total = MethodsRun(ledger=CostLedger(prices=load_prices(recipe.prices)))
    stored = CostLedger(prices=load_prices(recipe.prices))
    subsets: set[str] = set()

    def finish_chunk(chunk: list[QueryRow], run: MethodsRun) -> None:
        """Spool chunk n's configs and judgments, sum its counts (a worker thread runs it)."""
        if not any("default" in r.configs for r in run.results):
            spool.add({"default": chunk}, [])  # always: the agreement command compares against it
        for r in run.results:
            spool.add(r.configs, [])
            method = method_of[r.name]
            spool.add_table(method.JUDGMENTS, method.judgments_table(r.judgments))
            accumulators.setdefault(r.name, ResultAccumulator(r.name)).add(r, judged_any=bool(r.judgments))
        add_ledger(stored, stored_ledger(run.results, recipe.prices))
        add_ledger(total.ledger, run.ledger)
        add_judge_runs(total.judge_runs, run.judge_runs)
        subsets.update(r.subset for r in chunk)
        trim_malloc()  # the chunk before this one is gone: its pages go back (flat memory)

    running: deque[tuple[list[QueryRow], asyncio.Task]] = deque()  # chunks being judged, oldest first
    try:
        with JudgmentStore(store_path(recipe)) as store:
            async def judge(chunk: list[QueryRow], number: int) -> MethodsRun:
                CALL_PRIORITY.set(number)  # this task's calls: chunk n before chunk n+1
                return await run_methods(recipe, chunk, store, progress=progress, judges=judges)

            number, exhausted = 0, False
            try:
                while True:
                    while not exhausted and len(running) <= LOOKAHEAD_CHUNKS:
                        chunk = await asyncio.to_thread(next, source, None)  # read + validate off the event loop
                        if chunk is None:
                            exhausted = True
                            break
                        running.append((chunk, asyncio.create_task(judge(chunk, number))))
                        number += 1
                    if not running:
                        break
                    chunk, task = running.popleft()
                    await asyncio.to_thread(finish_chunk, chunk, await task)
            finally:  # a chunk failed (or the build was stopped): the look-ahead stops, before the store closes
                for _, task in running:
                    task.cancel()
                await asyncio.gather(*(task for _, task in running), return_exceptions=True)
        add_fleet_rows(total.ledger, judges, before, dict(clocks.wall_s))
        total.fleets = {name: [asdict(x) for x in b.stats()] for name, b in judges.items() if isinstance(b, Fleet)}
        for row in total.ledger.rows.values():
            if row.stage in clocks.wall_s:
                row.wall_s = round(clocks.wall_s[row.stage], 3)
    finally:
        if backends is None:
            for b in {id(b): b for b in judges.values()}.values():
                await b.aclose()
    total.results = [acc.finish() for acc in accumulators.values()]
    return total, stored, subsets


def chunk_rows(recipe: Recipe) -> int | None:
    """Rows judged and written at a time: ``output.chunk_rows`` when every method the build
    runs can judge a chunk at a time (``STREAMS``: RLHN, ARHN, PRHN; flat memory); else the
    source in one chunk (CLEAR retrieves over the whole passage pool; PercPos infers its
    judgments' columns from all its rows)."""
    return recipe.output.chunk_rows if all(m.STREAMS for m, _ in selected(recipe)) else None


def card_citations(recipe: Recipe, methods: list[tuple]) -> list[str]:
    """What the dataset card cites (keys of ``cards/citations.py``): each method that ran, once,
    and BGE's paper for the data unless every source is declared Tevatron-layout."""
    keys = list(dict.fromkeys(m.CITATION for m, _ in methods))
    tevatron_only = bool(recipe.sources) and all(s.layout == "tevatron" for s in recipe.sources)
    return keys + ([] if tevatron_only else ["bge"])


def build(recipe: Recipe, command: str, progress: bool = True, out=None, shard: Shard | None = None, backends: dict[str, Backend] | None = None) -> dict:
    """``shard``: build only that shard's rows (``builders.scale.shard.build_shard`` sets the folders);
    ``backends``: stage -> backend instead of the recipe's (the merge's store-only judges).
    Memory stays flat in the number of rows: rows stream from the source and are judged and
    written ``output.chunk_rows`` at a time (``builders.streaming``)."""
    out = out or sys.stdout
    folder = Path(recipe.output.folder)
    vreport = ValidationReport()
    spool = ConfigSpool(folder, scratch=store_path(recipe).parent, bge_jsonl=recipe.output.bge_jsonl)
    calls_pool = pa.default_memory_pool()
    try:
        source = row_chunks(recipe, vreport, progress, shard)
        try:
            run, stored, subsets = asyncio.run(_judge_chunks(recipe, source, spool, progress, backends))
        finally:
            source.close()
        arrow_system_pool()  # the calls are over: Arrow gives back what it frees while the shards are written
        written = spool.finish(recipe.output.rows_per_shard)
    except BaseException:
        pa.set_memory_pool(calls_pool)
        spool.discard()
        raise
    print(f"rows: {vreport.rows_kept} kept of {vreport.rows_read} ({vreport.rows_skipped} skipped, {vreport.rows_repaired} repaired)", file=out)
    empty = [name for name in spool.order + spool.tables if name not in written]
    first = ("rlhn", "default", "hn_remove", "remove")
    order = [c for c in first if c in written] + [c for c in written if c not in first]
    rows_per_config = {name: written[name] for name in order}
    method_configs = [c for r in run.results for c in r.configs if c in written]
    main_config = "rlhn" if "rlhn" in written else (method_configs or order or ["default"])[0]  # an empty shard writes none
    methods = selected(recipe)
    sources = sorted({s.hub or s.path for s in recipe.sources})
    configs, dataset_info = describe_configs(folder, configs_yaml_entries(order, default=main_config))  # keys fresh reads
    pa.set_memory_pool(calls_pool)  # as it was: a next build in this process makes its calls with mimalloc again
    info = DatasetCardInfo(
        pretty_name=recipe.card.pretty_name or recipe.name,
        license=recipe.card.license,
        configs=configs,
        dataset_info=dataset_info,
        results=run.results,
        command=command,
        source_datasets=[recipe.card.source_dataset] if recipe.card.source_dataset else sources,
        source_revision=recipe.card.source_revision or next((s.revision for s in recipe.sources if s.revision), None),
        sources_kept=sorted(subsets),
        rows_per_config=rows_per_config,
        validation=vreport.to_dict(max_listed=0),
        empty_configs=empty,
        language=recipe.card.language,
        ledger=stored,
        method_settings={m.NAME: m.card_settings(s) for m, s in methods},
        citations=card_citations(recipe, methods),
        see_also=list(recipe.card.see_also),
    )
    write_dataset_card(folder, info)
    failures = failures_of(run.judge_runs)
    report = {
        "folder": str(folder),
        "load_dataset": load_line(folder, main_config),
        "configs": rows_per_config,
        "empty_configs_not_written": empty,
        "validation": vreport.to_dict(),
        "stats": {k: dict(v) for r in run.results if r.name == "rlhn" for k, v in sorted(r.stats.items())},  # RLHN's
        "method_stats": {r.name: {k: dict(v) for k, v in sorted(r.stats.items())} for r in run.results},
        "judges": [asdict(j) for r in run.results for j in r.judges],
        "judge_runs": run.judge_runs,
        "failures": dict(sorted(failures.items())),
        "ledger": run.ledger.as_dict(),
        "fleets": run.fleets,
        "store": str(store_path(recipe)),
        "recipe": json.loads(json.dumps(recipe_to_dict(recipe), default=str)),
    }
    rp = report_path(recipe)
    rp.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, default=str)
    rp.write_text(text, encoding="utf-8")
    report["report"] = str(rp)
    for stage, led in run.judge_runs.items():
        groups = list(led.values()) if "calls" not in led else [led]
        calls, cached = sum(x["calls"] for x in groups), sum(x["cached"] for x in groups)
        shown = ", ".join(f"{k} {v}" for k, v in sorted(failures_of({stage: led}).items()) if v) or "none"
        print(f"{stage}: {calls} judge calls, {cached} answers from the store; failures/retries: {shown}", file=out)
    if run.ledger.rows:
        print("\n" + run.ledger.render(), file=out)
    if empty:
        print(f"empty configs (no rows, not written): {', '.join(empty)}", file=out)
    print(f"\ndataset: {folder.resolve()}\nreport:  {rp.resolve()}\nload it:\n  import datasets\n  ds = {load_line(folder.resolve(), main_config)}", file=out)
    return report
