"""The loopback judge simulators keep their promises: C slots, 429 with TGI's body when full,
seeded 503s, a queue that reports x-queue-time, /info, both generation routes, the kill switch."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from bench.simulator import Simulator, SimulatorConfig, count_chat_tokens, count_text_tokens
from bench.simulator_process import SimulatorProcess

BODY = {"inputs": "Is this passage relevant? Yes or no.", "parameters": {"max_new_tokens": 5}}


async def _post_many(url: str, n: int, route: str = "/generate", body: dict = BODY, timeout: float = 10.0):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async def one():
            async with session.post(url + route, json=body) as response:
                return response.status, await response.json(content_type=None), dict(response.headers)
        return await asyncio.gather(*(one() for _ in range(n)))


def test_full_slots_answer_429_with_the_tgi_body():
    with Simulator(SimulatorConfig(slots=4, service_s=0.2)) as sim:
        answers = asyncio.run(_post_many(sim.url, 10))
        stats = sim.stats()[0]
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] * 4 + [429] * 6
    rejected = [body for status, body, _ in answers if status == 429]
    assert all(body == {"error": "Model is overloaded", "error_type": "overloaded"} for body in rejected)
    assert stats.served == 4 and stats.overloaded == 6 and stats.max_in_flight == 4


def test_capacity_is_slots_over_service_time():
    config = SimulatorConfig(slots=4, service_s=0.05)
    assert config.capacity == pytest.approx(80.0)

    async def client(url):  # a client that never exceeds the slots: 40 requests = 10 rounds
        async with aiohttp.ClientSession() as session:
            gate = asyncio.Semaphore(4)

            async def one():
                async with gate, session.post(url + "/generate", json=BODY) as response:
                    return response.status
            started = time.monotonic()
            statuses = await asyncio.gather(*(one() for _ in range(40)))
            return statuses, time.monotonic() - started

    with Simulator(config) as sim:
        statuses, elapsed = asyncio.run(client(sim.url))
        stats = sim.stats()[0]
    assert statuses == [200] * 40
    assert elapsed >= 10 * 0.05 * 0.95  # never faster than the capacity allows
    assert stats.busy_s == pytest.approx(40 * 0.05)


def test_injected_503s_are_seeded_and_near_the_rate():
    def run(seed):
        with Simulator(SimulatorConfig(slots=400, service_s=0.001, fail_rate=0.2, seed=seed)) as sim:
            answers = asyncio.run(_post_many(sim.url, 300))
            return sim.stats()[0].injected, [status for status, _, _ in answers].count(503)

    injected, seen = run(seed=3)
    assert injected == seen
    assert 0.12 * 300 < injected < 0.28 * 300
    assert run(seed=3)[0] == injected  # same seed, same count


def test_queue_reports_queue_time_instead_of_429():
    with Simulator(SimulatorConfig(slots=1, service_s=0.05, queue=5)) as sim:
        answers = asyncio.run(_post_many(sim.url, 4))
    assert [status for status, _, _ in answers] == [200] * 4
    queue_ms = sorted(int(headers["x-queue-time"]) for _, _, headers in answers)
    assert queue_ms[0] < 20 and queue_ms[-1] >= 100  # the fourth waited ~3 service times


def test_info_chat_and_token_counts():
    messages = [{"role": "system", "content": "Judge relevance."}, {"role": "user", "content": "Query: q? Passage: p."}]

    async def calls(tgi_url, openai_url):
        async with aiohttp.ClientSession() as session:
            async with session.get(tgi_url + "/info") as response:
                info = await response.json()
            async with session.get(openai_url + "/info") as response:
                missing = response.status
            async with session.post(openai_url + "/v1/chat/completions",
                                    json={"model": "m", "messages": messages, "max_tokens": 3}) as response:
                chat = await response.json()
            async with session.post(tgi_url + "/", json=BODY) as response:
                listed = await response.json()
        return info, missing, chat, listed

    with Simulator(SimulatorConfig(slots=7, service_s=0.001, completion_tokens=10),
                   SimulatorConfig(slots=2, service_s=0.001, advertise_info=False)) as sim:
        info, missing, chat, listed = asyncio.run(calls(*sim.urls))
    assert info["max_concurrent_requests"] == 7
    assert missing == 404
    assert chat["usage"]["prompt_tokens"] == count_chat_tokens(messages) == 3 + 8 + 2 * 4
    assert chat["usage"]["completion_tokens"] == 3  # capped by max_tokens
    assert listed[0]["details"]["generated_tokens"] == 5 and count_text_tokens(listed[0]["generated_text"]) == 5


def test_kill_closes_the_port_and_revive_reopens_it():
    with Simulator(SimulatorConfig(slots=4, service_s=0.3)) as sim:
        async def kill_mid_request():
            task = asyncio.ensure_future(_post_many(sim.url, 2))
            await asyncio.sleep(0.1)
            await asyncio.get_running_loop().run_in_executor(None, sim.kill, 0)
            return await asyncio.gather(task, return_exceptions=True)

        (in_flight,) = asyncio.run(kill_mid_request())
        assert isinstance(in_flight, aiohttp.ClientError)  # the connection was dropped
        with pytest.raises(aiohttp.ClientConnectorError):
            asyncio.run(_post_many(sim.url, 1))
        sim.revive(0)
        assert [status for status, _, _ in asyncio.run(_post_many(sim.url, 1))] == [200]


def test_hang_mode_stops_answering():
    with Simulator(SimulatorConfig(slots=4, service_s=0.01, kill_mode="hang")) as sim:
        sim.kill(0)
        with pytest.raises(asyncio.TimeoutError):
            asyncio.run(_post_many(sim.url, 1, timeout=0.3))
        sim.revive(0)
        assert [status for status, _, _ in asyncio.run(_post_many(sim.url, 1))] == [200]


def test_process_simulator_serves_and_reports():
    with SimulatorProcess(SimulatorConfig(slots=2, service_s=0.01), lifetime_s=60) as sim:
        answers = asyncio.run(_post_many(sim.urls[0], 2))
        assert [status for status, _, _ in answers] == [200, 200]
        assert sim.stats()[0].served == 2
