"""CLEAR: confidence-scored relabeling of potential false negatives.

Per training query (paper: "CLEAR", stages 2-5):

1. Candidates. An embedder (any sentence-transformers model; offline default the bundled
   all-MiniLM-L6-v2) retrieves the top ``top_n`` passages for the query from a pool: the
   dataset's own passages (every positive and negative of every row, deduplicated by docid) or
   a BEIR-style ``corpus.jsonl``. The row's own positives are not candidates.
2. Potential false negatives (PFNs): retrieved passages whose similarity is strictly above
   ``tau * s+`` (tau default 0.95), s+ the similarity of the labelled positive (of the
   weakest one when a row has several: the same rule as TopK-PercPos, ``percpos.cutoff``).
3. The answer. A dataset column when the row has one (``answer`` / ``answers`` in the row's
   ``extra``; a list gives its first non-empty item); otherwise the judge copies it from the
   labelled positive with ARHN's stage-1 extraction (``builders.arhn.extract_request``, the
   snippet verified against the passage; a hallucinated or NO_ANSWER snippet means no answer).
   A row without an answer is left as it is and counted (``rows_without_answer``).
4. Confidence. For the positive(s) and every PFN, the judge's log-probabilities of the answer
   written after (query, passage) give ``cs = 1 - sqrt(mean_h (1 - p_h)^2)`` over the answer
   tokens (``builders.confidence``, tokens chosen by character offsets). ``Backend.score``
   does the work: TGI ``/generate`` with prefill details (a server without
   ``--enable-prefill-logprobs`` stops the run with an error that says so), vLLM-style
   ``/v1/completions`` prompt logprobs, or the local model exactly. Any error that says the
   backend cannot score at all (non-retryable, raised by the client itself) stops the run at
   once; per-passage failures are counted and leave that passage where it was.
5. Outputs (every output positive's ``score`` is its cs, so ``positive_scores`` carry it):
   * ``clear_llm``: the argmax-cs candidate as the single positive (ties: the labelled
     positive first, then retrieval order); a promoted PFN leaves the negatives; the
     labelled positive is dropped, not turned into a negative.
   * ``clear_augment`` (Human+LLM): the labelled positive(s) plus the argmax-cs PFN when it
     beats them (the paper adds the LLM's argmax positive unless it is the human one).
   * ``clear_threshold``: the labelled positive(s) plus every PFN with cs > ``phi`` (0.3);
     a PFN at or below phi is "labelled negative" (paper eq. 8): it stays among the negatives
     if it was there, and a retrieved PFN that was not a negative is not added.
   Negatives' scores are set to None in these configs: a score column means confidence here.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from builders.annotate import Annotator, RetryPolicy
from builders.arhn import EXTRACT_VERSION, ArhnSettings, RetrieverCut, extract_request
from builders.confidence import ConfidenceError, answer_confidence
from builders.embedding import encode_unique, load_embedder, top_k_similar
from builders.endpoints.base import Backend, ScoreRequest
from builders.method import JudgeInfo, MethodResult
from builders.percpos import cutoff
from builders.rows import Passage, QueryRow, md5
from builders.snippets import check_snippets, parse_blocks
from builders.scoring import CannotScore, score_all
from builders.shorten import Fit, PromptFitter, too_long_message
from builders.store import Judgment, JudgmentStore

SCORE_VERSION = "clear-score-v1"
SCORE_SYSTEM = "You answer questions using only the document you are given."
SCORE_PROMPT = "Document:\n{document}\n\nQuestion: {query}\n\nAnswer the question with words from the document."
CONFIGS = ("clear_llm", "clear_augment", "clear_threshold")


class ClearError(RuntimeError):
    """CLEAR cannot go on (the judge cannot score continuations, bad corpus, ...)."""


@dataclass
class ClearSettings:
    retriever: str | None = None  # sentence-transformers id or path; None: bundled all-MiniLM-L6-v2
    corpus: str | None = None  # BEIR-style corpus.jsonl ({_id, title, text}); None: the rows' own passages
    top_n: int = 20  # passages retrieved per query
    tau: float = 0.95  # PFN: similarity > tau * s+
    phi: float = 0.3  # clear_threshold: PFNs with cs > phi become positives
    max_pfn: int | None = None  # score at most this many PFNs per query (most similar first); None: all
    answer_fields: tuple[str, ...] = ("answer", "answers")  # looked up in the row's `extra`
    extract_answers: bool = True  # no answer column: the judge copies one from the labelled positive
    extract_copy_sentences: bool = False  # constrain the copied answer to the passage's sentences (tiny judges)
    extract_temperature: float = 0.1
    extract_max_new_tokens: int = 256
    query_prefix: str = ""  # e.g. "query: " for E5 retrievers
    passage_prefix: str = ""  # e.g. "passage: "
    use_row_prompt: bool = False  # prepend the row's BGE instruction to the query
    retriever_max_length: int | None = None  # also the cut applied to passages shown to the judge
    batch_size: int = 64
    device: str | None = None
    never_edit_subsets: tuple[str, ...] = ("arguana",)  # counter-argument "positives" have no answer
    concurrency: int | None = None  # judge calls in flight; None: the backend's own
    max_attempts: int = 6  # per call, for retryable errors

    def __post_init__(self):
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"clear tau must be in (0, 1], got {self.tau}")
        if self.top_n < 1:
            raise ValueError(f"clear top_n must be >= 1, got {self.top_n}")
        # YAML gives lists (or one string): keep tuples
        self.answer_fields = (self.answer_fields,) if isinstance(self.answer_fields, str) else tuple(self.answer_fields)
        self.never_edit_subsets = ((self.never_edit_subsets,) if isinstance(self.never_edit_subsets, str)
                                   else tuple(self.never_edit_subsets))


@dataclass
class _Query:
    row: QueryRow
    pfns: list[tuple[Passage, float]]  # (passage, similarity), most similar first
    positive_similarity: float
    answer: str | None = None
    answer_source: str | None = None  # "dataset" | "extracted"
    confidence: dict[str, float] | None = None  # docid -> cs (scored passages only)


# ---------------------------------------------------------------- stage 1: candidates
def load_corpus(path: str) -> list[Passage]:
    passages = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                passages.append(Passage.from_text(doc["text"], title=doc.get("title") or ""))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ClearError(f"{path}, line {n}: not a BEIR corpus record {{_id, title, text}} ({error}); fix or remove the line") from error
    return list({p.docid: p for p in passages}.values())


def _query_text(row: QueryRow, s: ClearSettings) -> str:
    return s.query_prefix + ((row.prompt or "") if s.use_row_prompt else "") + row.query


def find_pfns(rows: list[QueryRow], s: ClearSettings, embedder=None, pool: list[Passage] | None = None
              ) -> list[tuple[float, list[tuple[Passage, float]]]]:
    """Per row (same order; every row must have a positive): (s+, PFNs most similar first)."""
    if not rows:
        return []
    if any(not r.positive_passages for r in rows):
        raise ValueError("find_pfns needs a labelled positive in every row")
    if pool is None:
        pool = load_corpus(s.corpus) if s.corpus else list({p.docid: p for r in rows for p in r.positive_passages + r.negative_passages}.values())
    embedder = embedder or load_embedder(s.retriever, device=s.device, max_length=s.retriever_max_length)
    text = lambda p: s.passage_prefix + p.full_text  # noqa: E731
    passages = encode_unique(embedder, [text(p) for p in pool] + [text(p) for r in rows for p in r.positive_passages],
                             batch_size=s.batch_size, desc="clear passages")
    queries = encode_unique(embedder, [_query_text(r, s) for r in rows], batch_size=s.batch_size, desc="clear queries")
    pool_matrix = passages.rows([text(p) for p in pool])
    max_positives = max(len(r.positive_passages) for r in rows)
    sims, idx = top_k_similar(queries.rows([_query_text(r, s) for r in rows]), pool_matrix, s.top_n + max_positives)
    out = []
    for i, row in enumerate(rows):
        q = queries.matrix[queries.index[_query_text(row, s)]]
        s_plus = min(float(q @ passages.matrix[passages.index[text(p)]]) for p in row.positive_passages)
        limit = cutoff(s_plus, s.tau)
        own = {p.docid for p in row.positive_passages}
        retrieved = [(pool[j], v) for v, j in zip(sims[i].tolist(), idx[i].tolist()) if pool[j].docid not in own][: s.top_n]
        out.append((s_plus, [(p, v) for p, v in retrieved if v > limit]))
    return out


# ---------------------------------------------------------------- stage 3: answers
def dataset_answer(row: QueryRow, fields: tuple[str, ...]) -> str | None:
    for name in fields:
        value = row.extra.get(name)
        if isinstance(value, (list, tuple)):
            value = next((v for v in value if isinstance(v, str) and v.strip()), None)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


async def _extract_answers(queries: list[_Query], s: ClearSettings, backend: Backend, store: JudgmentStore,
                     result: MethodResult, cut: RetrieverCut, progress: bool) -> None:
    """ARHN stage 1 on the labelled positive alone: its verified snippet is the answer."""
    arhn = ArhnSettings(retriever_tokenizer=s.retriever, retriever_max_length=s.retriever_max_length,
                        copy_sentences=s.extract_copy_sentences, temperature=s.extract_temperature,
                        extract_max_new_tokens=s.extract_max_new_tokens)
    key = {id(q): f"{q.row.query_id}:{q.row.positive_passages[0].docid}" for q in queries}  # same question, same answer
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
        _count_fit(result, subset, "answer", fit)
        if fit.texts is None:  # too long even cut to the floor: not sent, a failed judgment
            result.count(subset, "call_failures")
            result.judgments.append(_judgment_row(q, "clear/answer", backend, EXTRACT_VERSION,
                                                  _not_sent(key[id(q)], "clear/answer", backend, EXTRACT_VERSION, fit)))
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
        result.judgments.append(_judgment_row(q, "clear/answer", backend, EXTRACT_VERSION, outcome.judgment,
                                              snippet=checked.raw if checked else None,
                                              hallucinated=checked.hallucinated if checked else None))


# ---------------------------------------------------------------- stage 4: confidence
def score_request(query: str, document: str, answer: str) -> ScoreRequest:
    return ScoreRequest(
        messages=({"role": "system", "content": SCORE_SYSTEM},
                  {"role": "user", "content": SCORE_PROMPT.format(document=document, query=query)}),
        continuation=answer,
    )


async def _score(queries: list[_Query], s: ClearSettings, backend: Backend, store: JudgmentStore, result: MethodResult,
                 cut: RetrieverCut, progress: bool) -> None:
    items: dict[str, ScoreRequest] = {}
    owners: list[tuple[str, _Query, Passage, str]] = []
    documents: dict[str, tuple[str, str, str]] = {}  # key -> (query, document, answer)
    for q in queries:
        q.confidence = {}
        for p in list(q.row.positive_passages) + [p for p, _ in q.pfns]:
            key = f"{q.row.query_id}:{md5(q.answer)[:12]}:{p.docid}"  # identical requests are sent once
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
            _count_fit(result, q.row.subset, "score", fits[key])
        if fits[key].texts is None:  # too long even cut to the floor: not sent, a failed judgment
            result.count(q.row.subset, "score_failures")
            similarity = next((v for x, v in q.pfns if x.docid == p.docid), q.positive_similarity)
            result.judgments.append(_judgment_row(q, "clear/score", backend, SCORE_VERSION,
                                                  _not_sent(key, "clear/score", backend, SCORE_VERSION, fits[key]),
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
        result.judgments.append(_judgment_row(q, "clear/score", backend, SCORE_VERSION, outcome.judgment, docid=p.docid,
                                              role=role, confidence=cs, similarity=similarity))


# ---------------------------------------------------------------- stage 5: decisions
def decide(row: QueryRow, pfns: list[Passage], confidence: dict[str, float], phi: float) -> dict[str, QueryRow]:
    """The three CLEAR configs for one row; ``confidence`` has every positive's cs and the cs of
    the PFNs that were scored (an unscored PFN is left where it was)."""
    human = [replace(p, score=confidence[p.docid]) for p in row.positive_passages]
    scored = [replace(p, score=confidence[p.docid]) for p in pfns if p.docid in confidence]
    negatives = [replace(p, score=None) for p in row.negative_passages]

    def without(docids: set[str]) -> list[Passage]:
        return [p for p in negatives if p.docid not in docids]

    best = human[0]
    for p in human[1:] + scored:  # strict '>' keeps the earlier one on ties: labelled first, then retrieval order
        if p.score > best.score:
            best = p
    best_is_human = any(best.docid == h.docid for h in human)
    promoted = [p for p in scored if p.score > phi]
    return {
        "clear_llm": row.with_passages(positives=[best], negatives=without({best.docid})),
        "clear_augment": row.with_passages(positives=human if best_is_human else human + [best],
                                           negatives=without(set() if best_is_human else {best.docid})),
        "clear_threshold": row.with_passages(positives=human + promoted, negatives=without({p.docid for p in promoted})),
    }


def _judgment_row(q: _Query, stage: str, backend: Backend, version: str, judgment: Judgment, **fields) -> dict:
    return {
        "method": "clear", "query_id": q.row.query_id, "subset": q.row.subset, "stage": stage,
        "judge_model": backend.model_id, "prompt_version": version, "status": judgment.status,
        "raw_response": judgment.text if stage == "clear/answer" else None,
        "reason": judgment.error_message, "finish_reason": judgment.finish_reason,
        "prompt_tokens": judgment.prompt_tokens, "completion_tokens": judgment.completion_tokens,
        "attempts": judgment.attempts, "answer": q.answer, "answer_source": q.answer_source,
        "positive_similarity": q.positive_similarity, **fields,
    }


def _not_sent(key: str, stage: str, backend: Backend, version: str, fit: Fit) -> Judgment:
    """The failed judgment of a prompt ``builders.shorten`` could not fit (never sent, not stored)."""
    return Judgment(stage=stage, judge_model=backend.model_id, prompt_version=version, key=key, status="failed",
                    error_kind="validation", error_message=too_long_message(fit), attempts=0)


def _count_fit(result: MethodResult, subset: str, stage: str, fit: Fit) -> None:
    """``builders.shorten``'s counts for one prompt (only when it cut something or refused)."""
    if fit.shortened:
        result.count(subset, f"{stage}_prompts_shortened")
        result.count(subset, f"{stage}_prompt_tokens_removed", fit.tokens_removed)
    if fit.texts is None:
        result.count(subset, f"{stage}_prompts_too_long")


