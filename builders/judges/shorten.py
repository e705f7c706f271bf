"""Prompts longer than a judge's input limit are shortened by one stated rule, never sent to
earn a 422.

The limit (``Backend.input_limit(max_new_tokens)``, read once per endpoint and cached):
the recipe's ``max_input_tokens`` when set; else what the server or model says - TGI ``/info``:
min(``max_input_tokens``, ``max_total_tokens`` - max_new_tokens); vLLM ``/v1/models``:
``max_model_len`` - max_new_tokens; llama.cpp ``/props``: ``n_ctx`` - max_new_tokens; a local
model: its config's ``max_position_embeddings`` - max_new_tokens. A fleet's limit is the
smallest of its members' (a prompt must fit every endpoint it may be moved to). Unknown: the
prompt is sent as it is.

Counting uses the judge's tokenizer (``Backend.token_spans``): the recipe's ``tokenizer`` or
the local model's, else the server's tokenize route (TGI ``POST /tokenize``); a local tokenizer
counts the prompts ``fit_all``'s coroutines ask for in one event-loop turn with one batch call
(``builders.judges.endpoints.spans``, big batches on a worker thread). A cheap upper
bound (UTF-8 bytes of the plainly rendered prompt, plus an allowance for the chat template's
tokens: no token is shorter than a byte) settles nearly every prompt first, so prompts that
clearly fit pay nothing. A prompt that might not fit on a judge that cannot tokenize stops the
run with an error naming the endpoint and ``tokenizer:``.

The rule. A prompt is fixed parts plus candidate passages. Never cut: the system text, the
instructions, the query, the output-format text, the reference the candidates are judged
against (RLHN's ground-truth passages, ARHN's positive doc1 / entry [1]) and a scored
continuation (CLEAR's answer tokens). Cut: the candidate passages only (RLHN's negatives,
ARHN's / PRHN's negatives, CLEAR's scored document or the positive an answer is copied from),
each from its end at a token boundary, longest first - "water-filling": with L_i the tokens
of passage i and m the tokens of the marker, the cap c is the largest integer with

    fixed + sum_i min(L_i, c) + m * #{i : L_i > c}  <=  limit,

and every passage longer than c keeps its first c tokens followed by the marker ``" [...]"``
(shorter passages are left whole). The prompt is then counted again; a few tokens that merge
differently at a cut are taken off the budget and the cap found again (``max_rounds``). When c
would fall below ``min_passage_tokens`` (or the fixed parts alone do not fit), the item is not
sent: it is a failed judgment with a ``validation`` error saying so, counted, never read as
"no false negative". The rule is deterministic (same rows, tokenizer and limit: the same
request), so a resumed run rebuilds exactly the requests it stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from builders.judges.endpoints.base import Backend, EndpointError
from builders.judges.endpoints.chat import render_chat_prompt

MARKER = " [...]"


class ShortenError(RuntimeError):
    """A prompt may exceed the judge's input limit and nothing can count its tokens."""


@dataclass(frozen=True)
class ShortenRule:
    marker: str = MARKER  # appended to a cut passage
    min_passage_tokens: int = 16  # the floor: no passage is cut below this many tokens
    max_rounds: int = 4  # recounts after cutting (boundary merges) before giving up
    template_tokens: int = 32  # upper-bound allowance for a chat template's own tokens ...
    template_tokens_per_message: int = 16  # ... and per message


@dataclass(frozen=True)
class Fit:
    """What the judge is shown of the candidate passages (``texts``), or why nothing is sent."""

    texts: tuple[str, ...] | None  # None: does not fit even at the floor (see ``error``)
    limit: int | None = None
    prompt_tokens: int | None = None  # the counted prompt (None: it fits by the upper bound, or no limit)
    passages_cut: int = 0
    tokens_removed: int = 0  # prompt tokens before minus after (the markers included)
    error: str | None = None

    @property
    def shortened(self) -> bool:
        return self.passages_cut > 0


def water_level(lengths: Sequence[int], available: int, marker_tokens: int) -> int | None:
    """The largest cap c >= 0 with sum(min(L, c)) + marker_tokens * #{L > c} <= available
    (c = max(lengths) means nothing is cut); None when even c = 0 does not fit."""
    def cost(c: int) -> int:
        return sum(min(n, c) for n in lengths) + marker_tokens * sum(n > c for n in lengths)

    top = max(lengths, default=0)
    if cost(top) <= available:
        return top
    low, high = 0, top  # sum(min(L, c)) alone is monotone: the largest c it allows, then step down
    while low < high:
        mid = (low + high + 1) // 2
        if sum(min(n, mid) for n in lengths) <= available:
            low = mid
        else:
            high = mid - 1
    for c in range(low, -1, -1):  # the markers cost at most marker_tokens * len(lengths): a few steps
        if cost(c) <= available:
            return c
    return None


def clip(text: str, token_ends: Sequence[int], cap: int, marker: str = MARKER) -> str:
    """``text`` cut after its first ``cap`` tokens (``token_ends``: each token's end offset),
    with ``marker``; unchanged when it has no more than ``cap`` tokens."""
    if len(token_ends) <= cap:
        return text
    return text[: token_ends[cap - 1]].rstrip() + marker if cap > 0 else marker.strip()


def upper_bound(messages, continuation: str, rule: ShortenRule) -> int:
    """Tokens the prompt has at most under any tokenizer: every token is at least one UTF-8
    byte of the plain rendering, plus the chat template's allowance."""
    text = render_chat_prompt(messages) + continuation
    return len(text.encode("utf-8")) + rule.template_tokens + rule.template_tokens_per_message * len(messages)


