"""text-generation-inference ``/generate`` through ``huggingface_hub.AsyncInferenceClient``.

One ``generate`` call is one attempt: the prompt is the judge tokenizer's chat template (one
BOS: TGI adds special tokens itself) or the plain rendering of ``render_chat_prompt``;
``Constraint`` becomes TGI's ``grammar``; errors become ``EndpointError`` per TGI's contract
(429 overloaded, 422 validation never retried, 424/5xx server, timeouts, dropped connections).
Token counts come from ``details`` and the ``x-prompt-tokens`` header.

The HTTP session is our own ``httpx2.AsyncClient`` handed to the inference client: the judge
endpoint is not the Hugging Face Hub, so ``HF_HUB_OFFLINE=1`` (set by offline users who keep
their weights in the cache) must not block it, and we want the response headers.
"""

from __future__ import annotations

import asyncio
import contextvars
import json

import httpx2
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import (
    GenerationError,
    HfHubHTTPError,
    IncompleteGenerationError,
    InferenceTimeoutError,
    OverloadedError,
    TextGenerationError,
    ValidationError,
)

from builders.endpoints import EndpointSpec, error_for_status, render_chat_prompt
from builders.endpoints.base import Backend, EndpointError, GenerateRequest, Generation, ScoreRequest, TokenScore

# Per-task holder the response hook fills with the last response's headers.
_RESPONSE_HEADERS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("tgi_response_headers", default=None)

NO_PREFILL_MESSAGE = (
    "TGI returned an empty `prefill`: the server lacks --enable-prefill-logprobs (off by default since TGI 3.0), "
    "so it cannot give log-probabilities of prompt tokens. Restart it with --enable-prefill-logprobs, "
    "or score with a vLLM (openai kind) or local backend."
)


async def _keep_headers(response: httpx2.Response) -> None:
    holder = _RESPONSE_HEADERS.get()
    if holder is not None:
        holder.clear()
        holder.update({k.lower(): v for k, v in response.headers.items()})


def endpoint_http_client() -> httpx2.AsyncClient:
    """A session for judge endpoints: no Hub offline guard, response headers kept per task."""
    return httpx2.AsyncClient(event_hooks={"response": [_keep_headers]}, follow_redirects=True, timeout=None)


class _InferenceClient(AsyncInferenceClient):
    """``AsyncInferenceClient`` on a session we own (see the module docstring)."""

    def __init__(self, url: str, http: httpx2.AsyncClient, token: str | None, timeout: float):
        super().__init__(model=url, token=token, timeout=timeout)
        self._endpoint_http = http

    async def _get_async_client(self) -> httpx2.AsyncClient:
        return self._endpoint_http


def _status_of(error: BaseException) -> int | None:
    for candidate in (error, error.__cause__):
        if isinstance(candidate, HfHubHTTPError) and candidate.response is not None:
            return candidate.response.status_code
    return None


def map_client_error(error: BaseException, url: str) -> EndpointError:
    """An exception from ``huggingface_hub``/``httpx2`` -> ``EndpointError``."""
    if isinstance(error, EndpointError):
        return error
    if isinstance(error, (InferenceTimeoutError, httpx2.TimeoutException)):
        return EndpointError("timeout", f"no answer from {url} within the timeout")
    if isinstance(error, (TextGenerationError, HfHubHTTPError)):
        status = _status_of(error)
        message = str(error).strip() or type(error).__name__
        if status is not None:
            return error_for_status(status, message)
        if isinstance(error, OverloadedError):
            return EndpointError("overloaded", message)
        if isinstance(error, ValidationError):
            return EndpointError("validation", message)
        if isinstance(error, (GenerationError, IncompleteGenerationError)):
            return EndpointError("server", message)
        return EndpointError("server", message)
    if isinstance(error, httpx2.TransportError):
        return EndpointError("connection", f"{type(error).__name__} talking to {url}: {error}")
    if isinstance(error, (json.JSONDecodeError, KeyError, TypeError, ValueError)):
        return EndpointError("protocol", f"{url} answered something that is not a TGI response: {error!r}")
    raise error