def _kind(backend: Backend) -> str:
    name = type(backend).__name__.lower()
    return next((k for k in ("tgi", "openai", "local") if k in name), name)


# ---------------------------------------------------------------- the method
def run(rows: list[QueryRow], settings: ClearSettings | None = None, *, backend: Backend, store: JudgmentStore | None = None,
        embedder=None, cut: RetrieverCut | None = None, pool: list[Passage] | None = None, progress: bool = True) -> MethodResult:
    """Run CLEAR over ``rows`` (from synchronous code; inside an event loop await ``run_async``)."""
    return asyncio.run(run_async(rows, settings, backend=backend, store=store, embedder=embedder, cut=cut, pool=pool,
                                 progress=progress))


async def run_async(rows: list[QueryRow], settings: ClearSettings | None = None, *, backend: Backend,
                    store: JudgmentStore | None = None, embedder=None, cut: RetrieverCut | None = None,
                    pool: list[Passage] | None = None, progress: bool = True) -> MethodResult:
    """Run CLEAR over ``rows``. ``embedder`` (a loaded SentenceTransformer), ``cut`` (what the
    judge sees of a passage) and ``pool`` (candidate passages) may be passed in to reuse them;
    ``store`` defaults to a throw-away file (no resume). All judge calls run in the caller's loop.
    ``result.ledgers`` has the run ledger of ``clear/answer`` (when answers were extracted) and
    ``clear/score``; ``progress``: tqdm bars for the judge stages."""
    s = settings or ClearSettings()
    result = MethodResult(name="clear", configs={name: [] for name in CONFIGS})
    queries = _prepare(rows, s, result, embedder, pool)
    cut = cut or RetrieverCut(s.retriever, s.retriever_max_length)
    needs_answer = [q for q in queries if q.answer is None] if s.extract_answers else []
    with tempfile.TemporaryDirectory(prefix="clear-store-") as scratch:
        own_store = store is None
        store = JudgmentStore(Path(scratch) / "judgments.sqlite") if own_store else store
        try:
            answered = await _judge(queries, needs_answer, s, backend, store, result, cut, progress)
        finally:
            if own_store:
                store.close()
    if needs_answer:
        result.judges.append(JudgeInfo("clear/answer", backend.model_id, EXTRACT_VERSION, _kind(backend)))
    result.judges.append(JudgeInfo("clear/score", backend.model_id, SCORE_VERSION, _kind(backend)))

    by_row = {id(q.row): q for q in answered}  # rows by identity: a query text may occur twice
    for q in queries:
        if q.answer is None:
            result.count(q.row.subset, "rows_without_answer")
    for row in rows:
        q = by_row.get(id(row))
        if q is not None and any(p.docid not in (q.confidence or {}) for p in row.positive_passages):
            result.count(row.subset, "rows_positive_unscored")
            q = None
        if q is None:  # not edited, no answer, or its positive could not be scored: as it is
            for name in CONFIGS:
                result.configs[name].append(row)
            continue
        out = decide(row, [p for p, _ in q.pfns], q.confidence, s.phi)
        for name in CONFIGS:
            result.configs[name].append(out[name])
        threshold = out["clear_threshold"]
        # plain counters describe clear_threshold (the multi-positive config the trainer's CMP loss uses)
        result.count(row.subset, "positives_added", len(threshold.positive_passages) - len(row.positive_passages))
        result.count(row.subset, "negatives_removed", len(row.negative_passages) - len(threshold.negative_passages))
        result.count(row.subset, "llm_positive_changed", int(out["clear_llm"].positive_passages[0].docid not in {p.docid for p in row.positive_passages}))
        result.count(row.subset, "augment_positives_added", len(out["clear_augment"].positive_passages) - len(row.positive_passages))
    for name, out_rows in result.configs.items():  # per-config sizes, as the card's technique table reads them
        for r in out_rows:
            result.count(r.subset, f"{name}:rows")
            result.count(r.subset, f"{name}:positives", len(r.positive_passages))
            result.count(r.subset, f"{name}:negatives", len(r.negative_passages))
    return result


