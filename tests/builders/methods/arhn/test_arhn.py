"""ARHN / PRHN driven through the TGI stand-in with scripted judge answers: exact decisions."""

from __future__ import annotations

import pyarrow as pa
import pytest

from builders.judges.annotate import RetryPolicy
from builders.judges.endpoints import make_backend
from builders.judges.endpoints.spec import EndpointSpec
from builders.judges.store import JudgmentStore
from builders.methods.arhn.ranking import Ranking
from builders.methods.arhn.snippets import extract_regex
from builders.methods.arhn.stages import JUDGMENT_SCHEMA, ArhnSettings, RetrieverCut, apply, decide, run
from builders.rows import Passage, QueryRow
from tests.stand_ins.tgi_server import VALIDATION, FaultRule, prompt_of

P = Passage.from_text


def row(query, positive, negatives, subset="nq"):
    return QueryRow.from_query(query, [P(positive)], [P(n) for n in negatives], subset)


ROWS = [
    row("Who designed the Eiffel Tower?",  # A: relabel + filter + hallucination + NO_ANSWER
        "The Eiffel Tower was designed by the engineering firm of Gustave Eiffel. It opened in 1889.",
        ["Gustave Eiffel's company designed and built the tower in Paris.",
         "The tower is repainted every seven years.",
         "Bananas are rich in potassium.",
         "Maurice Koechlin drew the first sketch of the tower. He worked for Eiffel."]),
    row("What is the boiling point of water at sea level?",  # B: no candidates -> no rank call
        "At sea level, water boils at 100 degrees Celsius.",
        ["Ice floats because it is less dense than water.", "The Dead Sea is very salty."]),
    row("How tall is Mount Everest?",  # C: malformed extract + malformed ranking
        "Mount Everest is 8,849 metres tall according to the 2020 survey.",
        ["Everest rises about 8.8 km above sea level.", "K2 is the second highest mountain.",
         "The summit of Everest stands at 8,848 m."]),
    row("Who wrote Hamlet?",  # D: unreadable ranking -> parse failure, nothing decided
        "Hamlet is a tragedy written by William Shakespeare.",
        ["Shakespeare wrote Hamlet around 1600.", "Macbeth is set in Scotland."]),
    row("Is nuclear power safe?", "Counter: waste storage is unsolved.", ["Pro: low emissions."], subset="arguana"),
    row("What colour is the sky on Mars?",  # F: the positive has no snippet -> skipped
        "Mars has two small moons.", ["The Martian sky looks butterscotch by day."]),
    row("Who painted the Mona Lisa?",  # G: the extract call fails with 422
        "Leonardo da Vinci painted the Mona Lisa.", ["The Louvre is in Paris."]),
]

EXTRACT = {
    "Who designed the Eiffel Tower?": (
        "[[[doc1]]]\nThe Eiffel Tower was designed by the engineering firm of Gustave Eiffel.\n[[[/doc1]]]\n\n"
        "[[[doc2]]]\nGustave Eiffel's company designed and built the tower in Paris.\n[[[/doc2]]]\n\n"
        "[[[doc3]]]\nThe tower was designed by Stephen Sauvestre.\n[[[/doc3]]]\n\n"
        "[[[doc4]]]\nNO_ANSWER\n[[[/doc4]]]\n\n"
        "[[[doc5]]]\nMaurice Koechlin drew the first sketch of the tower.\n[[[/doc5]]]"),
    "What is the boiling point of water at sea level?": (
        "[[[doc1]]]At sea level, water boils at 100 degrees Celsius.[[[/doc1]]]"
        "[[[doc2]]]NO_ANSWER[[[/doc2]]][[[doc3]]]no answer[[[/doc3]]]"),
    "How tall is Mount Everest?": (
        "Here are the snippets!\n[[[DOC1]]] Mount Everest is 8,849 metres tall [[[/doc1]]]\n"
        "[[[doc2]]]Everest rises about 8.8 km above sea level.[[[/doc2]]]\n"
        "[[[doc4]]]The summit of Everest stands at 8,848 m.[[[/doc4]]]\n[[[doc4]]]again[[[/doc4]]]"),
    "Who wrote Hamlet?": (
        "[[[doc1]]]Hamlet is a tragedy written by William Shakespeare.[[[/doc1]]]"
        "[[[doc2]]]Shakespeare wrote Hamlet around 1600.[[[/doc2]]][[[doc3]]]NO_ANSWER[[[/doc3]]]"),
    "What colour is the sky on Mars?": (
        "[[[doc1]]]NO_ANSWER[[[/doc1]]][[[doc2]]]The Martian sky looks butterscotch by day.[[[/doc2]]]"),
}
RANK = {
    "Who designed the Eiffel Tower?": "[2] > [1] > [3]",
    "How tall is Mount Everest?": "Ranking: [3] > [9] > [1] > [3]",
    "Who wrote Hamlet?": "I think the first one is best.",
}


