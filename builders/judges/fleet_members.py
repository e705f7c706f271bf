"""What a ``builders.judges.fleet.Fleet`` keeps per endpoint: the settings, the running stats the cost
ledger reads (also per stage: ``CALL_STAGE`` names the stage a call is made for), the member's
adaptive state, a queued call, and the limit and ``/health`` probes."""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from builders.judges.endpoints.base import Backend, EndpointError

# The stage a call is made for ("rlhn/stage1"): the annotator's workers set it, the fleet counts
# each attempt under it, so stages sharing a fleet (or overlapping chunks of one stage) are
# accounted apart.
CALL_STAGE: contextvars.ContextVar[str | None] = contextvars.ContextVar("CALL_STAGE", default=None)
# Waiting calls with a lower number get slots first (a streamed build: the chunk's number).
CALL_PRIORITY: contextvars.ContextVar[int] = contextvars.ContextVar("CALL_PRIORITY", default=0)
STAGE_COUNTS = ("attempts", "succeeded", "overloaded", "failed", "moved", "prompt_tokens", "completion_tokens")


@dataclass
class FleetConfig:
    default_limit: int = 8  # starting in-flight limit of an endpoint that states none (then slow start)
    max_limit: int = 512  # ceiling of an endpoint without /info
    decrease: float = 0.8  # multiplicative decrease on 429 / rising queue time
    edge_probe_rounds: int = 4  # round trips per +1 step into the slot above the edge a 429 found
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
    default_limit: int | None = None  # starting limit when the server states none (None: FleetConfig.default_limit)
    cap: int | None = None  # the recipe's ``concurrency``: the limit never goes above it (None: no cap)


@dataclass
class EndpointStats:
    """What one endpoint did (the cost ledger reads these)."""

    name: str
    url: str | None
    limit: float
    ceiling: float
    info_limit: int | None  # the concurrency the server states (TGI /info, llama.cpp /props, SGLang), when it does
    healthy: bool
    limit_source: str = ""  # where the starting limit came from ("tgi /info max_concurrent_requests", ...)
    cap: int | None = None  # the recipe's concurrency cap
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


class FleetMember:
    """One endpoint inside the fleet: its backend, stats and adaptive limit state."""

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
        self.cap = endpoint.cap
        self.stats.cap = endpoint.cap
        self.by_stage: dict[str | None, Counter] = {}  # stage -> STAGE_COUNTS of its calls here
        self.threshold = math.inf  # slow-start threshold
        self.decreased_at = -math.inf
        self.succeeded_at_cut = -math.inf  # the success count at the last cut
        self.refused_at = 0  # our calls in flight (the refused one included) when the last cut's 429 was sent
        self.consecutive_failures = 0
        self.sent: dict[int, float] = {}  # ticket -> send time of each call in flight
        self.probe: asyncio.Task | None = None

    def count(self, stage: str | None, **counts) -> None:
        tally = self.by_stage.get(stage)
        if tally is None:
            tally = self.by_stage[stage] = Counter()
        tally.update(counts)

    @property
    def free(self) -> int:
        return max(1, math.floor(self.stats.limit)) - self.stats.in_flight

    @property
    def load(self) -> float:
        return self.stats.in_flight / self.stats.limit


@dataclass
class QueuedCall:
    """A call waiting for a slot (``future`` gets the member that has one)."""

    future: asyncio.Future
    tried: dict  # endpoint index -> its success count when the call failed there
    last_error: EndpointError | None


async def probe_info(session: aiohttp.ClientSession, url: str, route: str = "/info") -> dict | None:
    """``GET {url}{route}`` as a dict, or None when the server has no such route (OpenAI-compatible
    servers answer 404 for TGI's ``/info``). Connection failures raise."""
    async with session.get(f"{url}{route}") as response:
        if response.status != 200:
            return None
        try:
            body = await response.json(content_type=None)
        except ValueError:
            return None
        return body if isinstance(body, dict) else None


def _positive(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


async def probe_limits(session: aiohttp.ClientSession, url: str) -> tuple[int | None, str, int | None]:
    """``(requests in flight the server states, where that came from, max_input_tokens)``:

    - TGI ``GET /info``: ``max_concurrent_requests`` (and ``max_input_tokens``);
    - llama.cpp ``GET /props``: ``total_slots`` (its ``--parallel``);
    - SGLang ``GET /get_server_info``: ``max_running_requests``;
    - otherwise (vLLM states no request limit) ``(None, "none stated", None)``: the fleet starts at
      its ``default_limit`` in slow start, which probes upwards until a 429 or rising queue
      time marks the edge. Connection failures raise."""
    info = await probe_info(session, url)
    if info is not None:
        max_input = _positive(info.get("max_input_tokens"))
        offered = _positive(info.get("max_concurrent_requests"))
        if offered is not None:
            return offered, "tgi /info max_concurrent_requests", max_input
    else:
        max_input = None
    props = await probe_info(session, url, "/props")
    if props is not None and _positive(props.get("total_slots")) is not None:
        return props["total_slots"], "llama.cpp /props total_slots", max_input
    server_info = await probe_info(session, url, "/get_server_info")
    if server_info is not None and _positive(server_info.get("max_running_requests")) is not None:
        return server_info["max_running_requests"], "sglang /get_server_info max_running_requests", max_input
    return None, "none stated: slow start from default_limit", max_input


async def probe_health(session: aiohttp.ClientSession, url: str) -> bool:
    """True when ``GET {url}/health`` (or, for servers without it, ``/v1/models``) answers 200."""
    for route in ("/health", "/v1/models"):
        try:
            async with session.get(f"{url}{route}") as response:
                if response.status == 200:
                    return True
                if response.status != 404:
                    return False
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False
    return False
