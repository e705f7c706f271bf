"""Annotator against the TGI stand-in: retries per TGI's error contract, parse retries,
concurrency, the durable store, resume without paying a call twice."""

import time

import pytest

from builders.judges.annotate import Annotator, RetryPolicy
from builders.judges.endpoints import make_backend
from builders.judges.endpoints.base import GenerateRequest
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.store import JudgmentStore
from tests.stand_ins.tgi_server import DROP, GARBAGE, OVERLOADED, UNAVAILABLE, VALIDATION, Fault, FaultRule, prompt_of

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, parse_retries=2)


def ask(text):
    return GenerateRequest(messages=({"role": "user", "content": text},), max_new_tokens=32)


def answer_yes(request):
    return "VERDICT yes"


def parses(text):
    return text.startswith("VERDICT")


def annotator(server, store, **options):
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url, model="judge-a", timeout_s=options.pop("timeout_s", 5)))
    options.setdefault("retry", FAST)
    return Annotator(backend, store, stage="s1", prompt_version="v1", check=parses, progress=False, seed=0, **options)


def test_retryable_errors_are_retried_then_succeed(tgi_stand_in, tmp_path):
    server = tgi_stand_in(answer_yes, faults=[
        FaultRule(OVERLOADED, match="q0"), FaultRule(UNAVAILABLE, match="q1"), FaultRule(DROP, match="q2"),
        FaultRule(Fault(delay_s=3), match="q3")])
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result = annotator(server, store, timeout_s=1.0).run_sync([(f"k{i}", ask(f"q{i}")) for i in range(5)])
        assert {o.status for o in result.outcomes.values()} == {"ok"}
        ledger = result.ledger
        assert ledger.retries == {"overloaded": 1, "server": 1, "connection": 1, "timeout": 1}
        assert ledger.calls == 9 and ledger.ok == 5 and ledger.failed == 0
        assert store.get("s1", "judge-a", "v1", "k0").attempts == 2
        assert ledger.completion_tokens == 5 * 2 and ledger.prompt_tokens > 0


def test_validation_error_is_never_retried_and_is_recorded(tgi_stand_in, tmp_path):
    server = tgi_stand_in(answer_yes, faults=[FaultRule(VALIDATION, match="bad", times=None)])
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result = annotator(server, store).run_sync([("good", ask("fine")), ("bad", ask("bad one"))])
        assert result.outcomes["bad"].status == "failed" and result.ledger.failures == {"validation": 1}
        assert server.count("bad") == 1 and result.ledger.retries == {}
        stored = store.get("s1", "judge-a", "v1", "bad")
        assert (stored.error_kind, stored.retryable, stored.meta["status"]) == ("validation", False, 422)
        again = annotator(server, store).run_sync([("good", ask("fine")), ("bad", ask("bad one"))])
        assert again.ledger.cached == 2 and again.ledger.calls == 0 and server.count("bad") == 1


def test_retryable_failure_is_retried_by_the_next_run_only(tgi_stand_in, tmp_path):
    server = tgi_stand_in(answer_yes, faults=[FaultRule(UNAVAILABLE, match="flaky", times=4)])
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        first = annotator(server, store).run_sync([("a", ask("steady")), ("b", ask("flaky"))])
        assert first.outcomes["b"].status == "failed" and first.ledger.failures == {"server": 1}
        assert store.get("s1", "judge-a", "v1", "b").retryable
        second = annotator(server, store).run_sync([("a", ask("steady")), ("b", ask("flaky"))])
        assert second.outcomes["b"].status == "ok" and second.ledger.cached == 1 and second.ledger.calls == 1
        assert server.count("steady") == 1 and server.count("flaky") == 5


def test_garbage_becomes_unparseable_after_parse_retries(tgi_stand_in, tmp_path):
    server = tgi_stand_in(answer_yes, faults=[FaultRule(GARBAGE, match="confusing", times=None)])
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result = annotator(server, store).run_sync([("x", ask("confusing")), ("y", ask("clear"))])
        assert result.outcomes["x"].status == "unparseable" and result.outcomes["x"].text == GARBAGE.text
        assert result.ledger.unparseable == 1 and result.ledger.parse_retries == 2 and result.ledger.ok == 1
        seeds = [r.body["parameters"]["seed"] for r in server.requests if "confusing" in (r.prompt or "")]
        assert seeds == [0, 1000, 2000]
        stored = store.get("s1", "judge-a", "v1", "x")
        assert stored.status == "unparseable" and stored.attempts == 3 and len(stored.meta["unparseable_texts"]) == 2


