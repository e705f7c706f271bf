"""OpenAI-compatible backend against the stand-in: body shape per flavour, usage, errors, score()."""

import asyncio

import pytest

from builders.judges.endpoints import make_backend
from builders.judges.endpoints.base import Constraint, EndpointError, GenerateRequest, ScoreRequest
from builders.judges.endpoints.openai import constraint_fields
from builders.judges.endpoints.spec import EndpointSpec
from tests.stand_ins.tgi_server import OVERLOADED, VALIDATION, tokenize

MESSAGES = ({"role": "user", "content": "Which docs are relevant?"},)
SCHEMA = {"type": "object", "properties": {"docs": {"type": "array", "items": {"type": "integer"}}}, "required": ["docs"]}


def call(backend, factory):
    async def go():
        try:
            return await factory()
        finally:
            await backend.aclose()
    return asyncio.run(go())


def test_chat_request_body_and_usage(tgi_stand_in, monkeypatch):
    monkeypatch.setenv("VLLM_KEY", "k-123")
    server = tgi_stand_in(lambda request: '{"docs": [2]}')
    backend = make_backend(EndpointSpec(kind="openai", url=server.url + "/v1", model="smollm2", api_key_env="VLLM_KEY",
                                        response_format_style="vllm"))
    out = call(backend, lambda: backend.generate(GenerateRequest(messages=MESSAGES, max_new_tokens=50, temperature=0.0, seed=3,
                                                                 constraint=Constraint("json", SCHEMA))))
    sent = server.requests[0]
    assert sent.path == "/v1/chat/completions" and sent.headers["authorization"] == "Bearer k-123"
    assert sent.body["model"] == "smollm2" and sent.body["messages"] == list(MESSAGES)
    assert sent.body["max_tokens"] == 50 and sent.body["temperature"] == 0.0 and sent.body["seed"] == 3
    assert sent.body["response_format"] == {"type": "json_schema", "json_schema": {"name": "judgment", "schema": SCHEMA, "strict": True}}
    assert out.text == '{"docs": [2]}' and out.finish_reason == "stop" and out.meta["constraint"] == "enforced"
    assert out.prompt_tokens == len(tokenize(MESSAGES[0]["content"])) and out.completion_tokens == len(tokenize(out.text))


@pytest.mark.parametrize("style, kind, value, expected", [
    ("openai", "json", SCHEMA, {"response_format": {"type": "json_schema", "json_schema": {"name": "judgment", "schema": SCHEMA, "strict": True}}}),
    ("llamacpp", "json", SCHEMA, {"response_format": {"type": "json_object", "schema": SCHEMA}}),
    ("tgi", "json", SCHEMA, {"response_format": {"type": "json", "value": SCHEMA}}),
    ("tgi", "regex", "Yes|No", {"response_format": {"type": "regex", "value": "Yes|No"}}),
    ("vllm", "regex", "Yes|No", {"structured_outputs": {"regex": "Yes|No"}}),
    ("sglang", "regex", "Yes|No", {"regex": "Yes|No"}),
    ("openai", "regex", "Yes|No", {}),
    ("llamacpp", "regex", "Yes|No", {"grammar": 'root ::= "Yes" | "No"'}),
])
def test_constraint_shape_per_flavour(style, kind, value, expected):
    assert constraint_fields(Constraint(kind, value), style) == expected


@pytest.mark.parametrize("style", ["openai", "vllm", "sglang", "llamacpp", "tgi"])
@pytest.mark.parametrize("kind, value", [("json", SCHEMA), ("regex", "Doc \\([0-9]\\)")])
def test_constraint_fields_travel_in_the_request_body(tgi_stand_in, style, kind, value):
    server = tgi_stand_in(lambda request: "Doc (1)")
    backend = make_backend(EndpointSpec(kind="openai", url=server.url, model="m", response_format_style=style))
    call(backend, lambda: backend.generate(GenerateRequest(messages=MESSAGES, constraint=Constraint(kind, value))))
    body = server.requests[0].body
    expected = constraint_fields(Constraint(kind, value), style)
    assert {k: body[k] for k in expected} == expected
    assert not {"response_format", "structured_outputs", "regex", "grammar"} - set(expected) & set(body)
    assert (kind in backend.supports_constraint) == bool(expected)


