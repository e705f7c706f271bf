"""Replay the real RLHN cascade (GPT-4o-mini, then GPT-4o) from tests/fixtures/rlhn through a
TGI-protocol stand-in and check flags per query and the size of every technique."""

import json
import re
from pathlib import Path

import pytest

from builders.judges.annotate import RetryPolicy
from builders.judges.endpoints import make_backend
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.store import JudgmentStore
from builders.methods.rlhn.cascade import run_rlhn_sync
from builders.methods.rlhn.refine import RefineSettings
from builders.methods.rlhn.stage import RlhnSettings, Stage
from builders.sources.readers import SourceConfig, read_source
from builders.sources.validate import validate

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "rlhn"
SUBSETS = ("fiqa", "msmarco_passage")


def fixture_rows(subset: str):
    return list(validate(read_source(SourceConfig(path=str(FIXTURES / f"{subset}.stage_1.gpt-4o-mini.jsonl"))), "fail"))


def recorded(subset: str, stage: int) -> dict[str, str]:
    name = f"{subset}.stage_1.gpt-4o-mini.jsonl" if stage == 1 else f"{subset}.stage_2.gpt-4o.jsonl"
    return {json.loads(x)["query"]: json.loads(x)["response"] for x in open(FIXTURES / name, encoding="utf-8")}


def query_in_prompt(prompt: str) -> str:
    m = re.search(r"Query: (.*)$", prompt, re.MULTILINE)
    assert m, "prompt has no 'Query:' line"
    return m.group(1)


def replayer(answers: dict[str, str]):
    by_normalized = {" ".join(q.split()): a for q, a in answers.items()}

    def respond(request: dict) -> str:
        from tests.stand_ins.tgi_server import prompt_of

        return by_normalized[query_in_prompt(prompt_of(request))]

    return respond


def independent_fn(response: str) -> set[int]:
    """A deliberately simple second reading of a verdict: Doc numbers after the last <verdict>."""
    return {int(x) for x in re.findall(r"Doc \((\d+)\)", response[response.rfind("<verdict") :])}


def stages_for(stand_in, subsets=SUBSETS, faults1=None, faults2=None, **spec):
    a1, a2 = {}, {}
    for s in subsets:
        a1.update(recorded(s, 1))
        a2.update(recorded(s, 2))
    big = dict(max_input_tokens=200_000, max_total_tokens=300_000)  # the GPT-4o context, not TGI's default
    s1 = stand_in(replayer(a1), faults=faults1, **big)
    s2 = stand_in(replayer(a2), faults=faults2, **big)
    b1 = make_backend(EndpointSpec(kind="tgi", url=s1.url, model="gpt-4o-mini (replay)", **spec))
    b2 = make_backend(EndpointSpec(kind="tgi", url=s2.url, model="gpt-4o (replay)", **spec))
    return (s1, s2), [Stage("stage1", b1), Stage("stage2", b2)]


FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, parse_retries=1)
EXPECTED = {  # from the fixture data: rows / positives / negatives per technique
    "fiqa": {"default": (25, 74, 375), "remove": (15, 29, 225), "hn_remove": (25, 74, 352), "rlhn": (25, 97, 352)},
    "msmarco_passage": {"default": (25, 25, 625), "remove": (7, 7, 175), "hn_remove": (24, 24, 556), "rlhn": (24, 68, 556)},
}


