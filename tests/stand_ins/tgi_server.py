"""A text-generation-inference (TGI) protocol stand-in for tests, on 127.0.0.1.

It speaks the routes a judge client uses — ``POST /generate``, ``POST /`` (list reply),
``POST /tokenize``, ``GET /info``, ``GET /health``, and the OpenAI-compatible
``POST /v1/chat/completions`` and ``POST /v1/completions`` (vLLM's ``echo`` + ``logprobs``
shape, used to score prompt tokens; those two in ``openai_routes.py``) — with TGI's error bodies and ``x-*`` headers.

What the judge "says" comes from ``responder(request_json) -> str | dict`` (a ``str`` is the
generated text; a ``dict`` is ``{"text": ..., "finish_reason": ...}``). ``prompt_of(request_json)``
gives the prompt text of any route so a responder can replay recorded answers by matching the
query in it. Faults (429 overloaded, 503, 422, delays past the client's timeout, garbage text,
a non-JSON body, a dropped connection) are scripted per request index or per matching prompt.
Every POST is recorded in ``server.requests`` (to assert that no call was paid twice; fault
indices count them); GETs (``/info``, ``/health``, ``/v1/models``: reads, never paid) go to
``server.reads``. Prompts over ``max_input_tokens`` (or with ``max_new_tokens`` over
``max_total_tokens``) earn TGI's 422, on every generation route; ``max_model_len`` (vLLM) is
offered in ``/v1/models`` when set.

Tokens are a deterministic stand-in: ``\\s?\\w+``, ``\\s?<punct>`` or a whitespace run; ids are
crc32-based; each token's log-probability is ``logprob_fn(token_text, position)``
(default ``-0.25 * (1 + crc32(text) % 8)``) so tests can compute expected scores by hand.
Like TGI, ``/generate`` and ``/tokenize`` prepend a BOS token (``<s>``, offsets 0..0) unless
``bos_token=None``; its prefill logprob is ``null``.

    with TGIStandIn(lambda req: "Yes") as server:
        client = AsyncInferenceClient(model=server.url)
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.stand_ins.openai_routes import OpenAIRoutes
from tests.stand_ins.tgi_protocol import (  # noqa: F401 - re-exported for tests
    DROP,
    ERROR_TYPES,
    GARBAGE,
    OVERLOADED,
    TOKEN_PATTERN,
    UNAVAILABLE,
    VALIDATION,
    Fault,
    FaultRule,
    RecordedRequest,
    cut,
    default_logprob,
    info_body,
    prompt_of,
    token_id,
    tokenize,
    too_long,
)


class TGIStandIn:
    """A TGI-protocol server in a background thread; a context manager (``start``/``stop``)."""

    def __init__(
        self,
        responder: Callable[[dict], str | dict] | None = None,
        *,
        faults: list[FaultRule] | dict[int, Fault] | None = None,
        delay_s: float = 0.0,
        model_id: str = "stand-in/judge",
        prefill_logprobs: bool = True,
        bos_token: str | None = "<s>",
        logprob_fn: Callable[[str, int], float] = default_logprob,
        max_concurrent_requests: int = 128,
        max_input_tokens: int = 4096,
        max_total_tokens: int = 8192,
        max_model_len: int | None = None,
        prompt_tokens_header: bool = True,  # False: no x-prompt-tokens (a proxy that drops TGI's headers)
    ):
        self.responder = responder or (lambda request: "stand-in answer")
        if isinstance(faults, dict):
            faults = [FaultRule(fault, at=index) for index, fault in faults.items()]
        self.faults: list[FaultRule] = list(faults or [])
        self.delay_s = delay_s
        self.model_id = model_id
        self.prefill_logprobs = prefill_logprobs
        self.bos_token = bos_token
        self.logprob_fn = logprob_fn
        self.max_concurrent_requests = max_concurrent_requests
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.max_model_len = max_model_len
        self.prompt_tokens_header = prompt_tokens_header
        self.requests: list[RecordedRequest] = []
        self.reads: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        assert self._server is not None, "stand-in not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> TGIStandIn:
        stand_in = self

        class Handler(_Handler):
            server_ref = stand_in

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> TGIStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------- queries for tests
    def prompts(self, path: str | None = None) -> list[str]:
        """Prompts of the recorded requests (optionally only those to ``path``)."""
        return [r.prompt or "" for r in self.requests if path is None or r.path == path]

    def count(self, needle: str) -> int:
        """How many recorded requests had ``needle`` in their prompt."""
        return sum(needle in (r.prompt or "") for r in self.requests)

    # ----------------------------------------------------------------- internals
    def _record(self, method: str, path: str, body: dict | None, headers: dict) -> tuple[RecordedRequest, Fault | None]:
        prompt = prompt_of(body) if body is not None else None
        with self._lock:
            recorded = self.requests if method == "POST" else self.reads
            record = RecordedRequest(len(recorded), method, path, body, prompt, headers)
            recorded.append(record)
            fault = None
            if method == "POST":
                for rule in self.faults:
                    if rule.times is not None and rule.used >= rule.times:
                        continue
                    if rule.at is not None and rule.at != record.index:
                        continue
                    if rule.match is not None and rule.match not in (prompt or ""):
                        continue
                    rule.used += 1
                    fault = rule.fault
                    break
            record.fault = fault
        return record, fault

    def _answer(self, request_json: dict) -> tuple[str, str | None]:
        answer = self.responder(request_json)
        if isinstance(answer, dict):
            return str(answer["text"]), answer.get("finish_reason")
        return str(answer), None

    def _token_details(self, text: str, offset: int = 0) -> list[dict]:
        return [
            {"id": token_id(t), "text": t, "logprob": self.logprob_fn(t, offset + i), "special": False}
            for i, (t, _, _) in enumerate(tokenize(text))
        ]

    def _sleep(self, seconds: float) -> bool:
        """Wait; False when the server is stopping."""
        return not self._stopping.wait(seconds) if seconds > 0 else True


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that gave up (timeout) is expected
        pass


class _Handler(OpenAIRoutes, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_ref: TGIStandIn
    current: RecordedRequest  # the request being answered
    timeout = 30  # an idle keep-alive connection ends after this

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
        pass

    def setup(self):
        super().setup()
        with self.server_ref._lock:
            self.server_ref._connections.add(self.connection)

    def finish(self):
        with self.server_ref._lock:
            self.server_ref._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    # ------------------------------------------------------------- plumbing
    def _send(self, status: int, body: dict | list | bytes, headers: dict | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.current.status = status  # recorded before the client can see the reply
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _error(self, status: int, message: str | None = None) -> None:
        error_type = ERROR_TYPES.get(status, "generation" if status < 502 else "unavailable")
        default = {429: "Model is overloaded", 422: "Input validation error", 503: "Service Unavailable"}
        body = {"error": message or default.get(status, f"stand-in error {status}"), "error_type": error_type}
        self._send(status, body)

    def do_GET(self):
        stand_in = self.server_ref
        self.current, _ = stand_in._record("GET", self.path, None, {k.lower(): v for k, v in self.headers.items()})
        if self.path == "/health":
            self._send(200, b"")
        elif self.path == "/info":
            self._send(200, info_body(stand_in.model_id, stand_in.max_concurrent_requests, stand_in.max_input_tokens,
                                      stand_in.max_total_tokens))
        elif self.path == "/v1/models":
            model = {"id": stand_in.model_id, "object": "model", "owned_by": "stand-in"}
            if stand_in.max_model_len is not None:
                model["max_model_len"] = stand_in.max_model_len
            self._send(200, {"object": "list", "data": [model]})
        else:
            self._send(404, {"error": f"no route GET {self.path}", "error_type": "not_found"})

    def do_POST(self):
        stand_in = self.server_ref
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = None
        self.current, fault = stand_in._record("POST", self.path, body, {k.lower(): v for k, v in self.headers.items()})
        with stand_in._lock:
            stand_in.in_flight += 1
            stand_in.max_in_flight = max(stand_in.max_in_flight, stand_in.in_flight)
            over_capacity = stand_in.in_flight > stand_in.max_concurrent_requests
        try:
            self._dispatch(body, fault, over_capacity)
        finally:
            with stand_in._lock:
                stand_in.in_flight -= 1

    def _dispatch(self, body: dict | None, fault: Fault | None, over_capacity: bool) -> int | None:
        stand_in = self.server_ref
        if over_capacity:  # TGI rejects at once when max_concurrent_requests are in flight
            self._error(429)
            return 429
        if not stand_in._sleep(stand_in.delay_s + (fault.delay_s if fault else 0.0)):
            return None
        if fault and fault.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return None
        if fault and fault.status:
            self._error(fault.status, fault.message)
            return fault.status
        if fault and fault.raw_body is not None:
            self._send(200, fault.raw_body)
            return 200
        if body is None:
            self._error(422, "Failed to deserialize the JSON body into the target type")
            return 422
        routes = {
            "/generate": self._generate, "/": self._generate, "/tokenize": self._tokenize,
            "/v1/chat/completions": self._chat, "/v1/completions": self._completions,
        }
        route = routes.get(self.path.split("?")[0])
        if route is None:
            self._send(404, {"error": f"no route POST {self.path}", "error_type": "not_found"})
            return 404
        return route(body, fault)

    def _text(self, body: dict, fault: Fault | None) -> tuple[str, str | None]:
        if fault and fault.text is not None:
            return fault.text, None
        return self.server_ref._answer(body)

    def _prompt_tokens(self, prompt: str, special: bool) -> list[tuple[str, int, int]]:
        tokens = tokenize(prompt)
        bos = self.server_ref.bos_token
        return ([(bos, 0, 0)] if special and bos else []) + tokens

    def _too_long(self, prompt_tokens: int, max_new_tokens: int) -> str | None:
        return too_long(prompt_tokens, max_new_tokens, self.server_ref.max_input_tokens, self.server_ref.max_total_tokens)

    # ------------------------------------------------------------- routes
    def _generate(self, body: dict, fault: Fault | None) -> int:
        stand_in = self.server_ref
        params = body.get("parameters") or {}
        if "inputs" not in body:
            self._error(422, "missing field `inputs`")
            return 422
        prompt_tokens = self._prompt_tokens(str(body["inputs"]), special=True)
        max_new_tokens = params.get("max_new_tokens") or 100
        problem = self._too_long(len(prompt_tokens), max_new_tokens)
        if params.get("decoder_input_details") and body.get("stream"):
            problem = "Input validation error: `decoder_input_details` == true is not supported when streaming tokens"
        if problem:
            self._error(422, problem)
            return 422
        started = time.monotonic()
        text, finish_reason = self._text(body, fault)
        text, cut_reason, generated = cut(text, max_new_tokens, params.get("stop") or [])
        reply: dict = {"generated_text": text}
        if params.get("details"):
            prefill = []
            if params.get("decoder_input_details") and stand_in.prefill_logprobs:
                prefill = [
                    {"id": 1 if (i == 0 and stand_in.bos_token and t == stand_in.bos_token) else token_id(t), "text": t,
                     "logprob": None if i == 0 else stand_in.logprob_fn(t, i)}
                    for i, (t, _, _) in enumerate(prompt_tokens)
                ]
            reply["details"] = {
                "finish_reason": finish_reason or cut_reason, "generated_tokens": generated,
                "seed": params.get("seed"), "prefill": prefill,
                "tokens": stand_in._token_details(text, len(prompt_tokens)), "top_tokens": None, "best_of_sequences": None,
            }
        elapsed_ms = int((time.monotonic() - started) * 1000)
        headers = {
            "x-prompt-tokens": len(prompt_tokens), "x-generated-tokens": generated, "x-compute-type": "stand-in",
            "x-queue-time": 0, "x-inference-time": elapsed_ms, "x-total-time": elapsed_ms,
        }
        if not stand_in.prompt_tokens_header:
            del headers["x-prompt-tokens"]
        self._send(200, [reply] if self.path == "/" else reply, headers)
        return 200

    def _tokenize(self, body: dict, fault: Fault | None) -> int:
        tokens = self._prompt_tokens(str(body.get("inputs", "")), special=True)
        bos = self.server_ref.bos_token
        self._send(200, [
            {"id": 1 if (i == 0 and bos and t == bos) else token_id(t), "text": t, "start": start, "stop": stop}
            for i, (t, start, stop) in enumerate(tokens)
        ])
        return 200
