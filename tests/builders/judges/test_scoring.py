"""score_all: store, retries, per-key failures, fail-fast, both HTTP backends through the stand-in."""

import asyncio
import math

import pytest

from builders.judges.annotate import RetryPolicy
from builders.judges.endpoints.base import ScoreRequest
from builders.judges.endpoints.openai import OpenAIBackend
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.endpoints.tgi import TGIBackend
from builders.judges.scoring import CannotScore, score_all
from builders.judges.store import JudgmentStore
from builders.methods.clear.confidence import answer_confidence
from tests.stand_ins.tgi_server import UNAVAILABLE, VALIDATION, FaultRule, tokenize

PROBS = {"\nBlue": 0.25, " whale": 0.5}  # "\nBlue" straddles the "Assistant:\n" boundary
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)


def request(doc):
    return ScoreRequest(messages=({"role": "user", "content": f"Document: {doc}\nWhat is the largest animal?"},),
                        continuation="Blue whale")


def logprob(text, position):
    return math.log(PROBS.get(text, 0.9))


def run(backend, store, items, **kw):
    return asyncio.run(score_all(backend, store, items, stage="test/score", prompt_version="v1", retry=FAST, **kw)).outcomes


EXPECTED = 1 - math.sqrt(((1 - 0.25) ** 2 + (1 - 0.5) ** 2) / 2)  # 0.362541


def test_tgi_retries_stores_and_never_pays_twice(tgi_stand_in, tmp_path):
    server = tgi_stand_in(lambda req: "x", logprob_fn=logprob,
                          faults=[FaultRule(UNAVAILABLE, at=0), FaultRule(VALIDATION, match="doc-b", times=None)])
    backend = TGIBackend(EndpointSpec(kind="tgi", url=server.url, concurrency=1, timeout_s=10))
    items = {"a": request("doc-a"), "b": request("doc-b")}
    with JudgmentStore(tmp_path / "s.sqlite") as store:
        out = run(backend, store, items)
        assert out["a"].tokens is not None and out["a"].judgment.attempts == 2  # 503 then ok
        assert answer_confidence(out["a"].tokens, "Blue whale")[0] == pytest.approx(EXPECTED)
        assert out["b"].tokens is None and out["b"].judgment.error_kind == "validation"  # 422: this key only
        before = len(server.requests)
        again = run(backend, store, items)
        assert len(server.requests) == before  # ok and final failures come from the store
        assert not again["a"].paid and again["a"].tokens == out["a"].tokens


def test_openai_completions_prompt_logprobs(tgi_stand_in, tmp_path):
    server = tgi_stand_in(lambda req: "x", logprob_fn=logprob)
    backend = OpenAIBackend(EndpointSpec(kind="openai", url=server.url + "/v1", model="judge", timeout_s=10))
    with JudgmentStore(tmp_path / "s.sqlite") as store:
        scored = asyncio.run(score_all(backend, store, {"a": request("doc-a")}, stage="test/score", prompt_version="v1",
                                       retry=FAST, progress=False))
    out = scored.outcomes
    assert answer_confidence(out["a"].tokens, "Blue whale")[0] == pytest.approx(EXPECTED)
    body = next(r.body for r in server.requests if r.path == "/v1/completions")
    assert body["echo"] is True and body["max_tokens"] == 0
    # tokens: the server's usage for the echoed prompt (vLLM's usage.prompt_tokens), none generated
    assert (scored.ledger.prompt_tokens, scored.ledger.completion_tokens) == (len(tokenize(body["prompt"])), 0)
    assert out["a"].judgment.prompt_tokens == scored.ledger.prompt_tokens > 10


def test_empty_prefill_raises_cannot_score(tgi_stand_in, tmp_path):
    server = tgi_stand_in(lambda req: "x", prefill_logprobs=False)
    backend = TGIBackend(EndpointSpec(kind="tgi", url=server.url, concurrency=1, timeout_s=10))
    with JudgmentStore(tmp_path / "s.sqlite") as store, pytest.raises(CannotScore, match="--enable-prefill-logprobs"):
        run(backend, store, {f"k{i}": request(f"doc-{i}") for i in range(5)})
    assert sum(r.path != "/tokenize" for r in server.requests) == 1  # stopped after the first answer


def test_ledger_counts_this_runs_calls_and_the_store(tgi_stand_in, tmp_path):
    server = tgi_stand_in(lambda req: "x", logprob_fn=logprob,
                          faults=[FaultRule(UNAVAILABLE, at=0), FaultRule(VALIDATION, match="doc-b", times=None)])
    backend = TGIBackend(EndpointSpec(kind="tgi", url=server.url, concurrency=1, timeout_s=10))
    items = {"a": request("doc-a"), "b": request("doc-b")}
    with JudgmentStore(tmp_path / "s.sqlite") as store:
        first = asyncio.run(score_all(backend, store, items, stage="test/score", prompt_version="v1", retry=FAST,
                                      progress=False)).ledger
        scored = len([r for r in server.requests if r.path == "/generate"])
        assert (first.items, first.cached, first.calls, first.ok, first.failed) == (2, 0, 3, 1, 1) == (2, 0, scored, 1, 1)
        assert sum(first.retries.values()) == 1 and dict(first.failures) == {"validation": 1}
        # tokens: what the stand-in prefilled for the answered call (<s> + its tokens), one generated
        answered = [r for r in server.requests if r.path == "/generate" and r.status == 200]
        assert (first.prompt_tokens, first.completion_tokens) == (sum(1 + len(tokenize(r.body["inputs"])) for r in answered), 1)
        assert first.prompt_tokens > 10 and store.get("test/score", backend.model_id, "v1", "a").prompt_tokens == first.prompt_tokens
        again = asyncio.run(score_all(backend, store, items, stage="test/score", prompt_version="v1", retry=FAST)).ledger
        assert (again.items, again.cached, again.calls, again.ok, again.failed) == (2, 2, 0, 0, 0)
        assert (again.prompt_tokens, again.completion_tokens) == (0, 0)
