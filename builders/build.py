"""One build, start to end: sources -> validation -> RLHN judges -> techniques -> dataset
repo folder (parquet per config + generated card) -> report JSON.

The judgment store makes a build resumable: rerun the same command after a crash or a kill
and only the calls that never finished are made; the output is identical to an
uninterrupted run (the card and the data hold no timestamps and count stored calls, not
calls made by this process).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa

from builders.judges.endpoints.base import Backend
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.ledger import CostLedger, StagePlan, load_prices
from builders.methods.arhn import stages as arhn
from builders.methods.rlhn.cascade import prompt_version, render_messages, variant_of, windows_of
from builders.methods.run import MethodsRun, failures_of, judge_plan, make_judges, run_methods, stored_ledger
from builders.output.dataset_info import describe_configs
from builders.output.writers import configs_yaml_entries, judgments_table, method_judgments_table
from builders.recipe import Recipe, rlhn_settings
from builders.rows import QueryRow
from builders.scale.dry_estimates import arhn_rank_assumptions, arhn_rank_counts, check_limit, clear_plans, prompt_counter
from builders.sources.readers import read_sources
from builders.sources.shard_rows import Shard, select_records
from builders.sources.validate import ValidationReport, validate
from builders.streaming import ConfigSpool, ResultAccumulator, add_judge_runs, add_ledger, chunks
from cards.dataset_card import DatasetCardInfo, write_dataset_card


def store_path(recipe: Recipe) -> Path:
    return Path(recipe.output.store or Path(".hardneg-cache") / recipe.name / "judgments.sqlite")


def report_path(recipe: Recipe) -> Path:
    return store_path(recipe).parent / "build_report.json"


def iter_rows(recipe: Recipe, report: ValidationReport, progress: bool = True, shard: Shard | None = None):
    """Validated rows as a stream, in source order (``report`` fills as it is consumed)."""
    from tqdm.auto import tqdm

    if not recipe.sources:
        raise ValueError("the recipe names no `sources`")
    records = tqdm(select_records(read_sources(recipe.sources), shard), desc="read+validate" if shard is None else f"read+validate (shard {shard})", unit="row", disable=not progress, dynamic_ncols=True)
    return validate(records, recipe.validation.policy, report)


def load_rows(recipe: Recipe, progress: bool = True, shard: Shard | None = None) -> tuple[list[QueryRow], ValidationReport]:
    """All rows that pass validation, in a list (the dry run); the build streams ``iter_rows``."""
    report = ValidationReport()
    rows = list(iter_rows(recipe, report, progress, shard))
    return rows, report


def load_line(folder: Path, config: str = "rlhn") -> str:
    return f'datasets.load_dataset("{folder}", "{config}", split="train")'


def _specs(recipe: Recipe) -> list[tuple[str, EndpointSpec]]:
    """RLHN's stages and the first endpoint of each (a fleet's members serve one model)."""
    plan = judge_plan(recipe)
    return [(name, plan[name][0]) for name in ("stage1", "stage2") if name in plan]


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
    over tokenizer counts of the real prompts; CLEAR's and ARHN's ranking in
    ``builders.scale.dry_estimates``, which states its assumptions); no judge is called."""
    out = out or sys.stdout
    rows, report = load_rows(recipe, progress)
    s = rlhn_settings(recipe)
    print(f"rows: {report.rows_read} read, {report.rows_kept} kept, {report.rows_skipped} skipped, {report.rows_repaired} repaired (policy {report.policy})", file=out)
    for kind, n in sorted(report.counts.items()):
        print(f"  {kind}: {n}", file=out)
    untouched = set(s.refine.untouched_subsets) if s else set()
    for subset, c in subset_counts(rows).items():
        print(f"  {subset}: {c['rows']} rows, {c['positives']} positives, {c['negatives']} negatives{' (untouched)' if subset in untouched else ''}", file=out)
    result = {"validation": report.to_dict(), "subsets": subset_counts(rows), "stages": {}}
    plans: list[StagePlan] = []
    if s is not None:
        plans += _rlhn_plans(recipe, rows, s, result, out)
    plans += _arhn_plans(recipe, rows, result, out)
    if recipe.clear is not None:
        plans += clear_plans(recipe, rows, judge_plan(recipe)["stage1"], result, out)
    if recipe.percpos is not None:
        print("percpos: no judge calls (teacher scores)", file=out)
    estimate = CostLedger.estimate(plans, load_prices(recipe.prices))
    print("\n" + estimate.render(), file=out)
    result["estimate"] = estimate.as_dict()
    return result


