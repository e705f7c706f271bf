import json
import re
from pathlib import Path

import pytest

from builders.methods.rlhn.verdict import ParseFailure, Verdict, format_verdict, parse_verdict, verdict_regex

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "rlhn"


def _fixture(name):
    return [json.loads(line) for line in open(FIXTURES / name, encoding="utf-8")]


@pytest.mark.parametrize(
    "name, flagged, total",
    [
        ("fiqa.stage_1.gpt-4o-mini.jsonl", 17, 25),
        ("msmarco_passage.stage_1.gpt-4o-mini.jsonl", 19, 25),
        ("fiqa.stage_2.gpt-4o.jsonl", 10, 17),
        ("msmarco_passage.stage_2.gpt-4o.jsonl", 18, 19),
    ],
)
def test_real_responses_parse_and_flag_counts(name, flagged, total):
    rows = _fixture(name)
    verdicts = [parse_verdict(r["response"], len(r["negative_passages"])) for r in rows]
    assert all(isinstance(v, Verdict) for v in verdicts)
    assert (sum(v.flagged for v in verdicts), len(rows)) == (flagged, total)


def test_real_response_names_exactly_the_verdict_docs_not_the_reasoning():
    row = _fixture("fiqa.stage_1.gpt-4o-mini.jsonl")[0]
    # the reasoning mentions Doc (1)..Doc (15); the verdict names only 2, 7, 10
    assert "Doc (1):" in row["response"]
    assert parse_verdict(row["response"], 15) == Verdict(better=(), worse=(2, 7, 10))
    stage2 = {r["query_id"]: r for r in _fixture("msmarco_passage.stage_2.gpt-4o.jsonl")}
    r = next(r for r in stage2.values() if "[Doc (4), Doc (16), Doc (21)" in r["response"])
    v = parse_verdict(r["response"], 25)
    assert v.better == (4, 16, 21, 22, 23, 25) and v.worse == (11, 19, 24)
    assert v.false_negatives == (4, 11, 16, 19, 21, 22, 23, 24, 25)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("I think Doc (2) is relevant.", "no <verdict>"),
        ("<verdict><better> [Doc (2)] </better>, <worse> [Doc (", "not closed"),
        ("<verdict><better> [Doc (7)] </better>, <worse> [] </worse></verdict>", "Doc (7)"),
        ("<verdict><better> [Doc (0)] </better>, <worse> [] </worse></verdict>", "Doc (0)"),
        ("<verdict><worse> [] </worse></verdict>", "<better>"),
        ("<verdict><better> [2, 3] </better>, <worse> [] </worse></verdict>", "not a Doc reference"),
        ("<verdict><better> [Doc (1)] [Doc (2)] </better>, <worse> [] </worse></verdict>", "bracketed lists"),
    ],
)
def test_failures_have_reasons(text, reason):
    v = parse_verdict(text, 5)
    assert isinstance(v, ParseFailure)
    assert reason in v.reason
    assert not v.flagged


def test_variants_that_still_parse():
    assert parse_verdict("<VERDICT>\n<better>Preferred: []</better>,\n<worse>Relevant: [Doc(3),Doc (1), Doc (3)]\n</worse>\n</verdict>", 5) == Verdict((), (3, 1))
    # a stray earlier verdict in the reasoning: the last one counts
    text = "<thinking>draft <verdict><better>[Doc (1)]</better><worse>[]</worse></verdict></thinking>" + format_verdict([], [2])
    assert parse_verdict(text, 3) == Verdict((), (2,))
    # a response cut right after </worse> still has everything
    assert parse_verdict("<verdict><better> [] </better>, <worse> [Doc (2)] </worse>", 3) == Verdict((), (2,))
    assert parse_verdict("<verdict><better> [none] </better>, <worse> [] </worse></verdict>", 3) == Verdict((), ())


def test_constraint_regex_accepts_only_parseable_verdicts():
    rx = re.compile(verdict_regex(3, reason_max_chars=40))
    good = "<thinking>Doc 1 answers it.</thinking>\n" + format_verdict([1], [2, 3])
    assert rx.fullmatch(good)
    assert parse_verdict(good, 3) == Verdict((1,), (2, 3))
    assert not rx.fullmatch("<thinking>x</thinking>\n" + format_verdict([4], []))  # out of range
    assert not rx.fullmatch("<thinking>" + "x" * 41 + "</thinking>\n" + format_verdict([], []))
    assert rx.fullmatch("<thinking>none</thinking>\n" + format_verdict([], []))
    assert rx.fullmatch("<thinking>x</thinking>\n" + format_verdict([3, 2, 1], [1]))
    assert not rx.fullmatch("<thinking>x</thinking>\n" + format_verdict([1, 1, 1, 1], []))  # bounded: no endless lists
