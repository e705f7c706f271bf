"""ARHN: answer-centric relabeling of hard negatives (and PRHN, its passage-centric variant).

Per query, the labelled positive (the first, when a row has several) and the first
``max_negatives`` hard negatives (stored order), each first cut to what the RETRIEVER will see
(``retriever_tokenizer`` / ``retriever_max_length``; offline default the bundled
all-MiniLM-L6-v2 and its ``max_seq_length``, 256; the cut keeps the original characters):

1. Extract (``arhn/extract``): the judge copies one verbatim answer snippet or ``NO_ANSWER``
   per document, in ``[[[docK]]] … [[[/docK]]]`` blocks (doc1 = the positive). Every snippet
   is checked against the text the judge saw (``builders.methods.arhn.snippets``); one that is not there is
   a hallucination, counted and read as NO_ANSWER (``hallucination_as_no_answer``).
2. Rank (``arhn/rank``): the positive's snippet is ``[1]``, the negatives that have a snippet
   follow; the judge orders them ``[a] > [b] > …`` (``builders.methods.arhn.ranking``). NO_ANSWER documents
   are not sent (they are kept as negatives whatever their rank would be); when no negative has
   a snippet, no call is made.
3. Decide, per judged negative: ranked above ``[1]`` → ``relabel`` (becomes a positive); below
   it with a snippet → ``filter`` (removed from the negatives); NO_ANSWER → ``keep``. Anything the
   judges did not settle (no block for it, a failed or unreadable call, the positive without a
   snippet under ``positive_without_snippet="skip"``) is ``unjudged`` and left as it is: counted,
   never read as "not a false negative".

Configs: ``arhn_relabel`` (relabel only), ``arhn_filter`` (filter only; negatives ranked above
the positive stay, as in the paper's ablation), ``arhn_rf`` (both). With ``rank_on="passages"``
(PRHN) stage 1 is skipped and the judge ranks the cut passages themselves, listing only those
that answer or support an answer (always ``[1]``); listed below ``[1]`` → filter, left out →
keep. Configs are then ``prhn_*``. Subsets in ``never_edit_subsets`` (ArguAna: its "positives"
are counter-arguments) pass through unjudged.

This module runs the stages; the pieces live beside it and are re-exported here:
``settings`` (``ArhnSettings``), ``retriever_cut`` (``RetrieverCut``), ``prompts``
(prompts, versions, ``extract_request``, ``rank_request``), ``decide`` (``decide``, ``apply``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from builders.judges.annotate import Annotator, Ledger, Outcome, RetryPolicy
from builders.judges.endpoints.base import Backend, GenerateRequest
from builders.judges.shorten import PromptFitter, count_fit, too_long_message
from builders.judges.store import JudgmentStore
from builders.methods.arhn.decide import apply, decide  # also re-exported
from builders.methods.arhn.prompts import (  # noqa: F401 - re-exported: builders.methods.arhn.stages keeps its public names
    EXTRACT_PROMPT,
    EXTRACT_SYSTEM,
    EXTRACT_VERSION,
    INCLUDE_ALL,
    INCLUDE_ANSWERING,
    PRHN_RANK_VERSION,
    RANK_PROMPT,
    RANK_SYSTEM,
    RANK_VERSION,
    extract_request,
    rank_request,
)
from builders.methods.arhn.ranking import Ranking, parse_ranking
from builders.methods.arhn.retriever_cut import RetrieverCut
from builders.methods.arhn.settings import ArhnSettings
from builders.methods.arhn.snippets import CheckedSnippet, check_snippets, parse_blocks
from builders.methods.base import JudgeInfo, MethodResult, judge_kind, never_edits
from builders.rows import Passage, QueryRow, md5


# ---------------------------------------------------------------- the method
@dataclass
class _Query:
    row: QueryRow
    judged: list[Passage]  # the negatives sent to the judge (first max_negatives)
    cut_positive: str
    cut_negatives: list[str]
    checked: list[CheckedSnippet] | None = None  # stage 1, positive first; None: no usable answer
    decisions: dict[str, str] | None = None  # docid -> relabel | filter | keep | unjudged

    @property
    def key(self) -> str:
        """Store key: the query and exactly the documents judged. Rows repeating a query with other
        passages get their own judgment; exact repeats share one (asked and counted once)."""
        return f"{self.row.query_id}:{md5(' '.join([self.row.positive_passages[0].docid] + [p.docid for p in self.judged]))[:16]}"


def _never_edit(row: QueryRow, s: ArhnSettings) -> bool:
    return not row.positive_passages or not row.negative_passages or never_edits(row.subset, s.never_edit_subsets)


def run(rows: list[QueryRow], settings: ArhnSettings, *, backend: Backend, store: JudgmentStore,
        rank_backend: Backend | None = None, cut: RetrieverCut | None = None,
        retry: RetryPolicy | None = None, concurrency: int | None = None, progress: bool = True) -> MethodResult:
    """ARHN (or PRHN with ``rank_on="passages"``) over ``rows``. ``backend`` extracts,
    ``rank_backend`` (default: the same) ranks; every call goes through the Annotator and
    ``store``, so a rerun pays no call twice. Both stages run in ONE event loop (HTTP backends
    keep their connection pool bound to the loop they first ran in): callers inside a running
    loop await ``arun``. ``result.ledgers`` has each stage's run ledger (``arhn/extract``,
    ``<prefix>/rank``); ``progress``: the annotators' tqdm bars."""
    return asyncio.run(arun(rows, settings, backend=backend, store=store, rank_backend=rank_backend, cut=cut,
                            retry=retry, concurrency=concurrency, progress=progress))


