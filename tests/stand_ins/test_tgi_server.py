"""The stand-in itself: routes, faults, request log, prefill switch, clean stop."""

import http.client
import json
import time
import urllib.error
import urllib.request

from tests.stand_ins.tgi_server import DROP, OVERLOADED, Fault, FaultRule, TGIStandIn, prompt_of, tokenize


def post(url, body, timeout=5):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null"), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def test_generate_details_headers_and_request_log(tgi_stand_in):
    server = tgi_stand_in(lambda request: "Yes." if "cats" in prompt_of(request) else "No.")
    status, body, headers = post(server.url + "/generate", {
        "inputs": "Are cats mammals?", "parameters": {"details": True, "decoder_input_details": True, "max_new_tokens": 5, "seed": 7}})
    assert status == 200 and body["generated_text"] == "Yes."
    assert body["details"]["finish_reason"] == "eos_token" and body["details"]["seed"] == 7
    assert [t["text"] for t in body["details"]["prefill"]] == ["<s>", "Are", " cats", " mammals", "?"]
    assert body["details"]["prefill"][0]["logprob"] is None
    assert headers["x-prompt-tokens"] == "5" and headers["x-generated-tokens"] == "2"
    status, body, _ = post(server.url + "/", {"inputs": "dogs", "parameters": {"max_new_tokens": 1}})
    assert body == [{"generated_text": "No"}]
    assert [r.path for r in server.requests] == ["/generate", "/"] and server.count("cats") == 1


def test_faults_by_index_and_by_prompt(tgi_stand_in):
    server = tgi_stand_in(lambda request: "ok", faults=[
        FaultRule(OVERLOADED, at=0), FaultRule(Fault(status=422, message="too long"), match="poison", times=None)])
    status, body, _ = post(server.url + "/generate", {"inputs": "a"})
    assert status == 429 and body == {"error": "Model is overloaded", "error_type": "overloaded"}
    assert post(server.url + "/generate", {"inputs": "a"})[0] == 200
    for _ in range(2):
        status, body, _ = post(server.url + "/v1/chat/completions", {"messages": [{"role": "user", "content": "poison q"}]})
        assert status == 422 and body["error_type"] == "validation" and body["error"] == "too long"
    assert [r.status for r in server.requests] == [429, 200, 422, 422]


def test_drop_delay_and_garbage(tgi_stand_in):
    server = tgi_stand_in(lambda request: "fine", faults={0: DROP, 1: Fault(delay_s=2), 2: Fault(text="#!garbage")})
    try:
        post(server.url + "/generate", {"inputs": "a"})
        raise AssertionError("the connection should have been dropped")
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
        pass
    started = time.monotonic()
    try:
        post(server.url + "/generate", {"inputs": "a"}, timeout=0.3)
        raise AssertionError("should time out")
    except (TimeoutError, urllib.error.URLError):
        assert time.monotonic() - started < 1.5
    assert post(server.url + "/generate", {"inputs": "a"})[1]["generated_text"] == "#!garbage"


def test_prefill_switch_tokenize_and_completions_echo(tgi_stand_in):
    server = tgi_stand_in(prefill_logprobs=False, logprob_fn=lambda text, position: -float(position))
    body = post(server.url + "/generate", {"inputs": "x y", "parameters": {"details": True, "decoder_input_details": True, "max_new_tokens": 1}})[1]
    assert body["details"]["prefill"] == []
    tokens = post(server.url + "/tokenize", {"inputs": "Hi, you"})[1]
    assert [(t["text"], t["start"], t["stop"]) for t in tokens] == [("<s>", 0, 0), ("Hi", 0, 2), (",", 2, 3), (" you", 3, 7)]
    choice = post(server.url + "/v1/completions", {"prompt": "Hi, you", "echo": True, "logprobs": 1, "max_tokens": 0})[1]["choices"][0]
    assert choice["text"] == "Hi, you"
    assert choice["logprobs"]["token_logprobs"] == [None, -1.0, -2.0] and choice["logprobs"]["text_offset"] == [0, 2, 3]


def test_over_capacity_is_429_and_stop_is_clean():
    with TGIStandIn(delay_s=0.0, max_concurrent_requests=0) as server:
        assert post(server.url + "/generate", {"inputs": "a"})[0] == 429
        with urllib.request.urlopen(server.url + "/info", timeout=5) as response:
            assert json.loads(response.read())["max_concurrent_requests"] == 0
        url = server.url
    try:
        post(url + "/generate", {"inputs": "a"}, timeout=1)
        raise AssertionError("server still answering after stop")
    except (urllib.error.URLError, ConnectionError):
        pass


def test_tokenize_round_trips():
    text = "Passage 3: the  answer\n is (b)."
    assert "".join(t for t, _, _ in tokenize(text)) == text
