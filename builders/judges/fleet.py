"""Several judge endpoints behind one ``Backend``: keep every endpoint full, lose nothing.

A ``Fleet`` holds any mix of backends (TGI ``/generate``, OpenAI-compatible chat, local) that
serve the same judge; every remote judge of a recipe is one, a single endpoint too
(``builders.methods.run.make_judges``). For each endpoint it keeps an in-flight limit:

- it starts at what the server states (``fleet_members.probe_limits``: TGI ``/info``
  ``max_concurrent_requests``, llama.cpp ``/props`` ``total_slots``, SGLang ``/get_server_info``
  ``max_running_requests``), which is then also the ceiling; a server that states none (vLLM)
  starts at ``FleetConfig.default_limit`` in slow start under ``max_limit``: the probe. The
  recipe's ``concurrency:`` caps both (an optional cap, not the starting limit);
- it adapts by AIMD: +1 per success while below the slow-start threshold, then +1 per
  ``limit`` successes (additive increase), but only while the limit is what holds requests
  back. A 429 on a call sent with k of ours in flight means the server holds at most k - 1 for
  us: the limit steps down to that edge when k is at least the last cut's k (our own probe
  met the same ceiling) or a round trip of answers has passed since that cut; a 429 at fewer
  within a round trip of the cut (others take slots too), or an ``x-queue-time`` that rises
  past ``queue_slack_ms`` and ``queue_ratio`` x the inference time, multiplies it by
  ``decrease``. One cut per round trip: calls sent before the last cut do not cut again. The
  slot above a found edge is probed ``edge_probe_rounds`` times slower (fewer 429s).

Each call goes to the least-loaded healthy endpoint (in-flight / limit) with a free slot, or
waits for one: by ``CALL_PRIORITY`` (a streamed build gives each chunk its number, so the next
chunk's calls fill only the slots the current chunk's tail leaves free), then first come first
served. A call that meets a 429 is re-sent (the cut limit
decides where; an endpoint full of other clients' calls counts as tried). One that meets a
5xx, a timeout, a dropped connection or a protocol error is moved to an endpoint it has not
tried, or back to one it has once that endpoint has answered another call since (proof of
life: a failure beside successes is transient, and waiting for the caller's backoff would
only idle the slot). Neither counts as a failed attempt for the caller while capacity exists
elsewhere; when none does (every endpoint tried and none with a call of ours in flight that
could prove it alive, dead, or ``max_moves`` re-sends spent) the last error surfaces to the
caller, whose retry path (``builders.judges.annotate``) backs off and tries again. A 422 is never
moved: the request is wrong.

An endpoint is dead when ``dead_after`` consecutive attempts failed and no call sent before
the last of them is still being served (fast 503s beside slow answers are not death, even when
a stalled loop reads a bunch of them before the answers that came with them). A dead
endpoint gets no calls; a task probes ``GET /health`` on a jittered exponential backoff and
rejoins it (with a fresh ``/info`` limit, in slow start). Endpoints without a URL rejoin on the backoff with limit 1
(one request tests them). No threads: everything runs on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import time

import aiohttp

from builders.judges.endpoints import make_backend
from builders.judges.endpoints.base import Backend, EndpointError, GenerateRequest, Generation, Scored, ScoreRequest
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.fleet_members import (  # noqa: F401 - re-exported: callers import them from here
    CALL_PRIORITY,
    CALL_STAGE,
    STAGE_COUNTS,
    EndpointStats,
    FleetConfig,
    FleetEndpoint,
    FleetMember,
    QueuedCall,
    probe_health,
    probe_info,
    probe_limits,
)

WAITING_SHARE = 1.25  # calls kept per slot of the current limits: each free slot finds one waiting


class Fleet(Backend):
    def __init__(self, endpoints: list[FleetEndpoint], config: FleetConfig | None = None, model_id: str | None = None):
        if not endpoints:
            raise ValueError("a fleet needs at least one endpoint")
        self.config = config or FleetConfig()
        self.members = [FleetMember(i, e, self.config) for i, e in enumerate(endpoints)]
        self.model_id = model_id or endpoints[0].backend.model_id
        self.supports_constraint = frozenset.intersection(*(frozenset(e.backend.supports_constraint) for e in endpoints))
        self._waiters: list[tuple[int, int, QueuedCall]] = []  # a heap: (priority, arrival, call)
        self._started: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._random = random.Random(0)
        self._tickets = itertools.count()

    @property
    def concurrency(self) -> int:
        """Calls a caller should keep in flight: the healthy members' current limits and a
        quarter more waiting for the slots that free next (at least one per member), at most
        ``FleetConfig.concurrency``; it grows with the limits (slow start), so a caller reads it
        again as it goes (the annotator adds workers). Before ``start`` has read the limits:
        ``FleetConfig.concurrency``. Every waiting call is a prompt rendered ahead of its slot,
        and a run's workers render theirs in one loop turn: ceilings (512 for a server that
        states none) would have a thousand rendered at each chunk's start."""
        if self._started is None or not self._started.done():
            return self.config.concurrency
        limits = sum(math.floor(m.stats.limit) for m in self.members if m.stats.healthy)
        return min(self.config.concurrency, max(len(self.members), math.ceil(WAITING_SHARE * limits)))

    @property
    def kind(self) -> str:
        """Its members' kinds, joined by "+" ("tgi", "openai+tgi"): a fleet serves one judge."""
        return "+".join(sorted({m.backend.kind for m in self.members}))

    @classmethod
    def from_specs(cls, specs: list[EndpointSpec], config: FleetConfig | None = None) -> Fleet:
        """A fleet of the recipe's endpoints for one judge (``spec.concurrency``: the endpoint's cap)."""
        endpoints = [FleetEndpoint(make_backend(spec), url=spec.url, cap=spec.concurrency) for spec in specs]
        return cls(endpoints, config, model_id=specs[0].model_id if specs else None)

    # --- Backend ----------------------------------------------------------------------------
    async def generate(self, request: GenerateRequest) -> Generation:
        return await self._route(lambda backend: backend.generate(request))

    async def score(self, request: ScoreRequest) -> Scored:
        return await self._route(lambda backend: backend.score(request))

    def count_tokens(self, text: str) -> int | None:
        return self.members[0].backend.count_tokens(text)

    async def input_limit(self, max_new_tokens: int) -> int | None:
        """The smallest input limit among the members that state one: a prompt must fit every
        endpoint it may be moved to. None when no member states one."""
        if self._started is None:  # the first call reads every member's limit at once
            limits = await asyncio.gather(*(m.backend.input_limit(max_new_tokens) for m in self.members))
        else:  # then each member answers from its cache: no task per member per prompt
            limits = [await m.backend.input_limit(max_new_tokens) for m in self.members]
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

    def stage_stats(self) -> dict[str | None, dict[str, dict[str, int]]]:
        """stage (``CALL_STAGE`` of the calls; None: calls made outside a stage) -> endpoint name ->
        its ``STAGE_COUNTS`` so far (attempts, succeeded, overloaded, failed, moved, tokens)."""
        out: dict[str | None, dict[str, dict[str, int]]] = {}
        for member in self.members:
            for stage, tally in member.by_stage.items():
                out.setdefault(stage, {})[member.stats.name] = {name: tally[name] for name in STAGE_COUNTS}
        return out

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

    async def _read_info(self, member: FleetMember) -> None:
        """Limits from ``/info`` at start; an endpoint that does not answer starts dead."""
        try:
            offered = await self._read_info_fields(member)
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            self._set_limits(member, None)
            self._mark_dead(member, EndpointError("connection", f"GET {member.url}/info: {error!r}"))
            return
        self._set_limits(member, offered)

    async def _read_info_fields(self, member: FleetMember) -> int | None:
        """The concurrency the server states (None: none; ``probe_limits``); keeps where it came
        from and ``max_input_tokens`` in the stats. Connection failures raise."""
        if member.url is None:
            member.stats.limit_source = "no url: default_limit"
            return None
        offered, source, max_input = await probe_limits(self._http(), member.url)
        member.stats.max_input_tokens = max_input
        member.stats.limit_source = source
        return offered

    def _set_limits(self, member: FleetMember, offered: int | None) -> None:
        stats, config = member.stats, self.config
        stats.info_limit = offered
        stats.ceiling = float(min(offered or config.max_limit, member.cap or math.inf))
        stats.limit = min(float(offered or member.default_limit), stats.ceiling)
        member.threshold = math.inf

    # --- routing ----------------------------------------------------------------------------
    async def _route(self, call):
        await self.start()
        stage = CALL_STAGE.get()
        tried: dict[int, int] = {}  # endpoint -> its success count when this call failed there
        last_error: EndpointError | None = None
        previous: FleetMember | None = None
        for attempt in range(self.config.max_moves + 1):
            member = await self._acquire(tried, last_error)
            if previous is not None:
                previous.stats.moved += 1  # the failed attempt found another slot: the caller never sees it
                previous.count(stage, moved=1)
            sent = time.monotonic()
            ticket = next(self._tickets)
            member.sent[ticket] = sent
            in_flight_at_send = member.stats.in_flight
            try:
                result = await call(member.backend)
            except EndpointError as error:
                self._release(member, ticket)
                member.count(stage, attempts=1, **{"overloaded" if error.kind == "overloaded" else "failed": 1})
                self._on_failure(member, error, sent, in_flight_at_send)
                if error.kind == "validation" or attempt == self.config.max_moves:
                    raise
                last_error, previous = error, member
                if error.kind != "overloaded" or member.stats.in_flight == 0:
                    tried[member.index] = member.stats.succeeded  # a 429 with none of ours in flight: others fill it
                self._fail_waiters()  # this endpoint may have been the last hope of a waiting call
                continue
            except BaseException:
                self._release(member, ticket)
                member.count(stage, attempts=1)
                raise
            answered = isinstance(result, (Generation, Scored))
            member.count(stage, attempts=1, succeeded=1, prompt_tokens=(answered and result.prompt_tokens) or 0,
                         completion_tokens=(answered and result.completion_tokens) or 0)
            self._on_success(member, result, sent)  # counted before the slot is handed on: a waiter
            self._release(member, ticket)  # that failed here before may take it (proof of life)
            return result
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def _eligible(member: FleetMember, tried: dict[int, int]) -> bool:
        """May take this call now: healthy, and either not tried yet or it has answered another
        call since this one failed there (a failure beside successes is transient)."""
        if not member.stats.healthy:
            return False
        failed_at = tried.get(member.index)
        return failed_at is None or member.stats.succeeded > failed_at

    def _may_serve(self, member: FleetMember, tried: dict[int, int]) -> bool:
        """Eligible now, or may become so: a call of ours still in flight there can prove it alive."""
        return self._eligible(member, tried) or (member.stats.healthy and member.stats.in_flight > 0)

    async def _acquire(self, tried: dict[int, int], last_error: EndpointError | None) -> FleetMember:
        member = self._pick(tried)
        if member is not None:
            self._take(member)
            return member
        if not any(self._may_serve(m, tried) for m in self.members):
            raise self._no_endpoint_error(last_error)
        waiter = QueuedCall(asyncio.get_running_loop().create_future(), tried, last_error)
        heapq.heappush(self._waiters, (CALL_PRIORITY.get(), next(self._tickets), waiter))
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self._release(waiter.future.result(), None)  # handed a slot, then cancelled
            raise

    def _pick(self, tried: dict[int, int]) -> FleetMember | None:
        """The least-loaded eligible endpoint with a free slot (ties: the one with more free)."""
        best = None
        for member in self.members:
            if member.free <= 0 or not self._eligible(member, tried):
                continue
            if best is None or (member.load, -member.free) < (best.load, -best.free):
                best = member
        return best

    def _take(self, member: FleetMember) -> None:
        stats = member.stats
        stats.in_flight += 1
        stats.attempts += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)

    def _release(self, member: FleetMember, ticket: int | None) -> None:
        member.stats.in_flight -= 1
        if ticket is not None:
            member.stats.busy_s += time.monotonic() - member.sent.pop(ticket)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiters by priority (``CALL_PRIORITY``: an earlier chunk's calls
        first), then in arrival order; a waiter skips endpoints it tried."""
        skipped: list[tuple[int, int, QueuedCall]] = []
        while self._waiters and any(m.stats.healthy and m.free > 0 for m in self.members):
            entry = heapq.heappop(self._waiters)
            waiter = entry[2]
            if waiter.future.done():
                continue
            member = self._pick(waiter.tried)
            if member is None:
                skipped.append(entry)
                continue
            self._take(member)
            waiter.future.set_result(member)
        for entry in skipped:
            heapq.heappush(self._waiters, entry)

    def _fail_waiters(self) -> None:
        """Waiters left with no healthy endpoint they have not tried get the error now."""
        if not self._closed and any(m.stats.healthy and m.stats.in_flight > 0 for m in self.members):
            return  # a call in flight on a healthy endpoint may prove it alive: every waiter may be served
        kept: list[tuple[int, int, QueuedCall]] = []
        for entry in self._waiters:
            waiter = entry[2]
            if waiter.future.done():
                continue
            if self._closed or not any(self._may_serve(m, waiter.tried) for m in self.members):
                waiter.future.set_exception(self._no_endpoint_error(waiter.last_error))
            else:
                kept.append(entry)
        heapq.heapify(kept)
        self._waiters = kept

    def _no_endpoint_error(self, last_error: EndpointError | None) -> EndpointError:
        if last_error is not None and not self._closed:
            return last_error
        dead = [m.stats.name for m in self.members if not m.stats.healthy]
        what = "the fleet is closed" if self._closed else f"all {len(self.members)} endpoints are down ({', '.join(dead)})"
        return EndpointError("connection", f"{what}; dead endpoints are probed and rejoin when /health answers")

    # --- AIMD and health --------------------------------------------------------------------
    def _on_success(self, member: FleetMember, result, sent: float) -> None:
        stats = member.stats
        stats.succeeded += 1
        member.consecutive_failures = 0
        if isinstance(result, (Generation, Scored)):
            stats.prompt_tokens += result.prompt_tokens or 0
            stats.completion_tokens += result.completion_tokens or 0
            result.meta["endpoint"] = stats.name
            queue_ms, inference_ms = result.meta.get("queue_time_ms"), result.meta.get("inference_time_ms")
            if queue_ms is not None and queue_ms > max(self.config.queue_slack_ms, self.config.queue_ratio * (inference_ms or 0)):
                self._decrease(member, sent)
                return
        if stats.in_flight < math.floor(stats.limit):  # (this call is still counted in flight)
            return  # the limit did not hold anything back: no evidence it should grow
        step = 1.0 if stats.limit < member.threshold else 1.0 / stats.limit
        if member.refused_at - 1 <= stats.limit < member.refused_at:
            step /= self.config.edge_probe_rounds  # the slot above the edge a 429 found: probed slowly
        stats.limit = min(stats.ceiling, stats.limit + step)
        self._dispatch()

    def _decrease(self, member: FleetMember, sent: float, to: float | None = None) -> None:
        """Multiplicative decrease (or down to ``to`` when that is lower), once per round trip."""
        if sent <= member.decreased_at:
            return  # already cut for this round trip
        stats = member.stats
        stats.limit = max(1.0, stats.limit * self.config.decrease if to is None else min(to, stats.limit * self.config.decrease))
        self._cut_done(member)

    def _cut_done(self, member: FleetMember) -> None:
        member.threshold = member.stats.limit
        member.decreased_at = time.monotonic()
        member.succeeded_at_cut = member.stats.succeeded
        member.stats.decreases += 1

    def _on_overloaded(self, member: FleetMember, sent: float, in_flight_at_send: int) -> None:
        """A 429: the server held no slot for a call sent with ``in_flight_at_send`` of ours in
        flight (this one included), so it holds at most one fewer for us now: the edge. When the
        refused call was sent with at least as many in flight as the last cut's (our own probe
        meeting the same ceiling again), or a round trip of answers after that cut, the limit
        steps down to the edge: a multiplicative cut would leave slots idle until additive
        increase climbs back. A 429 at fewer in flight within a round trip of the cut means the
        server's room for us shrank (others take slots too): a multiplicative cut."""
        if sent <= member.decreased_at:
            return  # already cut for this round trip
        stats = member.stats
        edge = max(1.0, in_flight_at_send - 1.0)
        if in_flight_at_send >= member.refused_at or stats.succeeded - member.succeeded_at_cut >= stats.limit:
            stats.limit = max(1.0, min(stats.limit, edge))
            self._cut_done(member)
        else:
            self._decrease(member, sent, to=edge)
        member.refused_at = in_flight_at_send

    def _on_failure(self, member: FleetMember, error: EndpointError, sent: float, in_flight_at_send: int) -> None:
        stats = member.stats
        stats.failures_by_kind[error.kind] = stats.failures_by_kind.get(error.kind, 0) + 1
        if error.kind == "overloaded":
            stats.overloaded += 1
            self._on_overloaded(member, sent, in_flight_at_send)
            return
        stats.failed += 1
        if error.kind == "validation":
            return  # the request's fault, not the endpoint's
        member.consecutive_failures += 1
        if member.consecutive_failures < self.config.dead_after or not stats.healthy:
            return
        if any(started < sent for started in member.sent.values()):
            return  # a call sent before this failed one is still being served: it is alive
        self._mark_dead(member, error)

    def _mark_dead(self, member: FleetMember, error: EndpointError) -> None:
        member.stats.healthy = False
        member.stats.deaths += 1
        member.stats.last_error = str(error)
        if not self._closed and (member.probe is None or member.probe.done()):
            member.probe = asyncio.ensure_future(self._probe_until_back(member))
        self._fail_waiters()

    async def _probe_until_back(self, member: FleetMember) -> None:
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
            except (TimeoutError, aiohttp.ClientError, OSError):
                continue
            member.threshold = member.stats.limit  # slow start back up to what the server (or the default) says
            member.stats.limit = min(float(member.default_limit), member.stats.ceiling)
            break
        member.consecutive_failures = 0
        member.refused_at = 0  # the edge found before the death is not this server's any more
        member.decreased_at = time.monotonic()  # failures of calls sent before the rejoin do not cut
        member.stats.healthy = True
        member.stats.rejoins += 1
        self._dispatch()