def responder(request):
    prompt = prompt_of(request)
    table = EXTRACT if "Reply with exactly" in prompt else RANK
    for query, answer in table.items():
        if f"Question: {query}" in prompt:
            return answer
    raise AssertionError(f"unscripted prompt: {prompt[:200]}")


def docids(passages):
    return [p.docid for p in passages]


@pytest.fixture(scope="module")
def cut():
    return RetrieverCut()  # the bundled MiniLM tokenizer, 256 tokens: these passages stay whole


@pytest.fixture
def judged(tgi_stand_in, tmp_path, cut):
    server = tgi_stand_in(responder, faults=[FaultRule(VALIDATION, match="Question: Who painted the Mona Lisa?", times=None)])
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url, model="stand-in/judge", concurrency=2))
    store = JudgmentStore(tmp_path / "judgments.sqlite")
    settings = ArhnSettings(constrained="off")
    retry = RetryPolicy(max_attempts=2, base_delay_s=0.0, parse_retries=1)
    result = run(ROWS, settings, backend=backend, store=store, cut=cut, retry=retry)
    yield result, server, backend, store, settings, retry
    store.close()


def test_decisions_per_query(judged):
    result = judged[0]
    a, b, c, d, e, f, g = ROWS
    rf, rel, fil = (result.configs[f"arhn_{v}"] for v in ("rf", "relabel", "filter"))
    # A: [1]=pos, [2]=neg0, [3]=neg3 (neg1 hallucinated, neg2 NO_ANSWER); "[2] > [1] > [3]"
    n = a.negative_passages
    assert docids(rf[0].positive_passages) == [a.positive_passages[0].docid, n[0].docid]
    assert docids(rf[0].negative_passages) == [n[1].docid, n[2].docid]
    assert docids(rel[0].positive_passages) == [a.positive_passages[0].docid, n[0].docid]
    assert docids(rel[0].negative_passages) == [n[1].docid, n[2].docid, n[3].docid]
    assert docids(fil[0].positive_passages) == [a.positive_passages[0].docid]
    assert docids(fil[0].negative_passages) == [n[0].docid, n[1].docid, n[2].docid]
    # B (no candidates), D (unreadable ranking), E (ArguAna), F (positive w/o snippet), G (422): unchanged
    for i in (1, 3, 4, 5, 6):
        for config in (rf, rel, fil):
            assert config[i] == ROWS[i]
    # C: entries [1]=pos [2]=neg0 [3]=neg2, neg1 has no block; "[3] > [9] > [1] > [3]" -> [3, 1, 2]
    n = c.negative_passages
    assert docids(rf[2].positive_passages) == [c.positive_passages[0].docid, n[2].docid]
    assert docids(rf[2].negative_passages) == [n[1].docid]  # neg0 filtered (missing id ranked last), neg1 unjudged


