"""Tiny random encoders and batches for equivalence tests (no tokenizer, no download)."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertModel

from trainers.embedder.model import Embedder


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


def save_tiny_qwen2(path, texts: list[str]) -> str:
    """A ~100K-parameter random Qwen2 with a byte-level BPE trained on ``texts``, saved to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Config, Qwen2Model, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = Qwen2Tokenizer(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    Qwen2Model(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
