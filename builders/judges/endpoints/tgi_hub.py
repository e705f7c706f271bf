"""The ``huggingface_hub`` transport of the TGI backend (``EndpointSpec.transport =
"huggingface_hub"``): ``AsyncInferenceClient.text_generation`` on an ``httpx2`` session we own.

Why the private override: ``AsyncInferenceClient`` gets its session from
``_get_async_client()``, and the hub's default session refuses every request while
``HF_HUB_OFFLINE=1`` (set by offline users whose judge weights sit in the cache) - but a judge
endpoint is not the Hub. Handing in our own ``httpx2.AsyncClient`` also lets a response hook
keep the headers (``x-prompt-tokens``, ``x-queue-time``) that ``text_generation`` drops. One
session per event loop, like ``builders.judges.endpoints.http``.

The reply is returned as TGI's JSON shape (``generated_text``, ``details`` with
``finish_reason``, ``generated_tokens``, ``prefill``) so ``TGIBackend`` parses one shape.
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

from builders.judges.endpoints.base import EndpointError, error_for_status

# Per-task holder the response hook fills with the last response's headers.
_RESPONSE_HEADERS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("tgi_response_headers", default=None)


async def _keep_headers(response: httpx2.Response) -> None:
    holder = _RESPONSE_HEADERS.get()
    if holder is not None:
        holder.clear()
        holder.update({k.lower(): v for k, v in response.headers.items()})


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


class HubTransport:
    def __init__(self, url: str, token: str | None, timeout_s: float):
        self.url = url
        self.token = token
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx2.AsyncClient | None = None
        self._client: _InferenceClient | None = None

    def _session(self) -> _InferenceClient:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None:
            self._http = httpx2.AsyncClient(event_hooks={"response": [_keep_headers]}, follow_redirects=True, timeout=None)
            self._client = _InferenceClient(self.url, self._http, self.token, self.timeout_s)
            self._loop = loop
        return self._client

    async def generate(self, prompt: str, parameters: dict) -> tuple[dict, dict]:
        headers: dict = {}
        token = _RESPONSE_HEADERS.set(headers)
        try:
            output = await self._session().text_generation(prompt, **parameters)
        except Exception as error:  # noqa: BLE001 - every failure becomes an EndpointError
            raise map_client_error(error, self.url) from error
        finally:
            _RESPONSE_HEADERS.reset(token)
        details = output.details
        reply: dict = {"generated_text": output.generated_text}
        if details is not None:
            reply["details"] = {
                "finish_reason": details.finish_reason,
                "generated_tokens": details.generated_tokens,
                "prefill": [{"text": t.text, "logprob": t.logprob} for t in details.prefill or []],
            }
        return reply, headers

    async def aclose(self) -> None:
        if self._client is not None and self._http is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
            await self._http.aclose()
        self._client = self._http = self._loop = None
