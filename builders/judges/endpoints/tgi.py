"""text-generation-inference ``POST /generate``.

One ``generate`` call is one attempt: the prompt is the judge tokenizer's chat template (one
BOS: TGI adds special tokens itself) or the plain rendering of ``render_chat_prompt``;
``Constraint`` becomes TGI's ``grammar``; errors become ``EndpointError`` per TGI's contract
(429 overloaded, 422 validation never retried, 424/5xx server, timeouts, dropped connections).
Token counts come from ``details`` and the ``x-prompt-tokens`` header.

Transports (``EndpointSpec.transport``):

- ``"aiohttp"`` (default): the shared transport of ``builders.judges.endpoints.http`` - the JSON body
  ``huggingface_hub`` would send, to ``/generate``. Measured ~0.9 CPU-ms per request against
  3.4-4.8 for the ``huggingface_hub`` client at 64+ in flight on 2 cores (see that module), and
  ``HF_HUB_OFFLINE=1`` does not concern it (the judge endpoint is not the Hub).
- ``"huggingface_hub"``: ``huggingface_hub.AsyncInferenceClient.text_generation`` (the client
  the issue names), for users who want its request building. Its session is our own
  ``httpx2.AsyncClient`` handed in by overriding ``AsyncInferenceClient._get_async_client``
  (private; kept in ``builders.judges.endpoints.tgi_hub``): the hub's default session refuses every request under ``HF_HUB_OFFLINE=1``, which
  offline users set for their weights cache, and we need the response headers. It posts to the
  server's ``/`` route (TGI's list reply), which is why the stand-in records ``/`` for it.
"""

from __future__ import annotations

from builders.judges.endpoints.base import Backend, EndpointError, GenerateRequest, Generation, Scored, ScoreRequest, TokenScore
from builders.judges.endpoints.chat import render_chat_prompt
from builders.judges.endpoints.http import HttpClient
from builders.judges.endpoints.shared_read import LIMIT_RETRY_S, SharedRead
from builders.judges.endpoints.spans import batched_tokenizer_spans
from builders.judges.endpoints.spec import DIRECT_CONCURRENCY, EndpointSpec, input_limit_from

NO_PREFILL_MESSAGE = (
    "TGI returned an empty `prefill`: the server lacks --enable-prefill-logprobs (off by default since TGI 3.0), "
    "so it cannot give log-probabilities of prompt tokens. Restart it with --enable-prefill-logprobs, "
    "or score with a vLLM (openai kind) or local backend."
)


def generate_parameters(request: GenerateRequest, max_new_tokens: int) -> dict:
    """TGI's ``parameters`` for a request (what ``huggingface_hub`` sends, None fields left out)."""
    parameters: dict = {"details": True, "max_new_tokens": max_new_tokens,
                        # TGI wants temperature > 0; at or below 0 we ask for greedy decoding
                        "do_sample": request.temperature > 0}
    if request.temperature > 0:
        parameters["temperature"] = request.temperature
    if request.seed is not None:
        parameters["seed"] = request.seed
    if request.stop:
        parameters["stop"] = list(request.stop)
    if request.constraint is not None:
        parameters["grammar"] = {"type": request.constraint.kind, "value": request.constraint.value}
    return parameters


