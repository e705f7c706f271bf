"""The HTTP transport every remote judge backend shares: ``aiohttp``, one ``ClientSession`` per
event loop, an unlimited keep-alive pool, and one mapping of failures to ``EndpointError``.

Why aiohttp and not ``huggingface_hub``/``httpx2``: measured on the 2-core build machine at 64+
requests in flight (``bench/annotate_throughput.py``), ``AsyncInferenceClient.text_generation``
costs 3.4-4.8 CPU-ms per request (two worker-thread hops per call; httpx2's default pool keeps
20 idle connections, so above 20 in flight every call opens a connection and resolves its
host on a thread) while a plain aiohttp session costs ~0.9 CPU-ms. At a few hundred answers a
second that difference is the client's whole CPU budget.

Sessions: an aiohttp session is bound to the event loop that made it. ``HttpClient.session()``
makes one per running loop, so a backend built once can serve several ``asyncio.run`` calls
(``Annotator.run_sync`` twice, a CLI that runs stages one after the other); a session whose
loop has closed is dropped (its sockets went with the loop). ``aclose()`` closes the current
loop's session; the backend stays usable and opens a new one on its next call.

Failures -> ``EndpointError`` (TGI's contract, ``builders.judges.endpoints.base.error_for_status``):

- HTTP status >= 400: ``error_for_status(status, message)``; the message is the body's
  ``error`` (TGI: a string; OpenAI: ``{"message": ...}``) or the first 500 characters of it;
- no complete answer within ``timeout_s`` (connect + send + read): ``timeout``;
- refused, reset or dropped connections, a server that closed mid-answer: ``connection``;
- a 2xx body that is not JSON (a proxy's HTML page): ``protocol`` (not retried).
"""

from __future__ import annotations

import asyncio
import json
import weakref

import aiohttp

from builders.judges.endpoints.base import EndpointError, error_for_status


def error_message(body: bytes, reason: str | None = None) -> str:
    """The readable part of an error body: TGI's ``{"error": "..."}``, OpenAI's
    ``{"error": {"message": ...}}``, else the raw text (500 characters at most)."""
    text = body.decode("utf-8", "replace")
    try:
        payload = json.loads(text)
    except ValueError:
        return text[:500] or (reason or "")
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error)[:500]
        return str(error or payload.get("message") or payload)[:500]
    return str(payload)[:500]


class HttpClient:
    """JSON over HTTP to one server (``base_url``), with the bearer token in ``headers``."""

    def __init__(self, base_url: str, *, timeout_s: float, headers: dict | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
            weakref.WeakKeyDictionary()
        )

    def session(self) -> aiohttp.ClientSession:
        """The session of the running event loop (made on first use in that loop)."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            for old_loop in [old for old in self._sessions if old.is_closed()]:
                _forget(self._sessions.pop(old_loop))
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=None)
            session = aiohttp.ClientSession(
                connector=connector, headers=self.headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                json_serialize=json.dumps, auto_decompress=True,
            )
            self._sessions[loop] = session
        return session

    async def request(self, method: str, route: str, body: dict | None = None,
                      *, timeout_s: float | None = None) -> tuple[object, dict]:
        """``(parsed JSON body, lower-cased response headers)``; every failure is an ``EndpointError``."""
        url = f"{self.base_url}{route}"
        options = {"timeout": aiohttp.ClientTimeout(total=timeout_s)} if timeout_s is not None else {}
        try:
            async with self.session().request(method, url, json=body, **options) as response:
                raw = await response.read()
                status, reason = response.status, response.reason
                headers = {key.lower(): value for key, value in response.headers.items()}
        except TimeoutError as error:
            raise EndpointError("timeout", f"no answer from {url} within {timeout_s or self.timeout_s} s") from error
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as error:
            raise EndpointError("connection", f"{type(error).__name__} talking to {url}: {error}") from error
        except aiohttp.ClientResponseError as error:  # malformed status line / headers
            raise EndpointError("protocol", f"{url} answered something that is not HTTP: {error}") from error
        if status >= 400:
            raise error_for_status(status, f"{method} {route}: {error_message(raw, reason)}")
        try:
            return json.loads(raw), headers
        except ValueError as error:
            raise EndpointError("protocol", f"{url} answered something that is not JSON: {raw[:200]!r}") from error

    async def post(self, route: str, body: dict, *, timeout_s: float | None = None) -> tuple[object, dict]:
        return await self.request("POST", route, body, timeout_s=timeout_s)

    async def get(self, route: str, *, timeout_s: float | None = None) -> tuple[object, dict]:
        return await self.request("GET", route, timeout_s=timeout_s)

    async def aclose(self) -> None:
        """Close the running loop's session (and forget those of closed loops)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        session = self._sessions.pop(loop, None) if loop is not None else None
        if session is not None and not session.closed:
            await session.close()
        for old_loop in [old for old in self._sessions if old.is_closed()]:
            _forget(self._sessions.pop(old_loop))


def _forget(session: aiohttp.ClientSession) -> None:
    """Drop a session whose event loop has closed: its sockets closed with the loop and it can
    no longer be awaited, so only the connector's bookkeeping is cleared (no 'unclosed' warning)."""
    connector = session.connector
    if connector is not None:
        for connections in connector._conns.values():  # noqa: SLF001 - the loop that owned them is gone
            for protocol, _ in connections:
                transport = protocol.transport  # its close() needs the dead loop: close the socket itself
                if transport is not None and transport._sock is not None:  # noqa: SLF001
                    transport._sock.close()  # noqa: SLF001
                    transport._sock = None  # noqa: SLF001 - closed: no 'unclosed transport' warning
        connector._conns.clear()  # noqa: SLF001
        connector._closed = True  # noqa: SLF001
    session._connector = None  # noqa: SLF001
