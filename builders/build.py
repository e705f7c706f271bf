"""One build, start to end: sources -> validation -> RLHN judges -> techniques -> dataset
repo folder (parquet per config + generated card) -> report JSON.

The judgment store makes a build resumable: rerun the same command after a crash or a kill
and only the calls that never finished are made; the output is identical to an
uninterrupted run (the card and the data hold no timestamps and count stored calls, not
calls made by this process).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from builders.endpoints import Backend, EndpointSpec, load_tokenizer, make_backend
from builders.recipe import Recipe
from builders.rlhn import Stage, prompt_version, render_messages, run_rlhn, variant_of, windows_of
from builders.rows import QueryRow
from builders.shard import Shard, select_records
from builders.sources import read_sources
from builders.streaming import ConfigSpool, ResultAccumulator, chunks
from builders.validate import ValidationReport, validate
from builders.writers import configs_yaml_entries
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
    out = [("stage1", recipe.judges.stage1)]
    if recipe.judges.stage2 is not None:
        out.append(("stage2", recipe.judges.stage2))
    return out


def subset_counts(rows: list[QueryRow]) -> dict[str, dict[str, int]]:
    c: dict[str, Counter] = {}
    for r in rows:
        x = c.setdefault(r.subset, Counter())
        x["rows"] += 1
        x["positives"] += len(r.positive_passages)
        x["negatives"] += len(r.negative_passages)
    return {k: dict(v) for k, v in sorted(c.items())}


def _judge_tokenizer(spec: EndpointSpec):
    """The judge's tokenizer without loading its weights: ``tokenizer`` when named; for a
    local judge its model (a GGUF file's tokenizer is read from the file), else None."""
    if spec.tokenizer:
        return load_tokenizer(spec.tokenizer)
    if spec.kind != "local":
        return None
    from transformers import AutoTokenizer

    if spec.model is None or spec.gguf_file:
        from builders.endpoints.local import SMOLLM2_GGUF, bundled_smollm2

        path = Path(spec.gguf_file) if spec.gguf_file and Path(spec.gguf_file).is_file() else None
        if path is None and spec.model is None and spec.gguf_file in (None, SMOLLM2_GGUF):
            path = bundled_smollm2()
        if path is not None:
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return AutoTokenizer.from_pretrained(spec.model, gguf_file=spec.gguf_file)
    return AutoTokenizer.from_pretrained(spec.model)


def dry_run(recipe: Recipe, progress: bool = True, out=None) -> dict:
    """Counts, one rendered prompt and estimated prompt tokens per stage; no judge is called."""
    out = out or sys.stdout
    rows, report = load_rows(recipe, progress)
    s = recipe.rlhn
    untouched = set(s.refine.untouched_subsets)
    judged = [r for r in rows if r.subset not in untouched and r.negative_passages]
    windows = [w for r in judged for w in windows_of(r, s)]
    print(f"rows: {report.rows_read} read, {report.rows_kept} kept, {report.rows_skipped} skipped, {report.rows_repaired} repaired (policy {report.policy})", file=out)
    for kind, n in sorted(report.counts.items()):
        print(f"  {kind}: {n}", file=out)
    for subset, c in subset_counts(rows).items():
        print(f"  {subset}: {c['rows']} rows, {c['positives']} positives, {c['negatives']} negatives{' (untouched)' if subset in untouched else ''}", file=out)
    result = {"validation": report.to_dict(), "subsets": subset_counts(rows), "prompts_stage1": len(windows), "stages": {}}
    if windows:
        example = render_messages(windows[0], s)
        print(f"\n--- rendered prompt ({prompt_version(variant_of(windows[0].row, s))}), {len(windows[0].negatives)} negatives ---", file=out)
        for m in example:
            print(f"[{m['role']}]\n{m['content']}", file=out)
        print("--- end of prompt ---\n", file=out)
    tokenizer = load_tokenizer(recipe.dry_run.tokenizer) if recipe.dry_run.tokenizer else None
    for name, spec in _specs(recipe):
        share = 1.0 if name == "stage1" else recipe.dry_run.stage2_share
        tok = tokenizer or _judge_tokenizer(spec)
        tokens = 0
        how = "tokenizer"
        for w in windows:
            text = "\n".join(m["content"] for m in render_messages(w, s))
            n = len(tok(text).input_ids) if tok is not None else None
            if n is None:
                how = "≈ characters / 4 (no tokenizer named: set dry_run.tokenizer)"
                n = len(text) // 4
            tokens += n
        est = int(tokens * share)
        calls = int(len(windows) * share)
        print(f"{name} [{spec.model_id}]: ~{calls} prompts, ~{est:,} prompt tokens ({how}){'' if name == 'stage1' else f', stage-2 share {share}'}", file=out)
        result["stages"][name] = {"judge": spec.model_id, "prompts": calls, "prompt_tokens": est, "counted_with": how}
    return result


def make_backends(specs: list[tuple[str, EndpointSpec]]) -> dict[str, Backend]:
    """stage -> backend; stages with equal specs share one backend (one local model in memory)."""
    built: list[tuple[EndpointSpec, object]] = []
    out = {}
    for name, spec in specs:
        backend = next((b for s, b in built if s == spec), None)
        if backend is None:
            backend = make_backend(spec)
            built.append((spec, backend))
        out[name] = backend
    return out


async def _judge_chunks(recipe: Recipe, rows, spool: ConfigSpool, progress: bool, backends: dict[str, Backend] | None = None):
    """RLHN over the row stream, ``output.chunk_rows`` rows at a time (``builders.streaming``)."""
    from builders.store import JudgmentStore

    backends = backends or make_backends(_specs(recipe))
    stages = [Stage(name, b) for name, b in backends.items()]
    acc = ResultAccumulator("rlhn", [s.name for s in stages])
    untouched = set(recipe.rlhn.refine.untouched_subsets)
    try:
        with JudgmentStore(store_path(recipe)) as store:
            for chunk in chunks(rows, recipe.output.chunk_rows):
                result, ledgers = await run_rlhn(chunk, stages, recipe.rlhn, store, progress=progress)
                spool.add(result.configs, result.judgments)
                acc.add(result, ledgers, any(r.subset not in untouched and r.negative_passages for r in chunk))
                acc.subsets.update(r.subset for r in chunk)
    finally:
        for b in {id(b): b for b in backends.values()}.values():
            await b.aclose()
    result, ledgers = acc.finish()
    return result, ledgers, acc.subsets


def build(recipe: Recipe, command: str, progress: bool = True, out=None, shard: Shard | None = None, backends: dict[str, Backend] | None = None) -> dict:
    """``shard``: build only that shard's rows (``builders.shard.build_shard`` sets the folders);
    ``backends``: stage -> backend instead of the recipe's (the merge's store-only judges).
    Memory stays flat in the number of rows: rows stream from the source and are judged and
    written ``output.chunk_rows`` at a time (``builders.streaming``)."""
    out = out or sys.stdout
    folder = Path(recipe.output.folder)
    vreport = ValidationReport()
    spool = ConfigSpool(folder, scratch=store_path(recipe).parent, bge_jsonl=recipe.output.bge_jsonl)
    try:
        result, ledgers, subsets = asyncio.run(_judge_chunks(recipe, iter_rows(recipe, vreport, progress, shard), spool, progress, backends))
        written = spool.finish(recipe.output.rows_per_shard)
    except BaseException:
        spool.discard()
        raise
    print(f"rows: {vreport.rows_kept} kept of {vreport.rows_read} ({vreport.rows_skipped} skipped, {vreport.rows_repaired} repaired)", file=out)
    empty = [name for name in list(result.configs) + ["judgments"] if name not in written]
    order = [c for c in ("rlhn", "default", "hn_remove", "remove") if c in written] + [c for c in written if c not in ("rlhn", "default", "hn_remove", "remove")]
    rows_per_config = {name: written[name] for name in order}
    settings = {
        "max_flagged": recipe.rlhn.refine.max_flagged,
        "untouched_subsets": ",".join(recipe.rlhn.refine.untouched_subsets),
        "unjudged": recipe.rlhn.refine.unjudged,
        "negatives_per_prompt": recipe.rlhn.negatives_per_prompt,
        "max_prompts_per_query": recipe.rlhn.max_prompts_per_query,
        "max_passage_words": recipe.rlhn.max_passage_words,
        "escalate_unparsed": recipe.rlhn.escalate_unparsed,
        "temperature": recipe.rlhn.temperature,
    }
    sources = sorted({s.hub or s.path for s in recipe.sources})
    info = DatasetCardInfo(
        pretty_name=recipe.card.pretty_name or recipe.name,
        license=recipe.card.license,
        configs=configs_yaml_entries(order, default="rlhn"),
        results=[result],
        command=command,
        source_datasets=[recipe.card.source_dataset] if recipe.card.source_dataset else sources,
        source_revision=recipe.card.source_revision or next((s.revision for s in recipe.sources if s.revision), None),
        sources_kept=sorted(subsets),
        rows_per_config=rows_per_config,
        validation=vreport.to_dict(max_listed=0),
        settings=settings,
        empty_configs=empty,
        language=recipe.card.language,
    )
    write_dataset_card(folder, info)
    failures = Counter()
    for stage_ledgers in ledgers.values():
        for ledger in stage_ledgers.values():
            failures.update({f"failed:{k}": v for k, v in ledger["failures"].items()})
            failures.update({f"retried:{k}": v for k, v in ledger["retries"].items()})
            failures["unparseable"] += ledger["unparseable"]
            failures["parse_retries"] += ledger["parse_retries"]
    report = {
        "folder": str(folder),
        "load_dataset": load_line(folder, "rlhn" if "rlhn" in written else order[0]),
        "configs": rows_per_config,
        "empty_configs_not_written": empty,
        "validation": vreport.to_dict(),
        "stats": {k: dict(v) for k, v in sorted(result.stats.items())},
        "judges": [asdict(j) for j in result.judges],
        "judge_runs": ledgers,
        "failures": dict(sorted(failures.items())),
        "store": str(store_path(recipe)),
        "recipe": json.loads(json.dumps(asdict(recipe), default=str)),
    }
    rp = report_path(recipe)
    rp.parent.mkdir(parents=True, exist_ok=True)
    rp.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    report["report"] = str(rp)
    for name, ledger_by_group in ledgers.items():
        calls = sum(x["calls"] for x in ledger_by_group.values())
        cached = sum(x["cached"] for x in ledger_by_group.values())
        stage_failures = Counter()
        for x in ledger_by_group.values():
            stage_failures.update({f"failed:{k}": v for k, v in x["failures"].items()})
            stage_failures.update({f"retried:{k}": v for k, v in x["retries"].items()})
            stage_failures.update({"unparseable": x["unparseable"], "parse_retries": x["parse_retries"]})
        shown = ", ".join(f"{k} {v}" for k, v in sorted(stage_failures.items()) if v) or "none"
        print(f"{name}: {calls} judge calls made, {cached} answers from the store; failures/retries: {shown}", file=out)
    if empty:
        print(f"empty configs (no rows, not written): {', '.join(empty)}", file=out)
    print(f"\ndataset: {folder.resolve()}\nreport:  {rp.resolve()}\nload it:\n  import datasets\n  ds = {load_line(folder.resolve(), 'rlhn' if 'rlhn' in written else order[0])}", file=out)
    return report