def _rlhn_plans(recipe: Recipe, rows: list[QueryRow], s, result: dict, out) -> list[StagePlan]:
    """RLHN's prompts per stage (stage 2: the recipe's expected share of stage-1 flags); prints one."""
    untouched = set(s.refine.untouched_subsets)
    plans = []
    judged = [r for r in rows if r.subset not in untouched and r.negative_passages]
    windows = [w for r in judged for w in windows_of(r, s)]
    result["prompts_stage1"] = len(windows)
    if windows:
        example = render_messages(windows[0], s)
        print(f"\n--- rendered prompt ({prompt_version(variant_of(windows[0].row, s))}), {len(windows[0].negatives)} negatives ---", file=out)
        for m in example:
            print(f"[{m['role']}]\n{m['content']}", file=out)
        print("--- end of prompt ---\n", file=out)
    plan_specs = judge_plan(recipe)
    for name, spec in _specs(recipe):
        share = 1.0 if name == "stage1" else recipe.dry_run.stage2_share
        how, count = prompt_counter(recipe, spec)
        check = check_limit(plan_specs[name], [count(render_messages(w, s)) for w in windows], s.max_new_tokens)
        plans.append(StagePlan(f"rlhn/{name}", spec.model_id, check.sent, share, recipe.dry_run.completion_tokens))
        est, calls = int(sum(check.sent) * share), int(len(windows) * share)
        print(f"{name} [{spec.model_id}]: ~{calls} prompts, ~{est:,} prompt tokens ({how}){'' if name == 'stage1' else f', stage-2 share {share}'}", file=out)
        print(check.line(), file=out)
        result["stages"][name] = {"judge": spec.model_id, "prompts": calls, "prompt_tokens": est, "counted_with": how,
                                  **check.as_dict()}
    return plans


def _arhn_plans(recipe: Recipe, rows: list[QueryRow], result: dict, out) -> list[StagePlan]:
    """ARHN's stage-1 prompts (every editable query, as they will be sent) and its ranking
    prompts (an estimate: they hold stage 1's snippets, ``builders.scale.dry_estimates``); PRHN's
    ranking prompts (as they will be sent)."""
    plan = judge_plan(recipe)
    plans = []
    for settings in (recipe.arhn, dataclasses.replace(recipe.prhn, rank_on="passages") if recipe.prhn else None):
        if settings is None:
            continue
        plain = dataclasses.replace(settings, constrained="off")  # the constraint is no prompt token
        cut = arhn.RetrieverCut(plain.retriever_tokenizer, plain.retriever_max_length)
        passages = plain.rank_on == "passages"
        stage, judge = (f"{plain.prefix}/rank", "arhn_rank") if passages else (f"{plain.prefix}/extract", "arhn_extract")
        spec, rank_spec = plan[judge][0], plan["arhn_rank"][0]
        how, count = prompt_counter(recipe, spec)
        rank_count = prompt_counter(recipe, rank_spec)[1]
        counts, rank_counts = [], []
        for row in rows:
            if any(x.lower() in row.subset.lower() for x in plain.never_edit_subsets) or not row.negative_passages:
                continue
            docs = [cut(p.full_text) for p in row.positive_passages[:1] + row.negative_passages[: plain.max_negatives]]
            request = (arhn.rank_request(row.query, docs, plain, None) if passages else arhn.extract_request(row.query, docs, plain, None))
            counts.append(count(request.messages))
            if not passages:
                rank_counts.append(arhn_rank_counts(recipe, row.query, len(docs) - 1, plain, rank_count))
        new_tokens = plain.rank_max_new_tokens if passages else plain.extract_max_new_tokens
        check = check_limit(plan[judge], counts, new_tokens)
        plans.append(StagePlan(stage, spec.model_id, check.sent, 1.0, recipe.dry_run.completion_tokens))
        print(f"{stage} [{spec.model_id}]: {len(counts)} prompts, ~{sum(check.sent):,} prompt tokens ({how})", file=out)
        print(check.line(), file=out)
        result["stages"][stage] = {"judge": spec.model_id, "prompts": len(counts), "prompt_tokens": sum(check.sent),
                                   "counted_with": how, **check.as_dict()}
        if not passages and rank_counts:
            share, rank = recipe.dry_run.arhn_rank_share, f"{plain.prefix}/rank"
            check = check_limit(plan["arhn_rank"], rank_counts, plain.rank_max_new_tokens)
            plans.append(StagePlan(rank, rank_spec.model_id, check.sent, share, recipe.dry_run.completion_tokens))
            calls, tokens = round(share * len(rank_counts)), round(share * sum(check.sent))
            print(f"{rank} [{rank_spec.model_id}]: ~{calls} prompts, ~{tokens:,} prompt tokens ({arhn_rank_assumptions(recipe)})", file=out)
            print(check.line(), file=out)
            result["stages"][rank] = {"judge": rank_spec.model_id, "prompts": calls, "prompt_tokens": tokens, "estimated": True,
                                      "counted_with": how, **check.as_dict()}
    return plans


