"""A tiny random Qwen2 causal LM with a real BPE tokenizer, saved as an HF folder (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rlhn" / "fiqa.stage_1.gpt-4o-mini.jsonl"


def _training_text() -> list[str]:
    texts = []
    for line in FIXTURE.read_text().splitlines()[:10]:
        row = json.loads(line)
        texts.append(row["query"])
        texts += [p["text"][:400] for p in row["positive_passages"] + row["negative_passages"][:3]]
    # make " yes" and " no" single tokens, as in real LLM vocabularies
    texts += ["Is the document relevant to the query? Answer yes or no.\nAnswer: yes", "Answer: no"] * 50
    return texts


def build_tiny_qwen2(out: Path, seed: int = 0) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_training_text(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out