class TGIBackend(Backend):
    supports_constraint = frozenset({"regex", "json"})

    def __init__(self, spec: EndpointSpec, tokenizer=None):
        if not spec.url:
            raise ValueError("a tgi endpoint needs `url` (e.g. http://127.0.0.1:8080)")
        self.spec = spec
        self.concurrency = spec.concurrency
        self.url = spec.url.rstrip("/")
        self.model_id = spec.model_id
        self.tokenizer = tokenizer
        self._token = spec.api_key()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx2.AsyncClient | None = None
        self._client: _InferenceClient | None = None

    def _session(self) -> tuple[_InferenceClient, httpx2.AsyncClient]:
        """The HTTP session of the running event loop (one per loop: an ``asyncio.run`` per
        ``Annotator.run_sync`` call must not reuse connections of a closed loop)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None or self._http is None:
            self._http = endpoint_http_client()
            self._client = _InferenceClient(self.url, self._http, self._token, self.spec.timeout_s)
            self._loop = loop
        return self._client, self._http

    def render(self, messages) -> str:
        return render_chat_prompt(messages, self.tokenizer, for_server_that_adds_special_tokens=True)

    def count_tokens(self, text: str) -> int | None:
        if self.tokenizer is None:
            return None
        return len(self.tokenizer(text, add_special_tokens=True).input_ids)

    async def generate(self, request: GenerateRequest) -> Generation:
        prompt = self.render(request.messages)
        max_new_tokens = request.max_new_tokens
        if self.spec.max_new_tokens is not None:
            max_new_tokens = min(max_new_tokens, self.spec.max_new_tokens)
        grammar = None
        if request.constraint is not None:
            grammar = {"type": request.constraint.kind, "value": request.constraint.value}
        headers: dict = {}
        token = _RESPONSE_HEADERS.set(headers)
        client, _ = self._session()
        try:
            output = await client.text_generation(
                prompt,
                details=True,
                max_new_tokens=max_new_tokens,
                # TGI wants temperature > 0; at or below 0 we ask for greedy decoding
                temperature=request.temperature if request.temperature > 0 else None,
                do_sample=request.temperature > 0,
                seed=request.seed,
                stop=list(request.stop) or None,
                grammar=grammar,
            )
        except Exception as error:  # noqa: BLE001 - every failure becomes an EndpointError
            raise map_client_error(error, self.url) from error
        finally:
            _RESPONSE_HEADERS.reset(token)
        details = output.details
        prompt_tokens = _int(headers.get("x-prompt-tokens"))
        if prompt_tokens is None and details is not None and details.prefill:
            prompt_tokens = len(details.prefill)
        if prompt_tokens is None:
            prompt_tokens = self.count_tokens(prompt)
        completion_tokens = details.generated_tokens if details is not None else _int(headers.get("x-generated-tokens"))
        meta = {"url": self.url}
        for header in ("x-queue-time", "x-inference-time", "x-total-time"):
            if header in headers:
                meta[header[2:].replace("-", "_") + "_ms"] = _int(headers[header])
        return Generation(
            text=output.generated_text,
            finish_reason=details.finish_reason if details is not None else "unknown",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            meta=meta,
        )

    async def score(self, request: ScoreRequest) -> list[TokenScore]:
        """Log-probabilities of the continuation's tokens from TGI's prefill details; the
        token <-> character map comes from ``POST /tokenize`` on the same text (its indices
        match ``prefill``). A token that straddles the prompt/continuation boundary is kept,
        with its start clipped to 0."""
        prompt = self.render(request.messages)
        text = prompt + request.continuation
        client, http = self._session()
        try:
            output = await client.text_generation(text, details=True, decoder_input_details=True, max_new_tokens=1)
            response = await http.post(
                f"{self.url}/tokenize", json={"inputs": text}, headers=self._auth(), timeout=self.spec.timeout_s
            )
            if response.status_code >= 400:
                raise error_for_status(response.status_code, f"POST /tokenize: {response.text[:300]}")
            offsets = response.json()
        except Exception as error:  # noqa: BLE001
            raise map_client_error(error, self.url) from error
        prefill = output.details.prefill if output.details is not None else []
        if not prefill:
            raise EndpointError("validation", NO_PREFILL_MESSAGE, retryable=False)
        if len(offsets) != len(prefill):
            raise EndpointError(
                "protocol",
                f"{self.url}: /tokenize gave {len(offsets)} tokens but prefill has {len(prefill)}; "
                f"they must come from the same tokenizer",
            )
        start = len(prompt)
        scores = []
        for offset, token in zip(offsets, prefill):
            if offset["stop"] <= start or offset["stop"] <= offset["start"]:
                continue  # a prompt token, or a zero-width special token
            if token.logprob is None:
                raise EndpointError("protocol", f"{self.url}: no logprob for continuation token {token.text!r}")
            scores.append(TokenScore(token.text, float(token.logprob), max(offset["start"] - start, 0), offset["stop"] - start))
        if request.continuation and (not scores or scores[-1].end != len(request.continuation)):
            raise EndpointError("protocol", f"{self.url}: /tokenize offsets do not cover the continuation {request.continuation!r}")
        return scores

    async def info(self) -> dict:
        """``GET /info``: model_id, max_concurrent_requests, max_input_tokens, max_total_tokens, ..."""
        _, http = self._session()
        try:
            response = await http.get(f"{self.url}/info", headers=self._auth(), timeout=self.spec.timeout_s)
            if response.status_code >= 400:
                raise error_for_status(response.status_code, f"GET /info: {response.text[:300]}")
            return response.json()
        except Exception as error:  # noqa: BLE001
            raise map_client_error(error, self.url) from error

    def _auth(self) -> dict:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def aclose(self) -> None:
        if self._client is not None and self._http is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
            await self._http.aclose()
        self._client = self._http = self._loop = None


def _int(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None
