"""The endpoint fleet: least-loaded routing, AIMD limits, work moving off dead endpoints,
rejoin after a probe, nothing lost - against the loopback simulators (tiny service times)."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from bench.simulator import Simulator, SimulatorConfig
from builders.judges.annotate import Annotator, RetryPolicy
from builders.judges.endpoints.base import Backend, EndpointError, GenerateRequest, Generation
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.fleet import Fleet, FleetConfig, FleetEndpoint
from builders.judges.store import JudgmentStore


def request(i: int = 0) -> GenerateRequest:
    return GenerateRequest(messages=({"role": "user", "content": f"Is passage {i} relevant? Yes or no."},), max_new_tokens=4)


def fleet_of(urls, kinds=None, **config) -> Fleet:
    kinds = kinds or ["tgi"] * len(urls)
    specs = [EndpointSpec(kind=kind, url=url, model="judge", timeout_s=5.0, concurrency=config.pop("spec_limit", None))
             for kind, url in zip(kinds, urls)]
    return Fleet.from_specs(specs, FleetConfig(**{"probe_first_s": 0.05, "probe_max_s": 0.2, **config}))


async def call_many(fleet: Fleet, n: int, attempts: int = 1) -> list:
    """n concurrent calls; each retried up to ``attempts`` times (the annotator's job)."""
    async def one(i):
        for attempt in range(attempts):
            try:
                return await fleet.generate(request(i))
            except EndpointError as error:
                if attempt == attempts - 1:
                    return error
                await asyncio.sleep(0.05)
    return await asyncio.gather(*(one(i) for i in range(n)))


class _Idle(Backend):
    model_id = "idle"

    async def generate(self, request):  # pragma: no cover - routing tests never call it
        raise AssertionError


def test_pick_is_least_loaded_with_a_free_slot():
    fleet = Fleet([FleetEndpoint(_Idle()) for _ in range(3)], FleetConfig(default_limit=10))
    loads = [(6, 10.0), (3, 4.0), (5, 20.0)]  # in flight / limit: 0.6, 0.75, 0.25
    for member, (in_flight, limit) in zip(fleet.members, loads):
        member.stats.in_flight, member.stats.limit = in_flight, limit
    assert fleet._pick({}).index == 2
    assert fleet._pick({2: 0}).index == 0
    fleet.members[0].stats.in_flight = 10  # full
    assert fleet._pick({2: 0}).index == 1
    fleet.members[1].stats.healthy = False
    assert fleet._pick({2: 0}) is None
    fleet.members[2].stats.succeeded = 1  # it answered another call since this one failed there
    assert fleet._pick({2: 0}).index == 2


def test_a_429_steps_the_limit_down_to_the_edge_then_cuts_if_it_repeats():
    fleet = Fleet([FleetEndpoint(_Idle())], FleetConfig(default_limit=10, decrease=0.5))
    member = fleet.members[0]
    member.stats.limit = 12.0
    fleet._on_overloaded(member, sent=time.monotonic(), in_flight_at_send=9)  # 8 held, the 9th refused
    assert member.stats.limit == 8.0 and member.threshold == 8.0
    fleet._on_overloaded(member, sent=member.decreased_at - 1, in_flight_at_send=8)
    assert member.stats.limit == 8.0  # sent before the cut: the same round trip, no second cut
    member.stats.succeeded += 3  # fewer than a limit's worth of answers since the cut ...
    fleet._on_overloaded(member, sent=time.monotonic(), in_flight_at_send=8)
    assert member.stats.limit == 4.0  # ... so others take slots too: multiplicative (0.5 x 8 < edge 7)
    member.stats.succeeded += 4  # a round trip of answers later, a 429 marks the edge again
    fleet._on_overloaded(member, sent=time.monotonic(), in_flight_at_send=4)
    assert member.stats.limit == 3.0 and member.stats.decreases == 3


def test_our_own_probe_meeting_the_edge_again_steps_back_to_it_without_a_multiplicative_cut():
    """An endpoint stating no limit, 24 slots: a 429 found the edge; additive increase probes the
    slot above it again and meets another 429 before a full round trip of answers has passed.
    That is the same ceiling, not others taking slots: back to the edge, not 0.8 x the limit."""
    fleet = Fleet([FleetEndpoint(_Idle())], FleetConfig(default_limit=8, decrease=0.8))
    member = fleet.members[0]
    member.stats.limit = 40.0
    fleet._on_overloaded(member, sent=time.monotonic(), in_flight_at_send=25)
    assert member.stats.limit == 24.0 and member.refused_at == 25
    member.stats.limit, member.stats.succeeded = 25.0, member.stats.succeeded + 20  # grew back: fewer than 25 answers
    fleet._on_overloaded(member, sent=time.monotonic(), in_flight_at_send=25)
    assert member.stats.limit == 24.0  # the edge again (the old rule cut to 20.0)
    member.stats.succeeded += 5
    fleet._on_overloaded(member, sent=time.monotonic(), in_flight_at_send=20)  # refused at fewer: room shrank
    assert member.stats.limit == pytest.approx(19.0) and member.stats.decreases == 3


def test_the_slot_above_a_found_edge_is_probed_slowly():
    fleet = Fleet([FleetEndpoint(_Idle())], FleetConfig(default_limit=8, edge_probe_rounds=4))
    member = fleet.members[0]
    member.stats.limit = 12.0
    fleet._on_overloaded(member, sent=time.monotonic(), in_flight_at_send=9)  # edge 8, refused at 9
    successes = 0
    while member.stats.limit < 9.0:
        member.stats.in_flight = math.floor(member.stats.limit)  # the limit holds requests back
        fleet._on_success(member, None, sent=time.monotonic())
        successes += 1
    assert successes == pytest.approx(4 * 8, abs=2)  # four round trips, not one
    successes = 0
    while member.stats.limit < 10.0:  # past the edge: one round trip per step again
        member.stats.in_flight = math.floor(member.stats.limit)
        fleet._on_success(member, None, sent=time.monotonic())
        successes += 1
    assert successes == pytest.approx(9, abs=1)


def test_a_transient_5xx_is_resent_to_the_same_endpoint_once_it_answers_others():
    """One endpoint, 20 % injected 503s: the fleet re-sends each failed call there after the
    endpoint proves alive, so the caller sees no error and never has to back off."""
    with Simulator(SimulatorConfig(slots=8, service_s=0.01, fail_rate=0.2, seed=3)) as sim:
        async def run():
            fleet = fleet_of(sim.urls)
            answers = await call_many(fleet, 300, attempts=1)  # no caller retries at all
            await fleet.aclose()
            return fleet.stats()[0], answers
        stats, answers = asyncio.run(run())
        server = sim.stats()[0]
    assert server.injected > 30
    errors = [a for a in answers if not isinstance(a, Generation)]
    assert len(errors) <= 2, (stats.deaths, stats.moved, stats.succeeded, stats.failed, server.injected)  # only a call failing while nothing else was in flight may surface
    assert stats.moved >= server.injected - len(errors) and stats.deaths == 0


def test_limits_start_from_info_and_traffic_follows_capacity():
    with Simulator(SimulatorConfig(slots=12, service_s=0.03), SimulatorConfig(slots=3, service_s=0.03),
                   SimulatorConfig(slots=5, service_s=0.03, advertise_info=False)) as sim:
        async def run():
            fleet = fleet_of(sim.urls, ["tgi", "tgi", "openai"], default_limit=5)
            answers = await call_many(fleet, 200)
            await fleet.aclose()
            return fleet.stats(), answers
        stats, answers = asyncio.run(run())
        servers = sim.stats()
    assert all(isinstance(a, Generation) for a in answers)
    assert [s.info_limit for s in stats] == [12, 3, None]
    assert [s.max_input_tokens for s in stats] == [1_000_000, 1_000_000, None]
    assert [s.ceiling for s in stats[:2]] == [12.0, 3.0]
    assert [s.overloaded for s in servers[:2]] == [0, 0]  # /info's limit is never exceeded
    assert [s.max_in_flight for s in stats[:2]] == [12, 3]
    assert stats[2].max_in_flight >= 5  # stating no limit: from default_limit, probing upwards (slow start)
    assert [s.limit_source for s in stats] == ["tgi /info max_concurrent_requests"] * 2 + ["none stated: slow start from default_limit"]
    share = [s.succeeded / 200 for s in stats]  # capacity shares: 0.6, 0.15, 0.25
    assert share[0] == pytest.approx(0.6, abs=0.15) and share[1] == pytest.approx(0.15, abs=0.1)
    assert {answer.meta["endpoint"] for answer in answers} == {s.name for s in stats}


def test_aimd_cuts_on_429_and_grows_back():
    with Simulator(SimulatorConfig(slots=4, service_s=0.02, advertise_info=False)) as sim:
        async def run():
            fleet = fleet_of(sim.urls, default_limit=16)  # starts 4x too high
            answers = await call_many(fleet, 200)
            await fleet.aclose()
            return fleet.stats()[0], answers
        stats, answers = asyncio.run(run())
        server = sim.stats()[0]
    assert all(isinstance(a, Generation) for a in answers)  # 429s were re-sent inside the fleet
    assert stats.overloaded == server.overloaded > 0 and stats.decreases >= 2
    assert 2 <= stats.limit <= 8
    assert server.overloaded < 0.5 * server.served  # it learned: 429s stop dominating


def test_slow_start_climbs_to_capacity_without_info():
    with Simulator(SimulatorConfig(slots=10, service_s=0.02, advertise_info=False)) as sim:
        async def run():
            fleet = fleet_of(sim.urls, default_limit=1)
            await call_many(fleet, 200)
            await fleet.aclose()
            return fleet.stats()[0]
        stats = asyncio.run(run())
    assert stats.max_in_flight >= 8 and stats.limit >= 8


def test_rising_queue_time_cuts_the_limit():
    with Simulator(SimulatorConfig(slots=2, service_s=0.02, queue=100, advertise_info=False)) as sim:
        async def run():
            fleet = fleet_of(sim.urls, default_limit=16, queue_slack_ms=10, queue_ratio=0.5)
            await call_many(fleet, 150)
            await fleet.aclose()
            return fleet.stats()[0]
        stats = asyncio.run(run())
        server = sim.stats()[0]
    assert server.overloaded == 0  # the server queued; only x-queue-time told the fleet
    assert stats.decreases >= 1 and stats.limit < 8


def test_killed_endpoint_work_moves_and_nothing_is_lost():
    with Simulator(SimulatorConfig(slots=8, service_s=0.03), SimulatorConfig(slots=8, service_s=0.03),
                   lifetime_s=60) as sim:
        async def run():
            fleet = fleet_of(sim.urls, probe_first_s=30.0)  # no rejoin during this test
            calls = asyncio.ensure_future(call_many(fleet, 400))
            while fleet.stats()[0].succeeded < 20:  # kill it mid-run, once it has done some work
                await asyncio.sleep(0.01)
            await asyncio.get_running_loop().run_in_executor(None, sim.kill, 0)
            answers = await calls
            await fleet.aclose()
            return fleet.stats(), answers
        stats, answers = asyncio.run(run())
    assert all(isinstance(a, Generation) for a in answers), [a for a in answers if not isinstance(a, Generation)][:3]
    killed, alive = stats
    assert killed.deaths == 1 and not killed.healthy
    assert killed.moved >= 1 and killed.failures_by_kind.get("connection", 0) >= 1
    assert alive.succeeded > killed.succeeded > 0


def test_dead_endpoint_is_probed_and_rejoins():
    with Simulator(SimulatorConfig(slots=4, service_s=0.01), SimulatorConfig(slots=4, service_s=0.01)) as sim:
        async def run():
            fleet = fleet_of(sim.urls)
            await call_many(fleet, 20)
            await asyncio.get_running_loop().run_in_executor(None, sim.kill, 0)
            assert all(isinstance(a, Generation) for a in await call_many(fleet, 40))
            dead = fleet.stats()[0]
            await asyncio.get_running_loop().run_in_executor(None, sim.revive, 0)
            deadline = time.monotonic() + 5
            while not fleet.stats()[0].healthy and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            before = fleet.stats()[0].succeeded
            assert all(isinstance(a, Generation) for a in await call_many(fleet, 60))
            await fleet.aclose()
            return dead, fleet.stats()[0], before
        dead, back, before = asyncio.run(run())
    assert not dead.healthy and dead.deaths == 1
    assert back.healthy and back.rejoins == 1 and back.info_limit == 4
    assert back.succeeded > before  # it takes work again


def test_all_dead_surfaces_to_the_caller():
    with Simulator(SimulatorConfig(slots=4, service_s=0.01)) as sim:
        async def run():
            fleet = fleet_of(sim.urls, probe_first_s=30.0)
            await fleet.generate(request())
            await asyncio.get_running_loop().run_in_executor(None, sim.kill, 0)
            answers = await call_many(fleet, 30)
            with pytest.raises(EndpointError) as caught:
                await fleet.generate(request())
            await fleet.aclose()
            return answers, caught.value, fleet.stats()[0]
        answers, error, stats = asyncio.run(run())
    assert all(isinstance(a, EndpointError) and a.retryable for a in answers)
    assert error.kind == "connection" and error.retryable and "down" in str(error)
    assert not stats.healthy


def test_validation_errors_are_not_moved():
    with Simulator(SimulatorConfig(slots=4, service_s=0.01, max_input_tokens=3),
                   SimulatorConfig(slots=4, service_s=0.01, max_input_tokens=3)) as sim:
        async def run():
            fleet = fleet_of(sim.urls)
            with pytest.raises(EndpointError) as caught:
                await fleet.generate(request())
            await fleet.aclose()
            return caught.value, fleet.stats()
        error, stats = asyncio.run(run())
    assert error.kind == "validation" and not error.retryable
    assert sum(s.attempts for s in stats) == 1 and all(s.healthy for s in stats)


def test_annotator_over_a_fleet_loses_nothing(tmp_path):
    with Simulator(SimulatorConfig(slots=8, service_s=0.01, fail_rate=0.1, seed=1),
                   SimulatorConfig(slots=4, service_s=0.02, fail_rate=0.1, seed=2, advertise_info=False)) as sim:
        async def run():
            fleet = fleet_of(sim.urls, ["tgi", "openai"])
            annotator = Annotator(fleet, store, stage="fleet-test", prompt_version="v1", progress=False, seed=0,
                                  retry=RetryPolicy(base_delay_s=0.02, max_attempts=8))
            result = await annotator.run([(f"q{i}", request(i)) for i in range(200)])
            await fleet.aclose()
            return result, fleet.stats()

        with JudgmentStore(tmp_path / "judgments.sqlite") as store:
            result, stats = asyncio.run(run())
            assert store.counts(stage="fleet-test") == {"ok": 200, "unparseable": 0, "failed": 0}
    assert result.ledger.ok == 200 and result.ledger.failed == 0
    assert sum(s.prompt_tokens for s in stats) == result.ledger.prompt_tokens > 0
    assert sum(s.moved for s in stats) > 0  # some 503s were moved, never seen by the annotator
    assert result.ledger.calls < sum(s.attempts for s in stats)


def test_endpoint_that_stops_answering_times_out_and_its_work_moves():
    with Simulator(SimulatorConfig(slots=4, service_s=0.01, kill_mode="hang"),
                   SimulatorConfig(slots=4, service_s=0.01)) as sim:
        async def run():
            specs = [EndpointSpec(kind="tgi", url=url, model="judge", timeout_s=0.5) for url in sim.urls]
            fleet = Fleet.from_specs(specs, FleetConfig(dead_after=4, probe_first_s=30.0))
            await call_many(fleet, 10)
            await asyncio.get_running_loop().run_in_executor(None, sim.kill, 0)
            answers = await call_many(fleet, 60)
            await fleet.aclose()
            return answers, fleet.stats()
        answers, (hung, alive) = asyncio.run(run())
        sim.revive(0)  # let the hung handlers finish before the server stops
    assert all(isinstance(a, Generation) for a in answers)
    assert hung.failures_by_kind.get("timeout", 0) >= 4 and hung.deaths == 1 and not hung.healthy
    assert alive.succeeded >= 60 - hung.succeeded


def test_a_single_endpoint_of_a_recipe_is_a_fleet_with_the_servers_limit_and_the_recipes_cap():
    """One TGI endpoint in a recipe goes through the fleet: its in-flight limit starts from
    /info's max_concurrent_requests (not a default of 8); ``concurrency:`` only caps it."""
    from builders.methods.run import make_judges

    with Simulator(SimulatorConfig(slots=12, service_s=0.02), SimulatorConfig(slots=12, service_s=0.02)) as sim:
        async def run(spec):
            fleet = make_judges({"stage1": [spec]}, None)["stage1"]
            assert isinstance(fleet, Fleet)
            answers = await call_many(fleet, 120)
            await fleet.aclose()
            return fleet.stats()[0], answers
        free, answers = asyncio.run(run(EndpointSpec(kind="tgi", url=sim.urls[0], model="judge")))
        capped, _ = asyncio.run(run(EndpointSpec(kind="tgi", url=sim.urls[1], model="judge", concurrency=5)))
        servers = sim.stats()
    assert all(isinstance(a, Generation) for a in answers)
    assert (free.info_limit, free.limit, free.ceiling, free.limit_source) == (12, 12.0, 12.0, "tgi /info max_concurrent_requests")
    assert free.max_in_flight == 12 == servers[0].max_in_flight
    assert (capped.info_limit, capped.ceiling, capped.cap) == (12, 5.0, 5)
    assert capped.max_in_flight == 5 == servers[1].max_in_flight  # the cap, though the server offers 12
    assert servers[0].overloaded == servers[1].overloaded == 0


def test_limits_of_llamacpp_and_sglang_come_from_their_own_routes():
    from aiohttp import web

    from builders.judges.fleet import probe_limits

    async def run():
        app = web.Application()
        app.router.add_get("/props", lambda request: web.json_response({"total_slots": 6, "default_generation_settings": {}}))
        sglang = web.Application()
        sglang.router.add_get("/get_server_info", lambda request: web.json_response({"max_running_requests": 48}))
        found = []
        for application in (app, sglang, web.Application()):
            runner = web.AppRunner(application)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the port the OS chose
            async with aiohttp.ClientSession() as session:
                found.append(await probe_limits(session, f"http://127.0.0.1:{port}"))
            await runner.cleanup()
        return found

    import aiohttp

    llamacpp, sglang, vllm = asyncio.run(run())
    assert llamacpp == (6, "llama.cpp /props total_slots", None)
    assert sglang == (48, "sglang /get_server_info max_running_requests", None)
    assert vllm == (None, "none stated: slow start from default_limit", None)


def test_a_recipe_concurrency_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="concurrency must be an integer >= 1"):
        EndpointSpec(kind="tgi", url="http://127.0.0.1:9", concurrency=0)