def test_counters(judged):
    stats = judged[0].stats
    nq = stats["nq"]
    assert nq["rows_in"] == 6 and stats["arguana"]["rows_not_edited"] == 1
    assert nq["hallucinated_snippets"] == 1  # A's doc3; C's "8,849 metres tall" is a verbatim prefix
    assert nq["relabeled"] == 2 and nq["filtered"] == 2
    assert nq["positives_added"] == 2 and nq["negatives_removed"] == 4
    assert nq["rank_skipped_no_candidates"] == 1 and nq["positive_without_snippet"] == 1
    assert nq["parse_failures"] == 1 and nq["call_failures"] == 1
    assert nq["extract_missing_block"] == 1 and nq["extract_duplicate_block"] == 1
    assert nq["extract_prose_outside_blocks"] == 1
    assert nq["rank_unknown_id"] == 1 and nq["rank_duplicate_id"] == 1 and nq["rank_missing_id"] == 1
    # unjudged: C's neg1 (no block) + D's neg0 (no ranking) + F's neg0 (no anchor) + G's neg0 (call failed)
    assert nq["unjudged_negatives"] == 4
    # calls: 6 extracts (C retried once for its missing block; G's 422 is not retried)
    #        + 3 rankings (C and D retried once) = 6 + 1 + 3 + 2
    assert nq["judge_calls"] == 12


def test_requests_and_judgments(judged):
    result, server = judged[0], judged[1]
    assert server.count("Reply with exactly") == 7  # 6 rows + one parse retry (C)
    assert server.count("Rank these") == 5  # A, C, D + parse retries of C and D
    assert server.count("Question: What is the boiling point") == 1  # B: no ranking asked
    rank_a = next(j for j in result.judgments if j["stage"] == "arhn/rank" and j["query_id"] == ROWS[0].query_id)
    assert rank_a["status"] == "ok" and rank_a["ranking"] == [2, 1, 3]
    n = ROWS[0].negative_passages
    assert rank_a["decisions"] == [{"docid": n[0].docid, "decision": "relabel"}, {"docid": n[1].docid, "decision": "keep"},
                                   {"docid": n[2].docid, "decision": "keep"}, {"docid": n[3].docid, "decision": "filter"}]
    extract_a = next(j for j in result.judgments if j["stage"] == "arhn/extract" and j["query_id"] == ROWS[0].query_id)
    assert extract_a["hallucinated"] == [False, False, True, False, False]
    statuses = {(j["stage"], ROWS.index(next(r for r in ROWS if r.query_id == j["query_id"]))): j["status"] for j in result.judgments}
    assert statuses[("arhn/extract", 2)] == "parsed_with_issues"
    assert statuses[("arhn/rank", 1)] == "skipped_no_candidates"
    assert statuses[("arhn/rank", 3)] == "parse_failure"
    assert statuses[("arhn/rank", 5)] == "skipped_positive_without_snippet"
    assert statuses[("arhn/extract", 6)] == "call_failed"
    assert [j.stage for j in result.judges] == ["arhn/extract", "arhn/rank"]
    table = pa.Table.from_pylist(result.judgments, schema=JUDGMENT_SCHEMA)  # every row fits the declared schema
    assert table.num_rows == 6 + 5 and set(table.column_names) == set(result.judgments[0])
    assert result.stats["nq"]["arhn_rf:positives"] == 6 + 2 and result.stats["nq"]["arhn_rf:negatives"] == 13 - 4


def test_resume_pays_no_call_twice(judged, cut):
    result, server, backend, store, settings, retry = judged
    before = len(server.requests)
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url, model="stand-in/judge"))  # a rerun: a new process
    again = run(ROWS, settings, backend=backend, store=store, cut=cut, retry=retry)
    assert len(server.requests) == before
    assert again.configs == result.configs
    assert again.stats == result.stats  # the stats describe the stored answers: the same on a rerun
    assert {k: (v.calls, v.cached) for k, v in again.ledgers.items()} == {"arhn/extract": (0, 6), "arhn/rank": (0, 3)}
    assert sum(v.calls for v in result.ledgers.values()) == before  # the first run's calls: what the stand-in saw


