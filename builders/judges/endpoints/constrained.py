"""Regex-constrained generation for in-process models (``Constraint(kind="regex")``).

At each step the candidates are taken in score order and the first whose text keeps the
output a partial match of the regex (``regex``'s ``partial=True``) is emitted; an EOS token
is acceptable only when the output is a FULL match. Scores are the logits (greedy) or, when
sampling, ``logits / temperature + Gumbel noise``: the arg-max of Gumbel-perturbed logits is an
exact sample from ``softmax(logits / temperature)``, so "first acceptable in perturbed order"
is an exact sample from the distribution restricted to acceptable tokens (the Gumbel-max trick).

Cost per step: one forward pass with the KV cache, a top-k of the scores and regex checks
until the first acceptable candidate (usually among the first few). When none of the top-k
fits, the rest of the vocabulary is narrowed before any sort: a token can only fit if the
output followed by its FIRST character is still a partial match (a string that cannot be
extended to a match cannot be extended by more characters either), so the regex is tried
once per distinct first character, and only the tokens starting with an allowed character
are sorted and checked, in score order (ties: lower id first). The result is the same token
as scanning the whole vocabulary in score order.
"""

from __future__ import annotations

from dataclasses import dataclass

import regex
import torch


@dataclass
class ConstrainedOutput:
    text: str
    token_ids: list[int]
    finish_reason: str  # "eos_token" | "length" | "no_valid_token"


class TokenTexts:
    """Each vocabulary id's text as the decoder writes it (computed once per tokenizer)."""

    def __init__(self, tokenizer, vocab_size: int):
        self.texts = [tokenizer.decode([i]) for i in range(vocab_size)]
        special = set(tokenizer.all_special_ids)
        self.special = [i in special for i in range(vocab_size)]
        groups: dict[str, list[int]] = {}
        for i, token_text in enumerate(self.texts):
            if token_text and not self.special[i]:
                groups.setdefault(token_text[0], []).append(i)
        # ids of the non-special, non-empty tokens, grouped by their text's first character
        self.by_first_char = {char: torch.tensor(ids, dtype=torch.long) for char, ids in groups.items()}


def eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    configured = model.generation_config.eos_token_id if model.generation_config is not None else None
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(value)
    return ids


def vocab_size(model, tokenizer) -> int:
    """Ids the model scores that the tokenizer can decode."""
    return min(model.get_output_embeddings().weight.shape[0], len(tokenizer))


def candidate_scores(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """The order candidates are tried in: the logits (greedy), or ``logits / temperature``
    plus Gumbel noise (sampling). Taking the first acceptable candidate in this order samples
    exactly from ``softmax(logits / temperature)`` restricted to the acceptable tokens."""
    if generator is None or temperature <= 0:
        return logits
    uniform = torch.rand(logits.shape, generator=generator).clamp_(1e-20, 1.0)
    return logits / temperature - torch.log(-torch.log(uniform))


_END = -1  # "the first acceptable candidate is EOS"


def _first_acceptable(candidates: list[int], compiled, text: str, full_match: bool, vocab: TokenTexts, eos: set[int]) -> int | None:
    for candidate in candidates:
        if candidate in eos:
            if full_match:
                return _END
            continue
        if vocab.special[candidate] or not vocab.texts[candidate]:
            continue
        if compiled.fullmatch(text + vocab.texts[candidate], partial=True):
            return candidate
    return None


def _narrowed_order(scores: torch.Tensor, compiled, text: str, full_match: bool, vocab: TokenTexts,
                    eos: set[int], skip: list[int]) -> list[int]:
    """The candidates that can be acceptable, minus ``skip`` (already tried), best score first.

    Exact: a token whose first character already breaks the partial match cannot fit, EOS is
    kept only when the output is a full match, and specials / empty texts never fit."""
    allowed = [ids for char, ids in vocab.by_first_char.items() if compiled.fullmatch(text + char, partial=True)]
    if full_match:
        allowed.append(torch.tensor(sorted(i for i in eos if i < len(vocab.texts)), dtype=torch.long))
    if not allowed:
        return []
    ids = torch.unique(torch.cat(allowed))  # sorted ascending: ties below go to the lower id
    if skip:
        ids = ids[~torch.isin(ids, torch.tensor(skip, dtype=torch.long))]
    order = torch.sort(scores[ids], descending=True, stable=True).indices
    return ids[order].tolist()


@torch.no_grad()
def generate_with_regex(
    model,
    tokenizer,
    input_ids: torch.Tensor,
    pattern: str,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int | None = 0,
    vocab: TokenTexts | None = None,
    first_look: int = 64,
) -> ConstrainedOutput:
    """Generate from ``input_ids`` (shape ``[1, n]``) so the text fully matches ``pattern``
    when it ends on EOS. ``temperature <= 0``: greedy; otherwise seeded constrained sampling.
    ``vocab``: the tokenizer's ``TokenTexts`` (pass it to reuse it across calls).
    ``first_look``: candidates scanned from a top-k before falling back to a full sort."""
    compiled = regex.compile(pattern, regex.DOTALL)
    if vocab is None:
        vocab = TokenTexts(tokenizer, vocab_size(model, tokenizer))
    eos = eos_ids(model, tokenizer)
    generator = None
    if temperature > 0:
        generator = torch.Generator(device="cpu").manual_seed(seed if seed is not None else 0)

    generated: list[int] = []
    text = ""
    past = None
    step_input = input_ids
    for _ in range(max_new_tokens):
        out = model(input_ids=step_input, past_key_values=past, use_cache=True)
        past = out.past_key_values
        scores = candidate_scores(out.logits[0, -1].float().cpu()[: len(vocab.texts)], temperature, generator)
        full_match = compiled.fullmatch(text) is not None
        top = torch.topk(scores, min(first_look, scores.shape[0])).indices.tolist()
        chosen = _first_acceptable(top, compiled, text, full_match, vocab, eos)
        if chosen is None and len(top) < scores.shape[0]:
            rest = _narrowed_order(scores, compiled, text, full_match, vocab, eos, top)
            chosen = _first_acceptable(rest, compiled, text, full_match, vocab, eos)
        if chosen == _END:
            return ConstrainedOutput(text, generated, "eos_token")
        if chosen is None:
            return ConstrainedOutput(text, generated, "no_valid_token")
        generated.append(chosen)
        text += vocab.texts[chosen]
        step_input = torch.tensor([[chosen]], device=input_ids.device)
    return ConstrainedOutput(text, generated, "length")
