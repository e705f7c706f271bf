"""Chat messages -> the prompt text an endpoint sees, and token spans under a transformers tokenizer."""

from __future__ import annotations


def load_tokenizer(name_or_path: str | None):
    """A transformers tokenizer (chat template, token counts), or None when none is named."""
    if not name_or_path:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


def tokenizer_spans(tokenizer, text: str, *, add_special_tokens: bool) -> list[tuple[int, int]]:
    """Character spans of ``text``'s tokens under a transformers tokenizer (special tokens it
    adds have zero width). Needs a fast (Rust) tokenizer: the spans are its offset mapping."""
    if not tokenizer.is_fast:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no fast (Rust) version, so it gives no character "
                         "offsets to shorten prompts at token boundaries; name one with a tokenizer.json")
    offsets = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)["offset_mapping"]
    return [(int(a), int(b)) for a, b in offsets]


def render_chat_prompt(messages, tokenizer=None, *, for_server_that_adds_special_tokens: bool = False) -> str:
    """Chat messages -> one prompt string, ready for the assistant's answer.

    With a tokenizer that has a chat template, its template renders the messages with the
    generation prompt. Servers like TGI's ``/generate`` tokenize the prompt WITH special tokens,
    so when the template already starts with the BOS token and the tokenizer adds one itself,
    the template's copy is removed (``for_server_that_adds_special_tokens``) - one BOS, not two.

    Without a tokenizer (or template) the rendering is plain and documented:
    ``"System: ...\n\nUser: ...\n\nAssistant:\n"`` - one ``Role: content`` block per message.
    """
    if tokenizer is not None and tokenizer.chat_template:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        bos = tokenizer.bos_token
        if for_server_that_adds_special_tokens and bos and text.startswith(bos) and _tokenizer_adds_bos(tokenizer):
            text = text[len(bos):]
        return text
    blocks = [f"{str(m['role']).capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(blocks + ["Assistant:\n"])


def _tokenizer_adds_bos(tokenizer) -> bool:
    ids = tokenizer("a").input_ids
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
