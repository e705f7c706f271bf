"""ARHN's and PRHN's ``--dry-run``. Stage 1 (``arhn/extract``) and PRHN's ranking: every prompt
of every editable query, as it will be sent. ARHN's ranking (``arhn/rank``) holds stage 1's
snippets, unknown before the run: ``dry_run.arhn_rank_share`` of the extracted queries, each
with the positive's snippet and ``max(1, round(arhn_answering_share x judged negatives))``
negative snippets of ``dry_run.snippet_tokens`` tokens each, in the real ranking prompt."""

from __future__ import annotations

import dataclasses

from builders.judges.dry_counts import Count, check_limit, prompt_counter
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.ledger import StagePlan
from builders.methods.arhn.settings import ArhnSettings
from builders.methods.arhn.stages import RetrieverCut, extract_request, rank_request
from builders.methods.base import never_edits
from builders.rows import QueryRow


def rank_counts(dry, query: str, judged_negatives: int, settings: ArhnSettings, count: Count) -> int:
    """Tokens of one ranking prompt: the real prompt around the positive's snippet and the
    expected negative snippets, each ``dry_run.snippet_tokens`` long."""
    entries = 1 + max(1, round(dry.arhn_answering_share * judged_negatives))
    return count(rank_request(query, [""] * entries, settings, None).messages) + entries * dry.snippet_tokens


def rank_assumptions(dry) -> str:
    return (f"estimate: share {dry.arhn_rank_share} of the queries ranked (dry_run.arhn_rank_share), "
            f"{dry.arhn_answering_share} of their negatives with a snippet (dry_run.arhn_answering_share), "
            f"{dry.snippet_tokens} tokens per snippet (dry_run.snippet_tokens)")


def plans(rows: list[QueryRow], settings: ArhnSettings, specs: dict[str, list[EndpointSpec]], dry, result: dict, out) -> list[StagePlan]:
    """ARHN's stage-1 prompts and its ranking estimate, or PRHN's ranking prompts -> ``StagePlan``s."""
    plain = dataclasses.replace(settings, constrained="off")  # the constraint is no prompt token
    cut = RetrieverCut(plain.retriever_tokenizer, plain.retriever_max_length)
    passages = plain.rank_on == "passages"
    stage, judge = (f"{plain.prefix}/rank", "arhn_rank") if passages else (f"{plain.prefix}/extract", "arhn_extract")
    spec, rank_spec = specs[judge][0], specs["arhn_rank"][0]
    how, count = prompt_counter(dry, spec)
    rank_count = prompt_counter(dry, rank_spec)[1]
    counts, ranks = [], []
    for row in rows:
        if never_edits(row.subset, plain.never_edit_subsets) or not row.negative_passages:
            continue
        docs = [cut(p.full_text) for p in row.positive_passages[:1] + row.negative_passages[: plain.max_negatives]]
        request = (rank_request(row.query, docs, plain, None) if passages else extract_request(row.query, docs, plain, None))
        counts.append(count(request.messages))
        if not passages:
            ranks.append(rank_counts(dry, row.query, len(docs) - 1, plain, rank_count))
    new_tokens = plain.rank_max_new_tokens if passages else plain.extract_max_new_tokens
    check = check_limit(specs[judge], counts, new_tokens)
    out_plans = [StagePlan(stage, spec.model_id, check.sent, 1.0, dry.completion_tokens)]
    print(f"{stage} [{spec.model_id}]: {len(counts)} prompts, ~{sum(check.sent):,} prompt tokens ({how})", file=out)
    print(check.line(), file=out)
    result["stages"][stage] = {"judge": spec.model_id, "prompts": len(counts), "prompt_tokens": sum(check.sent),
                               "counted_with": how, **check.as_dict()}
    if not passages and ranks:
        share, rank = dry.arhn_rank_share, f"{plain.prefix}/rank"
        check = check_limit(specs["arhn_rank"], ranks, plain.rank_max_new_tokens)
        out_plans.append(StagePlan(rank, rank_spec.model_id, check.sent, share, dry.completion_tokens))
        calls, tokens = round(share * len(ranks)), round(share * sum(check.sent))
        print(f"{rank} [{rank_spec.model_id}]: ~{calls} prompts, ~{tokens:,} prompt tokens ({rank_assumptions(dry)})", file=out)
        print(check.line(), file=out)
        result["stages"][rank] = {"judge": rank_spec.model_id, "prompts": calls, "prompt_tokens": tokens, "estimated": True,
                                  "counted_with": how, **check.as_dict()}
    return out_plans
