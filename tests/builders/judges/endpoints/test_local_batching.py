"""The local judge's batches: answers equal to decoding each request alone, whatever joins or
leaves; the in-flight limit is the batch size; the prompt cache; the worker thread."""

import asyncio
import sys
import time
from pathlib import Path

import pytest
import regex

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import build_tiny_model  # noqa: E402

from bench.local_judge import demo_requests  # noqa: E402
from builders.judges.annotate import Annotator  # noqa: E402
from builders.judges.endpoints import make_backend  # noqa: E402
from builders.judges.endpoints.base import Constraint, GenerateRequest  # noqa: E402
from builders.judges.endpoints.constrained import generate_with_regex  # noqa: E402
from builders.judges.endpoints.local_batch import DecodeBatch  # noqa: E402
from builders.judges.endpoints.spec import EndpointSpec  # noqa: E402
from builders.judges.store import JudgmentStore  # noqa: E402

VERDICT = (r"<verdict><better>(None|Doc \([1-9]\)(, Doc \([1-9]\)){0,3})</better>"
           r"<worse>(None|Doc \([1-9]\)(, Doc \([1-9]\)){0,3})</worse></verdict>")


def messages(i: int) -> tuple[dict, ...]:
    """Prompts of different lengths, sharing their system message (a prefix for the prompt cache)."""
    return ({"role": "system", "content": "You judge passages. Answer with a verdict."},
            {"role": "user", "content": f"Query {i}: what is a cat? " + "Doc (1) cats are small mammals. " * (1 + 3 * (i % 4))})


def requests() -> list[GenerateRequest]:
    """Greedy and sampled, constrained and not, stop strings, each its own max_new_tokens."""
    regex_ = Constraint("regex", VERDICT)
    return [
        GenerateRequest(messages(0), max_new_tokens=60, temperature=0, constraint=regex_),
        GenerateRequest(messages(1), max_new_tokens=9, temperature=0),
        GenerateRequest(messages(2), max_new_tokens=60, temperature=0.8, seed=3, constraint=regex_),
        GenerateRequest(messages(3), max_new_tokens=5, temperature=0, constraint=regex_),
        GenerateRequest(messages(4), max_new_tokens=30, temperature=0.7, seed=5),
        GenerateRequest(messages(5), max_new_tokens=40, temperature=0, stop=("Doc",)),
        GenerateRequest(messages(6), max_new_tokens=60, temperature=0, constraint=regex_),
    ]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))


def answers(backend, batch: list[GenerateRequest]):
    async def all_at_once():
        return await asyncio.gather(*(backend.generate(r) for r in batch))

    return asyncio.run(all_at_once())


def fields(generation) -> tuple:
    return generation.text, generation.finish_reason, generation.prompt_tokens, generation.completion_tokens


@pytest.mark.parametrize("batching", ["continuous", "static"])
@pytest.mark.parametrize("prompt_cache_mb", [0, 64])
def test_batched_answers_equal_each_request_decoded_alone(folder, batching, prompt_cache_mb):
    backend = make_backend(EndpointSpec(kind="local", model=str(folder), batch_size=3, batching=batching,
                                        prompt_cache_mb=prompt_cache_mb))
    batch = requests()
    alone = [fields(backend.generate_alone(r)) for r in batch]
    assert [fields(g) for g in answers(backend, batch)] == alone  # 7 requests through 3 slots: rows join and leave
    assert backend._worker.rows / backend._worker.steps > 1.5  # it did decode rows together
    assert [fields(g) for g in answers(backend, batch[::-1])] == alone[::-1]  # other neighbours, cached prompts
    if prompt_cache_mb:
        assert backend.prompt_cache.hits["whole"] == len(batch) and backend.prompt_cache.hits["prefix"] > 0


def test_alone_equals_the_unbatched_constrained_decoder(folder):
    """``generate_alone`` (the reference above) is the decoder the local judge used before batching."""
    backend = make_backend(EndpointSpec(kind="local", model=str(folder)))
    for request in requests():
        if request.constraint is None:
            continue
        ids = backend.tokenizer(backend.render(request.messages), add_special_tokens=False, return_tensors="pt").input_ids
        before = generate_with_regex(backend.model, backend.tokenizer, ids, VERDICT, max_new_tokens=request.max_new_tokens,
                                     temperature=request.temperature, seed=request.seed)
        now = backend.generate_alone(request)
        assert (now.text, now.finish_reason, now.completion_tokens) == (before.text, before.finish_reason, len(before.token_ids))
        assert now.finish_reason != "eos_token" or regex.fullmatch(VERDICT, now.text)


