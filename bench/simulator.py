"""Loopback judge endpoints of known capacity, for throughput benchmarks and fleet tests.

One simulator is ``slots`` concurrent requests, each held for ``service_s`` seconds: its
capacity is ``slots / service_s`` answers per second. A request that finds every slot busy is
rejected at once with TGI's 429 ``overloaded`` body (or, with ``queue > 0``, waits in a queue
of that size the way TGI batches, and the wait is reported in ``x-queue-time``). On top of
that a seeded share of requests is answered with an immediate 503 (what a proxy in front of a
scaling endpoint says), and a kill switch makes the server drop every connection and close its
port (``mode="close"``) or stop answering (``mode="hang"``) mid-run; ``revive()`` reopens it.

Routes: ``GET /info`` (with ``max_concurrent_requests`` unless ``advertise_info=False``, which
makes it a 404 like an OpenAI-compatible server), ``GET /health``, ``GET /v1/models``,
``POST /generate`` and ``POST /`` (TGI; the latter answers a list, as huggingface_hub expects) and ``POST /v1/chat/completions`` (OpenAI-compatible). Token counts are
deterministic: ``count_text_tokens`` (one token per word or punctuation mark) of the prompt, plus
``CHAT_TOKENS_PER_MESSAGE`` per chat message; the answer is ``completion_tokens`` tokens long
(a fixed number or a seeded uniform draw from a ``(low, high)`` range), capped by the request's
``max_new_tokens`` / ``max_tokens``; its text is ``answer`` when set (an RLHN verdict, so that a
whole build can run against the simulator), else "ok" repeated.

``Simulator`` runs the servers in a background thread (tests); ``SimulatorProcess`` (``bench/simulator_process.py``) runs them in
a child process so that a benchmark measures only the client's CPU. Both stop themselves after
``lifetime_s`` seconds at the latest.

    with Simulator(SimulatorConfig(slots=4, service_s=0.01)) as sim:
        url = sim.urls[0]
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

from aiohttp import web

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
CHAT_TOKENS_PER_MESSAGE = 4  # role markers a chat template adds around each message


def count_text_tokens(text: str) -> int:
    return len(TOKEN_PATTERN.findall(text))


def count_chat_tokens(messages) -> int:
    """What a simulator reports as ``prompt_tokens`` for these chat messages."""
    return sum(count_text_tokens(str(m.get("content", ""))) + CHAT_TOKENS_PER_MESSAGE for m in messages)


@dataclass
class SimulatorConfig:
    slots: int = 64
    service_s: float = 0.2
    fail_rate: float = 0.0  # share of requests answered with an immediate 503
    queue: int = 0  # requests past the slots that wait (TGI queue); 0: rejected with 429 at once
    advertise_info: bool = True  # GET /info offers max_concurrent_requests (TGI); False: 404
    completion_tokens: int | tuple[int, int] = 8
    model_id: str = "simulated-judge"
    seed: int = 0
    kill_after_s: float | None = None  # pull the kill switch this long after start
    kill_mode: Literal["close", "hang"] = "close"
    max_input_tokens: int = 1_000_000
    answer: str | None = None  # the answer's text (None: "ok" x its completion tokens); e.g. an RLHN verdict

    @property
    def capacity(self) -> float:
        """Answers per second the simulator can give when kept full."""
        return self.slots / self.service_s


@dataclass
class SimulatorStats:
    served: int = 0  # 200 answers
    overloaded: int = 0  # 429 answers
    injected: int = 0  # injected 503 answers
    dropped: int = 0  # requests cut off by the kill switch
    max_in_flight: int = 0
    in_flight: int = 0
    busy_s: float = 0.0  # slot-seconds spent serving
    first_at: float | None = None
    last_at: float | None = None
    # busy slot-seconds in each OCCUPANCY_BIN_S-long bin since the first request (where slots idle)
    occupancy: list = field(default_factory=list)
    occupancy_mark: float | None = None  # time of the last in-flight change


OCCUPANCY_BIN_S = 0.1


def _account_occupancy(stats: SimulatorStats, now: float) -> None:
    """Add ``in_flight`` x the time since the last change to the occupancy bins."""
    mark = stats.occupancy_mark
    stats.occupancy_mark = now
    if mark is None or stats.first_at is None:
        return
    index = max(0, int((mark - stats.first_at) / OCCUPANCY_BIN_S))
    while mark < now:
        end = min(now, stats.first_at + (index + 1) * OCCUPANCY_BIN_S)
        while len(stats.occupancy) <= index:
            stats.occupancy.append(0.0)
        stats.occupancy[index] += stats.in_flight * max(0.0, end - mark)
        mark, index = max(mark, end), index + 1


class _Endpoint:
    """One simulated server on the shared event loop."""

    def __init__(self, config: SimulatorConfig):
        self.config = config
        self.stats = SimulatorStats()
        self.random = random.Random(config.seed)
        self.killed = False
        self.port = _free_port()
        self.runner: web.AppRunner | None = None
        self.site: web.TCPSite | None = None
        self.waiting: list[asyncio.Future] = []
        self.transports: set = set()
        self.started_at = 0.0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/info", self.info)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/generate", self.generate)
        app.router.add_post("/", self.generate_list)
        app.router.add_post("/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await self._listen()
        self.started_at = time.monotonic()
        if self.config.kill_after_s is not None:
            asyncio.get_running_loop().call_later(self.config.kill_after_s, lambda: asyncio.ensure_future(self.kill()))

    async def _listen(self) -> None:
        self.site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True, backlog=1024)
        await self.site.start()

    async def kill(self) -> None:
        if self.killed:
            return
        self.killed = True
        if self.config.kill_mode == "close":
            await self.site.stop()
            for transport in list(self.transports):
                transport.abort()
            for waiter in self.waiting:
                if not waiter.done():
                    waiter.cancel()

    async def revive(self) -> None:
        if not self.killed:
            return
        self.killed = False
        if self.config.kill_mode == "close":
            await self._listen()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # --- routes -----------------------------------------------------------------------------
    async def info(self, request: web.Request) -> web.Response:
        if await self._killed(request):
            return web.Response(status=503)
        if not self.config.advertise_info:
            return web.json_response({"error": "Not Found"}, status=404)
        return web.json_response({
            "model_id": self.config.model_id, "max_concurrent_requests": self.config.slots,
            "max_input_tokens": self.config.max_input_tokens, "max_total_tokens": self.config.max_input_tokens + 4096,
            "max_client_batch_size": 4, "version": "simulator",
        })

    async def health(self, request: web.Request) -> web.Response:
        if await self._killed(request):
            return web.Response(status=503)
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        if await self._killed(request):
            return web.Response(status=503)
        return web.json_response({"object": "list", "data": [{"id": self.config.model_id, "object": "model"}]})

    async def generate(self, request: web.Request) -> web.Response:
        if await self._killed(request):
            return web.Response(status=503)
        body = await request.json()
        prompt_tokens = count_text_tokens(str(body.get("inputs", "")))
        limit = int((body.get("parameters") or {}).get("max_new_tokens") or 1 << 30)
        outcome = await self._serve(request, prompt_tokens, limit)
        if isinstance(outcome, web.Response):
            return outcome
        completion, queue_s, inference_s = outcome
        return web.json_response(
            {"generated_text": self._answer_text(completion),
             "details": {"finish_reason": "eos_token", "generated_tokens": completion, "seed": None, "prefill": [], "tokens": []}},
            headers=_timing_headers(prompt_tokens, completion, queue_s, inference_s))

    async def generate_list(self, request: web.Request) -> web.Response:
        """TGI's ``POST /``: the ``/generate`` answer inside a list (huggingface_hub posts here)."""
        response = await self.generate(request)
        if response.status != 200:
            return response
        return web.json_response([json.loads(response.body)], headers={k: v for k, v in response.headers.items()
                                                                         if k.lower().startswith("x-")})

    async def chat(self, request: web.Request) -> web.Response:
        if await self._killed(request):
            return web.Response(status=503)
        body = await request.json()
        prompt_tokens = count_chat_tokens(body.get("messages") or [])
        limit = int(body.get("max_tokens") or body.get("max_completion_tokens") or 1 << 30)
        outcome = await self._serve(request, prompt_tokens, limit)
        if isinstance(outcome, web.Response):
            return outcome
        completion, queue_s, inference_s = outcome
        return web.json_response({
            "id": f"sim-{self.stats.served}", "object": "chat.completion", "created": int(time.time()),
            "model": self.config.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self._answer_text(completion)},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion},
        }, headers=_timing_headers(prompt_tokens, completion, queue_s, inference_s))

    # --- the capacity model -----------------------------------------------------------------
    async def _killed(self, request: web.Request) -> bool:
        """Under the kill switch: drop the connection ("close") or never answer ("hang")."""
        if not self.killed:
            return False
        self.stats.dropped += 1
        if self.config.kill_mode == "hang":
            while self.killed:
                await asyncio.sleep(0.05)
            return False
        request.transport.abort()
        return True

    async def _serve(self, request: web.Request, prompt_tokens: int, max_new_tokens: int):
        config, stats = self.config, self.stats
        now = time.monotonic()
        stats.first_at = stats.first_at if stats.first_at is not None else now
        if prompt_tokens > config.max_input_tokens:
            return _error(422, f"Input validation error: `inputs` must have less than {config.max_input_tokens} tokens. "
                               f"Given: {prompt_tokens}", "validation")
        if config.fail_rate and self.random.random() < config.fail_rate:
            stats.injected += 1
            return _error(503, "Service Unavailable", "unavailable")
        queued_at = time.monotonic()
        if stats.in_flight >= config.slots:
            if len(self.waiting) >= config.queue:
                stats.overloaded += 1
                return _error(429, "Model is overloaded", "overloaded")
            waiter = asyncio.get_running_loop().create_future()
            self.waiting.append(waiter)
            try:
                await waiter  # a finishing request hands its slot over
            except asyncio.CancelledError:
                return web.Response(status=503)
            finally:
                if waiter in self.waiting:
                    self.waiting.remove(waiter)
        else:
            _account_occupancy(stats, time.monotonic())
            stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        queue_s = time.monotonic() - queued_at
        self.transports.add(request.transport)
        try:
            await asyncio.sleep(config.service_s)
        finally:
            self.transports.discard(request.transport)
            self._free_slot()
        if self.killed:  # the kill switch fell while this request was being served
            return web.Response(status=503)
        stats.busy_s += config.service_s
        stats.served += 1
        stats.last_at = time.monotonic()
        completion = config.completion_tokens
        if isinstance(completion, tuple):
            completion = self.random.randint(*completion)
        return min(completion, max_new_tokens), queue_s, config.service_s

    def _answer_text(self, tokens: int) -> str:
        return self.config.answer if self.config.answer is not None else _answer_text(tokens)

    def _free_slot(self) -> None:
        while self.waiting:
            waiter = self.waiting.pop(0)
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter; in_flight stays
                return
        _account_occupancy(self.stats, time.monotonic())
        self.stats.in_flight -= 1