async def arun(rows: list[QueryRow], settings: ArhnSettings, *, backend: Backend, store: JudgmentStore,
               rank_backend: Backend | None = None, cut: RetrieverCut | None = None,
               retry: RetryPolicy | None = None, concurrency: int | None = None, progress: bool = True) -> MethodResult:
    s = settings
    rank_backend = rank_backend or backend
    cut = cut or RetrieverCut(s.retriever_tokenizer, s.retriever_max_length)
    result = MethodResult(name=s.prefix, configs={})
    queries: list[_Query] = []
    for row in rows:
        result.count(row.subset, "rows_in")
        if _never_edit(row, s):
            result.count(row.subset, "rows_not_edited")
            continue
        judged = list(row.negative_passages[: s.max_negatives])
        result.count(row.subset, "negatives_not_judged", len(row.negative_passages) - len(judged))
        queries.append(_Query(row, judged, cut(row.positive_passages[0].full_text), [cut(p.full_text) for p in judged]))

    if s.rank_on == "snippets":
        result.judges.append(JudgeInfo("arhn/extract", backend.model_id, EXTRACT_VERSION, judge_kind(backend)))
        await _extract(queries, s, backend, store, result, retry, concurrency, progress)
    rank_version = PRHN_RANK_VERSION if s.rank_on == "passages" else RANK_VERSION
    result.judges.append(JudgeInfo(f"{s.prefix}/rank", rank_backend.model_id, rank_version, judge_kind(rank_backend)))
    await _rank(queries, s, rank_backend, store, result, retry, concurrency, progress)

    decisions = {id(q.row): q.decisions or {} for q in queries}
    for variant in ("relabel", "filter", "rf"):
        name = f"{s.prefix}_{variant}"
        result.configs[name] = [apply(r, decisions.get(id(r), {}), variant) for r in rows]
        for r in result.configs[name]:
            result.count(r.subset, f"{name}:rows")
            result.count(r.subset, f"{name}:positives", len(r.positive_passages))
            result.count(r.subset, f"{name}:negatives", len(r.negative_passages))
    for q in queries:
        said = list((q.decisions or {}).values())
        subset = q.row.subset
        result.count(subset, "negatives_judged", len(q.judged))
        result.count(subset, "relabeled", said.count("relabel"))
        result.count(subset, "filtered", said.count("filter"))
        result.count(subset, "kept_as_negative", said.count("keep"))
        result.count(subset, "unjudged_negatives", said.count("unjudged"))
        result.count(subset, "positives_added", said.count("relabel"))  # as in the R+F config
        result.count(subset, "negatives_removed", said.count("relabel") + said.count("filter"))
    return result


