"""The cost ledger: price math, sums per stage/judge/endpoint, feeding from the annotator and
the fleet, and the dry-run estimate against an actual simulator run with known token counts."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from bench.simulator import Simulator, SimulatorConfig, count_chat_tokens
from builders.judges.annotate import Annotator, Ledger, RetryPolicy
from builders.judges.endpoints.base import GenerateRequest
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.fleet import Fleet, FleetConfig
from builders.judges.ledger import ANNOTATOR_ROW, CostLedger, Price, StagePlan, chat_token_counter, load_prices
from builders.judges.store import JudgmentStore


def test_price_math_and_table_checks():
    assert Price(prompt=2.5, completion=10.0).usd(1_000_000, 500_000) == pytest.approx(7.5)
    assert Price(0.15, 0.6).usd(12_345, 678) == pytest.approx((12_345 * 0.15 + 678 * 0.6) / 1e6)
    prices = load_prices({"gpt-4o-mini": {"prompt": 0.15, "completion": 0.6}, "local": {"prompt": 0, "completion": 0}})
    assert prices["gpt-4o-mini"] == Price(0.15, 0.6) and prices["local"].usd(10**9, 10**9) == 0
    with pytest.raises(ValueError, match=r"prices\.gpt-4o\.completion must be a number"):
        load_prices({"gpt-4o": {"prompt": 2.5, "completion": "ten"}})
    with pytest.raises(ValueError, match=r"prices\.gpt-4o must be \{prompt"):
        load_prices({"gpt-4o": {"prompt": 2.5}})


def test_rows_sum_per_stage_and_in_total():
    ledger = CostLedger(prices={"mini": Price(1.0, 2.0)})
    ledger.add("stage1", "mini", "http://a", requests=10, answered=9, prompt_tokens=1000, completion_tokens=100,
               failures=1, retries=1, wall_s=5.0)
    ledger.add("stage1", "mini", "http://b", requests=5, answered=5, prompt_tokens=500, completion_tokens=50, wall_s=5.0)
    ledger.add("stage2", "big", "http://c", requests=3, answered=3, prompt_tokens=300, completion_tokens=30, wall_s=2.0)
    ledger.add("stage1", "mini", "http://a", requests=1, answered=1, prompt_tokens=100, completion_tokens=10, wall_s=6.0)
    stage1, stage2 = ledger.stage_totals()
    assert (stage1.requests, stage1.answered, stage1.prompt_tokens, stage1.completion_tokens) == (16, 15, 1600, 160)
    assert stage1.wall_s == 6.0 and stage2.requests == 3
    total = ledger.total()
    assert (total.requests, total.prompt_tokens, total.failures, total.wall_s) == (19, 1900, 1, 8.0)
    assert ledger.usd(stage1) == pytest.approx((1600 * 1.0 + 160 * 2.0) / 1e6)
    assert ledger.usd(stage2) is None and ledger.unpriced() == ["big"]
    assert ledger.total_usd() == pytest.approx((1600 + 320) / 1e6)  # only what has a price
    data = json.loads(ledger.to_json())
    assert data["total"]["requests"] == 19 and data["unpriced_judges"] == ["big"]
    assert [row["endpoint"] for row in data["rows"]] == ["http://a", "http://b", "http://c"]
    table = ledger.render()
    assert "http://b" in table and "1,600" in table and "no price for: big" in table
    with pytest.raises(ValueError, match="unknown ledger column"):
        ledger.add("stage1", "mini", "x", tokens=3)


def test_annotator_ledger_without_a_fleet_is_one_row():
    run = Ledger(items=10, calls=14, ok=8, unparseable=1, failed=1, parse_retries=2, prompt_tokens=700,
                 completion_tokens=90, wall_s=3.0)
    run.retries.update({"server": 2})
    ledger = CostLedger()
    ledger.add_annotation("stage1", "judge", run, endpoint="http://one")
    (row,) = ledger.rows.values()
    assert (row.requests, row.answered, row.retries, row.failures, row.lost) == (14, 11, 4, 3, 1)
    assert row.requests == row.answered + row.failures  # every call either answered or failed


def _stage(items, urls, store, stage, completion=(4, 12)):
    async def run():
        fleet = Fleet.from_specs([EndpointSpec(kind=kind, url=url, model="judge-model", timeout_s=5.0)
                                  for kind, url in zip(["tgi", "openai"], urls)], FleetConfig())
        await fleet.start()
        before = fleet.stats()
        annotator = Annotator(fleet, store, stage=stage, prompt_version="v1", progress=False, seed=0,
                              retry=RetryPolicy(base_delay_s=0.02, max_attempts=8))
        result = await annotator.run(items)
        after = fleet.stats()
        await fleet.aclose()
        return result, before, after
    return asyncio.run(run())


def _questions(n: int, seed: int, words: tuple[int, int]) -> list[tuple[str, GenerateRequest]]:
    rng = random.Random(seed)
    vocabulary = "query passage relevant answer document retrieval judge negative positive score".split()
    return [(f"q{i}", GenerateRequest(messages=({"role": "user", "content": " ".join(
        rng.choice(vocabulary) for _ in range(rng.randint(*words)))},), max_new_tokens=32)) for i in range(n)]


def test_fleet_run_feeds_rows_that_add_up_and_the_estimate_is_within_10_percent(tmp_path):
    prices = {"judge-model": Price(prompt=0.15, completion=0.6)}
    stage1 = _questions(150, seed=1, words=(40, 120))
    stage2_all = _questions(150, seed=2, words=(80, 200))  # the stage-2 prompt every row would get
    flagged = [item for i, item in enumerate(stage2_all) if i % 10 < 3]  # stage 1 flags 30 %
    with Simulator(SimulatorConfig(slots=8, service_s=0.005, fail_rate=0.1, completion_tokens=(4, 12), seed=1),
                   SimulatorConfig(slots=4, service_s=0.005, fail_rate=0.1, completion_tokens=(4, 12), seed=2,
                                   advertise_info=False)) as sim, JudgmentStore(tmp_path / "j.sqlite") as store:
        actual = CostLedger(prices=prices)
        for stage, items in (("stage1", stage1), ("stage2", flagged)):
            result, before, after = _stage(items, sim.urls, store, stage)
            actual.add_annotation(stage, "judge-model", result.ledger, before, after)
            assert result.ledger.ok == len(items)
            totals = {row.stage: row for row in actual.stage_totals()}[stage]
            assert totals.prompt_tokens == result.ledger.prompt_tokens  # endpoint rows add up to the run
            assert totals.completion_tokens == result.ledger.completion_tokens
            assert totals.answered == len(items) and totals.lost == 0
            assert totals.requests == totals.answered + totals.failures
            assert totals.retries == sum(s.moved for s in after) - sum(s.moved for s in before) + sum(result.ledger.retries.values())
        served = sum(s.served for s in sim.stats())
    assert ANNOTATOR_ROW in {row.endpoint for row in actual.rows.values()}
    assert actual.total().answered == served == 150 + 45

    estimate = CostLedger.estimate([
        StagePlan("stage1", "judge-model", [count_chat_tokens(r.messages) for _, r in stage1], completion_tokens=8),
        StagePlan("stage2", "judge-model", [count_chat_tokens(r.messages) for _, r in stage2_all], share=0.3,
                  completion_tokens=8),
    ], prices)
    assert estimate.estimated and "dry run" in estimate.render()
    for guess, real in zip(estimate.stage_totals(), actual.stage_totals()):
        assert guess.requests == real.answered
        assert guess.prompt_tokens == pytest.approx(real.prompt_tokens, rel=0.10)
        assert guess.completion_tokens == pytest.approx(real.completion_tokens, rel=0.10)
        assert estimate.usd(guess) == pytest.approx(actual.usd(real), rel=0.10)
    assert estimate.total_usd() == pytest.approx(actual.total_usd(), rel=0.10)
    assert estimate.as_dict().keys() == actual.as_dict().keys()


class _WordTokenizer:
    """A stand-in tokenizer: one id per word, a BOS when asked for special tokens, an optional
    chat template that wraps each message in two marker tokens."""

    bos_token, bos_token_id = "<s>", 0

    def __init__(self, template: bool):
        self.chat_template = "markers" if template else None

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        text = " ".join(f"<{m['role']}> {m['content']} </{m['role']}>" for m in messages)
        return text + (" <assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=True):
        class Encoding:
            input_ids = ([0] if add_special_tokens else []) + [1] * len(text.split())
        return Encoding()


def test_chat_token_counter_uses_the_judge_tokenizer():
    messages = [{"role": "system", "content": "judge relevance"}, {"role": "user", "content": "is this relevant"}]
    with_template = chat_token_counter(_WordTokenizer(template=True))
    assert with_template(messages) == 2 + 2 + 3 + 2 + 1  # markers + words + generation prompt, no extra BOS
    plain = chat_token_counter(_WordTokenizer(template=False))
    assert plain(messages) == 1 + len("System: judge relevance User: is this relevant Assistant:".split())