def test_the_in_flight_limit_is_the_batch_size(folder, tmp_path):
    assert make_backend(EndpointSpec(kind="local", model=str(folder))).concurrency == 8
    backend = make_backend(EndpointSpec(kind="local", model=str(folder), batch_size=3))
    annotator = Annotator(backend, JudgmentStore(tmp_path / "s.sqlite"), stage="t", prompt_version="v", progress=False)
    assert backend.concurrency == annotator.concurrency == 3
    for bad in ({"batch_size": 0}, {"prompt_cache_mb": -1}, {"batching": "dynamic"}, {"batch_size": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EndpointSpec(kind="local", **bad)


def test_the_event_loop_stays_free_while_the_model_decodes(folder):
    backend = make_backend(EndpointSpec(kind="local", model=str(folder), batch_size=4))
    backend.model  # loaded: this measures decoding, not the first load

    async def run():
        stall, running = 0.0, True

        async def tick():
            nonlocal stall
            while running:
                asked = time.perf_counter()
                await asyncio.sleep(0.005)
                stall = max(stall, time.perf_counter() - asked - 0.005)

        ticker = asyncio.ensure_future(tick())
        await asyncio.gather(*(backend.generate(r) for r in requests() * 2))
        running = False
        await ticker
        return stall

    assert asyncio.run(run()) < 0.25


def test_a_failed_step_fails_its_rows_and_the_worker_goes_on(folder, monkeypatch):
    backend = make_backend(EndpointSpec(kind="local", model=str(folder), batch_size=4))
    step = DecodeBatch.step
    calls = {"n": 0}

    def failing_once(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return step(self)

    monkeypatch.setattr(DecodeBatch, "step", failing_once)
    batch = [GenerateRequest(messages(i), max_new_tokens=20, temperature=0) for i in range(3)]

    async def run():
        return await asyncio.gather(*(backend.generate(r) for r in batch), return_exceptions=True)

    first = asyncio.run(run())
    assert all(isinstance(a, RuntimeError) for a in first)
    assert [fields(a) for a in asyncio.run(run())] == [fields(backend.generate_alone(r)) for r in batch]


def test_a_model_that_fails_to_load_fails_the_requests_and_the_next_load_is_tried(folder):
    from builders.judges.endpoints.local import LocalBackend

    tries = []

    def load():
        tries.append(1)
        raise RuntimeError("no weights here")

    backend = LocalBackend(model_id="missing", loader=load)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="no weights"):
            asyncio.run(backend.generate(GenerateRequest(messages(0), max_new_tokens=3)))
    assert len(tries) == 2


def test_a_cancelled_request_is_not_decoded(folder):
    backend = make_backend(EndpointSpec(kind="local", model=str(folder), batch_size=1))
    batch = [GenerateRequest(messages(i), max_new_tokens=30, temperature=0) for i in range(3)]

    async def run():
        tasks = [asyncio.ensure_future(backend.generate(r)) for r in batch]
        await asyncio.sleep(0)
        tasks[2].cancel()  # still waiting for the one slot
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return done

    done = asyncio.run(run())
    assert isinstance(done[2], asyncio.CancelledError)
    assert [fields(a) for a in done[:2]] == [fields(backend.generate_alone(r)) for r in batch[:2]]
    assert backend._worker.rows <= sum(a.completion_tokens for a in done[:2])


@pytest.mark.long  # ~45 s with the real model: .ci/run's second tier (./run.sh test -m long)
def test_bundled_smollm2_batched_equals_unbatched_on_demo_rows():
    """The demo's judge on demo prompts: batched greedy text == the decoder used before batching
    (``generate_with_regex``, one request at a time), rows joining and leaving, and again from
    the prompt cache."""
    pytest.importorskip("gguf")
    backend = make_backend(EndpointSpec(kind="local", threads=1, batch_size=3))
    batch = demo_requests(4, max_new_tokens=20)
    before = []
    for r in batch:
        ids = backend.tokenizer(backend.render(r.messages), add_special_tokens=False, return_tensors="pt").input_ids
        out = generate_with_regex(backend.model, backend.tokenizer, ids, str(r.constraint.value), max_new_tokens=20, temperature=0)
        before.append((out.text, out.finish_reason, len(out.token_ids)))
    batched = answers(backend, batch)
    assert [(g.text, g.finish_reason, g.completion_tokens) for g in batched] == before
    again = answers(backend, batch[::-1])
    assert [g.text for g in again] == [text for text, _, _ in before][::-1]
    assert backend.prompt_cache.hits["whole"] == len(batch)


def test_a_stopped_run_resumes_and_pays_no_answer_twice(folder, tmp_path):
    """Each row's answer is committed as it finishes, not when its batch does: a run stopped after
    three commits leaves them in the store, and the rerun asks only the others."""
    backend = make_backend(EndpointSpec(kind="local", model=str(folder), batch_size=3))
    asked = []
    generate = backend.generate

    async def counting(request):
        asked.append(request)
        return await generate(request)

    backend.generate = counting
    store = JudgmentStore(tmp_path / "judgments.sqlite")
    items = [(f"q{i}", GenerateRequest(messages(i), max_new_tokens=8 + 4 * i, temperature=0)) for i in range(8)]

    def annotator():
        return Annotator(backend, store, stage="rlhn/stage1", prompt_version="v1", progress=False)

    async def stopped():
        task = None
        committed = []

        def on_outcome(outcome):
            committed.append(outcome.key)
            if len(committed) == 3:
                task.cancel()

        task = asyncio.ensure_future(annotator().run(items, on_outcome=on_outcome))
        with pytest.raises(asyncio.CancelledError):
            await task
        return committed

    committed = asyncio.run(stopped())
    first = len(asked)
    result = annotator().run_sync(items)
    stored = result.ledger.cached  # answers committed before the stop took effect (a group commit may hold more)
    assert 3 <= len(committed) <= stored < len(items)
    assert len(asked) - first == len(items) - stored  # the rerun asked only the unanswered
    assert {key: o.text for key, o in result.outcomes.items()} == {key: backend.generate_alone(r).text for key, r in items}
