"""Evaluate embedders and rerankers on a BEIR-format folder.

A BEIR folder holds ``corpus.jsonl`` (``_id, title, text``), ``queries.jsonl`` (``_id, text``)
and ``qrels/<split>.tsv`` (``query-id  corpus-id  score`` with a header line). Only queries
that have qrels are evaluated (BEIR's convention).

Embedders: exact search over the corpus in chunks, keeping a running top-k per query, so
memory is bounded by ``queries x (top_k + chunk)`` scores rather than ``queries x corpus``.
Queries and documents go through ``encode_query`` / ``encode_document`` so the prompts and
similarity saved with the model are used, never re-guessed here.

Rerankers: rescore a first-stage top-k (from an embedder) and rank by the new scores.

Metrics (graded qrels, linear gains as in trec_eval/BEIR; ``--binary`` counts every grade > 0 as 1):
  nDCG@k  = DCG@k / IDCG@k with DCG = sum rel_i / log2(i + 1) over ranks i = 1..k,
            IDCG from the judged relevances sorted descending;
  Recall@k = |relevant in top k| / |relevant| (relevant = score > 0);
  MRR@10  = 1 / rank of the first relevant document within the top 10 (0 if none).

CLI: ``python -m trainers.evaluate --model PATH --beir DIR [--reranker PATH --first-stage PATH
--top-k 100]`` prints a table and the JSON of the metrics.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

DEFAULT_K_VALUES = (1, 5, 10, 100)


class BeirFormatError(ValueError):
    """A BEIR folder is missing a file or has a malformed line."""


@dataclass
class BeirData:
    corpus_ids: list[str]
    corpus_texts: list[str]  # title folded into text, BEIR's way
    queries: dict[str, str]  # only queries that have qrels
    qrels: dict[str, dict[str, int]]


def _read_jsonl(path: Path, required: Sequence[str]) -> list[dict]:
    if not path.is_file():
        raise BeirFormatError(f"{path} is missing: a BEIR folder needs corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BeirFormatError(f"{path}:{n}: not valid JSON ({e}); fix or remove the line") from e
            missing = [k for k in required if k not in row]
            if missing:
                raise BeirFormatError(f"{path}:{n}: missing field(s) {missing}; BEIR rows need {list(required)}")
            rows.append(row)
    return rows


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise BeirFormatError(f"{path} is missing; pass --split with a file that exists under qrels/")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if n == 1 and parts and parts[0] == "query-id":
                continue  # header
            if not line.strip():
                continue
            if len(parts) != 3:
                raise BeirFormatError(f"{path}:{n}: expected 3 tab-separated fields (query-id, corpus-id, score)")
            try:
                score = int(parts[2])
            except ValueError as e:
                raise BeirFormatError(f"{path}:{n}: score {parts[2]!r} is not an integer") from e
            qrels.setdefault(parts[0], {})[parts[1]] = score
    return qrels


def load_beir(beir_dir: str | Path, split: str = "test") -> BeirData:
    beir_dir = Path(beir_dir)
    corpus = _read_jsonl(beir_dir / "corpus.jsonl", ("_id", "text"))
    queries = {str(q["_id"]): q["text"] for q in _read_jsonl(beir_dir / "queries.jsonl", ("_id", "text"))}
    qrels = read_qrels(beir_dir / "qrels" / f"{split}.tsv")
    unknown = sorted(q for q in qrels if q not in queries)
    if unknown:
        raise BeirFormatError(f"{beir_dir}: qrels/{split}.tsv names queries not in queries.jsonl: {unknown[:5]}")
    return BeirData(
        corpus_ids=[str(d["_id"]) for d in corpus],
        corpus_texts=[f"{d.get('title') or ''} {d['text']}".strip() for d in corpus],
        queries={q: queries[q] for q in queries if q in qrels},
        qrels=qrels,
    )


# ---------------------------------------------------------------- metrics
def ndcg_at_k(ranked: Sequence[str], rels: dict[str, int], k: int, binary: bool = False) -> float:
    """Graded (linear) gains by default; ``binary``: every grade > 0 counts as gain 1."""
    if binary:
        rels = {d: 1 for d, r in rels.items() if r > 0}
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if rels.get(d, 0) > 0)
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], rels: dict[str, int], k: int) -> float:
    relevant = {d for d, r in rels.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mrr_at_k(ranked: Sequence[str], rels: dict[str, int], k: int = 10) -> float:
    for i, d in enumerate(ranked[:k]):
        if rels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def query_metrics(ranked: Sequence[str], rels: dict[str, int], k_values: Sequence[int] = DEFAULT_K_VALUES,
                  binary: bool = False) -> dict[str, float]:
    """nDCG@10, MRR@10 and Recall@k of one query's ranking."""
    out = {"ndcg@10": ndcg_at_k(ranked, rels, 10, binary), "mrr@10": mrr_at_k(ranked, rels, 10)}
    out.update({f"recall@{k}": recall_at_k(ranked, rels, k) for k in k_values})
    return out