def test_waiting_calls_get_slots_by_priority_then_in_arrival_order():
    """A streamed build numbers its chunks (``CALL_PRIORITY``): a freed slot goes to the
    earliest chunk's waiting call, so the next chunk only fills what the current one leaves."""
    from builders.judges.fleet import CALL_PRIORITY

    with Simulator(SimulatorConfig(slots=1, service_s=0.02)) as sim:
        async def run():
            fleet = fleet_of(sim.urls)
            order = []

            async def one(priority, i):
                CALL_PRIORITY.set(priority)
                await fleet.generate(request(i))
                order.append((priority, i))
            blocker = asyncio.ensure_future(one(0, -1))
            await asyncio.sleep(0.005)  # the one slot is taken: the rest wait
            later = [asyncio.ensure_future(one(1, i)) for i in range(3)]
            await asyncio.sleep(0.005)
            earlier = [asyncio.ensure_future(one(0, i)) for i in range(3, 6)]
            await asyncio.gather(blocker, *later, *earlier)
            await fleet.aclose()
            return order
        order = asyncio.run(run())
    assert order == [(0, -1), (0, 3), (0, 4), (0, 5), (1, 0), (1, 1), (1, 2)]


def test_overlapping_runs_asking_the_same_key_pay_for_it_once(tmp_path):
    """The next chunk's run may ask a key (an exact duplicate row) while the current chunk's
    run still waits for its answer: it waits for that answer instead of paying again."""
    with Simulator(SimulatorConfig(slots=4, service_s=0.05)) as sim:
        async def run():
            fleet = fleet_of(sim.urls)
            with JudgmentStore(tmp_path / "j.sqlite") as store:
                def annotator():
                    return Annotator(fleet, store, stage="s", prompt_version="v1", progress=False)
                first = asyncio.ensure_future(annotator().run([(f"k{i}", request(i)) for i in range(6)]))
                await asyncio.sleep(0.01)  # k0..k3 are in flight now
                second = await annotator().run([("k2", request(2)), ("k9", request(9))])
                first = await first
            await fleet.aclose()
            return first, second
        first, second = asyncio.run(run())
        served = sim.stats()[0].served
    assert served == 7  # k0..k5 once each, and k9
    assert second.outcomes["k2"].cached and second.outcomes["k2"].text == first.outcomes["k2"].text
    assert (second.ledger.cached, second.ledger.calls) == (1, 1)
