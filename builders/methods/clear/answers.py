"""CLEAR stage 3: the answer of a query, from a dataset column or copied by the judge from the
labelled positive (ARHN's stage-1 extraction, the snippet verified against the passage)."""

from __future__ import annotations

from builders.judges.annotate import Annotator, RetryPolicy
from builders.judges.endpoints.base import Backend
from builders.judges.shorten import PromptFitter, count_fit
from builders.judges.store import JudgmentStore
from builders.methods.arhn.snippets import check_snippets, parse_blocks
from builders.methods.arhn.stages import EXTRACT_VERSION, ArhnSettings, RetrieverCut, extract_request
from builders.methods.base import MethodResult
from builders.methods.clear.records import judgment_row, not_sent
from builders.methods.clear.settings import ClearQuery, ClearSettings
from builders.rows import QueryRow


def dataset_answer(row: QueryRow, fields: tuple[str, ...]) -> str | None:
    for name in fields:
        value = row.extra.get(name)
        if isinstance(value, (list, tuple)):
            value = next((v for v in value if isinstance(v, str) and v.strip()), None)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def answer_settings(s: ClearSettings) -> ArhnSettings:
    """The ARHN stage-1 settings the answer is copied with."""
    return ArhnSettings(retriever_tokenizer=s.retriever, retriever_max_length=s.retriever_max_length,
                        copy_sentences=s.extract_copy_sentences, temperature=s.extract_temperature,
                        extract_max_new_tokens=s.extract_max_new_tokens)


def answer_key(row: QueryRow) -> str:
    """One answer call per (query, labelled positive): rows that repeat both share it."""
    return f"{row.query_id}:{row.positive_passages[0].docid}"


async def extract_answers(queries: list[ClearQuery], s: ClearSettings, backend: Backend, store: JudgmentStore,
                     result: MethodResult, cut: RetrieverCut, progress: bool) -> None:
    """ARHN stage 1 on the labelled positive alone: its verified snippet is the answer."""
    arhn = answer_settings(s)
    key = {id(q): answer_key(q.row) for q in queries}  # same question, same answer
    docs = {key[id(q)]: cut(q.row.positive_passages[0].full_text) for q in queries}
    query_of = {key[id(q)]: q.row.query for q in queries}
    fitter = PromptFitter(backend)  # the positive is cut to fit the judge's input limit; the answer is copied from what it shows
    fits = dict(zip(docs, await fitter.fit_all(
        (lambda k=k: fitter.fit(lambda texts: extract_request(query_of[k], list(texts), arhn, backend).messages, [docs[k]],
                                max_new_tokens=arhn.extract_max_new_tokens)) for k in docs)))
    docs.update({k: fit.texts[0] for k, fit in fits.items() if fit.texts is not None})
    items = {k: extract_request(query_of[k], [docs[k]], arhn, backend) for k in docs if fits[k].texts is not None}
    if not docs:
        return
    annotator = Annotator(backend, store, stage="clear/answer", prompt_version=EXTRACT_VERSION, concurrency=s.concurrency,
                          retry=RetryPolicy(max_attempts=s.max_attempts), check=lambda text: parse_blocks(text, 1).ok,
                          progress=progress)
    answered = await annotator.run(items.items())
    outcomes, result.ledgers["clear/answer"] = answered.outcomes, answered.ledger
    accounted: set[str] = set()  # stats count the stored answers (also on resume), each once
    for q in queries:
        fit, subset = fits[key[id(q)]], q.row.subset
        count_fit(result, subset, "answer", fit, passages=False)
        if fit.texts is None:  # too long even cut to the floor: not sent, a failed judgment
            result.count(subset, "call_failures")
            result.judgments.append(judgment_row(q, "clear/answer", backend, EXTRACT_VERSION,
                                                  not_sent(key[id(q)], "clear/answer", backend, EXTRACT_VERSION, fit)))
            continue
        outcome = outcomes[key[id(q)]]
        if key[id(q)] not in accounted:
            accounted.add(key[id(q)])
            result.count(subset, "judge_calls", outcome.judgment.attempts)
            result.count(subset, "prompt_tokens", outcome.judgment.prompt_tokens or 0)
            result.count(subset, "completion_tokens", outcome.judgment.completion_tokens or 0)
        checked = None
        if outcome.status == "failed":
            result.count(subset, "call_failures")
        elif outcome.status == "unparseable":
            result.count(subset, "parse_failures")
        else:
            (checked,) = check_snippets(parse_blocks(outcome.text or "", 1), [docs[key[id(q)]]])
            result.count(subset, "hallucinated_snippets", int(checked.hallucinated))
            if checked.answer:
                q.answer, q.answer_source = checked.answer, "extracted"
                result.count(subset, "answers_extracted")
            else:
                result.count(subset, "answers_not_found")
        result.judgments.append(judgment_row(q, "clear/answer", backend, EXTRACT_VERSION, outcome.judgment,
                                              snippet=checked.raw if checked else None,
                                              hallucinated=checked.hallucinated if checked else None))