def compute_metrics(
    run: dict[str, list[str]], qrels: dict[str, dict[str, int]], k_values: Sequence[int] = DEFAULT_K_VALUES,
    binary: bool = False, per_query: dict | None = None,
) -> dict[str, float]:
    """Mean metrics over the queries of ``qrels``; a query absent from ``run`` scores 0.

    ``binary``: nDCG with gain 1 for every grade > 0 (what tools that read qrels as a set of relevant
    documents report, e.g. sentence-transformers' InformationRetrievalEvaluator); graded by default.
    ``per_query``: a dict that receives each query's metrics (``{qid: {metric: value}}``), for paired tests.
    """
    names = ["ndcg@10", "mrr@10"] + [f"recall@{k}" for k in k_values]
    sums = dict.fromkeys(names, 0.0)
    for qid, rels in qrels.items():
        one = query_metrics(run.get(qid, []), rels, k_values, binary)
        if per_query is not None:
            per_query[qid] = {name: round(one[name], 6) for name in names}
        for name in names:
            sums[name] += one[name]
    n = max(len(qrels), 1)
    return {name: round(total / n, 6) for name, total in sums.items()}


def write_per_query(path: str | Path, per_query: dict, split: str, beir_dir: str | Path) -> Path:
    """``{"beir": ..., "split": ..., "queries": {qid: {metric: value}}}`` (what ``--per-query-out`` writes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"beir": str(beir_dir), "split": split, "queries": per_query}) + "\n")
    return path


# ---------------------------------------------------------------- retrieval
def _as_sentence_transformer(model_or_path):
    """A folder/id is loaded with SentenceTransformer; a loaded model (anything with ``encode_query``,
    ``encode_document`` and ``similarity``) is used as it is."""
    if not isinstance(model_or_path, (str, Path)):
        return model_or_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_or_path), device="cpu" if not torch.cuda.is_available() else None)


def exact_search(
    model,
    data: BeirData,
    top_k: int,
    batch_size: int = 64,
    chunk_size: int = 2048,
    show_progress: bool = True,
) -> dict[str, list[tuple[str, float]]]:
    """Top-k documents per query by the model's own similarity, corpus encoded chunk by chunk."""
    qids = list(data.queries)
    q_emb = model.encode_query(
        [data.queries[q] for q in qids], batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False
    )
    k = min(top_k, len(data.corpus_ids))
    best_scores = torch.full((len(qids), 0), float("-inf"))
    best_idx = torch.zeros((len(qids), 0), dtype=torch.long)
    starts = range(0, len(data.corpus_ids), chunk_size)
    for start in tqdm(starts, desc="corpus chunks", disable=not show_progress):
        texts = data.corpus_texts[start : start + chunk_size]
        d_emb = model.encode_document(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
        scores = model.similarity(q_emb, d_emb).float().cpu()
        idx = torch.arange(start, start + len(texts)).expand(len(qids), -1)
        all_scores = torch.cat([best_scores, scores], dim=1)
        all_idx = torch.cat([best_idx, idx], dim=1)
        keep = min(k, all_scores.shape[1])
        best_scores, pos = torch.topk(all_scores, keep, dim=1)  # ties: torch order, deterministic on CPU
        best_idx = torch.gather(all_idx, 1, pos)
    return {
        qid: [(data.corpus_ids[i], s) for i, s in zip(best_idx[row].tolist(), best_scores[row].tolist())]
        for row, qid in enumerate(qids)
    }


def _ranked_ids(results: dict[str, list[tuple[str, float]]]) -> dict[str, list[str]]:
    return {q: [d for d, _ in sorted(hits, key=lambda h: -h[1])] for q, hits in results.items()}


def evaluate_embedder(
    model_or_path,
    beir_dir: str | Path,
    split: str = "test",
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    batch_size: int = 64,
    chunk_size: int = 2048,
    show_progress: bool = True,
    binary: bool = False,
    per_query_out: str | Path | None = None,
) -> dict[str, float]:
    """nDCG@10, MRR@10 and Recall@k of a SentenceTransformer (or its saved folder) on a BEIR folder;
    ``per_query_out``: also write each query's metrics there (:func:`write_per_query`)."""
    model = _as_sentence_transformer(model_or_path)
    data = load_beir(beir_dir, split)
    results = exact_search(model, data, max(k_values), batch_size, chunk_size, show_progress)
    per_query: dict | None = {} if per_query_out else None
    metrics = compute_metrics(_ranked_ids(results), data.qrels, k_values, binary, per_query)
    if per_query_out:
        write_per_query(per_query_out, per_query, split, beir_dir)
    return metrics


def rerank(
    score_pairs: Callable[[list[tuple[str, str]]], Sequence[float]],
    data: BeirData,
    first_stage: dict[str, list[tuple[str, float]]],
    show_progress: bool = True,
) -> dict[str, list[tuple[str, float]]]:
    """Rescore each query's first-stage hits with ``score_pairs([(query, doc_text), ...])``."""
    text_of = dict(zip(data.corpus_ids, data.corpus_texts))
    out = {}
    for qid, hits in tqdm(first_stage.items(), desc="reranking", disable=not show_progress):
        pairs = [(data.queries[qid], text_of[d]) for d, _ in hits]
        scores = [float(s) for s in score_pairs(pairs)]
        if len(scores) != len(pairs):
            raise RuntimeError(f"reranker returned {len(scores)} scores for {len(pairs)} pairs (query {qid})")
        out[qid] = [(d, s) for (d, _), s in zip(hits, scores)]
    return out


def evaluate_reranker(
    reranker,
    beir_dir: str | Path,
    first_stage,
    top_k: int = 100,
    split: str = "test",
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    batch_size: int = 32,
    show_progress: bool = True,
    binary: bool = False,
) -> dict[str, dict[str, float]]:
    """Metrics of the first stage alone and after reranking its top-k.

    ``reranker`` is a saved reranker folder (loaded with ``trainers.reranker.model.load_reranker``, which
    reads the saved head contract) or any object with ``predict(pairs, batch_size=...)``;
    ``first_stage`` is a SentenceTransformer or its folder. Recall@k for k > top_k cannot exceed
    the first stage's.
    """
    from trainers.reranker.model import load_reranker

    scorer = load_reranker(reranker) if isinstance(reranker, (str, Path)) else reranker
    model = _as_sentence_transformer(first_stage)
    data = load_beir(beir_dir, split)
    first = exact_search(model, data, top_k, show_progress=show_progress)
    reranked = rerank(lambda pairs: scorer.predict(pairs, batch_size=batch_size), data, first, show_progress)
    return {
        "first_stage": compute_metrics(_ranked_ids(first), data.qrels, k_values, binary),
        "reranked": compute_metrics(_ranked_ids(reranked), data.qrels, k_values, binary),
    }


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per evaluated system, one column per metric."""
    names = list(next(iter(results.values())))
    lines = ["| system | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for system, metrics in results.items():
        lines.append(f"| {system} | " + " | ".join(f"{metrics[n]:.4f}" for n in names) + " |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainers.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="embedder folder (SentenceTransformer); the first stage when --reranker is set")
    p.add_argument("--beir", required=True, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    p.add_argument("--split", default="test")
    p.add_argument("--reranker", help="reranker folder to rescore the first-stage top-k")
    p.add_argument("--first-stage", help="first-stage embedder for --reranker (default: --model)")
    p.add_argument("--top-k", type=int, default=100, help="first-stage depth reranked")
    p.add_argument("--k-values", default=",".join(map(str, DEFAULT_K_VALUES)), help="Recall@k cut-offs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--binary", action="store_true", help="nDCG with gain 1 for any grade > 0 (default: graded)")
    p.add_argument("--json-out", help="also write the metrics JSON here")
    p.add_argument("--per-query-out", help="also write each query's metrics here (embedder; for paired tests)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    k_values = tuple(int(k) for k in args.k_values.split(","))
    if args.reranker:
        first_stage = args.first_stage or args.model
        if not first_stage:
            p.error("--reranker needs --first-stage (or --model) for the candidates it rescored")
        results = evaluate_reranker(
            args.reranker, args.beir, first_stage, args.top_k, args.split, k_values, args.batch_size, binary=args.binary
        )
    elif args.model:
        results = {"embedder": evaluate_embedder(args.model, args.beir, args.split, k_values, args.batch_size,
                                                 binary=args.binary, per_query_out=args.per_query_out)}
    else:
        p.error("give --model (embedder) and/or --reranker")
    print(format_table(results))
    print(json.dumps(results, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
