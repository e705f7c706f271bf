"""CLEAR stage 1: candidate passages from a pool and the potential false negatives among them
(``builders.methods.clear.stages``'s docstring has the rule)."""

from __future__ import annotations

import json

from builders.embedding import encode_unique, load_embedder, top_k_similar
from builders.methods.clear.settings import ClearError, ClearSettings
from builders.methods.percpos.teacher_filter import cutoff
from builders.rows import Passage, QueryRow


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


def query_text(row: QueryRow, s: ClearSettings) -> str:
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
    queries = encode_unique(embedder, [query_text(r, s) for r in rows], batch_size=s.batch_size, desc="clear queries")
    pool_matrix = passages.rows([text(p) for p in pool])
    max_positives = max(len(r.positive_passages) for r in rows)
    sims, idx = top_k_similar(queries.rows([query_text(r, s) for r in rows]), pool_matrix, s.top_n + max_positives)
    out = []
    for i, row in enumerate(rows):
        q = queries.matrix[queries.index[query_text(row, s)]]
        s_plus = min(float(q @ passages.matrix[passages.index[text(p)]]) for p in row.positive_passages)
        limit = cutoff(s_plus, s.tau)
        own = {p.docid for p in row.positive_passages}
        retrieved = [(pool[j], v) for v, j in zip(sims[i].tolist(), idx[i].tolist()) if pool[j].docid not in own][: s.top_n]
        out.append((s_plus, [(p, v) for p, v in retrieved if v > limit]))
    return out