async def _ask(backend: Backend, store: JudgmentStore, stage: str, version: str,
         items: dict[str, tuple[GenerateRequest, int]], check_for: Callable[[int], Callable[[str], bool]],
         retry: RetryPolicy | None, concurrency: int | None, progress: bool) -> tuple[dict[str, Outcome], Ledger]:
    """Ask through the shared Annotator (store, retries, parse retries, resume). The parse check
    depends on how many entries an answer must cover, so items run in groups of equal size
    (same stage and prompt version, unique keys: one store); the stage's ledger sums the groups'."""
    groups: dict[int, list[tuple[str, GenerateRequest]]] = {}
    for key, (request, n) in items.items():
        groups.setdefault(n, []).append((key, request))
    outcomes: dict[str, Outcome] = {}
    ledger = Ledger()
    for n, group in sorted(groups.items()):
        annotator = Annotator(backend, store, stage=stage, prompt_version=version, concurrency=concurrency,
                              retry=retry, check=check_for(n), progress=progress)
        answered = await annotator.run(group)
        outcomes.update(answered.outcomes)
        ledger.add(answered.ledger)
    return outcomes, ledger


def _listed(ranking: Ranking | None, passages: bool) -> list[int] | None:
    """The order as recorded: PRHN records only the entries the judge listed."""
    if ranking is None:
        return None
    return [e for e in ranking.order if e not in ranking.missing] if passages else ranking.order


def _account(result: MethodResult, subset: str, outcome: Outcome, accounted: set[str]) -> None:
    """Judge calls and tokens as the store recorded them (also for answers read back on resume,
    so a resumed run's stats equal an uninterrupted one's; what this run paid is in
    ``result.ledgers``); an answer shared by repeated rows is counted once."""
    if outcome.key in accounted:
        result.count(subset, "answers_shared_with_a_repeated_row")
        return
    accounted.add(outcome.key)
    j = outcome.judgment
    result.count(subset, "judge_calls", j.attempts)
    result.count(subset, "prompt_tokens", j.prompt_tokens or 0)
    result.count(subset, "completion_tokens", j.completion_tokens or 0)


async def _extract(queries: list[_Query], s: ArhnSettings, backend: Backend, store: JudgmentStore, result: MethodResult,
             retry: RetryPolicy | None, concurrency: int | None, progress: bool) -> None:
    fitter = PromptFitter(backend)  # negatives cut to fit the judge's input limit; doc1 (the positive) never
    fits = await fitter.fit_all(
        (lambda q=q: fitter.fit(lambda texts: extract_request(q.row.query, [q.cut_positive, *texts], s, backend).messages,
                                q.cut_negatives, max_new_tokens=s.extract_max_new_tokens)) for q in queries)
    items = {}
    for q, fit in zip(queries, fits):
        if fit.texts is not None:
            q.cut_negatives = list(fit.texts)  # what the judge is shown: its snippets are verified against this
            docs = [q.cut_positive] + q.cut_negatives
            items[q.key] = (extract_request(q.row.query, docs, s, backend), len(docs))
    outcomes, result.ledgers["arhn/extract"] = await _ask(backend, store, "arhn/extract", EXTRACT_VERSION, items,
                    lambda n: (lambda text: parse_blocks(text, n).ok), retry, concurrency, progress)
    accounted: set[str] = set()
    for q, fit in zip(queries, fits):
        subset = q.row.subset
        count_fit(result, subset, "extract", fit)
        if fit.texts is None:  # too long even cut to the floor: not sent, a failed judgment
            q.checked = None
            result.count(subset, "call_failures")
            row = _judgment(q, "arhn/extract", backend, EXTRACT_VERSION, None, "call_failed", [])
            result.judgments.append({**row, "error": too_long_message(fit)})
            continue
        outcome = outcomes[q.key]
        _account(result, subset, outcome, accounted)
        docs = [q.cut_positive] + q.cut_negatives
        issues: list[str] = []
        if outcome.text is None:
            status = "call_failed"
            result.count(subset, "call_failures")
        else:
            parse = parse_blocks(outcome.text, len(docs))
            issues = parse.issues
            for issue in issues:
                result.count(subset, "extract_" + issue.split(":")[0])
            if not parse.snippets:  # nothing usable: the whole query stays unjudged
                status = "parse_failure"
                result.count(subset, "parse_failures")
            else:
                status = "ok" if not issues else "parsed_with_issues"
                q.checked = check_snippets(parse, docs, s.hallucination_as_no_answer)
                result.count(subset, "hallucinated_snippets", sum(c.hallucinated for c in q.checked))
        result.judgments.append(_judgment(
            q, "arhn/extract", backend, EXTRACT_VERSION, outcome, status, issues,
            snippets=[c.raw for c in q.checked] if q.checked else None,
            hallucinated=[c.hallucinated for c in q.checked] if q.checked else None))


