"""The run's judge-call accounting is exact for every method, also on a resumed build: the
CLI's "N judge calls, M answers from the store" lines, the report's ``judge_runs`` and the
cost ledger count the calls THIS run made (what the TGI stand-in saw), answers read from the
store count as such and cost nothing; the card (which describes the stored answers) stays the
same. A run killed half-way is simulated by a store holding part of a clean run's answers."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from builders.build import build
from builders.judges.store import JudgmentStore
from builders.recipe import load_recipe
from tests.builders.test_build_methods import ARHN, EIFFEL, HAMLET, respond
from tests.stand_ins.tgi_server import tokenize

PRICES = {"stand-in/judge": {"prompt": 1.0, "completion": 2.0}}
STAGES = {"arhn": ("arhn/extract", "arhn/rank"), "clear": ("clear/answer", "clear/score")}


def recipe_path(tmp_path: Path, label: str, url: str, method: str, store: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    rows = [dict(EIFFEL), dict(HAMLET)]
    for r in rows:  # CLEAR extracts its answers with the judge (no answer column)
        r.pop("pos_scores"), r.pop("neg_scores")
    (data / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    methods = {"arhn": {"arhn": ARHN},
               "clear": {"clear": {"tau": 0.01, "phi": 0.3, "max_pfn": 2, "extract_answers": True}}}[method]
    recipe = {
        "name": "ledger", "sources": [{"path": str(data / "rows.jsonl"), "subset": "nq"}],
        "judges": {"stage1": {"kind": "tgi", "url": url, "model": "stand-in/judge", "concurrency": 2}},
        "output": {"folder": str(tmp_path / label / "out"), "store": str(store)},
        "card": {"license": "mit"}, "prices": PRICES, **methods,
    }
    path = tmp_path / f"{label}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def judge_calls(server) -> int:
    return len([r for r in server.requests if r.path in ("/generate", "/")])


def run_build(path: Path, server) -> tuple[dict, dict[str, tuple[int, int]], int, str]:
    """-> (report, CLI lines: stage -> (calls, from the store), the stand-in's calls, the card)."""
    before = judge_calls(server)
    printed = io.StringIO()
    report = build(load_recipe(path), "python -m builders.cli recipe.yaml", progress=False, out=printed)
    lines = {m[1]: (int(m[2]), int(m[3])) for m in
             re.finditer(r"^(\S+): (\d+) judge calls, (\d+) answers from the store", printed.getvalue(), re.M)}
    card = (Path(report["folder"]) / "README.md").read_text(encoding="utf-8")
    return report, lines, judge_calls(server) - before, card


def ledger_requests(report: dict) -> dict[str, int]:
    return {row["stage"]: row["requests"] for row in report["ledger"]["stages"]}


@pytest.mark.parametrize("method", ["arhn", "clear"])
def test_rerun_on_the_same_store_calls_nothing_and_costs_nothing(tgi_stand_in, tmp_path, method):
    server = tgi_stand_in(respond)
    path = recipe_path(tmp_path, "twice", server.url, method, tmp_path / "j.sqlite")
    first, lines, seen, card = run_build(path, server)
    stages = STAGES[method]
    assert set(lines) == set(stages) and seen > 0
    items = {stage: first["judge_runs"][stage]["items"] for stage in stages}
    assert all(items.values())
    # first run: every answer is a call, none from the store; the stand-in saw exactly those calls
    assert all(lines[stage][1] == 0 for stage in stages)
    assert sum(lines[stage][0] for stage in stages) == seen == first["ledger"]["total"]["requests"]
    assert ledger_requests(first) == {stage: lines[stage][0] for stage in stages}
    assert first["ledger"]["total"]["usd"] > 0

    again, lines, seen, card_again = run_build(path, server)
    assert seen == 0
    assert lines == {stage: (0, items[stage]) for stage in stages}
    assert {stage: again["judge_runs"][stage]["cached"] for stage in stages} == items
    assert again["ledger"]["total"]["requests"] == 0 and again["ledger"]["total"]["usd"] == 0
    assert card_again == card  # the card describes the stored answers: the same on a rerun
    assert "## Cost ledger" in card


def keep_part(full: Path, part: Path, keep) -> dict[str, tuple[int, int]]:
    """Copy the judgments ``keep(index)`` picks from ``full`` into a new store ``part``
    -> stage -> (answers kept, calls the dropped ones cost)."""
    out: dict[str, list[int]] = {}
    with JudgmentStore(full, readonly=True) as source, JudgmentStore(part) as target:
        for i, j in enumerate(sorted(source.judgments(), key=lambda j: (j.stage, j.key))):
            tally = out.setdefault(j.stage, [0, 0])
            if keep(i):
                target.put(j)
                tally[0] += 1
            else:
                tally[1] += j.attempts
    return {stage: (kept, dropped) for stage, (kept, dropped) in out.items()}


@pytest.mark.parametrize("method", ["arhn", "clear"])
def test_killed_half_way_reports_exactly_the_remaining_calls(tgi_stand_in, tmp_path, method):
    server = tgi_stand_in(respond)
    clean, _, clean_calls, clean_card = run_build(recipe_path(tmp_path, "clean", server.url, method, tmp_path / "clean.sqlite"), server)
    part = keep_part(tmp_path / "clean.sqlite", tmp_path / "half.sqlite", keep=lambda i: i % 2 == 0)
    remaining = sum(dropped for _, dropped in part.values())
    assert 0 < remaining < clean_calls and any(kept for kept, _ in part.values())

    resumed, lines, seen, card = run_build(recipe_path(tmp_path, "resumed", server.url, method, tmp_path / "half.sqlite"), server)
    assert seen == remaining == resumed["ledger"]["total"]["requests"]
    assert lines == {stage: (part[stage][1], part[stage][0]) for stage in STAGES[method]}
    assert ledger_requests(resumed) == {stage: part[stage][1] for stage in STAGES[method]}
    assert resumed["ledger"]["total"]["usd"] < clean["ledger"]["total"]["usd"]
    # the outputs and the card are those of the uninterrupted build (the folders differ by name only)
    assert card.replace("/resumed/", "/clean/") == clean_card


def score_tokens_received(server) -> int:
    """The prompt tokens of the score calls the stand-in answered, as it counted them: TGI's
    prefill (``<s>`` + the input's tokens, its x-prompt-tokens), vLLM's echoed prompt (usage)."""
    tgi = [r for r in server.requests if r.path in ("/generate", "/") and r.status == 200
           and (r.body.get("parameters") or {}).get("decoder_input_details")]
    vllm = [r for r in server.requests if r.path == "/v1/completions" and r.status == 200]
    return sum(1 + len(tokenize(r.body["inputs"])) for r in tgi) + sum(len(tokenize(r.body["prompt"])) for r in vllm)


@pytest.mark.parametrize("kind", ["tgi", "openai"])
def test_clear_scoring_calls_are_paid_for(tgi_stand_in, tmp_path, kind):
    server = tgi_stand_in(respond)
    path = recipe_path(tmp_path, "score", server.url, "clear", tmp_path / "j.sqlite")
    if kind == "openai":  # a vLLM-style judge: chat for the answers, /v1/completions echo for the scores
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
        recipe["judges"]["stage1"] = {"kind": "openai", "url": server.url + "/v1", "model": "stand-in/judge",
                                      "response_format_style": "vllm", "concurrency": 2}
        path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    report, lines, seen, card = run_build(path, server)
    received = score_tokens_received(server)
    score = next(row for row in report["ledger"]["stages"] if row["stage"] == "clear/score")
    assert received > 100 and score["requests"] == lines["clear/score"][0] > 0
    assert score["prompt_tokens"] == received == report["judge_runs"]["clear/score"]["prompt_tokens"]
    assert score["completion_tokens"] == (score["requests"] if kind == "tgi" else 0)  # TGI generates one token
    assert score["usd"] == pytest.approx((received * 1.0 + score["completion_tokens"] * 2.0) / 1e6) and score["usd"] > 0
    judgments = pq.read_table(next((Path(report["folder"]) / "judgments_clear").glob("*.parquet"))).to_pylist()
    assert sum(j["prompt_tokens"] for j in judgments if j["stage"] == "clear/score") == received  # the judgment rows
    # the card's ledger (read from the stored judgments) shows the same tokens
    ledger_section = card.split("## Cost ledger", 1)[1]
    card_row = next(line for line in ledger_section.splitlines() if line.startswith("| clear/score |"))
    assert f"| {received:,} |" in card_row
    again, lines, seen, _ = run_build(path, server)
    score = next(row for row in again["ledger"]["stages"] if row["stage"] == "clear/score")
    assert seen == 0 and (score["requests"], score["prompt_tokens"], score["usd"]) == (0, 0, 0)


def test_clear_scoring_through_a_fleet_counts_tokens_per_endpoint(tgi_stand_in, tmp_path):
    servers = [tgi_stand_in(respond), tgi_stand_in(respond)]
    path = recipe_path(tmp_path, "fleet", servers[0].url, "clear", tmp_path / "j.sqlite")
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    recipe["judges"]["stage1"] = [{"kind": "tgi", "url": s.url, "model": "stand-in/judge", "concurrency": 2} for s in servers]
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    report = build(load_recipe(path), "python -m builders.cli recipe.yaml", progress=False, out=io.StringIO())
    answered = [r for s in servers for r in s.requests if r.path == "/generate" and r.status == 200
                and not r.body["parameters"].get("decoder_input_details")]
    received = sum(score_tokens_received(s) for s in servers) + sum(1 + len(tokenize(r.body["inputs"])) for r in answered)
    rows = [row for row in report["ledger"]["rows"] if row["stage"] in ("clear/answer", "clear/score")]
    assert {row["endpoint"] for row in rows} >= {s.url for s in servers}  # one row per stage and endpoint
    assert received > 100 and sum(row["prompt_tokens"] for row in rows) == received