def test_regex_on_a_flavour_without_regex_is_sent_unconstrained_and_marked(tgi_stand_in):
    server = tgi_stand_in(lambda request: "Yes")
    backend = make_backend(EndpointSpec(kind="openai", url=server.url, model="m", response_format_style="openai"))
    assert backend.supports_constraint == frozenset({"json"})
    out = call(backend, lambda: backend.generate(GenerateRequest(messages=MESSAGES, constraint=Constraint("regex", "Yes|No"))))
    assert out.meta["constraint"] == "not enforced" and "response_format" not in server.requests[0].body


def test_model_name_from_v1_models_when_not_given(tgi_stand_in):
    server = tgi_stand_in(lambda request: "ok", model_id="served-judge")
    backend = make_backend(EndpointSpec(kind="openai", url=server.url))
    call(backend, lambda: backend.generate(GenerateRequest(messages=MESSAGES)))
    assert server.reads[0].path == "/v1/models" and server.requests[0].body["model"] == "served-judge"


@pytest.mark.parametrize("fault, kind, retryable", [(OVERLOADED, "overloaded", True), (VALIDATION, "validation", False)])
def test_errors(tgi_stand_in, fault, kind, retryable):
    server = tgi_stand_in(faults={0: fault})
    backend = make_backend(EndpointSpec(kind="openai", url=server.url, model="m"))
    with pytest.raises(EndpointError) as caught:
        call(backend, lambda: backend.generate(GenerateRequest(messages=MESSAGES)))
    assert (caught.value.kind, caught.value.retryable) == (kind, retryable)


def test_score_with_echo_logprobs(tgi_stand_in):
    server = tgi_stand_in(logprob_fn=lambda text, position: -0.5 * position)
    backend = make_backend(EndpointSpec(kind="openai", url=server.url, model="m", response_format_style="vllm"))
    scored = call(backend, lambda: backend.score(ScoreRequest(messages=({"role": "user", "content": "Q?"},), continuation=" Yes.")))
    scores = scored.tokens
    body = server.requests[0].body
    assert (body["echo"], body["logprobs"], body["max_tokens"]) == (True, 1, 0)
    # "User: Q?\n\nAssistant:\n Yes." = User : ␣Q ? \n\n Assistant : (positions 0-6), then "\n␣" (7) straddles
    # the boundary (kept, start clipped to 0), "Yes" (8), "." (9); logprob = -0.5 * position
    assert [(s.text, s.start, s.end) for s in scores] == [("\n ", 0, 1), ("Yes", 1, 4), (".", 4, 5)]
    assert [s.logprob for s in scores] == [-3.5, -4.0, -4.5]
    # the cost: the whole echoed prompt as the server's usage counts it (10 tokens), nothing generated
    assert (scored.prompt_tokens, scored.completion_tokens) == (len(tokenize(body["prompt"])), 0) == (10, 0)


def test_score_without_usage_counts_the_echoed_tokens(tgi_stand_in, monkeypatch):
    server = tgi_stand_in()
    backend = make_backend(EndpointSpec(kind="openai", url=server.url, model="m", response_format_style="vllm"))
    post = backend._post

    async def without_usage(route, body):
        payload = await post(route, body)
        payload.pop("usage")
        return payload

    monkeypatch.setattr(backend, "_post", without_usage)
    scored = call(backend, lambda: backend.score(ScoreRequest(messages=({"role": "user", "content": "Q?"},), continuation=" Yes.")))
    assert (scored.prompt_tokens, scored.completion_tokens) == (10, 0)


def test_llamacpp_refuses_to_score():
    backend = make_backend(EndpointSpec(kind="openai", url="http://127.0.0.1:9", model="m", response_format_style="llamacpp"))
    with pytest.raises(EndpointError, match="shifted by one token"):
        call(backend, lambda: backend.score(ScoreRequest(messages=MESSAGES, continuation="Yes")))


def test_one_backend_serves_several_event_loops(tgi_stand_in):
    server = tgi_stand_in(lambda request: "ok")
    backend = make_backend(EndpointSpec(kind="openai", url=server.url, model="m"))
    request = GenerateRequest(messages=MESSAGES, max_new_tokens=1)

    async def many():
        return [g.text for g in await asyncio.gather(*(backend.generate(request) for _ in range(4)))]

    assert asyncio.run(many()) == ["ok"] * 4
    assert asyncio.run(many()) == ["ok"] * 4
    assert call(backend, many) == ["ok"] * 4
    assert call(backend, many) == ["ok"] * 4