async def _rank(queries: list[_Query], s: ArhnSettings, backend: Backend, store: JudgmentStore, result: MethodResult,
          retry: RetryPolicy | None, concurrency: int | None, progress: bool) -> None:
    passages = s.rank_on == "passages"
    stage, version = f"{s.prefix}/rank", PRHN_RANK_VERSION if passages else RANK_VERSION
    plans: list[tuple[_Query, list[bool], list[str]]] = []
    for q in queries:
        if passages:
            plans.append((q, [True] * len(q.judged), [q.cut_positive] + q.cut_negatives))
            continue
        if q.checked is None:
            q.decisions = {p.docid: "unjudged" for p in q.judged}
            continue
        positive, negatives = q.checked[0], q.checked[1:]
        has = [c.answer is not None for c in negatives]
        if positive.answer is None and s.positive_without_snippet == "skip":
            result.count(q.row.subset, "positive_without_snippet")
            q.decisions = {p.docid: ("unjudged" if flag or c.missing else "keep") for p, flag, c in zip(q.judged, has, negatives)}
            result.judgments.append(_judgment(q, stage, backend, version, None, "skipped_positive_without_snippet", [],
                                              decisions=q.decisions))
            continue
        if not any(has):
            result.count(q.row.subset, "rank_skipped_no_candidates")
            q.decisions = {p.docid: ("unjudged" if c.missing else "keep") for p, c in zip(q.judged, negatives)}
            result.judgments.append(_judgment(q, stage, backend, version, None, "skipped_no_candidates", [],
                                              decisions=q.decisions))
            continue
        entries = [positive.answer or "NO_ANSWER"] + [c.answer for c in negatives if c.answer is not None]
        plans.append((q, has, entries))

    def usable(n: int) -> Callable[[str], bool]:
        def check(text: str) -> bool:
            r = parse_ranking(text, n)
            return r.ok and 1 not in r.missing and (passages or not r.issues)
        return check

    fitter = PromptFitter(backend)  # entries after [1] cut to fit the judge's input limit; [1] never
    shown = [[" ".join(e.split()) for e in entries] for _, _, entries in plans]  # as rank_request shows them
    fits = await fitter.fit_all(
        (lambda q=q, e=e: fitter.fit(lambda texts: rank_request(q.row.query, [e[0], *texts], s, backend).messages,
                                     e[1:], max_new_tokens=s.rank_max_new_tokens)) for (q, _, _), e in zip(plans, shown))
    items = {q.key: (rank_request(q.row.query, [e[0], *fit.texts], s, backend), len(e))
             for (q, _, _), e, fit in zip(plans, shown, fits) if fit.texts is not None}
    outcomes, result.ledgers[stage] = await _ask(backend, store, stage, version, items, usable, retry, concurrency, progress)
    accounted: set[str] = set()
    for (q, has, entries), fit in zip(plans, fits):
        subset = q.row.subset
        count_fit(result, subset, "rank", fit)
        if fit.texts is None:  # too long even cut to the floor: not sent, a failed judgment
            result.count(subset, "call_failures")
            missing = [c.missing for c in q.checked[1:]] if q.checked else [False] * len(q.judged)
            q.decisions = {p.docid: ("unjudged" if gone or flag else "keep") for p, flag, gone in zip(q.judged, has, missing)}
            row = _judgment(q, stage, backend, version, None, "call_failed", [], decisions=q.decisions)
            result.judgments.append({**row, "error": too_long_message(fit)})
            continue
        outcome = outcomes[q.key]
        _account(result, subset, outcome, accounted)
        ranking, issues = None, []
        if outcome.text is None:
            status = "call_failed"
            result.count(subset, "call_failures")
        else:
            ranking = parse_ranking(outcome.text, len(entries))
            issues = [i for i in ranking.issues if not (passages and i.startswith("missing_id") and i != "missing_id:1")]
            for issue in issues:
                result.count(subset, "rank_" + issue.split(":")[0])
            if not ranking.ok or 1 in ranking.missing:  # no anchor: nothing can be decided
                status, ranking = "parse_failure", None
                result.count(subset, "parse_failures")
            else:
                status = "ok" if not issues else "parsed_with_issues"
        decided = decide(has, ranking, listed_only=passages)
        missing = [c.missing for c in q.checked[1:]] if q.checked else [False] * len(q.judged)
        q.decisions = {p.docid: ("unjudged" if gone else d) for p, d, gone in zip(q.judged, decided, missing)}
        result.judgments.append(_judgment(q, stage, backend, version, outcome, status, issues, decisions=q.decisions,
                                          order=_listed(ranking, passages)))