def _token_ends(spans: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """End offsets (relative to ``start``) of the tokens inside ``text[start:end]``."""
    return [min(b, end) - start for a, b in spans if b > a and a < end and b > start]


class PromptFitter:
    """Fits one judge's prompts under its input limit (one per backend; limits are cached
    by the backend, the marker's token count here)."""

    def __init__(self, backend: Backend, rule: ShortenRule | None = None):
        self.backend = backend
        self.rule = rule or ShortenRule()

    async def _spans(self, text: str) -> list[tuple[int, int]]:
        for attempt in range(3):
            try:
                spans = await self.backend.token_spans(text)
                break
            except EndpointError as error:
                if not error.retryable or attempt == 2:
                    raise ShortenError(f"judge {self.backend.model_id}: counting a prompt's tokens failed: {error}") from error
                await asyncio.sleep(0.2 * 2 ** attempt)
        if spans is None:
            raise ShortenError(
                f"judge {self.backend.model_id} ({type(self.backend).__name__}) has an input limit but no way to count "
                "prompt tokens: name its tokenizer in the recipe (`tokenizer: <Hub id or folder>` on that endpoint; "
                "a TGI endpoint without one counts through its /tokenize route)")
        return spans

    async def fit(self, build: Callable[[tuple[str, ...]], Sequence[dict]], candidates: Sequence[str], *,
                  max_new_tokens: int, continuation: str = "") -> Fit:
        """``build(texts) -> messages`` renders the prompt around the candidate passages
        ``texts`` (inserted verbatim); ``continuation`` follows the rendered prompt (scoring)."""
        texts = tuple(candidates)
        limit = await self.backend.input_limit(max_new_tokens)
        if limit is None:
            return Fit(texts)
        messages = build(texts)
        if upper_bound(messages, continuation, self.rule) <= limit:
            return Fit(texts, limit)
        spans = await self._spans(self.backend.prompt_text(messages) + continuation)
        total = len(spans)
        if total <= limit:
            return Fit(texts, limit, total)
        # each candidate's tokens (and the marker's) from one tokenization of them, joined
        pieces = list(texts) + [self.rule.marker]
        joined, bounds, at = "", [], 0
        for piece in pieces:
            bounds.append((at, at + len(piece)))
            joined += piece + "\n\n"
            at = len(joined)
        joined_spans = await self._spans(joined)
        ends = [_token_ends(joined_spans, a, b) for a, b in bounds]
        marker_tokens, ends = max(1, len(ends[-1])), ends[:-1]
        lengths = [len(e) for e in ends]
        available = limit - (total - sum(lengths))
        for _ in range(self.rule.max_rounds):
            cap = water_level(lengths, available, marker_tokens) if available >= 0 else None
            if cap is None or cap < self.rule.min_passage_tokens:
                break
            shown = tuple(clip(t, e, cap, self.rule.marker) for t, e in zip(texts, ends))
            counted = len(await self._spans(self.backend.prompt_text(build(shown)) + continuation))
            if counted <= limit:
                cut = sum(n > cap for n in lengths)
                return Fit(shown, limit, counted, cut, total - counted)
            available -= counted - limit
        fixed = total - sum(lengths)
        return Fit(None, limit, total, error=(
            f"prompt of {total} tokens does not fit the input limit of {limit} of judge {self.backend.model_id} even "
            f"with its {len(texts)} candidate passage(s) cut to {self.rule.min_passage_tokens} tokens each (the parts "
            f"never cut - instructions, query, references{', answer' if continuation else ''} - take {fixed}); "
            f"not sent"))

    async def fit_all(self, jobs: Iterable[Callable[[], Awaitable[Fit]]], concurrency: int = 32) -> list[Fit]:
        """Run ``fit`` jobs (zero-argument async callables), at most ``concurrency`` at a time ->
        their fits, in order. The event loop polls its sockets after every ``concurrency`` fits:
        most fits never wait (a byte bound settles them), and a chunk's thousand of them run back
        to back held the loop ~150 ms, while every answer of the chunk before waited to be read."""
        jobs = list(jobs)
        fits: list[Fit | None] = [None] * len(jobs)
        pending = iter(enumerate(jobs))

        async def worker() -> None:
            for i, job in pending:
                fits[i] = await job()
                await asyncio.sleep(0)

        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(jobs)))))
        return fits


def too_long_message(fit: Fit) -> str:
    """The ``validation`` error recorded for an item that was not sent."""
    return f"validation: {fit.error}"


__all__ = ["Fit", "MARKER", "PromptFitter", "ShortenError", "ShortenRule", "clip", "upper_bound",
           "water_level", "too_long_message"]


def count_fit(result, subset: str, stage: str, fit: Fit, *, passages: bool = True) -> None:
    """A method's counts of one fitted prompt (only when it cut something or refused), in
    ``result`` (a ``builders.methods.base.MethodResult``): ``<stage>_prompts_shortened``,
    ``_passages_shortened`` (unless ``passages`` is False: one passage per prompt),
    ``_prompt_tokens_removed`` and ``_prompts_too_long``."""
    if fit.shortened:
        result.count(subset, f"{stage}_prompts_shortened")
        if passages:
            result.count(subset, f"{stage}_passages_shortened", fit.passages_cut)
        result.count(subset, f"{stage}_prompt_tokens_removed", fit.tokens_removed)
    if fit.texts is None:
        result.count(subset, f"{stage}_prompts_too_long")