async def _judge(queries: list[_Query], needs_answer: list[_Query], s: ClearSettings, backend: Backend,
                 store: JudgmentStore, result: MethodResult, cut: RetrieverCut, progress: bool) -> list[_Query]:
    if needs_answer:
        await _extract_answers(needs_answer, s, backend, store, result, cut, progress)
    answered = [q for q in queries if q.answer is not None]
    await _score(answered, s, backend, store, result, cut, progress)
    return answered


def _prepare(rows: list[QueryRow], s: ClearSettings, result: MethodResult, embedder, pool) -> list[_Query]:
    editable = []
    for row in rows:
        result.count(row.subset, "rows_in")
        result.count(row.subset, "positives_added", 0)
        result.count(row.subset, "negatives_removed", 0)
        subset = row.subset.lower()
        if not row.positive_passages or any(x.lower() in subset for x in s.never_edit_subsets):
            result.count(row.subset, "rows_not_edited")
        else:
            editable.append(row)
    found = find_pfns(editable, s, embedder, pool)
    queries = []
    for row, (s_plus, pfns) in zip(editable, found):
        if s.max_pfn is not None:
            pfns = pfns[: s.max_pfn]
        result.count(row.subset, "pfn_candidates", len(pfns))
        result.count(row.subset, "pfns_among_negatives", len({p.docid for p, _ in pfns} & {p.docid for p in row.negative_passages}))
        q = _Query(row, pfns, s_plus, answer=dataset_answer(row, s.answer_fields))
        if q.answer is not None:
            q.answer_source = "dataset"
            result.count(row.subset, "answers_from_dataset")
        queries.append(q)
    return queries