def test_replay_flags_and_techniques(tgi_stand_in, tmp_path):
    rows = [r for s in SUBSETS for r in fixture_rows(s)]
    servers, stages = stages_for(tgi_stand_in)
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result, ledgers = run_rlhn_sync(rows, stages, RlhnSettings(concurrency=4), store, FAST_RETRY, progress=False)
    st = result.stats
    # stage 1 flags fiqa 17/25, msmarco 19/25; stage 2 confirms 10/17 and 18/19
    assert (st["fiqa"]["judged_stage1"], st["fiqa"]["flagged_stage1"]) == (25, 17)
    assert (st["msmarco_passage"]["judged_stage1"], st["msmarco_passage"]["flagged_stage1"]) == (25, 19)
    assert (st["fiqa"]["judged_stage2"], st["fiqa"]["flagged_stage2"]) == (17, 10)
    assert (st["msmarco_passage"]["judged_stage2"], st["msmarco_passage"]["flagged_stage2"]) == (19, 18)
    assert st["fiqa"]["parse_failures"] == 0 and st["fiqa"]["judge_calls_stage1"] == 25
    # per query: the flags and the false negatives equal an independent reading of the responses
    for subset in SUBSETS:
        r1, r2 = recorded(subset, 1), recorded(subset, 2)
        j1 = {j["query_id"]: j for j in result.judgments if j["stage"] == "stage1" and j["subset"] == subset}
        j2 = {j["query_id"]: j for j in result.judgments if j["stage"] == "stage2" and j["subset"] == subset}
        for row in (r for r in rows if r.subset == subset):
            fn1 = independent_fn(r1[row.query])
            assert set(j1[row.query_id]["better"]) | set(j1[row.query_id]["worse"]) == fn1
            assert (row.query_id in j2) == bool(fn1) == (row.query in r2)
            final = independent_fn(r2[row.query]) if fn1 else set()
            if row.query_id in j2:
                assert set(j2[row.query_id]["better_docids"]) | set(j2[row.query_id]["worse_docids"]) == {row.negative_passages[i - 1].docid for i in final}
            rl = next(x for x in result.configs["rlhn"] + [None] if x is None or x.query_id == row.query_id)
            if len(final) <= 8:
                moved = [p.docid for p in rl.positive_passages[len(row.positive_passages):]]
                assert moved == [row.negative_passages[i - 1].docid for i in sorted(final)]
            else:
                assert rl is None
    for subset, techniques in EXPECTED.items():
        for tech, (n, pos, neg) in techniques.items():
            got = [r for r in result.configs[tech] if r.subset == subset]
            assert (len(got), sum(len(r.positive_passages) for r in got), sum(len(r.negative_passages) for r in got)) == (n, pos, neg), (subset, tech)
            assert (st[subset][f"{tech}:rows"], st[subset][f"{tech}:positives"], st[subset][f"{tech}:negatives"]) == (n, pos, neg)
    # one call per stage-1 query and per stage-2 query: nothing asked twice
    assert len(servers[0].requests) == 50 and len(servers[1].requests) == 36
    assert {j.model for j in result.judges} == {"gpt-4o-mini (replay)", "gpt-4o (replay)"}


def test_max_flagged_setting_changes_only_the_edited_configs():
    """Final decisions read from the recorded answers (no server): one msmarco query has 9
    false negatives, so max_flagged=8 drops it from rlhn/hn_remove and None keeps it."""
    from builders.methods.rlhn.refine import Decision, refine, row_key
    from builders.methods.rlhn.verdict import parse_verdict

    rows = fixture_rows("msmarco_passage")
    r2 = recorded("msmarco_passage", 2)
    decisions = {}
    for row in rows:
        v = parse_verdict(r2[row.query], len(row.negative_passages)) if row.query in r2 else None
        fns = tuple(row.negative_passages[i - 1].docid for i in v.false_negatives) if v else ()
        decisions[row_key(row)] = Decision("flagged" if fns else "clean", fns)
    default, _ = refine(rows, decisions, RefineSettings())
    unlimited, stats = refine(rows, decisions, RefineSettings(max_flagged=None))
    assert len(default["rlhn"]) == 24 and len(unlimited["rlhn"]) == 25 and len(unlimited["hn_remove"]) == 25
    assert len(default["remove"]) == len(unlimited["remove"]) == 7
    assert stats["msmarco_passage"]["rows_over_max_flagged"] == 0 and stats["msmarco_passage"]["false_negatives"] == 53


@pytest.mark.parametrize("subset", ["arguana"])
def test_untouched_subset_is_never_judged(tgi_stand_in, tmp_path, subset):
    from dataclasses import replace

    rows = [replace(r, subset=subset) for r in fixture_rows("fiqa")[:5]]
    servers, stages = stages_for(tgi_stand_in, subsets=("fiqa",))
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result, _ = run_rlhn_sync(rows, stages, RlhnSettings(), store, FAST_RETRY, progress=False)
    assert not servers[0].requests and all(result.configs[t] == rows for t in ("default", "remove", "hn_remove", "rlhn"))


