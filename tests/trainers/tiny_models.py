"""Tiny random encoders and batches for equivalence tests (no tokenizer, no download)."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertModel

from trainers.embedder import Embedder


def tiny_bert_embedder(seed: int = 0, dropout: float = 0.1, pooling: str = "mean") -> Embedder:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    return Embedder(BertModel(config), tokenizer=None, pooling=pooling, normalize=True)


def random_features(n: int, length: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    lengths = torch.randint(2, length + 1, (n,), generator=gen)
    for i, k in enumerate(lengths.tolist()):
        mask[i, k:] = 0
        ids[i, k:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def random_batch(queries: int, slots: int, seed: int, drop_slots: tuple[int, ...] = ()) -> dict:
    """A collated-like batch: 1 positive + (slots-1) negatives per query, some slots empty."""
    slot_mask = torch.ones(queries * slots, dtype=torch.bool)
    for s in drop_slots:
        slot_mask[s] = False
    slot_index = torch.nonzero(slot_mask).flatten()
    return {
        "query": random_features(queries, 8, seed),
        "passage": random_features(len(slot_index), 12, seed + 1),
        "slot_index": slot_index,
        "slot_mask": slot_mask,
        "pos_mask": torch.ones(queries, 1, dtype=torch.bool),
        "pos_scores": torch.zeros(queries, 1),
    }