def _answer_text(tokens: int) -> str:
    return " ".join(["ok"] * tokens)


def _timing_headers(prompt_tokens: int, completion: int, queue_s: float, inference_s: float) -> dict:
    return {"x-prompt-tokens": str(prompt_tokens), "x-generated-tokens": str(completion),
            "x-queue-time": str(int(queue_s * 1000)), "x-inference-time": str(int(inference_s * 1000)),
            "x-total-time": str(int((queue_s + inference_s) * 1000))}


def _error(status: int, message: str, error_type: str) -> web.Response:
    return web.json_response({"error": message, "error_type": error_type}, status=status)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Simulator:
    """Simulated endpoints served from a background thread; ``stop()`` (or leaving the ``with``
    block, or ``lifetime_s``) ends them."""

    def __init__(self, *configs: SimulatorConfig, lifetime_s: float = 600.0):
        self.configs = configs or (SimulatorConfig(),)
        self.lifetime_s = lifetime_s
        self.endpoints: list[_Endpoint] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._done: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{endpoint.port}" for endpoint in self.endpoints]

    @property
    def url(self) -> str:
        return self.urls[0]

    def start(self) -> Simulator:
        self._thread = threading.Thread(target=self._run, name="judge-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the judge simulator did not start within 30 s")
        if self._error is not None:
            raise RuntimeError(f"the judge simulator failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        try:
            for config in self.configs:
                endpoint = _Endpoint(config)
                await endpoint.start()
                self.endpoints.append(endpoint)
        except BaseException as error:  # report to the starting thread instead of dying silently
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        try:
            await asyncio.wait_for(self._done.wait(), self.lifetime_s)
        except TimeoutError:
            pass
        for endpoint in self.endpoints:
            endpoint.killed = False
            await endpoint.stop()

    def _call(self, coroutine) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def kill(self, index: int = 0) -> None:
        self._call(self.endpoints[index].kill())

    def revive(self, index: int = 0) -> None:
        self._call(self.endpoints[index].revive())

    def stats(self) -> list[SimulatorStats]:
        async def copy():
            return [SimulatorStats(**asdict(endpoint.stats)) for endpoint in self.endpoints]
        return asyncio.run_coroutine_threadsafe(copy(), self.loop).result(10)

    def stop(self) -> None:
        if self._thread is None:
            return
        if self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._done.set)
        self._thread.join(15)
        self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
