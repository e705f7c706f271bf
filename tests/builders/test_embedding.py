"""Shared encoding helpers: each distinct text encoded once; chunked top-k equals one-shot top-k."""

import torch

from builders.embedding import encode_unique, top_k_similar


class CountingEmbedder:
    def __init__(self):
        self.seen = []

    def encode(self, texts, **kw):
        self.seen.extend(texts)
        assert kw["normalize_embeddings"] is True
        return torch.tensor([[float(len(t)), 1.0] for t in texts])

    def get_sentence_embedding_dimension(self):
        return 2


def test_each_text_is_encoded_once_with_its_prefix():
    embedder = CountingEmbedder()
    enc = encode_unique(embedder, ["a", "bb", "a", "bb", "ccc"], prefix="p: ")
    assert embedder.seen == ["p: a", "p: bb", "p: ccc"]
    assert enc.texts == ["a", "bb", "ccc"] and enc.index == {"a": 0, "bb": 1, "ccc": 2}
    assert torch.equal(enc.rows(["ccc", "a"]), torch.tensor([[6.0, 1.0], [4.0, 1.0]]))
    assert len(encode_unique(embedder, [])) == 0


def test_chunked_top_k_equals_one_shot():
    g = torch.Generator().manual_seed(0)
    queries, pool = torch.randn(7, 5, generator=g), torch.randn(23, 5, generator=g)
    scores, idx = top_k_similar(queries, pool, 4, query_chunk=3, pool_chunk=5)
    ref_s, ref_i = (queries @ pool.T).topk(4, dim=1)
    assert torch.equal(idx, ref_i) and torch.allclose(scores, ref_s)
    assert top_k_similar(queries, pool, 50)[1].shape == (7, 23)
