"""CLEAR's ``--dry-run``: its prompts as the build will send them, built with the build's own
request builders.

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
"""

from __future__ import annotations

import dataclasses

from builders.judges.dry_counts import check_limit, prompt_counter
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.ledger import StagePlan
from builders.methods.arhn.stages import RetrieverCut, extract_request
from builders.methods.base import MethodResult
from builders.methods.clear.answers import answer_key, answer_settings, dataset_answer
from builders.methods.clear.scores import score_key, score_request
from builders.methods.clear.settings import ClearQuery, ClearSettings
from builders.methods.clear.stages import editable_row, prepare_queries
from builders.rows import QueryRow


def plans(rows: list[QueryRow], s: ClearSettings, specs: list[EndpointSpec], d, result: dict, out) -> list[StagePlan]:
    """``clear/answer`` and ``clear/score`` as the build will send them (module docstring);
    ``specs``: the judge's endpoints, ``d``: the recipe's ``dry_run:`` section."""
    spec = specs[0]
    how, count = prompt_counter(d, spec)
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