JUDGMENT_SCHEMA = pa.schema([
    ("method", pa.string()), ("stage", pa.string()), ("query_id", pa.string()), ("subset", pa.string()),
    ("judge_model", pa.string()), ("prompt_version", pa.string()), ("status", pa.string()),
    ("store_status", pa.string()), ("error", pa.string()), ("raw_response", pa.string()),
    ("issues", pa.list_(pa.string())), ("docids", pa.list_(pa.string())), ("snippets", pa.list_(pa.string())),
    ("hallucinated", pa.list_(pa.bool_())), ("ranking", pa.list_(pa.int64())),
    ("decisions", pa.list_(pa.struct([("docid", pa.string()), ("decision", pa.string())]))),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("attempts", pa.int64()),
])  # the columns of ``_judgment`` rows, for the writer's ``judgments`` config


def _judgment(q: _Query, stage: str, backend: Backend, version: str, outcome: Outcome | None, status: str,
              issues: list[str], snippets=None, hallucinated=None, decisions=None, order=None) -> dict:
    """One row of the ``judgments`` config; every ARHN/PRHN row has the same keys."""
    j = outcome.judgment if outcome else None
    return {
        "method": stage.split("/")[0], "stage": stage, "query_id": q.row.query_id, "subset": q.row.subset,
        "judge_model": backend.model_id, "prompt_version": version, "status": status,
        "store_status": j.status if j else None,
        "error": f"{j.error_kind}: {j.error_message}" if j and j.error_kind else None,
        "raw_response": outcome.text if outcome else None,
        "issues": list(issues),
        "docids": [q.row.positive_passages[0].docid] + [p.docid for p in q.judged],
        "snippets": snippets, "hallucinated": hallucinated, "ranking": order,
        "decisions": [{"docid": d, "decision": v} for d, v in decisions.items()] if decisions is not None else None,
        "prompt_tokens": j.prompt_tokens if j else None,
        "completion_tokens": j.completion_tokens if j else None,
        "attempts": j.attempts if j else 0,
    }
