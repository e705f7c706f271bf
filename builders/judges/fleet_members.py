"""What a ``builders.judges.fleet.Fleet`` keeps per endpoint: the settings, the running stats the cost
ledger reads, the member's adaptive state, a queued call, and the ``/info`` and ``/health``
probes."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import aiohttp

from builders.judges.endpoints.base import Backend, EndpointError


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
        self.threshold = math.inf  # slow-start threshold
        self.decreased_at = -math.inf
        self.succeeded_at_cut = -math.inf  # the success count at the last cut
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
class QueuedCall:
    """A call waiting for a slot (``future`` gets the member that has one)."""

    future: asyncio.Future
    tried: dict  # endpoint index -> its success count when the call failed there
    last_error: EndpointError | None


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