async def _judge_chunks(recipe: Recipe, rows, spool: ConfigSpool, progress: bool, backends: dict[str, Backend] | None = None):
    """Every method the recipe names over the row stream, a chunk at a time (``chunk_rows``),
    with the judges built once: configs and judgments go to the spool, counts and ledgers are
    summed chunk by chunk."""
    from builders.judges.store import JudgmentStore

    judges = backends or make_judges(judge_plan(recipe), recipe.fleet)
    rlhn = rlhn_settings(recipe)
    untouched = {x.lower() for x in rlhn.refine.untouched_subsets} if rlhn is not None else set()
    accumulators: dict[str, ResultAccumulator] = {}
    total = MethodsRun(ledger=CostLedger(prices=load_prices(recipe.prices)))
    stored = CostLedger(prices=load_prices(recipe.prices))
    subsets: set[str] = set()
    try:
        with JudgmentStore(store_path(recipe)) as store:
            for chunk in chunks(rows, chunk_rows(recipe)):
                run = await run_methods(recipe, chunk, store, progress=progress, judges=judges)
                if not any("default" in r.configs for r in run.results):
                    spool.add({"default": chunk}, [])  # always: the agreement command compares against it
                for r in run.results:
                    spool.add(r.configs, [])
                    name, table = _judgments_table(r)
                    spool.add_table(name, table)
                    judged = r.name != "rlhn" or any(x.subset.lower() not in untouched and x.negative_passages for x in chunk)
                    stage_order = ["stage1", "stage2"] if r.name == "rlhn" else []
                    accumulators.setdefault(r.name, ResultAccumulator(r.name, stage_order)).add(r, judged)
                add_ledger(stored, stored_ledger(run.results, recipe.prices))
                add_ledger(total.ledger, run.ledger)
                add_judge_runs(total.judge_runs, run.judge_runs)
                total.fleets = run.fleets  # the fleets' stats are cumulative over the build
                subsets.update(r.subset for r in chunk)
    finally:
        if backends is None:
            for b in {id(b): b for b in judges.values()}.values():
                await b.aclose()
    total.results = [acc.finish() for acc in accumulators.values()]
    return total, stored, subsets


def chunk_rows(recipe: Recipe) -> int | None:
    """Rows judged and written at a time. RLHN and ARHN stream in ``output.chunk_rows`` chunks
    (flat memory). CLEAR retrieves candidates over the whole passage pool and PercPos writes
    judgments whose columns are inferred from its rows, so a build that runs either takes the
    source in one chunk."""
    return None if recipe.clear is not None or recipe.percpos is not None else recipe.output.chunk_rows


def _judgments_table(result) -> tuple[str, pa.Table]:
    """One judgments config per method, each with its own columns: ``judgments`` (RLHN),
    ``judgments_arhn``, ``judgments_prhn``, ``judgments_clear``, ``judgments_percpos``."""
    if result.name == "rlhn":
        return "judgments", judgments_table(result.judgments)
    if result.name in ("arhn", "prhn"):
        return f"judgments_{result.name}", method_judgments_table(result.judgments, arhn.JUDGMENT_SCHEMA)
    return f"judgments_{result.name}", method_judgments_table(result.judgments)


def build(recipe: Recipe, command: str, progress: bool = True, out=None, shard: Shard | None = None, backends: dict[str, Backend] | None = None) -> dict:
    """``shard``: build only that shard's rows (``builders.scale.shard.build_shard`` sets the folders);
    ``backends``: stage -> backend instead of the recipe's (the merge's store-only judges).
    Memory stays flat in the number of rows: rows stream from the source and are judged and
    written ``output.chunk_rows`` at a time (``builders.streaming``)."""
    out = out or sys.stdout
    folder = Path(recipe.output.folder)
    vreport = ValidationReport()
    spool = ConfigSpool(folder, scratch=store_path(recipe).parent, bge_jsonl=recipe.output.bge_jsonl)
    try:
        run, stored, subsets = asyncio.run(_judge_chunks(recipe, iter_rows(recipe, vreport, progress, shard), spool, progress, backends))
        written = spool.finish(recipe.output.rows_per_shard)
    except BaseException:
        spool.discard()
        raise
    print(f"rows: {vreport.rows_kept} kept of {vreport.rows_read} ({vreport.rows_skipped} skipped, {vreport.rows_repaired} repaired)", file=out)
    empty = [name for name in spool.order + spool.tables if name not in written]
    first = ("rlhn", "default", "hn_remove", "remove")
    order = [c for c in first if c in written] + [c for c in written if c not in first]
    rows_per_config = {name: written[name] for name in order}
    method_configs = [c for r in run.results for c in r.configs if c in written]
    main_config = "rlhn" if "rlhn" in written else (method_configs or order)[0]
    settings = {}
    s = rlhn_settings(recipe)
    if s is not None:
        settings = {
            "max_flagged": s.refine.max_flagged,
            "untouched_subsets": ",".join(s.refine.untouched_subsets),
            "unjudged": s.refine.unjudged,
            "negatives_per_prompt": s.negatives_per_prompt,
            "max_prompts_per_query": s.max_prompts_per_query,
            "max_passage_words": s.max_passage_words,
            "escalate_unparsed": s.escalate_unparsed,
            "temperature": s.temperature,
        }
    method_settings = {m: asdict(getattr(recipe, m)) for m in ("arhn", "prhn", "clear", "percpos") if getattr(recipe, m) is not None}
    sources = sorted({s.hub or s.path for s in recipe.sources})
    configs, dataset_info = describe_configs(folder, configs_yaml_entries(order, default=main_config))  # keys fresh reads
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
        settings=settings,
        empty_configs=empty,
        language=recipe.card.language,
        ledger=stored,
        method_settings=method_settings,
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
        "recipe": json.loads(json.dumps(asdict(recipe), default=str)),
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
