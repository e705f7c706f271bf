"""TGI backend against the stand-in: request shape, prompt rendering, headers, error mapping, score()."""

import asyncio

import pytest

from builders.judges.endpoints import make_backend
from builders.judges.endpoints.base import Constraint, EndpointError, GenerateRequest, ScoreRequest
from builders.judges.endpoints.chat import render_chat_prompt
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.endpoints.tgi import TGIBackend
from tests.stand_ins.tgi_server import DROP, OVERLOADED, UNAVAILABLE, VALIDATION, Fault, tokenize

MESSAGES = ({"role": "system", "content": "Judge."}, {"role": "user", "content": "Is it relevant?"})
GENERATE_ROUTE = {"aiohttp": "/generate", "huggingface_hub": "/"}  # the hub client posts to the server root

transports = pytest.mark.parametrize("transport", ["aiohttp", "huggingface_hub"])


def call(backend, coroutine_factory):
    async def go():
        try:
            return await coroutine_factory()
        finally:
            await backend.aclose()
    return asyncio.run(go())


@transports
def test_generate_sends_tgi_parameters_and_reads_details(tgi_stand_in, monkeypatch, transport):
    monkeypatch.setenv("JUDGE_TOKEN", "secret-value")
    server = tgi_stand_in(lambda request: "Doc (2) and more words here")
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url + "/", model="judge-x", api_key_env="JUDGE_TOKEN",
                                        transport=transport))
    request = GenerateRequest(messages=MESSAGES, max_new_tokens=3, temperature=0.0, seed=5, stop=("\n",),
                              constraint=Constraint("regex", r"Doc \(\d+\)"))
    out = call(backend, lambda: backend.generate(request))
    assert out.text == "Doc (2" and out.finish_reason == "length" and out.completion_tokens == 3
    sent = server.requests[0]
    assert sent.path == GENERATE_ROUTE[transport]
    assert sent.body["inputs"] == "System: Judge.\n\nUser: Is it relevant?\n\nAssistant:\n"
    params = sent.body["parameters"]
    assert params["grammar"] == {"type": "regex", "value": r"Doc \(\d+\)"}
    assert params["details"] is True and params["seed"] == 5 and params["stop"] == ["\n"] and params["max_new_tokens"] == 3
    assert params["do_sample"] is False and "temperature" not in params  # TGI rejects temperature 0: greedy instead
    assert sent.headers["authorization"] == "Bearer secret-value"
    assert out.prompt_tokens == 1 + len(tokenize(sent.body["inputs"]))  # x-prompt-tokens (BOS included)
    assert backend.model_id == "judge-x"


def test_json_constraint_and_sampling_parameters(tgi_stand_in):
    server = tgi_stand_in(lambda request: '{"ok": true}')
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url))
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    call(backend, lambda: backend.generate(GenerateRequest(messages=MESSAGES, temperature=0.3,
                                                           constraint=Constraint("json", schema))))
    params = server.requests[0].body["parameters"]
    assert params["grammar"] == {"type": "json", "value": schema}
    assert params["temperature"] == 0.3 and params["do_sample"] is True


@pytest.mark.parametrize("fault, kind, status, retryable", [
    (OVERLOADED, "overloaded", 429, True), (VALIDATION, "validation", 422, False), (UNAVAILABLE, "server", 503, True),
    (Fault(status=500), "server", 500, True), (Fault(status=424), "server", 424, True), (Fault(status=502), "server", 502, True),
    (Fault(status=504), "server", 504, True), (DROP, "connection", None, True), (Fault(delay_s=2), "timeout", None, True),
    (Fault(raw_body=b"<html>proxy</html>"), "protocol", None, False),
])
@transports
def test_errors_map_to_tgi_contract(tgi_stand_in, fault, kind, status, retryable, transport):
    server = tgi_stand_in(faults={0: fault})
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url, timeout_s=0.3, transport=transport))
    with pytest.raises(EndpointError) as caught:
        call(backend, lambda: backend.generate(GenerateRequest(messages=MESSAGES)))
    assert (caught.value.kind, caught.value.status, caught.value.retryable) == (kind, status, retryable)


def test_missing_token_env_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    with pytest.raises(EndpointError, match="NO_SUCH_TOKEN_VAR"):
        make_backend(EndpointSpec(kind="tgi", url="http://127.0.0.1:9", api_key_env="NO_SUCH_TOKEN_VAR"))


