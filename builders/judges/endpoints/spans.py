"""Token spans of many prompts from a local (fast) tokenizer, counted in batches.

``builders.judges.shorten`` asks for the spans of every prompt the byte bound cannot settle, from many
coroutines at once (``PromptFitter.fit_all``). One tokenizer call per prompt on the event loop
costs Python overhead per call and holds the loop (~10 CPU-minutes per 680K long prompts).
``batched_tokenizer_spans`` instead collects the texts asked for in one turn of the event loop
and tokenizes them with ONE batch call (the Rust tokenizer's ``encode_batch``); a batch of more
than ``THREAD_CHARS`` characters runs on a worker thread (the Rust call releases the GIL), so
the loop keeps the endpoints busy meanwhile. The spans are exactly those of one call per text
(``tokenizer_spans``; the equivalence test in tests/builders/judges/endpoints/test_spans.py).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence

THREAD_CHARS = 20_000  # a batch with more characters than this is tokenized on a worker thread


def batch_spans(tokenizer, texts: Sequence[str], *, add_special_tokens: bool) -> list[list[tuple[int, int]]]:
    """``tokenizer_spans`` of each text, from one batch call (no padding, no truncation)."""
    if not tokenizer.is_fast:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no fast (Rust) version, so it gives no character "
                         "offsets to shorten prompts at token boundaries; name one with a tokenizer.json")
    offsets = tokenizer(list(texts), add_special_tokens=add_special_tokens, return_offsets_mapping=True)["offset_mapping"]
    return [[(int(a), int(b)) for a, b in one] for one in offsets]


class SpanBatcher:
    """Coalesces the span requests of one event-loop turn into one ``batch_spans`` call."""

    def __init__(self, tokenizer, *, add_special_tokens: bool, thread_chars: int = THREAD_CHARS):
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens
        self.thread_chars = thread_chars
        self.batches = 0  # batch calls made (for tests and benchmarks)
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[str, asyncio.Future]]] = {}
        self._running: set[asyncio.Task] = set()

    async def spans(self, text: str) -> list[tuple[int, int]]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        pending = self._pending.setdefault(loop, [])
        if not pending:
            loop.call_soon(self._flush, loop)  # after every coroutine ready in this turn has asked
        pending.append((text, future))
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = [(text, future) for text, future in self._pending.pop(loop, []) if not future.cancelled()]
        if not batch:
            return
        self.batches += 1
        if sum(len(text) for text, _ in batch) <= self.thread_chars:
            try:
                _settle(batch, self._count(batch))
            except Exception as error:  # noqa: BLE001 - every waiter gets the tokenizer's error
                _fail(batch, error)
            return
        task = loop.create_task(self._in_thread(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _in_thread(self, batch: list[tuple[str, asyncio.Future]]) -> None:
        try:
            spans = await asyncio.to_thread(self._count, batch)
        except Exception as error:  # noqa: BLE001
            _fail(batch, error)
        else:
            _settle(batch, spans)

    def _count(self, batch: list[tuple[str, asyncio.Future]]) -> list[list[tuple[int, int]]]:
        return batch_spans(self.tokenizer, [text for text, _ in batch], add_special_tokens=self.add_special_tokens)


def _settle(batch, spans) -> None:
    for (_, future), one in zip(batch, spans, strict=True):
        if not future.done():
            future.set_result(one)


def _fail(batch, error: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)


_BATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {add_special_tokens: SpanBatcher}


def span_batcher(tokenizer, *, add_special_tokens: bool) -> SpanBatcher:
    """The batcher of ``tokenizer`` (one per tokenizer object and special-token setting)."""
    by_setting = _BATCHERS.setdefault(tokenizer, {})
    if add_special_tokens not in by_setting:
        by_setting[add_special_tokens] = SpanBatcher(tokenizer, add_special_tokens=add_special_tokens)
    return by_setting[add_special_tokens]


async def batched_tokenizer_spans(tokenizer, text: str, *, add_special_tokens: bool) -> list[tuple[int, int]]:
    """``tokenizer_spans(tokenizer, text, ...)``, counted together with the other texts asked
    for in the same event-loop turn."""
    return await span_batcher(tokenizer, add_special_tokens=add_special_tokens).spans(text)
