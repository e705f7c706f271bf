"""CLEAR stage 4: the judge's confidence in the answer after (query, passage), from the
log-probabilities of the answer's tokens (``Backend.score`` through ``builders.judges.scoring``)."""

from __future__ import annotations

from builders.judges.annotate import RetryPolicy
from builders.judges.endpoints.base import Backend, ScoreRequest
from builders.judges.scoring import CannotScore, score_all
from builders.judges.shorten import PromptFitter, count_fit
from builders.judges.store import JudgmentStore
from builders.methods.arhn.stages import RetrieverCut
from builders.methods.base import MethodResult
from builders.methods.clear.confidence import ConfidenceError, answer_confidence
from builders.methods.clear.records import judgment_row, not_sent
from builders.methods.clear.settings import ClearError, ClearQuery, ClearSettings
from builders.rows import Passage, md5

SCORE_VERSION = "clear-score-v1"
SCORE_SYSTEM = "You answer questions using only the document you are given."
SCORE_PROMPT = "Document:\n{document}\n\nQuestion: {query}\n\nAnswer the question with words from the document."


def score_request(query: str, document: str, answer: str) -> ScoreRequest:
    return ScoreRequest(
        messages=({"role": "system", "content": SCORE_SYSTEM},
                  {"role": "user", "content": SCORE_PROMPT.format(document=document, query=query)}),
        continuation=answer,
    )


def score_key(query_id: str, answer: str, docid: str) -> str:
    return f"{query_id}:{md5(answer)[:12]}:{docid}"


async def score_passages(queries: list[ClearQuery], s: ClearSettings, backend: Backend, store: JudgmentStore, result: MethodResult,
                 cut: RetrieverCut, progress: bool) -> None:
    items: dict[str, ScoreRequest] = {}
    owners: list[tuple[str, ClearQuery, Passage, str]] = []
    documents: dict[str, tuple[str, str, str]] = {}  # key -> (query, document, answer)
    for q in queries:
        q.confidence = {}
        for p in list(q.row.positive_passages) + [p for p, _ in q.pfns]:
            key = score_key(q.row.query_id, q.answer, p.docid)  # identical requests are sent once
            documents[key] = (q.row.query, cut(p.full_text), q.answer)
            owners.append((key, q, p, "positive" if p in q.row.positive_passages else "pfn"))
    fitter = PromptFitter(backend)  # the document is cut to fit the judge's input limit; the answer stays whole
    fits = dict(zip(documents, await fitter.fit_all(
        (lambda k=k, d=d: fitter.fit(lambda texts: score_request(d[0], texts[0], d[2]).messages, [d[1]],
                                     max_new_tokens=1, continuation=d[2])) for k, d in documents.items())))
    items = {k: score_request(d[0], fits[k].texts[0], d[2]) for k, d in documents.items() if fits[k].texts is not None}
    try:
        scored = await score_all(backend, store, items, stage="clear/score", prompt_version=SCORE_VERSION,
                                 concurrency=s.concurrency, retry=RetryPolicy(max_attempts=s.max_attempts), progress=progress)
    except CannotScore as error:
        raise ClearError(f"CLEAR stopped: {error}") from error
    outcomes, result.ledgers["clear/score"] = scored.outcomes, scored.ledger
    accounted: set[str] = set()  # stats count the stored answers (also on resume), each once
    counted: set[str] = set()
    for key, q, p, role in owners:
        if key not in counted:
            counted.add(key)
            count_fit(result, q.row.subset, "score", fits[key], passages=False)
        if fits[key].texts is None:  # too long even cut to the floor: not sent, a failed judgment
            result.count(q.row.subset, "score_failures")
            similarity = next((v for x, v in q.pfns if x.docid == p.docid), q.positive_similarity)
            result.judgments.append(judgment_row(q, "clear/score", backend, SCORE_VERSION,
                                                  not_sent(key, "clear/score", backend, SCORE_VERSION, fits[key]),
                                                  docid=p.docid, role=role, confidence=None, similarity=similarity))
            continue
        outcome = outcomes[key]
        if key not in accounted:
            accounted.add(key)
            result.count(q.row.subset, "judge_calls", outcome.judgment.attempts)
            result.count(q.row.subset, "prompt_tokens", outcome.judgment.prompt_tokens or 0)
            result.count(q.row.subset, "completion_tokens", outcome.judgment.completion_tokens or 0)
        cs = None
        if outcome.tokens is not None:
            try:
                cs, _ = answer_confidence(outcome.tokens, q.answer)
            except ConfidenceError as error:
                raise ClearError(f"query_id={q.row.query_id} docid={p.docid}: judge {backend.model_id}'s token offsets "
                                 f"do not fit the answer: {error}") from error
            q.confidence[p.docid] = cs
            result.count(q.row.subset, "passages_scored")
        else:
            result.count(q.row.subset, "score_failures")
        similarity = next((v for x, v in q.pfns if x.docid == p.docid), q.positive_similarity)
        result.judgments.append(judgment_row(q, "clear/score", backend, SCORE_VERSION, outcome.judgment, docid=p.docid,
                                              role=role, confidence=cs, similarity=similarity))

