"""A lean aiohttp transport for the judge protocols, to measure what the HTTP client costs.

``builders.endpoints.tgi`` goes through ``huggingface_hub.AsyncInferenceClient`` (which hops to
a worker thread on every call) and ``builders.endpoints.openai`` through ``httpx2`` (whose
connection pool scans every connection on every request); at 64+ requests in flight on a busy
2-core machine both cost several CPU-ms per request. These two backends speak the same routes
with one shared ``aiohttp`` session (already a project dependency), parse the same fields and
raise the same ``EndpointError`` kinds (``builders.endpoints.error_for_status``), so the
benchmark can show the fleet and annotator with and without that cost. They cover what the
benchmark sends (no constraints, no scoring); they are not the builder's backends.
"""

from __future__ import annotations

import asyncio

import aiohttp

from builders.endpoints import error_for_status, render_chat_prompt
from builders.endpoints.base import Backend, EndpointError, GenerateRequest, Generation


class _LeanBackend(Backend):
    def __init__(self, url: str, model_id: str, timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self.model_id = model_id
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                                  connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def _post(self, route: str, body: dict) -> tuple[dict, dict]:
        try:
            async with self._http().post(f"{self.url}{route}", json=body) as response:
                if response.status >= 400:
                    raise error_for_status(response.status, f"POST {route}: {(await response.text())[:300]}")
                return await response.json(content_type=None), dict(response.headers)
        except asyncio.TimeoutError as error:
            raise EndpointError("timeout", f"no answer from {self.url} within {self.timeout_s} s") from error
        except (aiohttp.ClientConnectionError, OSError) as error:
            raise EndpointError("connection", f"{type(error).__name__} talking to {self.url}: {error}") from error
        except (aiohttp.ContentTypeError, ValueError) as error:
            raise EndpointError("protocol", f"{self.url} answered something that is not JSON: {error!r}") from error

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class LeanTGIBackend(_LeanBackend):
    async def generate(self, request: GenerateRequest) -> Generation:
        body = {"inputs": render_chat_prompt(request.messages),
                "parameters": {"max_new_tokens": request.max_new_tokens, "details": True, "seed": request.seed}}
        payload, headers = await self._post("/generate", body)
        details = payload.get("details") or {}
        meta = {"url": self.url}
        for header in ("x-queue-time", "x-inference-time"):
            if header in headers:
                meta[header[2:].replace("-", "_") + "_ms"] = int(float(headers[header]))
        return Generation(payload["generated_text"], details.get("finish_reason", "unknown"),
                          int(headers["x-prompt-tokens"]) if "x-prompt-tokens" in headers else None,
                          details.get("generated_tokens"), meta)


class LeanChatBackend(_LeanBackend):
    async def generate(self, request: GenerateRequest) -> Generation:
        body = {"model": self.model_id, "messages": [dict(m) for m in request.messages],
                "max_tokens": request.max_new_tokens, "temperature": request.temperature, "seed": request.seed}
        payload, _ = await self._post("/v1/chat/completions", body)
        choice, usage = payload["choices"][0], payload.get("usage") or {}
        return Generation((choice.get("message") or {}).get("content") or "", choice.get("finish_reason") or "unknown",
                          usage.get("prompt_tokens"), usage.get("completion_tokens"), {"url": self.url})
