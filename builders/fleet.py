"""Several judge endpoints behind one ``Backend``: keep every endpoint full, lose nothing.

A ``Fleet`` holds any mix of backends (TGI ``/generate``, OpenAI-compatible chat, local) that
serve the same judge. For each endpoint it keeps an in-flight limit:

- it starts at ``/info``'s ``max_concurrent_requests`` when the server offers it (TGI), which is
  then also the ceiling; otherwise at ``FleetConfig.default_limit`` under ``max_limit``;
- it adapts by AIMD: +1 per success while below the slow-start threshold, then +1 per
  ``limit`` successes (additive increase), but only while the limit is what holds requests
  back; a 429, or an ``x-queue-time`` that rises past ``queue_slack_ms`` and
  ``queue_ratio`` x the inference time, multiplies it by ``decrease`` (once per round trip:
  requests sent before the last cut do not cut again).

Each call goes to the least-loaded healthy endpoint (in-flight / limit) with a free slot, or
waits, first come first served, for one. A call that meets a 429 is re-sent (the cut limit
decides where; an endpoint full of other clients' calls counts as tried); one that meets a 5xx, a timeout, a dropped connection or a protocol error is
moved to an endpoint it has not tried yet. Neither counts as a failed attempt for the caller
while capacity exists elsewhere; when none does (every endpoint tried, dead, or
``max_moves`` re-sends spent) the last error surfaces to the caller, whose retry path
(``builders.annotate``) backs off and tries again. A 422 is never moved: the request is wrong.

An endpoint is dead when ``dead_after`` consecutive attempts failed and no call sent before
the first of them is still being served (fast 503s beside slow answers are not death). A dead
endpoint gets no calls; a task probes ``GET /health`` on a jittered exponential backoff and
rejoins it (with a fresh ``/info`` limit, in slow start). Endpoints without a URL rejoin on the backoff with limit 1
(one request tests them). No threads: everything runs on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field

import aiohttp

from builders.endpoints import EndpointSpec, make_backend
from builders.endpoints.base import Backend, EndpointError, GenerateRequest, Generation, ScoreRequest, TokenScore


@dataclass
class FleetConfig:
    default_limit: int = 8  # starting in-flight limit of an endpoint without /info
    max_limit: int = 512  # ceiling of an endpoint without /info
    decrease: float = 0.8  # multiplicative decrease on 429 / rising queue time
    queue_slack_ms: float = 100.0  # queue time tolerated before it counts as congestion ...
    queue_ratio: float = 0.5  # ... when it is also above this share of the inference time
    dead_after: int = 8  # consecutive failed attempts that mark an endpoint dead
    max_moves: int = 16  # re-sends inside the fleet per call before the error surfaces
    concurrency: int = 1024  # calls a caller should have in flight: the fleet queues them for slots
    probe_first_s: float = 0.5  # backoff of the /health probe of a dead endpoint ...
    probe_max_s: float = 30.0  # ... doubling up to this
    probe_timeout_s: float = 5.0


@dataclass
class FleetEndpoint:
    """One member: the backend, and the server's base URL for /info and /health (None: local)."""

    backend: Backend
    url: str | None = None
    name: str | None = None
    default_limit: int | None = None  # starting limit without /info (None: FleetConfig.default_limit)


@dataclass
class EndpointStats:
    """What one endpoint did (the cost ledger reads these)."""

    name: str
    url: str | None
    limit: float
    ceiling: float
    info_limit: int | None  # /info's max_concurrent_requests, when offered
    healthy: bool
    max_input_tokens: int | None = None  # /info's max_input_tokens, when offered
    in_flight: int = 0
    max_in_flight: int = 0
    attempts: int = 0  # calls sent
    succeeded: int = 0
    overloaded: int = 0  # 429s
    failed: int = 0  # other failed attempts (5xx, timeouts, connections, protocol, validation)
    moved: int = 0  # failed attempts re-sent elsewhere inside the fleet (never seen by the caller)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    busy_s: float = 0.0  # sum of attempt durations
    decreases: int = 0
    deaths: int = 0
    rejoins: int = 0
    failures_by_kind: dict = field(default_factory=dict)
    last_error: str = ""