@transports
def test_score_reads_prefill_logprobs_for_the_continuation(tgi_stand_in, transport):
    # logprob of a token = -(its position in the prompt + 1) / 10: easy to compute by hand
    server = tgi_stand_in(logprob_fn=lambda text, position: -(position + 1) / 10)
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url, transport=transport))
    scored = call(backend, lambda: backend.score(ScoreRequest(messages=({"role": "user", "content": "Q?"},), continuation="Yes, 2")))
    scores = scored.tokens
    # inputs "User: Q?\n\nAssistant:\nYes, 2" -> <s> User : Q ? \n\n Assistant : \nYes , ␣2 (stand-in tokens)
    # "\nYes" straddles the boundary (position 8), "," is 9, " 2" is 10
    assert [(s.text, s.start, s.end) for s in scores] == [("\nYes", 0, 3), (",", 3, 4), (" 2", 4, 6)]
    assert [s.logprob for s in scores] == pytest.approx([-0.9, -1.0, -1.1])
    assert [r.path for r in server.requests] == [GENERATE_ROUTE[transport], "/tokenize"]
    assert server.requests[0].body["parameters"]["decoder_input_details"] is True
    # the cost: the whole prompt is prefilled (<s> + 10 tokens, x-prompt-tokens), one token generated
    assert (scored.prompt_tokens, scored.completion_tokens) == (1 + len(tokenize(server.requests[0].body["inputs"])), 1) == (11, 1)
    if transport == "aiohttp":
        assert scored.meta["url"] == server.url and "queue_time_ms" in scored.meta


def test_score_without_prefill_logprobs_says_what_the_server_lacks(tgi_stand_in):
    server = tgi_stand_in(prefill_logprobs=False)
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url))
    with pytest.raises(EndpointError, match="lacks --enable-prefill-logprobs") as caught:
        call(backend, lambda: backend.score(ScoreRequest(messages=MESSAGES, continuation="Yes")))
    assert caught.value.kind == "validation" and caught.value.retryable is False


def test_info_route(tgi_stand_in):
    server = tgi_stand_in(max_concurrent_requests=7)
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url))
    assert call(backend, backend.info)["max_concurrent_requests"] == 7


class BosTokenizer:
    """A stand-in for a tokenizer whose chat template starts with BOS and which adds BOS itself."""

    chat_template = "set"
    bos_token = "<s>"
    bos_token_id = 1

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "<s>" + "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"

    def __call__(self, text, add_special_tokens=True):
        class Encoded:
            input_ids = [1] + [ord(c) for c in text]
        return Encoded()


def test_chat_template_bos_is_not_doubled_for_tgi():
    backend = TGIBackend(EndpointSpec(kind="tgi", url="http://127.0.0.1:9"), tokenizer=BosTokenizer())
    assert backend.render(MESSAGES) == "[system]Judge.[user]Is it relevant?[assistant]"
    assert render_chat_prompt(MESSAGES, BosTokenizer()).startswith("<s>[system]")
    asyncio.run(backend.aclose())


@transports
def test_one_backend_serves_several_event_loops(tgi_stand_in, transport):
    """A backend built once is used by several ``asyncio.run`` calls (``Annotator.run_sync``
    per stage): each loop gets its own session, none reuses a closed loop's connections."""
    server = tgi_stand_in(lambda request: "yes")
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url, transport=transport))
    request = GenerateRequest(messages=MESSAGES, max_new_tokens=1)

    async def many():
        return [g.text for g in await asyncio.gather(*(backend.generate(request) for _ in range(5)))]

    assert asyncio.run(many()) == ["yes"] * 5  # no aclose: the loop closes under the open session
    assert asyncio.run(many()) == ["yes"] * 5
    assert call(backend, many) == ["yes"] * 5  # aclose, then the backend is still usable
    assert call(backend, many) == ["yes"] * 5
    assert len(server.requests) == 20


def test_unknown_transport_is_refused():
    with pytest.raises(ValueError, match="transport"):
        make_backend(EndpointSpec(kind="tgi", url="http://127.0.0.1:9", transport="requests"))


@pytest.mark.parametrize("header", [True, False], ids=["x-prompt-tokens", "tokenize"])
def test_prompt_tokens_come_from_the_header_else_from_tokenize(tgi_stand_in, header):
    """Without a ``tokenizer:`` the ledger still counts prompt tokens: TGI's x-prompt-tokens
    header, or (a proxy that drops it) a POST /tokenize of the prompt; the source is recorded."""
    server = tgi_stand_in(lambda request: "yes", prompt_tokens_header=header)
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url, model="judge-x"))
    out = call(backend, lambda: backend.generate(GenerateRequest(messages=MESSAGES, max_new_tokens=2)))
    sent = server.requests[0].body["inputs"]
    assert out.prompt_tokens == 1 + len(tokenize(sent))  # the same count either way (BOS included)
    assert out.meta["prompt_tokens_source"] == ("x-prompt-tokens" if header else "/tokenize")
    tokenized = [r for r in server.requests + server.reads if r.path == "/tokenize"]
    assert len(tokenized) == (0 if header else 1)
