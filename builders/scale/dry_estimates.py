"""What ``--dry-run`` counts before any judge call (``builders.build.dry_run`` prints it): the
judge's tokenizer, its input limit, and the prompts of the stages whose requests depend on
what runs before them - CLEAR's answers and scores, ARHN's ranking - built with the build's own
request builders, with stated assumptions where a prompt holds what an earlier call will write.

- ``clear/answer``: one prompt per distinct (query, labelled positive) without an answer
  column (``builders.methods.clear.answers``: the same key, settings and request; exact).
- ``clear/score``: one call per distinct (query, answer, passage) over the positives and the
  PFNs. The PFNs come from the build's own retrieval (``builders.methods.clear.stages.prepare_queries``: the
  local embedder, no judge money), so the number of calls is exact; with
  ``dry_run.clear_retrieval: false`` no embedder is loaded and the count is an upper bound:
  ``min(top_n, max_pfn, pool - own positives)`` candidates per query, counted as the row's own
  negatives (the mean of those for candidates beyond them). An answer the judge will extract is
  unknown: it is counted as ``dry_run.answer_tokens`` tokens, and every extraction is assumed
  to find one (rows without are not scored: an upper bound). Completion tokens: the one token
  TGI generates per score call, none for vLLM echo or a local forward pass (``Scored``).
- ARHN's ``arhn/rank``: ``dry_run.arhn_rank_share`` of the extracted queries, each with the
  positive's snippet and ``max(1, round(arhn_answering_share x judged negatives))`` negative
  snippets of ``dry_run.snippet_tokens`` tokens each, in the real ranking prompt.

Every stage's prompt tokens are what will be sent: a prompt over the judge's input limit is
counted at the limit (``builders.judges.shorten`` cuts it to fit).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from builders.judges.endpoints.chat import load_tokenizer
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.ledger import StagePlan, chat_token_counter
from builders.rows import QueryRow

Count = Callable[..., int]  # (messages, continuation="") -> prompt tokens
APPROXIMATE = "≈ characters / 4 (no tokenizer named: set dry_run.tokenizer)"


# ---------------------------------------------------------------- counting
named_tokenizer = functools.lru_cache(maxsize=8)(load_tokenizer)  # loaded once per dry run's stages


def judge_tokenizer(spec: EndpointSpec):
    """The judge's tokenizer without loading its weights: ``tokenizer`` when named; for a
    local judge its model (a GGUF file's tokenizer is read from the file), else None."""
    if spec.tokenizer:
        return named_tokenizer(spec.tokenizer)
    return _local_tokenizer(spec.model, spec.gguf_file) if spec.kind == "local" else None


@functools.lru_cache(maxsize=8)
def _local_tokenizer(model: str | None, gguf_file: str | None):
    from transformers import AutoTokenizer

    if model is None or gguf_file:
        from builders.judges.endpoints.local import SMOLLM2_GGUF, bundled_smollm2

        path = Path(gguf_file) if gguf_file and Path(gguf_file).is_file() else None
        if path is None and model is None and gguf_file in (None, SMOLLM2_GGUF):
            path = bundled_smollm2()
        if path is not None:
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return AutoTokenizer.from_pretrained(model, gguf_file=gguf_file)
    return AutoTokenizer.from_pretrained(model)


def prompt_counter(recipe, spec: EndpointSpec) -> tuple[str, Count]:
    """How a judge's prompts are counted: ``dry_run.tokenizer``, else the judge's own; without
    either, characters / 4 (said in the printout)."""
    tok = named_tokenizer(recipe.dry_run.tokenizer) if recipe.dry_run.tokenizer else judge_tokenizer(spec)
    if tok is not None:
        return "tokenizer", chat_token_counter(tok)

    def approximate(messages, continuation: str = "") -> int:
        return len("\n".join(m["content"] for m in messages) + continuation) // 4
    return APPROXIMATE, approximate


# ---------------------------------------------------------------- input limits
def dry_input_limit(specs: list[EndpointSpec], max_new_tokens: int) -> int | None:
    """A judge's input limit for the dry run (``builders.judges.shorten``'s rule: the smallest of its
    endpoints'): ``max_input_tokens`` when set, a local model's context minus ``max_new_tokens``
    (its config, no weights), a server's ``/info`` / ``/v1/models`` when it answers; else None."""
    from builders.judges.endpoints.local import read_context_length

    limits = []
    for spec in specs:
        new = min(max_new_tokens, spec.max_new_tokens) if spec.max_new_tokens is not None else max_new_tokens
        if spec.max_input_tokens is not None:
            limits.append(spec.max_input_tokens)
        elif spec.kind == "local":
            context = read_context_length(spec.model, spec.gguf_file)
            limits.append(None if context is None else context - new)
        else:
            limits.append(asyncio.run(_server_limit(spec, new)))
    known = [x for x in limits if x is not None]
    return min(known) if known else None


async def _server_limit(spec: EndpointSpec, max_new_tokens: int) -> int | None:
    from builders.judges.endpoints import make_backend

    backend = make_backend(dataclasses.replace(spec, tokenizer=None, timeout_s=min(spec.timeout_s, 10.0)))
    try:
        return await backend.input_limit(max_new_tokens)
    except Exception:  # noqa: BLE001 - a dry run reports what it can; the build reads the limit again
        return None
    finally:
        await backend.aclose()


@dataclass
class LimitCheck:
    """A stage's prompts against its judge's input limit."""

    limit: int | None
    counts: list[int]  # tokens per prompt as built
    sent: list[int]  # as they will be sent: a prompt over the limit is shortened to it

    @property
    def over(self) -> list[int]:
        return [] if self.limit is None else [c for c in self.counts if c > self.limit]

    def line(self) -> str:
        if self.limit is None:
            return "  input limit unknown (set max_input_tokens on the endpoint): prompts are sent as they are"
        return (f"  input limit {self.limit:,} tokens: {len(self.over)} of {len(self.counts)} prompts over it would be "
                f"shortened (~{sum(c - self.limit for c in self.over):,} tokens cut; builders.judges.shorten)")

    def as_dict(self) -> dict:
        if self.limit is None:
            return {"input_limit": None, "prompts_over_limit": None}
        return {"input_limit": self.limit, "prompts_over_limit": len(self.over),
                "tokens_over_limit": sum(c - self.limit for c in self.over)}


def check_limit(specs: list[EndpointSpec], counts: list[int], max_new_tokens: int) -> LimitCheck:
    limit = dry_input_limit(specs, max_new_tokens)
    return LimitCheck(limit, counts, counts if limit is None else [min(c, limit) for c in counts])


# ---------------------------------------------------------------- ARHN ranking
def arhn_rank_counts(recipe, query: str, judged_negatives: int, settings, count: Count) -> int:
    """Tokens of one ranking prompt: the real prompt around the positive's snippet and the
    expected negative snippets, each ``dry_run.snippet_tokens`` long."""
    from builders.methods.arhn.stages import rank_request

    d = recipe.dry_run
    entries = 1 + max(1, round(d.arhn_answering_share * judged_negatives))
    return count(rank_request(query, [""] * entries, settings, None).messages) + entries * d.snippet_tokens


def arhn_rank_assumptions(recipe) -> str:
    d = recipe.dry_run
    return (f"estimate: share {d.arhn_rank_share} of the queries ranked (dry_run.arhn_rank_share), "
            f"{d.arhn_answering_share} of their negatives with a snippet (dry_run.arhn_answering_share), "
            f"{d.snippet_tokens} tokens per snippet (dry_run.snippet_tokens)")


# ---------------------------------------------------------------- CLEAR
def clear_plans(recipe, rows: list[QueryRow], specs: list[EndpointSpec], result: dict, out) -> list[StagePlan]:
    """``clear/answer`` and ``clear/score`` as the build will send them (module docstring)."""
    from builders.methods.arhn.stages import RetrieverCut, extract_request
    from builders.methods.base import MethodResult
    from builders.methods.clear.answers import answer_key, answer_settings, dataset_answer
    from builders.methods.clear.scores import score_key, score_request
    from builders.methods.clear.settings import ClearQuery
    from builders.methods.clear.stages import editable_row, prepare_queries

    s, d, spec = recipe.clear, recipe.dry_run, specs[0]
    how, count = prompt_counter(recipe, spec)
    cut = RetrieverCut(s.retriever, s.retriever_max_length)
    if d.clear_retrieval:
        queries = prepare_queries(rows, s, MethodResult(name="clear", configs={}))  # its counts are not needed
    else:
        queries = [ClearQuery(r, [], 0.0, answer=dataset_answer(r, s.answer_fields)) for r in rows if editable_row(r, s)]
    plans = []

    # clear/answer: one per (query, labelled positive) without an answer column
    needs = [q for q in queries if q.answer is None] if s.extract_answers else []
    extract = dataclasses.replace(answer_settings(s), constrained="off")  # the constraint is no prompt token
    answers: dict[str, int] = {}
    for q in needs:
        key = answer_key(q.row)
        if key not in answers:
            doc = cut(q.row.positive_passages[0].full_text)
            answers[key] = count(extract_request(q.row.query, [doc], extract, None).messages)
    if answers:
        check = check_limit(specs, list(answers.values()), s.extract_max_new_tokens)
        plans.append(StagePlan("clear/answer", spec.model_id, check.sent, 1.0, d.completion_tokens))
        print(f"clear/answer [{spec.model_id}]: {len(answers)} prompts, ~{sum(check.sent):,} prompt tokens ({how}); "
              "one per (query, labelled positive) without an answer column", file=out)
        print(check.line(), file=out)
        result["stages"]["clear/answer"] = {"judge": spec.model_id, "prompts": len(answers),
                                            "prompt_tokens": sum(check.sent), "counted_with": how, **check.as_dict()}

    # clear/score: the positives and the PFNs of every query with an answer (or one to come)
    extracted = {id(q) for q in needs}
    scored: dict[str, int] = {}
    roles = {"positive": 0, "pfn": 0}
    pool_size = None if s.corpus else len({p.docid for r in rows if editable_row(r, s) for p in r.positive_passages + r.negative_passages})
    for q in queries:
        if q.answer is None and id(q) not in extracted:
            continue
        answer = q.answer if q.answer is not None else answer_key(q.row)  # an extracted answer: one per answer key

        def tokens(text: str) -> int:
            messages = score_request(q.row.query, cut(text), "").messages
            return count(messages, q.answer) if q.answer is not None else count(messages) + d.answer_tokens

        bound = None if d.clear_retrieval else _pfn_bound(q.row, s, pool_size)
        pfns = [p for p, _ in q.pfns] if bound is None else q.row.negative_passages[:bound]
        counted: dict[str, list[int]] = {"positive": [], "pfn": []}
        for role, passages in (("positive", q.row.positive_passages), ("pfn", pfns)):
            for p in passages:
                key = score_key(q.row.query_id, answer, p.docid)
                if key not in scored:
                    scored[key] = tokens(p.full_text)
                    counted[role].append(scored[key])
        if bound is not None:  # candidates beyond the row's own negatives: their mean (else the positive's)
            like = counted["pfn"] or counted["positive"] or [0]
            for i in range(bound - len(pfns)):
                scored[score_key(q.row.query_id, answer, f"bound:{i}")] = round(sum(like) / len(like))
                counted["pfn"].append(0)
        roles = {role: roles[role] + len(counted[role]) for role in roles}
    if scored:
        check = check_limit(specs, list(scored.values()), 1)
        plans.append(StagePlan("clear/score", spec.model_id, check.sent, 1.0, 1.0 if spec.kind == "tgi" else 0.0))
        pfns = ("PFNs from the retrieval: exact" if d.clear_retrieval else
                f"PFNs: upper bound, min(top_n {s.top_n}, max_pfn {s.max_pfn}, pool) per query, not retrieved "
                "(dry_run.clear_retrieval: false)")
        assumed = (f"; an answer still to be extracted counted as {d.answer_tokens} tokens (dry_run.answer_tokens), "
                   "every extraction assumed to find one" if needs else "")
        print(f"clear/score [{spec.model_id}]: {'' if d.clear_retrieval else '≤ '}{len(scored)} prompts "
              f"({roles['positive']} positives, {roles['pfn']} PFNs; {pfns}), ~{sum(check.sent):,} prompt tokens "
              f"({how}){assumed}", file=out)
        print(check.line(), file=out)
        result["stages"]["clear/score"] = {"judge": spec.model_id, "prompts": len(scored), "positives": roles["positive"],
                                           "pfns": roles["pfn"], "pfns_exact": d.clear_retrieval,
                                           "prompt_tokens": sum(check.sent), "counted_with": how,
                                           "answer_tokens_assumed": d.answer_tokens if needs else None, **check.as_dict()}
    return plans


def _pfn_bound(row: QueryRow, s, pool_size: int | None) -> int:
    """At most this many PFNs per query: the retrieval's cut (``top_n``, ``max_pfn``) within the
    pool less the row's own positives (a corpus: its size is not read)."""
    bound = s.top_n if s.max_pfn is None else min(s.top_n, s.max_pfn)
    if pool_size is not None:
        bound = min(bound, pool_size - len({p.docid for p in row.positive_passages}))
    return max(0, bound)