def test_prhn_ranks_passages(tgi_stand_in, tmp_path, cut):
    a = ROWS[0]
    server = tgi_stand_in(lambda request: "[3] > [1] > [2] > [3]")
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url, model="stand-in/judge"))
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result = run([a], ArhnSettings(rank_on="passages", constrained="off"), backend=backend, store=store, cut=cut,
                     retry=RetryPolicy(base_delay_s=0.0, parse_retries=0))
    assert server.count("Reply with exactly") == 0 and server.count("Rank these passages") == 1
    assert "Leave out every passage" in server.prompts()[0]
    n = a.negative_passages
    rf = result.configs["prhn_rf"][0]  # [2]=neg0 below [1] -> filter, [3]=neg1 above -> relabel, neg2/neg3 left out -> keep
    assert docids(rf.positive_passages) == [a.positive_passages[0].docid, n[1].docid]
    assert docids(rf.negative_passages) == [n[2].docid, n[3].docid]
    assert result.stats["nq"]["rank_duplicate_id"] == 1 and "rank_missing_id" not in result.stats["nq"]
    assert set(result.configs) == {"prhn_relabel", "prhn_filter", "prhn_rf"}
    assert result.judgments[0]["ranking"] == [3, 1, 2] and result.judgments[0]["stage"] == "prhn/rank"


def test_decide_and_apply_pure():
    # negatives 0..3; 0, 2, 3 have snippets -> entries 2, 3, 4
    ranking = Ranking(order=[3, 1, 4, 2])
    assert decide([True, False, True, True], ranking) == ["filter", "keep", "relabel", "filter"]
    assert decide([True, False], None) == ["unjudged", "keep"]
    r = row("q", "pos", ["a", "b", "c"])
    decisions = {r.negative_passages[0].docid: "relabel", r.negative_passages[1].docid: "filter"}
    assert [p.text for p in apply(r, decisions, "rf").positive_passages] == ["pos", "a"]
    assert [p.text for p in apply(r, decisions, "rf").negative_passages] == ["c"]
    assert [p.text for p in apply(r, decisions, "filter").negative_passages] == ["a", "c"]
    assert [p.text for p in apply(r, decisions, "relabel").negative_passages] == ["b", "c"]


def test_cut_keeps_original_characters_and_snippets_past_it_are_hallucinations(cut):
    short = RetrieverCut(max_length=7)  # [CLS] + 5 word pieces + [SEP]
    text = "The  cat SAT on the mat. It was built in 1889 for a fair."
    assert short(text) == "The  cat SAT on the"  # original spacing and casing, not the uncased tokens
    assert cut(text) == text and cut.max_length == 256
    from builders.methods.arhn.snippets import check_snippets, parse_blocks
    parse = parse_blocks("[[[doc1]]]It was built in 1889 for a fair.[[[/doc1]]]", 1)
    assert check_snippets(parse, [short(text)])[0].hallucinated


def test_extract_regex_only_allows_verbatim_sentences():
    import re
    rx = re.compile(extract_regex(["One. Two two!\nThree?", "Four (4)."], copy_sentences=True))
    assert rx.fullmatch("[[[doc1]]]\nTwo two!\nThree?\n[[[/doc1]]]\n\n[[[doc2]]]\nFour (4).\n[[[/doc2]]]")
    assert rx.fullmatch("[[[doc1]]]\nNO_ANSWER\n[[[/doc1]]]\n\n[[[doc2]]]\nNO_ANSWER\n[[[/doc2]]]")
    assert not rx.fullmatch("[[[doc1]]]\nTwo!\n[[[/doc1]]]\n\n[[[doc2]]]\nNO_ANSWER\n[[[/doc2]]]")
    free = re.compile(extract_regex(["One. Two two!", "Three?"]))
    assert free.fullmatch("[[[doc1]]]\nanything at all\n[[[/doc1]]]\n\n[[[doc2]]]\nNO_ANSWER\n[[[/doc2]]]")
    assert not free.fullmatch("[[[doc1]]]\nx\n[[[/doc1]]]")  # doc2 missing


