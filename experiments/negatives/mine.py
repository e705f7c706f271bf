"""BGE-style hard-negative mining of the train queries, and the known false negatives it leaves.

For each train query the bundled all-MiniLM-L6-v2 ranks the whole corpus; the query's negatives are its
``negatives`` highest-ranked documents that are not among its *labelled* positives (FlagEmbedding's
``hn_mine``: top-k minus the positives; no skipped head, so that what the retriever ranks highest is what
the judges see).

To get false negatives the way real mined sets get them (a relevant passage that nobody labelled), a query
with two or more labelled positives keeps one of them, picked by a seeded draw, as its positive; the others
are *held out* (treated as unlabelled). SciFact labels one abstract for most claims (733 of 809 train
queries), so few are held out; NFCorpus labels ~43 per train query, so most of them are. Held-out documents that the mining puts
among the negatives are the **known false negatives** (:func:`known_false_negatives`); held-out documents
ranked below the mined negatives are simply absent from the row.

Rows are written in the Tevatron layout with the dataset's document ids as ``docid`` and ``query_id`` =
``<dataset>-<id>``; the known labels as the TSV ``builders.agreement --human`` reads (every mined negative of
every row: 1 = known false negative, 0 = not).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from experiments.negatives.datasets import qid_key, qrels_path, read_jsonl, read_qrels


@dataclass
class MinedRow:
    query_id: str
    query: str
    positives: list[str]  # docids kept as labelled positives
    held_out: list[str]  # labelled relevant docids treated as unlabelled
    negatives: list[str]  # mined docids, best-ranked first

    @property
    def false_negatives(self) -> list[str]:
        return known_false_negatives(self.negatives, self.positives + self.held_out)


def known_false_negatives(negatives: list[str], relevant: list[str] | set[str]) -> list[str]:
    """The mined negatives that the qrels label relevant, in the negatives' order."""
    relevant = set(relevant)
    return [d for d in negatives if d in relevant]


def split_positives(qid: str, relevant: list[str], seed: int) -> tuple[list[str], list[str]]:
    """(kept, held_out): one labelled positive kept per query, the rest held out (seeded per query)."""
    ordered = sorted(relevant)
    if len(ordered) < 2:
        return ordered, []
    keep = random.Random(f"{seed}:{qid}").choice(ordered)
    return [keep], [d for d in ordered if d != keep]


def mine_from_ranking(qid: str, query: str, ranked: list[str], relevant: list[str], negatives: int,
                      seed: int) -> MinedRow:
    """One row from a query's ranked docids: top ``negatives`` minus the kept positives."""
    kept, held_out = split_positives(qid, relevant, seed)
    negs = [d for d in ranked if d not in kept][:negatives]
    return MinedRow(qid, query, kept, held_out, negs)


def rank_corpus(beir: Path, query_ids: list[str], queries: dict[str, str], depth: int, max_length: int,
                batch_size: int = 64) -> dict[str, list[str]]:
    """Top ``depth`` corpus docids per query by the bundled MiniLM (cosine similarity)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from builders.embedding import default_model_path

    corpus = read_jsonl(beir / "corpus.jsonl")
    model = SentenceTransformer(default_model_path(), device="cpu")
    model.max_seq_length = max_length
    doc_ids = [str(d["_id"]) for d in corpus]
    d_emb = model.encode([f"{d.get('title') or ''} {d['text']}".strip() for d in corpus], batch_size=batch_size,
                         convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
    q_emb = model.encode([queries[q] for q in query_ids], batch_size=batch_size, convert_to_tensor=True,
                         normalize_embeddings=True, show_progress_bar=False)
    top = torch.topk(q_emb @ d_emb.T, min(depth, len(doc_ids)), dim=1).indices.tolist()
    return {q: [doc_ids[i] for i in row] for q, row in zip(query_ids, top)}


def mine(beir: Path, negatives: int, seed: int, max_length: int, limit: int | None = None) -> list[MinedRow]:
    """Every train query's row (``limit``: the first ones in id order), in id order."""
    qrels = read_qrels(qrels_path(beir, "train"))
    queries = {str(q["_id"]): q["text"] for q in read_jsonl(beir / "queries.jsonl")}
    qids = sorted(qrels, key=qid_key)[:limit] if limit else sorted(qrels, key=qid_key)
    depth = negatives + 1  # at most one positive is kept, and only kept positives are skipped
    ranking = rank_corpus(beir, qids, queries, depth, max_length)
    return [mine_from_ranking(q, queries[q], ranking[q], [d for d, s in qrels[q].items() if s > 0], negatives, seed)
            for q in qids]


def passage(doc: dict) -> dict:
    return {"docid": str(doc["_id"]), "title": doc.get("title") or "", "text": doc["text"]}


def tevatron_row(row: MinedRow, docs: dict[str, dict], prefix: str, positives: list[str] | None = None,
                 negatives: list[str] | None = None) -> dict:
    pos = row.positives if positives is None else positives
    neg = row.negatives if negatives is None else negatives
    return {"query_id": f"{prefix}-{row.query_id}", "query": row.query, "subset": prefix,
            "positive_passages": [passage(docs[d]) for d in pos], "negative_passages": [passage(docs[d]) for d in neg]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def write_labels(path: Path, rows: list[MinedRow], prefix: str) -> Path:
    """Every mined negative of ``rows`` with its known label, as ``builders.agreement --human`` reads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["query_id\tdocid\tlabel"]
    for r in rows:
        fns = set(r.false_negatives)
        lines += [f"{prefix}-{r.query_id}\t{d}\t{int(d in fns)}" for d in r.negatives]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