def test_a_parse_retry_that_parses_is_ok(tgi_stand_in, tmp_path):
    server = tgi_stand_in(answer_yes, faults=[FaultRule(GARBAGE, match="once")])
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result = annotator(server, store).run_sync([("x", ask("once"))])
        assert result.outcomes["x"].status == "ok" and result.ledger.parse_retries == 1


def test_requests_run_concurrently(tgi_stand_in, tmp_path):
    server = tgi_stand_in(answer_yes, delay_s=0.2)
    items = [(f"k{i}", ask(f"question {i}")) for i in range(16)]
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        started = time.monotonic()
        result = annotator(server, store, concurrency=8).run_sync(items)
        elapsed = time.monotonic() - started
    assert result.ledger.ok == 16
    assert 4 <= server.max_in_flight <= 8  # never more than the semaphore allows; clearly parallel
    assert elapsed < 16 * 0.2 / 2  # serial would take 3.2 s; 8-wide takes ~0.4 s


def test_changed_request_for_a_key_is_asked_again(tgi_stand_in, tmp_path):
    server = tgi_stand_in(answer_yes)
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        annotator(server, store).run_sync([("k", ask("first wording"))])
        result = annotator(server, store).run_sync([("k", ask("second wording"))])
        assert result.ledger.cached == 0 and result.ledger.calls == 1


def test_duplicate_keys_are_refused(tgi_stand_in, tmp_path):
    server = tgi_stand_in(answer_yes)
    with JudgmentStore(tmp_path / "j.sqlite") as store, pytest.raises(ValueError, match="appears twice"):
        annotator(server, store).run_sync([("k", ask("a")), ("k", ask("b"))])


def test_prompt_reaches_the_responder(tgi_stand_in, tmp_path):
    server = tgi_stand_in(lambda request: "VERDICT " + prompt_of(request).split("about ")[1].split("\n")[0])
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result = annotator(server, store).run_sync([("k", ask("about cats"))])
    assert result.outcomes["k"].text == "VERDICT cats"


@pytest.mark.parametrize("kind", ["tgi", "openai"])
def test_one_backend_serves_several_run_sync_calls(tgi_stand_in, tmp_path, kind):
    """Each run_sync has its own event loop; the backend's HTTP session must follow it."""
    server = tgi_stand_in(answer_yes)
    backend = make_backend(EndpointSpec(kind=kind, url=server.url, model="judge-a"))
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        for stage in ("s1", "s2", "s3"):
            result = Annotator(backend, store, stage=stage, prompt_version="v1", check=parses, progress=False,
                               retry=FAST).run_sync([(f"k{i}", ask(f"q{i}")) for i in range(3)])
            assert result.ledger.ok == 3
    assert len(server.requests) == 9


def test_fleet_backend_sets_concurrency_and_short_backoff(tmp_path):
    from builders.judges.annotate import FLEET_RETRY
    from builders.judges.fleet import Fleet, FleetConfig

    fleet = Fleet.from_specs([EndpointSpec(kind="tgi", url="http://127.0.0.1:9", model="judge")], FleetConfig(concurrency=300))
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        annotator = Annotator(fleet, store, stage="s", prompt_version="v1", concurrency=8, progress=False)
        assert annotator.concurrency == 300 and annotator.retry is FLEET_RETRY
        assert FLEET_RETRY.base_delay_s < RetryPolicy().base_delay_s
        explicit = Annotator(fleet, store, stage="s", prompt_version="v1", retry=FAST, progress=False)
        assert explicit.retry is FAST


def test_progress_bar_shows_cost_so_far(tgi_stand_in, tmp_path, monkeypatch):
    import builders.judges.annotate as annotate_module
    from builders.judges.ledger import Price

    postfixes = []

    class RecordingBar:
        def __init__(self, *args, **kwargs):
            self.n = kwargs.get("initial", 0)

        def update(self, n):
            self.n += n

        def set_postfix(self, values, refresh=False):
            postfixes.append(dict(values))

        def close(self):
            pass

    monkeypatch.setattr(annotate_module, "tqdm", RecordingBar)
    server = tgi_stand_in(answer_yes)
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result = annotator(server, store, price=Price(prompt=1_000_000.0, completion=0.0)).run_sync(
            [(f"k{i}", ask(f"q{i}")) for i in range(3)])
    assert len(postfixes) == 3
    assert float(postfixes[-1]["usd"]) == pytest.approx(result.ledger.prompt_tokens) and result.ledger.prompt_tokens > 0