def test_repeated_queries_share_or_split_judgments(tgi_stand_in, tmp_path, cut):
    a = ROWS[0]
    other_negatives = a.with_passages(negatives=a.negative_passages[:2])  # same query, other documents judged
    server = tgi_stand_in(responder)
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url, model="stand-in/judge"))
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result = run([a, a, other_negatives], ArhnSettings(constrained="off"), backend=backend, store=store, cut=cut,
                     retry=RetryPolicy(base_delay_s=0.0, parse_retries=0))
    assert server.count("Question: Who designed the Eiffel Tower?") == 4  # (extract + rank) x 2 distinct keys
    rf = result.configs["arhn_rf"]
    assert rf[0] == rf[1] and docids(rf[0].negative_passages) == docids(a.negative_passages[1:3])
    # the other row: doc2 = neg0 (verbatim), doc3 = neg1 (hallucinated), blocks 4-5 unknown; "[2] > [1] > [3]": 3 unknown
    assert docids(rf[2].positive_passages) == [a.positive_passages[0].docid, a.negative_passages[0].docid]
    assert docids(rf[2].negative_passages) == [a.negative_passages[1].docid]
    nq = result.stats["nq"]
    assert nq["judge_calls"] == 4 and nq["answers_shared_with_a_repeated_row"] == 2
    assert nq["extract_unknown_block"] == 2 and nq["rank_unknown_id"] == 1


def test_positive_without_snippet_can_still_anchor(tgi_stand_in, tmp_path, cut):
    f = ROWS[5]  # its positive says NO_ANSWER, its negative has a verbatim snippet

    def answer(request):
        prompt = prompt_of(request)
        if "Rank these" in prompt:
            assert "[1] NO_ANSWER\n[2] The Martian sky looks butterscotch by day." in prompt
            return "[2] > [1]"
        return EXTRACT["What colour is the sky on Mars?"]

    server = tgi_stand_in(answer)
    backend = make_backend(EndpointSpec(kind="tgi", url=server.url, model="stand-in/judge"))
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result = run([f], ArhnSettings(constrained="off", positive_without_snippet="rank"), backend=backend, store=store,
                     cut=cut, retry=RetryPolicy(base_delay_s=0.0, parse_retries=0))
    assert docids(result.configs["arhn_rf"][0].positive_passages) == docids(f.positive_passages + f.negative_passages)
    assert result.stats["nq"]["relabeled"] == 1 and "positive_without_snippet" not in result.stats["nq"]


def test_constrained_tiny_local_judge_never_hallucinates(tmp_path, cut):
    """A random tiny model under the constraints: every block present, every snippet verbatim, every
    ranking has its anchor - so every judged negative gets a decision."""
    from tests.builders.judges.endpoints.tiny_models import build_tiny_model

    backend = make_backend(EndpointSpec(kind="local", model=str(build_tiny_model(tmp_path / "tiny"))))
    rows = [ROWS[3]]
    settings = ArhnSettings(max_negatives=1, copy_sentences=True, temperature=0.0, extract_max_new_tokens=600,
                            rank_max_new_tokens=40)
    with JudgmentStore(tmp_path / "j.sqlite") as store:
        result = run(rows, settings, backend=backend, store=store, cut=cut, retry=RetryPolicy(base_delay_s=0.0, parse_retries=0))
    nq = result.stats["nq"]
    assert nq["hallucinated_snippets"] == 0 and nq["parse_failures"] == 0 and nq["unjudged_negatives"] == 0
    assert not [k for k in nq if k.startswith("extract_")]
    for j in result.judgments:
        if j["stage"] == "arhn/extract":
            row = next(r for r in rows if r.query_id == j["query_id"])
            docs = [row.positive_passages[0].text] + [p.text for p in row.negative_passages]
            assert all(s == "NO_ANSWER" or s in d for s, d in zip(j["snippets"], docs)), j["raw_response"]