class _Member:
    def __init__(self, index: int, endpoint: FleetEndpoint, config: FleetConfig):
        self.index = index
        self.backend = endpoint.backend
        self.url = endpoint.url.rstrip("/") if endpoint.url else None
        if self.url and self.url.endswith("/v1"):
            self.url = self.url[: -len("/v1")]
        name = endpoint.name or self.url or f"{type(endpoint.backend).__name__}-{index}"
        self.stats = EndpointStats(name=name, url=self.url, limit=float(config.default_limit),
                                   ceiling=float(config.max_limit), info_limit=None, healthy=True)
        self.default_limit = endpoint.default_limit or config.default_limit
        self.threshold = math.inf  # slow-start threshold
        self.decreased_at = -math.inf
        self.consecutive_failures = 0
        self.streak_started = 0.0  # when the current run of failures began
        self.sent: dict[int, float] = {}  # ticket -> send time of each call in flight
        self.probe: asyncio.Task | None = None

    @property
    def free(self) -> int:
        return max(1, math.floor(self.stats.limit)) - self.stats.in_flight

    @property
    def load(self) -> float:
        return self.stats.in_flight / self.stats.limit


@dataclass
class _Waiter:
    future: asyncio.Future
    tried: set
    last_error: EndpointError | None


class Fleet(Backend):
    def __init__(self, endpoints: list[FleetEndpoint], config: FleetConfig | None = None, model_id: str | None = None):
        if not endpoints:
            raise ValueError("a fleet needs at least one endpoint")
        self.config = config or FleetConfig()
        self.members = [_Member(i, e, self.config) for i, e in enumerate(endpoints)]
        self.concurrency = self.config.concurrency
        self.model_id = model_id or endpoints[0].backend.model_id
        self.supports_constraint = frozenset.intersection(*(frozenset(e.backend.supports_constraint) for e in endpoints))
        self._waiters: deque[_Waiter] = deque()
        self._started: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._random = random.Random(0)
        self._tickets = itertools.count()

    @classmethod
    def from_specs(cls, specs: list[EndpointSpec], config: FleetConfig | None = None) -> "Fleet":
        """A fleet of the recipe's endpoints for one judge (``spec.concurrency`` is the starting
        limit of an endpoint that does not offer ``/info``)."""
        endpoints = [FleetEndpoint(make_backend(spec), url=spec.url, default_limit=spec.concurrency) for spec in specs]
        return cls(endpoints, config, model_id=specs[0].model_id if specs else None)

    # --- Backend ----------------------------------------------------------------------------
    async def generate(self, request: GenerateRequest) -> Generation:
        return await self._route(lambda backend: backend.generate(request))

    async def score(self, request: ScoreRequest) -> list[TokenScore]:
        return await self._route(lambda backend: backend.score(request))

    def count_tokens(self, text: str) -> int | None:
        return self.members[0].backend.count_tokens(text)

    async def input_limit(self, max_new_tokens: int) -> int | None:
        """The smallest input limit among the members that state one: a prompt must fit every
        endpoint it may be moved to. None when no member states one."""
        limits = await asyncio.gather(*(m.backend.input_limit(max_new_tokens) for m in self.members))
        known = [x for x in limits if x is not None]
        return min(known) if known else None

    def prompt_text(self, messages) -> str:
        return self.members[0].backend.prompt_text(messages)

    async def token_spans(self, text: str) -> list[tuple[int, int]] | None:
        """The first member that can tokenize (a local tokenizer, or a healthy server's route)."""
        last: EndpointError | None = None
        for member in sorted(self.members, key=lambda m: not m.stats.healthy):
            try:
                spans = await member.backend.token_spans(text)
            except EndpointError as error:
                last = error
                continue
            if spans is not None:
                return spans
        if last is not None:
            raise last
        return None

    def stats(self) -> list[EndpointStats]:
        return [EndpointStats(**{**vars(m.stats), "failures_by_kind": dict(m.stats.failures_by_kind)}) for m in self.members]

    async def aclose(self) -> None:
        self._closed = True
        for member in self.members:
            if member.probe is not None:
                member.probe.cancel()
        self._fail_waiters()
        if self._session is not None:
            await self._session.close()
        for member in self.members:
            await member.backend.aclose()

    # --- start: read /info ------------------------------------------------------------------
    async def start(self) -> None:
        """Read each endpoint's ``/info`` (also done by the first call)."""
        if self._started is None:
            self._started = asyncio.ensure_future(asyncio.gather(*(self._read_info(m) for m in self.members)))
        await asyncio.shield(self._started)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.config.probe_timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def _read_info(self, member: _Member) -> None:
        """Limits from ``/info`` at start; an endpoint that does not answer starts dead."""
        try:
            offered = await self._read_info_fields(member)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            self._set_limits(member, None)
            self._mark_dead(member, EndpointError("connection", f"GET {member.url}/info: {error!r}"))
            return
        self._set_limits(member, offered)

    async def _read_info_fields(self, member: _Member) -> int | None:
        """``/info``'s ``max_concurrent_requests`` (None: not offered); keeps ``max_input_tokens``
        in the stats. Connection failures raise."""
        if member.url is None:
            return None
        info = await probe_info(self._http(), member.url) or {}
        max_input = info.get("max_input_tokens")
        member.stats.max_input_tokens = max_input if isinstance(max_input, int) and max_input > 0 else None
        offered = info.get("max_concurrent_requests")
        return offered if isinstance(offered, int) and offered > 0 else None

    def _set_limits(self, member: _Member, offered: int | None) -> None:
        stats, config = member.stats, self.config
        stats.info_limit = offered
        stats.limit = float(offered or member.default_limit)
        stats.ceiling = float(offered or config.max_limit)
        member.threshold = math.inf

    # --- routing ----------------------------------------------------------------------------
    async def _route(self, call):
        await self.start()
        tried: set[int] = set()
        last_error: EndpointError | None = None
        previous: _Member | None = None
        for attempt in range(self.config.max_moves + 1):
            member = await self._acquire(tried, last_error)
            if previous is not None:
                previous.stats.moved += 1  # the failed attempt found another slot: the caller never sees it
            sent = time.monotonic()
            ticket = next(self._tickets)
            member.sent[ticket] = sent
            try:
                result = await call(member.backend)
            except EndpointError as error:
                self._release(member, ticket)
                self._on_failure(member, error, sent)
                if error.kind == "validation" or attempt == self.config.max_moves:
                    raise
                last_error, previous = error, member
                if error.kind != "overloaded" or member.stats.in_flight == 0:
                    tried.add(member.index)  # a 429 with none of ours in flight: others fill it
                continue
            except BaseException:
                self._release(member, ticket)
                raise
            self._release(member, ticket)
            self._on_success(member, result, sent)
            return result
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _acquire(self, tried: set, last_error: EndpointError | None) -> _Member:
        member = self._pick(tried)
        if member is not None:
            self._take(member)
            return member
        if not any(m.stats.healthy and m.index not in tried for m in self.members):
            raise self._no_endpoint_error(tried, last_error)
        waiter = _Waiter(asyncio.get_running_loop().create_future(), tried, last_error)
        self._waiters.append(waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self._release(waiter.future.result(), None)  # handed a slot, then cancelled
            raise

    def _pick(self, tried: set) -> _Member | None:
        """The least-loaded healthy endpoint with a free slot (ties: the one with more free)."""
        best = None
        for member in self.members:
            if not member.stats.healthy or member.index in tried or member.free <= 0:
                continue
            if best is None or (member.load, -member.free) < (best.load, -best.free):
                best = member
        return best

    def _take(self, member: _Member) -> None:
        stats = member.stats
        stats.in_flight += 1
        stats.attempts += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)

    def _release(self, member: _Member, ticket: int | None) -> None:
        member.stats.in_flight -= 1
        if ticket is not None:
            member.stats.busy_s += time.monotonic() - member.sent.pop(ticket)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiters in arrival order (a waiter skips endpoints it tried)."""
        skipped: list[_Waiter] = []
        while self._waiters and any(m.stats.healthy and m.free > 0 for m in self.members):
            waiter = self._waiters.popleft()
            if waiter.future.done():
                continue
            member = self._pick(waiter.tried)
            if member is None:
                skipped.append(waiter)
                continue
            self._take(member)
            waiter.future.set_result(member)
        self._waiters.extendleft(reversed(skipped))

    def _fail_waiters(self) -> None:
        """Waiters left with no healthy endpoint they have not tried get the error now."""
        kept: deque[_Waiter] = deque()
        for waiter in self._waiters:
            if waiter.future.done():
                continue
            if self._closed or not any(m.stats.healthy and m.index not in waiter.tried for m in self.members):
                waiter.future.set_exception(self._no_endpoint_error(waiter.tried, waiter.last_error))
            else:
                kept.append(waiter)
        self._waiters = kept

    def _no_endpoint_error(self, tried: set, last_error: EndpointError | None) -> EndpointError:
        if last_error is not None and not self._closed:
            return last_error
        dead = [m.stats.name for m in self.members if not m.stats.healthy]
        what = "the fleet is closed" if self._closed else f"all {len(self.members)} endpoints are down ({', '.join(dead)})"
        return EndpointError("connection", f"{what}; dead endpoints are probed and rejoin when /health answers")

    # --- AIMD and health --------------------------------------------------------------------
    def _on_success(self, member: _Member, result, sent: float) -> None:
        stats = member.stats
        stats.succeeded += 1
        member.consecutive_failures = 0
        if isinstance(result, Generation):
            stats.prompt_tokens += result.prompt_tokens or 0
            stats.completion_tokens += result.completion_tokens or 0
            result.meta["endpoint"] = stats.name
            queue_ms, inference_ms = result.meta.get("queue_time_ms"), result.meta.get("inference_time_ms")
            if queue_ms is not None and queue_ms > max(self.config.queue_slack_ms, self.config.queue_ratio * (inference_ms or 0)):
                self._decrease(member, sent)
                return
        if stats.in_flight + 1 < math.floor(stats.limit):
            return  # the limit did not hold anything back: no evidence it should grow
        step = 1.0 if stats.limit < member.threshold else 1.0 / stats.limit
        stats.limit = min(stats.ceiling, stats.limit + step)
        self._dispatch()

    def _decrease(self, member: _Member, sent: float) -> None:
        if sent <= member.decreased_at:
            return  # already cut for this round trip
        stats = member.stats
        stats.limit = max(1.0, stats.limit * self.config.decrease)
        member.threshold = stats.limit
        member.decreased_at = time.monotonic()
        stats.decreases += 1

    def _on_failure(self, member: _Member, error: EndpointError, sent: float) -> None:
        stats = member.stats
        stats.failures_by_kind[error.kind] = stats.failures_by_kind.get(error.kind, 0) + 1
        if error.kind == "overloaded":
            stats.overloaded += 1
            self._decrease(member, sent)
            return
        stats.failed += 1
        if error.kind == "validation":
            return  # the request's fault, not the endpoint's
        if member.consecutive_failures == 0:
            member.streak_started = sent
        member.consecutive_failures += 1
        if member.consecutive_failures < self.config.dead_after or not stats.healthy:
            return
        if any(started < member.streak_started for started in member.sent.values()):
            return  # calls sent before the failures began are still being served: it is alive
        self._mark_dead(member, error)

    def _mark_dead(self, member: _Member, error: EndpointError) -> None:
        member.stats.healthy = False
        member.stats.deaths += 1
        member.stats.last_error = str(error)
        if not self._closed and (member.probe is None or member.probe.done()):
            member.probe = asyncio.ensure_future(self._probe_until_back(member))
        self._fail_waiters()

    async def _probe_until_back(self, member: _Member) -> None:
        delay = self.config.probe_first_s
        while True:
            await asyncio.sleep(delay * self._random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.config.probe_max_s)
            if self._closed:
                return
            if member.url is None:
                self._set_limits(member, None)
                member.stats.limit = 1.0  # one request tests an endpoint that cannot be probed
                break
            if not await probe_health(self._http(), member.url):
                continue
            try:
                self._set_limits(member, await self._read_info_fields(member))
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                continue
            member.threshold = member.stats.limit  # slow start back up to what /info (or the default) says
            member.stats.limit = min(float(member.default_limit), member.stats.ceiling)
            break
        member.consecutive_failures = 0
        member.decreased_at = time.monotonic()  # failures of calls sent before the rejoin do not cut
        member.stats.healthy = True
        member.stats.rejoins += 1
        self._dispatch()


async def probe_info(session: aiohttp.ClientSession, url: str) -> dict | None:
    """``GET {url}/info`` as a dict, or None when the server has no such route (OpenAI-compatible
    servers answer 404). Connection failures raise."""
    async with session.get(f"{url}/info") as response:
        if response.status != 200:
            return None
        try:
            body = await response.json(content_type=None)
        except ValueError:
            return None
        return body if isinstance(body, dict) else None


async def probe_health(session: aiohttp.ClientSession, url: str) -> bool:
    """True when ``GET {url}/health`` (or, for servers without it, ``/v1/models``) answers 200."""
    for route in ("/health", "/v1/models"):
        try:
            async with session.get(f"{url}{route}") as response:
                if response.status == 200:
                    return True
                if response.status != 404:
                    return False
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False
    return False
