"""Equivalence: the narrowed fallback of regex-constrained decoding picks exactly the token a
scan of the whole vocabulary in score order picks (the algorithm before the narrowing)."""

import sys
from pathlib import Path

import pytest
import regex
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import build_tiny_model  # noqa: E402

from builders.judges.endpoints.constrained import (  # noqa: E402
    TokenTexts,
    _first_acceptable,
    candidate_scores,
    eos_ids,
    generate_with_regex,
    vocab_size,
)
from builders.methods.rlhn.verdict import verdict_regex  # noqa: E402

OLD_VERDICT = (r"<verdict><better>(None|Doc \([1-9]\)(, Doc \([1-9]\)){0,3})</better>"
               r"<worse>(None|Doc \([1-9]\)(, Doc \([1-9]\)){0,3})</worse></verdict>")


@torch.no_grad()
def full_scan_generate(model, tokenizer, input_ids, pattern, *, max_new_tokens, temperature, seed, vocab):
    """Reference: every step sorts the whole vocabulary (ties: lower id first) and takes the first acceptable."""
    compiled = regex.compile(pattern, regex.DOTALL)
    eos = eos_ids(model, tokenizer)
    generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
    generated, text, past, step_input = [], "", None, input_ids
    for _ in range(max_new_tokens):
        out = model(input_ids=step_input, past_key_values=past, use_cache=True)
        past = out.past_key_values
        scores = candidate_scores(out.logits[0, -1].float()[: len(vocab.texts)], temperature, generator)
        order = torch.sort(scores, descending=True, stable=True).indices.tolist()
        chosen = _first_acceptable(order, compiled, text, compiled.fullmatch(text) is not None, vocab, eos)
        if chosen is None or chosen == -1:
            return generated, text, "eos_token" if chosen == -1 else "no_valid_token"
        generated.append(chosen)
        text += vocab.texts[chosen]
        step_input = torch.tensor([[chosen]])
    return generated, text, "length"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-narrowing"), seed=5)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer, TokenTexts(tokenizer, vocab_size(model, tokenizer))


PATTERNS = [OLD_VERDICT, verdict_regex(3, 48), verdict_regex(9, 12), r"(Yes|No)", r"[0-9]{1,3}\.[0-9]", r"Doc \(7\)"]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("temperature, seed", [(0.0, 0), (1.0, 4)])
def test_narrowed_fallback_equals_a_full_vocabulary_scan(tiny, pattern, temperature, seed):
    model, tokenizer, vocab = tiny
    input_ids = tokenizer("<|im_start|>user\nJudge Doc (1).<|im_end|>\n<|im_start|>assistant\n",
                          add_special_tokens=False, return_tensors="pt").input_ids
    # first_look=2 sends nearly every step to the narrowed fallback (a random model rarely ranks a fitting token first)
    fast = generate_with_regex(model, tokenizer, input_ids, pattern, max_new_tokens=60, temperature=temperature,
                               seed=seed, vocab=vocab, first_look=2)
    ids, text, finish = full_scan_generate(model, tokenizer, input_ids, pattern, max_new_tokens=60,
                                           temperature=temperature, seed=seed, vocab=vocab)
    assert (fast.token_ids, fast.text, fast.finish_reason) == (ids, text, finish)
    assert regex.fullmatch(pattern, fast.text, partial=True, flags=regex.DOTALL)


def test_tokens_are_indexed_by_first_character(tiny):
    _, _, vocab = tiny
    indexed = sorted(i for ids in vocab.by_first_char.values() for i in ids.tolist())
    assert indexed == [i for i, t in enumerate(vocab.texts) if t and not vocab.special[i]]
    assert all(vocab.texts[i][0] == char for char, ids in vocab.by_first_char.items() for i in ids.tolist())