class TGIBackend(Backend):
    kind = "tgi"
    supports_constraint = frozenset({"regex", "json"})

    def __init__(self, spec: EndpointSpec, tokenizer=None):
        if not spec.url:
            raise ValueError("a tgi endpoint needs `url` (e.g. http://127.0.0.1:8080)")
        if spec.transport not in ("aiohttp", "huggingface_hub"):
            raise ValueError(f"tgi transport {spec.transport!r} is not 'aiohttp' or 'huggingface_hub'")
        self.spec = spec
        self.concurrency = spec.concurrency or DIRECT_CONCURRENCY  # used without a fleet only
        self.url = spec.url.rstrip("/")
        self.model_id = spec.model_id
        self.tokenizer = tokenizer
        token = spec.api_key()
        self.http = HttpClient(self.url, timeout_s=spec.timeout_s,
                               headers={"Authorization": f"Bearer {token}"} if token else {})
        self._limits = SharedRead(self._read_limits, LIMIT_RETRY_S)  # /info's max_input_tokens / max_total_tokens
        self._hub = None
        if spec.transport == "huggingface_hub":
            from builders.judges.endpoints.tgi_hub import HubTransport

            self._hub = HubTransport(self.url, token, spec.timeout_s)

    def render(self, messages) -> str:
        return render_chat_prompt(messages, self.tokenizer, for_server_that_adds_special_tokens=True)

    def count_tokens(self, text: str) -> int | None:
        if self.tokenizer is None:
            return None
        return len(self.tokenizer(text, add_special_tokens=True).input_ids)

    def prompt_text(self, messages) -> str:
        return self.render(messages)

    async def token_spans(self, text: str) -> list[tuple[int, int]] | None:
        """The judge tokenizer's spans (with the special tokens TGI adds), else ``POST /tokenize``'s."""
        if self.tokenizer is not None:
            return await batched_tokenizer_spans(self.tokenizer, text, add_special_tokens=True)
        payload, _ = await self.http.post("/tokenize", {"inputs": text})
        try:
            return [(int(t["start"]), int(t["stop"])) for t in payload]
        except (KeyError, TypeError, ValueError) as error:
            raise EndpointError("protocol", f"{self.url}/tokenize answered {str(payload)[:300]}") from error

    async def input_limit(self, max_new_tokens: int) -> int | None:
        """``spec.max_input_tokens``, else ``/info``: min(max_input_tokens, max_total_tokens -
        max_new_tokens). /info is read once; a server that does not answer it gives None."""
        if self.spec.max_input_tokens is not None:
            return self.spec.max_input_tokens
        limits = await self._limits.get()
        if limits is None:
            return None  # the server did not answer: unknown for now, asked again LIMIT_RETRY_S later
        if self.spec.max_new_tokens is not None:
            max_new_tokens = min(max_new_tokens, self.spec.max_new_tokens)
        return input_limit_from(limits["max_input_tokens"], limits["max_total_tokens"], max_new_tokens)

    async def _generate(self, prompt: str, parameters: dict) -> tuple[dict, dict]:
        """``(TGI /generate reply, response headers)`` through the configured transport."""
        if self._hub is not None:
            return await self._hub.generate(prompt, parameters)
        payload, headers = await self.http.post("/generate", {"inputs": prompt, "parameters": parameters})
        if isinstance(payload, list) and len(payload) == 1:
            payload = payload[0]
        if not isinstance(payload, dict) or not isinstance(payload.get("generated_text"), str):
            raise EndpointError("protocol", f"{self.url}/generate answered without `generated_text`: {str(payload)[:300]}")
        return payload, headers

    async def generate(self, request: GenerateRequest) -> Generation:
        prompt = self.render(request.messages)
        max_new_tokens = request.max_new_tokens
        if self.spec.max_new_tokens is not None:
            max_new_tokens = min(max_new_tokens, self.spec.max_new_tokens)
        payload, headers = await self._generate(prompt, generate_parameters(request, max_new_tokens))
        details = payload.get("details") or {}
        prompt_tokens, source = await self._prompt_tokens(prompt, headers, details)
        completion_tokens = details.get("generated_tokens") if details else _int(headers.get("x-generated-tokens"))
        meta = self._meta(headers)
        meta["prompt_tokens_source"] = source
        return Generation(
            text=payload["generated_text"],
            finish_reason=details.get("finish_reason") or "unknown",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            meta=meta,
        )

    async def _prompt_tokens(self, prompt: str, headers: dict, details: dict) -> tuple[int | None, str]:
        """``(prompt tokens, where the count came from)``: TGI's ``x-prompt-tokens`` header; else
        the length of ``details.prefill`` when the server filled it; else the judge's
        ``tokenizer``; else ``POST /tokenize`` (one extra request, made only when the server
        reported nothing: a proxy that drops headers); ``(None, "not reported")`` when that fails."""
        header = _int(headers.get("x-prompt-tokens"))
        if header is not None:
            return header, "x-prompt-tokens"
        if details.get("prefill"):
            return len(details["prefill"]), "details.prefill"
        if self.tokenizer is not None:
            return self.count_tokens(prompt), "tokenizer"
        try:
            tokens, _ = await self.http.post("/tokenize", {"inputs": prompt})
        except EndpointError:
            return None, "not reported"
        return (len(tokens), "/tokenize") if isinstance(tokens, list) else (None, "not reported")

    def _meta(self, headers: dict) -> dict:
        """The endpoint's url and TGI's timing headers (``queue_time_ms``, ...)."""
        meta = {"url": self.url}
        for header in ("x-queue-time", "x-inference-time", "x-total-time"):
            if header in headers:
                meta[header[2:].replace("-", "_") + "_ms"] = _int(headers[header])
        return meta

    async def score(self, request: ScoreRequest) -> Scored:
        """Log-probabilities of the continuation's tokens from TGI's prefill details; the
        token <-> character map comes from ``POST /tokenize`` on the same text (its indices
        match ``prefill``). A token that straddles the prompt/continuation boundary is kept,
        with its start clipped to 0. Cost: ``x-prompt-tokens`` (else the prefill's length) and
        ``x-generated-tokens`` (else the details' count; one token is generated)."""
        prompt = self.render(request.messages)
        text = prompt + request.continuation
        output, headers = await self._generate(text, {"details": True, "decoder_input_details": True, "max_new_tokens": 1})
        offsets, _ = await self.http.post("/tokenize", {"inputs": text})
        prefill = (output.get("details") or {}).get("prefill") or []
        if not prefill:
            raise EndpointError("validation", NO_PREFILL_MESSAGE, retryable=False)
        if not isinstance(offsets, list) or len(offsets) != len(prefill):
            raise EndpointError(
                "protocol",
                f"{self.url}: /tokenize gave {len(offsets) if isinstance(offsets, list) else offsets!r} tokens but "
                f"prefill has {len(prefill)}; they must come from the same tokenizer",
            )
        start = len(prompt)
        scores = []
        for offset, token in zip(offsets, prefill):
            if offset["stop"] <= start or offset["stop"] <= offset["start"]:
                continue  # a prompt token, or a zero-width special token
            if token.get("logprob") is None:
                raise EndpointError("protocol", f"{self.url}: no logprob for continuation token {token.get('text')!r}")
            scores.append(TokenScore(token["text"], float(token["logprob"]), max(offset["start"] - start, 0), offset["stop"] - start))
        if request.continuation and (not scores or scores[-1].end != len(request.continuation)):
            raise EndpointError("protocol", f"{self.url}: /tokenize offsets do not cover the continuation {request.continuation!r}")
        prompt_tokens = _int(headers.get("x-prompt-tokens"))
        completion_tokens = _int(headers.get("x-generated-tokens"))
        if completion_tokens is None:
            completion_tokens = (output.get("details") or {}).get("generated_tokens")
        return Scored(scores, prompt_tokens=len(prefill) if prompt_tokens is None else prompt_tokens,
                      completion_tokens=completion_tokens, meta=self._meta(headers))

    async def _read_limits(self) -> dict | None:
        """/info's limits; None when the server did not answer (a retryable error)."""
        try:
            info, _ = await self.http.get("/info", timeout_s=min(self.spec.timeout_s, 10.0))
            info = info if isinstance(info, dict) else {}
        except EndpointError as error:
            if error.retryable:
                return None
            info = {}  # no /info route (a proxy, an older server): no limit from it
        return {k: info.get(k) for k in ("max_input_tokens", "max_total_tokens")}

    async def info(self) -> dict:
        """``GET /info``: model_id, max_concurrent_requests, max_input_tokens, max_total_tokens, ..."""
        payload, _ = await self.http.get("/info")
        if not isinstance(payload, dict):
            raise EndpointError("protocol", f"{self.url}/info answered {str(payload)[:300]}")
        return payload

    async def aclose(self) -> None:
        """Closes this event loop's connections; the backend stays usable (a new loop, a new session)."""
        await self.http.aclose()
        if self._hub is not None:
            await self._hub.aclose()


def _int(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None

