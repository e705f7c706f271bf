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
   labelled positive with ARHN's stage-1 extraction (``builders.methods.arhn.stages.extract_request``, the
   snippet verified against the passage; a hallucinated or NO_ANSWER snippet means no answer).
   A row without an answer is left as it is and counted (``rows_without_answer``).
4. Confidence. For the positive(s) and every PFN, the judge's log-probabilities of the answer
   written after (query, passage) give ``cs = 1 - sqrt(mean_h (1 - p_h)^2)`` over the answer
   tokens (``builders.methods.clear.confidence``, tokens chosen by character offsets). ``Backend.score``
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

Code (this folder): stages 1-2 in ``pool``, 3 in ``answers``, 4 in ``scores`` (with ``confidence``),
5 in ``decide``; settings and per-query state in ``settings``, judgment rows in ``records``; this
module runs them (its public names re-export theirs).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from builders.judges.endpoints.base import Backend
from builders.judges.store import JudgmentStore
from builders.methods.arhn.stages import EXTRACT_VERSION, RetrieverCut
from builders.methods.base import JudgeInfo, MethodResult, judge_kind, never_edits
from builders.methods.clear.answers import dataset_answer, extract_answers
from builders.methods.clear.decide import decide
from builders.methods.clear.pool import find_pfns, load_corpus
from builders.methods.clear.scores import SCORE_PROMPT, SCORE_SYSTEM, SCORE_VERSION, score_passages, score_request
from builders.methods.clear.settings import ClearError, ClearQuery, ClearSettings
from builders.rows import Passage, QueryRow

CONFIGS = ("clear_llm", "clear_augment", "clear_threshold")
__all__ = ["CONFIGS", "SCORE_PROMPT", "SCORE_SYSTEM", "SCORE_VERSION", "ClearError", "ClearSettings", "dataset_answer",
           "decide", "editable_row", "find_pfns", "load_corpus", "prepare_queries", "run", "run_async", "score_request"]


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
    queries = prepare_queries(rows, s, result, embedder, pool)
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
        result.judges.append(JudgeInfo("clear/answer", backend.model_id, EXTRACT_VERSION, judge_kind(backend)))
    result.judges.append(JudgeInfo("clear/score", backend.model_id, SCORE_VERSION, judge_kind(backend)))

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


async def _judge(queries: list[ClearQuery], needs_answer: list[ClearQuery], s: ClearSettings, backend: Backend,
                 store: JudgmentStore, result: MethodResult, cut: RetrieverCut, progress: bool) -> list[ClearQuery]:
    if needs_answer:
        await extract_answers(needs_answer, s, backend, store, result, cut, progress)
    answered = [q for q in queries if q.answer is not None]
    await score_passages(answered, s, backend, store, result, cut, progress)
    return answered


def editable_row(row: QueryRow, s: ClearSettings) -> bool:
    """CLEAR edits a row with a labelled positive outside ``never_edit_subsets``."""
    return bool(row.positive_passages) and not never_edits(row.subset, s.never_edit_subsets)


def prepare_queries(rows: list[QueryRow], s: ClearSettings, result: MethodResult, embedder=None, pool=None) -> list[ClearQuery]:
    """The editable rows with their PFNs (the retrieval) and dataset answers; counts into ``result``."""
    editable = []
    for row in rows:
        result.count(row.subset, "rows_in")
        result.count(row.subset, "positives_added", 0)
        result.count(row.subset, "negatives_removed", 0)
        if not editable_row(row, s):
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
        q = ClearQuery(row, pfns, s_plus, answer=dataset_answer(row, s.answer_fields))
        if q.answer is not None:
            q.answer_source = "dataset"
            result.count(row.subset, "answers_from_dataset")
        queries.append(q)
    return queries