def replay_recipe_dict(url1: str, url2: str, subsets=("fiqa",), **rlhn) -> dict:
    """A recipe that builds from the RLHN fixture rows with the two replaying stand-ins."""
    judge = {"kind": "tgi", "timeout_s": 5.0, "concurrency": 4}
    return {
        "name": "replay",
        "sources": [{"path": str(FIXTURES / f"{s}.stage_1.gpt-4o-mini.jsonl")} for s in subsets],
        "validation": {"policy": "fail"},
        "judges": {"stage1": dict(judge, url=url1, model="gpt-4o-mini (replay)"), "stage2": dict(judge, url=url2, model="gpt-4o (replay)")},
        "rlhn": dict({"parse_retries": 1}, **rlhn),
        "output": {"folder": "out", "store": ".hardneg-cache/replay/judgments.sqlite"},
        "card": {"license": "apache-2.0", "pretty_name": "RLHN replay", "source_dataset": "rlhn/rlhn-680K (fixture sample)"},
    }


def test_windows_map_doc_numbers_back_and_send_the_verdict_grammar(tgi_stand_in, tmp_path):
    """10 negatives in windows of 4: each window is numbered Doc (1).. again; a judge naming
    Doc (1) everywhere flags negatives 1, 5 and 9. One stage only: its verdict is final."""
    from builders.methods.rlhn.verdict import format_verdict
    from builders.rows import Passage, QueryRow

    row = QueryRow.from_query("which bird is a kiwi", [Passage.from_text("A kiwi is a bird.")], [Passage.from_text(f"negative number {i}") for i in range(10)], "nq")
    server = tgi_stand_in(lambda request: "<thinking>Doc (1) fits.</thinking>\n" + format_verdict([1], []))
    stage = Stage("stage1", make_backend(EndpointSpec(kind="tgi", url=server.url, model="judge")))
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result, _ = run_rlhn_sync([row], [stage], RlhnSettings(negatives_per_prompt=4, reason_max_chars=50), store, FAST_RETRY, progress=False)
        capped, _ = run_rlhn_sync([row], [stage], RlhnSettings(negatives_per_prompt=4, max_prompts_per_query=2, reason_max_chars=50), store, FAST_RETRY, progress=False)
    assert [p.text for p in result.configs["rlhn"][0].positive_passages[1:]] == ["negative number 0", "negative number 4", "negative number 8"]
    assert [j["window_start"] for j in result.judgments] == [0, 4, 8] and [len(j["window_docids"]) for j in result.judgments] == [4, 4, 2]
    grammar = [r.body["parameters"]["grammar"] for r in server.requests]
    assert len(grammar) == 3 and {g["type"] for g in grammar} == {"regex"}
    assert sorted(r"Doc \((4|3|2|1)\)" in g["value"] for g in grammar) == [False, True, True]
    assert sum(r"Doc \((2|1)\)" in g["value"] for g in grammar) == 1
    # capped: 2 windows judged (the first two were stored: no new call), 2 negatives left as they are
    assert len(server.requests) == 3
    assert [p.text for p in capped.configs["rlhn"][0].positive_passages[1:]] == ["negative number 0", "negative number 4"]
    assert capped.stats["nq"]["negatives_not_judged"] == 2 and len(capped.configs["rlhn"][0].negative_passages) == 8


def test_duplicate_rows_share_one_judgment(tgi_stand_in, tmp_path):
    from builders.methods.rlhn.verdict import format_verdict

    rows = fixture_rows("fiqa")[:2]
    rows = [rows[0], rows[1], rows[0]]
    server = tgi_stand_in(lambda request: format_verdict([2], []), max_input_tokens=200_000, max_total_tokens=300_000)
    stage = Stage("stage1", make_backend(EndpointSpec(kind="tgi", url=server.url, model="judge")))
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result, _ = run_rlhn_sync(rows, [stage], RlhnSettings(), store, FAST_RETRY, progress=False)
    assert len(server.requests) == 2 and len(result.judgments) == 2
    assert len(result.configs["rlhn"]) == 3 and result.configs["rlhn"][0] == result.configs["rlhn"][2]
    assert result.stats["fiqa"]["judge_calls_stage1"] == 2 and result.stats["fiqa"]["flagged_stage1"] == 3
